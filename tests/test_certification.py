"""Certification: bounds against closed forms and statsmodels, soundness on linear classifiers, engine invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxsmooth import certification as C, parallel, results
from jaxsmooth.errors import UserError

from helpers import counts_across_layouts

D = 10  # input dimension of the linear test models: inputs are (2, 5, 1)
SHAPE = (2, 5, 1)


def linear_apply(params, model_state, x, train=False):
    """Two classes: logit_1 = w.x + b, logit_0 = 0; so f(x) = 1[w.x + b > 0]."""
    z = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
    return jnp.stack([jnp.zeros_like(z), z], -1), model_state


def three_class_apply(params, model_state, x, train=False):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"], model_state


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    w = rng.normal(size=D).astype(np.float32)
    return {"w": w, "b": np.float32(0.3)}


def _sampler(apply, params, inputs, chunk, num_classes=2, mesh=None, with_softmax=False):
    return C.Sampler(apply, params, {}, input_shape=SHAPE, num_classes=num_classes, inputs=inputs, chunk=chunk,
                     mesh=mesh, with_softmax=with_softmax)


# --------------------------------------------------------------------------
# Bounds


def test_clopper_pearson_matches_statsmodels_and_edges():
    from statsmodels.stats.proportion import proportion_confint

    for k, n, alpha in [(0, 10, 0.01), (1, 10, 0.01), (57, 100, 0.001), (99_990, 100_000, 0.001), (10, 10, 0.05)]:
        ref_lo, ref_hi = proportion_confint(k, n, alpha=2 * alpha, method="beta")
        assert C.clopper_pearson_lower(k, n, alpha) == pytest.approx(ref_lo, abs=1e-12)
        assert C.clopper_pearson_upper(k, n, alpha) == pytest.approx(ref_hi, abs=1e-12)
    assert C.clopper_pearson_lower(0, 100, 0.001) == 0.0
    assert C.clopper_pearson_upper(100, 100, 0.001) == 1.0
    # k = n: the lower bound is alpha^(1/n)
    assert C.clopper_pearson_lower(1000, 1000, 0.001) == pytest.approx(0.001 ** (1 / 1000), rel=1e-12)


def test_smallest_certifying_n_is_tight():
    for alpha in (0.5, 0.1, 0.01, 0.001, 1e-6):
        n = C.smallest_certifying_n(alpha)
        assert C.clopper_pearson_lower(n, n, alpha) > 0.5
        assert n == 1 or C.clopper_pearson_lower(n - 1, n - 1, alpha) <= 0.5
    assert C.smallest_certifying_n(0.001) == 10


@pytest.mark.parametrize("n0, n, alpha, field, needle", [
    (200, 100, 0.001, "n0", "cannot outnumber"),
    (10, 100, 0.0, "alpha", "(0, 1)"),
    (10, 100, 1.0, "alpha", "(0, 1)"),
    (0, 100, 0.001, "n0", "> 0"),
    (5, 9, 0.001, "n", "the smallest n that could is 10"),
    (5, 0, 0.001, "n", "> 0"),
])
def test_bad_settings_refused_before_sampling(n0, n, alpha, field, needle):
    with pytest.raises(UserError) as e:
        C.check_settings(n0, n, alpha)
    assert e.value.field == field and needle in str(e.value)


def test_bad_sigma_refused():
    for sigma, needle in [(0.0, "> 0"), (-0.5, "> 0"), (np.ones((5, 2, 1)), "input's shape"),
                          (np.full(SHAPE, np.nan), "> 0")]:
        with pytest.raises(UserError) as e:
            C.check_sigma(sigma, SHAPE)
        assert e.value.field == "sigma" and needle in str(e.value)
    assert C.check_sigma(np.full(SHAPE, 0.5), SHAPE).shape == SHAPE


def test_certify_radius_is_float64_and_abstains_below_half():
    n, alpha, sigma = 1_000_000, 0.001, 0.5
    cert = C.certificate(3, np.array([0, 0, 0, n]), alpha, sigma)
    pa = alpha ** (1 / n)
    assert cert.label == 3 and cert.pa_lower == pytest.approx(pa, rel=1e-12)
    assert cert.radius == pytest.approx(sigma * stats.norm.ppf(pa), rel=1e-9)
    # float32 would saturate: 1 - 6.9e-6 rounds to a representable value 2x off in the tail quantile
    assert abs(sigma * stats.norm.ppf(np.float32(pa)) - cert.radius) > 1e-4
    low = C.certificate(0, np.array([520, 480]), alpha, sigma)
    assert low.label == C.ABSTAIN and low.radius == 0.0 and low.count_a == 520 and low.count_b == 480


def test_predict_uses_two_sided_binomial_test():
    p = C.prediction(np.array([5, 60, 40]), 0.05)
    assert p.pvalue == pytest.approx(stats.binomtest(60, 100, 0.5).pvalue)
    assert p.label == C.ABSTAIN  # p = 0.057 > 0.05
    p = C.prediction(np.array([5, 70, 30]), 0.05)
    assert p.label == 1 and (p.count_a, p.count_b) == (70, 30)


def test_l_bound_and_certified_area_closed_forms():
    v = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(C.l_bound(v, 0.25), [0.25 * np.sqrt(np.pi / 2) * 0.5, 0.0], rtol=1e-12)
    sigma = np.array([0.1, 0.2, 0.4])
    area = C.certified_area(0.9, sigma)
    assert area == pytest.approx(np.log(0.1 * 0.2 * 0.4) + 3 * np.log(stats.norm.ppf(0.9)), rel=1e-12)
    assert C.certified_area(0.5, sigma) == -np.inf


def test_topk_with_k1_is_cohen_pair_bound_and_grows_with_k():
    counts = np.array([9000, 600, 300, 100])
    alpha, sigma = 0.001, 0.5
    pl = C.clopper_pearson_lower(9000, 10_000, alpha / 4)
    pb = C.clopper_pearson_upper(600, 10_000, alpha / 4)
    expected = sigma / 2 * (stats.norm.ppf(pl) - stats.norm.ppf(pb))
    assert C.topk_radius(0, counts, 1, alpha, sigma) == pytest.approx(expected, rel=1e-9)
    r2 = C.topk_radius(0, counts, 2, alpha, sigma)
    assert r2 > expected
    # the true class is the second one: not certified in the top 1, certified in the top 2
    counts = np.array([5000, 4900, 60, 40])
    assert C.topk_radius(1, counts, 1, alpha, sigma) == 0.0
    assert C.topk_radius(1, counts, 2, alpha, sigma) > 0.0


# --------------------------------------------------------------------------
# Engine


@pytest.mark.slow
def test_counts_are_equal_across_devices_chunks_and_grouping(linear, devices):
    x = np.random.default_rng(1).normal(size=(5, *SHAPE)).astype(np.float32) * 0.2
    index = np.array([3, 17, 4, 100, 9])
    key = jax.random.key(42)
    reference = counts_across_layouts(lambda n_devices, inputs, chunk: _sampler(
        linear_apply, linear, inputs, chunk, mesh=parallel.make_mesh(devices[:n_devices])), x, index, 0.5, 3001, key,
        [(1, 5, 64), (8, 5, 64), (8, 5, 7), (3, 2, 50), (1, 1, 1000)])
    other = _sampler(linear_apply, linear, 5, 64)(x, index, 0.5, 3001, jax.random.key(43)).counts
    assert not np.array_equal(other, reference)


def test_counts_agree_in_distribution_with_numpy(devices):
    rng = np.random.default_rng(5)
    params = {"w": rng.normal(size=(D, 3)).astype(np.float32), "b": np.array([0.2, -0.1, 0.0], np.float32)}
    x = rng.normal(size=(1, *SHAPE)).astype(np.float32) * 0.3
    sigma, n = 0.4, 40_000
    ours = _sampler(three_class_apply, params, 1, 500, num_classes=3)(x, [0], sigma, n, jax.random.key(0)).counts[0]
    noisy = x.reshape(1, -1) + sigma * rng.standard_normal((n, D))
    theirs = np.bincount(np.argmax(noisy @ params["w"] + params["b"], -1), minlength=3)
    assert min(ours.min(), theirs.min()) > 1000  # every class sampled often: the test has power
    _, pvalue, _, _ = stats.chi2_contingency(np.stack([ours, theirs]))
    assert pvalue > 1e-3, (ours, theirs)
    # and the test would notice a sigma off by 10%
    sampler = _sampler(three_class_apply, params, 1, 500, num_classes=3)
    off = sampler(x, [0], sigma * 1.1, n, jax.random.key(0)).counts[0]
    noisy = x.reshape(1, -1) + sigma * rng.standard_normal((4 * n, D))
    big = np.bincount(np.argmax(noisy @ params["w"] + params["b"], -1), minlength=3)
    assert stats.chi2_contingency(np.stack([off, big]))[1] < 1e-3


def test_mean_softmax_and_masking_of_partial_chunks(linear):
    x = np.zeros((1, *SHAPE), np.float32)
    sampler = _sampler(linear_apply, {"w": np.zeros(D, np.float32), "b": np.float32(np.log(3.0))}, 1, 64,
                       with_softmax=True)
    out = sampler(x, [0], 0.5, 1000, jax.random.key(0))  # 1000 = 15 full chunks + 40: the rest is masked
    np.testing.assert_allclose(out.mean_softmax[0], [0.25, 0.75], rtol=1e-5)
    assert out.counts[0].tolist() == [0, 1000]


def test_one_executable_for_every_n(linear):
    """n is an argument of the compiled loop, so memory cannot grow with it."""
    sampler = _sampler(linear_apply, linear, 2, 100)
    x = np.zeros((2, *SHAPE), np.float32)
    sampler(x, [0, 1], 0.5, 10_000, jax.random.key(0))
    compiled = sampler._compiled[0]
    counts = sampler(x, [0, 1], 0.5, 1_000_000, jax.random.key(0)).counts
    assert sampler._compiled == {0: compiled} and counts.sum() == 2_000_000
    memory = compiled.memory_analysis()
    if memory is not None:  # temporaries hold one chunk, not n samples
        assert memory.temp_size_in_bytes < 2 * 100 * D * 4 * 50


def test_selection_and_estimation_use_independent_keys(linear):
    keys = []

    class Recording(C.Sampler):
        def __call__(self, x, index, sigma, n, key):
            keys.append(np.asarray(jax.random.key_data(key)).tobytes())
            return super().__call__(x, index, sigma, n, key)

    sampler = Recording(linear_apply, linear, {}, input_shape=SHAPE, num_classes=2, inputs=1, chunk=100)
    settings = C.Settings(n0=100, n=100, alpha=0.01)
    C.certify_batch(sampler, np.zeros((1, *SHAPE), np.float32), np.array([0]), 0.5, settings, jax.random.key(0))
    assert len(keys) == 2 and keys[0] != keys[1]
    # with n0 = n, independent keys mean the two count vectors differ (they would be equal if reused)
    x = np.zeros((1, *SHAPE), np.float32) + 0.01
    k = C.stream_keys(jax.random.key(0))
    a = sampler(x, [0], 2.0, 100, k["selection"]).counts
    b = sampler(x, [0], 2.0, 100, k["estimation"]).counts
    assert not np.array_equal(a, b)


# --------------------------------------------------------------------------
# Soundness on linear classifiers, whose smoothed classifier is known in closed form


def _points(linear, count, rng, scale):
    w, b = linear["w"].astype(np.float64), float(linear["b"])
    return (rng.normal(size=(count, D)) * scale).astype(np.float32), w, b


def _certified_rows(linear, xs, sigma, alpha, seed):
    """(row, margin w.x + b) for every point certified (not abstained), 50 points per call, and the point count."""
    w, b = linear["w"].astype(np.float64), float(linear["b"])
    sampler = _sampler(linear_apply, linear, 50, 20)
    settings = C.Settings(n0=50, n=1000, alpha=alpha)
    out = []
    for start in range(0, len(xs), 50):
        x = xs[start:start + 50]
        rows = [results.CERTIFY.row(o) for o in C.certify_batch(sampler, x.reshape(-1, *SHAPE),
                                                                  np.arange(start, start + 50), sigma, settings,
                                                                  jax.random.key(seed))]
        out += [(row, m) for row, m in zip(rows, x.astype(np.float64) @ w + b) if row["predict"] != C.ABSTAIN]
    return out


def _assert_failure_rate(certified, failures, count, alpha):
    assert len(certified) > count / 2  # most points are certified: the test has power
    assert failures / count <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / count)


def test_certified_radius_never_exceeds_exact_radius_beyond_alpha(linear):
    """Isotropic: exact radius |w.x + b| / ||w||; a certificate above it (or of the wrong class) is a failure."""
    rng = np.random.default_rng(11)
    alpha, sigma, count = 0.05, 0.5, 400
    xs, w, _ = _points(linear, count, rng, 0.15)
    certified = _certified_rows(linear, xs, sigma, alpha, 7)
    failures = sum(row["predict"] != int(m > 0) or row["radius"] > abs(m) / np.linalg.norm(w) for row, m in certified)
    _assert_failure_rate(certified, failures, count, alpha)


def test_certified_radius_is_tight_with_many_samples(linear):
    rng = np.random.default_rng(12)
    sigma = 0.5
    xs, w, b = _points(linear, 16, rng, 0.12)
    margin = xs.astype(np.float64) @ w + b
    exact = np.abs(margin) / np.linalg.norm(w)
    keep = (exact / sigma > 0.25) & (exact / sigma < 2.3)  # p_A well inside (1/2, 1)
    sampler = _sampler(linear_apply, linear, int(keep.sum()), 1000)
    rows = C.certify_batch(sampler, xs[keep].reshape(-1, *SHAPE), np.flatnonzero(keep), sigma,
                           C.Settings(n0=100, n=100_000, alpha=0.001), jax.random.key(3))
    ratio = np.array([o.radius for o in rows]) / exact[keep]
    assert keep.sum() >= 8
    assert abs(np.median(ratio) - 1) < 0.05, ratio
    assert np.all(ratio <= 1.0)


def test_anisotropic_ellipsoid_crosses_the_boundary_at_most_alpha(linear):
    """Per-pixel sigma: the ellipsoid ||delta / sigma|| < r crosses w.x + b = 0 iff r ||sigma * w|| > |w.x + b|."""
    rng = np.random.default_rng(13)
    alpha, count = 0.05, 400
    sigma = rng.uniform(0.2, 1.0, size=SHAPE).astype(np.float32)
    xs, w, _ = _points(linear, count, rng, 0.15)
    scale = np.linalg.norm(sigma.reshape(-1).astype(np.float64) * w)
    certified = _certified_rows(linear, xs, sigma, alpha, 8)
    failures = 0
    for row, m in certified:
        r = stats.norm.ppf(row["pA_lower"])  # the ellipsoid's radius in sigma-scaled coordinates
        failures += row["predict"] != int(m > 0) or r * scale > abs(m)
        assert row["radius"] == pytest.approx(float(sigma.min()) * r, rel=1e-12)
        assert row["area_objective"] == pytest.approx(np.log(sigma.astype(np.float64)).sum() + D * np.log(r))
    _assert_failure_rate(certified, failures, count, alpha)
