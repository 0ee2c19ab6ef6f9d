"""Ahead-of-time compilation, and the XLA:CPU option sets it picks between.

`compile` compiles every step the trainer runs with `CPU_COMPILER_OPTIONS` on
the CPU; `compile_fastest` times several option sets on the actual arguments
and keeps the fastest (the certification sampler's ``compiler_options="auto"``).
Off the CPU both use XLA's defaults.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax

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


def compile_on_first_call(jitted: Any) -> Any:
    """`jitted`, compiled by `compile` for the arguments of its first call (shapes must not change)."""
    compiled: list = []

    def call(*args):
        if not compiled:
            compiled.append(compile(jitted, *args))
        return compiled[0](*args)

    return call
