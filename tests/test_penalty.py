"""The gradient-norm penalty (heat App. C eq. 17-19) against exact Jacobian norms and closed forms."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsmooth.errors import UserError
from jaxsmooth.objectives.penalty import finite_difference_penalty, jacobian_frobenius_sq, projections

B, K = 3, 5
SHAPE = (4, 4, 1)  # D = 16
D = int(np.prod(SHAPE))


def linear(params, x):
    """v(x) = W x + b; J = W for every x."""
    return x.reshape(x.shape[0], -1) @ params["W"].T + params["b"]


def tanh_features(params, x):
    """v(x) = W tanh(x) + b: linear in the parameters, not in x."""
    return jnp.tanh(x.reshape(x.shape[0], -1)) @ params["W"].T + params["b"]


def mlp(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def cnn(params, x):
    h = jax.lax.conv_general_dilated(x, params["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.softplus(h + params["bias"])
    return h.reshape(h.shape[0], -1) @ params["W"] + params["b"]


def _normal(rng, *shape, scale=1.0):
    return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(B, *SHAPE)), jnp.float32)
    linear_params = {"W": _normal(rng, K, D, scale=0.5), "b": _normal(rng, K)}
    mlp_params = {"W1": _normal(rng, D, 16, scale=0.5), "b1": _normal(rng, 16, scale=0.5),
                  "W2": _normal(rng, 16, K, scale=0.5), "b2": _normal(rng, K)}
    cnn_params = {"kernel": _normal(rng, 3, 3, 1, 4, scale=0.5), "bias": _normal(rng, 4, scale=0.5),
                  "W": _normal(rng, D * 4, K, scale=0.2), "b": _normal(rng, K)}
    return x, linear_params, mlp_params, cnn_params


def _penalties_over_keys(apply_fn, x, num_keys, *, kappa, delta):
    """[num_keys, B] penalties, one independent key per row."""
    keys = jax.random.split(jax.random.key(2024), num_keys)
    one = functools.partial(finite_difference_penalty, apply_fn, x, kappa=kappa, delta=delta)
    return jax.jit(jax.vmap(one))(keys)


def _mean_and_standard_error(samples):
    samples = np.asarray(samples, np.float64)
    return samples.mean(0), samples.std(0, ddof=1) / np.sqrt(samples.shape[0])


# --- the exact Jacobian norm -------------------------------------------------------------------


def test_jacobian_frobenius_sq_of_linear_model_is_frobenius_norm_of_w(problem):
    x, params, _, _ = problem
    got = jacobian_frobenius_sq(functools.partial(linear, params), x)
    chex.assert_shape(got, (B,))
    np.testing.assert_allclose(got, np.full(B, np.sum(np.square(params["W"]))), rtol=1e-5)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_jacobian_frobenius_sq_matches_jacfwd_of_the_whole_batch(problem, model):
    x, _, mlp_params, cnn_params = problem
    apply_fn = functools.partial(mlp, mlp_params) if model == "mlp" else functools.partial(cnn, cnn_params)
    full = jax.jacfwd(apply_fn)(x).reshape(B, K, B, D)  # d v(x)_b / d x_c for all b, c
    blocks = full[np.arange(B), :, np.arange(B), :]  # [B, K, D], the per-example Jacobians
    off_diagonal = full.sum() - blocks.sum()
    assert abs(float(off_diagonal)) < 1e-6  # the model treats examples independently
    np.testing.assert_allclose(jacobian_frobenius_sq(apply_fn, x), np.sum(np.square(blocks), (1, 2)), rtol=1e-5)


def test_jacobian_frobenius_sq_of_mlp_matches_closed_form(problem):
    x, _, params, _ = problem
    h = np.tanh(np.asarray(x).reshape(B, D) @ params["W1"] + params["b1"])
    jac = np.einsum("hk,bh,dh->bkd", params["W2"], 1 - h**2, params["W1"])  # W2^T diag(1 - h^2) W1^T
    np.testing.assert_allclose(jacobian_frobenius_sq(functools.partial(mlp, params), x),
                               np.sum(jac**2, (1, 2)), rtol=1e-5)


# --- the estimator: unbiased for linear models, close for smooth ones ---------------------------


@pytest.mark.parametrize("delta", [1e-3, 0.1, 10.0])
def test_linear_model_each_draw_is_the_projected_norm(problem, delta):
    """For v = Wx + b the finite difference is exactly ||W^T w_i|| for every delta (eq. 17-19)."""
    x, params, _, _ = problem
    key, kappa = jax.random.key(7), 6
    got = finite_difference_penalty(functools.partial(linear, params), x, key, kappa=kappa, delta=delta)
    w = projections(key, jnp.arange(B), kappa=kappa, num_outputs=K)  # [B, kappa, K]
    expected = (K / kappa) * np.sum(np.square(np.einsum("bik,kd->bid", w, params["W"])), (1, 2))
    chex.assert_shape(got, (B,))
    np.testing.assert_allclose(got, expected, rtol=2e-3)  # float32 finite differences at delta = 1e-3


@pytest.mark.parametrize("delta", [1e-3, 0.1, 10.0])
def test_linear_model_mean_over_keys_is_frobenius_norm(problem, delta):
    """E_w (K / kappa) sum_i ||W^T w_i||^2 = ||W||_F^2 with w ~ N(0, I/K); 5 standard errors."""
    x, params, _, _ = problem
    samples = _penalties_over_keys(functools.partial(linear, params), x, 500, kappa=4, delta=delta)
    mean, standard_error = _mean_and_standard_error(samples)
    exact = float(np.sum(np.square(params["W"])))
    assert np.all(np.abs(mean - exact) < 5 * standard_error), (mean, exact, standard_error)
    assert np.all(standard_error < 0.05 * exact)  # the tolerance is tight enough to catch a factor K / kappa


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_smooth_models_mean_over_keys_is_within_5_percent_of_exact(problem, model):
    """Finite-difference bias is O(delta) = O(1e-3); 256 keys x 64 projections make the standard error < 1%."""
    x, _, mlp_params, cnn_params = problem
    apply_fn = functools.partial(mlp, mlp_params) if model == "mlp" else functools.partial(cnn, cnn_params)
    samples = _penalties_over_keys(apply_fn, x, 256, kappa=64, delta=1e-3)
    mean, standard_error = _mean_and_standard_error(samples)
    exact = np.asarray(jacobian_frobenius_sq(apply_fn, x), np.float64)
    assert np.all(standard_error < 0.01 * exact)  # so 5% is at least 5 standard errors
    np.testing.assert_allclose(mean, exact, rtol=0.05)


# --- gradients: the direction is a constant ------------------------------------------------------


def _grad_of_mean_penalty(model, params, x, key, *, kappa, delta):
    return jax.grad(lambda p: jnp.mean(finite_difference_penalty(
        lambda z: model(p, z), x, key, kappa=kappa, delta=delta)))(params)


def test_linear_model_gradient_matches_closed_form_with_fixed_direction(problem):
    """d/dW (w^T W g)^2 = 2 (w^T W g) w g^T with g = W^T w / ||W^T w|| held fixed; b drops out."""
    x, params, _, _ = problem
    key, kappa, delta = jax.random.key(3), 4, 0.1
    got = _grad_of_mean_penalty(linear, params, x, key, kappa=kappa, delta=delta)

    w = np.asarray(projections(key, jnp.arange(B), kappa=kappa, num_outputs=K), np.float64)  # [B, kappa, K]
    W = np.asarray(params["W"], np.float64)
    u = w @ W  # [B, kappa, D] = (W^T w)^T
    g = u / np.linalg.norm(u, axis=-1, keepdims=True)
    s = np.einsum("bik,kd,bid->bi", w, W, g)
    expected = (K / kappa) * np.einsum("bi,bik,bid->kd", 2 * s, w, g) / B
    np.testing.assert_allclose(got["W"], expected, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(got["b"], np.zeros(K), atol=1e-4)

    # For affine v the gradient through g vanishes too: g maximises w^T W g on the unit sphere
    # (envelope theorem), so d/dW ||W^T w||^2 = 2 w w^T W gives the same answer.
    through_direction = (K / kappa) * np.einsum("bik,bil,ld->kd", 2 * w, w, W) / B
    np.testing.assert_allclose(through_direction, expected, rtol=1e-6)


def test_gradient_holds_the_direction_constant(problem):
    """On v = W tanh(x) + b the fixed-direction closed form matches; letting g depend on W does not."""
    x, params, _, _ = problem
    key, kappa, delta = jax.random.key(5), 4, 0.5
    got = _grad_of_mean_penalty(tanh_features, params, x, key, kappa=kappa, delta=delta)["W"]

    w = projections(key, jnp.arange(B), kappa=kappa, num_outputs=K)  # [B, kappa, K]
    x_flat = x.reshape(B, D)

    def direction(W):  # g_i = J^T w_i / ||J^T w_i||, J = W diag(1 - tanh(x)^2)
        u = jnp.einsum("bik,kd->bid", w, W) * (1 - jnp.tanh(x_flat) ** 2)[:, None]
        return u / jnp.linalg.norm(u, axis=-1, keepdims=True)

    g = direction(params["W"])
    features = jnp.tanh(x_flat[:, None] + delta * g) - jnp.tanh(x_flat)[:, None]  # [B, kappa, D]
    s = jnp.einsum("bik,kd,bid->bi", w, params["W"], features) / delta
    fixed = (K / kappa) * jnp.einsum("bi,bik,bid->kd", 2 * s, w, features) / delta / B
    np.testing.assert_allclose(got, fixed, rtol=1e-3, atol=1e-5)

    def penalty_through_direction(W):
        shifted = jnp.tanh(x_flat[:, None] + delta * direction(W)) - jnp.tanh(x_flat)[:, None]
        return jnp.mean((K / kappa) * jnp.sum(jnp.square(jnp.einsum("bik,kd,bid->bi", w, W, shifted) / delta), -1))

    through = jax.grad(penalty_through_direction)(params["W"])
    assert float(jnp.linalg.norm(through - fixed)) > 0.05 * float(jnp.linalg.norm(fixed))


# --- zero gradients, keys, jit, errors -----------------------------------------------------------


def test_zero_gradient_gives_zero_direction_and_zero_penalty_without_nan(problem):
    """v(x) = W relu(x - 1) + b: example 0 lies where every gradient is 0 (eq. 19's second case)."""
    _, params, _, _ = problem
    x = jnp.stack([jnp.full(SHAPE, 0.5), jnp.full(SHAPE, 1.5)])  # below / above the kink
    dead_relu = lambda p, z: jax.nn.relu(z.reshape(z.shape[0], -1) - 1.0) @ p["W"].T + p["b"]
    key = jax.random.key(0)
    penalty = finite_difference_penalty(lambda z: dead_relu(params, z), x, key, kappa=3, delta=0.1)
    assert float(penalty[0]) == 0.0 and float(penalty[1]) > 0.0
    grads = _grad_of_mean_penalty(dead_relu, params, x, key, kappa=3, delta=0.1)
    chex.assert_tree_all_finite(grads)

    constant = lambda z: jnp.broadcast_to(params["b"], (z.shape[0], K))
    np.testing.assert_array_equal(finite_difference_penalty(constant, x, key, kappa=3, delta=0.1), np.zeros(2))


def test_draws_follow_the_example_index_not_the_batch_position(problem):
    x, _, mlp_params, _ = problem
    apply_fn = functools.partial(mlp, mlp_params)
    index, order = jnp.asarray([7, 3, 11]), jnp.asarray([2, 0, 1])
    key = jax.random.key(9)
    penalty = functools.partial(finite_difference_penalty, apply_fn, key=key, kappa=5, delta=1e-2)
    np.testing.assert_allclose(penalty(x[order], index=index[order]), penalty(x, index=index)[order], rtol=1e-6)
    assert not np.allclose(penalty(x, index=index), penalty(x))  # a different index, different draws


def test_jit_matches_eager(problem):
    x, _, _, cnn_params = problem
    apply_fn = functools.partial(cnn, cnn_params)
    penalty = functools.partial(finite_difference_penalty, apply_fn, kappa=3, delta=0.1)
    key = jax.random.key(1)
    np.testing.assert_allclose(jax.jit(penalty)(x, key), penalty(x, key), rtol=1e-5)


@pytest.mark.parametrize("field,kwargs", [("kappa", {"kappa": 0, "delta": 0.1}),
                                          ("kappa", {"kappa": 2.5, "delta": 0.1}),
                                          ("delta", {"kappa": 2, "delta": 0.0})])
def test_bad_kappa_or_delta_names_the_field(problem, field, kwargs):
    x, params, _, _ = problem
    with pytest.raises(UserError) as error:
        finite_difference_penalty(functools.partial(linear, params), x, jax.random.key(0), **kwargs)
    assert error.value.field == field
