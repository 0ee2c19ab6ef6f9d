"""Mesh, shardings and multi-host initialisation.

One `Mesh` over every device of every process, with one axis, ``data``.
Parameters are replicated; batches are sharded on their leading axis. Each
process holds only its own part of a global batch and places it with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxsmooth.errors import UserError

DATA_AXIS = "data"

# Any of these in the environment: call jax.distributed.initialize(), which reads the cluster from it.
# JAXSMOOTH_DISTRIBUTED=1 (launch/tpu_pod.sh) asks for it where JAX finds the cluster itself (TPU VM metadata).
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "JAXSMOOTH_DISTRIBUTED")


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, *, timeout_s: float = 120.0) -> bool:
    """Starts JAX's multi-controller runtime when asked to or when the environment says so.

    With explicit arguments, or under SLURM / a TPU pod / ``JAX_COORDINATOR_ADDRESS``
    (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``), calls
    `jax.distributed.initialize` (which reads SLURM's and TPU pods' clusters
    from the environment itself). Returns whether it did. Must run before any
    other JAX call.

    A coordinator given by address (``--coordinator`` or
    ``JAX_COORDINATOR_ADDRESS``) is checked first, so that a wrong address is
    one `UserError` after `timeout_s` seconds rather than a hang or JAX's
    abort: process 0 must be able to listen on its port, every other process
    must reach it within `timeout_s`. The same bound is JAX's
    ``initialization_timeout`` (all processes registered).
    """
    explicit = any(v is not None for v in (coordinator, num_processes, process_id))
    if not explicit and not any(k in os.environ for k in _DISTRIBUTED_ENV):
        return False
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) <= 1 and not explicit:
        return False  # an interactive SLURM allocation with one task is a single process
    if not timeout_s > 0:
        raise UserError("coordinator-timeout", f"must be > 0 seconds, got {timeout_s}")
    if explicit:
        check_process_arguments(coordinator, num_processes, process_id)
    address = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    rank = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if address and rank is not None:
        wait_for_coordinator(address, rank, timeout_s)
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {"initialization_timeout": max(1, int(math.ceil(timeout_s)))}
    if explicit:
        kwargs.update(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    elif address and rank is not None and _env_int("JAX_NUM_PROCESSES") is not None:
        kwargs.update(num_processes=_env_int("JAX_NUM_PROCESSES"), process_id=rank)  # JAX reads only the address
    jax.distributed.initialize(**kwargs)
    return True


def check_process_arguments(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """--coordinator host:port, --num-processes >= 1 and 0 <= --process-id < it, all three given together."""
    missing = [flag for flag, value in (("coordinator", coordinator), ("num-processes", num_processes),
                                        ("process-id", process_id)) if value is None]
    if missing:
        raise UserError(missing[0], "--coordinator, --num-processes and --process-id go together; "
                                    f"missing --{', --'.join(missing)}")
    _split_address(coordinator)
    if num_processes < 1:
        raise UserError("num-processes", f"must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise UserError("process-id", f"must be in [0, {num_processes}), got {process_id}")


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError("coordinator", f"must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def wait_for_coordinator(address: str, process_id: int, timeout_s: float) -> None:
    """Process 0: checks that it can listen on the coordinator's port. Others: waits until it accepts connections.

    Raises `UserError` (``coordinator``) when it cannot within `timeout_s` seconds.
    """
    host, port = _split_address(address)
    if process_id == 0:
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
        except OSError as e:
            raise UserError("coordinator", f"process 0 cannot listen on {address}: {e.strerror or e}; it must be "
                                           "an address of process 0's host with a free port") from None
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UserError("coordinator", f"cannot reach {address} within {timeout_s:g} s ({e.strerror or e}); "
                                               "is process 0 running with the same --coordinator?") from None
            time.sleep(0.2)


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
        host = _host(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def _host(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError("expected host values or replicated arrays, got an array sharded over processes")
        return np.asarray(x.addressable_data(0))  # another process's devices hold the same values
    return np.asarray(jax.device_get(x))


def host_copy(tree: Any) -> Any:
    """Host (NumPy) copies of a pytree of host values or replicated arrays, in any process of a multi-host run."""
    return jax.tree.map(_host, tree)


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
