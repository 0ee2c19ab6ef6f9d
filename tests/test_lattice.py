"""Lattice noise: the drawn law against the discretised normal, exact draws, the floating-point failure it fixes,
and the alpha-rate soundness of its certificates on linear classifiers."""

import bisect
import decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxsmooth
from jaxsmooth import certification as C, parallel, results
from jaxsmooth.certification import engine, lattice, noises
from jaxsmooth.errors import UserError

from helpers import counts_across_layouts

SHAPE = (2, 5, 1)
D = 10


def linear_apply(params, model_state, x, train=False):
    """Two classes: logit_1 = w.x + b, logit_0 = 0; so f(x) = 1[w.x + b > 0]."""
    z = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
    return jnp.stack([jnp.zeros_like(z), z], -1), model_state


def discretised_normal(sigma: float, m: np.ndarray) -> np.ndarray:
    """P(m) = Phi((m + 1/2) / s) - Phi((m - 1/2) / s), s = 255 sigma (lattice eq. 1), by scipy (tails from sf)."""
    a, s = np.abs(m), 255 * sigma
    return stats.norm.sf((a - 0.5) / s) - stats.norm.sf((a + 0.5) / s)


def grid_points(count, rng, scale=0.15):
    """[count, D] 8-bit images around 0.5: k/255 with k = round(255 (0.5 + N(0, scale^2))), clipped to 0..255."""
    k = np.clip(np.round(255 * (0.5 + scale * rng.normal(size=(count, D)))), 0, 255)
    return np.divide(k, 255, dtype=np.float32)


# --------------------------------------------------------------------------
# The tables and the draw


def test_normal_cdf_to_60_digits_matches_scipy():
    for x in (0.0, 1e-3, 0.5, 1.0, 2.5, 5.0, 8.0, 9.5):
        ours = lattice._normal_cdf(decimal.Decimal(x))
        assert float(ours) == pytest.approx(stats.norm.cdf(x), abs=2e-16)
        assert float(1 - ours) == pytest.approx(stats.norm.sf(x), rel=1e-13)  # the tail, to relative precision
    assert lattice._normal_cdf(decimal.Decimal(0)) == decimal.Decimal("0.5")


def test_table_law_is_the_discretised_normal_within_its_stated_bound():
    t = lattice.table(0.25)
    assert sum(t.weights) == 2**64 and min(t.weights) >= 0
    assert t.low == -int(np.ceil(lattice.TAIL * 255 * 0.25))
    m = np.arange(t.low, -t.low + 1)
    # the drawn law W_m / 2^64 against (1) from scipy, in total variation
    assert 0.5 * np.abs(t.pmf() - discretised_normal(0.25, m)).sum() < 1e-13  # scipy's float64 error
    # and the stated bound eps, checked exactly in 60-digit arithmetic (Phi checked against scipy above)
    s, two64 = decimal.Decimal(255 * 0.25), decimal.Decimal(2) ** 64
    cdf = [lattice._normal_cdf((decimal.Decimal(int(v)) + decimal.Decimal("0.5")) / s) for v in m[:-1]]
    outside = lattice._normal_cdf((t.low - decimal.Decimal("0.5")) / s)  # below the first bin; as much above the last
    ideal = [c1 - c0 for c0, c1 in zip([outside] + cdf, cdf + [1 - outside])]
    tv = (sum(abs(wm / two64 - p) for wm, p in zip(t.weights, ideal)) + 2 * outside) / 2
    assert tv <= decimal.Decimal(t.tv) and t.tv < 4e-17
    assert t.weights == t.weights[::-1]  # symmetric
    assert lattice.total_variation(0.25, (28, 28, 1)) == pytest.approx(784 * t.tv)


def _stage_reference(t: lattice.Table):
    """m for 32-bit words (u, v) by the two stages written from the weights alone, with Python's bisect."""
    a = [w >> 32 for w in t.weights]
    b = [w & 0xFFFFFFFF for w in t.weights]
    base = sum(a)  # 2^32 - R: stage 1 takes the words below it
    cum_a = list(np.cumsum(a)[:-1])
    cum_b = [int(c) for c in np.cumsum(np.array(b, dtype=object))[:-1]]

    def m_of(u, v):
        if u < base:
            return t.low + bisect.bisect_right(cum_a, u)
        return t.low + bisect.bisect_right(cum_b, ((u - base) << 32) | v)

    return m_of, base, cum_a, cum_b


def test_two_stage_search_is_exactly_the_tables_law():
    """Stage 1 maps u to m with A_m preimages of 2^32, stage 2 (u, v) with B_m of R 2^32: the law W_m / 2^64.

    Both the jitted search and the reference are non-decreasing step functions
    of u (stage 1) and of (u, v) (stage 2); agreeing at every step and one
    word below it, they agree everywhere.
    """
    t = lattice.table(0.25)
    m_of, base, cum_a, cum_b = _stage_reference(t)
    assert base < 2**32 - 100  # stage 2 is reachable: R = 2^32 - base bins' worth of remainders
    words = set()
    for c in cum_a:
        words |= {(c - 1, 0), (c, 0), (c, 2**32 - 1)}
    for c in cum_b:
        u, v = base + (c >> 32), c & 0xFFFFFFFF
        words |= {(u, v), (u, max(v - 1, 0)), (max(u - 1, base), 2**32 - 1), (u, min(v + 1, 2**32 - 1))}
    words |= {(0, 0), (2**32 - 1, 2**32 - 1), (base, 0), (base - 1, 2**32 - 1)}
    rng = np.random.default_rng(0)
    words |= set(zip(rng.integers(0, 2**32, 20_000).tolist(), rng.integers(0, 2**32, 20_000).tolist()))
    words |= set(zip(rng.integers(base, 2**32, 20_000).tolist(), rng.integers(0, 2**32, 20_000).tolist()))
    u, v = (np.array(w, np.uint64).astype(np.uint32) for w in zip(*sorted(words)))

    @jax.jit
    def search(u, v, arrays):
        first, rare = lattice.first_stage(u, arrays)
        return jnp.where(rare, lattice.second_stage(u, v, arrays), first)

    ours = np.asarray(search(u, v, t.arrays))
    assert ours.tolist() == [m_of(int(a), int(b)) for a, b in zip(u, v)]


@pytest.mark.slow
def test_chi_square_of_ten_million_draws_accepts_sigma_and_rejects_two_percent_off():
    """The sampler's own noise function, 10^7 draws of m at sigma 0.25, against (1) at sigma and at sigma x 1.02^+-1."""
    sigma, examples, chunk, pixels = 0.25, 10, 1000, 1000
    kind = noises.get("lattice")
    draw = jax.jit(lambda x, arrays, key, index: engine.noisy_inputs(kind, x, arrays, key, index, jnp.int32(0), chunk))
    noisy = draw(jnp.zeros((examples, pixels)), lattice.table(sigma).arrays, jax.random.key(7),
                 jnp.arange(examples, dtype=jnp.int32))
    m = np.rint(np.asarray(noisy, np.float64) * 255).astype(np.int64).ravel()
    assert m.size == 10**7 and np.array_equal(noisy, (m.astype(np.float32) * np.float32(1 / 255)).reshape(noisy.shape))
    low = m.min()
    observed = np.bincount(m - low)
    values = np.arange(low, low + observed.size)

    def pvalue(target_sigma):
        """Pearson's chi-square of the counts against (1), cells with >= 20 expected, the two tails pooled."""
        expected = m.size * discretised_normal(target_sigma, values)
        keep = np.flatnonzero(expected >= 20)
        first, last, s = values[keep[0]], values[keep[-1]], 255 * target_sigma
        obs = np.concatenate([[observed[:keep[0]].sum()], observed[keep], [observed[keep[-1] + 1:].sum()]])
        exp = np.concatenate([[m.size * stats.norm.cdf((first - 0.5) / s)], expected[keep],
                              [m.size * stats.norm.sf((last + 0.5) / s)]])
        return stats.chi2.sf(np.sum((obs - exp) ** 2 / exp), obs.size - 1), obs.size

    p, cells = pvalue(sigma)
    assert cells > 300 and p > 1e-3, p
    assert pvalue(sigma * 1.02)[0] < 1e-12 and pvalue(sigma / 1.02)[0] < 1e-12


def test_second_stage_in_the_sampler_is_exact_and_chunk_invariant():
    """Example 379 of key(0) draws a stage-2 word at sample 1542 (probability ~1e-7 a pixel): found, not assumed."""
    sigma, index, n = 0.25, 379, 2048
    t = lattice.table(sigma)
    m_of, base, _, _ = _stage_reference(t)
    key = jax.random.key(0)
    keys = engine._sample_keys(key, jnp.array([index]), jnp.int32(0), n)[0]
    u = np.asarray(jax.vmap(lambda k: jax.random.bits(k, SHAPE, jnp.uint32))(keys)).astype(np.int64)
    v = np.asarray(jax.vmap(lambda k: jax.random.bits(jax.random.fold_in(k, lattice.SECOND_WORD), SHAPE,
                                                      jnp.uint32))(keys)).astype(np.int64)
    assert (u >= base).sum() >= 1 and (u[1542] >= base).any()
    expected = np.vectorize(m_of)(u, v)
    x = np.zeros((1, *SHAPE), np.float32)
    for chunk in (n, 300):
        noise = jax.jit(lambda first, chunk=chunk: engine.noisy_inputs(noises.get("lattice"), jnp.asarray(x), t.arrays,
                                                                        key, jnp.array([index]), first, chunk))
        got = np.concatenate([np.asarray(noise(jnp.int32(f)))[0] for f in range(0, n, chunk)])[:n]
        np.testing.assert_array_equal(np.rint(got.astype(np.float64) * 255).astype(np.int64), expected)


@pytest.mark.slow
def test_counts_are_equal_across_devices_chunks_and_grouping(devices):
    rng = np.random.default_rng(1)
    w = rng.normal(size=D).astype(np.float32)
    params = {"w": w, "b": np.float32(-0.5 * w.sum())}
    x = grid_points(5, rng).reshape(5, *SHAPE)
    index, key = np.array([3, 17, 4, 100, 379]), jax.random.key(0)
    counts_across_layouts(lambda n_devices, inputs, chunk: C.Sampler(
        linear_apply, params, {}, input_shape=SHAPE, num_classes=2, inputs=inputs, chunk=chunk,
        mesh=parallel.make_mesh(devices[:n_devices]), noise="lattice"), x, index, 0.5, 3001, key,
        [(1, 5, 64), (8, 5, 7), (3, 2, 50)])


def test_inputs_off_the_grid_and_per_pixel_sigma_are_refused():
    sampler = C.Sampler(linear_apply, {"w": np.ones(D, np.float32), "b": np.float32(0)}, {}, input_shape=SHAPE,
                        num_classes=2, inputs=1, chunk=10, noise="lattice")
    x = np.full((1, *SHAPE), 3 / 255, np.float32)
    for bad, needle in [(x + np.float32(0.001), "x[0, 0, 0, 0] = 0.0127"), (-x, "x[0, 0, 0, 0] = -0.0117"),
                        (x * 255 / 254 * 100, "is not one")]:
        with pytest.raises(UserError) as e:
            sampler(bad, [0], 0.25, 10, jax.random.key(0))
        assert e.value.field == "x" and "8-bit images" in str(e.value) and needle in str(e.value)
    with pytest.raises(UserError) as e:
        sampler(x, [0], np.full(SHAPE, 0.25), 10, jax.random.key(0))
    assert e.value.field == "sigma" and "scalar" in str(e.value)
    with pytest.raises(UserError) as e:
        C.Sampler(linear_apply, {}, {}, input_shape=SHAPE, num_classes=2, noise="uniform")
    assert e.value.field == "noise" and "lattice, gaussian" in str(e.value)


def test_certificate_lowers_pa_by_the_total_variation():
    counts, alpha, sigma, tv = np.array([30, 99_970]), 0.001, 0.25, 1e-3
    plain = C.certificate(1, counts, alpha, sigma)
    lowered = C.certificate(1, counts, alpha, sigma, tv=tv)
    assert lowered.pa_lower == pytest.approx(plain.pa_lower - tv, abs=1e-15)
    assert lowered.radius == pytest.approx(sigma * stats.norm.ppf(plain.pa_lower - tv), rel=1e-12)
    assert C.certificate(1, np.array([490, 510]), alpha, sigma, tv=0.2).label == C.ABSTAIN
    assert C.topk_radius(1, np.array([100, 9000, 900]), 1, alpha, sigma, tv=tv) < \
        C.topk_radius(1, np.array([100, 9000, 900]), 1, alpha, sigma)


def test_resumed_file_refuses_another_noise_and_reads_earlier_files_as_gaussian(tmp_path):
    cols = ["idx", "label"]
    header = {field: None for field in results.CERTIFY.identity if field not in results.CERTIFY.defaults}
    header |= {"mode": "certify"}
    path = str(tmp_path / "old.tsv")
    with open(path, "w") as f:  # the earlier format, written before the noise field existed
        f.write('# jaxsmooth certify {"mode": "certify"}\n' + "idx\tlabel\n0\t1\n")
    assert results.Writer(path, results.CERTIFY, header | {"noise": "gaussian"}, cols, enabled=False).done == [0]
    with pytest.raises(UserError) as e:
        results.Writer(path, results.CERTIFY, header | {"noise": "lattice"}, cols, enabled=False)
    assert e.value.field == "out" and "noise='gaussian', not 'lattice'" in str(e.value)
    path = str(tmp_path / "new.tsv")
    results.Writer(path, results.CERTIFY, header | {"noise": "lattice"}, cols).close()
    with pytest.raises(UserError) as e:
        results.Writer(path, results.CERTIFY, header | {"noise": "gaussian"}, cols)
    assert "noise='lattice', not 'gaussian'" in str(e.value)


def test_api_noise_auto_is_lattice_for_8bit_inputs_and_a_scalar_sigma():
    grid = np.divide(np.arange(40).reshape(4, *SHAPE), 255, dtype=np.float32)
    assert noises.choose("auto", 0.25, grid).name == "lattice"
    assert noises.choose("auto", 0.25, grid + np.float32(1e-3)).name == "gaussian"
    assert noises.choose("auto", np.full(SHAPE, 0.25), grid).name == "gaussian"
    assert noises.choose("gaussian", 0.25, grid).name == "gaussian"
    logits = lambda p, x: linear_apply(p, {}, x)[0]  # noqa: E731
    params = {"w": np.ones(D, np.float32), "b": np.float32(0)}
    for noise, x, field in [("uniform", grid, "noise"), ("lattice", grid + np.float32(1e-3), "x")]:
        with pytest.raises(UserError) as e:
            jaxsmooth.api.certify(logits, params, x, sigma=0.25, n0=10, n=100, noise=noise, compiler_options=None)
        assert e.value.field == field


# --------------------------------------------------------------------------
# The floating-point failure (Voracek & Hein 2023, §3), reproduced and fixed

ROUNDING_SIGMA = 0.25  # a power of two: sigma * (sqrt(2) * erfinv(u)) rounds alike in any order
ROUNDING_SHAPE = (8, 8, 1)


def rounding_apply(params, model_state, y, train=False):
    """Class 0 iff every pixel / sigma is a float32 product fl(sqrt(2) e): what 0 + sigma z is, and x + sigma z rarely.

    jax's normal is fl(fl(sqrt 2) erfinv(u)), so at x = 0 every coordinate of
    the float noisy input passes; multiplication by sqrt 2 reaches about 83% of
    the floats, so fl(x + sigma z) passes about that often per pixel.
    Constants are parameters, so XLA cannot fold them (it would turn
    (y / c) * c into y times a rounded constant).
    """
    t = y.reshape(y.shape[0], -1) * params["inverse_sigma"]  # exact: a power of two
    w = t / params["root2"]
    member = jnp.zeros(t.shape, bool)
    for step in (-2, -1, 0, 1, 2):  # the preimage is within 2 ulps of t / sqrt 2 (and the division may be 1 off)
        c = w
        for _ in range(abs(step)):
            c = jnp.nextafter(c, jnp.float32(np.inf if step > 0 else -np.inf))
        member = member | (c * params["root2"] == t)
    a = jnp.all(member, -1)
    return jnp.stack([a, ~a], -1).astype(jnp.float32), model_state


@pytest.mark.slow
def test_continuous_noise_certifies_a_radius_that_a_lattice_point_violates_and_lattice_noise_does_not():
    params = {"inverse_sigma": np.float32(1 / ROUNDING_SIGMA), "root2": np.float32(np.sqrt(2))}
    x0 = np.zeros((1, *ROUNDING_SHAPE), np.float32)
    x1 = np.full((1, *ROUNDING_SHAPE), 25 / 255, np.float32)  # an 8-bit image at distance 0.784
    distance = float(np.linalg.norm(x1 - x0))
    settings, check_n, check_alpha = C.Settings(n0=100, n=100_000, alpha=0.001), 100_000, 1e-9
    certificates = {}
    for noise in ("gaussian", "lattice"):
        sampler = C.Sampler(rounding_apply, params, {}, input_shape=ROUNDING_SHAPE, num_classes=2, inputs=1,
                            chunk=10_000, noise=noise)
        cert = C.certify_batch(sampler, x0, np.array([0]), ROUNDING_SIGMA, settings, jax.random.key(0))[0]
        counts = sampler(x1, np.array([1]), ROUNDING_SIGMA, check_n, jax.random.key(1)).counts[0]
        certificates[noise] = (cert, counts)
    cert, at_x1 = certificates["gaussian"]
    # continuous noise: class 0 certified beyond x1, where the smoothed classifier (as it runs) says class 1
    assert cert.predict == 0 and cert.count_a == settings.n and cert.radius > distance > 0.78
    assert C.clopper_pearson_upper(at_x1[0], check_n, check_alpha) < 0.5
    # lattice noise: whatever it certifies at x0 holds at x1
    cert, at_x1 = certificates["lattice"]
    if cert.predict != C.ABSTAIN and cert.radius > distance:
        assert C.clopper_pearson_lower(at_x1[cert.predict], check_n, check_alpha) > 0.5
    assert cert.predict != 0  # class 0 at x0 was the float artefact


# --------------------------------------------------------------------------
# Soundness on linear classifiers: f(x) = 1[w.x + b > 0]. The lattice-smoothed classifier at a lattice point x'
# is the sign of w.x' + b (the noise is symmetric), so a certificate of radius R at x fails iff an 8-bit image
# across the hyperplane lies within R. Every such image is at least |w.x + b| / ||w|| away: counting a failure
# whenever R exceeds that distance overcounts failures (a sound test); an explicit image across, rounded from the
# mirror point, undercounts them (how a wrong variant is shown to fail).


def _lattice_certificates(params, xs, sigma, alpha, seed):
    """CERTIFY through the public API, 50 inputs per forward pass of 50 x 20 samples."""
    logits = lambda p, x: linear_apply(p, {}, x)[0]  # noqa: E731
    return jaxsmooth.api.certify(logits, params, xs.reshape(-1, *SHAPE), sigma=sigma, n0=50, n=1000, alpha=alpha,
                             seed=seed, batch=1000, inputs=50, compiler_options=None, noise="lattice")


def _witness_within(x, w, b, radius):
    """Whether an 8-bit image across w.x + b = 0 lies within `radius` of x (found by rounding mirror points)."""
    margin = float(x @ w + b)
    for t in np.linspace(1.0, 1.3, 7):
        y = np.clip(np.round(255 * (x - t * margin / (w @ w) * w)), 0, 255) / 255
        if np.sign(y @ w + b) != np.sign(margin) and np.linalg.norm(y - x) < radius:
            return True
    return False


@pytest.mark.parametrize("variant", ["sound", "sigma_too_small"])
def test_lattice_certificates_fail_at_most_alpha_on_linear_classifiers(variant, monkeypatch):
    rng = np.random.default_rng(21)
    alpha, sigma, count = 0.05, 0.5, 400
    w = rng.normal(size=D)
    params = {"w": w.astype(np.float32), "b": np.float32(-0.5 * w.sum())}
    w, b = params["w"].astype(np.float64), float(params["b"])
    xs = grid_points(count, rng)
    if variant == "sigma_too_small":  # draws noise narrower than the sigma the radius is computed with
        table = lattice.table
        monkeypatch.setattr(lattice, "table", lambda s: table(0.7 * s))
    rows = _lattice_certificates(params, xs, sigma, alpha, 5)
    margins = xs.astype(np.float64) @ w + b
    certified = [(row, x, m) for row, x, m in zip(rows, xs.astype(np.float64), margins) if row["predict"] != C.ABSTAIN]
    assert len(certified) > count / 2  # most points are certified: the test has power
    bound = alpha + 3 * np.sqrt(alpha * (1 - alpha) / count)
    if variant == "sound":
        failures = sum(row["predict"] != int(m > 0) or row["radius"] > abs(m) / np.linalg.norm(w)
                       for row, _, m in certified)
        assert failures / count <= bound
    else:
        failures = sum(row["predict"] != int(m > 0) or _witness_within(x, w, b, row["radius"])
                       for row, x, m in certified)
        assert failures / count > bound
