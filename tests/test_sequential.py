"""Sequential CERTIFY: the stream continues where it stopped, the confidence sequence holds under optional stopping.

Soundness is checked on linear classifiers, whose smoothed class probability
is known in closed form, through the public API, against the exact error of
the look schedule (a dynamic program over binomial paths), and against the
naive procedure (Clopper-Pearson at level alpha recomputed at every look),
which fails the same checks.
"""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxsmooth
from jaxsmooth import certification as C, parallel, results, values
from jaxsmooth.certification import batching, sequential as S
from jaxsmooth.errors import UserError

SHAPE = (2, 2, 1)
D = 4


def linear(params, x):
    """Two classes: logit_1 = w.x + b, logit_0 = 0; f(x) = 1[w.x + b > 0]."""
    z = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
    return jnp.stack([jnp.zeros_like(z), z], -1)


def engine_linear(params, model_state, x, train=False):
    return linear(params, x), model_state


PARAMS = {"w": np.array([0.8, -0.5, 0.3, 0.6], np.float32), "b": np.float32(0.1)}


def _points(p1, sigma, rng):
    """Inputs whose smoothed P[f(x + eta) = 1] is exactly p1 (each [N]): margin w.x + b = ||sigma * w|| Phi^-1(p1).

    A random component orthogonal to w varies the inputs without changing p1.
    """
    w = PARAMS["w"].astype(np.float64)
    scale = np.linalg.norm(np.broadcast_to(sigma, SHAPE).reshape(-1) * w)
    margin = scale * stats.norm.ppf(p1)
    jitter = rng.normal(size=(len(p1), D))
    jitter -= np.outer(jitter @ w, w) / (w @ w)
    x = np.outer(margin - float(PARAMS["b"]), w) / (w @ w) + 0.3 * jitter
    return x.reshape(-1, *SHAPE).astype(np.float32)


# --------------------------------------------------------------------------
# The look schedule and the confidence sequence


@pytest.mark.parametrize("budget, alpha, radii", [(100_000, 0.001, (0.25, 0.5, 0.75)), (100_000, 0.001, None),
                                                  (1000, 0.1, (0.5,)), (50, 0.05, None), (20_000, 0.01, (9.0,))])
def test_schedule_spends_alpha_once_and_ends_at_the_budget(budget, alpha, radii):
    schedule = C.Settings(n=budget, alpha=alpha, sequential=True, radii=radii).schedule(C.gaussian_rule(0.25))
    looks = np.array(schedule.looks)
    assert looks[-1] == budget and np.all(np.diff(looks) > 0) and looks[0] >= 1
    assert sum(schedule.alphas) == pytest.approx(alpha, rel=1e-12) and min(schedule.alphas) > 0


def test_an_all_votes_input_clears_the_top_radius_at_the_targeted_look():
    sigma, radii = 0.25, (0.25, 0.5, 0.75)
    schedule = C.Settings(n=100_000, alpha=0.001, sequential=True, radii=radii).schedule(C.gaussian_rule(sigma))
    levels = S.thresholds((0.0, *radii), C.gaussian_rule(sigma))
    state, k = S.START, 0
    while not S.grid_decided(state, schedule, levels):
        state = S.observe(state, schedule.looks[k], schedule)
        k += 1
    n = schedule.looks[state.look]
    assert S.grid_radius(state.lower, (0.0, *radii), levels) == 0.75
    level = S.GRID_TARGET * 0.001
    assert n == S.all_votes_look(stats.norm.cdf(3), level)  # level^(1/n) >= Phi(3)
    assert n < 6000 and level ** (1 / (n - 1)) < stats.norm.cdf(3) <= level ** (1 / n)


def _exact_error(p, schedule, alphas, threshold):
    """P[some look k has CP_lower(A_{n_k}, n_k, alpha_k) >= threshold] for the counts of Bernoulli(p) samples.

    Exact, by propagating the distribution of A over the looks and removing the paths that cross (the worst
    stopping rule stops there). Always >= the error of any stopping rule at this threshold.
    """
    alive, previous, crossed = np.array([1.0]), 0, 0.0
    for n, a in zip(schedule.looks, alphas):
        alive = np.convolve(alive, stats.binom.pmf(np.arange(n - previous + 1), n - previous, p))
        hit = C.clopper_pearson_lower(np.arange(n + 1), n, a) >= threshold
        crossed += alive[hit].sum()
        alive, previous = np.where(hit, 0.0, alive), n
    return crossed


@pytest.mark.parametrize("radii", [(0.5, 1.0, 1.5), None])
def test_the_worst_stopping_rule_errs_at_most_alpha_and_the_naive_one_far_more(radii):
    """The proof's union bound, computed exactly: just below each threshold, ours <= alpha, naive >= 2 alpha."""
    alpha = 0.1
    schedule = C.Settings(n=2000, alpha=alpha, sequential=True, radii=radii).schedule(C.gaussian_rule(1.0))
    for r in (0.0, 0.5, 1.0, 1.5):
        t = stats.norm.cdf(r)
        ours = _exact_error(t - 1e-9, schedule, schedule.alphas, t)
        naive = _exact_error(t - 1e-9, schedule, [alpha] * len(schedule.looks), t)
        assert ours <= alpha and naive >= 2 * alpha, (r, ours, naive)


def test_observe_keeps_the_running_extremes_and_decides_out_of_reach():
    schedule = S.make_schedule(1000, 0.05, thresholds=S.thresholds((0.0, 1.0), C.gaussian_rule(1.0)))
    state = S.observe(S.START, schedule.looks[0] - 2, schedule)
    low = S.observe(state, schedule.looks[1] // 2, schedule)  # a bad stretch: the bounds keep their extremes
    assert low.lower == state.lower and low.upper < state.upper
    assert low.upper == pytest.approx(float(C.clopper_pearson_upper(schedule.looks[1] // 2, schedule.looks[1],
                                                                    schedule.futility)))
    levels = S.thresholds((0.0, 1.0), C.gaussian_rule(1.0))
    assert S.grid_decided(low, schedule, levels)  # 1/2 cleared already; Phi(1) out of reach at p <= ~0.6
    assert S.grid_radius(low.lower, (0.0, 1.0), levels) == 0.0
    assert S.unreachable((0.5, 3.0), schedule, C.gaussian_rule(1.0)) == [3.0]  # 0.05^(1/1000) < Phi(3)


@pytest.mark.parametrize("text, needle", [("0.25,-1", "-1 is not a radius"), ("0.5,x", "'x' is not a number"),
                                          ("nan", "nan is not a radius"), ("", "is empty")])
def test_bad_radii_and_tolerance_name_their_field(text, needle):
    with pytest.raises(UserError) as e:
        values.radii(text)
    assert e.value.field == "radii" and needle in str(e.value)
    for tolerance in (0.0, 1.0, -0.1, 2):
        with pytest.raises(UserError) as e:
            C.make_settings(sequential=True, tolerance=tolerance)
        assert e.value.field == "tolerance"
    for fields, field in [(dict(radii=(0.5,)), "radii"), (dict(tolerance=0.1), "tolerance"),
                          (dict(sequential=True, radii="0.5", tolerance=0.1), "tolerance"),
                          (dict(sequential=True, topk=2), "topk"), (dict(sequential=True, radii=text), "radii")]:
        with pytest.raises(UserError) as e:
            C.make_settings(**fields)
        assert e.value.field == field
    for fields in (dict(sequential=True), dict(radii=(0.5,)), dict(topk=2)):
        with pytest.raises(UserError) as e:
            C.make_settings("predict", **fields)
        assert e.value.field == next(iter(fields)) and "not predict" in e.value.message
    assert values.radii("0.5,0.25,0.5") == (0.25, 0.5)


# --------------------------------------------------------------------------
# The stream (engine and driver)


def test_a_stream_continues_where_it_stopped_on_1_and_8_devices(devices):
    """Counts of [0, N) = counts of [0, N1) + [N1, N), in pieces split at cuts, in any slot, on any mesh."""
    x = _points(np.array([0.7, 0.9, 0.55]), 0.5, np.random.default_rng(0))
    index, key, n = np.array([4, 17, 9]), jax.random.key(3), 3001
    reference = None
    for count in (1, 8):
        sampler = C.Sampler(engine_linear, PARAMS, {}, input_shape=SHAPE, num_classes=2, inputs=3, chunk=64,
                            mesh=parallel.make_mesh(devices[:count]))
        fixed = sampler(x, index, 0.5, n, key).counts
        reference = fixed if reference is None else reference
        np.testing.assert_array_equal(fixed, reference)
        first = sampler(x, index, 0.5, 1000, key).counts
        np.testing.assert_array_equal(first + sampler(x, index, 0.5, n - 1000, key, start=1000).counts, fixed)
        pieces = sampler.segments(x, index, 0.5, 0, n, key, cuts=np.tile([500, 1000, 2999], (3, 1))).counts
        np.testing.assert_array_equal(pieces.sum(1), fixed)
        np.testing.assert_array_equal(pieces[:, :2].sum(1), first)
        assert pieces[:, 3].sum(-1).tolist() == [2, 2, 2]
        # one example in three slots: consecutive pieces of its stream add up to it
        split = sampler.segments(x[[1, 1, 1]], index[[1, 1, 1]], 0.5, [0, 1000, 2000], [1000, 1000, 1001], key)
        np.testing.assert_array_equal(split.counts.sum((0, 1)), fixed[1])
    assert not np.array_equal(reference, sampler(x, index, 0.5, n, jax.random.key(4)).counts)


def _run(sampler, x, settings, sigma, seed=0, usage=None):
    """The certify rows of a sequential run over x (labels 1), in index order."""
    outcomes = batching.sequential_outcomes(sampler, lambda idx: (x[idx], np.ones(len(idx), np.int64)),
                                            np.arange(len(x)), sigma, settings, C.stream_keys(jax.random.key(seed)),
                                            usage=usage)
    return [results.CERTIFY.row(o) for o in sorted(outcomes, key=lambda o: o.index)]


def test_sequential_counts_are_the_fixed_runs_first_samples(devices):
    """A row's counts at its stopping look equal a fixed-n run's counts of that many samples, same key, any mesh."""
    rng = np.random.default_rng(1)
    x = _points(rng.uniform(0.6, 1.0, 12), 0.5, rng)
    settings = C.Settings(n0=20, n=3000, alpha=0.05, sequential=True, radii=(0.25, 0.5))
    keys = C.stream_keys(jax.random.key(0))
    rows = None
    for count, inputs, chunk in [(1, 5, 50), (8, 12, 7)]:
        sampler = C.Sampler(engine_linear, PARAMS, {}, input_shape=SHAPE, num_classes=2, inputs=inputs, chunk=chunk,
                            mesh=parallel.make_mesh(devices[:count]))
        these = [{k: v for k, v in r.items() if k != "time"} for r in _run(sampler, x, settings, 0.5)]
        assert rows is None or these == rows  # the same rows, whatever the slots and devices
        rows = these
    fixed = C.Sampler(engine_linear, PARAMS, {}, input_shape=SHAPE, num_classes=2, inputs=1, chunk=100)
    used = {r["n_used"] - 20 for r in rows}
    assert len(used) > 2 and max(used) <= 3000  # inputs stopped at several looks
    for r in rows:
        candidate = int(np.argmax(fixed(x[[r["idx"]]], [r["idx"]], 0.5, 20, keys["selection"]).counts[0]))
        counts = fixed(x[[r["idx"]]], [r["idx"]], 0.5, r["n_used"] - 20, keys["estimation"]).counts[0]
        assert (r["count_A"], r["count_B"]) == (counts[candidate], counts[1 - candidate])
        if r["predict"] != -1:
            assert r["predict"] == candidate


def test_continuous_batching_keeps_the_slots_busy():
    rng = np.random.default_rng(2)
    x = _points(rng.uniform(0.3, 1.0, 60), 0.5, rng)
    sampler = C.Sampler(engine_linear, PARAMS, {}, input_shape=SHAPE, num_classes=2, inputs=8, chunk=25,
                        mesh=parallel.make_mesh(jax.devices()[:1]))
    usage = batching.Usage()
    rows = _run(sampler, x, C.Settings(n0=25, n=5000, alpha=0.01, sequential=True, radii=(0.25, 0.5)), 0.5,
                usage=usage)
    assert usage.useful == sum(r["n_used"] for r in rows)
    assert usage.computed == usage.calls * 8 * 25 or usage.computed > usage.useful
    assert usage.fraction >= 0.9, usage


# --------------------------------------------------------------------------
# Soundness under optional stopping, through the public API


ALPHA, BUDGET, RADII, TRIALS = 0.1, 1000, (0.25, 0.5, 0.75), 5000


def _naive_schedule(self, rule):
    """The naive procedure: the same looks, each tested at the full alpha."""
    schedule = S.make_schedule(self.n, self.alpha, thresholds=S.thresholds(self.radii or (), rule))
    return dataclasses.replace(schedule, alphas=(self.alpha,) * len(schedule.looks))


def _trial_points(sigma, rng):
    """TRIALS inputs with p_A just below and just above Phi(r / min sigma) for r in {0} u RADII, either class.

    Returns x, the true smoothed class, its exact p_A, and whether the point is below its threshold.
    """
    z = np.array([0.0, *RADII]) / float(np.min(sigma))
    side = np.array([-1, 1])
    cells = np.array([(zi, s) for zi in z for s in side])
    pick = cells[np.arange(TRIALS) % len(cells)]
    p_top = stats.norm.cdf(pick[:, 0] + 0.01 * pick[:, 1])  # 0.01 sigma-units either side of the threshold
    top = rng.integers(0, 2, TRIALS)  # the top class: 1 (margin > 0) or 0
    p_one = np.where(top == 1, p_top, 1 - p_top)
    flip = p_top < 0.5  # at r = 0, "below" means the other class is on top
    return _points(p_one, sigma, rng), np.where(flip, 1 - top, top), np.maximum(p_top, 1 - p_top), pick[:, 1] < 0


def _wrong(rows, truth, p_true, sigma):
    """Wrong class, or a radius above the exact one min(sigma) Phi^-1(p_A) (isotropic: |w.x + b| / ||w||)."""
    exact = float(np.min(sigma)) * stats.norm.ppf(p_true)
    predict = np.array([r["predict"] for r in rows])
    radius = np.array([r["radius"] for r in rows])
    return (predict != -1) & ((predict != truth) | (radius > exact + 1e-12))


def _quantile(trials):
    return stats.binom.ppf(0.999, trials, ALPHA) / trials


@pytest.mark.slow
@pytest.mark.parametrize("anisotropic", [False, True])
@pytest.mark.parametrize("radii", [RADII, None])
def test_wrong_certificates_stay_within_alpha_under_optional_stopping(anisotropic, radii, monkeypatch):
    """5,000 trials per case (20,000 in all) near the thresholds: ours within alpha; the naive procedure, on 1,250
    of the points below their thresholds, beyond."""
    rng = np.random.default_rng(7 + anisotropic)
    sigma = rng.uniform(0.4, 0.8, SHAPE).astype(np.float32) if anisotropic else 0.5
    x, truth, p_true, below = _trial_points(sigma, rng)
    far = 5.0  # out of reach at this budget: said once, never certified, no change to the test
    kwargs = dict(sigma=sigma, n0=32, n=BUDGET, alpha=ALPHA, seed=11, batch=32_000, inputs=1000, sequential=True,
                  radii=None if radii is None else (*radii, far), mesh=parallel.make_mesh(jax.devices()[:1]),
                  compiler_options=None, noise="gaussian")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        rows = jaxsmooth.api.certify(linear, PARAMS, x, **kwargs)
    assert [str(w.message)[:24] for w in said] == ([] if radii is None else ["radius 5 out of reach at"])
    wrong = _wrong(rows, truth, p_true, sigma)
    assert wrong.mean() <= _quantile(TRIALS)
    assert wrong[below].mean() <= _quantile(below.sum())
    predicted = np.array([r["predict"] for r in rows]) == truth
    assert predicted[p_true > 0.6].mean() > 0.95  # not a test that abstains its way to soundness
    if radii is not None:  # grid: the radius is a listed one
        assert {r["radius"] for r in rows} <= {0.0, *RADII}
    else:
        assert np.mean([r["n_used"] for r in rows]) < 32 + BUDGET
    monkeypatch.setattr(C.Settings, "schedule", _naive_schedule)
    some = np.flatnonzero(below)[:1250]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the far radius again
        naive = jaxsmooth.api.certify(linear, PARAMS, x[some], index=some, **kwargs)
    naive = _wrong(naive, truth[some], p_true[some], sigma)
    assert naive.mean() > _quantile(len(some)), naive.mean()
