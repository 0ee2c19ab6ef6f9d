"""A reader for IDX files, the format of MNIST and Fashion-MNIST (plain or gzip).

Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), a byte with the number of
dimensions d, then d big-endian uint32 sizes, then the values, big-endian,
row-major.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from jaxsmooth.data.core import DataError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# (split, part) -> the MNIST file name (without .gz)
MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def _error(path: str, message: str) -> DataError:
    return DataError("data.name", f"idx file {path}: {message}")


def read_idx(path: str) -> np.ndarray:
    """The array stored in an IDX file (gzip-compressed when it starts with the gzip magic), native byte order."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise _error(path, f"cannot read it ({e})") from None
    if len(raw) < 4:
        raise _error(path, f"too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise _error(path, f"not an IDX file: the magic number must start with two zero bytes, got "
                           f"{raw[0]:#04x} {raw[1]:#04x}")
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_TYPES:
        allowed = ", ".join(f"{k:#04x}" for k in IDX_TYPES)
        raise _error(path, f"unknown IDX type byte {type_code:#04x}; allowed: {allowed}")
    if ndim == 0:
        raise _error(path, "the header declares 0 dimensions; need at least 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _error(path, f"header declares {ndim} dimensions but the file has only {len(raw)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise _error(path, f"header promises shape {dims} ({expected} bytes of data) but the file holds "
                           f"{len(raw) - header}; the file is truncated or not IDX")
    array = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def write_idx(path: str, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Writes `array` as IDX (gzip when `compress`, default: when `path` ends in ``.gz``)."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}")
    head = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=np.dtype(IDX_TYPES[code])).tobytes()
    data = head + body
    if path.endswith(".gz") if compress is None else compress:
        data = gzip.compress(data, mtime=0)
    with open(path, "wb") as f:
        f.write(data)


def find_file(folder: str, base: str) -> str:
    """`folder/base.gz` or `folder/base`, whichever exists; DataError naming both otherwise."""
    for candidate in (base + ".gz", base):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise DataError("data.name", f"idx folder {folder}: missing {base}.gz (or {base}); an idx: folder needs "
                                 f"{', '.join(MNIST_FILES.values())}, each plain or .gz")


def load_idx_folder(folder: str) -> dict[str, np.ndarray]:
    """Reads the four MNIST-format files of `folder`: x_train, y_train, x_test, y_test.

    Images become uint8 [n, H, W, 1] (or [n, H, W, C] for 4-D files), labels int64 [n].
    """
    if not os.path.isdir(folder):
        raise DataError("data.name", f"idx folder {folder}: not a directory; write idx:DIR with DIR holding "
                                     f"{', '.join(MNIST_FILES.values())} (plain or .gz)")
    out = {}
    for split in ("train", "test"):
        images_path = find_file(folder, MNIST_FILES[(split, "images")])
        labels_path = find_file(folder, MNIST_FILES[(split, "labels")])
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise _error(images_path, f"images must be uint8 with 3 dimensions [n, H, W] (or 4, [n, H, W, C]), "
                                      f"got {images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise _error(labels_path, f"labels must be integer with 1 dimension [n], got {labels.dtype} "
                                      f"{labels.shape}")
        if len(labels) != len(images):
            raise _error(labels_path, f"{len(labels)} labels for {len(images)} images in {images_path}")
        out[f"x_{split}"] = images[..., None] if images.ndim == 3 else images
        out[f"y_{split}"] = labels.astype(np.int64)
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise DataError("data.name", f"idx folder {folder}: train images are {out['x_train'].shape[1:]} but test "
                                     f"images {out['x_test'].shape[1:]}; both splits need one shape")
    return out
