"""Host-side augmentation and resizing, per example, in numpy/PIL.

All randomness comes from an explicit `np.random.Generator`. The pipeline
gives each example at each step its own generator, `example_rng(seed, step,
index)`, so an augmented batch does not depend on how the batch is split
over processes.

Kinds (``AUGMENTATIONS``):
  ``none``      the image as it is.
  ``cifar``     zero-pad 4 pixels on each side, random crop back to the input
                size, horizontal flip with p = 0.5.
  ``imagenet``  random-resized crop (area scale 0.08-1, aspect ratio 3/4-4/3)
                to the output size, horizontal flip with p = 0.5. Its eval
                counterpart is `center_crop_resize` (shorter side to
                size * 256 / 224, then a center crop).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

AUGMENTATIONS = ("none", "cifar", "imagenet")

_AUGMENT_TAG = 0x61756731  # separates augmentation streams from the shuffling stream [seed, epoch]


def example_rng(seed: int, step: int, index: int) -> np.random.Generator:
    """The generator of example `index` (global index in the split) at global `step`."""
    return np.random.default_rng([int(seed), _AUGMENT_TAG, int(step), int(index)])


def resize(image: np.ndarray, size_hw: tuple[int, int],
           box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Bilinear (antialiased) resize of uint8 [h, w, C] to [H, W, C]; `box` = (left, top, right, bottom) crops first."""
    out_h, out_w = int(size_hw[0]), int(size_hw[1])
    h, w, c = image.shape
    if box is None and (h, w) == (out_h, out_w):
        return image
    if c == 3:
        pil = Image.fromarray(np.ascontiguousarray(image), "RGB")
        return np.asarray(pil.resize((out_w, out_h), Image.BILINEAR, box=box))
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, k]), "L")
                         .resize((out_w, out_h), Image.BILINEAR, box=box)) for k in range(c)]
    return np.stack(planes, axis=-1)


def center_crop_resize(image: np.ndarray, size_hw: tuple[int, int], resize_shorter_to: int) -> np.ndarray:
    """Eval preprocessing: uint8 [h, w, C] -> [H, W, C].

    Scales the image so that its shorter side is `resize_shorter_to` (>= H, W),
    then takes the central H x W window, in one resampling step.
    """
    h, w = image.shape[:2]
    out_h, out_w = int(size_hw[0]), int(size_hw[1])
    if (h, w) == (out_h, out_w):
        return image
    scale = resize_shorter_to / min(h, w)
    crop_h, crop_w = min(out_h / scale, h), min(out_w / scale, w)
    top, left = (h - crop_h) / 2.0, (w - crop_w) / 2.0
    return resize(image, (out_h, out_w), box=(left, top, left + crop_w, top + crop_h))


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """CIFAR augmentation of uint8 [H, W, C]: zero-pad `pad`, random H x W crop, flip with p = 0.5."""
    h, w, c = image.shape
    dy, dx = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
    flip = rng.random() < 0.5
    padded = np.zeros((h + 2 * pad, w + 2 * pad, c), np.uint8)
    padded[pad:pad + h, pad:pad + w] = image
    out = padded[dy:dy + h, dx:dx + w]
    return out[:, ::-1] if flip else out


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A crop (top, left, crop_h, crop_w) covering a random area fraction in `scale` with aspect ratio in `ratio`.

    Ten tries; if none fits, the largest central crop whose ratio is within bounds.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        crop_w = int(round(math.sqrt(target * aspect)))
        crop_h = int(round(math.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        crop_h, crop_w = height, int(round(height * ratio[1]))
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def resized_crop_flip(image: np.ndarray, rng: np.random.Generator, size_hw: tuple[int, int]) -> np.ndarray:
    """ImageNet train augmentation: uint8 [h, w, C] -> random-resized crop [H, W, C], flip with p = 0.5."""
    top, left, crop_h, crop_w = random_resized_crop_box(image.shape[0], image.shape[1], rng)
    flip = rng.random() < 0.5
    out = resize(image, size_hw, box=(left, top, left + crop_w, top + crop_h))
    return out[:, ::-1] if flip else out


def augment_batch(kind: str, images: Sequence[np.ndarray], rngs: Sequence[np.random.Generator],
                  size_hw: tuple[int, int]) -> np.ndarray:
    """Augments b images (uint8 [h_i, w_i, C] each; already [H, W, C] unless `kind` is ``imagenet``).

    Returns uint8 [b, H, W, C]. ``cifar`` crops back to each image's own size,
    which must be `size_hw`.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; allowed: {', '.join(AUGMENTATIONS)}")
    channels = images[0].shape[-1] if len(images) else 1
    out = np.empty((len(images), int(size_hw[0]), int(size_hw[1]), channels), np.uint8)
    for i, (image, rng) in enumerate(zip(images, rngs)):
        if kind == "imagenet":
            out[i] = resized_crop_flip(image, rng, size_hw)
        elif kind == "cifar":
            out[i] = pad_crop_flip(image, rng)
        else:
            out[i] = image
    return out
