"""Batches: deterministic shuffling, per-process shards, augmentation, prefetching.

Training order is a pure function of (seed, step):

* epoch ``e`` visits the train split in the order
  ``np.random.default_rng([seed, e]).permutation(n)``;
* global step ``s`` is epoch ``s // steps_per_epoch`` and its global batch is
  the slice ``[(s % steps_per_epoch) * B, ... + B)`` of that permutation (the
  last ``n % B`` examples of each permutation are dropped);
* process ``p`` of ``P`` takes the contiguous ``p``-th part (B / P examples)
  and reads only those;
* the augmentation of an example uses ``augment.example_rng(seed, s, index)``.

So a run resumed at ``start_step = k`` sees exactly the batches an
uninterrupted run sees after ``k`` steps, and the concatenated local batches
of all processes equal the 1-process global batch, whatever the process
count.
"""

from __future__ import annotations

import collections
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np

from jaxsmooth.data import augment as augment_lib
from jaxsmooth.data.core import DataError, Split

Batch = dict[str, np.ndarray]


def steps_per_epoch(n_examples: int, global_batch_size: int, *, field: str = "train.batch_size") -> int:
    """Full global batches per epoch (the remainder is dropped); DataError if there is not one."""
    if global_batch_size <= 0:
        raise DataError(field, f"must be > 0, got {global_batch_size}")
    steps = n_examples // global_batch_size
    if steps == 0:
        raise DataError(field, f"{global_batch_size} is larger than the training split ({n_examples} examples)")
    return steps


def epoch_permutation(seed: int, epoch: int, n_examples: int) -> np.ndarray:
    """The order of epoch `epoch`: a permutation int64 [n_examples] of the split's indices."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n_examples)


def _local_size(global_batch_size: int, process_index: int, process_count: int, field: str) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, process_count), got {process_index} of {process_count}")
    if global_batch_size <= 0:
        raise DataError(field, f"must be > 0, got {global_batch_size}")
    if global_batch_size % process_count:
        raise DataError(field, f"{global_batch_size} is not divisible by the number of processes "
                               f"({process_count})")
    return global_batch_size // process_count


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError("seed", f"must be an integer >= 0, got {seed!r}")
    return int(seed)


def global_batch_indices(n_examples: int, global_batch_size: int, seed: int, step: int) -> np.ndarray:
    """Global indices int64 [global_batch_size] of the examples of global step `step`."""
    spe = steps_per_epoch(n_examples, global_batch_size)
    epoch, pos = divmod(int(step), spe)
    return epoch_permutation(seed, epoch, n_examples)[pos * global_batch_size:(pos + 1) * global_batch_size]


def _to_float(images: np.ndarray) -> np.ndarray:
    return np.divide(images, 255, dtype=np.float32)


def _train_batch(split: Split, local_indices: np.ndarray, *, seed: int, step: int, augment: str) -> Batch:
    if augment == "none":
        images, labels = split.get(local_indices)
    else:
        rngs = [augment_lib.example_rng(seed, step, i) for i in local_indices]
        if augment == "imagenet":
            raws, labels = split.get_raw(local_indices)
        else:
            images, labels = split.get(local_indices)
            raws = list(images)
        images = augment_lib.augment_batch(augment, raws, rngs, split.image_shape[:2])
    return {"image": _to_float(images), "label": labels.astype(np.int32),
            "index": local_indices.astype(np.int32)}


def train_batch(split: Split, *, global_batch_size: int, seed: int, step: int, augment: str = "none",
                process_index: int = 0, process_count: int = 1) -> Batch:
    """The local batch of global step `step` (what `train_batches` yields for it); see `train_batches`."""
    local = _local_size(global_batch_size, process_index, process_count, "train.batch_size")
    indices = global_batch_indices(len(split), global_batch_size, _check_seed(seed), step)
    mine = indices[process_index * local:(process_index + 1) * local]
    return _train_batch(split, mine, seed=seed, step=step, augment=augment)


def _ordered_map(fn: Callable, items: Iterable, num_workers: int, prefetch: int) -> Iterator:
    """``map(fn, items)`` computed ahead by `num_workers` threads (up to `prefetch` results), in order."""
    if num_workers <= 0:
        for item in items:
            yield fn(item)
        return
    executor = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="jaxsmooth-data")
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) >= max(prefetch, 1):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def train_batches(split: Split, *, global_batch_size: int, seed: int, start_step: int = 0, augment: str = "none",
                  process_index: int = 0, process_count: int = 1, num_workers: int = 2,
                  prefetch: int = 4) -> Iterator[Batch]:
    """An infinite iterator of this process's training batches, for global steps start_step, start_step+1, ...

    Each batch (L = global_batch_size / process_count, [H, W, C] = split.image_shape):
      ``image`` float32 [L, H, W, C] in [0, 1], ``label`` int32 [L],
      ``index`` int32 [L] (global index of each example in the split).
    Order and augmentation follow the module docstring, so they depend on
    (seed, step) only. `augment` is ``none``, ``cifar`` or ``imagenet``.
    `num_workers` threads prepare up to `prefetch` batches ahead (0: none).

    Raises DataError (``train.batch_size``) when the global batch does not
    divide over the processes or exceeds the split, (``data.augment``) for an
    unknown augmentation, (``seed``) for a negative seed.
    """
    seed = _check_seed(seed)
    local = _local_size(global_batch_size, process_index, process_count, "train.batch_size")
    spe = steps_per_epoch(len(split), global_batch_size)
    if augment not in augment_lib.AUGMENTATIONS:
        raise DataError("data.augment", f"unknown augmentation {augment!r}; allowed: "
                                        f"{', '.join(augment_lib.AUGMENTATIONS)}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")

    def schedule() -> Iterator[tuple[int, np.ndarray]]:
        epoch, order = None, None
        step = int(start_step)
        while True:
            e, pos = divmod(step, spe)
            if e != epoch:
                epoch, order = e, epoch_permutation(seed, e, len(split))
            start = pos * global_batch_size + process_index * local
            yield step, order[start:start + local]
            step += 1

    def make(item: tuple[int, np.ndarray]) -> Batch:
        step, indices = item
        return _train_batch(split, indices, seed=seed, step=step, augment=augment)

    return _ordered_map(make, schedule(), num_workers, prefetch)


def eval_batches(split: Split, *, global_batch_size: int, process_index: int = 0, process_count: int = 1,
                 image_size: int = 0, num_workers: int = 2, prefetch: int = 4,
                 field: str = "train.eval_batch_size") -> Iterator[Batch]:
    """A finite iterator over the whole split in order, ceil(n / global_batch_size) batches.

    Global batch b covers indices [b * B, (b + 1) * B); this process gets its
    contiguous part (L = B / process_count examples). Each batch:
      ``image`` float32 [L, H, W, C] in [0, 1], ``label`` int32 [L],
      ``index`` int32 [L] (-1 on padding), ``mask`` bool [L] (False on padding).
    Padding (past the end of the split) has zero images and labels.
    `image_size` > 0 resizes/center-crops to that side (as ImageNet eval: shorter
    side to image_size * 256 / 224 for variable-size sets); 0 = split.image_shape.
    `field` names the batch size in errors.
    """
    local = _local_size(global_batch_size, process_index, process_count, field)
    n = len(split)
    height, width, channels = split.image_shape
    resize = bool(image_size) and (image_size, image_size) != (height, width)
    if resize:
        height = width = int(image_size)
        shorter = int(round(image_size * 256 / 224)) if split.variable_size else int(image_size)

    def make(batch: int) -> Batch:
        positions = batch * global_batch_size + process_index * local + np.arange(local)
        valid = positions < n
        indices = positions[valid]
        images = np.zeros((local, height, width, channels), np.float32)
        labels = np.zeros((local,), np.int32)
        if indices.size:
            if resize:
                raws, got = split.get_raw(indices)
                stored = np.stack([augment_lib.center_crop_resize(r, (height, width), shorter) for r in raws])
            else:
                stored, got = split.get(indices)
            images[:indices.size] = _to_float(stored)
            labels[:indices.size] = got
        return {"image": images, "label": labels, "index": np.where(valid, positions, -1).astype(np.int32),
                "mask": valid}

    return _ordered_map(make, range(math.ceil(n / global_batch_size)), num_workers, prefetch)
