"""Sequential CERTIFY: a confidence sequence for p_A that stays valid however the sampling is stopped.

Setting. For an input x and a candidate class c (chosen from n0 selection
samples drawn with an independent key, or from one clean forward pass), the
estimation samples give X_j = 1[f(x + eta_j) = c], i.i.d. Bernoulli(p) with
p = P[f(x + eta) = c]; A_n = X_1 + ... + X_n counts the first n of them.

Looks. A `Schedule` fixes, from the settings alone (budget N, alpha, the
radii), sample counts n_1 < ... < n_K = N and levels alpha_1, ..., alpha_K
with sum_k alpha_k <= alpha. Look k may only happen after exactly n_k
estimation samples.

The confidence sequence (a union bound over a fixed look schedule):

    L_k = max_{j <= k} CP_lower(A_{n_j}, n_j, alpha_j)

with CP_lower the one-sided Clopper-Pearson bound (`bounds.clopper_pearson_lower`).

Theorem. For every rule that picks the stopping look tau in {1..K} from the
data (the counts so far, other radii, other inputs, anything),
P[p < L_tau] <= alpha.

Proof. n_j is fixed before sampling, so A_{n_j} ~ Binomial(n_j, p) and
Clopper-Pearson's exact guarantee gives P[E_j] <= alpha_j for the event
E_j = {p < CP_lower(A_{n_j}, n_j, alpha_j)}. On {p < L_tau} the maximum
defining L_tau is attained at some j <= tau, so E_j occurs: {p < L_tau} is
contained in E_1 u ... u E_K, and P[p < L_tau] <= sum_j alpha_j <= alpha.
Nothing about tau was used; the bound holds for any stopping rule.

Certificate. When p >= L_tau >= 1/2, c is the smoothed classifier's class and
sigma Phi^-1(L_tau) <= sigma Phi^-1(p) is a certified ell_2 radius (Cohen et
al. 2019, Thm 1; with a per-pixel sigma, min(sigma) Phi^-1(L_tau) is the
inscribed radius of the certified ellipsoid, non_uniform Thm 3.1). So every
certificate reported here (class and radius) is wrong with probability at
most alpha, per input. A grid-mode radius is a listed radius r <= sigma
Phi^-1(L_tau): no larger.

The stopping rules below only decide when to stop. Deciding "not certified"
is never wrong, so they may use any statistic: they use running-minimum
Clopper-Pearson upper bounds at a level `futility` (0.05 in grid mode, 0.01
for max-radius), which costs power (a certificate the budget would have
given, missed), never soundness.

The naive procedure, Clopper-Pearson at level alpha recomputed at every look
and stopped at the first success, is the same with every alpha_k = alpha:
its error is P[E_1 u ... u E_K], up to K alpha, not alpha (the tests show it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import numpy as np

from jaxsmooth.certification.bounds import RadiusRule, clopper_pearson_lower, clopper_pearson_upper
from jaxsmooth.errors import UserError

FIRST_LOOK = 100  # estimation samples at the first look
# Grid mode: looks 1.2x apart; alpha: 0.4 at the targeted look, 0.1 at the budget, 0.5 over the geometric looks.
# Most of the samples an accurate model costs go to inputs whose p_A lies a little above or below a threshold; they
# stop at geometric looks past the targeted one, so those looks get most of alpha, close together. Few inputs
# reach the budget once the upper bounds at level 0.05 drop the thresholds they cannot clear.
GRID_RATIO, GRID_FINAL, GRID_TARGET, GRID_FUTILITY = 1.2, 0.1, 0.4, 0.05
# Max-radius mode: a confident input's radius grows with every sample, so it runs long whatever the rule; fewer
# looks (2x apart) leave more alpha to each. alpha: 0.5 at the budget, 0.5 over the geometric looks.
MAX_RATIO, MAX_FINAL, MAX_FUTILITY = 2.0, 0.5, 0.01
DEFAULT_TOLERANCE = 0.02


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The looks of a sequential test, fixed before sampling (hashable: its bounds are cached).

    looks: K estimation-sample counts, increasing; looks[-1] = the budget N.
    alphas: K levels of the Clopper-Pearson bound at each look; sum <= alpha.
    futility: level of the upper bounds used by the stopping rules.
    """

    looks: tuple[int, ...]
    alphas: tuple[float, ...]
    futility: float = MAX_FUTILITY

    @property
    def budget(self) -> int:
        return self.looks[-1]

    def best_lower(self, p: float, after: int = -1) -> float:
        """The largest lower bound a look later than `after` (an index) gives when a fraction p of its samples vote.

        ``best_lower(1.0)`` is the most any input can reach within the budget. 0 when no look is left.
        """
        return _best_lower(self, float(p), after)


@functools.lru_cache(maxsize=1 << 16)
def _best_lower(schedule: Schedule, p: float, after: int) -> float:
    n, a = np.asarray(schedule.looks[after + 1:], np.float64), np.asarray(schedule.alphas[after + 1:])
    return float(np.max(clopper_pearson_lower(p * n, n, a))) if n.size else 0.0


@functools.lru_cache(maxsize=1 << 16)
def _bounds(count: int, n: int, alpha: float, futility: float) -> tuple[float, float]:
    """(CP lower at alpha, CP upper at futility) of count of n: the same few counts recur across inputs."""
    return float(clopper_pearson_lower(count, n, alpha)), float(clopper_pearson_upper(count, n, futility))


def all_votes_look(threshold: float, level: float) -> float:
    """The smallest n whose n-of-n lower bound level^(1/n) reaches `threshold`; inf when it is 1 (in float64)."""
    if threshold >= 1.0:
        return math.inf
    return max(1, math.ceil(math.log(level) / math.log(threshold)))


def make_schedule(budget: int, alpha: float, *, thresholds: Sequence[float] = (), first: int = FIRST_LOOK,
                  ratio: float | None = None, final_share: float | None = None, target_share: float = GRID_TARGET,
                  futility: float | None = None) -> Schedule:
    """Geometric looks first, first * ratio, ... below `budget`, a look at the budget, and in grid mode a targeted look.

    Grid mode (`thresholds` given: the probabilities p_A must clear, one per
    listed radius): the targeted look is where an input whose samples all
    vote for its candidate first clears the largest threshold reachable
    within the budget at level target_share * alpha. On an accurate model
    most inputs are such inputs; they stop there, not at the next geometric
    look. `final_share` of alpha goes to the budget; the rest is split
    equally over the geometric looks. Defaults: ratio 1.2, shares 0.4
    (target) and 0.1 (final), futility 0.05. Max-radius mode: ratio 2,
    final share 0.5, no targeted look, futility 0.01.
    """
    grid = bool(thresholds)
    ratio = (GRID_RATIO if grid else MAX_RATIO) if ratio is None else ratio
    final_share = (GRID_FINAL if grid else MAX_FINAL) if final_share is None else final_share
    futility = (GRID_FUTILITY if grid else MAX_FUTILITY) if futility is None else futility
    geometric, n = [], float(first)
    while round(n) < budget:
        if not geometric or round(n) > geometric[-1]:
            geometric.append(int(round(n)))
        n *= ratio
    shares = {budget: final_share * alpha}
    reachable = [t for t in thresholds if all_votes_look(t, target_share * alpha) < budget]
    if reachable:
        target = all_votes_look(max(reachable), target_share * alpha)
        shares[target] = shares.get(target, 0.0) + target_share * alpha
    others = [g for g in geometric if g not in shares]
    rest = alpha - sum(shares.values())
    if not others:  # a budget at or below the first look: all of alpha where the looks are
        shares = {k: v + rest / len(shares) for k, v in shares.items()}
    for g in others:
        shares[g] = rest / len(others)
    looks = sorted(shares)
    return Schedule(tuple(int(k) for k in looks), tuple(float(shares[k]) for k in looks), futility)


class State(NamedTuple):
    """One input's test after `look` (an index into the schedule; -1 before the first look)."""

    look: int
    lower: float  # L: running maximum of the lower bounds, the confidence sequence
    upper: float  # running minimum of the upper bounds at the futility level


START = State(-1, 0.0, 1.0)


def observe(state: State, count: int, schedule: Schedule) -> State:
    """The state after the next look, at which `count` of its looks[k] estimation samples voted for the candidate."""
    k = state.look + 1
    lower, upper = _bounds(int(count), schedule.looks[k], schedule.alphas[k], schedule.futility)
    return State(k, max(state.lower, lower), min(state.upper, upper))


def radius(p_lower: float, rule: RadiusRule) -> float:
    """The noise kind's radius of p_lower (`bounds.RadiusRule`; Cohen et al.'s sigma_min Phi^-1(p_lower)), -inf
    below 1/2 (not even a prediction)."""
    return rule.radius(float(p_lower)) if p_lower >= 0.5 else -math.inf


def thresholds(radii: Sequence[float], rule: RadiusRule) -> tuple[float, ...]:
    """The p_A lower bound that certifies each radius r (Phi(r / sigma_min) for Cohen et al.'s rule; 1/2 for r = 0,
    a prediction)."""
    return tuple(rule.threshold(r) for r in radii)


def grid_decided(state: State, schedule: Schedule, levels: Sequence[float]) -> bool:
    """Grid mode: is every threshold (`thresholds` of the radii, 0 included) cleared, out of reach, or the budget spent?

    Threshold t is cleared when L >= t; out of reach when even the running
    upper bound, as the vote fraction of any later look, would not clear it
    (`Schedule.best_lower`).
    """
    if state.look >= len(schedule.looks) - 1:
        return True
    best = schedule.best_lower(state.upper, state.look)
    return all(state.lower >= t or best < t for t in levels)


def max_radius_decided(state: State, schedule: Schedule, rule: RadiusRule, tolerance: float) -> bool:
    """Max-radius mode: stop when the radius still to gain within the budget is under `tolerance` of the reachable one.

    reachable = radius(best lower bound of a later look at the running upper
    bound's vote fraction); gain = reachable - radius(L), with radius(L) = 0
    when L < 1/2. Stops when gain <= tolerance x reachable (always when
    nothing positive is reachable), or at the budget.
    """
    if state.look >= len(schedule.looks) - 1:
        return True
    now = max(radius(state.lower, rule), 0.0)
    best = radius(schedule.best_lower(state.upper, state.look), rule)
    return best <= 0.0 or best - now <= tolerance * best


def grid_radius(lower: float, radii: Sequence[float], levels: Sequence[float]) -> float:
    """The largest radius whose threshold `lower` clears: 0 for a prediction alone (radii and levels hold 0 and 1/2),
    -inf for none."""
    certified = [r for r, t in zip(radii, levels) if lower >= t]
    return max(certified) if certified else -math.inf


def unreachable(radii: Sequence[float], schedule: Schedule, rule: RadiusRule) -> list[float]:
    """The radii no input can be certified at within the budget (not even if every sample votes for it)."""
    best = schedule.best_lower(1.0)
    return [r for r, t in zip(radii, thresholds(radii, rule)) if best < t]


def out_of_reach_note(radii: Sequence[float], schedule: Schedule, rule: RadiusRule, alpha: float) -> str | None:
    """The one line that says which listed radii the budget cannot reach (`unreachable`); None when all can."""
    far = unreachable(radii, schedule, rule)
    if not far:
        return None
    best = radius(schedule.best_lower(1.0), rule)
    listed = ",".join(f"{r:g}" for r in far)
    return (f"radi{'i' if len(far) > 1 else 'us'} {listed} out of reach at sigma {rule.sigma:g}, alpha {alpha:g} and "
            f"a budget of n={schedule.budget} (at most {best:.4f}): never certified")


def check_tolerance(tolerance: float) -> float:
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise UserError("tolerance", f"must be in (0, 1) (a fraction of the reachable radius), got {tolerance}")
    return float(tolerance)
