"""Certification-sampling throughput: the jaxsmooth engine against PyTorch references of the same architecture.

Every contender counts the top class of n noisy copies x + sigma * z of each
of `inputs` random inputs of the model's shape (random weights); samples/s are
noisy forward passes per second. The contenders:

- ``jax <dtype>``: `certification.Sampler`, one call per round (compile time
  reported apart: the first call, with n = 1, compiles and runs one chunk);
- ``torch canonical``: Cohen et al.'s ``_sample_noise`` (locuslab/smoothing),
  `torch_reference.sample_counts_canonical`, one input at a time;
- ``torch tuned f32`` / ``torch tuned bf16``: `torch_reference.make_tuned_sampler`
  (inference_mode, channels_last, counts on the device; bf16 autocast);
- ``jax <dtype> workdir`` (with `workdir`): the engine on a workdir's model as
  `jaxsmooth.load` reads it (a trained run, or a converted PyTorch checkpoint;
  its config's compute dtype), beside the random-weight model of the same
  architecture.

With ``noises=("gaussian", "lattice")`` the engine runs once per noise
kind (``jax float32 gaussian``, ``jax float32 lattice``), side by side.

With a denoiser (``denoiser="mnist_dncnn"``, a DnCNN of `models.dncnn.ARCHS`
with its initial weights, or a denoiser's workdir) every contender samples
the pair classifier(denoiser(x + sigma * z)) of denoised smoothing: the
engine the composition certify samples (`loader.wrap`), the PyTorch
samplers `torch_reference.Denoised`; and ``jax <dtype> <model> alone``
samples the classifier alone, so the pair's cost per sample reads against
it.

Beside the rates: the model's forward FLOPs per sample (2 per multiply-add of
its convolutions and matrix products) and the machine's matmul peak measured here, so a
rate reads as a fraction of what the chip can do; and `memory`, which runs the
engine alone in fresh processes to compare peak resident memory across n.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsmooth import certification, compilation, loader, models
from jaxsmooth.benchmarks.timing import Result, interleave
from jaxsmooth.benchmarks import flops
from jaxsmooth.benchmarks.train import input_shape_of
from jaxsmooth.errors import UserError

SIGMA = 0.25
DEFAULT_NOISES = (certification.noises.GAUSSIAN.name,)  # the engine's contender, labelled without its noise
TUNED_BATCH = 250  # B=1000 is 2x slower than 250 for torch on a 2-core CPU (ANCHORS.md)
MEMORY_NS = (10_000, 1_000_000)  # the acceptance: peak memory at 1e6 within 10% of that at 1e4

Contender = tuple[Callable[[], object], int, float]  # (run, samples per round, setup seconds)


def num_classes_of(name: str) -> int:
    return 1000 if name == "resnet50" else 10


def _module(name: str, input_shape, num_classes: int, dtype: str = "float32", width: int = 0):
    c = input_shape[-1]
    return models.create(name, num_classes=num_classes, input_shape=tuple(input_shape), mean=(0.5,) * c,
                         std=(0.25,) * c, dtype=dtype, width=width, seed=0)


def engine_model(name: str, input_shape, num_classes: int, dtype: str = "float32", width: int = 0) -> models.Model:
    """Model `name` with random weights (seed 0), BatchNorm folded: what the engine samples."""
    return models.fold_batch_norm(models.split(_module(name, input_shape, num_classes, dtype, width)))


def denoised(classifier: models.Model, front: loader.LoadedModel, input_shape) -> models.Model:
    """classifier(front(x)): `classifier` (inputs of `input_shape`) behind the denoiser `front`, composed as
    certify composes them (`loader.wrap`), which refuses a wrapper of another kind or input shape, naming
    ``denoiser``."""
    from jaxsmooth.models import dncnn

    stand_in = loader.of_apply(classifier.apply, classifier.params, classifier.model_state, input_shape)
    pair = loader.wrap(stand_in, front, kind=dncnn.NAME)
    return models.Model(pair.apply, pair.params, pair.model_state)


def denoiser_of(denoiser: str, input_shape, dtype: str = "float32") -> loader.LoadedModel:
    """The denoiser `denoiser` names, BatchNorm folded, checked to take inputs of `input_shape`.

    Args:
      denoiser: a DnCNN of `models.dncnn.ARCHS`, with its initial weights (the
        paper's init) in compute `dtype`, its `workdir` the name; or a
        denoiser's workdir, read as ``certify --denoiser`` reads it
        (`loader.load_model`).
    Raises:
      UserError("denoiser"): neither, a workdir of another kind, or one for
        inputs of another shape (`denoised`).
    """
    from jaxsmooth.models import dncnn

    if denoiser in dncnn.ARCHS:
        info = dncnn.metadata(dncnn.ARCHS[denoiser].input_shape, SIGMA, arch=denoiser)
        model = models.fold_batch_norm(models.split(dncnn.create(info, dtype=dtype)))
        front = loader.LoadedModel(apply=model.apply, params=model.params, model_state=model.model_state,
                                   input_shape=tuple(info["input_shape"]), num_classes=None, mean=None, std=None,
                                   sigma=SIGMA, info=info, config=None, workdir=denoiser, step=0, folded=True,
                                   dtype=dtype, wrapper=dncnn.NAME)
    elif os.path.isdir(denoiser):
        front = loader.load_model(denoiser, field=dncnn.NAME)
    else:
        raise UserError(dncnn.NAME, f"{denoiser!r} is neither a DnCNN ({', '.join(dncnn.ARCHS)}) nor a denoiser's "
                                    "workdir")
    denoised(models.Model(None, {}, {}), front, input_shape)  # the pair's checks, before a classifier is built
    return front


def pair_name(front: loader.LoadedModel, name: str) -> str:
    """How the tables name the pair: ``mnist_dncnn + cnn`` (a workdir's denoiser: its arch, else its folder)."""
    return f"{front.info.get('arch') or os.path.basename(os.path.normpath(front.workdir))} + {name}"


def random_inputs(inputs: int, input_shape) -> np.ndarray:
    """[inputs, H, W, C] float32 8-bit images k/255, k uniform in 0..255, fixed seed (lattice noise needs the grid)."""
    levels = np.random.default_rng(0).integers(0, 256, size=(inputs, *input_shape))
    return np.divide(levels, 255, dtype=np.float32)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


# --xla-options names: the Sampler's compiler_options
XLA_OPTIONS = {"auto": "auto", "dot": compilation.CPU_COMPILER_OPTIONS, "eltwise": compilation.CPU_ELEMENTWISE_OPTIONS,
               "default": {}}


def jax_contender(name: str, n: int, batch: int, inputs: int, input_shape, *, dtype: str = "float32",
                  num_classes: int = 10, width: int = 0, xla_options: str = "auto",
                  chosen: dict | None = None, model: models.Model | None = None,
                  noise: str = "gaussian") -> Contender:
    """A warmed-up ``run()`` counting n samples of each of `inputs` inputs with `certification.Sampler`; it returns
    the `certification.Counts` (host arrays) of `random_inputs` (indices 0 .. inputs - 1, key 0, sigma `SIGMA`).

    The sampler runs forward batches of `batch` (= inputs x chunk) samples
    with `noise` ("gaussian" or "lattice"), compiled with
    `XLA_OPTIONS[xla_options]`; `chosen`, when given, receives the options it
    was compiled with under the key "options". `model`: this
    BatchNorm-folded model instead of model `name` with random weights.
    """
    model = model or engine_model(name, input_shape, num_classes, dtype, width)
    sampler = certification.Sampler(model.apply, model.params, model.model_state, input_shape=input_shape,
                                    num_classes=num_classes, inputs=inputs, chunk=batch // inputs,
                                    compiler_options=XLA_OPTIONS[xla_options], noise=noise)
    x, index, key = random_inputs(inputs, input_shape), np.arange(inputs), jax.random.key(0)
    t0 = time.perf_counter()
    sampler(x, index, SIGMA, 1, key)  # n is a run-time argument: this compiles and runs one chunk
    setup_s = time.perf_counter() - t0
    if chosen is not None:
        chosen["options"] = sampler.chosen_options

    def one_round():
        return sampler(x, index, SIGMA, n, key)  # host counts: blocks until done

    return one_round, n * inputs, setup_s


def workdir_model(workdir: str) -> tuple[str, models.Model]:
    """(contender label ``jax <dtype> workdir``, the BatchNorm-folded model) of `workdir`, read by `jaxsmooth.load`."""
    import jaxsmooth
    from jaxsmooth import checkpoint

    loaded = jaxsmooth.load(workdir)
    config = checkpoint.read_json(os.path.join(workdir, checkpoint.CONFIG_FILE), "--workdir")
    dtype = config.get("model", {}).get("dtype", "float32")
    return f"jax {dtype} workdir", models.Model(loaded.apply, loaded.params, loaded.model_state)


def torch_contenders(name: str, n: int, inputs: int, input_shape, *, batch: int, tuned_batch: int = TUNED_BATCH,
                     num_classes: int = 10, width: int = 0, compile_mode: str = "",
                     denoiser: tuple[int, int] | None = None) -> dict[str, Contender]:
    """``torch canonical``, ``torch tuned f32`` and ``torch tuned bf16``, or {} without torch or a reference model.

    `batch` is the canonical loop's batch; `tuned_batch` the tuned samplers'.
    With `denoiser` (depth, width), each samples the model behind a DnCNN of
    that size (`torch_reference.Denoised`).
    With `compile_mode`, also ``torch compiled f32`` / ``torch compiled bf16``:
    the tuned samplers with the model under ``torch.compile(mode=compile_mode)``
    (compilation, autotuning included, is their setup time).
    """
    try:
        import torch
        from jaxsmooth.benchmarks import torch_reference
    except ImportError:
        return {}
    width, hidden = models.cnn_sizes(width) if name == "cnn" else (0, 0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the machine's accelerator, as JAX's default
    x = torch.from_numpy(random_inputs(inputs, input_shape)).permute(0, 3, 1, 2).contiguous().to(device)  # NCHW

    def reference():
        torch.manual_seed(0)
        model = torch_reference.create(name, input_shape, num_classes, width=width, hidden=hidden, denoiser=denoiser)
        return None if model is None else model.to(device)

    canonical = reference()
    if canonical is None:
        return {}
    canonical.eval()

    def canonical_counts(n):
        for i in range(inputs):
            torch_reference.sample_counts_canonical(canonical, x[i], SIGMA, n, batch, num_classes)

    samplers = {"torch canonical": (canonical_counts, batch)}
    tuned = reference()
    variants = [("torch tuned f32", False, ""), ("torch tuned bf16", True, "")]
    if compile_mode:
        variants += [("torch compiled f32", False, compile_mode), ("torch compiled bf16", True, compile_mode)]
    for label, bf16, mode in variants:
        model = reference() if mode else tuned  # each compiled sampler its own module: no shared guards
        sample = torch_reference.make_tuned_sampler(model, batch=tuned_batch, bf16=bf16, compile_mode=mode)
        samplers[label] = (lambda n, sample=sample: sample(x, SIGMA, n, num_classes).cpu(), tuned_batch)
    contenders = {}
    for label, (counts, first_batch) in samplers.items():
        t0 = time.perf_counter()
        counts(min(n, first_batch))  # one forward batch per input: oneDNN primitives, allocator
        contenders[label] = (lambda counts=counts: counts(n), n * inputs, time.perf_counter() - t0)
    return contenders


def forward_flops(name: str, input_shape, num_classes: int = 10, width: int = 0) -> float:
    """FLOPs of one sample's forward pass of model `name`: 2 per multiply-add of its convolutions and matrix
    products (`model_flops`)."""
    return model_flops(models.split(_module(name, input_shape, num_classes, "float32", width)), input_shape)


def model_flops(model: models.Model, input_shape) -> float:
    """FLOPs of one sample's forward pass of `model`: 2 per multiply-add of its convolutions and matrix products.

    Counted from the traced program (batch 2 minus batch 1), so the figure is the same on every
    backend (XLA's cost analysis leaves out GPU convolutions, which run as
    cuDNN custom calls); padding taps count, elementwise work does not.
    """
    forward = jax.make_jaxpr(lambda v, x: model.apply(*v, x, train=False)[0])
    count = lambda b: flops.jaxpr_flops(forward((model.params, model.model_state),
                                           jax.ShapeDtypeStruct((b, *input_shape), jnp.float32)).jaxpr)
    return count(2) - count(1)  # per sample: work done once per batch (on the weights) cancels


def matmul_peak(dtype: str = "float32", size: int = 4096, repeats: int = 3) -> float:
    """GFLOP/s of the best of `repeats` jitted ``size`` x ``size`` matrix products (XLA's default compile options)."""
    a = jnp.asarray(np.random.default_rng(0).uniform(size=(size, size)), dtype)
    product = compilation.compile(jax.jit(jnp.matmul), a, a, cpu_options=False)  # XLA's default dot is the faster
    product(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        product(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def torch_matmul_peak(dtype: str = "bfloat16", size: int = 4096, repeats: int = 3) -> float | None:
    """As `matmul_peak`, with ``torch.matmul`` (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.rand(size, size, device=device).to(getattr(torch, dtype))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.matmul(a, a)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, a)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


@dataclasses.dataclass(frozen=True)
class Report:
    """What `benchmark` measured.

    results: contender -> interleaved timings; compute_dtype: contender ->
    "float32" / "bfloat16"; flops: model -> FLOPs of one sample's forward pass
    (`model_flops`), first `model`, the one every PyTorch contender samples
    (with a denoiser, the pair ``mnist_dncnn + cnn``; then also the classifier
    alone); sampled: contender -> the model of `flops` it samples; peaks: dtype
    -> (GFLOP/s, how it was measured); peak_rss_bytes: this process's peak RSS
    after all contenders ran; alone: contender sampling the classifier alone
    -> the engine's contender of the pair with the same dtype, options and
    noise ({} without a denoiser).
    """

    results: dict[str, Result]
    compute_dtype: dict[str, str]
    flops: dict[str, float]
    sampled: dict[str, str]
    peaks: dict[str, tuple[float, str]]
    peak_rss_bytes: int
    options: dict[str, dict]  # jax contender -> the XLA options its sampler was compiled with
    alone: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def model(self) -> str:
        return next(iter(self.flops))

    @property
    def flops_per_sample(self) -> float:
        return self.flops[self.model]

    def gflops(self, name: str) -> float:
        return self.results[name].rate * self.flops[self.sampled[name]] / 1e9

    def fraction_of_peak(self, name: str) -> float | None:
        peak = self.peaks.get(self.compute_dtype[name])
        return self.gflops(name) / peak[0] if peak else None


def engine_contenders(name: str, n: int, *, batch: int, inputs: int, input_shape, num_classes: int, dtypes,
                       xla_options, noises, denoiser: str, workdir: str):
    """The engine's contenders of `benchmark`: (contenders, their XLA options, the model each samples, `Report.alone`).

    One per dtype, option set and noise, sampling model `name` (behind
    `denoiser` when given, and then ``jax <dtype> <name> alone`` too); with
    `workdir`, ``jax <dtype> workdir``.
    """
    contenders, options, sampled, alone = {}, {}, {}, {}

    def add(label, model, model_name, o=xla_options[0], noise=noises[0]):
        chosen: dict = {}
        contenders[label] = jax_contender(name, n, batch, inputs, input_shape, num_classes=num_classes,
                                          xla_options=o, chosen=chosen, model=model, noise=noise)
        options[label], sampled[label] = chosen["options"], model_name

    label_of = lambda d, o, noise: (f"jax {d}" + (f" {noise}" if tuple(noises) != DEFAULT_NOISES else "")  # noqa: E731
                                    + (f" ({o} options)" if len(xla_options) > 1 else ""))
    for d in dtypes:
        classifier = engine_model(name, input_shape, num_classes, d)
        front = denoiser_of(denoiser, input_shape, d) if denoiser else None
        timed = pair_name(front, name) if front else name
        for o in xla_options:
            for noise in noises:
                add(label_of(d, o, noise), denoised(classifier, front, input_shape) if front else classifier,
                    timed, o, noise)
        if front:
            alone[f"jax {d} {name} alone"] = label_of(d, xla_options[0], noises[0])
            add(f"jax {d} {name} alone", classifier, name)
    if workdir:
        label, model = workdir_model(workdir)
        front = denoiser_of(denoiser, input_shape) if denoiser else None
        add(label, denoised(model, front, input_shape) if front else model, pair_name(front, name) if front else name)
    return contenders, options, sampled, alone


def sampled_flops(name: str, input_shape, num_classes: int, denoiser: str) -> dict[str, float]:
    """`Report.flops`: the model timed (model `name`, or it behind `denoiser`), then with a denoiser `name` alone."""
    alone = forward_flops(name, input_shape, num_classes)
    if not denoiser:
        return {name: alone}
    front = denoiser_of(denoiser, input_shape)
    pair = denoised(engine_model(name, input_shape, num_classes), front, input_shape)
    return {pair_name(front, name): model_flops(pair, input_shape), name: alone}


def benchmark(name: str, n: int, *, batch: int = 1000, inputs: int = 1, input_shape=None,
              dtypes=("float32",), rounds: int = 5, with_torch: bool = True, torch_batch: int | None = None,
              tuned_batch: int = TUNED_BATCH, matmul_size: int = 4096, xla_options=("auto",),
              torch_compile: str = "", on_round: Callable[[int], None] | None = None, workdir: str = "",
              num_classes: int | None = None, noises=None, denoiser: str = "") -> Report:
    """Interleaved medians of the jaxsmooth engine (per dtype and noise) and the PyTorch references, FLOPs and peaks.

    Args:
      n: samples per input; each round every contender draws n * inputs.
      batch: the engine's forward batch (inputs x chunk); the canonical loop's too unless `torch_batch`.
      tuned_batch: the tuned PyTorch samplers' batch.
      workdir: also ``jax <dtype> workdir``, the engine on this workdir's model (of architecture `name`),
        compiled with the first of `xla_options`, with the first of `noises`.
      num_classes: default `num_classes_of(name)`.
      noises: the engine's noise kinds (`jaxsmooth.certification.noises`), one contender each; their names are in
        the contenders' labels unless they are `DEFAULT_NOISES` (default).
      denoiser: every contender samples model `name` behind this denoiser (`denoiser_of`: a DnCNN's name or a
        denoiser's workdir), and ``jax <dtype> <name> alone`` the classifier alone, with the first of
        `xla_options` and of `noises` (module docstring).
    """
    input_shape = tuple(input_shape or input_shape_of(name))
    num_classes = num_classes or num_classes_of(name)
    noises = DEFAULT_NOISES if noises is None else tuple(noises)
    flops = sampled_flops(name, input_shape, num_classes, denoiser)
    contenders, options, sampled, alone = engine_contenders(
        name, n, batch=batch, inputs=inputs, input_shape=input_shape, num_classes=num_classes, dtypes=dtypes,
        xla_options=xla_options, noises=noises, denoiser=denoiser, workdir=workdir)
    if with_torch:
        front = denoiser_of(denoiser, input_shape) if denoiser else None
        references = torch_contenders(name, n, inputs, input_shape, batch=torch_batch or batch,
                                      tuned_batch=tuned_batch, num_classes=num_classes, compile_mode=torch_compile,
                                      denoiser=(front.info["depth"], front.info["width"]) if front else None)
        contenders.update(references)
        sampled.update(dict.fromkeys(references, next(iter(flops))))
    compute_dtype = {c: "bfloat16" if "bfloat16" in c or c.endswith("bf16") else "float32" for c in contenders}
    results = interleave(contenders, rounds, on_round)
    peaks = {"float32": (matmul_peak("float32", matmul_size), f"jnp float32 matmul {matmul_size}^2")}
    if "bfloat16" in compute_dtype.values():
        torch_peak = torch_matmul_peak("bfloat16", matmul_size) if with_torch else None
        peaks["bfloat16"] = ((torch_peak, f"torch bfloat16 matmul {matmul_size}^2") if torch_peak else
                             (matmul_peak("bfloat16", matmul_size), f"jnp bfloat16 matmul {matmul_size}^2"))
    return Report(results=results, compute_dtype=compute_dtype, flops=flops, sampled=sampled, peaks=peaks,
                  peak_rss_bytes=peak_rss_bytes(), options=options, alone=alone)


def alone_ratios(report: Report) -> list[str]:
    """One line per classifier-alone contender: the pair's time per sample over the classifier's alone."""
    lines = []
    for label, pair in report.alone.items():
        a, p = report.results[label], report.results[pair]
        per_round = statistics.median(t / s for t, s in zip(p.seconds, a.seconds))  # equal samples per round
        lines.append(f"{report.model} / {report.sampled[label]} alone, time per sample, {pair}: "
                     f"{a.rate / p.rate:.2f} (ratio of medians), {per_round:.2f} (median of the rounds' ratios)")
    return lines


def _memory_child(spec: str) -> None:
    """In a fresh process: one engine call for n samples; prints its peak RSS, seconds and counts as JSON."""
    s = json.loads(spec)
    run, samples, setup_s = jax_contender(s["name"], s["n"], s["batch"], s["inputs"], tuple(s["input_shape"]),
                                          dtype=s["dtype"], num_classes=s["num_classes"])
    rss_before = peak_rss_bytes()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    print(json.dumps({"n": s["n"], "samples": samples, "seconds": seconds, "setup_s": setup_s,
                      "peak_rss_bytes_before": rss_before, "peak_rss_bytes": peak_rss_bytes()}))


def memory(name: str, *, batch: int = 1000, inputs: int = 1, input_shape=None, dtype: str = "float32",
           ns=MEMORY_NS) -> list[dict]:
    """Peak resident memory of the engine alone, one fresh process per n (same batch, same model).

    Returns one dict per n: n, samples, seconds (the timed call), setup_s,
    peak_rss_bytes_before (after compiling and one chunk) and peak_rss_bytes.
    """
    input_shape = tuple(input_shape or input_shape_of(name))
    out = []
    for n in ns:
        spec = json.dumps({"name": name, "n": n, "batch": batch, "inputs": inputs, "input_shape": input_shape,
                           "dtype": dtype, "num_classes": num_classes_of(name)})
        code = f"from jaxsmooth.benchmarks import certify; certify._memory_child({spec!r})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"memory measurement for n={n} failed:\n{done.stderr[-2000:]}")
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out
