"""Adversarial-distance analysis of attack TSVs: heat Tables 1-2 and the attack curve (boot camp Fig. 2).

An attack TSV, as ``python -m jaxsmooth.attack`` writes it (`results.ATTACK`:
tab-separated, its settings in the sidecar ``FILE.tsv.json``)::

    idx label predict success distance time       {"program": "attack", "settings": {"attack": "pgd", ...}}

``distance`` is the smallest ell_2 adversarial distance the attack found: 0
for an example adversarial before the attack (misclassified), ``inf`` where
the attack failed (success 0). A last line cut short by a killed job is
ignored; files of the earlier format (settings on a ``# jaxsmooth attack
{...}`` first line, ``#`` comment lines) are read too.

`distance_table` is the table of heat Tables 1-2: one row per model, the
median and mean over the examples of

* the L-bound, from a certify TSV's ``lbound_model`` column (the
  deterministic model's bound), else its ``lbound_mc`` column (Monte Carlo),
  counted as 0 where the example is not correctly classified (correct = 0);
* the PGD and the DDN distance, with misclassified examples counted as 0
  and failed attacks as inf.

The median takes every example, inf included (it is inf when over half of
the attacks failed). **The mean is over the finite values only**: failed
attacks (inf) are left out of it, so it can understate the robustness of a
model the attack often fails on; the table's median is unaffected.

A model's files are grouped by their label: by default the base name of the
``checkpoint`` in the header (``runs/heat`` -> ``heat``), so the pgd and ddn
files of one checkpoint make one row; name them explicitly to override.

Accuracy under ell_2 PGD over a grid of radii (nal §5, Fig. 1), as
``python -m jaxsmooth.attack --mode accuracy`` writes it (`results.ACCURACY`:
program ``attack-accuracy`` in the sidecar, settings such as ``{"mode":
"accuracy", "radii": [0.0, 0.5], "test_noise_sigma": 0.25, ...}``)::

    idx label radius correct correct_noisy time

one row per example and radius (``correct``: the PGD point is classified
correctly; ``correct_noisy``: so is that point plus one Gaussian draw of std
``test_noise_sigma``). `is_accuracy_file` recognises it (`is_attack_file`
does not), `read_accuracy` reads it, `accuracy_by_radius` gives the
accuracy at each radius, `accuracy_table` tabulates it
without and with test noise, one row per model, and
`accuracy_figure` plots accuracy vs radius: one colour per model, solid
lines with test-time noise and dotted lines without, as the caption of nal
Fig. 1 states.

NumPy and matplotlib only: no JAX.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from jaxsmooth import results
from jaxsmooth.analysis import plotting
from jaxsmooth.errors import UserError
from jaxsmooth.results import ATTACKS, Table

LBOUND_COLUMNS = ("lbound_model", "lbound_mc")


@dataclasses.dataclass(frozen=True)
class DistanceRow:
    """One model's row of `distance_table`: (median, mean) pairs, or None where no file gave that column.

    n: the example count of each file of the row, in the order L-bound, PGD, DDN (those given).
    """

    label: str
    n: tuple[int, ...]
    lbound: tuple[float, float] | None
    pgd: tuple[float, float] | None
    ddn: tuple[float, float] | None


def is_attack_file(path: str) -> bool:
    """Whether `path` is a jaxsmooth attack TSV (its sidecar, or a legacy first line, says so; False if unreadable)."""
    return results.kind_of(path) is results.ATTACK


def read_attack(path: str, label: str | None = None) -> Table:
    """Reads one attack TSV (module docstring; `results.read`); `label` defaults to `model_label`."""
    return results.read(path, (results.ATTACK,), label)


def lbound_distances(run: Table, column: str | None = None) -> np.ndarray:
    """[N] L-bounds of a certify run: `column` (default lbound_model, else lbound_mc) where correct, else 0."""
    if column is None:
        column = next((c for c in LBOUND_COLUMNS if c in run.columns), None)
    if column not in run.columns or column not in LBOUND_COLUMNS:
        raise UserError(run.path, f"has no {column or ' or '.join(LBOUND_COLUMNS)} column; the L-bound comes "
                                  "from a jaxsmooth certify TSV")
    return np.where(run.columns["correct"] == 1, run.columns[column], 0.0)


def median_and_mean(values) -> tuple[float, float]:
    """(median over all values, inf included; mean over the finite values, nan when there are none)."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return float(np.median(values)), float(finite.mean()) if finite.size else math.nan


def distance_rows(attacks: Sequence[Table], certify_runs: Sequence[Table] = (),
                  lbound_column: str | None = None) -> list[DistanceRow]:
    """One `DistanceRow` per label (first appearance order) over attack runs and certify runs (L-bound).

    Raises:
      UserError: two files of one kind (pgd, ddn or certify) under one label.
    """
    groups: dict[str, dict[str, object]] = {}
    for item in list(certify_runs) + list(attacks):
        kind = item.settings["attack"] if item.schema is results.ATTACK else "lbound"
        group = groups.setdefault(item.label, {})
        if kind in group:
            raise UserError(item.path, f"is a second {kind} file for {item.label!r} (the other: {group[kind].path}); "
                                       "give each model's files their own labels")
        group[kind] = item
    order = list(dict.fromkeys([r.label for r in attacks] + [r.label for r in certify_runs]))
    rows = []
    for label in order:
        group = groups[label]
        lbound = group.get("lbound")
        stats = {kind: median_and_mean(group[kind].columns["distance"]) if kind in group else None
                 for kind in ATTACKS}
        n = tuple(group[k].num_examples for k in ("lbound", *ATTACKS) if k in group)
        rows.append(DistanceRow(label=label, n=n, lbound=None if lbound is None else
                                median_and_mean(lbound_distances(lbound, lbound_column)), **stats))
    return rows


def distance_table(attacks: Sequence[Table], certify_runs: Sequence[Table] = (), lbound_column: str | None = None,
                   digits: int = 3) -> str:
    """Heat Tables 1-2 as markdown: per model, median and mean of the L-bound, PGD and DDN distances.

    Means are over finite values (module docstring); a dash marks a column
    no file gave; n lists each file's example count when they differ.
    """
    header = ["model", "n", "L-bound median", "L-bound mean", "PGD median", "PGD mean", "DDN median", "DDN mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in distance_rows(attacks, certify_runs, lbound_column):
        n = str(row.n[0]) if len(set(row.n)) == 1 else "/".join(map(str, row.n))
        cells = [row.label.replace("|", "\\|"), n]
        for pair in (row.lbound, row.pgd, row.ddn):
            cells += ["–", "–"] if pair is None else [_number(v, digits) for v in pair]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float, digits: int) -> str:
    if math.isnan(value):
        return "–"
    return "∞" if math.isinf(value) else f"{value:.{digits}f}"


def attacked_fraction(run: Table, distances) -> np.ndarray:
    """[D] fraction of the run's examples with an adversarial at ell_2 distance <= d, for each d of `distances`."""
    distance = np.sort(run.columns["distance"])
    return np.searchsorted(distance, np.asarray(distances, np.float64), side="right") / distance.size


def attack_curve_figure(runs: Sequence[Table], max_distance: float | None = None, num_points: int = 1001,
                        figsize=(6.4, 4.8), dpi: int = 150, title: str | None = None):
    """Fraction of examples successfully attacked vs ell_2 distance, one line per run (boot camp Fig. 2).

    A matplotlib Figure (Agg, no pyplot); line labels ``"<label> <attack>"``
    (plus ``", smoothed"``). `max_distance` (the x range) defaults to the
    largest finite distance of all runs (1 when there is none).
    """
    Figure = plotting.figure_class()

    if not runs:
        raise UserError("--curve", "no attack files to plot")
    if max_distance is None:
        finite = [d for r in runs for d in r.columns["distance"][np.isfinite(r.columns["distance"])]]
        max_distance = max(finite) if finite and max(finite) > 0 else 1.0
    x = np.linspace(0.0, max_distance, num_points)
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    for run in runs:
        name = f"{run.label} {run.settings['attack']}" + (", smoothed" if run.settings.get("smoothed") else "")
        ax.plot(x, attacked_fraction(run, x), drawstyle="steps-post", label=name)
    return plotting.finish(fig, ax, xlabel=r"$\ell_2$ distance", ylabel="fraction of examples successfully attacked",
                           title=title, xlim=(0.0, max_distance), legend="lower right")


# --- accuracy under PGD over a radius grid (nal §5, Fig. 1) ---

# nal Fig. 1's caption: "Solid lines represent models tested with additive noise, and dotted lines mean that without."
NOISY_STYLE, CLEAN_STYLE = "-", ":"


def is_accuracy_file(path: str) -> bool:
    """Whether `path` is an attack-accuracy TSV (its sidecar, or a legacy first line, says so; False if unreadable)."""
    return results.kind_of(path) is results.ACCURACY


def read_accuracy(path: str, label: str | None = None) -> Table:
    """Reads one accuracy TSV (module docstring; `results.read`); `label` defaults to `model_label`."""
    return results.read(path, (results.ACCURACY,), label)


def accuracy_by_radius(run: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(radii [R] sorted, accuracy without noise [R], accuracy with test noise [R], examples per radius [R])."""
    radius = run.columns["radius"]
    radii = np.unique(radius)
    n = np.asarray([np.sum(radius == r) for r in radii], np.int64)
    clean = np.asarray([run.columns["correct"][radius == r].mean() for r in radii])
    noisy = np.asarray([run.columns["correct_noisy"][radius == r].mean() for r in radii])
    return radii, clean, noisy, n


def _radius_text(r: float) -> str:
    return f"{r:g}"


def accuracy_table(runs: Sequence[Table], digits: int = 3) -> str:
    """nal Fig. 1 as markdown: one row per run, the accuracy at each radius without, then with, test-time noise.

    The columns are the union of the runs' radii, sorted; a dash marks a
    radius a run lacks. n is the number of examples (``a/b`` when it differs
    between radii, as in a run still going). The noise column headers name
    sigma when all runs share one.
    """
    if not runs:
        raise UserError("accuracy", "no accuracy files to tabulate")
    radii = np.unique(np.concatenate([run.columns["radius"] for run in runs]))
    sigmas = {run.settings.get("test_noise_sigma") for run in runs}
    noise = f"noise σ={sigmas.pop():g}" if len(sigmas) == 1 and None not in sigmas else "noise"
    header = (["model", "n"] + [f"ε={_radius_text(r)}" for r in radii]
              + [f"ε={_radius_text(r)} + {noise}" for r in radii])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for run in runs:
        own, clean, noisy, n = accuracy_by_radius(run)
        at = {float(r): i for i, r in enumerate(own)}
        counts = sorted(set(n.tolist()))
        cells = [run.label.replace("|", "\\|"), "/".join(map(str, counts))]
        for values in (clean, noisy):
            cells += [f"{values[at[float(r)]]:.{digits}f}" if float(r) in at else "–" for r in radii]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def accuracy_figure(runs: Sequence[Table], figsize=(6.4, 4.8), dpi: int = 150, title: str | None = None):
    """Accuracy vs ell_2 PGD radius (nal Fig. 1): a matplotlib Figure (Agg, no pyplot).

    Per run, in one colour: a dotted line without test-time noise (legend
    ``"<label>"``), then a solid line with it (``"<label> + noise σ=<sigma>"``),
    markers at the run's radii; the solid/dotted convention is the caption's
    of nal Fig. 1.
    """
    Figure = plotting.figure_class()

    if not runs:
        raise UserError("accuracy", "no accuracy files to plot")
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for run, colour in zip(runs, colours):
        radii, clean, noisy, _ = accuracy_by_radius(run)
        sigma = run.settings.get("test_noise_sigma")
        ax.plot(radii, clean, CLEAN_STYLE, color=colour, marker="o", label=run.label)
        ax.plot(radii, noisy, NOISY_STYLE, color=colour, marker="o",
                label=f"{run.label} + noise" + ("" if sigma is None else f" σ={sigma:g}"))
    return plotting.finish(fig, ax, xlabel=r"$\ell_2$ attack radius", ylabel="accuracy under PGD", title=title)
