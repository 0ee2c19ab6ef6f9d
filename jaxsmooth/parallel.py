"""Mesh and shardings.

One `Mesh` over every device of every process, with one axis, ``data``.
Parameters are replicated; batches are sharded on their leading axis. Each
process holds only its own part of a global batch and places it with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


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


def is_main_process() -> bool:
    return jax.process_index() == 0
