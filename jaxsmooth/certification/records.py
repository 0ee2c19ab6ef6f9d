"""Certification over a dataset split, written as a resumable TSV.

The file is a plain table: the column header, then one row per example
(in index order; a sequential run's rows in the order its inputs finish,
each with ``n_used``, the samples it spent, selection included); its
settings are in the sidecar ``FILE.tsv.json``
(`jaxsmooth.analysis.sidecar`). The first columns are locuslab/smoothing's
(``idx label predict radius correct time``, or ``idx label predict correct
time`` for PREDICT), so its analysis scripts, and ``pandas.read_csv(path,
delimiter="\t")``, read our files; the radius is written at full precision. A job killed
mid-run resumes after its last complete row, with the same noise (the
noise of an example depends only on the key and its index).
"""

from __future__ import annotations

import datetime
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from jaxsmooth import jobs
from jaxsmooth.analysis import sidecar
from jaxsmooth.certification import Sampler, Settings, batching, certify_batch, predict_batch, stream_keys
from jaxsmooth.errors import UserError

# Settings whose change makes an existing file's rows incomparable with new ones.
IDENTITY_FIELDS = ("mode", "noise", "sigma", "sigma_file", "sigma_from", "sigma_from_step", "n0", "n", "alpha",
                   "candidate", "topk", "seed", "dtype", "checkpoint_step", "model", "dataset", "split", "skip", "max",
                   "batch", "inputs", "sequential", "radii", "tolerance", "futility", "looks", "look_alphas",
                   "wrapper", "wrapper_step", "wrapper_kind")
# What a file written before a field existed used (sequential files before futility was recorded: 0.01 in both modes).
IDENTITY_DEFAULTS = {"noise": "gaussian", "futility": 0.01}


def columns(mode: str, settings: Settings, *, anisotropic: bool, model_lbound: bool) -> list[str]:
    if mode == "predict":
        cols = ["idx", "label", "predict", "correct", "time", "count_A", "count_B", "pvalue"]
        return cols + ["clean"] if model_lbound else cols
    cols = ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "count_A", "count_B", "lbound_mc"]
    if model_lbound:
        cols.append("lbound_model")
    if settings.topk:
        cols += ["topk_radius", "topk_correct"]
    if anisotropic:
        cols.append("area_objective")
    if settings.sequential:
        cols.append("n_used")
    return cols


def example_indices(size: int, skip: int, maximum: int) -> np.ndarray:
    """Cohen et al.'s selection: every `skip`-th example below `maximum` (-1: the whole split)."""
    if skip < 1:
        raise UserError("skip", f"must be >= 1, got {skip}")
    if maximum == 0 or maximum < -1:
        raise UserError("max", f"must be -1 (all) or in [1, {size}], got {maximum}")
    if maximum > size:
        raise UserError("max", f"the split has {size} examples, got --max {maximum}")
    return np.arange(0, size if maximum == -1 else maximum, skip)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("-inf" if value < 0 else "inf" if value > 0 else "nan")
    return str(value)


ALPHA_NOTE = ("alpha holds per example (each row's certificate fails with probability <= alpha), "
              "not jointly over the rows")


class TsvWriter:
    """Appends rows to a plain TSV whose settings live in its sidecar; resumes an existing file after its last row.

    A new file gets its sidecar ``FILE.tsv.json`` (`program`, the `header`
    settings, `notes`; `jaxsmooth.analysis.sidecar`), then its column line.
    On an existing file the settings named in `identity_fields` must equal
    the file's, else a `UserError` names the first that differs and the file
    is left as it was. A last row cut off by a killed job is dropped and its
    example redone. A file of the earlier format (settings on a ``# jaxsmooth
    PROGRAM {...}`` first line) is rewritten in the new one when resumed.

    A program writing several rows per example, in order (``--mode
    distributional``: one per gamma), passes `rows_per_example`: on resume,
    the rows of a last example left incomplete are dropped and it is redone;
    `done` lists each complete example once. With ``enabled=False`` (the
    processes that do not write) the file is only read.
    """

    def __init__(self, path: str, header: dict[str, Any], cols: list[str], *, enabled: bool = True,
                 program: str = "certify", identity_fields: tuple[str, ...] = IDENTITY_FIELDS,
                 notes: tuple[str, ...] = (ALPHA_NOTE,), rows_per_example: int = 1):
        self.path, self.cols, self.enabled = path, cols, enabled
        self.rows_per_example = rows_per_example
        self.program, self.identity_fields = program, identity_fields
        self.done: list[int] = []
        if os.path.exists(path):
            self.done = self._resume(header, notes)
        elif enabled:
            _make_folder(path)
            with jobs.write_errors("out", path):
                sidecar.write(path, program, header, notes)
                with open(path, "w") as f:
                    f.write("\t".join(cols) + "\n")
        self._file = open(path, "a") if enabled else None

    def _resume(self, header: dict[str, Any], notes: tuple[str, ...]) -> list[int]:
        if os.path.isdir(self.path):
            raise UserError("out", f"{self.path} is a directory; give a file name")
        try:
            program, old = sidecar.read_settings(self.path)
        except UserError as e:
            raise UserError("out", f"{e}; choose another --out") from None
        if program != self.program:
            what = "was not written by jaxsmooth" if program is None else f"was written by jaxsmooth {program}"
            raise UserError("out", f"{self.path} {what}, not jaxsmooth {self.program} (its settings file "
                                   f"{sidecar.path_of(self.path)} is missing or names another program); "
                                   "choose another --out")
        for field in self.identity_fields:
            was, now = (h.get(field, IDENTITY_DEFAULTS.get(field)) for h in (old, header))
            if was != now:
                raise UserError("out", f"{self.path} was written with {field}={was!r}, not {now!r}; choose "
                                       "another --out to change it")
        legacy = sidecar.is_legacy(self.path)
        with open(self.path) as f:
            lines = [line for line in f.read().splitlines(keepends=True) if not line.startswith("#")]
        kept, cut = _complete_rows(lines, len(self.cols), self.rows_per_example)
        if not kept:  # killed between writing the sidecar and the column line
            kept, cut = ["\t".join(self.cols) + "\n"], True
        if kept[0].rstrip("\n").split("\t") != self.cols:
            raise UserError("out", f"{self.path} has columns {kept[0].rstrip() if kept else 'none'!r}, expected "
                                   f"{chr(9).join(self.cols)!r}; choose another --out")
        if (cut or legacy) and self.enabled:
            if legacy:  # the earlier format: settings move to the sidecar, the table loses its comment lines
                sidecar.write(self.path, self.program, old, tuple(sidecar.read_notes(self.path)) or notes)
            with jobs.write_errors("out", self.path):
                _replace(self.path, "".join(kept))
        done = [int(line.split("\t")[0]) for line in kept[1:]]
        return list(dict.fromkeys(done)) if self.rows_per_example > 1 else done

    def write(self, row: dict[str, Any]) -> None:
        if self._file is not None:  # one write of the whole row, or none (a full disk)
            jobs.append_line(self._file, "\t".join(_format(row[c]) for c in self.cols) + "\n", "out")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _complete_rows(lines: list[str], num_cols: int, rows_per_example: int) -> tuple[list[str], bool]:
    """(the column line and the complete rows, whether any were dropped) of a table's lines (with newlines).

    A row cut off by a killed job (no newline, or too few fields) is dropped;
    so are the rows of a last example left incomplete when an example has
    `rows_per_example` rows.
    """
    kept = list(lines)
    cut = False
    while len(kept) > 1 and (not kept[-1].endswith("\n") or len(kept[-1].rstrip("\n").split("\t")) != num_cols):
        kept.pop()
        cut = True
    if rows_per_example > 1 and len(kept) > 1:
        last = kept[-1].split("\t")[0]
        tail = 0
        while tail < len(kept) - 1 and kept[len(kept) - 1 - tail].split("\t")[0] == last:
            tail += 1
        if tail < rows_per_example:
            del kept[len(kept) - tail:]
            cut = True
    return kept, cut


def _make_folder(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError("out", f"cannot create the folder of {path}: a part of {folder} is a file, "
                               "not a folder") from None
    except OSError as e:
        raise UserError("out", f"cannot create the folder {folder}: {e.strerror}") from None


def _replace(path: str, text: str) -> None:
    """Replaces `path`'s content atomically (a kill leaves the old file or the new one)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run(sampler: Sampler, examples: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
        indices: np.ndarray, sigma, settings: Settings, key: jax.Array, *, mode: str = "certify",
        clean_probabilities: Callable | None = None, usage: batching.Usage | None = None) -> Iterator[dict[str, Any]]:
    """Certifies (or predicts) the examples `indices`, `sampler.inputs` at a time, yielding one row each, in order.

    Args:
      examples: ``examples(idx) -> (x, labels)``: x [B, *input_shape] float32
        in [0, 1], labels [B] int or None (rows then have no label or correct).
      indices: [N] global example indices (they pick the noise).
    Yields:
      dicts of idx, [label, correct,] time (this example's share of its
      batch's wall time, as a ``datetime.timedelta`` string), the columns of
      `certify_batch` / `predict_batch`, and ``seconds`` and ``samples`` for
      progress displays. With ``settings.sequential`` the rows come from
      `batching.run` in the order inputs finish (`usage` gets its slot
      counts); time is each input's share of the calls it took part in.
    """
    if mode == "certify" and settings.sequential:
        for result in batching.run(sampler, examples, indices, sigma, settings, stream_keys(key),
                                   clean_probabilities=clean_probabilities, usage=usage):
            row = {"idx": result.pop("index"), **result, "time": str(datetime.timedelta(seconds=result["seconds"])),
                   "samples": result["n_used"]}
            label = row.pop("label")
            if label is not None:
                row.update(label=label, correct=int(result["predict"] == label))
            yield row
        return
    for start in range(0, len(indices), sampler.inputs):
        idx = np.asarray(indices[start:start + sampler.inputs])
        x, labels = examples(idx)
        t0 = time.perf_counter()
        if mode == "predict":
            results = predict_batch(sampler, x, idx, sigma, settings.n, settings.alpha, key,
                                    clean_probabilities=clean_probabilities)
            samples = settings.n
        else:
            results = certify_batch(sampler, x, idx, sigma, settings, key, labels=labels,
                                    clean_probabilities=clean_probabilities)
            samples = settings.n + (settings.n0 if settings.candidate == "selection" else 0)
        seconds = (time.perf_counter() - t0) / len(idx)
        for b, result in enumerate(results):
            row = {"idx": int(idx[b]), **result, "time": str(datetime.timedelta(seconds=seconds)),
                   "seconds": seconds, "samples": samples}
            if labels is not None:
                row.update(label=int(labels[b]), correct=int(result["predict"] == int(labels[b])))
            if "topk_radius" in result:
                row["topk_correct"] = int(result["topk_radius"] > 0)
            yield row


def split_examples(split) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`run`'s ``examples`` for a data split of uint8 images: pixels scaled to [0, 1] as float32."""

    def examples(idx):
        images, labels = split.get(idx)
        return np.divide(images, 255, dtype=np.float32), labels

    return examples
