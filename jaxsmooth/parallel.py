"""Mesh, shardings and multi-host initialisation.

One `Mesh` over every device of every process, with one axis, ``data``.
Parameters are replicated; batches are sharded on their leading axis. Each
process holds only its own part of a global batch and places it with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Starts JAX's multi-controller runtime when asked to or when the environment says so.

    With explicit arguments, or under SLURM / a TPU pod / ``JAX_COORDINATOR_ADDRESS``,
    calls `jax.distributed.initialize` (which reads the cluster from the
    environment itself). Returns whether it did. Must run before any other
    JAX call.
    """
    explicit = coordinator is not None
    if not explicit and not any(k in os.environ for k in _DISTRIBUTED_ENV):
        return False
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) <= 1 and not explicit:
        return False  # an interactive SLURM allocation with one task is a single process
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {}
    if explicit:
        kwargs = dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def local_devices_of(mesh: Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def shard_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Places this process's part of a global batch on the mesh, sharded on axis 0."""
    sharding = data_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Places a pytree of host or device arrays replicated on every device of the mesh.

    Every process must pass the same values (as they do when derived from the
    same seed); each places its own copy on its own devices.
    """
    sharding = replicated(mesh)

    def put(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError("replicate() takes host values or replicated arrays")
            host = np.asarray(x.addressable_data(0))  # another process's devices hold the same values
        else:
            host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


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
    candidates = list(candidates if candidates is not None else (CPU_COMPILER_OPTIONS, CPU_ELEMENTWISE_OPTIONS))
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


def is_main_process() -> bool:
    return jax.process_index() == 0
