"""Reading certify and predict TSVs (jaxsmooth's and locuslab/smoothing's) into `Run`s.

See `jaxsmooth.analysis` for the format. NumPy only: no JAX.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import numpy as np

from jaxsmooth.analysis import sidecar
from jaxsmooth.errors import UserError

REQUIRED = {
    "certify": ("idx", "label", "predict", "radius", "correct", "time"),
    "predict": ("idx", "label", "predict", "correct", "time"),
}
MODES = tuple(REQUIRED)
DEFAULT_STEP = 0.25
MAX_RADII = 100  # table columns; a longer grid is almost always a typo in --step

_INT_COLUMNS = ("idx", "label", "predict", "correct", "count_A", "count_B", "topk_correct", "clean", "n_used")
_FLOAT_COLUMNS = ("radius", "pA_lower", "lbound_mc", "lbound_model", "topk_radius", "area_objective", "pvalue")
_TIMEDELTA = re.compile(r"(?:(-?\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)$")
_PLAIN_SECONDS = re.compile(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?$")
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
    program, settings = sidecar.read_settings(path)
    if program not in (None, "certify"):
        raise UserError(path, f"was written by jaxsmooth {program}, not certify; analyze reads certify and "
                              "predict TSVs")
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
    """Reads several runs of one mode; `labels`, if given, names them in order.

    The shards of a run certified with ``certify.parallel = examples``
    (``OUT.shard<p>of<P>.tsv``) are merged into one run (`merge_shards`), which
    takes one label.
    """
    if not paths:
        raise UserError("runs", "no TSV files given")
    runs = merge_shards([read_run(p) for p in paths])
    if labels is not None:
        if len(labels) != len(runs):
            raise UserError("--labels", f"{len(labels)} label(s) for {len(runs)} run(s) (the shards of one run "
                                        "are one run); give one per run, comma-separated")
        runs = [dataclasses.replace(run, label=label) for run, label in zip(runs, labels)]
    for run in runs[1:]:
        if run.mode != runs[0].mode:
            raise UserError(run.path, f"is a {run.mode} file but {runs[0].path} is a {runs[0].mode} file; "
                                      "analyse files of one mode at a time")
    return runs


def common_images(runs: Sequence[Run]) -> list[Run]:
    """Each run restricted to the examples (idx) that every run has, rows in the order each run had them.

    For comparing runs that reached different images, such as a long fixed-n
    run still under way and a sequential run of the same selection.
    """
    shared = set(runs[0].columns["idx"].tolist())
    for run in runs[1:]:
        shared &= set(run.columns["idx"].tolist())
    if not shared:
        raise UserError("--common", f"the runs share no example ({', '.join(run.path for run in runs)})")
    out = []
    for run in runs:
        keep = np.isin(run.columns["idx"], list(shared))
        out.append(dataclasses.replace(run, columns={k: v[keep] for k, v in run.columns.items()}))
    return out


_SHARD_NAME = re.compile(r"^(?P<stem>.*)\.shard(?P<shard>\d+)of(?P<shards>\d+)(?P<ext>\.[^.]*)?$")
# Header fields in which the shards of one run differ (each process times its own XLA options).
SHARD_FIELDS = ("shard", "devices", "xla_options")


def shard_path(out: str, shard: int, shards: int) -> str:
    """The TSV shard of process `shard` of `shards` for the output `out`: ``cert.tsv`` -> ``cert.shard0of2.tsv``."""
    stem, ext = os.path.splitext(out)
    return f"{stem}.shard{shard}of{shards}{ext}"


def _merged_path(path: str) -> str:
    folder, name = os.path.split(path)
    match = _SHARD_NAME.match(name)
    return os.path.join(folder, match["stem"] + (match["ext"] or "")) if match else path


def merge_shards(runs: Sequence[Run]) -> list[Run]:
    """`runs` with the shards of each run merged into one `Run`, rows in idx order, where its first shard was.

    A shard is a file whose header has ``shards`` > 1. Shards group by their
    merged file name (``cert.shard1of2.tsv`` -> ``cert.tsv``); a group must be
    every shard 0 .. P-1 of one run (all header fields equal but `SHARD_FIELDS`)
    with disjoint examples, else a `UserError` names the file and what is wrong.
    """
    groups: dict[str, list[Run]] = {}
    order: list[object] = []
    for run in runs:
        shards = run.settings.get("shards", 1)
        if isinstance(shards, int) and shards > 1:
            key = _merged_path(run.path)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(run)
        else:
            order.append(run)
    return [_merge(key, groups[key]) if isinstance(key, str) else key for key in order]


def _merge(path: str, shards: list[Run]) -> Run:
    first = shards[0]
    same = {k: v for k, v in first.settings.items() if k not in SHARD_FIELDS}
    for run in shards[1:]:
        for field in sorted(set(same) | set(run.settings) - set(SHARD_FIELDS)):
            if run.settings.get(field) != same.get(field):
                raise UserError(run.path, f"is a shard of another run than {first.path}: {field}="
                                          f"{run.settings.get(field)!r}, not {same.get(field)!r}; give the "
                                          "shards of one run together")
    count = same["shards"]
    seen = sorted(run.settings.get("shard") for run in shards)
    if seen != list(range(count)):
        missing = sorted(set(range(count)) - set(seen))
        repeated = sorted({s for s in seen if seen.count(s) > 1})
        what = (f"lacks shard(s) {', '.join(map(str, missing))}" if missing else "") + \
               ("; " if missing and repeated else "") + \
               (f"repeats shard(s) {', '.join(map(str, repeated))}" if repeated else "")
        raise UserError(path, f"is certified in {count} shards and the files given {what}: give each of "
                              f"{shard_path(path, 0, count)} .. {shard_path(path, count - 1, count)} once")
    idx = np.concatenate([run.columns["idx"] for run in shards])
    unique, counts = np.unique(idx, return_counts=True)
    if np.any(counts > 1):
        raise UserError(path, f"example {int(unique[counts > 1][0])} is in more than one shard; these are not "
                              "the shards of one run")
    order = np.argsort(idx, kind="stable")
    columns = {name: np.concatenate([run.columns[name] for run in shards])[order] for name in first.columns}
    stem, ext = os.path.splitext(os.path.basename(path))
    return Run(path=path, label=stem if ext in _STEM_EXTENSIONS else os.path.basename(path), mode=first.mode,
               settings={**{k: v for k, v in same.items() if k != "shards"}, "shards_merged": count}, columns=columns,
               ignored_line=next((run.ignored_line for run in shards if run.ignored_line is not None), None))


def write_merged(shard_paths: Sequence[str], out: str) -> Run:
    """Writes the merged TSV of one run's shards to `out` (settings without the shard fields, rows by idx).

    The rows are copied as written; a partial last line of a killed shard is
    left out. Returns the merged run.
    """
    runs = [read_run(p) for p in shard_paths]
    merged = merge_shards(runs)
    if len(merged) != 1 or merged[0].settings.get("shards_merged") is None:
        raise UserError("--merge", "takes the shards of one run (files OUT.shard<p>of<P>.tsv of "
                                   "certify.parallel = examples)")
    rows, header = [], None
    for run in runs:
        lines, _ = _read_lines(run.path)
        data = [(n, line) for n, line in lines if line.strip() and not line.startswith("#")]
        header = data[0][1]
        rows += [line for n, line in data[1:] if line != header and n != run.ignored_line]
    rows.sort(key=lambda line: int(line.split("\t")[0]))
    settings = {k: v for k, v in merged[0].settings.items() if k not in SHARD_FIELDS}
    try:
        with open(out, "w") as f:
            f.writelines(line + "\n" for line in [header] + rows)
        sidecar.write(out, "certify", settings, tuple(sidecar.read_notes(runs[0].path)))
    except OSError as e:
        raise UserError("--merge", f"cannot write {out}: {e.strerror}") from None
    return merged[0]



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
            kind = "an integer" if dtype is np.int64 else "a number" if name != "time" else \
                "a time H:MM:SS[.ffffff] or seconds"
            raise UserError(f"{path}:{n}", f"column {name}: {value!r} is not {kind}") from None
    return np.asarray(out, dtype)


def _seconds(text: str) -> float:
    """Seconds of a Python ``str(datetime.timedelta)`` (``[D day[s], ]H:MM:SS[.ffffff]``) or plain seconds (``15.4``).

    locuslab/smoothing's certify.py has written both over its history.
    """
    if _PLAIN_SECONDS.match(text.strip()):
        return float(text)
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
