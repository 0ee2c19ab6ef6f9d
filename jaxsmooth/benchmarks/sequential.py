"""Sequential CERTIFY against fixed n on trained models, side by side: ``python -m jaxsmooth.bench sequential``.

For each model (a workdir and its sigma), on the same test images:

1. grid mode (radii ``--radii-sigma`` times sigma), run for real over every
   image with continuous batching: its TSV, samples per image and the
   fraction of forward-pass slots doing useful work;
2. wall-clock: fixed n at the budget, max-radius at each
   ``--timing-tolerances`` and grid, each run for real on the same images
   (``--timing-images`` spread over the test split, at least the
   ``--inputs`` slots of a forward pass, so that fixed n fills its batch as
   the sequential modes do), in turn,
   ``--rounds`` times: images/s (medians over rounds);
3. the stream of every image: n0 selection and n estimation samples, with
   the counts recorded at every look of both schedules and at each fixed n.
   This pass is the fixed-n run at the budget. Its first N samples are the
   samples a fixed-n run at N draws, so they give that run's rows; the
   max-radius runs are replayed from the counts at their looks
   (`batching.replay`: the rows a real run gives), and so is the grid run,
   whose replayed rows are checked equal to the real run's. The models
   take turns, a batch of images each, so that a run stopped early leaves
   both with the same images done.

One pass of n samples per image thus gives every mode's certificates.
Everything resumes: the grid TSVs after their last row, the recorded
streams after their last batch of images; ``--report-only`` tabulates what
is there, and ``--retime MODES`` times those modes again, keeping the
others' figures. Outputs in ``--workdir``: TSVs per mode (``LABEL_grid.tsv``,
``LABEL_fixed_N.tsv``, ``LABEL_max_TOL.tsv``, readable by ``analyze``), the
recorded counts (``LABEL_stream.npz``), ``timing.json``, ``report.md``,
``tradeoff.png`` and ``LABEL_n_used.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from jaxsmooth.errors import UserError

MODES = ("fixed", "max-radius", "grid")  # the timed modes: the first word of each timing.json entry


def add_parser(subparsers) -> Any:
    p = subparsers.add_parser("sequential", help="sequential CERTIFY (grid and max-radius) against fixed n: "
                                                 "samples, certified accuracy, ACR, images/s")
    p.add_argument("--checkpoints", required=True, help="comma-separated training workdirs")
    p.add_argument("--sigmas", required=True, help="comma-separated sigma of each checkpoint")
    p.add_argument("--labels", default="", help="comma-separated names (default: sigma<sigma>)")
    p.add_argument("--config", default="", help="config of the models (default: each workdir's config.json)")
    p.add_argument("--workdir", required=True, help="where the raw files go (resumed when it exists)")
    p.add_argument("--skip", type=int, default=20, help="every skip-th test image")
    p.add_argument("--max", type=int, default=-1, help="stop before this test image (-1: all)")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=100_000, help="the budget, and the largest fixed n")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--radii-sigma", default="1,2,3", help="grid radii in units of each model's sigma")
    p.add_argument("--tolerances", default="0.01,0.02,0.05,0.1", help="max-radius tolerances")
    p.add_argument("--fixed", default="10000,20000,50000", help="fixed n below the budget, from the same stream")
    p.add_argument("--timing-images", type=int, default=20,
                   help="images of the wall-clock runs; at least --inputs, so that every mode fills its slots")
    p.add_argument("--timing-tolerances", default="0.02,0.1", help="max-radius tolerances timed")
    p.add_argument("--rounds", type=int, default=1, help="wall-clock rounds; medians are over rounds")
    p.add_argument("--retime", default="", help="comma-separated modes (fixed, max-radius, grid) to time again; "
                                                "timing.json keeps the others")
    p.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    p.add_argument("--inputs", type=int, default=10, help="inputs (slots) per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true", help="tabulate what the workdir holds; sample nothing")
    return p


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(flag, f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(flag, "is empty")
    return values


@dataclasses.dataclass
class Model:
    label: str
    workdir: str
    sigma: float
    radii: tuple[float, ...]


def _models(args) -> list[Model]:
    workdirs = [w for w in args.checkpoints.split(",") if w]
    sigmas = _floats(args.sigmas, "--sigmas")
    if len(sigmas) != len(workdirs):
        raise UserError("--sigmas", f"{len(sigmas)} sigma(s) for {len(workdirs)} checkpoint(s); give one each")
    labels = args.labels.split(",") if args.labels else [f"sigma{s:g}" for s in sigmas]
    if len(labels) != len(workdirs):
        raise UserError("--labels", f"{len(labels)} label(s) for {len(workdirs)} checkpoint(s)")
    multiples = _floats(args.radii_sigma, "--radii-sigma")
    return [Model(label, w, s, tuple(round(m * s, 12) for m in multiples))
            for label, w, s in zip(labels, workdirs, sigmas)]


def main(args, overrides) -> int:
    from jaxsmooth.benchmarks import sequential_report as report

    models = _models(args)
    tolerances = _floats(args.tolerances, "--tolerances")
    fixed = sorted({int(n) for n in _floats(args.fixed, "--fixed")} | {args.n})
    if args.timing_images < args.inputs:
        raise UserError("--timing-images", f"{args.timing_images} images leave slots of the {args.inputs} inputs per "
                                           "forward pass idle in the fixed-n run; time at least --inputs images")
    retime = [m for m in args.retime.split(",") if m]
    if any(m not in MODES for m in retime):
        raise UserError("--retime", f"modes are {', '.join(MODES)}; got {args.retime!r}")
    if fixed[0] <= 0 or fixed[-1] > args.n:
        raise UserError("--fixed", f"each fixed n must be in [1, --n {args.n}], got {args.fixed!r}")
    os.makedirs(args.workdir, exist_ok=True)
    if not args.report_only:
        for model in models:
            setup = _setup(args, overrides, model, tolerances, fixed)
            _grid(setup)
        timing_path = os.path.join(args.workdir, "timing.json")
        kept = {}
        if os.path.exists(timing_path):
            with open(timing_path) as f:
                kept = json.load(f)
        if not kept or retime:
            timing = _timing(args, overrides, models, _floats(args.timing_tolerances, "--timing-tolerances"), fixed,
                             retime if kept else MODES)
            timing = {label: {**kept.get(label, {}), **runs} for label, runs in timing.items()}
            with open(timing_path + ".tmp", "w") as f:
                json.dump(timing, f, indent=1)
            os.replace(timing_path + ".tmp", timing_path)
        recorders = [_record(_setup(args, overrides, model, tolerances, fixed)) for model in models]
        while recorders:  # the models take turns, a batch of images each
            recorders = [r for r in recorders if next(r, None) is not None]
    text = report.write(args.workdir, models, fixed, tolerances, settings=vars(args))
    print(text, end="")
    return 0


@dataclasses.dataclass
class Setup:
    args: Any
    model: Model
    sampler: Any
    split: Any
    indices: np.ndarray
    key: Any  # the certify stream's key
    keys: dict  # its selection and estimation keys
    settings: Any  # the grid run's
    tolerances: list
    fixed: list
    header: dict


_SAMPLERS: dict = {}  # one compiled engine per model for the whole run


def _setup(args, overrides, model: Model, tolerances, fixed) -> Setup:
    """The model, its data and engine, and the grid settings."""
    from jaxsmooth import certification, cli, loader, noise
    from jaxsmooth.certification import records

    config = cli.load_config(args.config or None, overrides, model.workdir)
    if model.label not in _SAMPLERS:
        loaded, dataset = loader.load_with_data(config, model.workdir)
        sampler = certification.Sampler(loaded.apply, loaded.params, loaded.model_state,
                                        input_shape=loaded.input_shape, num_classes=loaded.num_classes,
                                        inputs=args.inputs, chunk=args.batch // args.inputs, compiler_options="auto")
        _SAMPLERS[model.label] = (sampler, dataset.test, loaded.step)
    sampler, split, step = _SAMPLERS[model.label]
    indices = records.example_indices(len(split), args.skip, args.max)
    settings = certification.make_settings(n0=args.n0, n=args.n, alpha=args.alpha, sequential=True,
                                           radii=model.radii)
    settings.check(sampler.num_classes)
    header = {"mode": "certify", "sigma": model.sigma, "anisotropic": False, "n0": args.n0, "n": args.n,
              "alpha": args.alpha, "candidate": "selection", "topk": 0, "seed": args.seed, "dtype": config.model.dtype,
              "model": config.model.name, "dataset": config.data.name, "split": "test", "skip": args.skip,
              "max": args.max, "batch": args.batch, "inputs": args.inputs, "checkpoint": model.workdir,
              "checkpoint_step": step, "key": f"fold_in(key({args.seed}), certify stream)"}
    key = noise.certify_key(noise.root_key(args.seed))
    return Setup(args, model, sampler, split, indices, key, certification.stream_keys(key), settings, tolerances,
                 fixed, header)


def _examples(split):
    from jaxsmooth.certification import records

    return records.split_examples(split)


def _grid(s: Setup) -> None:
    """Grid mode over every image, for real; resumes after the TSV's last row."""
    from tqdm import tqdm

    from jaxsmooth import results
    from jaxsmooth.certification import batching

    path = os.path.join(s.args.workdir, f"{s.model.label}_grid.tsv")
    header = {**s.header, **s.settings.sequential_header(s.sampler.radius_rule(s.model.sigma))[0]}
    writer = results.Writer(path, results.CERTIFY, header, results.CERTIFY.header({"label", "sequential"}))
    done = set(writer.done)
    todo = np.asarray([i for i in s.indices if int(i) not in done], np.int64)
    usage, t0 = batching.Usage(), time.perf_counter()
    with tqdm(total=len(s.indices), initial=len(done), desc=f"{s.model.label} grid", file=sys.stderr) as bar:
        outcomes = batching.sequential_outcomes(s.sampler, _examples(s.split), todo, s.model.sigma, s.settings,
                                                s.keys, usage=usage)
        for outcome in outcomes:
            writer.write(results.CERTIFY.row(outcome))
            bar.update(1)
    writer.close()
    if len(todo):
        with open(os.path.join(s.args.workdir, f"{s.model.label}_grid_usage.json"), "w") as f:
            json.dump({**dataclasses.asdict(usage), "fraction": usage.fraction, "images": len(todo),
                       "seconds": time.perf_counter() - t0}, f, indent=1)


def _timing(args, overrides, models, tolerances, fixed, modes) -> dict:
    """Wall-clock images/s of each of `modes`, on the same few images, in turn, `rounds` times; medians."""
    out = {}
    for model in models:
        s = _setup(args, overrides, model, tolerances, fixed)
        pick = _timing_indices(len(s.split), args.timing_images)
        x, labels = _examples(s.split)(pick)
        runs = {f"fixed n={args.n:,}": _fixed_runner(s, x, pick, args.n)}
        for tol in tolerances:
            settings = dataclasses.replace(s.settings, radii=None, tolerance=tol)
            runs[f"max-radius {tol:g}"] = _sequential_runner(s, pick, settings)
        runs["grid"] = _sequential_runner(s, pick, s.settings)
        runs = {name: run for name, run in runs.items() if name.split()[0] in modes}
        _warm(s, x, pick)
        seconds = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                print(f"timing {model.label}: {name}", file=sys.stderr)
                t0 = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - t0)
        out[model.label] = {name: {"images": len(pick), "seconds": v, "samples": runs[name].samples,
                                   "images_per_s": len(pick) / statistics.median(v)} for name, v in seconds.items()}
    return out


def _timing_indices(size: int, images: int) -> np.ndarray:
    """`images` test images spread evenly over the split (every size // images-th), whatever --skip certifies: a
    timed run needs enough images to fill its forward passes, more than a sparse --skip may give."""
    if images > size:
        raise UserError("--timing-images", f"the test split has {size} images, got {images}")
    return np.arange(images) * (size // images)


def _warm(s: Setup, x, pick) -> None:
    """Compiles the engine's two executables (plain counts; counts split at the cuts of a sequential call)."""
    from jaxsmooth.certification import batching

    s.sampler(x[:1], pick[:1], s.model.sigma, 1, s.keys["selection"])
    s.sampler.segments(x[:1], pick[:1], s.model.sigma, 0, 1, s.keys["estimation"],
                       np.full((1, batching.CUTS), batching.NO_CUT))


def _fixed_runner(s: Setup, x, pick, n: int):
    from jaxsmooth import certification

    settings = certification.Settings(n0=s.args.n0, n=n, alpha=s.args.alpha)

    def one_round():
        for start in range(0, len(pick), s.sampler.inputs):
            sl = slice(start, start + s.sampler.inputs)
            certification.certify_batch(s.sampler, x[sl], pick[sl], s.model.sigma, settings, s.key)
        one_round.samples = len(pick) * (n + s.args.n0)

    one_round.samples = len(pick) * (n + s.args.n0)
    return one_round


def _sequential_runner(s: Setup, pick, settings):
    from jaxsmooth.certification import batching

    def one_round():
        outcomes = list(batching.sequential_outcomes(s.sampler, _examples(s.split), pick, s.model.sigma, settings,
                                                     s.keys))
        one_round.samples = sum(o.n_used for o in outcomes)

    one_round.samples = 0
    return one_round


def positions(settings, sigma: float, fixed) -> list[int]:
    """Every stream position whose counts a replay needs: both schedules' looks and each fixed n."""
    from jaxsmooth.certification import gaussian_rule

    grid = settings.schedule(gaussian_rule(sigma)).looks
    maximum = dataclasses.replace(settings, radii=None).schedule(gaussian_rule(sigma)).looks
    return sorted(set(grid) | set(maximum) | set(fixed))


def _record(s: Setup):
    """The fixed-n stream of every image, counts kept at `positions`; resumes after the last batch saved.

    A generator: each step records one batch of `inputs` images and yields True.
    """
    from tqdm import tqdm

    path = os.path.join(s.args.workdir, f"{s.model.label}_stream.npz")
    cuts = positions(s.settings, s.model.sigma, s.fixed)
    saved = dict(np.load(path)) if os.path.exists(path) else None
    if saved is not None and list(saved["positions"]) != cuts:
        raise UserError("--workdir", f"{path} was recorded at other positions; choose another --workdir")
    data = saved or {"positions": np.asarray(cuts), "idx": np.zeros(0, np.int64), "label": np.zeros(0, np.int64),
                     "candidate": np.zeros(0, np.int64), "seconds": np.zeros(0),
                     "counts": np.zeros((0, len(cuts), s.sampler.num_classes), np.int64)}
    recorded = set(data["idx"].tolist())
    todo = np.asarray([i for i in s.indices if int(i) not in recorded], np.int64)
    examples = _examples(s.split)
    with tqdm(total=len(s.indices), initial=len(s.indices) - len(todo), desc=f"{s.model.label} stream",
              file=sys.stderr) as bar:
        for start in range(0, len(todo), s.sampler.inputs):
            idx = todo[start:start + s.sampler.inputs]
            x, labels = examples(idx)
            t0 = time.perf_counter()
            selection = s.sampler(x, idx, s.model.sigma, s.args.n0, s.keys["selection"]).counts
            inner = np.tile(np.asarray(cuts[:-1], np.int64), (len(idx), 1))
            pieces = s.sampler.segments(x, idx, s.model.sigma, 0, cuts[-1], s.keys["estimation"], inner).counts
            seconds = (time.perf_counter() - t0) / len(idx)
            new = {"idx": idx, "label": labels, "candidate": np.argmax(selection, -1),
                   "seconds": np.full(len(idx), seconds), "counts": np.cumsum(pieces, axis=1)}
            data = {k: v if k == "positions" else np.concatenate([v, new[k]]) for k, v in data.items()}
            np.savez_compressed(path + ".tmp.npz", **data)
            os.replace(path + ".tmp.npz", path)
            bar.update(len(idx))
            yield True
