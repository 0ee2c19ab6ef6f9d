"""Sequential CERTIFY over many inputs with continuous batching: the forward passes stay full as inputs finish.

The sampler (`engine.Sampler`) has `inputs` slots. Each slot holds one
input in flight and, in each call, counts the next samples of that input's
estimation stream ([start, start + m) of the stream of `engine`): the same
samples, with the same keys, as a fixed-n run's. The looks of the test
(`sequential.Schedule`) that fall inside a slot's samples are cut
positions, so one call may pass several looks and the counts at each are
known. After each look the input's confidence sequence is updated
(`sequential.observe`); once its stopping rule says decided, its row is
yielded and its slot goes to the next input, whose candidate class was drawn
with the other inputs of its selection call (n0 samples of each of up to
`inputs` inputs, with the selection key). When fewer inputs than slots are
left, an input takes several slots: consecutive pieces of its stream, which
add up to the counts one slot would give.

Each call runs as many loop steps as every slot can take before its next
look (at least one): few calls where looks are far apart, and no slot runs
far past a look where its input might stop. The samples a slot draws past
its input's stopping look are the only waste besides idle slots; `Usage`
counts both.

Every input's row depends only on the key, its index, its image and the
settings: not on the slots, the devices, the order or the other inputs. A
resumed or sharded run gives the rows an uninterrupted one gives.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import time
from collections import deque
from typing import Callable, Iterator

import numpy as np

from jaxsmooth.certification import sequential
from jaxsmooth.certification.bounds import ABSTAIN, gaussian_rule
from jaxsmooth.certification.engine import Sampler
from jaxsmooth.results import Outcome

CUTS = 4  # looks one slot may pass in one call (a static shape: one executable)
MAX_STEPS = 64  # loop steps per call at most: calls stay short for progress and resumption
NO_CUT = 2**31 - 1  # a cut position past every sample


@dataclasses.dataclass
class Usage:
    """Forward-pass slots run (`computed`) and those spent on samples an input used (`useful`), over all calls."""

    computed: int = 0
    useful: int = 0
    calls: int = 0

    @property
    def fraction(self) -> float:
        return self.useful / self.computed if self.computed else 0.0

    def summary(self, inputs: int, samples: float) -> str:
        return (f"sequential: {samples / max(inputs, 1):,.0f} samples per input (selection included), forward-pass "
                f"slots doing useful work {self.fraction:.1%}")


@dataclasses.dataclass(eq=False)  # inputs in flight are told apart by identity
class _Input:
    index: int
    x: np.ndarray
    label: int | None
    candidate: int
    selection: int  # selection samples spent (0 for a clean candidate)
    counts: np.ndarray  # [K] estimation counts of samples [0, consumed)
    softmax: np.ndarray | None  # [K] their softmax sum
    clean: np.ndarray | None  # [K] softmax of one clean forward pass
    consumed: int = 0
    state: sequential.State = sequential.START
    seconds: float = 0.0


def sequential_outcomes(sampler: Sampler, load: Callable, indices, sigma, settings, keys: dict, *,
        clean_probabilities: Callable | None = None, usage: Usage | None = None) -> Iterator[Outcome]:
    """Sequential CERTIFY of the examples `indices`, yielding one `results.Outcome` per input as soon as its test stops.

    Args:
      sampler: its slots (`inputs`) and loop step (`step_samples`) set the batching.
      load: ``load(indices [B]) -> (x [B, *input_shape] float32, labels [B])``.
      sigma: scalar or per-pixel array.
      settings: `certification.Settings` with ``sequential`` set (n0, n = budget, alpha, radii, tolerance).
      keys: `certification.stream_keys` of the run's key.
      clean_probabilities: one clean forward pass's softmax (candidate "clean"; the model's L-bound).
      usage: filled with the slot counts of every call.
    Yields:
      in the order inputs finish, each input's outcome (`results.CERTIFY.row` makes its row): as
      `certify_batch`'s, with n_used (selection included) and seconds (its share of the calls it took
      part in).
    """
    usage = Usage() if usage is None else usage
    rule = sampler.radius_rule(sigma)
    schedule = settings.schedule(rule)
    tv, gaussian = sampler.total_variation(sigma), sampler.kind.gaussian_certificate
    decided, certified_radius = stopping_rule(settings, schedule, rule, tv)
    pending, ready, active = deque(int(i) for i in indices), deque(), []
    while pending or ready or active:
        while len(active) < sampler.inputs and (ready or pending):
            if not ready:
                batch = [pending.popleft() for _ in range(min(sampler.inputs, len(pending)))]
                ready.extend(_select(sampler, load, batch, sigma, settings, keys, clean_probabilities, usage))
            active.append(ready.popleft())
        for item in _estimate(sampler, active, sigma, schedule, decided, keys["estimation"], usage):
            active.remove(item)
            yield _outcome(item, certified_radius(item.state.lower), sigma, tv, gaussian)


def stopping_rule(settings, schedule: sequential.Schedule, rule, tv: float = 0.0) -> tuple[Callable, Callable]:
    """(decided(state) -> bool, radius(L) -> the reported radius, -inf to abstain) of the settings' mode.

    rule: the noise kind's radius rule (`bounds.RadiusRule`); tv: the noise draw's total variation from the
    ideal (`Sampler.total_variation`, lattice noise): the certificate's bound is L - tv, as for fixed n
    (`bounds.certificate`).
    """
    if settings.radii is None:
        return (lambda state: sequential.max_radius_decided(state, schedule, rule, settings.tolerance),
                lambda lower: sequential.radius(lower - tv, rule))
    radii = (0.0, *settings.radii)
    levels = tuple(t + tv for t in sequential.thresholds(radii, rule))
    return (lambda state: sequential.grid_decided(state, schedule, levels),
            lambda lower: sequential.grid_radius(lower, radii, levels))


def replay(counts: np.ndarray, positions, candidate: int, selection: int, settings, sigma, tv: float = 0.0,
           rule=None) -> Outcome:
    """The outcome `sequential_outcomes` gives an input, from its estimation counts recorded at fixed stream positions.

    The counts of a stream's first N samples do not depend on how they were
    drawn (`engine`), so a fixed-n run that records them at every look of a
    schedule (`positions` must hold the schedule's looks, increasing;
    counts: [len(positions), K] counts of samples [0, position)) can replay
    any sequential run of those settings: the same looks, states, stop and
    outcome as `sequential_outcomes`, without drawing again. Its index (-1), label (None),
    seconds (0) and mean softmax (None) are not replayed. rule: the noise
    kind's radius rule (default: Cohen et al.'s at sigma).
    """
    sigma_arr = np.asarray(sigma, np.float64)
    rule = gaussian_rule(sigma_arr) if rule is None else rule
    schedule = settings.schedule(rule)
    decided, certified_radius = stopping_rule(settings, schedule, rule, tv)
    where = {int(p): j for j, p in enumerate(positions)}
    item = _Input(-1, np.zeros(0), None, int(candidate), selection, np.zeros(counts.shape[1], np.int64), None, None)
    for look in schedule.looks:
        item.counts, item.consumed = np.asarray(counts[where[look]], np.int64), look
        item.state = sequential.observe(item.state, int(item.counts[candidate]), schedule)
        if decided(item.state):
            break
    return _outcome(item, certified_radius(item.state.lower), sigma, tv)


def _select(sampler, load, batch, sigma, settings, keys, clean_probabilities, usage) -> list[_Input]:
    """Candidates of up to `inputs` new inputs: the top class of n0 selection samples, or of one clean pass."""
    x, labels = load(np.asarray(batch, np.int64))
    t0 = time.perf_counter()
    clean = clean_probabilities(x) if clean_probabilities is not None else None
    if settings.candidate == "clean":
        candidates, spent = np.argmax(clean, -1), 0
    else:
        no_cuts = np.full((len(batch), CUTS), NO_CUT, np.int64)
        counts = sampler.segments(x, batch, sigma, 0, settings.n0, keys["selection"], no_cuts).counts
        candidates, spent = np.argmax(counts.sum(1), -1), settings.n0
        steps = -(-settings.n0 // sampler.step_samples)
        usage.computed += steps * sampler.step_samples * sampler.inputs
        usage.useful += spent * len(batch)
        usage.calls += 1
    share = (time.perf_counter() - t0) / len(batch)
    k = sampler.num_classes
    return [_Input(i, x[b], None if labels is None else int(labels[b]), int(candidates[b]), spent,
                   np.zeros(k, np.int64), np.zeros(k) if sampler.with_softmax else None,
                   None if clean is None else clean[b], seconds=share) for b, i in enumerate(batch)]


def _plan(active: list[_Input], schedule: sequential.Schedule, slots: int, step: int):
    """The call's loop steps and, for each slot, (input position, start, m, cuts [CUTS]).

    Spare slots go, one by one, to the inputs with the most budget left per
    slot; an input's slots take consecutive pieces of its stream.
    """
    looks, budget = schedule.looks, schedule.budget
    share = [1] * len(active)
    heap = [(item.consumed - budget, i) for i, item in enumerate(active)]  # -(budget left per slot), input
    heapq.heapify(heap)
    for _ in range(slots - len(active)):
        _, i = heapq.heappop(heap)
        share[i] += 1
        heapq.heappush(heap, ((active[i].consumed - budget) / share[i], i))
    # as many steps as every input can take before its next look, at least one
    steps = min((looks[bisect.bisect_right(looks, item.consumed)] - item.consumed) // (share[i] * step)
                for i, item in enumerate(active))
    steps = min(max(steps, 1), MAX_STEPS)
    plan = []
    for i, item in enumerate(active):
        start = item.consumed
        for _ in range(share[i]):
            end = min(start + steps * step, budget)
            inside = looks[bisect.bisect_right(looks, start):bisect.bisect_left(looks, end)]
            if len(inside) > CUTS:  # at most CUTS looks per slot: end this piece at the next one
                end, inside = inside[CUTS], inside[:CUTS]
            plan.append((i, start, end - start, inside + (NO_CUT,) * (CUTS - len(inside))))
            start = end
    return steps, plan


def _estimate(sampler, active, sigma, schedule, decided, key, usage) -> list[_Input]:
    """One call over every slot; advances each input through the looks it passed; returns the inputs decided."""
    steps, plan = _plan(active, schedule, sampler.inputs, sampler.step_samples)
    x = np.stack([active[i].x for i, *_ in plan])
    t0 = time.perf_counter()
    out = sampler.segments(x, [active[i].index for i, *_ in plan], sigma, [p[1] for p in plan],
                           [p[2] for p in plan], key, np.array([p[3] for p in plan], np.int64))
    seconds = time.perf_counter() - t0
    done, used = [], [0] * len(active)
    for slot, (i, start, m, cuts) in enumerate(plan):
        item = active[i]
        if item in done or m == 0:  # a later piece of an input decided in an earlier one: wasted
            continue
        for piece, end in enumerate([c for c in cuts if c < start + m] + [start + m]):
            item.counts = item.counts + out.counts[slot, piece]
            if item.softmax is not None:
                item.softmax = item.softmax + out.softmax_sums[slot, piece]
            used[i] += end - item.consumed
            item.consumed = end
            if end == schedule.looks[item.state.look + 1]:
                item.state = sequential.observe(item.state, int(item.counts[item.candidate]), schedule)
                if decided(item.state):
                    done.append(item)
                    break
    total = max(sum(used), 1)
    for i, item in enumerate(active):
        item.seconds += seconds * used[i] / total
    usage.computed += steps * sampler.step_samples * sampler.inputs
    usage.useful += sum(used)
    usage.calls += 1
    return done


def _outcome(item: _Input, r: float, sigma, tv: float, gaussian: bool = True) -> Outcome:
    """The `results.Outcome` of a finished input with certified radius r (-inf: abstain), as `certify_batch`'s:
    the L-bounds' softmax vectors only under a Gaussian certificate (`NoiseKind.gaussian_certificate`)."""
    others = np.delete(item.counts, item.candidate)
    n_used = item.selection + item.consumed
    return Outcome(item.index, item.label, item.candidate if r >= 0 else ABSTAIN, int(item.counts[item.candidate]),
                   int(others.max()) if others.size else 0, sigma, item.seconds, n_used,
                   pa_lower=item.state.lower - tv, radius=max(r, 0.0), n_used=n_used,
                   clean=item.clean if gaussian else None,
                   mean_softmax=None if item.softmax is None or not gaussian else item.softmax / max(item.consumed, 1))
