"""Training batches from a grain pipeline (worker processes), and prefetching them to the device.

`grain_train_batches` yields exactly the batches of `pipeline.train_batches`
for the same arguments: the same examples in the same order, the same
augmentation, the same pixels (see the `pipeline` module docstring for the
order: epoch ``e`` visits ``np.random.default_rng([seed, e]).permutation(n)``,
global step ``s`` takes the slice ``[(s % steps_per_epoch) * B, + B)``,
process ``p`` of ``P`` its contiguous ``p``-th part, example ``i`` at step
``s`` is augmented with ``augment.example_rng(seed, s, i)``). Runs are thus
identical whichever pipeline feeds them, and resuming at ``start_step`` is
exact.

How: the grain dataset is a ``MapDataset`` over global *steps*
(``start_step, start_step + 1, ...``) mapped to this process's batch of each
step by the same function the thread pipeline uses. ``mp_prefetch`` gives
worker ``w`` of ``W`` the steps ``start_step + w, + W, ...`` and interleaves
their outputs round-robin, so the order never depends on ``worker_count``.
A worker makes whole batches (read, JPEG decode inside the source, crop,
flip, scale to [0, 1]) and hands them over in shared memory. (Batching
examples across workers, as a grain ``DataLoader`` with a record sampler
does, would make a batch's composition depend on the worker count.)

`prefetch_to_device` then keeps ``size`` batches placed on the device ahead
of the step that consumes them, so a batch's host-to-device transfer
overlaps the previous step.

    it = grain_train_batches(ds.train, global_batch_size=256, seed=0, augment="imagenet",
                             process_index=jax.process_index(), process_count=jax.process_count(),
                             worker_count=8)
    for batch in prefetch_to_device(it, mesh):   # dicts of jax.Array sharded over the mesh's data axis
        state, metrics = train_step(state, batch, key)
    it.close()                                   # stops the worker processes
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
from typing import Any, Iterator

import numpy as np

from jaxsmooth import extras
from jaxsmooth.data import augment as augment_lib
from jaxsmooth.data import pipeline
from jaxsmooth.data.core import DataError, Split

Batch = dict[str, np.ndarray]

_STEPS_AHEAD = 2 ** 62  # the step dataset's length: endless in practice (len() must fit in an int64)


def default_worker_count() -> int:
    """Worker processes when ``worker_count`` is None: one per CPU core but one (left to the main process)."""
    return max(1, (os.cpu_count() or 2) - 1)


class _StepBatch:
    """Picklable ``step -> this process's batch of global step `step``` (what `pipeline.train_batch` returns).

    Keeps the permutations of the last two epochs it used, so a worker computes
    each epoch's order once.
    """

    def __init__(self, split: Split, *, global_batch_size: int, seed: int, augment: str, process_index: int,
                 local_batch_size: int, steps_per_epoch: int):
        self.split = split
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.augment = augment
        self.process_index = process_index
        self.local_batch_size = local_batch_size
        self.steps_per_epoch = steps_per_epoch
        self._orders: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_orders"], state["_lock"] = collections.OrderedDict(), None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            order = self._orders.get(epoch)
            if order is not None:
                self._orders.move_to_end(epoch)
                return order
        order = pipeline.epoch_permutation(self.seed, epoch, len(self.split))
        with self._lock:
            self._orders[epoch] = order
            while len(self._orders) > 2:
                self._orders.popitem(last=False)
        return order

    def __call__(self, step: int) -> Batch:
        step = int(step)
        epoch, pos = divmod(step, self.steps_per_epoch)
        start = pos * self.global_batch_size + self.process_index * self.local_batch_size
        indices = self._order(epoch)[start:start + self.local_batch_size]
        return pipeline._train_batch(self.split, indices, seed=self.seed, step=step, augment=self.augment)

    def __repr__(self) -> str:  # grain's checkpoints and error messages name the transform by its repr
        return (f"_StepBatch(n={len(self.split)}, global_batch_size={self.global_batch_size}, seed={self.seed}, "
                f"augment={self.augment!r}, process_index={self.process_index})")


class GrainBatches(Iterator[Batch]):
    """The iterator `grain_train_batches` returns: batches of steps ``next_step``, ``next_step + 1``, ...

    ``close()`` (or leaving a ``with`` block) stops the worker processes; the
    garbage collector does it too, at some point.
    """

    def __init__(self, grain_iterator, start_step: int):
        self._it = grain_iterator
        self.next_step = int(start_step)  # the global step of the batch the next `next()` returns

    def __iter__(self) -> "GrainBatches":
        return self

    def __next__(self) -> Batch:
        element = next(self._it)
        self.next_step += 1
        # Plain ndarray views: the arrays of worker output live in shared memory, which stays
        # mapped as long as a view of it is alive.
        return {k: np.asarray(v) for k, v in element.items()}

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "GrainBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _absl_flags_parsed() -> None:
    """Lets grain read its absl flags (their defaults) in a program that never parsed absl flags.

    grain 0.2.x reads ``--grain_enable_multiprocess_worker_profiling`` when it
    starts worker processes and raises ``UnparsedFlagAccessError`` unless
    absl's flags were parsed (as ``absl.app.run`` does); jaxsmooth's CLIs use
    argparse. Marking them parsed leaves every flag at its default.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _check_count(value: Any, field: str, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(field, f"must be an integer >= {minimum} ({meaning}), got {value!r}")
    return int(value)


def grain_train_batches(split: Split, *, global_batch_size: int, seed: int, start_step: int = 0,
                        augment: str = "imagenet", process_index: int = 0, process_count: int = 1,
                        worker_count: int | None = None, prefetch: int = 2,
                        worker_threads: int = 1) -> GrainBatches:
    """An endless iterator of this process's training batches, steps start_step, start_step + 1, ..., made by grain.

    Yields what `pipeline.train_batches` yields for the same arguments (L =
    global_batch_size / process_count, [H, W, C] = split.image_shape):
      ``image`` float32 [L, H, W, C] in [0, 1], ``label`` int32 [L],
      ``index`` int32 [L] (global index of each example in the split).

    Args:
      split: the training split (a `Split`; it is pickled into each worker process).
      global_batch_size: examples per global step, over all processes.
      seed: shuffling and augmentation seed (integer >= 0).
      start_step: global step of the first batch (resuming).
      augment: ``none``, ``cifar`` or ``imagenet`` (random-resized crop + flip of the stored image).
      process_index, process_count: this process's part of each global batch.
      worker_count: grain worker processes (0: batches are made in this
        process; None: `default_worker_count`). Worker ``w`` makes the batches
        of every ``worker_count``-th step and hands them over in shared memory.
        grain starts them with ``spawn``: the main script must guard its work
        with ``if __name__ == "__main__":`` and be a file (not ``python -``),
        and each worker imports grain (hence jax) once.
      prefetch: finished batches each worker holds ready (with worker_count
        = 0: batches this process's threads make ahead; 0 = made in ``next()``).
      worker_threads: threads making batches inside each worker (or in this
        process when worker_count = 0).
    Returns:
      a `GrainBatches` iterator; ``close()`` it (or use it in a ``with``) to
      stop the worker processes.
    Raises:
      DataError: ``train.batch_size`` when the global batch does not divide
        over the processes or exceeds the split, ``data.augment`` for an
        unknown augmentation, ``seed``, ``start_step``, ``process_index``,
        ``worker_count``, ``prefetch``, ``worker_threads`` for bad values.
    """
    seed = pipeline._check_seed(seed)
    if isinstance(process_count, bool) or not isinstance(process_count, (int, np.integer)) or process_count < 1:
        raise DataError("process_count", f"must be an integer >= 1, got {process_count!r}")
    if (isinstance(process_index, bool) or not isinstance(process_index, (int, np.integer))
            or not 0 <= process_index < process_count):
        raise DataError("process_index", f"must be an integer in [0, process_count = {process_count}), "
                                         f"got {process_index!r}")
    local = pipeline._local_size(global_batch_size, int(process_index), int(process_count), "train.batch_size")
    spe = pipeline.steps_per_epoch(len(split), global_batch_size)
    if augment not in augment_lib.AUGMENTATIONS:
        raise DataError("data.augment", f"unknown augmentation {augment!r}; allowed: "
                                        f"{', '.join(augment_lib.AUGMENTATIONS)}")
    start_step = _check_count(start_step, "start_step", 0, "the global step to start from")
    if worker_count is None:
        worker_count = default_worker_count()
    worker_count = _check_count(worker_count, "worker_count", 0, "grain worker processes; 0: none")
    prefetch = _check_count(prefetch, "prefetch", 0, "batches made ahead")
    worker_threads = _check_count(worker_threads, "worker_threads", 1, "threads making batches")

    # local: a slow-ish import, not needed by the thread pipeline
    grain = extras.require("grain", field="data.workers", purpose="making training batches in worker processes")

    _absl_flags_parsed()
    make = _StepBatch(split, global_batch_size=int(global_batch_size), seed=seed, augment=augment,
                      process_index=int(process_index), local_batch_size=local, steps_per_epoch=spe)
    steps = grain.MapDataset.range(start_step, start_step + _STEPS_AHEAD).map(make)
    if worker_count == 0:
        read = grain.ReadOptions(num_threads=min(worker_threads, prefetch), prefetch_buffer_size=prefetch)
        dataset = steps.to_iter_dataset(read)
    else:
        # Inside a worker: `worker_threads` batches in the making; finished ones wait in its output queue.
        read = grain.ReadOptions(num_threads=worker_threads, prefetch_buffer_size=worker_threads)
        dataset = steps.to_iter_dataset(read).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=max(prefetch, 1)))
    return GrainBatches(iter(dataset), start_step)


def _placer(target) -> Any:
    """``host batch -> device batch`` for a Mesh (sharded over its ``data`` axis), a Sharding, a Device or None."""
    import jax
    from jax.sharding import Mesh, NamedSharding, Sharding

    if isinstance(target, Mesh):
        from jaxsmooth import parallel

        target = parallel.data_sharded(target)
    if isinstance(target, NamedSharding):
        # Each process passes its own part of the global batch (the pipeline's local batch).
        return lambda batch: jax.tree.map(lambda x: jax.make_array_from_process_local_data(target, x), batch)
    if target is None or isinstance(target, (Sharding, jax.Device)):
        return lambda batch: jax.device_put(batch, target)
    raise DataError("sharding", f"expected a jax.sharding.Mesh, a Sharding, a Device or None, got "
                                f"{type(target).__name__}")


def prefetch_to_device(iterator, sharding_or_mesh=None, size: int = 2) -> Iterator[Any]:
    """Yields the batches of `iterator` placed on the device(s), keeping `size` of them placed ahead.

    Placement is asynchronous: while the step consumes batch t, batches t + 1
    ... t + size are already being transferred (and the host pipeline makes
    the ones after). With a `Mesh` (or a `NamedSharding`) each batch is this
    process's part of the global batch, sharded over the mesh's ``data`` axis
    (`jax.make_array_from_process_local_data`, as `parallel.shard_batch`);
    with a plain Sharding or Device (or None: the default device) it is put
    there whole.

    Raises DataError (``size``) unless size >= 1, (``sharding``) for another target.
    """
    size = _check_count(size, "size", 1, "batches placed on the device ahead")
    place = _placer(sharding_or_mesh)  # checked now, not at the first next()
    return _prefetched(iter(iterator), place, size)


def _prefetched(source: Iterator, place, size: int) -> Iterator[Any]:
    queue: collections.deque = collections.deque()

    def fill(count: int) -> None:
        for batch in itertools.islice(source, count):
            queue.append(place(batch))

    fill(size)
    while queue:
        batch = queue.popleft()
        fill(1)  # batch t + size starts its transfer before the step consumes batch t
        yield batch
