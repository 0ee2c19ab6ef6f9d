"""Reading certify and predict TSVs (jaxsmooth's and locuslab/smoothing's) into `results.Table`s; shards merged.

See `jaxsmooth.analysis` for the format and `jaxsmooth.results` for the
reader. NumPy only: no JAX.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import numpy as np

from jaxsmooth import results
from jaxsmooth.errors import UserError
from jaxsmooth.results import Table, sidecar

MODES = (results.CERTIFY.mode, results.PREDICT.mode)
REQUIRED = {s.mode: tuple(s.required) for s in (results.CERTIFY, results.PREDICT)}
DEFAULT_STEP = 0.25
MAX_RADII = 100  # table columns; a longer grid is almost always a typo in --step


def read_run(path: str, label: str | None = None) -> Table:
    """Reads one certify or predict TSV (`results.read`); `label` defaults to the file stem."""
    return results.read(path, (results.CERTIFY, results.PREDICT), label)


def read_runs(paths: Sequence[str], labels: Sequence[str] | None = None) -> list[Table]:
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


def common_images(runs: Sequence[Table]) -> list[Table]:
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


def merge_shards(runs: Sequence[Table]) -> list[Table]:
    """`runs` with the shards of each run merged into one `Table`, rows in idx order, where its first shard was.

    A shard is a file whose header has ``shards`` > 1. Shards group by their
    merged file name (``cert.shard1of2.tsv`` -> ``cert.tsv``); a group must be
    every shard 0 .. P-1 of one run (all header fields equal but `SHARD_FIELDS`)
    with disjoint examples, else a `UserError` names the file and what is wrong.
    """
    groups: dict[str, list[Table]] = {}
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


def _merge(path: str, shards: list[Table]) -> Table:
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
    return Table(path=path, label=results.stem_label(same, path), schema=first.schema,
                 settings={**{k: v for k, v in same.items() if k != "shards"}, "shards_merged": count}, columns=columns,
                 ignored_line=next((run.ignored_line for run in shards if run.ignored_line is not None), None))


def write_merged(shard_paths: Sequence[str], out: str) -> Table:
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
        lines, _ = results.read_lines(run.path)
        data = [(n, line) for n, line in lines if line.strip() and not line.startswith("#")]
        header = data[0][1]
        rows += [line for n, line in data[1:] if line != header and n != run.ignored_line]
    rows.sort(key=lambda line: int(line.split("\t")[0]))
    settings = {k: v for k, v in merged[0].settings.items() if k not in SHARD_FIELDS}
    try:
        with open(out, "w") as f:
            f.writelines(line + "\n" for line in [header] + rows)
        sidecar.write(out, merged[0].schema.program, settings, tuple(sidecar.read_notes(runs[0].path)))
    except OSError as e:
        raise UserError("--merge", f"cannot write {out}: {e.strerror}") from None
    return merged[0]
