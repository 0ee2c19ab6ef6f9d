"""Non-uniform smoothing report (non_uniform Fig. 1 and 3): a learned per-pixel sigma against an isotropic one.

For a suite (``digits``, ``mnist`` or ``fashion_mnist``) the report trains

- ``gaussian``: the suite's gaussian base model (digits: ``configs/quickstart.py``;
  mnist: ``configs/mnist_gaussian.py``; fashion_mnist: ``configs/mnist_gaussian.py``
  with ``data.name=fashion_mnist``, which a ``--config.data.name=...`` override
  replaces, e.g. ``idx:DIR``),
- ``sigma``: ``configs/<suite>_sigma.py`` with ``train.init_from`` that run
  (the base model frozen, only log sigma trained; non_uniform Alg. 1); with an
  initialisation sweep, one run ``sigma_<s>`` per initial constant s
  (``objective.sigma=s``),

then certifies the base model three times per sigma run on the same test
examples: with the learned sigma (``certify --sigma-from``), with an isotropic
sigma equal to the learned sigma's mean (``isotropic``), and with one equal to
its geometric mean exp(mean log sigma) (``isotropic_gm``: the same sum log
sigma, so the same largest certifiable area, where the p_A cap of n samples
binds), each isotropic one a ``certify --sigma-file`` of a constant ``.npy``;
all TSVs carry the ``area_objective`` column
O_CA = sum_i log sigma_i + D log Phi^-1(p_A lower) (non_uniform Thm 3.1).

Per certify TSV the table has: the certified accuracy (fraction certified
and correct), the mean and median O_CA over the certified-correct examples,
the certified accuracy at area thresholds (O_CA >= a), the mean inscribed
ell_2 radius (the ACR of the inscribed radius: 0 where wrong or abstaining)
and the training wall time (learned rows: the sigma run alone; isotropic
rows: the base model). The figures are the certified accuracy against O_CA of
all rows (Fig. 1, `analysis.area_figure`) and each learned sigma as an image
(Fig. 3, `analysis.sigma.sigma_image_figure`).

Every stage resumes: a finished training run is not retrained (its time is
kept in ``times.json``), a certify TSV continues after its last row.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Sequence

import numpy as np

from jaxsmooth import analysis, config as config_lib
from jaxsmooth.benchmarks.deterministic import load_times, train_timed
from jaxsmooth.errors import UserError

SUITES = ("digits", "mnist", "fashion_mnist")


@dataclasses.dataclass(frozen=True)
class Row:
    """One certify TSV's numbers.

    Attributes:
      name: the row's label.
      num_examples: certified examples.
      certified_accuracy: fraction with correct = 1.
      area_mean, area_median: of the finite O_CA of the correct examples (nan if none).
      areas: [A] the thresholds a; area_accuracy: [A] fraction correct with O_CA >= a.
      mean_radius: mean over examples of inscribed radius * correct.
      train_seconds: see the module docstring.
      sigma_mean: the mean sigma the row certified with.
    """

    name: str
    num_examples: int
    certified_accuracy: float
    area_mean: float
    area_median: float
    areas: np.ndarray
    area_accuracy: np.ndarray
    mean_radius: float
    train_seconds: float
    sigma_mean: float


@dataclasses.dataclass(frozen=True)
class Report:
    rows: list
    runs: list  # analysis.Table per row, for the area figure
    sigmas: dict  # sigma run name -> learned sigma [H, W, C]


def base_config(suite: str) -> tuple[str, list[str]]:
    """The suite's gaussian base model: config file and its own overrides."""
    _check_suite(suite)
    if suite == "digits":
        return config_lib.packaged("quickstart"), []
    return config_lib.packaged("mnist_gaussian"), ([] if suite == "mnist" else ["data.name=fashion_mnist"])


def sigma_config(suite: str) -> str:
    _check_suite(suite)
    return config_lib.packaged(f"{suite}_sigma")


def correct_areas(run: analysis.Table) -> np.ndarray:
    """The finite O_CA of the certified-correct examples of an anisotropic run, [K]."""
    area = run.columns["area_objective"][run.columns["correct"] == 1]
    return area[np.isfinite(area)]


def default_areas(runs: Sequence[analysis.Table], quantiles: Sequence[float] = (0.25, 0.5, 0.75)) -> np.ndarray:
    """Area thresholds: the quantiles of the pooled `correct_areas` of `runs`, rounded to 0.1, distinct, increasing."""
    pooled = np.concatenate([correct_areas(r) for r in runs] or [np.zeros(0)])
    if pooled.size == 0:
        return np.zeros(1)
    return np.unique(np.round(np.quantile(pooled, quantiles), 1))


def row_of(run: analysis.Table, areas, train_seconds: float, sigma_mean: float = math.nan,
           name: str | None = None) -> Row:
    """The table row of one anisotropic certify run at thresholds `areas` ([A])."""
    if not analysis.is_anisotropic(run):
        raise UserError(run.path, "has no area_objective column (certify with --sigma-file or --sigma-from)")
    areas = np.asarray(areas, np.float64)
    good = correct_areas(run)
    return Row(name or run.label, run.num_examples, analysis.clean_accuracy(run),
               float(np.mean(good)) if good.size else math.nan, float(np.median(good)) if good.size else math.nan,
               areas, analysis.area_accuracy(run, areas), analysis.average_certified_radius(run), float(train_seconds),
               float(sigma_mean))


def markdown(rows: Sequence[Row]) -> str:
    """The report table, one line per row; every row must share its area thresholds."""
    if not rows:
        raise ValueError("no rows to tabulate")
    areas = rows[0].areas
    if any(not np.array_equal(r.areas, areas) for r in rows):
        raise ValueError("the rows were computed at different area thresholds")
    titles = (["run", "n", "mean sigma", "cert. acc", "O_CA mean", "O_CA median"]
              + [f"cert. acc O_CA >= {a:g}" for a in areas] + ["mean inscribed r", "train s"])
    lines = ["| " + " | ".join(titles) + " |", "|---|" + "---:|" * (len(titles) - 1)]
    fmt = lambda v, d=3: "-" if v is None or math.isnan(v) else f"{v:.{d}f}"
    for r in rows:
        cells = ([r.name.replace("|", "\\|"), str(r.num_examples), fmt(r.sigma_mean), fmt(r.certified_accuracy),
                  fmt(r.area_mean, 2), fmt(r.area_median, 2)] + [fmt(v) for v in r.area_accuracy]
                 + [fmt(r.mean_radius), fmt(r.train_seconds, 0)])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_markdown(rows: Sequence[Row], kept: Sequence[int]) -> str:
    """The learned rows of a sweep: certified accuracy, mean O_CA, and whether the blanket filter keeps the point."""
    lines = ["| run | cert. acc | O_CA mean | blanket |", "|---|---:|---:|:---:|"]
    kept = set(int(k) for k in kept)
    for i, r in enumerate(rows):
        mean = "-" if math.isnan(r.area_mean) else f"{r.area_mean:.2f}"
        lines.append(f"| {r.name} | {r.certified_accuracy:.3f} | {mean} | {'yes' if i in kept else 'no'} |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One evaluation of a sweep's sigma run (after an epoch, the config's sub-epoch): the smoothed classifier's
    clean accuracy and mean certified area on the test split (Monte Carlo, n0 draws;
    `objectives.sigma.make_area_eval`)."""

    run: str
    epoch: float
    accuracy: float
    area: float


def sweep_points(workdir: str, names: Sequence[str]) -> list[SweepPoint]:
    """The evaluation rows of each sigma run ``workdir/<name>/metrics.jsonl``, in order (appendix B.1's points)."""
    import json

    points = []
    for name in names:
        with open(os.path.join(workdir, name, "metrics.jsonl")) as f:
            for line in f:
                row = json.loads(line)
                if "test_area" in row:
                    points.append(SweepPoint(name, float(row["epoch"]), float(row["test_smoothed_accuracy"]),
                                             float(row["test_area"])))
    return points


def sweep_points_markdown(points: Sequence[SweepPoint], kept: Sequence[int]) -> str:
    """Every evaluation point of the sweep, and whether the blanket filter keeps it."""
    kept = set(int(k) for k in kept)
    lines = ["| run | epoch | smoothed clean acc | mean O_CA (n0 draws) | blanket |", "|---|---:|---:|---:|:---:|"]
    for i, p in enumerate(points):
        area = "-" if math.isnan(p.area) else f"{p.area:.2f}"
        lines.append(f"| {p.run} | {p.epoch:g} | {p.accuracy:.3f} | {area} | {'yes' if i in kept else 'no'} |")
    return "\n".join(lines) + "\n"


def parse_sweep(text: str) -> list[float]:
    """``0.1,0.2`` -> [0.1, 0.2]; each > 0 and distinct; '' -> []."""
    if not text:
        return []
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError("--sigma-sweep", f"expected comma-separated numbers, got {text!r}") from None
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise UserError("--sigma-sweep", f"{bad[0]:g} is not a sigma; each must be finite and > 0")
    if len(set(values)) != len(values):
        raise UserError("--sigma-sweep", f"repeats a value: {text}")
    return values


def parse_areas(text: str) -> np.ndarray | None:
    if not text:
        return None
    try:
        areas = np.asarray([float(v) for v in text.split(",")], np.float64)
    except ValueError:
        raise UserError("--areas", f"expected comma-separated numbers, got {text!r}") from None
    if not np.all(np.isfinite(areas)) or np.any(np.diff(areas) <= 0):
        raise UserError("--areas", f"must be finite and increase strictly: {text}")
    return areas


def run_suite(suite: str, workdir: str, *, overrides: Sequence[str] = (), skip: int = 1,
              maximum: int = -1, n: int = 10_000, n0: int = 100, alpha: float = 0.001, batch: int = 1000,
              sweep: Sequence[float] = (), areas=None, sigma_overrides: Sequence[str] = (),
              on_stage: Callable[[str], None] | None = None) -> Report:
    """Trains (or resumes) and certifies the suite's runs; writes nothing but the runs and TSVs under `workdir`.

    Args:
      sweep: initial constant sigmas, one ``sigma_<s>`` run each; empty: one ``sigma`` run with the config's.
      areas: [A] area thresholds of the table (None: `default_areas` of all rows).
      overrides: ``FIELD=VALUE`` for every run; sigma_overrides: for the sigma runs only (after `overrides`).
    """
    from jaxsmooth import certify, loader

    _check_suite(suite)
    say = on_stage or (lambda line: None)
    os.makedirs(workdir, exist_ok=True)
    times, times_path = load_times(workdir)
    base_path, base_own = base_config(suite)
    base_extra = base_own + list(overrides)
    base_dir = os.path.join(workdir, "gaussian")
    say(f"train gaussian ({os.path.basename(base_path)} {' '.join(base_own)})")
    train_timed(base_path, base_extra, base_dir, "gaussian", times, times_path)
    common = dict(config=base_path, checkpoint=base_dir, skip=skip, max=maximum, n=n, n0=n0, alpha=alpha,
                  batch=batch, no_progress=True, overrides=base_extra)
    cells, sigmas = [], {}  # (tsv, label, train seconds, sigma mean)
    for init in (list(sweep) or [None]):
        name, iso = ("sigma", "isotropic") if init is None else (f"sigma_{init:g}", f"isotropic_{init:g}")
        run_dir = os.path.join(workdir, name)
        own = [f"train.init_from={base_dir}"] + ([] if init is None else [f"objective.sigma={init:g}"])
        say(f"train {name} ({os.path.basename(sigma_config(suite))} {' '.join(own)})")
        train_timed(sigma_config(suite), own + list(overrides) + list(sigma_overrides), run_dir, name,
                    times, times_path)
        sigma = loader.load_model(run_dir).sigma  # what the run certifies with: its learned per-pixel sigma
        sigmas[name] = sigma
        tsv = os.path.join(workdir, f"{name}_certify.tsv")
        say(f"certify {name} (learned sigma, mean {sigma.mean():.4g}; n = {n})")
        certify.write(**common, sigma_from=run_dir, out=tsv)
        cells.append((tsv, name, times[name], float(sigma.mean())))
        # the isotropic sigma of the same mean, and of the same sum log sigma (the geometric mean: the same
        # largest certifiable area, as the paper's "isotropic classifier that can certify up to the same area")
        geometric = float(np.exp(np.mean(np.log(sigma.astype(np.float64)))))
        for label, value in ((iso, float(sigma.mean())), (iso.replace("isotropic", "isotropic_gm"), geometric)):
            npy = os.path.join(workdir, f"{label}_sigma.npy")
            np.save(npy, np.full(sigma.shape, value, np.float32))
            iso_tsv = os.path.join(workdir, f"{label}_certify.tsv")
            say(f"certify {label} (constant sigma {value:.4g}; n = {n})")
            certify.write(**common, sigma_file=npy, out=iso_tsv)
            cells.append((iso_tsv, label, times["gaussian"], float(np.float32(value))))
    runs = [analysis.read_run(tsv, label) for tsv, label, _, _ in cells]
    areas = default_areas(runs) if areas is None else np.asarray(areas, np.float64)
    rows = [row_of(run, areas, seconds, mean) for run, (_, _, seconds, mean) in zip(runs, cells)]
    return Report(rows, runs, sigmas)


def write_figures(report: Report, workdir: str, title: str = "") -> list[str]:
    """``area.png`` (Fig. 1) and ``<sigma run>_image.png`` (Fig. 3) under `workdir`; returns their paths."""
    from jaxsmooth.analysis import sigma as sigma_analysis

    paths = [os.path.join(workdir, "area.png")]
    analysis.area_figure(report.runs, title=title or None).savefig(paths[0])
    for name, sigma in report.sigmas.items():
        paths.append(os.path.join(workdir, f"{name}_image.png"))
        sigma_analysis.sigma_image_figure(sigma).savefig(paths[-1])
    return paths


def _check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise UserError("--suite", f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")
