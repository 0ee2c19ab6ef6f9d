"""Deterministic smoothing report: a `standard` model, then `heat` and `bootcamp` from it, against `gaussian`.

The four runs of one suite (``digits`` or ``mnist``) train with their
``configs/<suite>_<objective>.py`` (digits' `gaussian`: ``configs/quickstart.py``); `heat` and `bootcamp` start from the
suite's `standard` run (``train.init_from``). Each is then certified on the
same test examples:

- ``standard``, ``heat``, ``bootcamp`` with ``--candidate clean`` (the
  model's one forward pass names the class, as a deterministic model is used),
- ``gaussian`` with Cohen et al.'s selection samples,

and PREDICTed with n = 100 to measure how often the one forward pass agrees
with the stochastic prediction (the agreement study). The report's row per
run: test accuracy of one forward pass (whole test split), certified accuracy
at the radii, ACR, the L-bound (heat Theorem 3: on the model's own softmax for
the deterministic models, on the Monte Carlo mean softmax for ``gaussian``;
none for ``standard``, whose softmax is not a Gaussian average) as median and
mean over the certified examples (0 where the certified class is wrong or
abstains), the agreement, and the training wall time (`heat`/`bootcamp`:
their retraining alone, the `standard` run excluded).

Every stage resumes: a finished training run is not retrained (its time is
kept in ``times.json``), a certify TSV continues after its last row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Sequence

import numpy as np

from jaxsmooth import analysis, config as config_lib
from jaxsmooth.errors import UserError

SUITES = ("digits", "mnist")
STANDARD = "standard"  # the run heat and bootcamp start from
# The runs whose config is not the packaged <suite>_<run>.
CONFIG_NAMES = {("digits", "gaussian"): "quickstart"}


@dataclasses.dataclass(frozen=True)
class SuiteRun:
    """How one run of a suite is trained and certified.

    Attributes:
      candidate: certify's ``--candidate``: ``clean`` (a deterministic model: its one forward pass names the
        class) or ``selection`` (Cohen et al.'s selection samples).
      lbound: the certify column whose L-bound the report quotes (heat Thm 3), or None (none: the model's
        softmax is not a Gaussian average).
      from_standard: trains from the suite's standard run (``train.init_from``).
    """

    candidate: str
    lbound: str | None
    from_standard: bool = False


SUITE_RUNS = {
    STANDARD: SuiteRun("clean", None),
    "gaussian": SuiteRun("selection", "lbound_mc"),  # the Monte Carlo mean softmax
    "heat": SuiteRun("clean", "lbound_model", from_standard=True),  # the model's own softmax
    "bootcamp": SuiteRun("clean", "lbound_model", from_standard=True),
}
RUNS = tuple(SUITE_RUNS)
DETERMINISTIC = tuple(n for n, r in SUITE_RUNS.items() if r.candidate == "clean")  # certified with --candidate clean


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    test_accuracy: float  # one forward pass, whole test split
    summary: analysis.Summary  # certified accuracy at the radii, ACR
    lbound_median: float | None
    lbound_mean: float | None
    agreement: float
    train_seconds: float


def config_path(suite: str, name: str) -> str:
    """The packaged config ``<suite>_<name>``, or the run's in `CONFIG_NAMES` (digits' gaussian: the quick start)."""
    return config_lib.packaged(CONFIG_NAMES.get((suite, name), f"{suite}_{name}"))


def lbound_stats(run: analysis.Table, column: str) -> tuple[float, float]:
    """Median and mean of an L-bound column, 0 where the certified class is wrong or abstains."""
    values = np.where(run.columns["correct"] == 1, run.columns[column], 0.0)
    return float(np.median(values)), float(np.mean(values))


def run_suite(suite: str, workdir: str, *, overrides: Sequence[str] = (), skip: int = 1,
              maximum: int = -1, n: int = 10_000, n0: int = 100, alpha: float = 0.001, batch: int = 1000,
              radii: Sequence[float] = (0.0, 0.125, 0.25, 0.5), runs: Sequence[str] = RUNS,
              on_stage: Callable[[str], None] | None = None) -> list[Row]:
    """Trains (or resumes), certifies and predicts the suite's runs; returns one `Row` per run.

    Args:
      suite: ``digits`` or ``mnist``.
      workdir: the report's folder; run ``name`` trains in ``workdir/name``.
      overrides: ``field=value`` config overrides for every run (e.g. ``data.name=idx:DIR``).
      skip, maximum: the certified test examples (certify's ``--skip``, ``--max``).
      n, n0, alpha, batch: certification settings (certify's flags).
      runs: which of `RUNS`; `heat` and `bootcamp` need `standard`.
      on_stage: called with a line before each stage (progress for the CLI).
    """
    from jaxsmooth import certify

    if suite not in SUITES:
        raise UserError("--suite", f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")
    for name in runs:
        if name not in RUNS:
            raise UserError("--runs", f"unknown run {name!r}; allowed: {', '.join(RUNS)}")
        if SUITE_RUNS[name].from_standard and STANDARD not in runs:
            raise UserError("--runs", f"{name} starts from the standard run; add standard")
    say = on_stage or (lambda line: None)
    os.makedirs(workdir, exist_ok=True)
    times, times_path = load_times(workdir)
    init_from = [f"train.init_from={os.path.join(workdir, STANDARD)}"]
    rows = []
    for name in runs:
        run = SUITE_RUNS[name]
        path = config_path(suite, name)
        extra = list(overrides) + (init_from if run.from_standard else [])
        run_dir = os.path.join(workdir, name)
        say(f"train {name} ({path})")
        summary = train_timed(path, extra, run_dir, name, times, times_path)
        # gaussian noise: the report's published figures (and the files it resumes) were made with it
        common = dict(config=path, checkpoint=run_dir, skip=skip, max=maximum, batch=batch, noise="gaussian",
                      no_progress=True, overrides=extra)
        cert_tsv = os.path.join(workdir, f"{name}_certify.tsv")
        say(f"certify {name} (n = {n})")
        certify.write(**common, out=cert_tsv, n=n, n0=n0, alpha=alpha, candidate=run.candidate)
        predict_tsv = os.path.join(workdir, f"{name}_predict.tsv")
        say(f"predict {name} (n = 100)")
        certify.write(**common, out=predict_tsv, mode="predict", n=100, alpha=alpha)
        cert = analysis.read_run(cert_tsv, name)
        lbound = None if run.lbound is None else lbound_stats(cert, run.lbound)
        rows.append(Row(name, summary["test_accuracy"], analysis.summarize(cert, radii),
                        lbound[0] if lbound else None, lbound[1] if lbound else None,
                        analysis.agreement(analysis.read_run(predict_tsv, name)), times[name]))
    return rows


def train_timed(config_path: str, overrides: Sequence[str], run_dir: str, name: str, times: dict,
                times_path: str) -> dict:
    """Trains (or resumes) one run and returns its evaluation summary; the first training's wall time goes to
    ``times[name]`` and the JSON file `times_path` (a resumed run keeps the time of the session that trained it)."""
    from jaxsmooth import cli, trainer

    config = cli.load_config(config_path, list(overrides))
    t0 = time.perf_counter()
    _, summary = trainer.train_and_evaluate(config, run_dir)
    if name not in times:
        times[name] = time.perf_counter() - t0
        with open(times_path, "w") as f:
            json.dump(times, f, indent=1)
    return summary


def load_times(workdir: str) -> tuple[dict, str]:
    path = os.path.join(workdir, "times.json")
    return (json.load(open(path)) if os.path.exists(path) else {}), path


def markdown(rows: Sequence[Row]) -> str:
    """The report table: one row per run."""
    radii = rows[0].summary.radii
    titles = (["run", "clean acc (1 pass)"] + [f"cert. r = {r:g}" for r in radii]
              + ["ACR", "L-bound median", "L-bound mean", "agreement (n = 100)", "train s"])
    lines = ["| " + " | ".join(titles) + " |", "|---|" + "---:|" * (len(titles) - 1)]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    for r in rows:
        cells = ([r.name, fmt(r.test_accuracy)] + [fmt(v) for v in r.summary.certified_accuracy]
                 + [fmt(r.summary.acr), fmt(r.lbound_median), fmt(r.lbound_mean), fmt(r.agreement),
                    f"{r.train_seconds:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
