"""jaxsmooth.data: sources, augmentation, deterministic sharded batches."""

import dataclasses
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from jaxsmooth import data
from jaxsmooth.data import augment

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(),
                                  reason=f"real MNIST/Fashion-MNIST IDX files absent: {SHARED_DATA} "
                                         "(../shared/data beside the checkout)")


def toy_split(n=50, size=6, channels=1):
    """Images whose every pixel is 3 + (index % 250), so a batch shows which examples it holds."""
    images = np.broadcast_to((3 + np.arange(n) % 250).astype(np.uint8)[:, None, None, None],
                             (n, size, size, channels)).copy()
    return data.ArraySplit(images, (np.arange(n) % 7).astype(np.int64))


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_and_well_formed():
    ds = data.load("digits")
    assert (len(ds.train), len(ds.test)) == (1437, 360)
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10 and ds.augment_default == "none"
    x, y = ds.train.get(np.arange(len(ds.train)))
    assert x.dtype == np.uint8 and x.shape == (1437, 8, 8, 1) and x.max() == 255 and x.min() == 0
    assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    assert np.all(np.bincount(ds.test.get(np.arange(360))[1]) >= 35)  # stratified: 35-37 per class
    again = data.load("digits")
    np.testing.assert_array_equal(again.train.get(np.arange(1437))[0], x)
    np.testing.assert_array_equal(again.test.get(np.arange(360))[1], ds.test.get(np.arange(360))[1])
    assert 0.2 < ds.mean[0] < 0.4 and 0.3 < ds.std[0] < 0.45
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "x"
    big = data.load("digits", image_size=16)
    assert big.input_shape == (16, 16, 1) and big.train.get(np.arange(2))[0].shape == (2, 16, 16, 1)


def test_train_batches_shapes_dtypes_ranges():
    ds = data.load("digits")
    batch = next(data.train_batches(ds.train, global_batch_size=64, seed=0, augment="cifar"))
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (64, 8, 8, 1)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32
    assert np.all((0 <= batch["label"]) & (batch["label"] < 10))
    np.testing.assert_array_equal(ds.train.get(batch["index"])[1], batch["label"])
    plain = next(data.train_batches(ds.train, global_batch_size=64, seed=0))
    np.testing.assert_array_equal(plain["index"], batch["index"])
    np.testing.assert_array_equal(plain["image"] * 255, ds.train.get(plain["index"])[0])


# ----------------------------------------------------------------------------- ordering


def test_shuffle_is_deterministic_per_seed_and_differs_across_seeds_and_epochs():
    split = toy_split()
    first = take(data.train_batches(split, global_batch_size=8, seed=3, num_workers=0), 12)
    again = take(data.train_batches(split, global_batch_size=8, seed=3, num_workers=2), 12)
    assert_batches_equal(first, again)
    other = take(data.train_batches(split, global_batch_size=8, seed=4, num_workers=0), 6)
    assert not np.array_equal(first[0]["index"], other[0]["index"])
    epoch0 = np.concatenate([b["index"] for b in first[:6]])
    epoch1 = np.concatenate([b["index"] for b in first[6:]])
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(epoch0, np.random.default_rng([3, 0]).permutation(50)[:48])
    np.testing.assert_array_equal(epoch1, data.epoch_permutation(3, 1, 50)[:48])


def test_each_epoch_sees_every_example_once_up_to_the_remainder():
    split = toy_split(n=50)
    assert data.steps_per_epoch(50, 8) == 6
    batches = take(data.train_batches(split, global_batch_size=8, seed=0, num_workers=0), 18)
    for e in range(3):
        seen = np.concatenate([b["index"] for b in batches[6 * e:6 * e + 6]])
        assert len(np.unique(seen)) == 48 and seen.min() >= 0 and seen.max() < 50
    for b in batches:  # the image is the one of its index
        np.testing.assert_array_equal(b["image"][:, 0, 0, 0] * 255, 3 + b["index"] % 250)


@pytest.mark.parametrize("augment", ["none", "cifar"])
def test_start_step_resumes_exactly(augment):
    split = toy_split()
    full = take(data.train_batches(split, global_batch_size=8, seed=1, augment=augment), 14)
    resumed = take(data.train_batches(split, global_batch_size=8, seed=1, start_step=5, augment=augment), 9)
    assert_batches_equal(full[5:], resumed)  # crosses the epoch boundary at step 6 and 12
    assert_batches_equal([data.train_batch(split, global_batch_size=8, seed=1, step=9, augment=augment)], [full[9]])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_are_disjoint_and_concatenate_to_the_global_batch(process_count):
    split = toy_split(n=50, size=8, channels=3)
    reference = take(data.train_batches(split, global_batch_size=16, seed=2, augment="cifar"), 5)
    shards = [take(data.train_batches(split, global_batch_size=16, seed=2, augment="cifar", start_step=0,
                                      process_index=p, process_count=process_count), 5)
              for p in range(process_count)]
    for step in range(5):
        parts = [shards[p][step] for p in range(process_count)]
        assert all(len(part["index"]) == 16 // process_count for part in parts)
        seen = np.concatenate([part["index"] for part in parts])
        assert len(np.unique(seen)) == 16  # disjoint
        for key in ("image", "label", "index"):  # same order, same augmentation
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), reference[step][key])


def test_process_shard_reads_only_its_examples():
    class Counting(data.ArraySplit):
        def get(self, indices):
            self.asked = np.asarray(indices)
            return super().get(indices)

    base = toy_split()
    split = Counting(base.images, base.labels)
    batch = next(data.train_batches(split, global_batch_size=8, seed=0, process_index=1, process_count=2,
                                    num_workers=0))
    np.testing.assert_array_equal(np.sort(split.asked), np.sort(batch["index"]))
    assert len(split.asked) == 4


def test_batch_size_errors_name_the_field():
    split = toy_split(n=50)
    with pytest.raises(data.DataError, match=r"^train\.batch_size: 10 is not divisible by the number of proc"):
        data.train_batches(split, global_batch_size=10, seed=0, process_count=4)
    with pytest.raises(data.DataError, match=r"^train\.batch_size: 64 is larger than the training split \(50"):
        data.train_batches(split, global_batch_size=64, seed=0)
    with pytest.raises(data.DataError, match=r"^data\.augment: unknown augmentation 'flip'"):
        data.train_batches(split, global_batch_size=8, seed=0, augment="flip")
    with pytest.raises(ValueError):  # DataError is a ValueError
        data.eval_batches(split, global_batch_size=9, process_count=2)


# ----------------------------------------------------------------------------- augmentation


def shifted(image, dy, dx):
    """image moved by (dy, dx) with zeros shifted in."""
    h, w = image.shape[:2]
    out = np.zeros_like(image)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_cifar_crop_keeps_shape_pads_with_zeros_and_is_deterministic():
    image = np.random.default_rng(0).integers(1, 256, size=(32, 32, 3), dtype=np.uint8)  # no zero pixel
    candidates = {(dy, dx, flip): shifted(image[:, ::-1] if flip else image, dy, dx)
                  for dy in range(-4, 5) for dx in range(-4, 5) for flip in (False, True)}
    found = set()
    for seed in range(40):
        out = augment.pad_crop_flip(image, data.example_rng(seed, 0, 7))
        assert out.shape == image.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, augment.pad_crop_flip(image, data.example_rng(seed, 0, 7)))
        match = [k for k, v in candidates.items() if np.array_equal(v, out)]
        assert len(match) == 1, "output is not a zero-padded shift (optionally flipped) of the input"
        found.add(match[0])
    assert any(dy or dx for dy, dx, _ in found)  # zeros came in
    assert {flip for _, _, flip in found} == {False, True}
    per_step = {augment.pad_crop_flip(image, data.example_rng(0, step, 7)).tobytes() for step in range(6)}
    assert len(per_step) > 1  # a new draw at every step


def test_imagenet_augmentation_and_eval_resize():
    rng = np.random.default_rng(0)
    for h, w in [(40, 90), (300, 200), (17, 17)]:
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        out = augment.augment_batch("imagenet", [image], [data.example_rng(0, 0, 0)], (24, 24))
        again = augment.augment_batch("imagenet", [image], [data.example_rng(0, 0, 0)], (24, 24))
        assert out.shape == (1, 24, 24, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, again)
        assert data.center_crop_resize(image, (24, 24), 27).shape == (24, 24, 3)
        for seed in range(20):
            top, left, ch, cw = augment.random_resized_crop_box(h, w, np.random.default_rng(seed))
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    flat = np.full((50, 80, 1), 77, np.uint8)  # a constant image stays constant under any crop/resize
    assert np.all(augment.resized_crop_flip(flat, np.random.default_rng(1), (16, 16)) == 77)
    assert np.all(data.center_crop_resize(flat, (16, 16), 18) == 77)


# ----------------------------------------------------------------------------- eval batches


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_batches_cover_everything_once_with_mask(process_count):
    split = toy_split(n=50)
    per_process = [list(data.eval_batches(split, global_batch_size=12, process_index=p,
                                          process_count=process_count)) for p in range(process_count)]
    assert all(len(batches) == 5 for batches in per_process)  # ceil(50 / 12)
    merged = [{k: np.concatenate([per_process[p][b][k] for p in range(process_count)]) for k in per_process[0][b]}
              for b in range(5)]
    index = np.concatenate([b["index"] for b in merged])
    mask = np.concatenate([b["mask"] for b in merged])
    assert mask.dtype == np.bool_ and mask.sum() == 50
    np.testing.assert_array_equal(index[mask], np.arange(50))  # in order, each once
    assert np.all(index[~mask] == -1)
    image = np.concatenate([b["image"] for b in merged])
    label = np.concatenate([b["label"] for b in merged])
    assert image.dtype == np.float32 and image.shape == (60, 6, 6, 1)
    np.testing.assert_array_equal(image[mask][:, 0, 0, 0] * 255, 3 + np.arange(50))
    np.testing.assert_array_equal(label[mask], np.arange(50) % 7)
    assert np.all(image[~mask] == 0)


def test_eval_batches_image_size_resizes():
    batch = next(data.eval_batches(toy_split(n=10), global_batch_size=4, image_size=12))
    assert batch["image"].shape == (4, 12, 12, 1)


# ----------------------------------------------------------------------------- npz


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def good_arrays(n=20):
    x = np.random.default_rng(0).integers(0, 256, size=(n, 5, 5), dtype=np.uint8)  # NHW: C = 1 added
    y = np.arange(n) % 3
    return dict(x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])


def test_npz_loads_nhw_as_nhwc(tmp_path):
    ds = data.load(write_npz(tmp_path / "ok.npz", **good_arrays()))
    assert ds.input_shape == (5, 5, 1) and ds.num_classes == 3 and (len(ds.train), len(ds.test)) == (20, 6)
    x = good_arrays()["x_train"]
    assert ds.mean[0] == pytest.approx(x.mean() / 255) and ds.std[0] == pytest.approx(x.std() / 255)


@pytest.mark.parametrize("change, needle", [
    (lambda a: a.pop("y_test"), "missing key y_test"),
    (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), "x_train has dtype float32; images must be uint8"),
    (lambda a: a.update(y_train=a["y_train"][:-1]), "x_train holds 20 images but y_train 19 labels"),
    (lambda a: a.update(x_test=a["x_test"][:, 0]), "x_test has shape (6, 5); images must be [n, H, W, C]"),
    (lambda a: a.update(y_test=a["y_test"].astype(np.float64)), "labels must be integer"),
    (lambda a: a.update(y_test=-a["y_test"] - 1), "labels must be >= 0"),
])
def test_npz_errors_name_the_field_and_the_problem(tmp_path, change, needle):
    arrays = good_arrays()
    change(arrays)
    path = tmp_path / "bad.npz"
    with pytest.raises(data.DataError) as info:
        data.load(write_npz(path, **arrays))
    assert str(info.value).startswith(f"data.name: npz file {path}: ")
    assert needle in str(info.value)
    assert info.value.field == "data.name"


def test_npz_unreadable_files(tmp_path):
    for path in (tmp_path / "absent.npz", tmp_path / "garbage.npz"):
        if path.name == "garbage.npz":
            path.write_bytes(b"not a zip file at all")
        with pytest.raises(data.DataError, match=rf"^data\.name: npz file {path}: "):
            data.load(f"npz:{path}")


# ----------------------------------------------------------------------------- idx


def idx_bytes(array, type_code=0x08):
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_tiny_mnist(folder, n_train=12, n_test=5, compress=True):
    rng = np.random.default_rng(1)
    folder.mkdir(exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 4, 3), dtype=np.uint8)
        labels = (np.arange(n) % 4).astype(np.uint8)
        arrays[prefix] = (images, labels)
        for part, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            raw = idx_bytes(array)
            name = f"{prefix}-{part}" + (".gz" if compress else "")
            (folder / name).write_bytes(gzip.compress(raw) if compress else raw)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_on_a_tiny_self_written_folder(tmp_path, compress):
    arrays = write_tiny_mnist(tmp_path / "tiny", compress=compress)
    ds = data.load(f"idx:{tmp_path / 'tiny'}")
    assert (len(ds.train), len(ds.test)) == (12, 5) and ds.input_shape == (4, 3, 1) and ds.num_classes == 4
    x, y = ds.test.get(np.arange(5))
    np.testing.assert_array_equal(x[..., 0], arrays["t10k"][0])
    np.testing.assert_array_equal(y, arrays["t10k"][1])
    wide = np.arange(6, dtype=np.int32).reshape(2, 3) - 3  # a multi-byte type round-trips big-endian
    data.write_idx(str(tmp_path / "wide.idx"), wide)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / "wide.idx")), wide)


@pytest.mark.parametrize("raw, needle", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"ab", "magic number must start with two zero bytes"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"ab", "unknown IDX type byte 0x07"),
    (b"\x00\x00\x08\x02" + struct.pack(">II", 3, 3) + b"abc", "header promises shape (3, 3)"),
    (b"\x00\x00", "too short"),
])
def test_idx_reader_rejects_bad_files(tmp_path, raw, needle):
    path = tmp_path / "bad-idx"
    path.write_bytes(raw)
    with pytest.raises(data.DataError, match=r"^data\.name: idx file ") as info:
        data.read_idx(str(path))
    assert needle in str(info.value)


def test_idx_folder_errors(tmp_path):
    with pytest.raises(data.DataError, match="not a directory"):
        data.load(f"idx:{tmp_path / 'nowhere'}")
    write_tiny_mnist(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="missing t10k-labels-idx1-ubyte.gz"):
        data.load(f"idx:{tmp_path / 'partial'}")


@pytest.fixture(scope="module")
def mnist():
    return data.load(f"idx:{SHARED_DATA / 'mnist'}")


@needs_shared
def test_real_mnist_through_the_idx_reader(mnist):
    assert (len(mnist.train), len(mnist.test)) == (60000, 10000)
    assert mnist.input_shape == (28, 28, 1) and mnist.num_classes == 10
    x, y = mnist.test.get(np.arange(10000))
    assert x.mean() / 255 == pytest.approx(0.1325, abs=5e-4)
    assert mnist.mean[0] == pytest.approx(0.1307, abs=5e-4) and mnist.std[0] == pytest.approx(0.3081, abs=5e-4)
    np.testing.assert_array_equal(np.bincount(y, minlength=10).sum(), 10000)
    batch = next(data.train_batches(mnist.train, global_batch_size=32, seed=0, num_workers=0))
    assert batch["image"].shape == (32, 28, 28, 1)


@needs_shared
def test_real_fashion_mnist_labels():
    ds = data.load(f"idx:{SHARED_DATA / 'fashion_mnist'}")
    assert (len(ds.train), len(ds.test), ds.num_classes) == (60000, 10000, 10)
    assert np.all(np.bincount(ds.test.get(np.arange(10000))[1]) == 1000)


# ----------------------------------------------------------------------------- tensorflow-datasets


@pytest.fixture()
def mock_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


@pytest.mark.parametrize("name, shape, augment_default", [
    ("mnist", (28, 28, 1), "none"), ("cifar10", (32, 32, 3), "cifar")])
def test_tfds_random_access_through_mock_data(mock_tfds, tmp_path, name, shape, augment_default):
    ds = data.load(name, data_dir=str(tmp_path))
    assert ds.input_shape == shape and ds.num_classes == 10 and ds.augment_default == augment_default
    assert len(ds.train) == 24 and len(ds.test) == 24
    x, y = ds.train.get(np.array([3, 5, 3]))
    assert x.shape == (3,) + shape and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x[0], x[2])
    np.testing.assert_array_equal(ds.train.get(np.array([5]))[0][0], x[1])
    assert np.all((0 <= y) & (y < 10))
    if name == "cifar10":
        assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    batches = [next(data.train_batches(ds.train, global_batch_size=8, seed=0, augment=augment_default,
                                       process_index=p, process_count=2)) for p in range(2)]
    whole = next(data.train_batches(ds.train, global_batch_size=8, seed=0, augment=augment_default))
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), whole["image"])


def test_tfds_variable_size_images_are_resized(mock_tfds, tmp_path):
    ds = data.load("imagenet2012", data_dir=str(tmp_path), image_size=16)
    assert ds.input_shape == (16, 16, 3) and ds.num_classes == 1000 and ds.augment_default == "imagenet"
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    assert ds.test.get(np.arange(3))[0].shape == (3, 16, 16, 3)
    raws, _ = ds.train.get_raw(np.arange(3))
    assert len({r.shape for r in raws}) > 1  # the mock serves differing sizes
    it = data.train_batches(ds.train, global_batch_size=4, seed=0, augment="imagenet", num_workers=0)
    batch = next(it)
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    eval_batch = next(data.eval_batches(ds.test, global_batch_size=4))
    assert eval_batch["image"].shape == (4, 16, 16, 3)


def test_tfds_not_prepared_and_unknown_names(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(data.DataError) as info:
        data.load("mnist", data_dir=str(tmp_path))
    message = str(info.value)
    assert message.startswith("data.name: tensorflow-datasets 'mnist' is not prepared in ")
    assert f"tfds build mnist --data_dir {tmp_path} --file_format array_record" in message
    assert "pip install tensorflow" in message
    with pytest.raises(data.DataError) as info:
        data.load("imagenet2012", data_dir=str(tmp_path))
    assert "--manual_dir" in str(info.value) and "ILSVRC2012_img_train.tar" in str(info.value)
    with pytest.raises(data.DataError, match=r"^data\.name: unknown dataset 'cifar11'; allowed: digits, npz:PATH, "
                                             r"idx:DIR, or a tensorflow-datasets name"):
        data.load("cifar11", data_dir=str(tmp_path))


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory):
    """A tiny variable-size image set prepared by tfds itself in array_record format (PNG bytes: no TensorFlow)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import io

    from PIL import Image

    with tfds.core.registered.skip_registration():  # read back from its files, as a real prepared set
        class JaxsmoothTinyImages(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, supervised_keys=("image", "label"),
                                             features=tfds.features.FeaturesDict({
                                                 "image": tfds.features.Image(shape=(None, None, 3)),
                                                 "label": tfds.features.ClassLabel(num_classes=5)}))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(20, 0), "test": self._generate_examples(7, 1)}

            def _generate_examples(self, n, seed):
                rng = np.random.default_rng(seed)
                for i in range(n):
                    h, w = (int(v) for v in rng.integers(12, 40, size=2))
                    buf = io.BytesIO()
                    Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(buf, "PNG")
                    yield i, {"image": buf.getvalue(), "label": i % 5}

    data_dir = tmp_path_factory.mktemp("tfds")
    JaxsmoothTinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_real_array_record_files(prepared_tfds):
    ds = data.load("jaxsmooth_tiny_images", data_dir=str(prepared_tfds), image_size=8)
    assert (len(ds.train), len(ds.test), ds.num_classes, ds.input_shape) == (20, 7, 5, (8, 8, 3))
    assert ds.augment_default == "imagenet"
    x, y = ds.train.get(np.arange(20))
    np.testing.assert_array_equal(np.sort(x[:, 0, 0, 0]), 10 * np.arange(20))  # tfds shuffles on write
    np.testing.assert_array_equal(y, (x[:, 0, 0, 0] // 10) % 5)
    threaded = take(data.train_batches(ds.train, global_batch_size=4, seed=0, augment="imagenet", num_workers=2), 6)
    serial = take(data.train_batches(ds.train, global_batch_size=4, seed=0, augment="imagenet", num_workers=0), 6)
    assert_batches_equal(threaded, serial)
    evals = list(data.eval_batches(ds.test, global_batch_size=4))
    assert sum(int(b["mask"].sum()) for b in evals) == 7
