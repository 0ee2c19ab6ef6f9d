"""Certification over a dataset split, written as a resumable TSV.

The file starts with one line ``# jaxsmooth certify {JSON settings}``, then
the column header, then one row per example. The first columns are
locuslab/smoothing's (``idx label predict radius correct time``, or
``idx label predict correct time`` for PREDICT), so its analysis scripts
read our files; the radius is written at full precision. A job killed
mid-run resumes after its last complete row, with the same noise (the
noise of an example depends only on the key and its index).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from jaxsmooth import jobs
from jaxsmooth.certification import Sampler, Settings, certify_batch, predict_batch
from jaxsmooth.errors import UserError

MAGIC = "# jaxsmooth certify "
# Settings whose change makes an existing file's rows incomparable with new ones.
IDENTITY_FIELDS = ("mode", "sigma", "sigma_file", "sigma_from", "sigma_from_step", "n0", "n", "alpha", "candidate", "topk", "seed", "dtype",
                   "checkpoint_step", "model", "dataset", "split", "skip", "max", "batch", "inputs")


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


ALPHA_COMMENT = ("# alpha holds per example (each row's certificate fails with probability <= alpha), "
                 "not jointly over the rows")


class TsvWriter:
    """Appends rows to the output TSV; on an existing file, checks its settings and resumes after its last row.

    The defaults write certify files. Another program (``jaxsmooth.attack``)
    passes its own `magic` first line prefix (``"# jaxsmooth PROGRAM "``),
    the header fields whose change makes old rows incomparable
    (`identity_fields`) and its comment lines (`comments`, each starting
    with ``#``). A program writing several rows per example, in order
    (``--mode distributional``: one per gamma), passes `rows_per_example`:
    on resume, the rows of a last example left incomplete are dropped and it
    is redone; `done` lists each complete example once.
    """

    def __init__(self, path: str, header: dict[str, Any], cols: list[str], *, enabled: bool = True,
                 magic: str = MAGIC, identity_fields: tuple[str, ...] = IDENTITY_FIELDS,
                 comments: tuple[str, ...] = (ALPHA_COMMENT,), rows_per_example: int = 1):
        self.path, self.cols, self.enabled = path, cols, enabled
        self.rows_per_example = rows_per_example
        self.magic, self.identity_fields = magic, identity_fields
        self.done: list[int] = []
        if os.path.exists(path):
            self.done = self._resume(header)
        elif enabled:
            head = [magic + json.dumps(header, sort_keys=True)] + list(comments) + ["\t".join(cols)]
            jobs.write_atomic(path, "".join(line + "\n" for line in head), "out")
        self._file = open(path, "a") if enabled else None

    def _resume(self, header: dict[str, Any]) -> list[int]:
        with open(self.path) as f:
            text = f.read()
        lines = text.split("\n")
        program = "jaxsmooth." + self.magic.split()[-1]
        if not lines[0].startswith(self.magic):
            raise UserError("out", f"{self.path} exists and was not written by {program}; choose another --out")
        try:
            old = json.loads(lines[0][len(self.magic):])
        except json.JSONDecodeError:
            raise UserError("out", f"{self.path} has an unreadable first line; choose another --out") from None
        for field in self.identity_fields:
            if old.get(field) != header.get(field):
                raise UserError("out", f"{self.path} was written with {field}={old.get(field)!r}, not "
                                       f"{header.get(field)!r}; choose another --out to change it")
        kept = text.splitlines(keepends=True)
        cut = False
        while kept and not kept[-1].startswith("#") and (
                not kept[-1].endswith("\n") or len(kept[-1].rstrip("\n").split("\t")) != len(self.cols)):
            kept.pop()  # a row cut off by a killed job: drop it and redo that example
            cut = True
        if self.rows_per_example > 1:  # the rows of an example left incomplete: drop them and redo it
            data = [line for line in kept if not line.startswith("#")][1:]
            last = data[-1].split("\t")[0] if data else None
            tail = 0
            while tail < len(data) and data[len(data) - 1 - tail].split("\t")[0] == last:
                tail += 1
            if 0 < tail < self.rows_per_example:
                del kept[len(kept) - tail:]  # the data rows are the last lines: comments precede the header
                cut = True
        if cut and self.enabled:  # kept is a prefix of the file: one truncate, which a kill cannot leave half done
            os.truncate(self.path, len("".join(kept).encode()))
        rows = [line.rstrip("\n") for line in kept if not line.startswith("#")]
        if not rows or rows[0].split("\t") != self.cols:
            raise UserError("out", f"{self.path} has columns {rows[0] if rows else 'none'!r}, expected "
                                   f"{chr(9).join(self.cols)!r}; choose another --out")
        body = rows[1:]
        done = [int(line.split("\t")[0]) for line in body]
        return list(dict.fromkeys(done)) if self.rows_per_example > 1 else done

    def write(self, row: dict[str, Any]) -> None:
        if self._file is not None:  # one write of the whole row, or none (a full disk)
            jobs.append_line(self._file, "\t".join(_format(row[c]) for c in self.cols) + "\n", "out")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def run(sampler: Sampler, split, indices: np.ndarray, sigma, settings: Settings, key: jax.Array, *,
        mode: str = "certify", clean_probabilities: Callable | None = None) -> Iterator[dict[str, Any]]:
    """Certifies (or predicts) the examples `indices` of `split`, `sampler.inputs` at a time, yielding rows in order.

    Each row holds idx, label, correct, time (this example's share of its
    batch's wall time, as a ``datetime.timedelta`` string), and the columns of
    `certify_batch` / `predict_batch`; ``seconds`` and ``samples`` feed
    progress displays.
    """
    for start in range(0, len(indices), sampler.inputs):
        idx = indices[start:start + sampler.inputs]
        images, labels = split.get(idx)
        x = np.divide(images, 255, dtype=np.float32)
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
        for i, label, result in zip(idx, labels, results):
            row = {"idx": int(i), "label": int(label), **result, "correct": int(result["predict"] == int(label)),
                   "time": str(datetime.timedelta(seconds=seconds)), "seconds": seconds, "samples": samples}
            if "topk_radius" in result:
                row["topk_correct"] = int(result["topk_radius"] > 0)
            yield row
