"""Certification of smoothed classifiers: sampling engine, PREDICT, CERTIFY and their bounds.

`engine.Sampler` draws the class counts on the devices; `bounds` turns
counts into decisions and radii on the host in float64; `certify_batch` and
`predict_batch` put the two together exactly as Cohen et al. 2019 do, with
the selection samples (n0) and the estimation samples (n) drawn from
different keys, into one `results.Outcome` per example.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from jaxsmooth.certification import bounds, lattice, sequential as sequential_stats
from jaxsmooth.certification.bounds import (ABSTAIN, Certificate, Prediction, certified_area, certify,
                                            check_settings, clopper_pearson_lower, clopper_pearson_upper,
                                            l_bound, predict, smallest_certifying_n, topk_radius)
from jaxsmooth.certification.engine import (NOISES, Counts, Sampler, Segments, check_sigma,
                                            make_clean_probabilities, sample_counts)
from jaxsmooth.results import Outcome

__all__ = [
    "ABSTAIN", "Certificate", "Counts", "NOISES", "Prediction", "Sampler", "Segments", "Settings", "bounds",
    "certified_area", "certify", "certify_batch", "check_settings", "check_sigma", "clopper_pearson_lower",
    "clopper_pearson_upper", "l_bound", "lattice", "make_clean_probabilities", "predict", "predict_batch",
    "sample_counts", "smallest_certifying_n", "stream_keys", "topk_radius",
]

CANDIDATES = ("selection", "clean")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one certification run does.

    n0: selection samples; n: estimation samples; alpha: per-example failure
    probability; candidate: "selection" (Cohen et al.: the top class of n0
    noisy samples) or "clean" (the HeatSmoothing papers' deterministic
    variant: the top class of one clean forward pass, no selection samples);
    topk: also certify the true class to stay in the top k (0: off).

    sequential: stop each input's sampling as soon as its answer is known
    (`sequential`, `batching`); n is then each input's budget of estimation
    samples. radii: grid mode, decide certified or not at each of these
    radii (and 0); None: max-radius mode, stopped by `tolerance` (a fraction
    of the radius still reachable within the budget).
    """

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    candidate: str = "selection"
    topk: int = 0
    sequential: bool = False
    radii: tuple[float, ...] | None = None
    tolerance: float = sequential_stats.DEFAULT_TOLERANCE

    def check(self, num_classes: int) -> None:
        from jaxsmooth.errors import UserError

        if self.candidate not in CANDIDATES:
            raise UserError("candidate", f"unknown {self.candidate!r}; allowed: {', '.join(CANDIDATES)}")
        if self.topk < 0 or self.topk == 1 or self.topk >= num_classes:
            raise UserError("topk", f"must be 0 (off) or in [2, {num_classes - 1}], got {self.topk}")
        self.check_sequential()
        check_settings(self.n0, self.n, self.alpha, needs_selection=self.candidate == "selection")

    def check_sequential(self) -> None:
        """--radii and --tolerance only with --sequential; radii >= 0; tolerance in (0, 1); no top-k."""
        from jaxsmooth.errors import UserError

        if not self.sequential:
            if self.radii is not None:
                raise UserError("radii", "lists the radii of a sequential test; give --sequential too")
            if self.tolerance != sequential_stats.DEFAULT_TOLERANCE:
                raise UserError("tolerance", "stops a sequential test; give --sequential too")
            return
        sequential_stats.check_tolerance(self.tolerance)
        if self.radii is not None:
            sequential_stats.check_radii(self.radii)
        if self.topk:
            raise UserError("topk", "is not available with --sequential; certify the top k with a fixed n")

    def sequential_header(self, sigma_min: float) -> tuple[dict, str | None]:
        """A sequential run's settings fields (its mode, radii or tolerance, looks and their levels), and the line
        that says which listed radii are out of reach (None: all can be reached)."""
        schedule = self.schedule(sigma_min)
        note = sequential_stats.out_of_reach_note(self.radii or (), schedule, sigma_min, self.alpha)
        return {"sequential": "grid" if self.radii is not None else "max-radius",
                "radii": None if self.radii is None else list(self.radii),
                "tolerance": self.tolerance if self.radii is None else None,
                "looks": list(schedule.looks), "look_alphas": list(schedule.alphas),
                "futility": schedule.futility}, note

    def schedule(self, sigma_min: float) -> sequential_stats.Schedule:
        """The sequential test's looks and levels (`sequential.make_schedule`) at the budget n and alpha.

        Grid mode targets the all-votes look of its largest radius at
        min(sigma); max-radius mode has geometric looks only.
        """
        levels = sequential_stats.thresholds(self.radii or (), sigma_min)
        return sequential_stats.make_schedule(self.n, self.alpha, thresholds=levels)


def stream_keys(key: jax.Array) -> dict[str, jax.Array]:
    """Independent keys for selection, estimation and prediction samples."""
    return {name: jax.random.fold_in(key, i) for i, name in enumerate(("selection", "estimation", "predict"))}


def certify_batch(sampler: Sampler, x: np.ndarray, index: np.ndarray, sigma, settings: Settings, key: jax.Array, *,
                  labels: np.ndarray | None = None,
                  clean_probabilities: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Outcome]:
    """CERTIFY for each example of x: candidate, p_A lower bound, radius, and what the extra statistics need.

    Args:
      sampler: built with ``with_softmax=True`` for the Monte Carlo L-bound.
      x: [B, *input_shape]; index: [B] global indices (they pick the noise).
      sigma: scalar or per-pixel array.
      key: the run's key; `stream_keys` splits it.
      labels: [B] true labels (needed for top-k).
      clean_probabilities: one clean forward pass's softmax (candidate "clean",
        and the L-bound on the model's own softmax).
    With lattice noise, pA_lower is the Clopper-Pearson bound minus the
    sampler's `Sampler.total_variation` (see `lattice`), and the radius is
    certified for the 8-bit images within it.

    Returns:
      one `results.Outcome` per example (`results.CERTIFY.row` makes its TSV
      row), with the mean softmax (a softmax sampler), the clean softmax (given
      clean_probabilities) and the top-k radius (topk > 0); seconds: an equal
      share of the call's wall time.
    """
    t0 = time.perf_counter()
    keys = stream_keys(key)
    sigma_arr = np.asarray(sigma, np.float64)
    clean = clean_probabilities(x) if clean_probabilities is not None else None
    if settings.candidate == "clean":
        if clean is None:
            raise ValueError("candidate 'clean' needs clean_probabilities")
        candidates = np.argmax(clean, -1)
    else:
        candidates = np.argmax(sampler(x, index, sigma, settings.n0, keys["selection"]).counts, -1)
    estimated = sampler(x, index, sigma, settings.n, keys["estimation"])
    tv = sampler.total_variation(sigma)
    samples = settings.n + (settings.n0 if settings.candidate == "selection" else 0)
    outcomes = []
    for b in range(x.shape[0]):
        cert = certify(int(candidates[b]), estimated.counts[b], settings.alpha, sigma_arr, tv=tv)
        topk = None if not settings.topk else topk_radius(int(labels[b]), estimated.counts[b], settings.topk,
                                                          settings.alpha, float(np.min(sigma_arr)), tv=tv)
        outcomes.append(Outcome(
            int(index[b]), None if labels is None else int(labels[b]), cert.label, cert.count_a, cert.count_b, sigma,
            0.0, samples, pa_lower=cert.pa_lower, radius=cert.radius, topk_radius=topk,
            mean_softmax=None if estimated.mean_softmax is None else estimated.mean_softmax[b],
            clean=None if clean is None else clean[b]))
    return _timed(outcomes, t0)


def predict_batch(sampler: Sampler, x: np.ndarray, index: np.ndarray, sigma, n: int, alpha: float,
                  key: jax.Array, *, labels: np.ndarray | None = None,
                  clean_probabilities: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Outcome]:
    """PREDICT for each example of x: the top class of n samples, or ABSTAIN when the binomial test fails.

    One `results.Outcome` per example (`results.PREDICT.row` makes its row).
    With `clean_probabilities`, each also holds the softmax of one noise-free
    forward pass, whose class (``clean``) is compared with PREDICT's (the
    agreement study of ``analyze``). With lattice noise the answer differs
    from the lattice-smoothed classifier's with probability at most
    alpha + n tau (tau: `Sampler.total_variation`).
    """
    t0 = time.perf_counter()
    counts = sampler(x, index, sigma, n, stream_keys(key)["predict"]).counts
    clean = clean_probabilities(x) if clean_probabilities is not None else None
    outcomes = []
    for b in range(x.shape[0]):
        p = predict(counts[b], alpha)
        outcomes.append(Outcome(int(index[b]), None if labels is None else int(labels[b]), p.label, p.count_a,
                                p.count_b, sigma, 0.0, n, pvalue=p.pvalue, clean=None if clean is None else clean[b]))
    return _timed(outcomes, t0)


def _timed(outcomes: list[Outcome], t0: float) -> list[Outcome]:
    """The outcomes of one call, each given an equal share of its wall time since `t0`."""
    seconds = (time.perf_counter() - t0) / max(len(outcomes), 1)
    return [dataclasses.replace(o, seconds=seconds) for o in outcomes]
