"""Ahead-of-time compilation, the XLA:CPU option sets it picks between, and the cache that spares a new process both.

`compile` compiles every step the trainer runs with `CPU_COMPILER_OPTIONS` on
the CPU; `compile_fastest` times several option sets on the actual arguments
and keeps the fastest (the certification sampler's ``compiler_options="auto"``).
Off the CPU both use XLA's defaults.

The cache folder (`jaxsmooth.cache`) holds JAX's persistent compilation
cache (set by `use_persistent_cache`, which the CLIs and the API call before
they compile) and the option sets `compile_remembered` timed, one file per
program and machine, so that a second process neither compiles nor times
again. JAX writes its entries from process 0 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from typing import Any, Sequence

import jax

from jaxsmooth import cache

# XLA:CPU options for every step we compile. YNN (XNNPACK's successor) handles matrix
# products much faster than Eigen but convolutions slower, so it is kept for dots only
# (measured: LeNet train step 1.3-1.5x faster than with the default fusion setting).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compile(jitted: Any, *args: Any, cpu_options: bool = True) -> Any:
    """Ahead-of-time compiles `jitted` for `args`, with `CPU_COMPILER_OPTIONS` on the CPU backend.

    A jaxlib that does not know an option compiles without it; ``cpu_options=False``
    compiles with XLA's defaults (for benchmarks).
    """
    lowered = jitted.lower(*args)
    if cpu_options and jax.default_backend() == "cpu":
        try:
            return lowered.compile(compiler_options=CPU_COMPILER_OPTIONS)
        except Exception:  # an unknown option in this jaxlib: fall back to its defaults
            pass
    return lowered.compile()


# YNN also for the elementwise work (BatchNorm, ReLU, residual additions fused into YNN's subgraphs): ResNet
# inference about 1.3x faster, the LeNet-style CNN slightly slower (measured on a 2-core Xeon, jaxlib 0.10.2;
# YNN for convolutions as well changed ResNets little and cost the CNN 10-15%). `compile_fastest` picks.
CPU_ELEMENTWISE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ",".join(
    "LIBRARY_FUSION_TYPE_" + kind for kind in ("INDIVIDUAL_DOT", "ELTWISE"))}


# The option sets `compile_fastest` chooses between by default (the sampler's compiler_options="auto").
AUTO_CANDIDATES = (CPU_COMPILER_OPTIONS, CPU_ELEMENTWISE_OPTIONS)


def compile_fastest(jitted: Any, *args: Any, candidates: Sequence[dict] | None = None,
                    repeats: int = 3) -> tuple[Any, dict]:
    """Compiles `jitted` for `args` with each set of XLA:CPU options and keeps the fastest on these arguments.

    Each candidate runs once untimed, then `repeats` times in turn with the
    others; the smallest time wins. Off the CPU there is nothing to choose:
    XLA's defaults. Returns (compiled, the options it was compiled with). The
    arguments must be safe to run repeatedly (not donated).
    """
    if jax.default_backend() != "cpu":
        return jitted.lower(*args).compile(), {}
    candidates = list(candidates if candidates is not None else AUTO_CANDIDATES)
    lowered = jitted.lower(*args)
    compiled = []
    for options in candidates:
        try:
            compiled.append((lowered.compile(compiler_options=options), options))
        except Exception:  # an option this jaxlib does not know
            continue
    if not compiled:
        return lowered.compile(), {}
    if len(compiled) == 1:
        return compiled[0]
    best = [float("inf")] * len(compiled)
    for round_ in range(repeats + 1):
        for i, (executable, _) in enumerate(compiled):
            t0 = time.perf_counter()
            jax.block_until_ready(executable(*args))
            if round_:
                best[i] = min(best[i], time.perf_counter() - t0)
    return compiled[best.index(min(best))]


def use_persistent_cache() -> str | None:
    """Points JAX's persistent compilation cache at the cache folder's ``jax/`` (`jaxsmooth.cache`), caching every
    executable (JAX's defaults skip those compiled in under a second, which are most of a certify run's); returns
    that folder.

    Call it before the first compilation: JAX opens its cache at the first
    compilation after a folder is set, and keeps it for the process. Nothing
    changes (None) when the cache is off, when JAX already has a cache folder
    (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``: the user's choice), or
    when the default folder cannot be made; a ``JAXSMOOTH_CACHE_DIR`` that
    cannot be made is a `UserError`.
    """
    from jaxsmooth.errors import UserError

    path = cache.path("jax")
    if path is None or jax.config.jax_compilation_cache_dir:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        if os.environ.get(cache.ENV):
            raise UserError(cache.ENV, f"cannot make the cache folder {path} ({e.strerror}); give a writable "
                                       f"folder, or {cache.OFF} to switch the cache off") from None
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor, and none chosen by JAX
    return path


def compile_remembered(jitted: Any, *args: Any, across_processes: bool = False) -> tuple[Any, dict]:
    """`compile_fastest` over `AUTO_CANDIDATES`, its choice remembered in the cache folder and used again, untimed,
    by any process that compiles the same program on the same kind of machine (`choice_key`).

    With `across_processes` (a mesh over several processes: they run the
    same collectives, so they must time together or not at all) every
    process takes process 0's remembered choice, or none, and then process
    0's timed one (`agreed_options`). Returns (compiled, options).
    """
    if jax.default_backend() != "cpu":
        return compile_fastest(jitted, *args)
    path = cache.path("xla_options", f"{choice_key(jitted.lower(*args), AUTO_CANDIDATES)}.json")
    remembered = _read_choice(path, AUTO_CANDIDATES)
    if across_processes:
        remembered = agreed_options(remembered, AUTO_CANDIDATES)
    if remembered is not None:
        return compile_fastest(jitted, *args, candidates=[remembered], repeats=0)
    compiled, options = compile_fastest(jitted, *args)
    agreed = agreed_options(options, AUTO_CANDIDATES) if across_processes else options
    if agreed != options:  # this process timed another set faster: take process 0's
        compiled, options = compile_fastest(jitted, *args, candidates=[agreed], repeats=0)
    _write_choice(path, options)
    return compiled, options


def choice_key(lowered: Any, candidates: Sequence[dict]) -> str:
    """A hex digest of everything that decides which of `candidates` runs fastest: the program (its StableHLO
    text: the model's graph, every shape and dtype, the mesh), the candidates, jax and jaxlib, XLA_FLAGS, the
    devices (platform, kind, count, processes) and the host CPU (model and cores)."""
    import jaxlib

    device = jax.devices()[0]
    fields = [lowered.as_text(), json.dumps(list(candidates), sort_keys=True), jax.__version__, jaxlib.__version__,
              os.environ.get("XLA_FLAGS", ""),
              device.platform, device.device_kind, str(jax.device_count()), str(jax.process_count()),
              host_cpu(), str(os.cpu_count())]
    return hashlib.sha256("\0".join(fields).encode()).hexdigest()


def agreed_options(options: dict | None, known: Sequence[dict | None]) -> dict | None:
    """Process 0's `options` in every process of a multi-process run (one broadcast): one of `known` or None
    (None too for options that are not among `known`). Every process must call it, at the same point."""
    import numpy as np
    from jax.experimental import multihost_utils

    known = [None, *(dict(k) for k in known if k is not None)]
    index = known.index(options) if options in known else 0
    return known[int(multihost_utils.broadcast_one_to_all(np.int32(index)))]


def host_cpu() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_choice(path: str | None, candidates: Sequence[dict]) -> dict | None:
    """The options remembered at `path` if they are one of `candidates`; None if none are (or unreadable)."""
    if path is None:
        return None
    try:
        with open(path) as f:
            options = json.load(f).get("options")
    except (OSError, ValueError, AttributeError):
        return None
    return options if options in [dict(c) for c in candidates] else None


def _write_choice(path: str | None, options: dict) -> None:
    """Remembers `options` at `path` (None: the cache is off), with what they were timed on for a reader."""
    record = {"options": options, "jax": jax.__version__, "device_kind": jax.devices()[0].device_kind,
              "devices": jax.device_count(), "cpu": host_cpu()}
    cache.write_whole(path, json.dumps(record).encode())


def compile_on_first_call(jitted: Any) -> Any:
    """`jitted`, compiled by `compile` for the arguments of its first call (shapes must not change)."""
    compiled: list = []

    def call(*args):
        if not compiled:
            compiled.append(compile(jitted, *args))
        return compiled[0](*args)

    return call
