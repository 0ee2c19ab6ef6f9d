"""NAL report (nal §5, Fig. 1-2, Table 2): accuracy under ell_2 PGD for standard, gaussian, wrm, smoothadv and nal.

The five runs of a suite train from the suite's configs: ``standard``,
``gaussian`` (digits: the quick start) and ``nal`` from their own files,
``wrm`` and ``smoothadv`` from the ``nal`` file with the objective switched
and the ``nal`` block's settings copied to theirs (gamma, K, eta_1 and clip
to ``wrm``; r as m, K as the PGD steps and clip to ``smoothadv``); ``wrm``
with ELU activations, as Sinha et al. need a smooth loss (nal §5).
Each is then attacked with ``python -m jaxsmooth.attack --mode accuracy``
(20-step ell_2 PGD, step 2 eps / 20, at each radius, on the base classifier,
with and without test-time noise of the suite's sigma), and the report is
one row per run: accuracy at each radius, without and with noise, and the
training wall time. Every stage resumes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Sequence

from jaxsmooth.benchmarks.deterministic import SUITES, config_path, load_times, train_timed
from jaxsmooth.errors import UserError

RUNS = ("standard", "gaussian", "wrm", "smoothadv", "nal")


@dataclasses.dataclass(frozen=True)
class FromNal:
    """A run trained from the suite's nal config: its own overrides (the objective switched), and the field of its
    block that takes each field of the nal block."""

    overrides: tuple[str, ...]
    fields: Mapping[str, str]


_FROM_NAL = {
    "wrm": FromNal(("objective.name=wrm", "model.activation=elu"),  # a smooth loss (nal §5)
                   {"gamma": "gamma", "ascent_steps": "ascent_steps", "ascent_lr": "ascent_lr", "clip": "clip"}),
    "smoothadv": FromNal(("objective.name=smoothadv",),
                         {"num_noise": "num_noise", "ascent_steps": "pgd_steps", "clip": "clip"}),
}


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    test_accuracy: float
    accuracy: object  # the results.Table of its accuracy file
    train_seconds: float


def run_config(suite: str, name: str, overrides: Sequence[str] = ()) -> tuple[str, list[str]]:
    """The config file and own overrides of run `name` of `suite` (`overrides`: the report's, for every run)."""
    if name in _FROM_NAL:
        from jaxsmooth import config as config_lib

        run = _FROM_NAL[name]
        path = config_path(suite, "nal")
        nal = config_lib.load(path, list(overrides)).nal
        copied = [f"{name}.{theirs}={nal[ours]}" for ours, theirs in run.fields.items()]
        return path, list(run.overrides) + copied
    return config_path(suite, name), []


def run_suite(suite: str, workdir: str, *, overrides: Sequence[str] = (),
              radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), skip: int = 1, maximum: int = -1,
              runs: Sequence[str] = RUNS, test_noise_sigma: float = 0.0,
              on_stage: Callable[[str], None] | None = None) -> list[Row]:
    """Trains (or resumes) and attacks the suite's runs; one `Row` per run.

    test_noise_sigma: the test-time noise of every run's evaluation (0: each run's own objective.sigma).
    """
    from jaxsmooth import attack
    from jaxsmooth.analysis import attacks as attack_analysis

    if suite not in SUITES:
        raise UserError("--suite", f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")
    for name in runs:
        if name not in RUNS:
            raise UserError("--runs", f"unknown run {name!r}; allowed: {', '.join(RUNS)}")
    say = on_stage or (lambda line: None)
    os.makedirs(workdir, exist_ok=True)
    times, times_path = load_times(workdir)
    rows = []
    for name in runs:
        path, own = run_config(suite, name, overrides)
        extra = own + list(overrides)
        run_dir = os.path.join(workdir, name)
        say(f"train {name} ({os.path.basename(path)} {' '.join(own)})")
        summary = train_timed(path, extra, run_dir, name, times, times_path)
        out = os.path.join(workdir, f"{name}_accuracy.tsv")
        say(f"attack {name} (PGD at radii {','.join(f'{r:g}' for r in radii)})")
        attack.write(mode="accuracy", config=path, checkpoint=run_dir, out=out, radii=list(radii), skip=skip,
                     max=maximum, no_progress=True, overrides=extra,
                     **({"test_noise_sigma": test_noise_sigma} if test_noise_sigma else {}))
        rows.append(Row(name, summary["test_accuracy"], attack_analysis.read_accuracy(out, name), times[name]))
    return rows


def markdown(rows: Sequence[Row]) -> str:
    """The accuracy table of `analysis.attacks.accuracy_table` with a training-time column."""
    from jaxsmooth.analysis import attacks as attack_analysis

    lines = attack_analysis.accuracy_table([r.accuracy for r in rows]).rstrip("\n").splitlines()
    out = [lines[0] + " train s |", lines[1] + "---:|"]
    for line, r in zip(lines[2:], rows):
        out.append(line + f" {r.train_seconds:.0f} |")
    return "\n".join(out) + "\n"
