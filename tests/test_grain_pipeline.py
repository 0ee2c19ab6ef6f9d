"""The grain pipeline yields the thread pipeline's batches exactly; prefetch_to_device; the pipeline benchmark."""

import argparse
import io

import jax
import numpy as np
import pytest

from jaxsmooth import data, parallel
from jaxsmooth.data import grain_pipeline
from jaxsmooth.data.grain_pipeline import grain_train_batches, prefetch_to_device
from jaxsmooth.errors import UserError

pytest.importorskip("grain")

BATCH = 200  # digits: 1437 train examples -> 7 steps per epoch; steps 0..9 cross an epoch boundary
STEPS = 10
SEED = 5


@pytest.fixture(scope="module")
def digits():
    return data.load("digits").train


@pytest.fixture(scope="module")
def reference(digits):
    """Thread pipeline batches of steps 0..STEPS-1 (random-resized crop + flip, as for ImageNet)."""
    it = data.train_batches(digits, global_batch_size=BATCH, seed=SEED, augment="imagenet", num_workers=0)
    return [next(it) for _ in range(STEPS)]


def take(it, n):
    with it:
        return [next(it) for _ in range(n)]


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == {"image", "label", "index"}
        for key in w:
            assert g[key].dtype == w[key].dtype and g[key].shape == w[key].shape, key
            np.testing.assert_array_equal(g[key], w[key], err_msg=key)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: grain worker processes
def test_same_batches_as_thread_pipeline_then_resume(digits, reference, workers):
    got = take(grain_train_batches(digits, global_batch_size=BATCH, seed=SEED, augment="imagenet",
                                   worker_count=workers, prefetch=2), STEPS)
    assert_same(got, reference)
    assert got[0]["image"].dtype == np.float32 and 0.0 <= got[0]["image"].min() <= got[0]["image"].max() <= 1.0
    # resuming at step 6 (epoch 0's last steps, then epoch 1) gives the tail of the uninterrupted iterator
    it = grain_train_batches(digits, global_batch_size=BATCH, seed=SEED, start_step=6, augment="imagenet",
                             worker_count=workers)
    assert it.next_step == 6
    assert_same(take(it, STEPS - 6), got[6:])
    assert it.next_step == STEPS


# worker processes of process 0 and 1
@pytest.mark.parametrize("workers", [(0, 0), pytest.param((2, 1), marks=pytest.mark.slow)])
def test_process_shards_are_disjoint_and_complete(digits, reference, workers):
    steps = 4
    shards = [grain_train_batches(digits, global_batch_size=BATCH, seed=SEED, augment="imagenet",
                                  process_index=p, process_count=2, worker_count=workers[p]) for p in range(2)]
    parts = [take(it, steps) for it in shards]
    for s in range(steps):
        a, b = parts[0][s], parts[1][s]
        assert a["index"].shape == (BATCH // 2,)
        assert not set(a["index"]) & set(b["index"])
        assert_same([{k: np.concatenate([a[k], b[k]]) for k in a}], [reference[s]])
        threads = next(data.train_batches(digits, global_batch_size=BATCH, seed=SEED, start_step=s,
                                          augment="imagenet", process_index=1, process_count=2, num_workers=0))
        assert_same([b], [threads])


@pytest.mark.parametrize("augment", ["none", "cifar"])
def test_other_augmentations(digits, augment):
    want = data.train_batches(digits, global_batch_size=64, seed=1, start_step=21, augment=augment, num_workers=0)
    got = grain_train_batches(digits, global_batch_size=64, seed=1, start_step=21, augment=augment, worker_count=0,
                              prefetch=0)
    assert_same(take(got, 3), [next(want) for _ in range(3)])


@pytest.mark.slow
def test_mock_imagenet_is_jpeg_and_batches_match_with_workers():
    tfds = pytest.importorskip("tensorflow_datasets")
    from PIL import Image

    from jaxsmooth.benchmarks import pipeline as bench_pipeline

    ds, info = bench_pipeline.mock_imagenet(24, image_size=16, min_side=20, max_side=40)
    assert ds.input_shape == (16, 16, 3) and ds.num_classes == 1000 and ds.augment_default == "imagenet"
    assert len(ds.train) == 24 and info.jpeg_decoded and 20 <= info.mean_height <= 40
    source = ds.train.source
    assert isinstance(source, bench_pipeline.JpegExampleSource)
    # the stored record holds a JPEG file, and what the split serves is that file decoded
    skip = {"image": tfds.decode.SkipDecoding()}
    undecoded = source.features.deserialize_example_np(source.records[3], decoders=skip)
    jpeg = undecoded["image"]
    assert jpeg[:2] == b"\xff\xd8"
    raws, labels = ds.train.get_raw(np.array([3]))
    np.testing.assert_array_equal(raws[0], np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
    assert labels[0] == undecoded["label"]
    assert len({r.shape for r in ds.train.get_raw(np.arange(6))[0]}) > 1  # sizes vary

    want = data.train_batches(ds.train, global_batch_size=8, seed=2, augment="imagenet", num_workers=0)
    got = grain_train_batches(ds.train, global_batch_size=8, seed=2, augment="imagenet", worker_count=2)
    assert_same(take(got, 4), [next(want) for _ in range(4)])


def test_prefetch_to_device_places_ahead_in_order(devices, digits):
    mesh = parallel.make_mesh()
    pulled = []

    def source():
        for i in range(5):
            pulled.append(i)
            yield {"x": np.full((16, 2), i, np.float32), "i": np.full((16,), i, np.int32)}

    it = prefetch_to_device(source(), mesh, size=2)
    first = next(it)
    assert pulled == [0, 1, 2]  # batch 0 handed out, batches 1 and 2 already placed
    assert first["x"].sharding == parallel.data_sharded(mesh) and len(first["x"].addressable_shards) == 8
    rest = list(it)
    assert [int(b["i"][0]) for b in [first] + rest] == [0, 1, 2, 3, 4]

    host = next(grain_train_batches(digits, global_batch_size=64, seed=0, worker_count=0))
    on_device = next(prefetch_to_device(iter([host]), mesh))
    for key in host:
        assert isinstance(on_device[key], jax.Array)
        np.testing.assert_array_equal(np.asarray(on_device[key]), host[key])
    single = next(prefetch_to_device(iter([host]), devices[3], size=1))
    assert single["image"].devices() == {devices[3]}
    np.testing.assert_array_equal(np.asarray(single["image"]), host["image"])


@pytest.mark.parametrize("kwargs, field", [
    (dict(global_batch_size=0), "train.batch_size"),
    (dict(global_batch_size=5000), "train.batch_size"),
    (dict(global_batch_size=63, process_count=2), "train.batch_size"),
    (dict(augment="autoaugment"), "data.augment"),
    (dict(seed=-1), "seed"),
    (dict(seed=True), "seed"),
    (dict(start_step=-1), "start_step"),
    (dict(start_step=1.5), "start_step"),
    (dict(process_index=2, process_count=2), "process_index"),
    (dict(process_index=-1), "process_index"),
    (dict(process_count=0), "process_count"),
    (dict(worker_count=-1), "worker_count"),
    (dict(worker_count=True), "worker_count"),
    (dict(worker_count=2.0), "worker_count"),
    (dict(prefetch=-1), "prefetch"),
    (dict(worker_threads=0), "worker_threads"),
])
def test_bad_input_raises_data_error(digits, kwargs, field):
    args = dict(global_batch_size=64, seed=0, worker_count=0) | kwargs
    with pytest.raises(data.DataError) as e:
        grain_train_batches(digits, **args)
    assert e.value.field == field and str(e.value).startswith(f"{field}: ")
    assert isinstance(e.value, ValueError)  # as the thread pipeline's errors


def test_prefetch_to_device_bad_input():
    with pytest.raises(data.DataError, match="^size: "):
        prefetch_to_device(iter([]), None, size=0)
    with pytest.raises(data.DataError, match="^sharding: .*Mesh"):
        prefetch_to_device(iter([]), "gpu:0")


def test_default_worker_count_leaves_a_core():
    assert grain_pipeline.default_worker_count() >= 1


# ----------------------------------------------------------------------------- the benchmark


def parse(*argv):
    from jaxsmooth.benchmarks import pipeline as bench_pipeline

    parser = argparse.ArgumentParser()
    bench_pipeline.add_parser(parser.add_subparsers(dest="what"))
    return parser.parse_args(["pipeline", *argv])


def test_benchmark_parser_and_markdown():
    from jaxsmooth.benchmarks import pipeline as bench_pipeline

    args = parse("--batch", "4", "--workers", "3")
    assert (args.model, args.image_size, args.batch, args.workers) == ("resnet50", 64, 4, 3)
    rate = lambda name, values: bench_pipeline.Rate(name, tuple(values))  # noqa: E731
    result = bench_pipeline.Result(
        settings=dict(model="resnet50", image_size=64, batch_size=8, worker_count=1, windows=3, steps=4,
                      pipeline_steps=16, devices=1, cpu_count=2),
        mock=bench_pipeline.MockInfo(256, 60_000.0, 370.0, 371.0, True),
        pipeline={"grain, 1 worker process": rate("g", [100, 120, 110])},
        synthetic=rate("s", [40, 50, 45]), fed=rate("f", [36, 45, 40]), compile_s=12.0, device="cpu")
    table = bench_pipeline.markdown(result)
    assert "| pipeline alone: grain, 1 worker process | 110.0 images | 18% |" in table
    assert "| fed / on device (1.0 = no stall) | 0.89 |" in table
    assert "256 JPEG files, mean 370x371, 59 KiB, decoded on every read" in table


@pytest.mark.parametrize("argv, field", [(["--sides", "40"], "--sides"), (["--batch", "0"], "--batch"),
                                         (["--workers", "0"], "--workers"), (["--examples", "4"], "--examples"),
                                         (["--config-file", "/nonexistent.py"], "--config-file")])
def test_benchmark_bad_arguments(argv, field):
    from jaxsmooth.benchmarks import pipeline as bench_pipeline

    with pytest.raises(UserError) as e:
        bench_pipeline.main(parse(*argv))
    assert e.value.field == field


@pytest.mark.slow
def test_benchmark_runs_tiny(devices):
    from jaxsmooth.benchmarks import pipeline as bench_pipeline

    result = bench_pipeline.measure_pipeline(model="cnn", image_size=16, batch_size=8, num_examples=16, worker_count=1,
                                windows=1, steps=1, pipeline_steps=2, min_side=16, max_side=24)
    assert len(result.pipeline) == 3 and all(r.median > 0 for r in result.pipeline.values())
    assert result.synthetic.median > 0 and result.fed.median > 0 and result.ratio > 0
    assert result.mock.jpeg_decoded and "| fed / on device" in bench_pipeline.markdown(result)
