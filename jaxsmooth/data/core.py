"""What every data source returns: `Dataset`, the random-access `Split`s, `DataError`.

A `Split` serves examples by global index: `get(indices)` returns uint8
images at the shape the model sees (after eval preprocessing) and int32
labels; `get_raw(indices)` returns the images as stored (their sizes may
differ), for augmentations that resize.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxsmooth.data import augment
from jaxsmooth.errors import UserError


class DataError(UserError):
    """Bad data input; ``str(e)`` is ``"<field>: <what is wrong and what is allowed>"``.

    `field` is ``data.name`` for a bad source, ``train.batch_size`` and the like
    for batch sizes that do not fit the data. ``DataError(field, message)``;
    ``DataError("field: message")`` (one string) is split at the first ``": "``.
    """

    def __init__(self, field: str, message: str | None = None):
        if message is None:
            field, _, message = field.partition(": ")
        super().__init__(field, message)


class Split:
    """Random access to one split of a dataset.

    Attributes:
      image_shape: (H, W, C) of every image `get` returns (the model's input shape).
      variable_size: whether stored images have differing sizes (they are
        resized by `get`; ImageNet-like sets).
    """

    image_shape: tuple[int, int, int]
    variable_size: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 [b, H, W, C] at `image_shape` and labels int32 [b] of `indices` [b]."""
        raise NotImplementedError

    def get_raw(self, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Images as stored (a list of b uint8 [h_i, w_i, C]) and labels int32 [b]."""
        raise NotImplementedError

    def _check(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices must be in [0, {len(self)}), got min {idx.min()} max {idx.max()}")
        return idx


class ArraySplit(Split):
    """A split held in memory: images uint8 [n, H, W, C], labels int32 [n]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [n, H, W, C], got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [{images.shape[0]}], got {labels.shape}")
        self.images = images
        self.labels = labels.astype(np.int32, copy=False)
        self.image_shape = tuple(int(d) for d in images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get(self, indices):
        idx = self._check(indices)
        return self.images[idx], self.labels[idx]

    def get_raw(self, indices):
        images, labels = self.get(indices)
        return list(images), labels


class ResizedSplit(Split):
    """Another split with each image resized (shorter side, then center crop) to `size` x `size`."""

    def __init__(self, base: Split, size: int, resize_shorter_to: int | None = None):
        self.base = base
        self.size = int(size)
        self.resize_shorter_to = int(resize_shorter_to or size)
        self.image_shape = (self.size, self.size, base.image_shape[2])
        self.variable_size = base.variable_size

    def __len__(self) -> int:
        return len(self.base)

    def get(self, indices):
        raws, labels = self.base.get_raw(indices)
        out = np.empty((len(raws),) + self.image_shape, np.uint8)
        for i, image in enumerate(raws):
            out[i] = augment.center_crop_resize(image, (self.size, self.size), self.resize_shorter_to)
        return out, labels

    def get_raw(self, indices):
        return self.base.get_raw(indices)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset ready for training and evaluation.

    Attributes:
      name: the name it was loaded by (``digits``, ``npz:PATH``, ``idx:DIR``, a tfds name).
      train, test: random-access splits.
      num_classes: labels are in [0, num_classes).
      input_shape: (H, W, C), the shape the model sees (after eval preprocessing).
      mean, std: per-channel statistics in [0, 1] pixel units (C floats each).
      augment_default: the augmentation this dataset trains with by default:
        ``none``, ``cifar`` or ``imagenet``.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment_default: str = "none"


# Published per-channel statistics (pixel units in [0, 1]).
KNOWN_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def channel_stats(images: np.ndarray | Sequence[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 images [n, H, W, C] (or a list of [h, w, C])."""
    if isinstance(images, np.ndarray):
        images = [images]
    channels = images[0].shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    chunk = 1 << 22  # pixels per pass: bounded float64 temporaries
    for block in images:
        flat = block.reshape(-1, channels)
        for start in range(0, flat.shape[0], chunk):
            part = flat[start:start + chunk].astype(np.float64)
            total += part.sum(0)
            total_sq += np.square(part).sum(0)
        count += flat.shape[0]
    mean = total / count
    var = np.maximum(total_sq / count - np.square(mean), 0.0)
    return tuple(float(m / 255.0) for m in mean), tuple(float(np.sqrt(v) / 255.0) for v in var)


def in_memory(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              *, image_size: int = 0, describe: str = "") -> Dataset:
    """A `Dataset` from validated uint8 NHWC arrays and integer labels (num_classes = max label + 1).

    Mean/std come from the train split. `image_size` > 0 resizes every image to
    image_size x image_size for the model.
    """
    labels = np.concatenate([y_train, y_test])
    if labels.size and labels.min() < 0:
        raise DataError("data.name", f"{describe}labels must be >= 0, found {int(labels.min())}")
    num_classes = int(labels.max()) + 1 if labels.size else 0
    if num_classes < 2:
        raise DataError("data.name", f"{describe}needs at least 2 classes, labels give {num_classes}")
    mean, std = channel_stats(x_train)
    train, test = ArraySplit(x_train, y_train), ArraySplit(x_test, y_test)
    if image_size and (image_size, image_size) != train.image_shape[:2]:
        train, test = ResizedSplit(train, image_size), ResizedSplit(test, image_size)
    return Dataset(name=name, train=train, test=test, num_classes=num_classes, input_shape=train.image_shape,
                   mean=mean, std=std, augment_default="none")
