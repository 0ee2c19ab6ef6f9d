"""nal (nal Alg. 1, eq. 6), wrm and smoothadv against closed forms and identities on tiny models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsmooth import config as config_lib
from jaxsmooth import noise, objectives
from jaxsmooth.errors import UserError
from jaxsmooth.objectives import nal, smoothadv

H, W, C, K, B = 4, 4, 1, 3, 5
D = H * W * C


def linear_apply(params, model_state, x, *, train):
    del train
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"], model_state


def tanh_apply(params, model_state, x, *, train):
    """A one-hidden-layer tanh network with a BatchNorm-like running mean (updated in training mode only)."""
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w"])
    if train:
        model_state = {"mean": 0.9 * model_state["mean"] + 0.1 * h.mean(0)}
    return (h - model_state["mean"]) @ params["v"] + params["b"], model_state


def _config(name="nal", **fields):
    """`name`'s config: `sigma` sets objective.sigma, the other fields its own block."""
    c = config_lib.default()
    c.objective.name = name
    for k, v in fields.items():
        (c.objective if k == "sigma" else c[name])[k] = v
    return c


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(0.5 * rng.normal(size=(D, 8)), jnp.float32),
              "v": jnp.asarray(0.5 * rng.normal(size=(8, K)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(K,)), jnp.float32)}
    state = {"mean": jnp.zeros((8,), jnp.float32)}
    batch = {"image": jnp.asarray(rng.uniform(size=(B, H, W, C)), jnp.float32),
             "label": jnp.asarray([0, 1, 2, 1, 0], jnp.int32),
             "index": jnp.asarray([7, 3, 11, 0, 42], jnp.int32)}
    return params, state, batch


def _linear_loss(w):
    """l(s) = w . s per draw: s [N, r, D] -> [N, r]."""
    return lambda s: jnp.einsum("nrd,d->nr", s, w)


@pytest.mark.parametrize("steps", [1, 5])
def test_one_newton_step_reaches_the_sample_maximiser(steps):
    # F(x) = (1/r) sum_j [w.(x + z_j) - gamma ||x + z_j - x0||^2]; grad = w - 2 gamma (x + zbar - x0),
    # so with eta_1 = 0.5/gamma one step lands on its maximiser x* - zbar, x* = x0 + w/(2 gamma),
    # and further steps stay there. With c(x, x0) the maximiser is x* itself.
    rng = np.random.default_rng(1)
    gamma, sigma, r, n = 0.7, 0.3, 4, 6
    w = jnp.asarray(rng.normal(size=D), jnp.float32)
    x0 = jnp.asarray(rng.uniform(size=(n, D)), jnp.float32)
    z = sigma * jax.random.normal(jax.random.key(0), (n, r, D))
    x_star = x0 + w / (2 * gamma)
    kw = dict(gamma=gamma, steps=steps, lr=0.5 / gamma)
    x_k = nal.inner_maximize(_linear_loss(w), x0, z, cost_with_noise=True, **kw)
    np.testing.assert_allclose(x_k, x_star - z.mean(1), atol=1e-5)
    x_k = nal.inner_maximize(_linear_loss(w), x0, z, cost_with_noise=False, **kw)
    np.testing.assert_allclose(x_k, np.broadcast_to(x_star, x_k.shape), atol=1e-5)


def test_surrogate_matches_the_closed_form_in_expectation():
    # sup_x E_Z[w.(x+z) - gamma ||x+z-x0||^2] = w.x0 + ||w||^2/(4 gamma) - gamma d sigma^2 (nal Thm 1's phi).
    # At x_K = x* - zbar the in-sample phi is w.x0 + ||w||^2/(4 gamma) - gamma mean_j ||z_j - zbar||^2, whose mean
    # is closed + gamma d sigma^2 / r (the sup of a sample mean is biased up); phi at x_K on fresh draws z' is
    # biased down by the same amount (x_K misses x* by zbar): E = closed - gamma d sigma^2 / r.
    rng = np.random.default_rng(2)
    gamma, sigma, r, n = 0.5, 0.5, 4, 4000
    w = jnp.asarray(rng.normal(size=D), jnp.float32)
    x0 = jnp.asarray(rng.uniform(size=(n, D)), jnp.float32)
    kz, kf = jax.random.split(jax.random.key(3))
    z, fresh = (sigma * jax.random.normal(k, (n, r, D)) for k in (kz, kf))
    loss = _linear_loss(w)
    x_k = nal.inner_maximize(loss, x0, z, gamma=gamma, steps=1, lr=0.5 / gamma)
    closed = np.asarray(x0 @ w) + float(w @ w) / (4 * gamma) - gamma * D * sigma**2
    bias = gamma * D * sigma**2 / r
    for draws, sign in ((z, +1), (fresh, -1)):
        diff = np.asarray(nal.surrogate(loss, x_k, x0, draws, gamma=gamma), np.float64) - closed
        se = diff.std() / np.sqrt(n)
        assert abs(diff.mean() - sign * bias) < 3 * se, (diff.mean(), sign * bias, se)
        assert abs(diff.mean()) > 3 * se  # the bias is real, not within the noise


@pytest.mark.slow
def test_parameter_gradient_flows_only_through_the_noisy_loss(problem):
    params, state, batch = problem
    c = _config(sigma=0.3, gamma=2.0, num_noise=3, ascent_steps=3)
    key = jax.random.key(9)
    loss_fn = objectives.build(c, tanh_apply)
    (value, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, batch, key)

    z = noise.isotropic_draws(key, batch["index"], (H, W, C), 0.3, 3)
    inner = nal.draw_losses(tanh_apply, params, state, batch["label"], train=False)
    x_k = nal.inner_maximize(inner, batch["image"], z, gamma=2.0, steps=3, lr=0.25)
    assert float(jnp.abs(x_k - batch["image"]).max()) > 1e-3  # the ascent moved

    def fixed(p):
        v, a = nal.noisy_loss(tanh_apply, p, state, x_k, z, batch["label"])
        return v, a
    (value_fixed, aux_fixed), grads_fixed = jax.value_and_grad(fixed, has_aux=True)(params)
    np.testing.assert_allclose(float(value), float(value_fixed), rtol=1e-5)
    chex.assert_trees_all_close(grads, grads_fixed, rtol=1e-4, atol=1e-6)
    # training mode for the parameter loss: the new BatchNorm-like state is returned
    chex.assert_trees_all_close(aux["model_state"], aux_fixed["model_state"])
    assert float(jnp.abs(aux["model_state"]["mean"] - state["mean"]).max()) > 0
    # the cost metric is rho-hat, the mean transport cost of x_K (nal eq. 3)
    np.testing.assert_allclose(float(aux["metrics"]["cost"]),
                               float(nal.transport_cost(x_k, batch["image"], z).mean()), rtol=1e-5)


def test_noisy_loss_differs_from_differentiating_through_the_ascent(problem):
    # The stop_gradient matters: the total derivative through x_K(theta) is a different vector.
    params, state, batch = problem
    z = noise.isotropic_draws(jax.random.key(9), batch["index"], (H, W, C), 0.3, 3)

    def through(p):
        inner = nal.draw_losses(tanh_apply, p, state, batch["label"], train=False)
        x_k = nal.inner_maximize(inner, batch["image"], z, gamma=2.0, steps=3, lr=0.25)
        return nal.noisy_loss(tanh_apply, p, state, x_k, z, batch["label"])[0]
    full = jax.grad(through)(params)
    stopped, _ = jax.grad(objectives.build(_config(sigma=0.3, gamma=2.0, num_noise=3, ascent_steps=3), tanh_apply),
                          has_aux=True)(params, state, batch, jax.random.key(9))
    assert float(jnp.abs(full["w"] - stopped["w"]).max()) > 1e-5


def test_zero_steps_is_gaussian_training_with_r_draws(problem):
    params, state, batch = problem
    key = jax.random.key(4)
    value, _ = objectives.build(_config(sigma=0.3, ascent_steps=0, num_noise=2), tanh_apply)(params, state, batch, key)
    z = noise.isotropic_draws(key, batch["index"], (H, W, C), 0.3, 2)
    logits, _ = tanh_apply(params, state, (batch["image"][:, None] + z).reshape(2 * B, H, W, C), train=True)
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64).reshape(B, 2, K))
    expected = -np.mean(np.take_along_axis(np.asarray(logp), np.asarray(batch["label"])[:, None, None], -1))
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


@pytest.mark.slow
def test_strong_concavity_gives_one_maximiser_from_any_start(problem):
    # nal Cor. 1: l = softmax probability of the true class, bounded by M = 1; with gamma >= 2M / sigma^2
    # the objective is strongly concave, so ascents from x0 and from a far point meet.
    params, state, batch = problem
    sigma, r = 0.5, 8
    gamma = 2 * 1.0 / sigma**2

    def prob_loss(s):
        b = s.shape[0]
        logits, _ = tanh_apply(params, state, s.reshape(b * r, H, W, C), train=False)
        p = jax.nn.softmax(logits.reshape(b, r, K))
        return jnp.take_along_axis(p, batch["label"][:, None, None], -1)[..., 0]

    x0 = batch["image"]
    z = noise.isotropic_draws(jax.random.key(5), batch["index"], (H, W, C), sigma, r)
    far = x0 + 3.0 * jax.random.normal(jax.random.key(6), x0.shape)
    kw = dict(gamma=gamma, steps=60, lr=0.1 / gamma, cost_with_noise=True, clip=False)
    a = nal._ascend(prob_loss, x0, x0, z, **kw)
    b = nal._ascend(prob_loss, far, x0, z, **kw)
    assert float(jnp.abs(far - x0).max()) > 1.0
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(a, nal.inner_maximize(prob_loss, x0, z, **kw), atol=1e-6)
    # a fixed point: the gradient of the surrogate vanishes there
    g = jax.grad(lambda x: nal.surrogate(prob_loss, x, x0, z, gamma=gamma).sum())(a)
    assert float(jnp.abs(g).max()) < 1e-3


def test_wrm_is_nal_without_noise(problem):
    params, state, batch = problem
    key = jax.random.key(8)
    wrm = objectives.build(_config("wrm", sigma=0.3, gamma=1.5, ascent_steps=3), tanh_apply)
    nal_loss = objectives.build(_config(sigma=0.0, gamma=1.5, num_noise=1, ascent_steps=3), tanh_apply)
    (v1, a1), g1 = jax.value_and_grad(wrm, has_aux=True)(params, state, batch, key)
    (v2, a2), g2 = jax.value_and_grad(nal_loss, has_aux=True)(params, state, batch, key)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6)
    chex.assert_trees_all_close(g1, g2)
    chex.assert_trees_all_close(a1["metrics"], a2["metrics"])
    assert float(a1["metrics"]["cost"]) > 0  # and it is adversarial: x_K moved away from x0


@pytest.mark.slow
def test_smoothadv_stays_in_its_ball_and_raises_the_smoothed_loss(problem):
    params, state, batch = problem
    eps, m = 0.5, 4
    z = noise.isotropic_draws(jax.random.key(2), batch["index"], (H, W, C), 0.25, m)
    inner = nal.draw_losses(tanh_apply, params, state, batch["label"], train=False)
    x0 = batch["image"]
    for steps in (1, 3, 10):
        x_adv = smoothadv.attack(inner, x0, z, epsilon=eps, steps=steps)
        dist = np.sqrt(np.sum(np.square(np.asarray(x_adv - x0)), axis=(1, 2, 3)))
        assert np.all(dist <= eps * (1 + 1e-5)) and np.all(dist > 0.5 * eps)
        assert np.all(smoothadv.soft_smoothed_loss(inner, x_adv, z) > smoothadv.soft_smoothed_loss(inner, x0, z))
    x_adv = smoothadv.attack(inner, x0 * 0 + 0.99, z, epsilon=eps, steps=5, clip=True)
    assert float(x_adv.max()) <= 1.0 and float(x_adv.min()) >= 0.0
    # the objective descends the noisy cross-entropy at the attack's point, with the attack's noise
    key = jax.random.key(2)
    value, aux = objectives.build(_config("smoothadv", sigma=0.25, epsilon=eps, num_noise=m, pgd_steps=3),
                                  tanh_apply)(params, state, batch, key)
    x_adv = smoothadv.attack(inner, x0, z, epsilon=eps, steps=3)
    expected, _ = nal.noisy_loss(tanh_apply, params, state, x_adv, z, batch["label"])
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-5)
    assert float(aux["metrics"]["perturbation"]) <= eps * (1 + 1e-5)


def test_soft_smoothed_loss_is_minus_log_mean_softmax():
    logits = jax.random.normal(jax.random.key(0), (2, 3, K))
    labels = jnp.asarray([0, 2])
    ce = lambda s: -jnp.take_along_axis(jax.nn.log_softmax(s), labels[:, None, None], -1)[..., 0]  # noqa: E731
    got = smoothadv.soft_smoothed_loss(lambda s: ce(s), jnp.zeros((2, K)), logits)
    p = np.asarray(jax.nn.softmax(logits))
    np.testing.assert_allclose(got, -np.log(p[np.arange(2), :, np.asarray(labels)].mean(1)), rtol=1e-5)


@pytest.mark.parametrize("field, value", [("gamma", 0.0), ("gamma", -1.0), ("num_noise", 0), ("ascent_steps", -1)])
def test_bad_options_name_their_field(field, value):
    c = _config(**{field: value})
    with pytest.raises(UserError) as info:
        config_lib.validate(c)
    assert info.value.field == f"nal.{field}" and "must be" in info.value.message
    with pytest.raises(UserError) as info:
        objectives.build(c, linear_apply)
    assert info.value.field == f"nal.{field}"


def test_smoothadv_bad_epsilon():
    c = _config("smoothadv", epsilon=0.0)
    with pytest.raises(UserError) as info:
        objectives.build(c, linear_apply)
    assert info.value.field == "smoothadv.epsilon"
    with pytest.raises(UserError) as info:
        config_lib.validate(c)
    assert info.value.field == "smoothadv.epsilon"


def test_steps_are_a_scan_not_a_python_loop(problem):
    params, state, batch = problem
    counts = {}
    for steps in (1, 5):
        traces = []

        def counting_apply(p, s, x, *, train):
            traces.append(train)
            return tanh_apply(p, s, x, train=train)
        loss_fn = jax.jit(jax.grad(objectives.build(_config(ascent_steps=steps), counting_apply), has_aux=True))
        jax.block_until_ready(loss_fn(params, state, batch, jax.random.key(0)))
        counts[steps] = traces
    # one trace of the scan body's inference-mode forward, one training-mode forward for theta, whatever K
    assert counts[1] == counts[5] == [False, True], counts
