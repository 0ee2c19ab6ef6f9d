"""Certification over a dataset split, as the rows of a resumable TSV (`results.CERTIFY`, `results.PREDICT`).

`run` certifies (or predicts) examples and yields their rows, each built by
the file's schema from the example's `results.Outcome`, in index order (a
sequential run's in the order its inputs finish, each with ``n_used``, the
samples it spent, selection included); `results.Writer` writes them. The
first columns are locuslab/smoothing's (``idx label predict radius correct
time``, or ``idx label predict correct time`` for PREDICT), so its
analysis scripts, and ``pandas.read_csv(path, delimiter="\t")``, read our
files; the radius is written at full precision. A job killed mid-run
resumes after its last complete row, with the same noise (the noise of an
example depends only on the key and its index).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np

from jaxsmooth import results
from jaxsmooth.certification import Sampler, Settings, batching, certify_batch, predict_batch, stream_keys
from jaxsmooth.errors import UserError


def columns(mode: str, settings: Settings, *, anisotropic: bool, model_lbound: bool,
            gaussian: bool = True) -> list[str]:
    """The columns of a certify or predict file of these settings: the schema's, under the features its rows have.

    Every row has a label; certify rows the Monte Carlo L-bound (a softmax
    sampler); `model_lbound`: the clean softmax (lbound_model, predict's clean).
    `gaussian`: the noise kind's certificate is Cohen et al.'s (`NoiseKind.gaussian_certificate`); without it,
    certify rows have no L-bounds (Gaussian theorems).
    """
    features = {"label"} | ({"clean"} if model_lbound and (gaussian or mode == "predict") else set())
    if mode == "certify":
        features |= {"softmax"} if gaussian else set()
        features |= {name for name, on in (("topk", settings.topk), ("anisotropic", anisotropic),
                                           ("sequential", settings.sequential)) if on}
    return results.SCHEMAS[mode].header(features)


def example_indices(size: int, skip: int, maximum: int) -> np.ndarray:
    """Cohen et al.'s selection: every `skip`-th example below `maximum` (-1: the whole split)."""
    if skip < 1:
        raise UserError("skip", f"must be >= 1, got {skip}")
    if maximum == 0 or maximum < -1:
        raise UserError("max", f"must be -1 (all) or in [1, {size}], got {maximum}")
    if maximum > size:
        raise UserError("max", f"the split has {size} examples, got --max {maximum}")
    return np.arange(0, size if maximum == -1 else maximum, skip)


def certification_rows(sampler: Sampler, examples: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
        indices: np.ndarray, sigma, settings: Settings, key: jax.Array, *, mode: str = "certify",
        clean_probabilities: Callable | None = None, usage: batching.Usage | None = None) -> Iterator[dict[str, Any]]:
    """Certifies (or predicts) the examples `indices`, `sampler.inputs` at a time, yielding one row each, in order.

    Args:
      examples: ``examples(idx) -> (x, labels)``: x [B, *input_shape] float32
        in [0, 1], labels [B] int or None (rows then have no label or correct).
      indices: [N] global example indices (they pick the noise).
    Yields:
      the row of each example's `results.Outcome` (`results.CERTIFY.row`,
      `results.PREDICT.row`: idx, [label, correct,] time (this example's share
      of its batch's wall time), the statistics), with ``seconds`` and
      ``samples`` for progress displays. With ``settings.sequential`` the rows
      come from `batching.sequential_outcomes` in the order inputs finish (`usage` gets its slot
      counts); time is each input's share of the calls it took part in.
    """
    schema = results.SCHEMAS[mode]
    for outcome in _outcomes(sampler, examples, indices, sigma, settings, key, mode, clean_probabilities, usage):
        yield {**schema.row(outcome), "seconds": outcome.seconds, "samples": outcome.samples}


def _outcomes(sampler, examples, indices, sigma, settings, key, mode, clean_probabilities, usage):
    """The `results.Outcome` of each example: fixed n batch by batch, or sequential as inputs finish."""
    if mode == "certify" and settings.sequential:
        yield from batching.sequential_outcomes(sampler, examples, indices, sigma, settings, stream_keys(key),
                                clean_probabilities=clean_probabilities, usage=usage)
        return
    for start in range(0, len(indices), sampler.inputs):
        idx = np.asarray(indices[start:start + sampler.inputs])
        x, labels = examples(idx)
        if mode == "predict":
            yield from predict_batch(sampler, x, idx, sigma, settings.n, settings.alpha, key, labels=labels,
                                     clean_probabilities=clean_probabilities)
        else:
            yield from certify_batch(sampler, x, idx, sigma, settings, key, labels=labels,
                                     clean_probabilities=clean_probabilities)


def split_examples(split) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`run`'s ``examples`` for a data split of uint8 images: pixels scaled to [0, 1] as float32."""

    def examples(idx):
        images, labels = split.get(idx)
        return np.divide(images, 255, dtype=np.float32), labels

    return examples
