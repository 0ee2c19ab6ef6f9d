"""Certified-accuracy analysis of certify and predict TSVs: tables, ACR, plots.

Reads what ``python -m jaxsmooth.certify`` writes, and the files of
locuslab/smoothing (Cohen et al.'s code), and computes per run the numbers of
Cohen et al. (2019, Sec. 4 and their ``analyze.py``)::

    certified accuracy at r = mean_i [correct_i = 1 and radius_i >= r]
    ACR                     = mean_i radius_i * correct_i
    abstain rate            = mean_i [predict_i = -1]
    clean accuracy          = mean_i correct_i   (= certified accuracy at r = 0)

A certify TSV (`results.CERTIFY`: tab-separated; ``[...]`` columns are
optional; its settings, such as ``{"mode": "certify", "sigma": 0.25, "n":
100000, "alpha": 0.001, ...}``, in the sidecar ``FILE.tsv.json``)::

    idx label predict radius correct time [pA_lower count_A count_B lbound_mc lbound_model]
        [topk_radius topk_correct]   ("topk": k > 1)
        [area_objective]             ("anisotropic": true; radius is then the inscribed ell_2 radius)
        [n_used]                     ("sequential")

Files of the earlier format (settings on a ``# jaxsmooth certify {...}``
first line, ``#`` comment lines) are read too. A locuslab file has no
sidecar; its settings are unknown, and its ``time`` may be ``H:MM:SS.ffffff``
or plain seconds. A predict TSV (``--mode predict``) has the columns
``idx label predict correct time [count_A count_B pvalue clean]``, where
``clean`` is the class of one noise-free forward pass; then::

    agreement          = mean_i [clean_i = predict_i]   (an abstention disagrees)
    single-pass acc    = mean_i [clean_i = label_i]

the agreement study of deterministic smoothing: how often a model's one
forward pass gives what its stochastic PREDICT gives. A last line with
the wrong number of fields (a job killed mid-write) is ignored.

Distributional TSVs (``--mode distributional``, nal's certificate) have
their own reader and tables: see `jaxsmooth.analysis.distributional`.

Attack TSVs (``python -m jaxsmooth.attack``) have their own reader, the
adversarial-distance table of heat Tables 1-2 and the attack curve: see
`jaxsmooth.analysis.attacks`.

Functions return values (arrays, strings, matplotlib Figures); the CLI
(``python -m jaxsmooth.analyze``) writes them. Every bad input raises
`UserError` naming the file, line or option. NumPy and matplotlib only: no JAX.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np

from jaxsmooth.analysis.attacks import (DistanceRow, attack_curve_figure, attacked_fraction, distance_rows,
                                        distance_table, is_attack_file, lbound_distances, median_and_mean,
                                        read_attack)
from jaxsmooth.analysis.distributional import (GammaSummary, certificate, certificate_of, complete_examples,
                                               distributional_figure, distributional_markdown, epsilon_from_rho,
                                               gammas_of, is_distributional_file, read_distributional, rho_grid,
                                               summarize_distributional)
from jaxsmooth.analysis import plotting
from jaxsmooth.analysis.tsv import (DEFAULT_STEP, MAX_RADII, MODES, REQUIRED, common_images, merge_shards, read_run,
                                    read_runs, shard_path, write_merged)
from jaxsmooth import values
from jaxsmooth.errors import UserError
from jaxsmooth.results import Table, model_label

__all__ = [
    "DistanceRow", "attack_curve_figure", "attacked_fraction", "distance_rows", "distance_table",
    "is_attack_file", "lbound_distances", "median_and_mean", "model_label", "read_attack",
    "GammaSummary", "certificate", "certificate_of", "complete_examples", "distributional_figure",
    "distributional_markdown", "epsilon_from_rho", "gammas_of", "is_distributional_file", "read_distributional",
    "rho_grid", "summarize_distributional",
    "DEFAULT_STEP", "MAX_RADII", "MODES", "REQUIRED", "Summary", "Table", "abstain_rate", "agreement",
    "area_accuracy", "area_figure", "area_grid", "average_certified_radius", "certified_accuracy",
    "certified_accuracy_figure", "clean_accuracy", "common_images", "has_topk", "is_anisotropic", "latex_table",
    "markdown_table", "merge_shards", "radius_grid", "read_run", "read_runs", "shard_path", "single_pass_accuracy",
    "summarize", "topk_certified_accuracy", "topk_of", "write_merged",
]


def has_topk(run: Table) -> bool:
    """Whether a certify run has the top-k certificate's columns."""
    return "topk_radius" in run.columns


def topk_of(run: Table) -> int:
    """k of the top-k certificate (settings ``"topk"``); 0 when unknown or absent."""
    k = run.settings.get("topk", 0) if has_topk(run) else 0
    return k if isinstance(k, int) else 0


def is_anisotropic(run: Table) -> bool:
    """Whether a certify run has a per-pixel sigma's certified-area column."""
    return "area_objective" in run.columns


def certified_accuracy(run: Table, radii) -> np.ndarray:
    """Fraction of examples with correct = 1 and radius >= r (Cohen et al. Sec. 4).

    Args:
      run: a certify run.
      radii: [R] float.
    Returns:
      [R] float64 in [0, 1], non-increasing in r.
    """
    return _fraction_at_least(_get(run, "radius"), _get(run, "correct"), radii)


def topk_certified_accuracy(run: Table, radii) -> np.ndarray:
    """Like `certified_accuracy` with the top-k columns: topk_correct = 1 and topk_radius >= r. [R] -> [R]."""
    return _fraction_at_least(_get(run, "topk_radius"), _get(run, "topk_correct"), radii)


def area_accuracy(run: Table, areas) -> np.ndarray:
    """Fraction of examples with correct = 1 and certified-area objective >= a.

    The objective is sum_i log sigma_i + D log Phi^-1(p_A lower) (non_uniform
    Thm 3.1: the log volume of the certified ellipsoid up to a constant of D);
    ``-inf``/``nan`` (abstentions) certify no a.

    Args:
      run: an anisotropic certify run (with an ``area_objective`` column).
      areas: [A] float.
    Returns:
      [A] float64 in [0, 1], non-increasing in a.
    """
    return _fraction_at_least(_get(run, "area_objective"), _get(run, "correct"), areas)


def average_certified_radius(run: Table, topk: bool = False) -> float:
    """ACR = mean over examples of radius * correct (0 for abstentions and errors)."""
    radius, correct = (("topk_radius", "topk_correct") if topk else ("radius", "correct"))
    return float(np.mean(np.where(_get(run, correct) == 1, _get(run, radius), 0.0)))


def agreement(run: Table) -> float:
    """Fraction of examples whose one clean forward pass (``clean``) equals PREDICT's class; abstaining disagrees."""
    return float(np.mean(_get(run, "clean") == _get(run, "predict")))


def single_pass_accuracy(run: Table) -> float:
    """Fraction of examples whose one clean forward pass (``clean``) is the true label."""
    return float(np.mean(_get(run, "clean") == _get(run, "label")))


def abstain_rate(run: Table) -> float:
    """Fraction of examples where the smoothed classifier abstains (predict = -1)."""
    return float(np.mean(run.columns["predict"] == -1))


def clean_accuracy(run: Table) -> float:
    """Fraction correct: the smoothed classifier's accuracy (certify: certified accuracy at r = 0)."""
    return float(np.mean(run.columns["correct"] == 1))


def radius_grid(runs: Sequence[Table], radii: Sequence[float] | None = None, max_radius: float | None = None,
                step: float | None = None) -> np.ndarray:
    """The radii of the table's columns: `radii` as given, or 0, step, ..., max_radius.

    `max_radius` defaults to the largest certified radius of the runs (top-k
    included) rounded up to a multiple of `step` (default 0.25), at least one
    step. Returns [R] float64, increasing, from 0 unless `radii` says otherwise.
    """
    if radii is not None:
        if max_radius is not None or step is not None:
            raise UserError("radii", "give either radii (--radii) or --max-radius/--step, not both")
        radii = np.asarray(values.radii(radii), np.float64)
        if radii.size > MAX_RADII:
            raise UserError("radii", f"{radii.size} radii; at most {MAX_RADII} table columns")
        return radii
    step = DEFAULT_STEP if step is None else step
    if not (math.isfinite(step) and step > 0):
        raise UserError("--step", f"{step:g} is not a radius step; it must be finite and > 0")
    if max_radius is None:
        largest = max((_largest_certified(r) for r in runs if r.mode == "certify"), default=0.0)
        max_radius = step * max(1, math.ceil(largest / step - 1e-9)) if math.isfinite(largest) else step
    if not (math.isfinite(max_radius) and max_radius >= 0):
        raise UserError("--max-radius", f"{max_radius:g} is not a radius; it must be finite and >= 0")
    count = math.floor(max_radius / step + 1e-9) + 1
    if count > MAX_RADII:
        raise UserError("--step", f"--max-radius {max_radius:g} / --step {step:g} gives {count} radii; "
                                  f"at most {MAX_RADII} table columns")
    return np.round(np.arange(count) * step, 12)  # 0.1 * 3 is 0.30000000000000004


def area_grid(runs: Sequence[Table], num: int = 400) -> np.ndarray:
    """[num] areas spanning the finite area objectives of the correct examples of the anisotropic runs.

    The grid starts at the smallest of them, or at Tukey's far-out fence
    Q1 - 3 IQR when far-out low areas (p_A lower near 1/2, where
    D log Phi^-1 dives) would squeeze the rest into a corner of the plot.
    """
    values = np.concatenate([r.columns["area_objective"][r.columns["correct"] == 1] for r in runs if is_anisotropic(r)]
                            or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.linspace(-1.0, 1.0, num)
    q1, q3 = np.quantile(values, [0.25, 0.75])
    lo, hi = max(float(values.min()), float(q1 - 3 * (q3 - q1))), float(values.max())
    pad = 0.05 * (hi - lo) or 1.0
    return np.linspace(lo - pad, hi + pad, num)


@dataclasses.dataclass(frozen=True)
class Summary:
    """The numbers of one run's table row.

    Attributes:
      label, mode, num_examples: of the run.
      clean_accuracy: fraction correct (predict: the smoothed accuracy).
      abstain_rate: fraction with predict = -1.
      radii: [R] the radii of `certified_accuracy` (empty for predict).
      certified_accuracy: [R].
      acr: average certified radius (nan for predict).
      topk: k of the top-k columns (0: absent or k unknown).
      topk_certified_accuracy, topk_acr, topk_clean_accuracy: the same
        numbers for the top-k certificate; None without top-k columns.
      agreement, single_pass_accuracy: predict files with a ``clean``
        column (`agreement`, `single_pass_accuracy`); None otherwise.
    """

    label: str
    mode: str
    num_examples: int
    clean_accuracy: float
    abstain_rate: float
    radii: np.ndarray
    certified_accuracy: np.ndarray
    acr: float
    topk: int = 0
    topk_certified_accuracy: np.ndarray | None = None
    topk_acr: float | None = None
    topk_clean_accuracy: float | None = None
    agreement: float | None = None
    single_pass_accuracy: float | None = None


def summarize(run: Table, radii) -> Summary:
    """Certified accuracy at `radii` ([R]), ACR, abstain rate and clean accuracy of one run."""
    if run.mode == "predict":
        agree = dict(agreement=agreement(run), single_pass_accuracy=single_pass_accuracy(run)) \
            if "clean" in run.columns else {}
        return Summary(run.label, run.mode, run.num_examples, clean_accuracy(run), abstain_rate(run),
                       np.zeros(0), np.zeros(0), math.nan, **agree)
    radii = np.asarray(radii, np.float64)
    topk = {}
    if has_topk(run):
        topk = dict(topk=topk_of(run), topk_certified_accuracy=topk_certified_accuracy(run, radii),
                    topk_acr=average_certified_radius(run, topk=True),
                    topk_clean_accuracy=float(np.mean(run.columns["topk_correct"] == 1)))
    return Summary(run.label, run.mode, run.num_examples, clean_accuracy(run), abstain_rate(run), radii,
                   certified_accuracy(run, radii), average_certified_radius(run), **topk)


def markdown_table(summaries: Sequence[Summary], digits: int = 3) -> str:
    """A GitHub-markdown table, one row per run (and one per top-k certificate); column maxima in bold."""
    titles, rows = _table(summaries, digits)
    lines = ["| " + " | ".join(["run"] + titles) + " |", "|---|" + "---:|" * len(titles)]
    for label, cells in rows:
        cells = [f"**{c[0]}**" if c[1] else c[0] for c in cells]
        lines.append("| " + " | ".join([label.replace("|", "\\|")] + cells) + " |")
    return "\n".join(lines) + "\n"


def latex_table(summaries: Sequence[Summary], digits: int = 3) -> str:
    """A booktabs ``tabular``, one row per run (and per top-k certificate); column maxima in ``\\textbf``.

    Labels are escaped (``_ % & #``) unless they hold ``$`` or ``\\`` (already LaTeX).
    """
    titles, rows = _table(summaries, digits)
    titles = [f"${t}$" if t in ("n",) or t.startswith("r = ") else t for t in titles]
    lines = [r"\begin{tabular}{l" + "r" * len(titles) + "}", r"\toprule",
             " & ".join(["run"] + titles) + r" \\", r"\midrule"]
    for label, cells in rows:
        cells = ["--" if c[0] == "-" else (rf"\textbf{{{c[0]}}}" if c[1] else c[0]) for c in cells]
        lines.append(" & ".join([_latex_label(label)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def certified_accuracy_figure(runs: Sequence[Table], max_radius: float | None = None, num_points: int = 1001,
                              figsize=(6.4, 4.8), dpi: int = 150, title: str | None = None):
    """Certified accuracy vs radius, one curve per run (top-k dashed), as a matplotlib Figure (Agg, no pyplot).

    `max_radius` (the x range) defaults to `radius_grid`'s. Anisotropic runs
    plot their inscribed ell_2 radius.
    """
    Figure = plotting.figure_class()

    for run in runs:
        if run.mode != "certify":
            raise UserError(run.path, f"is a {run.mode} file; a certified-accuracy plot needs certify files")
    if max_radius is None:
        max_radius = float(radius_grid(runs)[-1])
    x = np.linspace(0.0, max_radius, num_points)
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    for run in runs:
        (line,) = ax.plot(x, certified_accuracy(run, x), drawstyle="steps-post", label=run.label)
        if has_topk(run):
            ax.plot(x, topk_certified_accuracy(run, x), drawstyle="steps-post", linestyle="--",
                    color=line.get_color(), label=f"{run.label}, top-{topk_of(run) or 'k'}")
    return plotting.finish(fig, ax, xlabel=r"$\ell_2$ radius", ylabel="certified accuracy", title=title,
                           xlim=(0.0, max_radius or 1.0))


def area_figure(runs: Sequence[Table], areas=None, figsize=(6.4, 4.8), dpi: int = 150, title: str | None = None):
    """Certified accuracy vs the certified-area objective for the anisotropic runs, as a matplotlib Figure.

    Runs without an ``area_objective`` column are left out; none at all is an error.
    """
    Figure = plotting.figure_class()

    aniso = [r for r in runs if r.mode == "certify" and is_anisotropic(r)]
    if not aniso:
        raise UserError("--area-plot", "no run has an area_objective column (only anisotropic certify runs do): "
                        + ", ".join(r.path for r in runs))
    areas = area_grid(aniso) if areas is None else np.asarray(areas, np.float64)
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    for run in aniso:
        ax.plot(areas, area_accuracy(run, areas), drawstyle="steps-post", label=run.label)
    area = r"$\sum_i \log\sigma_i + D\,\log\Phi^{-1}(p_{A,\mathrm{lower}})$"
    return plotting.finish(fig, ax, xlabel=f"certified area {area}",
                           ylabel="certified accuracy", title=title, xlim=(float(areas[0]), float(areas[-1])))


def _fraction_at_least(values: np.ndarray, correct: np.ndarray, thresholds) -> np.ndarray:
    """mean_i [correct_i = 1 and values_i >= t] for each t, by one sort: O((N + T) log N)."""
    certified = values[(correct == 1) & ~np.isnan(values)]
    certified = np.sort(certified)
    count = certified.size - np.searchsorted(certified, np.asarray(thresholds, np.float64), side="left")
    return count / values.size


def _largest_certified(run: Table) -> float:
    pairs = [("radius", "correct")] + ([("topk_radius", "topk_correct")] if has_topk(run) else [])
    return max(float(np.max(np.where(run.columns[c] == 1, run.columns[r], 0.0))) for r, c in pairs)


def _get(run: Table, name: str) -> np.ndarray:
    if name not in run.columns:
        raise UserError(run.path, f"has no {name} column (a {run.mode} file with columns "
                                  f"{' '.join(run.columns)})")
    return run.columns[name]



def _table(summaries: Sequence[Summary], digits: int):
    """Column titles and rows (label, [(text, bold)]) shared by the markdown and LaTeX tables."""
    if not summaries:
        raise ValueError("no runs to tabulate")
    mode = summaries[0].mode
    if any(s.mode != mode for s in summaries):
        raise ValueError("the runs mix certify and predict files; tabulate one mode at a time")
    if mode == "predict":
        titles, best = ["n", "accuracy", "abstain"], [False, True, False]
        rows = [(s.label, [s.num_examples, s.clean_accuracy, s.abstain_rate], True) for s in summaries]
        if any(s.agreement is not None for s in summaries):
            titles, best = titles + ["single-pass acc", "agreement"], best + [True, True]
            rows = [(label, cells + [s.single_pass_accuracy, s.agreement], ranks)
                    for (label, cells, ranks), s in zip(rows, summaries)]
    else:
        radii = summaries[0].radii
        if any(not np.array_equal(s.radii, radii) for s in summaries):
            raise ValueError("the summaries were computed at different radii")
        titles = ["n"] + [f"r = {r:g}" for r in radii] + ["ACR", "abstain", "clean acc"]
        best = [False] + [True] * len(radii) + [True, False, True]
        rows = []
        for s in summaries:
            rows.append((s.label, [s.num_examples, *s.certified_accuracy, s.acr, s.abstain_rate, s.clean_accuracy],
                         True))
            if s.topk_certified_accuracy is not None:
                rows.append((f"{s.label} (top-{s.topk or 'k'})",
                             [s.num_examples, *s.topk_certified_accuracy, s.topk_acr, None, s.topk_clean_accuracy],
                             False))
    ranked = [cells for _, cells, ranks in rows if ranks]
    tops = []  # the value to bold in each column: its maximum, unless every run ties
    for j in range(len(titles)):
        shown = {round(cells[j], digits) for cells in ranked if cells[j] is not None}
        tops.append(max(shown) if best[j] and len(shown) > 1 else None)
    out = []
    for label, cells, ranks in rows:
        texts = []
        for j, value in enumerate(cells):
            if value is None:
                texts.append(("-", False))
            elif j == 0:
                texts.append((str(int(value)), False))
            else:
                texts.append((f"{value:.{digits}f}", ranks and tops[j] is not None and round(value, digits) == tops[j]))
        out.append((label, texts))
    return titles, out


def _latex_label(label: str) -> str:
    if "$" in label or "\\" in label:
        return label
    return re.sub(r"([_%&#])", r"\\\1", label)
