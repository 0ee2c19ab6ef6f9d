"""PGD, its minimal-distance search and DDN (heat §3.4, Rony et al. 2019) against closed forms and references."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsmooth import attacks
from jaxsmooth.errors import UserError

SHAPE = (4, 4, 1)  # D = 16
D = int(np.prod(SHAPE))


def linear(W, b, x):
    """logits = x_flat W + b; W: [D, K]."""
    return x.reshape(x.shape[0], -1) @ W + b


def mlp(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def _hyperplane_distances(W, b, x, labels):
    """[B, K] float64 (z_y - z_j) / ||w_y - w_j||, inf at j = y: the ell_2 distances to each decision hyperplane."""
    W, b, x = (np.asarray(a, np.float64) for a in (W, b, x))
    z = x.reshape(x.shape[0], -1) @ W + b
    rows = np.arange(len(labels))
    norms = np.linalg.norm(W[:, labels, None] - W[:, None, :], axis=0)  # [B, K]
    distances = (z[rows, labels][:, None] - z) / np.where(norms > 0, norms, 1.0)
    distances[rows, labels] = np.inf
    return distances


@pytest.fixture(scope="module")
def linear_problem():
    """A sharp 3-class linear model and 16 inputs in [0.3, 0.7]^D it classifies correctly, each at distance
    0.03 .. 0.25 from its nearest hyperplane (so clipping to [0, 1] never binds on the shortest path), the next
    hyperplane at least 1.5 times further (so the cross-entropy's gradient points at the nearest one)."""
    rng = np.random.default_rng(0)
    W = 20.0 * rng.normal(size=(D, 3))
    b = -0.5 * W.sum(0)
    x = 0.5 + 0.2 * rng.uniform(-1, 1, size=(4000, D))
    labels = np.argmax(x @ W + b, axis=-1)
    distances = np.sort(_hyperplane_distances(W, b, x, labels), axis=-1)
    keep = (distances[:, 0] > 0.03) & (distances[:, 0] < 0.25) & (distances[:, 1] > 1.5 * distances[:, 0])
    pick = np.nonzero(keep)[0][:16]
    assert len(pick) == 16
    return (jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32),
            jnp.asarray(x[pick].reshape(-1, *SHAPE), jnp.float32), jnp.asarray(labels[pick], jnp.int32),
            distances[pick, 0])


@pytest.fixture(scope="module")
def mlp_params():
    rng = np.random.default_rng(1)
    normal = lambda *shape, scale=1.0: jnp.asarray(scale * rng.normal(size=shape), jnp.float32)
    return {"W1": normal(D, 8, scale=0.8), "b1": normal(8, scale=0.3), "W2": normal(8, 3, scale=2.0),
            "b2": normal(3, scale=0.3)}


@pytest.fixture(scope="module")
def linear_attacks(linear_problem):
    """Jitted minimal-distance attacks on the linear model, each allowed one trace for the whole module."""
    W, b, _, _, _ = linear_problem
    loss = attacks.make_loss(functools.partial(linear, W, b))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def pgd_min_distance(images, labels, key):
        return attacks.pgd_min_distance(loss, images, labels, key, max_epsilon=1.0, steps=20, rounds=12)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def ddn(images, labels, key):
        return attacks.ddn(loss, images, labels, key, steps=100)

    return {"pgd_min_distance": pgd_min_distance, "ddn": ddn}


NUM_NOISE, SIGMA = 4, 0.25
PGD_EPSILON, PGD_STEP = 0.3, 0.5  # one step longer than the ball's radius: the projection binds


def _mlp_attacks(mlp_params, sigma):
    """Jitted ``(images, labels, key, index) -> (one PGD step, 6 DDN steps from eps_0 = 2)`` on batches of 4."""
    loss = attacks.make_loss(functools.partial(mlp, mlp_params), sigma=sigma, num_noise=NUM_NOISE)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(images, labels, key, index):
        return (attacks.pgd(loss, images, labels, key, epsilon=PGD_EPSILON, steps=1, step_size=PGD_STEP, index=index),
                attacks.ddn(loss, images, labels, key, steps=6, init_epsilon=2.0, index=index))

    return run


@pytest.fixture(scope="module")
def smoothed_mlp_attacks(mlp_params):
    return _mlp_attacks(mlp_params, SIGMA)


@pytest.fixture(scope="module")
def deterministic_mlp_attacks(mlp_params):
    return _mlp_attacks(mlp_params, None)


def _mlp_batch(mlp_params, seed, values=None):
    """4 inputs (uniform in [0.2, 0.8], or drawn from `values`) and their clean labels, example 0's label flipped."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, size=(4, *SHAPE)) if values is None else rng.choice(values, size=(4, *SHAPE))
    x = jnp.asarray(x, jnp.float32)
    labels = jnp.argmax(mlp(mlp_params, x), -1)
    return x, labels.at[0].set((labels[0] + 1) % 3), jnp.arange(4, dtype=jnp.int32)


# --- closed form: the minimal ell_2 adversarial of a linear model --------------------------------------------------


@pytest.mark.parametrize("name", ["pgd_min_distance", "ddn"])
def test_minimal_distance_on_a_linear_model_is_the_nearest_hyperplane(linear_problem, linear_attacks, name):
    """min_{j != y} (z_y - z_j) / ||w_y - w_j|| is the smallest ell_2 adversarial: never beaten, reached within 5%."""
    W, b, x, labels, exact = linear_problem
    x, labels, exact = x[:8], labels[:8], exact[:8]
    result = linear_attacks[name](x, labels, jax.random.key(0))
    chex.assert_shape(result.adversarial, x.shape)
    assert bool(jnp.all(result.success))
    distance = np.asarray(result.distance, np.float64)
    np.testing.assert_allclose(distance, np.asarray(attacks.l2_norm(result.adversarial - x)), rtol=1e-6)
    assert np.all(distance >= exact * (1 - 1e-4)), distance / exact
    assert np.all(distance <= exact * 1.05), distance / exact
    # the returned points are misclassified, and the premise holds: clipping to [0, 1] did not bind
    assert bool(jnp.all(jnp.argmax(linear(W, b, result.adversarial), -1) != labels))
    assert bool(jnp.all((result.adversarial > 0) & (result.adversarial < 1)))


def test_attacks_trace_once_for_batches_of_one_shape(linear_problem, linear_attacks, mlp_params,
                                                     smoothed_mlp_attacks):
    """Two batches of the same shape with different keys: one trace each (the fixtures' assert_max_traces(n=1))."""
    _, _, x, labels, _ = linear_problem
    for attack in linear_attacks.values():
        first = attack(x[:8], labels[:8], jax.random.key(1))
        second = attack(x[8:], labels[8:], jax.random.key(2))
        assert not np.array_equal(first.adversarial, second.adversarial)
    for seed in (10, 11):
        x, labels, index = _mlp_batch(mlp_params, seed)
        smoothed_mlp_attacks(x, labels, jax.random.key(seed), index + 4 * seed)


def test_the_model_is_traced_once_whatever_the_number_of_steps(mlp_params):
    """The steps are a lax.fori_loop, not a Python loop: the model is traced the same number of times for 2 and 9."""
    calls = []

    def counting_mlp(x):
        calls.append(None)
        return mlp(mlp_params, x)

    def traces(attack, **kwargs):
        del calls[:]
        jax.make_jaxpr(lambda x, y, k: attack(attacks.make_loss(counting_mlp, sigma=0.25, num_noise=3), x, y, k,
                                               **kwargs))(jnp.zeros((2, *SHAPE)), jnp.zeros(2, jnp.int32),
                                                          jax.random.key(0))
        return len(calls)

    assert traces(attacks.pgd, epsilon=0.5, steps=2, step_size=0.1) == traces(attacks.pgd, epsilon=0.5, steps=9,
                                                                               step_size=0.1)
    assert traces(attacks.ddn, steps=2) == traces(attacks.ddn, steps=9)
    assert traces(attacks.pgd_min_distance, max_epsilon=1.0, steps=2, rounds=2) == traces(
        attacks.pgd_min_distance, max_epsilon=1.0, steps=9, rounds=5)


# --- the gradient steps: heat eq. 8 and eq. 9 ------------------------------------------------------------------------


def _explicit_noise(key, index, num_noise, sigma):
    """[B, n, H, W, C]: example b's draws are sigma * normal(fold_in(key, index[b]), (n, H, W, C))."""
    return jax.vmap(lambda i: sigma * jax.random.normal(jax.random.fold_in(key, i), (num_noise, *SHAPE)))(index)


def _textbook_loss(logits, labels, reference):
    """[B] cross-entropy (reference None) or KL(reference || softmax), written the plain way."""
    log_q = jax.nn.log_softmax(logits, axis=-1)
    if reference is None:
        return -jnp.take_along_axis(log_q, labels[:, None], axis=-1)[:, 0]
    return jnp.sum(reference * (jnp.log(reference) - log_q), axis=-1)


def test_smoothed_gradient_is_the_gradient_of_the_monte_carlo_loss(mlp_params):
    """heat eq. 9: grad_x (1/n) sum_i sum_b L(f(x_b + eta_bi)), eta drawn explicitly; success from the mean softmax."""
    x, labels, _ = _mlp_batch(mlp_params, 2)
    index, key = jnp.asarray([7, 3, 11, 5]), jax.random.key(5)
    reference = jax.nn.softmax(mlp(mlp_params, x), axis=-1)  # KL's p_clean; any fixed distribution would do
    make = functools.partial(attacks.make_loss, functools.partial(mlp, mlp_params), sigma=SIGMA, num_noise=NUM_NOISE)

    @jax.jit
    def library_and_explicit(x, labels, reference, key):
        eta = _explicit_noise(key, index, NUM_NOISE, SIGMA)

        def monte_carlo_loss(x, reference):
            return sum(jnp.sum(_textbook_loss(mlp(mlp_params, x + eta[:, i]), labels, reference))
                       for i in range(NUM_NOISE)) / NUM_NOISE

        mean_softmax = sum(jax.nn.softmax(mlp(mlp_params, x + eta[:, i]), -1) for i in range(NUM_NOISE)) / NUM_NOISE
        library = {"ce": make(loss="ce").gradient(x, labels, None, key, index),
                   "kl": make(loss="kl").gradient(x, labels, reference, key, index)}
        explicit = {"ce": jax.grad(monte_carlo_loss)(x, None), "kl": jax.grad(monte_carlo_loss)(x, reference)}
        return library, explicit, make().success(x, labels, key, index), mean_softmax

    library, explicit, success_only, mean_softmax = library_and_explicit(x, labels, reference, key)
    expected_success = np.argmax(mean_softmax, -1) != np.asarray(labels)
    assert 0 < int(expected_success.sum()) < 4  # both outcomes occur
    np.testing.assert_array_equal(success_only, expected_success)
    for loss in ("ce", "kl"):
        grad, success = library[loss]
        chex.assert_shape(grad, x.shape)
        np.testing.assert_allclose(grad, explicit[loss], rtol=1e-5, atol=1e-6, err_msg=loss)
        np.testing.assert_array_equal(success, expected_success)


@pytest.mark.parametrize("form", ["deterministic", "smoothed"])
def test_one_pgd_step_is_heat_eq_8_or_9(request, mlp_params, form):
    """x_1 = clip(x + Proj_eps(alpha g / ||g||)), g the cross-entropy's gradient (eq. 8), or its mean over the draws
    of fold_in(key, 0) (eq. 9); examples adversarial at x stay there."""
    run = request.getfixturevalue(f"{form}_mlp_attacks")
    x, labels, index = _mlp_batch(mlp_params, 3)
    key = jax.random.key(8)
    pgd, _ = run(x, labels, key, index)

    @jax.jit
    def explicit_step(x, labels, key):
        if form == "smoothed":
            eta = _explicit_noise(jax.random.fold_in(key, 0), index, NUM_NOISE, SIGMA)
        else:
            eta = jnp.zeros((4, 1, *SHAPE))
        draws = range(eta.shape[1])
        g = jax.grad(lambda z: sum(jnp.sum(_textbook_loss(mlp(mlp_params, z + eta[:, i]), labels, None))
                                   for i in draws))(x)
        step = min(PGD_STEP, PGD_EPSILON) * g / attacks.l2_norm(g)[:, None, None, None]
        mean_softmax = sum(jax.nn.softmax(mlp(mlp_params, x + eta[:, i]), -1) for i in draws)
        adversarial_at_start = jnp.argmax(mean_softmax, -1) != labels
        return jnp.where(adversarial_at_start[:, None, None, None], x, jnp.clip(x + step, 0, 1)), adversarial_at_start

    expected, adversarial_at_start = explicit_step(x, labels, key)
    assert 0 < int(adversarial_at_start.sum()) < 4  # both branches are exercised
    np.testing.assert_allclose(pgd.adversarial, expected, rtol=1e-5, atol=1e-6)


def _logit_gradient(target, z, top):
    """float64 softmax(z) - target with its `top` entry as minus the sum of the others (no 1 - p cancellation)."""
    e = np.exp(z - z[top])
    q = e / e.sum()
    g = q - target
    g[top] = -(np.sum(g) - g[top])
    return g


def test_cross_entropy_and_kl_gradients_stay_exact_when_the_model_is_confident():
    """At a logit margin of 30, float32 softmax(z) - one_hot(y) rounds 1 - p_y to 0; the attack losses do not."""
    rng = np.random.default_rng(5)
    W32 = jnp.asarray(rng.normal(size=(D, 3)), jnp.float32)
    x32 = jnp.full((1, *SHAPE), 0.5)
    b32 = jnp.asarray([30.0, 0.0, -2.0]) - linear(W32, jnp.zeros(3), x32)[0]
    fn = functools.partial(linear, W32, b32)
    W = np.asarray(W32, np.float64)
    z = np.asarray(x32, np.float64).reshape(-1) @ W + np.asarray(b32, np.float64)  # the float32 model, in float64

    grad, _ = jax.jit(attacks.make_loss(fn).gradient)(x32, jnp.asarray([0]), None, None)
    np.testing.assert_allclose(np.asarray(grad).reshape(-1), W @ _logit_gradient(np.eye(3)[0], z, 0), rtol=1e-4)

    r32 = jnp.asarray([[1 - 2e-9, 1e-9, 1e-9]], jnp.float32)  # 1 - 2e-9 is 1.0 in float32
    r = np.asarray([1 - 2e-9, 1e-9, 1e-9])
    grad, _ = jax.jit(attacks.make_loss(fn, loss="kl").gradient)(x32, jnp.asarray([0]), r32, None)
    np.testing.assert_allclose(np.asarray(grad).reshape(-1), W @ _logit_gradient(r, z, 0), rtol=1e-4)


# --- freezing, the box, the ball, failures --------------------------------------------------------------------------


def test_successful_examples_stop_moving(linear_problem):
    """An example that succeeds keeps that point: more steps do not move it; one misclassified from the start stays."""
    W, b, x, labels, _ = linear_problem
    x, labels = x[:6], labels[:6].at[0].set((labels[0] + 1) % 3)  # example 0 starts misclassified
    attack_loss = attacks.make_loss(functools.partial(linear, W, b))

    @jax.jit
    def short_and_long(x, labels, key):
        run = functools.partial(attacks.pgd, attack_loss, x, labels, key, epsilon=1.0, step_size=0.02)
        return run(steps=3), run(steps=15)

    short, long = short_and_long(x, labels, jax.random.key(0))
    assert 1 < int(short.success.sum()) < 6 and bool(jnp.all(long.success))
    np.testing.assert_array_equal(long.adversarial[short.success], short.adversarial[short.success])
    np.testing.assert_array_equal(long.distance[short.success], short.distance[short.success])
    np.testing.assert_array_equal(short.adversarial[0], x[0])
    assert float(short.distance[0]) == 0.0


@pytest.mark.parametrize("form", ["deterministic", "smoothed"])
def test_outputs_stay_in_the_box_and_pgd_in_its_ball(request, mlp_params, form):
    """Inputs at the edges of [0, 1] with steps that overshoot them: every output is in [0, 1], PGD within epsilon."""
    run = request.getfixturevalue(f"{form}_mlp_attacks")
    x, labels, index = _mlp_batch(mlp_params, 6, values=[0.0, 0.02, 0.98, 1.0])
    pgd, ddn = run(x, labels, jax.random.key(3), index)
    for result in (pgd, ddn):
        assert bool(jnp.all((result.adversarial >= 0) & (result.adversarial <= 1)))
        assert bool(jnp.any((result.adversarial == 0) & (x > 0)) | jnp.any((result.adversarial == 1) & (x < 1)))
        np.testing.assert_array_equal(np.isfinite(result.distance), result.success)
    assert bool(jnp.all(attacks.l2_norm(pgd.adversarial - x) <= PGD_EPSILON * (1 + 1e-5)))


def test_an_unattackable_model_gives_inf():
    """Constant logits: nothing is ever adversarial; success False, distance inf, points still in [0, 1]."""
    attack_loss = attacks.make_loss(lambda x: jnp.zeros((x.shape[0], 3)) + jnp.asarray([1.0, 0.0, 0.0]))

    @jax.jit
    def both(x, labels, key):
        return (attacks.pgd_min_distance(attack_loss, x, labels, key, max_epsilon=1.0, steps=3, rounds=2),
                attacks.ddn(attack_loss, x, labels, key, steps=5))

    for result in both(jnp.full((2, *SHAPE), 0.5), jnp.zeros(2, jnp.int32), jax.random.key(0)):
        assert not bool(jnp.any(result.success))
        assert np.all(np.isinf(result.distance))
        assert bool(jnp.all((result.adversarial >= 0) & (result.adversarial <= 1)))


# --- success: top-1 and top-5 ---------------------------------------------------------------------------------------


def test_top5_success_differs_from_top1_where_the_label_is_ranked_2nd_to_5th():
    """Label ranked 1st, 3rd, 6th, and tied for 5th: top-1 success F T T T, top-5 success F F T F."""
    base = jnp.arange(10.0)[::-1]  # class c has logit 9 - c, so class c is ranked (c + 1)-th
    logits = jnp.stack([base, base, base, base.at[5].set(base[4])])
    labels = jnp.asarray([0, 2, 5, 5])
    np.testing.assert_array_equal(attacks.is_adversarial(logits, labels, 1), [False, True, True, True])
    np.testing.assert_array_equal(attacks.is_adversarial(logits, labels, 5), [False, False, True, False])

    fn = lambda z: logits + 0.0 * z.reshape(4, -1)[:, :1]

    @jax.jit
    def successes(x, labels, key):  # smoothed: the mean softmax over the draws ranks the classes as the logits do
        return [attacks.make_loss(fn, sigma=sigma, topk=k, num_noise=2).success(x, labels, key)
                for sigma, k in [(None, 1), (None, 5), (0.5, 5)]]

    top1, top5, smoothed_top5 = successes(jnp.zeros((4, *SHAPE)), labels, jax.random.key(0))
    np.testing.assert_array_equal(top1, [False, True, True, True])
    np.testing.assert_array_equal(top5, [False, False, True, False])
    np.testing.assert_array_equal(smoothed_top5, [False, False, True, False])


# --- reproducibility and errors -------------------------------------------------------------------------------------


def test_smoothed_attacks_follow_the_key_and_the_example_index_not_the_batch(mlp_params, smoothed_mlp_attacks):
    """Permuting a batch with its indices permutes the results; another key gives other draws, other results."""
    x, labels, _ = _mlp_batch(mlp_params, 7)
    index, order = jnp.asarray([10, 11, 12, 13]), jnp.asarray([2, 0, 3, 1])
    results = smoothed_mlp_attacks(x, labels, jax.random.key(4), index)
    permuted = smoothed_mlp_attacks(x[order], labels[order], jax.random.key(4), index[order])
    other_key = smoothed_mlp_attacks(x, labels, jax.random.key(5), index)
    for result, result_permuted, result_other_key in zip(results, permuted, other_key):
        np.testing.assert_allclose(result_permuted.adversarial, result.adversarial[order], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(result_permuted.success, result.success[order])
        assert not np.allclose(result_other_key.adversarial, result.adversarial)


@pytest.mark.parametrize("field,make", [
    ("loss", lambda: attacks.make_loss(jnp.sin, loss="mse")),
    ("topk", lambda: attacks.make_loss(jnp.sin, topk=0)),
    ("sigma", lambda: attacks.make_loss(jnp.sin, sigma=0.0)),
    ("num_noise", lambda: attacks.make_loss(jnp.sin, sigma=0.1, num_noise=0)),
    ("epsilon", lambda: attacks.pgd(attacks.make_loss(jnp.sin), jnp.zeros((1, *SHAPE)), jnp.zeros(1, jnp.int32),
                                    jax.random.key(0), epsilon=-1.0, steps=1, step_size=0.1)),
    ("steps", lambda: attacks.ddn(attacks.make_loss(jnp.sin), jnp.zeros((1, *SHAPE)), jnp.zeros(1, jnp.int32),
                                  jax.random.key(0), steps=0)),
    ("gamma", lambda: attacks.ddn(attacks.make_loss(jnp.sin), jnp.zeros((1, *SHAPE)), jnp.zeros(1, jnp.int32),
                                  jax.random.key(0), steps=3, gamma=1.5)),
])
def test_bad_settings_name_the_field(field, make):
    with pytest.raises(UserError) as error:
        make()
    assert error.value.field == field
