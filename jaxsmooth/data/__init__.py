"""Data: sources, augmentation, and deterministic per-process batches.

    ds = data.load("digits")                       # or npz:PATH, idx:DIR, a tfds name
    images, labels = ds.train.get(np.arange(8))    # uint8 [8, H, W, C], int32 [8]
    it = data.train_batches(ds.train, global_batch_size=64, seed=0, augment=ds.augment_default,
                            process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)   # {"image": float32 [64/P, H, W, C] in [0, 1], "label": int32, "index": int32}
    for b in data.eval_batches(ds.test, global_batch_size=100):  # + "mask": bool (False on padding)
        ...

See `pipeline` for the ordering that makes results independent of the
number of processes and makes resuming exact.
"""

from jaxsmooth.data.augment import AUGMENTATIONS, augment_batch, center_crop_resize, example_rng, pad_crop_flip
from jaxsmooth.data.core import ArraySplit, DataError, Dataset, ResizedSplit, Split
from jaxsmooth.data.idx import read_idx, write_idx
from jaxsmooth.data.pipeline import (epoch_permutation, eval_batches, global_batch_indices, steps_per_epoch,
                                     train_batch, train_batches)
from jaxsmooth.data.sources import load, load_digits, load_npz

__all__ = [
    "AUGMENTATIONS", "ArraySplit", "DataError", "Dataset", "ResizedSplit", "Split", "augment_batch",
    "center_crop_resize", "epoch_permutation", "eval_batches", "example_rng", "global_batch_indices", "load",
    "load_digits", "load_npz", "pad_crop_flip", "read_idx", "steps_per_epoch", "train_batch", "train_batches",
    "write_idx",
]
