"""tensorflow-datasets sources, read by random access (`tfds.data_source`, ArrayRecord; no TensorFlow needed).

The dataset must already be prepared in ``array_record`` format in the
data_dir: these machines never download. Images of variable size (ImageNet)
are resized on the fly to the model's input size.
"""

from __future__ import annotations

import numpy as np

from jaxsmooth import extras
from jaxsmooth.data import augment
from jaxsmooth.data.core import KNOWN_STATS, DataError, Dataset, Split, channel_stats
from jaxsmooth.errors import quiet_absl

DEFAULT_IMAGE_SIZE = 224  # variable-size sets (ImageNet) when image_size = 0
EVAL_RESIZE_RATIO = 256 / 224  # eval: shorter side to image_size * 256 / 224, then center crop
STATS_SAMPLE = 1000  # train images whose pixels estimate mean/std for sets without published values

UNKNOWN_DATASET = ("unknown dataset {name!r}; allowed: digits, npz:PATH, idx:DIR, or a tensorflow-datasets name "
                   "such as mnist, cifar10, imagenet2012")


class TfdsSplit(Split):
    """One split of a tfds data source; `get` resizes images whose shape differs from `image_shape`.

    Args:
      source: a `tfds.data_source` split (random access, ``len`` and ``[i]`` -> feature dict).
      image_key, label_key: feature names of the image (uint8 [h, w, C]) and label (integer).
      image_shape: (H, W, C) that `get` returns.
      variable_size: whether stored images differ in size.
      resize_shorter_to: eval resize of the shorter side before the center crop.
    """

    def __init__(self, source, *, image_key: str, label_key: str, image_shape: tuple[int, int, int],
                 variable_size: bool, resize_shorter_to: int):
        self.source = source
        self.image_key, self.label_key = image_key, label_key
        self.image_shape = tuple(int(d) for d in image_shape)
        self.variable_size = variable_size
        self.resize_shorter_to = int(resize_shorter_to)
        self._len = len(source)

    def __len__(self) -> int:
        return self._len

    def get_raw(self, indices):
        idx = self._check(indices)
        examples = [self.source[int(i)] for i in idx]
        images = [_as_hwc(np.asarray(ex[self.image_key])) for ex in examples]
        labels = np.asarray([int(ex[self.label_key]) for ex in examples], np.int32).reshape(-1)
        return images, labels

    def get(self, indices):
        raws, labels = self.get_raw(indices)
        out = np.empty((len(raws),) + self.image_shape, np.uint8)
        for i, image in enumerate(raws):
            out[i] = augment.center_crop_resize(image, self.image_shape[:2], self.resize_shorter_to)
        return out, labels


def _as_hwc(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def _not_prepared(builder, name: str, data_dir: str, cause: Exception) -> DataError:
    root = str(getattr(builder, "data_dir_root", "") or data_dir or "~/tensorflow_datasets")
    build = f"tfds build {name} --data_dir {root} --file_format array_record"
    manual = ""
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        build += " --manual_dir MANUAL"
        files = ("ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" if builder.name.startswith("imagenet2012")
                 else f"the files the tfds catalog lists for {name}")
        manual = f" (it needs a manual download: MANUAL is a folder holding {files})"
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    try:
        prepared = builder.is_prepared()
    except Exception:  # noqa: BLE001 - only used to choose the message
        prepared = False
    if prepared:
        what = (f"tensorflow-datasets {name!r} is prepared in {builder.data_dir} but cannot be read by random "
                f"access ({reason}); it must be in array_record format: rebuild it with `{build}`{manual}")
    else:
        what = (f"tensorflow-datasets {name!r} is not prepared in {root} (looked for {builder.data_dir}); "
                f"jaxsmooth never downloads: on a machine with network, `pip install tensorflow` and run "
                f"`{build}`{manual}, then copy {root} here and set data.data_dir to it")
    return DataError("data.name", what)


def _test_split_name(builder) -> str:
    splits = set(builder.info.splits.keys()) if builder.info.splits else set()
    if builder.name.startswith("imagenet") and ("validation" in splits or not splits):
        return "validation"  # ImageNet's test split has no labels
    if "test" in splits or not splits:
        return "test"
    if "validation" in splits:
        return "validation"
    raise DataError("data.name", f"tensorflow-datasets {builder.name!r} has no test or validation split "
                                 f"(splits: {', '.join(sorted(splits))}); it cannot be evaluated")


def load_tfds(name: str, *, data_dir: str = "", image_size: int = 0) -> Dataset:
    """A tensorflow-datasets image classification set as a `Dataset` (see `jaxsmooth.data.load`)."""
    with quiet_absl():  # tfds's "Variant folder ... has no dataset_info.json" while probing
        return _load_tfds(name, data_dir=data_dir, image_size=image_size)


def _load_tfds(name: str, *, data_dir: str, image_size: int) -> Dataset:
    # local: slow-ish import, only for this path
    tfds = extras.require("tensorflow_datasets", field="data.name",
                          purpose=f"{name!r} (neither digits, npz:PATH nor idx:DIR, so a tensorflow-datasets name)")

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError("data.name", UNKNOWN_DATASET.format(name=name)) from None
    except ValueError as e:  # a malformed name or an unknown config
        first = str(e).strip().splitlines()[0]
        raise DataError("data.name", UNKNOWN_DATASET.format(name=name) + f" (tensorflow-datasets: {first})") from None
    features = builder.info.features
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    if not (isinstance(image_key, str) and isinstance(label_key, str) and image_key in features
            and label_key in features and getattr(features[label_key], "num_classes", None)
            and len(getattr(features[image_key], "shape", ())) == 3):
        raise DataError("data.name", f"tensorflow-datasets {name!r} is not an image classification set with an "
                                     f"image [H, W, C] and a class label; allowed: sets like mnist, cifar10, "
                                     f"imagenet2012")
    height, width, channels = features[image_key].shape
    channels = int(channels or 3)
    variable = height is None or width is None
    if variable:
        size = int(image_size or DEFAULT_IMAGE_SIZE)
        shape, shorter = (size, size, channels), int(round(size * EVAL_RESIZE_RATIO))
    elif image_size and (image_size, image_size) != (height, width):
        shape, shorter = (int(image_size), int(image_size), channels), int(image_size)
    else:
        shape, shorter = (int(height), int(width), channels), min(int(height), int(width))

    splits = {}
    for role, split_name in (("train", "train"), ("test", _test_split_name(builder))):
        try:
            source = tfds.data_source(name, split=split_name, data_dir=data_dir or None, download=False)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - tfds raises many types for a missing or unreadable set
            raise _not_prepared(builder, name, data_dir, e) from None
        splits[role] = TfdsSplit(source, image_key=image_key, label_key=label_key, image_shape=shape,
                                 variable_size=variable, resize_shorter_to=shorter)

    family = "imagenet" if builder.name.startswith("imagenet") else builder.name
    if family in KNOWN_STATS and len(KNOWN_STATS[family][0]) == channels:
        mean, std = KNOWN_STATS[family]
    else:
        train = splits["train"]
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(len(train), size=min(len(train), STATS_SAMPLE), replace=False))
        mean, std = channel_stats(train.get(sample)[0])
    augment_default = "imagenet" if variable else ("cifar" if builder.name.startswith("cifar") else "none")
    return Dataset(name=name, train=splits["train"], test=splits["test"],
                   num_classes=int(features[label_key].num_classes), input_shape=shape,
                   mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                   augment_default=augment_default)

