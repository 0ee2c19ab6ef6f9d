"""The statistics of certification, on the host in float64.

Everything here works on class counts already drawn by the sampling engine
(`jaxsmooth.certification.engine`) and follows Cohen et al. 2019 (PREDICT,
CERTIFY), Jia et al. 2020 (top-k), the HeatSmoothing paper's Theorem 2
(L-bound) and the non-uniform smoothing paper's Theorem 3.1 (anisotropic).

alpha is a per-example level: each certificate holds with probability at
least 1 - alpha over the sampling noise of that example, not jointly over a
test set.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import numpy as np
from scipy import optimize, stats

from jaxsmooth.errors import UserError

ABSTAIN = -1


# --------------------------------------------------------------------------
# Confidence bounds


def clopper_pearson_lower(k, n, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion.

    ``beta.ppf(alpha, k, n - k + 1)``, and 0 where k = 0; equal to the lower end
    of statsmodels' two-sided ``proportion_confint(k, n, 2 * alpha, "beta")``.
    """
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    with np.errstate(invalid="ignore"):
        lower = stats.beta.ppf(alpha, k, n - k + 1)
    return np.where(k > 0, lower, 0.0)


def clopper_pearson_upper(k, n, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper bound: ``beta.ppf(1 - alpha, k + 1, n - k)``, 1 where k = n."""
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    with np.errstate(invalid="ignore"):
        upper = stats.beta.ppf(1 - alpha, k + 1, n - k)
    return np.where(k < n, upper, 1.0)


def smallest_certifying_n(alpha: float) -> int:
    """The smallest n for which n successes out of n give a lower bound above 1/2.

    The lower bound at k = n is alpha^(1/n), so n > log(alpha) / log(1/2).
    """
    n = max(1, math.floor(math.log(alpha) / math.log(0.5)))
    while clopper_pearson_lower(n, n, alpha) <= 0.5:
        n += 1
    while n > 1 and clopper_pearson_lower(n - 1, n - 1, alpha) > 0.5:
        n -= 1
    return int(n)


def check_settings(n0: int, n: int, alpha: float, *, needs_selection: bool = True) -> None:
    """Refuses, before any sampling, settings that are malformed or can never certify."""
    if not 0 < alpha < 1:
        raise UserError("alpha", f"must be in (0, 1), got {alpha}")
    if n <= 0:
        raise UserError("n", f"must be > 0, got {n}")
    if needs_selection and n0 <= 0:
        raise UserError("n0", f"must be > 0, got {n0}")
    if needs_selection and n0 > n:
        raise UserError("n0", f"the selection samples ({n0}) cannot outnumber the estimation samples n ({n})")
    smallest = smallest_certifying_n(alpha)
    if n < smallest:
        raise UserError("n", f"n={n} can never certify at alpha={alpha}: even {n} of {n} votes give a lower bound "
                             f"<= 1/2; the smallest n that could is {smallest}")


# --------------------------------------------------------------------------
# PREDICT and CERTIFY (Cohen et al. 2019)


class Prediction(NamedTuple):
    label: int  # ABSTAIN when the test does not reject
    count_a: int
    count_b: int
    pvalue: float


def prediction(counts: np.ndarray, alpha: float) -> Prediction:
    """PREDICT: the top class, unless a two-sided binomial test of the top two counts cannot reject 1/2 at alpha.

    Args:
      counts: [K] class counts of n noisy samples.
    """
    counts = np.asarray(counts, np.int64)
    order = np.argsort(-counts, kind="stable")
    a, b = int(counts[order[0]]), int(counts[order[1]]) if counts.size > 1 else 0
    pvalue = float(stats.binomtest(a, a + b, 0.5).pvalue) if a + b > 0 else 1.0
    return Prediction(int(order[0]) if pvalue <= alpha else ABSTAIN, a, b, pvalue)


class RadiusRule(NamedTuple):
    """How a lower bound on p_A becomes a certified radius at one noise level, and back (a noise kind's rule).

    radius: p_A lower bound in [1/2, 1] -> the certified radius (>= 0).
    threshold: radius r >= 0 -> the smallest p_A lower bound that certifies it (its inverse).
    sigma: the noise level it is for (the smallest, for a per-pixel sigma), for messages.
    norm: the norm of the radius.
    """

    radius: Callable[[float], float]
    threshold: Callable[[float], float]
    sigma: float
    norm: str = "ell_2"


@functools.lru_cache(maxsize=1 << 16)
def probit(p: float) -> float:
    """Phi^-1(p), cached: sequential runs ask for the same few values again and again."""
    return float(stats.norm.ppf(p))


def gaussian_rule(sigma) -> RadiusRule:
    """Cohen et al. 2019, Thm 1: R = sigma Phi^-1(p_A lower), and p = Phi(R / sigma); with a per-pixel sigma, the
    inscribed ell_2 radius min(sigma) Phi^-1(p_A lower) of non_uniform Thm 3.1's ellipsoid."""
    s = float(np.min(sigma))
    return RadiusRule(lambda p: s * probit(float(p)), lambda r: float(stats.norm.cdf(r / s)), s)


class Certificate(NamedTuple):
    label: int  # the candidate class, or ABSTAIN
    radius: float  # certified ell_2 radius (the inscribed one for a per-pixel sigma); 0 on abstain
    pa_lower: float
    count_a: int  # estimation votes for the candidate
    count_b: int  # largest estimation count of another class


def certificate(candidate: int, counts: np.ndarray, alpha: float, sigma, *, tv: float = 0.0,
                rule: RadiusRule | None = None) -> Certificate:
    """CERTIFY's second half: bound P[f(x + eta) = candidate] from n fresh samples and turn it into a radius.

    Args:
      candidate: the class chosen from the independent selection samples
        (or from one clean forward pass, in the deterministic variant).
      counts: [K] counts of the n estimation samples.
      alpha: failure probability of this one certificate.
      sigma: scalar, or the per-pixel sigma array (the radius is then the
        inscribed ell_2 radius min(sigma) * Phi^-1(p_A lower)).
      tv: a bound on the total variation between the noise the counts were
        drawn with and the smoothing distribution certified (lattice noise:
        `lattice.total_variation`); p_A's lower bound is lowered by it.
      rule: the noise kind's radius rule (default: Cohen et al.'s at sigma, `gaussian_rule`).
    """
    counts = np.asarray(counts, np.int64)
    n = int(counts.sum())
    count_a = int(counts[candidate])
    others = np.delete(counts, candidate)
    count_b = int(others.max()) if others.size else 0
    pa = float(clopper_pearson_lower(count_a, n, alpha)) - tv
    if pa < 0.5:
        return Certificate(ABSTAIN, 0.0, max(pa, 0.0), count_a, count_b)
    rule = gaussian_rule(sigma) if rule is None else rule
    return Certificate(int(candidate), rule.radius(pa), pa, count_a, count_b)


# --------------------------------------------------------------------------
# Anisotropic certificate (non-uniform smoothing, Theorem 3.1 and §4.1)


def certified_area(pa_lower: float, sigma: np.ndarray) -> float:
    """The certified-area objective sum_i log sigma_i + D log Phi^-1(p_A lower); -inf when not certified.

    The certified set is the ellipsoid ||delta / sigma||_2 < Phi^-1(p_A lower);
    this is the log of its volume up to the constant of the unit ball.
    """
    sigma = np.asarray(sigma, np.float64)
    if pa_lower <= 0.5:
        return -math.inf
    return float(np.sum(np.log(sigma)) + sigma.size * math.log(stats.norm.ppf(pa_lower)))


# --------------------------------------------------------------------------
# L-bound (HeatSmoothing, Theorem 2)


def l_bound(probabilities, sigma: float) -> np.ndarray:
    """sigma * sqrt(pi / 2) * (v_(1) - v_(2)) for the top two entries of each probability vector.

    Exact for the Gaussian average of a classifier's softmax; on a
    deterministic model's own softmax or on a Monte Carlo mean it is an
    estimate, not a certificate.

    Args:
      probabilities: [..., K].
    """
    p = np.sort(np.asarray(probabilities, np.float64), axis=-1)
    return float(np.min(sigma)) * math.sqrt(math.pi / 2) * (p[..., -1] - p[..., -2])


# --------------------------------------------------------------------------
# Top-k (Jia et al. 2020)


def topk_radius(label: int, counts: np.ndarray, k: int, alpha: float, sigma: float, *, tv: float = 0.0) -> float:
    """The radius within which `label` is certified to stay among the top k classes of the smoothed classifier.

    Jia et al. 2020, Theorem 1: `label` stays in the top k at x + delta when,
    for some t in 1..k,

        Phi(Phi^-1(p_l lower) - R/sigma) > Phi(Phi^-1(sum_{j in S_t} p_j upper) + R/sigma) / t,

    with S_t the t classes ranked k-t+1 .. k among the others by their upper
    bounds. The K bounds hold simultaneously at level alpha (Bonferroni:
    alpha / K each). Returns 0 when not certified; k = 1 gives
    sigma / 2 * (Phi^-1(p_A lower) - Phi^-1(p_B upper)). `tv` (as in
    `certify`) lowers each lower bound and raises each upper bound.
    """
    counts = np.asarray(counts, np.int64)
    num_classes, n = counts.size, int(counts.sum())
    if k >= num_classes:
        return math.inf
    level = alpha / num_classes
    pl = float(clopper_pearson_lower(counts[label], n, level)) - tv
    others = np.sort(clopper_pearson_upper(np.delete(counts, label), n, level) + tv)[::-1]
    if pl <= 0:
        return 0.0
    best = 0.0
    za = stats.norm.ppf(pl)
    for t in range(1, k + 1):
        mass = min(float(others[k - t:k].sum()), 1.0)
        if mass >= 1.0:
            continue
        zb = stats.norm.ppf(mass)

        def gap(r, t=t, zb=zb):
            return stats.norm.cdf(za - r) - stats.norm.cdf(zb + r) / t

        if gap(0.0) <= 0:
            continue
        hi = 1.0
        while gap(hi) > 0 and hi < 1e3:
            hi *= 2
        best = max(best, optimize.brentq(gap, 0.0, hi, xtol=1e-14, rtol=1e-14))
    return float(sigma) * best
