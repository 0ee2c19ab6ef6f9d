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

from jaxsmooth import values
from jaxsmooth.certification import bounds, lattice, sequential as sequential_stats
from jaxsmooth.certification.bounds import (ABSTAIN, Certificate, Prediction, RadiusRule, certificate, certified_area,
                                            check_settings, clopper_pearson_lower, clopper_pearson_upper,
                                            gaussian_rule, l_bound, prediction, smallest_certifying_n, topk_radius)
from jaxsmooth.certification.engine import (Counts, Sampler, Segments, check_sigma, make_clean_probabilities,
                                            sample_counts)
from jaxsmooth.results import Outcome

__all__ = [
    "ABSTAIN", "Certificate", "Counts", "Prediction", "RadiusRule", "Sampler", "Segments", "Settings", "bounds",
    "certificate", "certified_area", "certify_batch", "check_settings", "check_sigma", "clopper_pearson_lower",
    "clopper_pearson_upper", "gaussian_rule", "l_bound", "lattice", "make_clean_probabilities", "make_settings",
    "prediction", "predict_batch", "sample_counts", "smallest_certifying_n", "stream_keys", "topk_radius",
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

    def check(self, num_classes: int, kind=None) -> None:
        """What only the model and the noise kind can tell (the rest is checked by `make_settings`): top-k within
        the model's classes, and under a Gaussian certificate (`noises.NoiseKind.gaussian_certificate`)."""
        from jaxsmooth.errors import UserError

        if self.topk < 0 or self.topk == 1 or self.topk >= num_classes:
            raise UserError("topk", f"must be 0 (off) or in [2, {num_classes - 1}], got {self.topk}")
        if self.topk and kind is not None and not kind.gaussian_certificate:
            raise UserError("topk", f"the top-k certificate (Jia et al. 2020) is for Gaussian smoothing, not "
                                    f"{kind.name} noise")

    def sequential_header(self, rule: bounds.RadiusRule) -> tuple[dict, str | None]:
        """A sequential run's settings fields (its mode, radii or tolerance, looks and their levels), and the line
        that says which listed radii are out of reach (None: all can be reached); `rule`: the noise kind's
        radius rule at sigma (`bounds.gaussian_rule` for Cohen et al.'s)."""
        schedule = self.schedule(rule)
        note = sequential_stats.out_of_reach_note(self.radii or (), schedule, rule, self.alpha)
        return {"sequential": "grid" if self.radii is not None else "max-radius",
                "radii": None if self.radii is None else list(self.radii),
                "tolerance": self.tolerance if self.radii is None else None,
                "looks": list(schedule.looks), "look_alphas": list(schedule.alphas),
                "futility": schedule.futility}, note

    def schedule(self, rule: bounds.RadiusRule) -> sequential_stats.Schedule:
        """The sequential test's looks and levels (`sequential.make_schedule`) at the budget n and alpha.

        Grid mode targets the all-votes look of its largest radius under the
        radius `rule`; max-radius mode has geometric looks only.
        """
        levels = sequential_stats.thresholds(self.radii or (), rule)
        return sequential_stats.make_schedule(self.n, self.alpha, thresholds=levels)


MODES = ("certify", "predict")


def make_settings(mode: str = "certify", *, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                  candidate: str = "selection", topk: int = 0, sequential: bool = False, radii=None,
                  tolerance: float | None = None) -> Settings:
    """The `Settings` of a certify or predict run, every rule between the fields checked here once.

    The CLI and the Python API both build their settings here; a `UserError`
    names the field (mode, n0, n, alpha, candidate, topk, sequential, radii,
    tolerance). radii: a sequence of radii, or their text ``"R1,R2,..."``.
    PREDICT uses n and alpha only: a candidate, top-k or sequential setting is refused there.
    """
    from jaxsmooth.errors import UserError

    if mode not in MODES:
        raise UserError("mode", f"unknown {mode!r}; allowed: {', '.join(MODES)}")
    if mode == "predict":
        for name, value in (("sequential", sequential), ("radii", radii), ("tolerance", tolerance), ("topk", topk)):
            if value:
                raise UserError(name, "is for mode certify, not predict")
        if not 0 < alpha < 1:
            raise UserError("alpha", f"must be in (0, 1), got {alpha}")
        if n <= 0:
            raise UserError("n", f"must be > 0, got {n}")
        return Settings(n0=0, n=n, alpha=alpha, candidate="selection", topk=0)
    if candidate not in CANDIDATES:
        raise UserError("candidate", f"unknown {candidate!r}; allowed: {', '.join(CANDIDATES)}")
    check_settings(n0, n, alpha, needs_selection=candidate == "selection")
    fields = dict(n0=n0, n=n, alpha=alpha, candidate=candidate, topk=topk)
    if not sequential:
        for name, value in (("radii", radii), ("tolerance", tolerance)):
            if value is not None:
                raise UserError(name, "is for a sequential test; turn sequential on too (--sequential)")
        return Settings(**fields)
    if topk:
        raise UserError("topk", "is not available with a sequential test; certify the top k with a fixed n")
    if radii is not None and tolerance is not None:
        raise UserError("tolerance", "stops the max-radius mode; with radii every listed radius is decided")
    extra = {} if tolerance is None else {"tolerance": sequential_stats.check_tolerance(tolerance)}
    return Settings(**fields, sequential=True, radii=None if radii is None else values.radii(radii), **extra)


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
    tv, rule = sampler.total_variation(sigma), sampler.radius_rule(sigma)
    gaussian = sampler.kind.gaussian_certificate  # the L-bounds are Gaussian theorems (`NoiseKind`)
    samples = settings.n + (settings.n0 if settings.candidate == "selection" else 0)
    outcomes = []
    for b in range(x.shape[0]):
        cert = certificate(int(candidates[b]), estimated.counts[b], settings.alpha, sigma_arr, tv=tv, rule=rule)
        topk = None if not settings.topk else topk_radius(int(labels[b]), estimated.counts[b], settings.topk,
                                                          settings.alpha, float(np.min(sigma_arr)), tv=tv)
        outcomes.append(Outcome(
            int(index[b]), None if labels is None else int(labels[b]), cert.label, cert.count_a, cert.count_b, sigma,
            0.0, samples, pa_lower=cert.pa_lower, radius=cert.radius, topk_radius=topk,
            mean_softmax=None if estimated.mean_softmax is None or not gaussian else estimated.mean_softmax[b],
            clean=None if clean is None or not gaussian else clean[b]))
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
        p = prediction(counts[b], alpha)
        outcomes.append(Outcome(int(index[b]), None if labels is None else int(labels[b]), p.label, p.count_a,
                                p.count_b, sigma, 0.0, n, pvalue=p.pvalue, clean=None if clean is None else clean[b]))
    return _timed(outcomes, t0)


def _timed(outcomes: list[Outcome], t0: float) -> list[Outcome]:
    """The outcomes of one call, each given an equal share of its wall time since `t0`."""
    seconds = (time.perf_counter() - t0) / max(len(outcomes), 1)
    return [dataclasses.replace(o, seconds=seconds) for o in outcomes]
