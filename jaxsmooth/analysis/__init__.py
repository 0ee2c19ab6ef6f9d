"""Certified-accuracy analysis of certify and predict TSVs: tables, ACR, plots.

Reads what ``python -m jaxsmooth.certify`` writes, and the files of
locuslab/smoothing (Cohen et al.'s code), and computes per run the numbers of
Cohen et al. (2019, Sec. 4 and their ``analyze.py``)::

    certified accuracy at r = mean_i [correct_i = 1 and radius_i >= r]
    ACR                     = mean_i radius_i * correct_i
    abstain rate            = mean_i [predict_i = -1]
    clean accuracy          = mean_i correct_i   (= certified accuracy at r = 0)

A certify TSV (tab-separated; ``[...]`` columns are optional)::

    # jaxsmooth certify {"mode": "certify", "sigma": 0.25, "n": 100000, "alpha": 0.001, ...}
    idx label predict radius correct time [pA_lower count_A count_B lbound_mc lbound_model]
        [topk_radius topk_correct]   ("topk": k > 1)
        [area_objective]             ("anisotropic": true; radius is then the inscribed ell_2 radius)

Other ``#`` lines are comments. A locuslab file has no ``#`` line; its
settings are unknown. A predict TSV (``--mode predict``) has the columns
``idx label predict correct time [count_A count_B pvalue]``. A last line with
the wrong number of fields (a job killed mid-write) is ignored.

Functions return values (arrays, strings, matplotlib Figures); the CLI
(``python -m jaxsmooth.analyze``) writes them. Every bad input raises
`UserError` naming the file, line or option. NumPy and matplotlib only: no JAX.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Sequence

import numpy as np

from jaxsmooth.errors import UserError

REQUIRED = {
    "certify": ("idx", "label", "predict", "radius", "correct", "time"),
    "predict": ("idx", "label", "predict", "correct", "time"),
}
MODES = tuple(REQUIRED)
DEFAULT_STEP = 0.25
MAX_RADII = 100  # table columns; a longer grid is almost always a typo in --step

_INT_COLUMNS = ("idx", "label", "predict", "correct", "count_A", "count_B", "topk_correct")
_FLOAT_COLUMNS = ("radius", "pA_lower", "lbound_mc", "lbound_model", "topk_radius", "area_objective", "pvalue")
_HEADER = re.compile(r"#\s*jaxsmooth\s+(\S+)\s*(.*)$")
_TIMEDELTA = re.compile(r"(?:(-?\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)$")
_STEM_EXTENSIONS = (".tsv", ".txt", ".tab")  # locuslab names files "sigma_0.25": keep ".25"


@dataclasses.dataclass(frozen=True)
class Run:
    """One certify or predict TSV, parsed.

    Attributes:
      path: the file read.
      label: the run's name in tables and legends (the file stem unless given).
      mode: ``"certify"`` or ``"predict"``.
      settings: the header's JSON object; ``{}`` for a locuslab/smoothing file.
      columns: name -> [N] array: int64 for idx, label, predict, correct,
        count_A, count_B, topk_correct; float64 for radius, pA_lower, the
        L-bounds, topk_radius, area_objective, pvalue (``-inf``/``nan``
        kept); ``time`` in seconds (float64); any other column as str.
      ignored_line: 1-based number of the partial last line skipped, or None.
    """

    path: str
    label: str
    mode: str
    settings: dict
    columns: dict
    ignored_line: int | None = None

    @property
    def num_examples(self) -> int:
        return len(self.columns["idx"])

    @property
    def has_topk(self) -> bool:
        return "topk_radius" in self.columns

    @property
    def topk(self) -> int:
        """k of the top-k certificate (settings ``"topk"``); 0 when unknown or absent."""
        k = self.settings.get("topk", 0) if self.has_topk else 0
        return k if isinstance(k, int) else 0

    @property
    def anisotropic(self) -> bool:
        return "area_objective" in self.columns


def read_run(path: str, label: str | None = None) -> Run:
    """Parses one certify or predict TSV (module docstring) into a `Run`."""
    lines, terminated = _read_lines(path)
    settings = _settings(path, lines[0][1]) if lines[0][1].startswith("#") else {}
    body = [(n, line) for n, line in lines if line.strip() and not line.startswith("#")]
    if not body:
        raise UserError(path, "has no header row (idx label predict ...); is it a certify TSV?")
    header = body[0][1].split("\t")
    mode = _mode(path, settings, header)
    _check_header(path, mode, header)
    rows = [(n, line) for n, line in body[1:] if line != body[0][1]]  # a header repeated by a resumed writer
    ignored = None
    # A killed writer leaves a last line short of fields, or cut inside its last field (then unterminated).
    if rows and (len(rows[-1][1].split("\t")) != len(header)
                 or not terminated and rows[-1][0] == lines[-1][0] and not _parses(header, rows[-1][1])):
        ignored = rows.pop()[0]
    if not rows:
        raise UserError(path, "has a header but no rows yet; nothing to analyse")
    fields = []
    for n, line in rows:
        parts = line.split("\t")
        if len(parts) != len(header):
            raise UserError(f"{path}:{n}", f"has {len(parts)} tab-separated fields, the header has {len(header)}")
        fields.append(parts)
    columns = {name: _column(path, rows, name, [f[j] for f in fields]) for j, name in enumerate(header)}
    _check_values(path, rows, columns)
    if label is None:
        stem, ext = os.path.splitext(os.path.basename(path))
        label = stem if ext in _STEM_EXTENSIONS else os.path.basename(path)
    return Run(path=path, label=label, mode=mode, settings=settings, columns=columns, ignored_line=ignored)


def read_runs(paths: Sequence[str], labels: Sequence[str] | None = None) -> list[Run]:
    """Reads several runs of one mode; `labels`, if given, names them in order."""
    if labels is not None and len(labels) != len(paths):
        raise UserError("--labels", f"{len(labels)} label(s) for {len(paths)} file(s); give one per file, "
                                        "comma-separated")
    if not paths:
        raise UserError("runs", "no TSV files given")
    runs = [read_run(p, None if labels is None else labels[i]) for i, p in enumerate(paths)]
    for run in runs[1:]:
        if run.mode != runs[0].mode:
            raise UserError(run.path, f"is a {run.mode} file but {runs[0].path} is a {runs[0].mode} file; "
                                      "analyse files of one mode at a time")
    return runs


def certified_accuracy(run: Run, radii) -> np.ndarray:
    """Fraction of examples with correct = 1 and radius >= r (Cohen et al. Sec. 4).

    Args:
      run: a certify run.
      radii: [R] float.
    Returns:
      [R] float64 in [0, 1], non-increasing in r.
    """
    return _fraction_at_least(_get(run, "radius"), _get(run, "correct"), radii)


def topk_certified_accuracy(run: Run, radii) -> np.ndarray:
    """Like `certified_accuracy` with the top-k columns: topk_correct = 1 and topk_radius >= r. [R] -> [R]."""
    return _fraction_at_least(_get(run, "topk_radius"), _get(run, "topk_correct"), radii)


def area_accuracy(run: Run, areas) -> np.ndarray:
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


def average_certified_radius(run: Run, topk: bool = False) -> float:
    """ACR = mean over examples of radius * correct (0 for abstentions and errors)."""
    radius, correct = (("topk_radius", "topk_correct") if topk else ("radius", "correct"))
    return float(np.mean(np.where(_get(run, correct) == 1, _get(run, radius), 0.0)))


def abstain_rate(run: Run) -> float:
    """Fraction of examples where the smoothed classifier abstains (predict = -1)."""
    return float(np.mean(run.columns["predict"] == -1))


def clean_accuracy(run: Run) -> float:
    """Fraction correct: the smoothed classifier's accuracy (certify: certified accuracy at r = 0)."""
    return float(np.mean(run.columns["correct"] == 1))


def radius_grid(runs: Sequence[Run], radii: Sequence[float] | None = None, max_radius: float | None = None,
                step: float | None = None) -> np.ndarray:
    """The radii of the table's columns: `radii` as given, or 0, step, ..., max_radius.

    `max_radius` defaults to the largest certified radius of the runs (top-k
    included) rounded up to a multiple of `step` (default 0.25), at least one
    step. Returns [R] float64, increasing, from 0 unless `radii` says otherwise.
    """
    if radii is not None:
        if max_radius is not None or step is not None:
            raise UserError("--radii", "give either --radii or --max-radius/--step, not both")
        radii = np.asarray(radii, np.float64)
        if radii.size == 0:
            raise UserError("--radii", "is empty; give radii like 0,0.25,0.5")
        bad = radii[~np.isfinite(radii) | (radii < 0)]
        if bad.size:
            raise UserError("--radii", f"{bad[0]:g} is not a radius; radii are finite and >= 0")
        if np.any(np.diff(radii) <= 0):
            raise UserError("--radii", f"must increase strictly: {','.join(f'{r:g}' for r in radii)}")
        if radii.size > MAX_RADII:
            raise UserError("--radii", f"{radii.size} radii; at most {MAX_RADII} table columns")
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


def area_grid(runs: Sequence[Run], num: int = 400) -> np.ndarray:
    """[num] areas spanning the finite area objectives of the correct examples of the anisotropic runs."""
    values = np.concatenate([r.columns["area_objective"][r.columns["correct"] == 1] for r in runs if r.anisotropic]
                            or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.linspace(-1.0, 1.0, num)
    lo, hi = float(values.min()), float(values.max())
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


def summarize(run: Run, radii) -> Summary:
    """Certified accuracy at `radii` ([R]), ACR, abstain rate and clean accuracy of one run."""
    if run.mode == "predict":
        return Summary(run.label, run.mode, run.num_examples, clean_accuracy(run), abstain_rate(run),
                       np.zeros(0), np.zeros(0), math.nan)
    radii = np.asarray(radii, np.float64)
    topk = {}
    if run.has_topk:
        topk = dict(topk=run.topk, topk_certified_accuracy=topk_certified_accuracy(run, radii),
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


def certified_accuracy_figure(runs: Sequence[Run], max_radius: float | None = None, num_points: int = 1001,
                              figsize=(6.4, 4.8), dpi: int = 150, title: str | None = None):
    """Certified accuracy vs radius, one curve per run (top-k dashed), as a matplotlib Figure (Agg, no pyplot).

    `max_radius` (the x range) defaults to `radius_grid`'s. Anisotropic runs
    plot their inscribed ell_2 radius.
    """
    from matplotlib.figure import Figure

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
        if run.has_topk:
            ax.plot(x, topk_certified_accuracy(run, x), drawstyle="steps-post", linestyle="--",
                    color=line.get_color(), label=f"{run.label}, top-{run.topk or 'k'}")
    _finish(ax, r"$\ell_2$ radius", (0.0, max_radius or 1.0), title)
    fig.tight_layout()
    return fig


def area_figure(runs: Sequence[Run], areas=None, figsize=(6.4, 4.8), dpi: int = 150, title: str | None = None):
    """Certified accuracy vs the certified-area objective for the anisotropic runs, as a matplotlib Figure.

    Runs without an ``area_objective`` column are left out; none at all is an error.
    """
    from matplotlib.figure import Figure

    aniso = [r for r in runs if r.mode == "certify" and r.anisotropic]
    if not aniso:
        raise UserError("--area-plot", "no run has an area_objective column (only anisotropic certify runs do): "
                        + ", ".join(r.path for r in runs))
    areas = area_grid(aniso) if areas is None else np.asarray(areas, np.float64)
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    for run in aniso:
        ax.plot(areas, area_accuracy(run, areas), drawstyle="steps-post", label=run.label)
    _finish(ax, r"certified area $\sum_i \log\sigma_i + D\,\log\Phi^{-1}(\underline{p_A})$",
            (float(areas[0]), float(areas[-1])), title)
    fig.tight_layout()
    return fig


def _finish(ax, xlabel, xlim, title):
    ax.set_xlim(*xlim)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("certified accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)


def _fraction_at_least(values: np.ndarray, correct: np.ndarray, thresholds) -> np.ndarray:
    """mean_i [correct_i = 1 and values_i >= t] for each t, by one sort: O((N + T) log N)."""
    certified = values[(correct == 1) & ~np.isnan(values)]
    certified = np.sort(certified)
    count = certified.size - np.searchsorted(certified, np.asarray(thresholds, np.float64), side="left")
    return count / values.size


def _largest_certified(run: Run) -> float:
    pairs = [("radius", "correct")] + ([("topk_radius", "topk_correct")] if run.has_topk else [])
    return max(float(np.max(np.where(run.columns[c] == 1, run.columns[r], 0.0))) for r, c in pairs)


def _get(run: Run, name: str) -> np.ndarray:
    if name not in run.columns:
        raise UserError(run.path, f"has no {name} column (a {run.mode} file with columns "
                                  f"{' '.join(run.columns)})")
    return run.columns[name]


def _read_lines(path: str) -> tuple[list[tuple[int, str]], bool]:
    """(1-based line number, line without its newline) for each line, and whether the file ends in a newline."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(path, "no such file") from None
    except IsADirectoryError:
        raise UserError(path, "is a directory, not a TSV file") from None
    except UnicodeDecodeError:
        raise UserError(path, "is not a UTF-8 text file; expected a certify TSV") from None
    except OSError as e:
        raise UserError(path, f"cannot be read: {e.strerror}") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not any(line.strip() for line in lines):
        raise UserError(path, "is empty; expected a certify or predict TSV")
    return [(n + 1, line.rstrip("\r")) for n, line in enumerate(lines)], text.endswith("\n")


def _settings(path: str, line: str) -> dict:
    match = _HEADER.match(line)
    if not match:
        return {}  # a plain comment
    program, text = match.groups()
    if program != "certify":
        raise UserError(path, f"was written by jaxsmooth {program}, not certify; analyze reads certify and "
                              "predict TSVs")
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:1", f"the settings after '# jaxsmooth certify' are not JSON: {e.msg}") from None
    if not isinstance(settings, dict):
        raise UserError(f"{path}:1", "the settings after '# jaxsmooth certify' are not one JSON object")
    return settings


def _mode(path: str, settings: dict, header: list[str]) -> str:
    mode = settings.get("mode")
    if mode is None:  # locuslab/smoothing: certify.py writes a radius, predict.py none
        mode = "predict" if "radius" not in header and "correct" in header else "certify"
    if mode not in MODES:
        raise UserError(path, f"mode {mode!r} in the header is unknown; analyze reads: {', '.join(MODES)}")
    return mode


def _check_header(path: str, mode: str, header: list[str]) -> None:
    wanted = REQUIRED[mode] + (("topk_correct",) if "topk_radius" in header else ()) + (
        ("topk_radius",) if "topk_correct" in header else ())
    if len(header) == 1 and " " in header[0]:
        raise UserError(path, f"the header {header[0]!r} has no tabs; a {mode} TSV's columns are tab-separated: "
                              f"{' '.join(REQUIRED[mode])} [...]")
    for name in wanted:
        if name not in header:
            raise UserError(path, f"missing column {name!r}: a {mode} TSV has the tab-separated columns "
                                  f"{' '.join(REQUIRED[mode])} [...]; this header has {' '.join(header)!r}")
    for name in header:
        if header.count(name) > 1:
            raise UserError(path, f"column {name!r} appears {header.count(name)} times in the header")


def _parse(name: str, value: str):
    if name in _INT_COLUMNS:
        return int(value)
    if name in _FLOAT_COLUMNS:
        return float(value)
    if name == "time":
        return _seconds(value)
    return value


def _parses(header: list[str], line: str) -> bool:
    try:
        for name, value in zip(header, line.split("\t")):
            _parse(name, value)
        return True
    except ValueError:
        return False


def _column(path: str, rows, name: str, values: list[str]) -> np.ndarray:
    dtype = np.int64 if name in _INT_COLUMNS else np.float64 if name in _FLOAT_COLUMNS or name == "time" else str
    out = []
    for (n, _), value in zip(rows, values):
        try:
            out.append(_parse(name, value))
        except ValueError:
            kind = "an integer" if dtype is np.int64 else "a number" if name != "time" else "a time H:MM:SS[.ffffff]"
            raise UserError(f"{path}:{n}", f"column {name}: {value!r} is not {kind}") from None
    return np.asarray(out, dtype)


def _seconds(text: str) -> float:
    """Seconds of a Python ``str(datetime.timedelta)``: ``[D day[s], ]H:MM:SS[.ffffff]``."""
    match = _TIMEDELTA.match(text.strip())
    if not match:
        raise ValueError(text)
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _check_values(path: str, rows, columns: dict) -> None:
    """0/1 correctness, radii >= 0 and each idx once: what the metrics assume."""
    checks = [(name, lambda v: (v != 0) & (v != 1), "is not 0 or 1") for name in ("correct", "topk_correct")]
    checks += [(name, lambda v: np.isnan(v) | (v < 0), "is not a radius >= 0") for name in ("radius", "topk_radius")]
    checks += [("predict", lambda v: v < -1, "is not a class or -1 (abstain)")]
    for name, bad, what in checks:
        if name in columns and np.any(bad(columns[name])):
            i = int(np.argmax(bad(columns[name])))
            raise UserError(f"{path}:{rows[i][0]}", f"column {name}: {columns[name][i]} {what}")
    idx = columns["idx"]
    order = np.argsort(idx, kind="stable")
    repeated = np.flatnonzero(idx[order][1:] == idx[order][:-1])
    if repeated.size:
        first, second = order[repeated[0]], order[repeated[0] + 1]
        raise UserError(f"{path}:{rows[second][0]}", f"idx {idx[second]} is already on line {rows[first][0]}; "
                                                    "each example is counted once")


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
        shown = {round(cells[j], digits) for cells in ranked}
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
