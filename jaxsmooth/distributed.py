"""Starting JAX's multi-controller runtime: from flags or the environment, with the coordinator checked first.

SLURM, TPU pods and ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES``
and ``JAX_PROCESS_ID``) describe the cluster in the environment;
``--coordinator``/``--num-processes``/``--process-id`` describe it on the
command line (`jaxsmooth.cli.add_distributed_arguments`). A coordinator given
by address is probed with a socket before JAX is asked, so a wrong address is
one `UserError` rather than a hang.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

import jax

from jaxsmooth.errors import UserError

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
