"""Dataset sources: ``digits`` (embedded), ``npz:PATH``, ``idx:DIR`` and tensorflow-datasets names.

`load(name)` is the one entry point; every bad input raises `DataError`
with field ``data.name``.
"""

from __future__ import annotations

import functools
import io
import os
import zipfile

import numpy as np

from jaxsmooth import cache
from jaxsmooth.data.core import DataError, Dataset, in_memory
from jaxsmooth.data.idx import load_idx_folder

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_ALLOWED = ("the file needs keys x_train, y_train, x_test, y_test: x uint8 [n, H, W, C] (or [n, H, W]), "
               "y integer [n] with labels >= 0")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def load(name: str, *, data_dir: str = "", image_size: int = 0) -> Dataset:
    """Loads a dataset by name.

    Args:
      name: ``digits`` (scikit-learn's 8x8 digits, offline), ``npz:PATH``,
        ``idx:DIR`` (MNIST-format IDX files) or a tensorflow-datasets name
        (``mnist``, ``fashion_mnist``, ``cifar10``, ``imagenet2012``, ...),
        which must be prepared in array_record format under `data_dir`.
      data_dir: tensorflow-datasets data_dir ("" = tfds's default).
      image_size: side of the square model input; 0 = the dataset's own
        (224 for variable-size sets). Other sizes resize every image.
    Returns:
      a `Dataset`; its splits serve uint8 images [b, H, W, C] = input_shape.
    Raises:
      DataError (field ``data.name``) for anything missing or malformed.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError("data.name", f"must be a dataset name, got {name!r}; allowed: digits, npz:PATH, idx:DIR, "
                                     "or a tensorflow-datasets name such as mnist, cifar10, imagenet2012")
    if image_size < 0:
        raise DataError("data.image_size", f"must be >= 0, got {image_size}")
    if name == "digits":
        return load_digits(image_size=image_size)
    if name.startswith("npz:"):
        return load_npz(name[len("npz:"):], image_size=image_size, name=name)
    if name.startswith("idx:"):
        folder = os.path.expanduser(name[len("idx:"):])
        arrays = load_idx_folder(folder)
        return in_memory(name, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                         image_size=image_size, describe=f"idx folder {folder}: ")
    from jaxsmooth.data.tfds_source import load_tfds  # local: imports tensorflow_datasets

    return load_tfds(name, data_dir=data_dir, image_size=image_size)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) of the fixed digits split: read back from the cache
    folder (`jaxsmooth.cache`) where an earlier process left them, since importing scikit-learn (and the pandas it
    imports) is most of what loading the digits costs; else split and left there."""
    path = _digits_cache_path()
    arrays = _read_digits(path)
    if arrays is None:
        arrays = _split_digits()
        buffer = io.BytesIO()
        np.savez(buffer, **dict(zip(NPZ_KEYS, arrays)))
        cache.write_whole(path, buffer.getvalue())
    for a in arrays:
        a.setflags(write=False)  # shared by every call
    return arrays


def _split_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION,
                                           random_state=DIGITS_SPLIT_SEED, stratify=labels)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def _digits_cache_path() -> str | None:
    """Where the split is kept: named by what decides it (scikit-learn's version, the split's fraction and seed, and
    the format of this code's arrays); None when the cache is off or scikit-learn is not installed."""
    from importlib import metadata

    try:
        version = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        return None
    return cache.path("data", f"digits-v1-sklearn{version}-test{DIGITS_TEST_FRACTION}-seed{DIGITS_SPLIT_SEED}.npz")


def _read_digits(path: str | None) -> tuple[np.ndarray, ...] | None:
    """The split kept at `path`, or None if there is none (or it does not read as one)."""
    if path is None or not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = tuple(f[k] for k in NPZ_KEYS)
    except Exception:  # a file cut short or not ours, whichever way it fails to read: split again
        return None
    shapes_fit = all(x.dtype == np.uint8 and x.shape[1:] == (8, 8, 1) and y.dtype == np.int64 and y.shape == x.shape[:1]
                     for x, y in (arrays[:2], arrays[2:]))
    return arrays if shapes_fit else None


def load_digits(*, image_size: int = 0) -> Dataset:
    """scikit-learn's digits: 8x8x1, 10 classes, a fixed stratified split of 1437 train / 360 test."""
    return in_memory("digits", *_digits_arrays(), image_size=image_size, describe="digits: ")


def load_npz(path: str, *, image_size: int = 0, name: str | None = None) -> Dataset:
    """A dataset from an ``.npz`` file with x_train, y_train, x_test, y_test (see `NPZ_ALLOWED`)."""
    path = os.path.expanduser(path)
    name = name or f"npz:{path}"

    def fail(problem: str) -> DataError:
        return DataError("data.name", f"npz file {path}: {problem}")

    if not path:
        raise fail("no path given; write npz:PATH")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise fail(f"holds a single array, not named arrays; {NPZ_ALLOWED}")
        with loaded as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise fail(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                           f"(found: {', '.join(f.files) or 'none'}); {NPZ_ALLOWED}")
            arrays = {k: f[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except FileNotFoundError:
        raise fail(f"no such file; {NPZ_ALLOWED}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise fail(f"cannot read it as .npz ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                   f"{NPZ_ALLOWED}") from None

    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8:
            raise fail(f"x_{split} has dtype {x.dtype}; images must be uint8 in 0..255 (convert float images "
                       f"in [0, 1] with np.round(x * 255).astype(np.uint8))")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise fail(f"x_{split} has shape {x.shape}; images must be [n, H, W, C] or [n, H, W]")
        if x.shape[0] == 0 or 0 in x.shape[1:]:
            raise fail(f"x_{split} has shape {x.shape}; each split needs at least one non-empty image")
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise fail(f"y_{split} has dtype {y.dtype} and shape {y.shape}; labels must be integer [n]")
        if len(y) != len(x):
            raise fail(f"x_{split} holds {len(x)} images but y_{split} {len(y)} labels; lengths must match")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y.astype(np.int64)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise fail(f"x_train images are {arrays['x_train'].shape[1:]} but x_test {arrays['x_test'].shape[1:]}; "
                   "both splits need one image shape")
    return in_memory(name, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                     image_size=image_size, describe=f"npz file {path}: ")
