"""Input pipeline throughput on a mock ImageNet of JPEG files, and whether it keeps a ResNet-50 train step fed.

``python -m jaxsmooth.bench pipeline`` (`add_parser`, `main`) or `run`.

The data: `mock_imagenet` serves ``imagenet2012`` through
``tfds.testing.mock_data``, so `jaxsmooth.data.load("imagenet2012")` and the
trainer's `build_run` read it as they read the real set. The mock's own data
source (``MockPolicy.USE_CODE``) yields *already decoded* random uint8
arrays of 5-49 pixels a side, with no JPEG in them: timing it would time
nothing of what ImageNet costs. So its ``as_data_source_fn`` hook is given a
source of serialized ``tf.train.Example`` records holding JPEG files (smooth
synthetic photographs with a little noise, sides drawn from
[min_side, max_side], quality 90) that ``__getitem__`` decodes with
``features.deserialize_example_np``, the call tfds's ArrayRecord source makes
(proto parse, then JPEG decode: OpenCV when installed, else PIL). Every
image the pipeline reads is thus a JPEG decoded on the fly, then
random-resized-cropped and flipped (``augment="imagenet"``).

Three measurements, medians over timed windows:

* pipeline alone, images/s: the grain pipeline with `worker_count` worker
  processes, grain in this process (threads), and the thread pipeline
  (`data.train_batches`), each run alone on the host;
* the train step, examples/s, of jaxsmooth's trainer (`trainer.build_run`
  on ``configs/imagenet_gaussian.py`` with the model, image size and batch
  overridden; its jitted ``make_train_step`` sharded as the trainer does) on
  one batch already on the device (synthetic: no input cost), then fed by
  the grain pipeline through `prefetch_to_device`, each phase alone;
* fed / synthetic: ~1.0 means the pipeline never stalls the step.

On a CPU backend the pipeline's workers and XLA share the same cores, so a
fed / synthetic ratio under 1 there mixes a stall with that competition;
pipeline images/s against synthetic examples/s tells them apart (a pipeline
faster than the step keeps it fed once it has cores of its own, as beside a
GPU). ResNet-50 at 224x224 is very slow on a CPU: the defaults are 64x64
images and batches of 8.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import os
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np

from jaxsmooth import benchmarks, extras
from jaxsmooth.errors import UserError

DEFAULT_CONFIG = "imagenet_gaussian"


# ----------------------------------------------------------------------------- the mock ImageNet


class JpegExampleSource:
    """A random-access tfds-like source of serialized ``tf.train.Example`` records (JPEG images inside).

    ``source[i]`` deserializes and decodes record i with the dataset's
    ``features.deserialize_example_np`` (as tfds's ArrayRecordDataSource
    does); picklable, so grain worker processes can read it.
    """

    def __init__(self, features, records: Sequence[bytes], split: str, decoders=None):
        self.features = features
        self.records = tuple(records)
        self.split = split
        self.decoders = decoders

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i) -> dict:
        return self.features.deserialize_example_np(self.records[int(i)], decoders=self.decoders)

    def __getitems__(self, keys) -> list[dict]:
        return [self[k] for k in keys]

    def __repr__(self) -> str:
        return f"JpegExampleSource(split={self.split!r}, records={len(self.records)})"


@dataclasses.dataclass(frozen=True)
class MockInfo:
    """What the mock ImageNet's train split holds."""

    num_examples: int
    mean_jpeg_bytes: float
    mean_height: float
    mean_width: float
    jpeg_decoded: bool  # every image is a JPEG file decoded on each read


def synthetic_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3]: a smooth random colour field plus noise.

    At quality 90 a 500x375 one is a JPEG of about 80-90 KiB, near ImageNet's
    typical files (about 110 KB at 500x375); decoding it takes about as long.
    """
    from PIL import Image

    coarse = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC), np.float32)
    noisy = smooth + rng.normal(0.0, 12.0, size=smooth.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def mock_imagenet(num_examples: int = 256, *, image_size: int = 64, min_side: int = 300, max_side: int = 500,
                  quality: int = 90, seed: int = 0, num_classes: int = 1000):
    """(Dataset, MockInfo): ``imagenet2012`` through ``tfds.testing.mock_data``, JPEG-encoded (module docstring).

    Returns the `jaxsmooth.data.load("imagenet2012", image_size=image_size)`
    of the mock; its splits keep working after the mock is gone (their
    sources hold the records). The validation split holds the first
    num_examples // 8 (at least 1) of the train records.
    """
    from jaxsmooth.data.tfds_source import load_tfds

    tfds = extras.require("tensorflow_datasets", field="pipeline", purpose="the mock ImageNet of bench pipeline")

    if num_examples < 1:
        raise UserError("--examples", f"must be >= 1, got {num_examples}")
    if not 8 <= min_side <= max_side:
        raise UserError("--sides", f"need 8 <= min_side <= max_side, got {min_side}, {max_side}")
    rng = np.random.default_rng(seed)
    files, sizes = [], []
    for i in range(num_examples):
        height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        files.append((jpeg_bytes(synthetic_photo(rng, height, width), quality), int(rng.integers(num_classes)),
                      f"n{i:08d}.JPEG"))
        sizes.append((height, width))
    counts = {"train": num_examples}

    def as_data_source(builder, split=None, decoders=None, deserialize_method=None, **kwargs):
        del deserialize_method, kwargs
        features = builder.info.features

        def source(name: str) -> JpegExampleSource:
            count = counts.get(name, max(1, num_examples // 8))
            records = [features.serialize_example({"image": f, "label": label, "file_name": n})
                       for f, label, n in files[:count]]
            return JpegExampleSource(features, records, name, decoders)

        if isinstance(split, str):
            return source(split)
        return {s: source(s) for s in (split or ("train", "validation"))}

    with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=as_data_source):
        dataset = load_tfds("imagenet2012", image_size=image_size)
    heights, widths = zip(*sizes)
    info = MockInfo(num_examples=num_examples, mean_jpeg_bytes=float(np.mean([len(f[0]) for f in files])),
                    mean_height=float(np.mean(heights)), mean_width=float(np.mean(widths)),
                    jpeg_decoded=isinstance(dataset.train.source, JpegExampleSource))
    return dataset, info


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class Rate:
    """Items per second of each timed window; `median` and `spread` over them."""

    name: str
    per_window: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.per_window)

    @property
    def spread(self) -> float:
        """(max - min) / median over the windows."""
        return (max(self.per_window) - min(self.per_window)) / self.median


def _windows(name: str, tick: Callable[[], None], items: int, *, warmup: int, windows: int, steps: int,
             sync: Callable[[], None] = lambda: None) -> Rate:
    """`warmup` untimed ticks, then `windows` windows of `steps` ticks; `items` per tick; `sync` ends each window."""
    for _ in range(warmup):
        tick()
    sync()
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps):
            tick()
        sync()
        rates.append(steps * items / (time.perf_counter() - t0))
    return Rate(name, tuple(rates))


# ----------------------------------------------------------------------------- the benchmark


@dataclasses.dataclass(frozen=True)
class Result:
    """Everything `run` measured; `markdown` renders it."""

    settings: dict
    mock: MockInfo
    pipeline: dict[str, Rate]  # images/s, each pipeline alone
    synthetic: Rate  # train-step examples/s, one batch already on the device
    fed: Rate  # train-step examples/s, fed by grain through prefetch_to_device
    compile_s: float
    device: str

    @property
    def ratio(self) -> float:
        """fed / synthetic step throughput (medians): ~1.0 = no stall."""
        return self.fed.median / self.synthetic.median


def _check(flag: str, value: int, minimum: int) -> None:
    """UserError naming the command-line `flag` unless `value` is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(flag, f"must be an integer >= {minimum}, got {value!r}")


def measure_pipeline(*, model: str = "resnet50", image_size: int = 64, batch_size: int = 8, num_examples: int = 256,
        worker_count: int | None = None, prefetch: int = 2, worker_threads: int = 1, thread_workers: int = 2,
        device_prefetch: int = 2, windows: int = 5, steps: int = 4, pipeline_steps: int = 0,
        min_side: int = 300, max_side: int = 500, seed: int = 0, config_path: str = "",
        on_stage: Callable[[str], None] | None = None) -> Result:
    """Measures the pipelines alone and the train step with and without the grain pipeline (module docstring).

    Args:
      model, image_size, batch_size: the train step's model, input side and global batch.
      num_examples: JPEG files in the mock train split.
      worker_count, prefetch, worker_threads: the grain pipeline's (None: `default_worker_count`).
      thread_workers: threads of the thread pipeline compared with it.
      device_prefetch: batches `prefetch_to_device` keeps placed ahead.
      windows, steps: timed windows and train steps per window (medians over windows).
      pipeline_steps: batches per window for the pipelines alone (0: 4 * steps).
      min_side, max_side: range of the mock images' height and width.
      config_path: the trainer config file (default: the packaged imagenet_gaussian).
      on_stage: receives one line per stage (progress).
    """
    import jax

    from jaxsmooth.data import grain_pipeline

    say = on_stage or (lambda line: None)
    workers = grain_pipeline.default_worker_count() if worker_count is None else worker_count
    for flag, value, minimum in (("--image-size", image_size, 8), ("--batch", batch_size, 1),
                                 ("--workers", workers, 1), ("--prefetch", prefetch, 0),
                                 ("--worker-threads", worker_threads, 1), ("--thread-workers", thread_workers, 0),
                                 ("--device-prefetch", device_prefetch, 1), ("--windows", windows, 1),
                                 ("--steps", steps, 1), ("--pipeline-steps", pipeline_steps, 0)):
        _check(flag, value, minimum)
    if num_examples < batch_size:
        raise UserError("--examples", f"must be >= --batch ({batch_size}), got {num_examples}")
    config_file, config = _train_config(config_path, model, image_size, batch_size, seed)
    pipeline_steps = pipeline_steps or 4 * steps

    say(f"mock imagenet2012: {num_examples} JPEG files")
    dataset, mock = mock_imagenet(num_examples, image_size=image_size, min_side=min_side, max_side=max_side,
                                  seed=seed)
    split = dataset.train
    grain_args = dict(global_batch_size=batch_size, seed=seed, augment="imagenet",
                      process_index=jax.process_index(), process_count=jax.process_count())

    pipelines = _time_pipelines(split, grain_args, workers=workers, prefetch=prefetch, worker_threads=worker_threads,
                                thread_workers=thread_workers, windows=windows, steps=pipeline_steps, say=say)

    say(f"train step: {model}, batch {batch_size}, {image_size}x{image_size}")
    run_, step_fn, state, root_key, first, compile_s = _compiled_train_step(config, dataset, num_examples,
                                                                            grain_args)
    mesh = run_.mesh
    holder = {"state": state, "metrics": None}

    def step_on(batch) -> None:
        holder["state"], holder["metrics"] = step_fn(holder["state"], batch, root_key)

    sync = lambda: jax.block_until_ready((holder["state"], holder["metrics"]))  # noqa: E731
    say("train step on a batch already on the device")
    synthetic = _windows("train step, batch on device", lambda: step_on(first), batch_size, warmup=2,
                         windows=windows, steps=steps, sync=sync)
    say("train step fed by grain + prefetch_to_device")
    it = grain_pipeline.grain_train_batches(run_.dataset.train, worker_count=workers, prefetch=prefetch,
                                            worker_threads=worker_threads, **grain_args)
    fed_batches = grain_pipeline.prefetch_to_device(it, mesh, size=device_prefetch)
    try:
        # Warm-up drains what the workers made while starting, so the windows see the steady state.
        fed = _windows("train step, fed by grain", lambda: step_on(next(fed_batches)), batch_size,
                       warmup=2 + workers * (prefetch + worker_threads) + device_prefetch, windows=windows,
                       steps=steps, sync=sync)
    finally:
        fed_batches.close()  # drops the batches placed ahead
        it.close()
        gc.collect()  # shared-memory batches caught in reference cycles go now, not at exit
    device = jax.devices()[0].device_kind
    settings = dict(model=model, image_size=image_size, batch_size=batch_size, num_examples=num_examples,
                    worker_count=workers, prefetch=prefetch, worker_threads=worker_threads,
                    thread_workers=thread_workers, device_prefetch=device_prefetch, windows=windows, steps=steps,
                    pipeline_steps=pipeline_steps, min_side=min_side, max_side=max_side, seed=seed,
                    config=os.path.basename(config_file), devices=len(mesh.devices.flat), cpu_count=os.cpu_count())
    return Result(settings=settings, mock=mock, pipeline=pipelines, synthetic=synthetic, fed=fed,
                  compile_s=compile_s, device=device)


def _train_config(config_path: str, model: str, image_size: int, batch_size: int, seed: int):
    """(config file, config): the trainer config of the measured train step."""
    from jaxsmooth import config as config_lib

    config_file = config_path or config_lib.packaged(DEFAULT_CONFIG)
    if not os.path.isfile(config_file):
        raise UserError("--config-file", f"no such config file {config_file!r}")
    return config_file, config_lib.load(config_file, [
        f"model.name={model}", f"data.image_size={image_size}", f"train.batch_size={batch_size}",
        "data.augment=imagenet", f"seed={seed}", "data.data_dir="])


def _time_pipelines(split, grain_args: dict, *, workers: int, prefetch: int, worker_threads: int,
                    thread_workers: int, windows: int, steps: int, say: Callable[[str], None]) -> dict[str, Rate]:
    """The pipelines alone: grain with worker processes, grain in process, and the thread pipeline."""
    import jax

    from jaxsmooth import data
    from jaxsmooth.data import grain_pipeline

    contenders = {
        f"grain, {workers} worker process{'es' if workers > 1 else ''}":
            lambda: grain_pipeline.grain_train_batches(split, worker_count=workers, prefetch=prefetch,
                                                       worker_threads=worker_threads, **grain_args),
        f"grain, in process ({worker_threads} thread{'s' if worker_threads > 1 else ''})":
            lambda: grain_pipeline.grain_train_batches(split, worker_count=0, prefetch=max(prefetch, 1),
                                                       worker_threads=worker_threads, **grain_args),
        f"thread pipeline ({thread_workers} threads)":
            lambda: data.train_batches(split, num_workers=thread_workers, prefetch=max(prefetch, thread_workers),
                                       **grain_args),
    }
    local = grain_args["global_batch_size"] // jax.process_count()
    pipelines = {}
    for name, make in contenders.items():
        say(f"pipeline alone: {name}")
        it = make()
        try:
            pipelines[name] = _windows(name, it.__next__, local, warmup=max(2, workers * (prefetch + 1)),
                                       windows=windows, steps=steps)
        finally:
            getattr(it, "close", lambda: None)()
            del it  # grain's workers and buffers go before the next pipeline starts
    return pipelines


def _compiled_train_step(config, dataset, num_examples: int, grain_args: dict):
    """(run, compiled train step, state, root key, first batch, compile seconds): the trainer's, on the mock data."""
    import jax

    from jaxsmooth import compilation, data, parallel, trainer

    tfds = extras.require("tensorflow_datasets", field="pipeline", purpose="the mock ImageNet of bench pipeline")

    with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=lambda *a, **k: _same_source(dataset, *a, **k)):
        run_ = trainer.build_run(config)
    mesh = run_.mesh
    replicated, batch_sharding = parallel.replicated(mesh), parallel.data_sharded(mesh)
    state = parallel.replicate(mesh, trainer.initial_state(run_.objective, config, run_.model.params,
                                                           run_.model.model_state, run_.dataset.input_shape, run_.tx))
    step_fn = jax.jit(trainer.make_train_step(trainer.objective_loss(run_.objective, config, run_.model.apply),
                                              run_.tx),
                      in_shardings=(replicated, batch_sharding, replicated), out_shardings=(replicated, replicated),
                      donate_argnums=0)
    root_key = parallel.replicate(mesh, run_.root_key)
    first = parallel.shard_batch(mesh, data.train_batch(run_.dataset.train, step=0, **grain_args))
    t0 = time.perf_counter()
    step_fn = compilation.compile(step_fn, state, first, root_key)
    return run_, step_fn, state, root_key, first, time.perf_counter() - t0


def _same_source(dataset, builder, split=None, decoders=None, deserialize_method=None, **kwargs):
    """``as_data_source_fn`` serving the sources of an already built mock (the trainer reloads by name)."""
    del builder, decoders, deserialize_method, kwargs
    sources = {"train": dataset.train.source, "validation": dataset.test.source}
    if isinstance(split, str):
        return sources.get(split, dataset.test.source)
    return {s: sources.get(s, dataset.test.source) for s in (split or sources)}


def markdown(result: Result) -> str:
    """The README table: pipelines alone (images/s), the train step synthetic / fed (examples/s), their ratio."""
    s, m = result.settings, result.mock
    lines = [f"| {s['model']} {s['image_size']}x{s['image_size']}, batch {s['batch_size']}, {result.device} "
             f"| per second (median) | spread |", "|---|---:|---:|"]
    for name, rate in result.pipeline.items():
        lines.append(f"| pipeline alone: {name} | {rate.median:,.1f} images | {rate.spread:.0%} |")
    lines.append(f"| train step, batch already on device | {result.synthetic.median:,.1f} examples "
                 f"| {result.synthetic.spread:.0%} |")
    workers = f"{s['worker_count']} worker process{'es' if s['worker_count'] > 1 else ''}"
    lines.append(f"| train step, fed by grain ({workers}) + prefetch_to_device "
                 f"| {result.fed.median:,.1f} examples | {result.fed.spread:.0%} |")
    lines.append(f"| fed / on device (1.0 = no stall) | {result.ratio:.2f} | |")
    notes = (f"\nmock imagenet2012: {m.num_examples} JPEG files, mean {m.mean_height:.0f}x{m.mean_width:.0f}, "
             f"{m.mean_jpeg_bytes / 1024:.0f} KiB, {'decoded on every read' if m.jpeg_decoded else 'NOT JPEG'}; "
             f"random-resized crop + flip; {s['windows']} windows of {s['steps']} steps "
             f"({s['pipeline_steps']} batches for the pipelines alone); step compile {result.compile_s:.1f} s; "
             f"{s['devices']} device(s), {s['cpu_count']} CPU cores\n")
    return "\n".join(lines) + "\n" + notes


# ----------------------------------------------------------------------------- command line


def add_parser(subparsers) -> Any:
    """Adds ``pipeline`` to `python -m jaxsmooth.bench`'s subcommands; returns its parser."""
    p = subparsers.add_parser("pipeline", help="input pipeline images/s alone; train-step examples/s with a batch "
                                               "on the device vs fed by the grain pipeline")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=64, help="model input side (ImageNet: 224; slow on a CPU)")
    p.add_argument("--batch", type=int, default=8, help="global batch size")
    p.add_argument("--examples", type=int, default=256, help="JPEG files in the mock ImageNet train split")
    p.add_argument("--workers", type=int, default=-1, help="grain worker processes (-1: CPU cores - 1)")
    p.add_argument("--prefetch", type=int, default=2, help="finished batches each grain worker holds")
    p.add_argument("--worker-threads", type=int, default=1, help="threads making batches in each grain worker")
    p.add_argument("--thread-workers", type=int, default=2, help="threads of the thread pipeline compared")
    p.add_argument("--device-prefetch", type=int, default=2, help="batches placed on the device ahead")
    p.add_argument("--windows", type=int, default=5, help="timed windows; medians are over windows")
    p.add_argument("--steps", type=int, default=4, help="train steps per window")
    p.add_argument("--pipeline-steps", type=int, default=0, help="batches per window, pipelines alone (0: 4 x --steps)")
    p.add_argument("--sides", default="300,500", help="min,max height and width of the mock images")
    p.add_argument("--config-file", default="", help="trainer config (default: configs/imagenet_gaussian.py)")
    p.add_argument("--markdown", default="", help="also write the table here")
    p.add_argument("--json", default="", help="write the per-window rates here")
    return p


def main(args) -> int:
    """Runs `run` with the parsed arguments; prints a header line and the markdown table."""
    import json
    import sys


    try:
        min_side, max_side = (int(v) for v in args.sides.split(","))
    except ValueError:
        raise UserError("--sides", f"expected MIN,MAX such as 300,500, got {args.sides!r}") from None
    result = measure_pipeline(
        model=args.model, image_size=args.image_size, batch_size=args.batch, num_examples=args.examples,
        worker_count=None if args.workers < 0 else args.workers, prefetch=args.prefetch,
        worker_threads=args.worker_threads, thread_workers=args.thread_workers, device_prefetch=args.device_prefetch,
        windows=args.windows, steps=args.steps, pipeline_steps=args.pipeline_steps, min_side=min_side,
        max_side=max_side, config_path=args.config_file, on_stage=lambda line: print(line, file=sys.stderr))
    table = markdown(result)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": result.settings, "mock": dataclasses.asdict(result.mock),
                       "compile_s": result.compile_s, "device": result.device,
                       "rates": {r.name: list(r.per_window)
                                 for r in (*result.pipeline.values(), result.synthetic, result.fed)}}, f, indent=2)
    print(f"input pipeline, {args.model}, {benchmarks.machine()}")
    print(table, end="")
    return 0
