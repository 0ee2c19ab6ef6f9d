"""Samples spent per input: sequential runs (``n_used``) against fixed-n runs of the same images.

A sequential certify run (``python -m jaxsmooth.certify --sequential``) has
an ``n_used`` column: the samples each input took, selection included. A
fixed-n run spends n0 + n on every input (n alone with ``candidate:
clean``), read from its settings. For each sequential run, the reference is
the fixed-n run given with it that certified exactly the same examples
(same ``idx`` set): the one whose n equals the sequential budget, else the
one with the largest n. Ratios are fixed samples over sequential samples
("x fewer"). NumPy and matplotlib only.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxsmooth.analysis import plotting
from jaxsmooth.results import Table
from jaxsmooth.errors import UserError


def is_sequential(run: Table) -> bool:
    return "n_used" in run.columns


def fixed_samples(run: Table) -> int | None:
    """Samples a fixed-n run spent per input: n0 + n (n for a clean candidate); None when its settings are unknown."""
    n, n0 = run.settings.get("n"), run.settings.get("n0", 0)
    if not isinstance(n, int) or not isinstance(n0, int):
        return None
    return n + (0 if run.settings.get("candidate") == "clean" else n0)


@dataclasses.dataclass(frozen=True)
class SamplesRow:
    """One sequential run's samples per input, and against its fixed-n reference (None fields: no reference)."""

    label: str
    images: int
    mean: float
    median: float
    reference: str | None = None
    reference_samples: int | None = None

    @property
    def mean_ratio(self) -> float | None:
        return None if self.reference_samples is None else self.reference_samples / self.mean

    @property
    def median_ratio(self) -> float | None:
        return None if self.reference_samples is None else self.reference_samples / self.median


def samples_rows(runs: Sequence[Table]) -> list[SamplesRow]:
    """A `SamplesRow` for each sequential run among `runs`, with its fixed-n reference when one is given."""
    fixed = [r for r in runs if r.mode == "certify" and not is_sequential(r) and fixed_samples(r) is not None]
    rows = []
    for run in runs:
        if not is_sequential(run):
            continue
        used = run.columns["n_used"].astype(np.float64)
        same = [r for r in fixed if np.array_equal(np.sort(r.columns["idx"]), np.sort(run.columns["idx"]))]
        budget = run.settings.get("n")
        same.sort(key=lambda r: (r.settings.get("n") == budget, fixed_samples(r)))
        ref = same[-1] if same else None
        rows.append(SamplesRow(run.label, run.num_examples, float(used.mean()), float(np.median(used)),
                               None if ref is None else ref.label, None if ref is None else fixed_samples(ref)))
    return rows


def samples_markdown(rows: Sequence[SamplesRow]) -> str:
    """The table: mean and median n_used, and the fixed run's samples per input over each ("x fewer")."""
    lines = ["| sequential run | images | mean n_used | median n_used | fixed-n run | its samples per input "
             "| mean: x fewer | median: x fewer |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        ref = ("-", "-", "-", "-") if r.reference is None else (
            r.reference, f"{r.reference_samples:,}", f"{r.mean_ratio:.1f}", f"{r.median_ratio:.1f}")
        lines.append(f"| {r.label} | {r.images} | {r.mean:,.0f} | {r.median:,.0f} | " + " | ".join(ref) + " |")
    return "\n".join(lines) + "\n"


def samples_figure(runs: Sequence[Table], figsize=(6.4, 4.8), dpi: int = 150, title: str | None = None):
    """n_used (log scale) against pA_lower, one point per input, one colour per sequential run; a matplotlib Figure.

    Inputs near a threshold of the test take the most samples; the budget
    (n0 + n) is drawn as a dashed line.
    """
    Figure = plotting.figure_class()

    seq = [r for r in runs if is_sequential(r)]
    if not seq:
        raise UserError("--samples-plot", "no run has an n_used column (certify --sequential writes it): "
                        + ", ".join(r.path for r in runs))
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    for run in seq:
        if "pA_lower" not in run.columns:
            raise UserError(run.path, "has no pA_lower column to plot n_used against")
        (points,) = ax.plot(run.columns["pA_lower"], run.columns["n_used"], ".", alpha=0.5, label=run.label)
        top = fixed_samples(run)
        if top is not None:
            ax.axhline(top, color=points.get_color(), linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    return plotting.finish(fig, ax, xlabel=r"$p_{A,\mathrm{lower}}$ (the confidence sequence at the stop)",
                           ylabel="samples used (n_used, selection included)", title=title, xlim=(0.0, 1.0),
                           ylim=None, legend="lower left")
