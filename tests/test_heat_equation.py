"""The heat objective solves the heat equation: n_T timesteps smooth a step towards its Gaussian convolution."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import stats

from jaxsmooth import objectives

SIGMA, TIMESTEPS = 0.3, 5
GRID = np.linspace(-2.0, 2.0, 256, dtype=np.float32)


def mlp_apply(params, model_state, x, *, train):
    """1-D regression net [B, 1, 1, 1] -> [B, 1]: two softplus layers of 64."""
    h = x.reshape(x.shape[0], 1)
    for layer in params["hidden"]:
        h = jax.nn.softplus(h @ layer["w"] + layer["b"])
    return h @ params["out"]["w"] + params["out"]["b"], model_state


def init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    dense = lambda k, m, n: {"w": jax.random.normal(k, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)}
    return {"hidden": [dense(k1, 1, 64), dense(k2, 64, 64)], "out": dense(k3, 64, 1)}


def fit(loss, params, steps, lr):
    tx = optax.adam(lr)

    @jax.jit
    def step(params, opt_state, key):
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params, key)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for i in range(steps):
        params, opt_state = step(params, opt_state, jax.random.key(i))
    return params


def predict(params, x):
    return np.asarray(mlp_apply(params, {}, jnp.asarray(x).reshape(-1, 1, 1, 1), train=False)[0][:, 0])


def gaussian_convolution(f, x, sigma):
    """(f * N(0, sigma^2))(x) by quadrature over +-6 sigma."""
    t = np.linspace(-6 * sigma, 6 * sigma, 601)
    weights = stats.norm.pdf(t, scale=sigma) * (t[1] - t[0])
    return np.array([np.sum(f(xi - t) * weights) for xi in x])


@pytest.mark.slow
def test_heat_timesteps_approach_the_gaussian_convolution_of_a_step():
    batch = {"image": jnp.asarray(GRID).reshape(-1, 1, 1, 1), "index": jnp.arange(GRID.size, dtype=jnp.int32)}
    step_values = jnp.asarray((GRID > 0).astype(np.float32))[:, None]

    def fit_step(params, key):
        return jnp.mean(jnp.square(mlp_apply(params, {}, batch["image"], train=True)[0] - step_values)), {}

    f0 = fit(fit_step, init(jax.random.key(0)), 1500, 1e-2)  # the non-smooth target f, as a network
    f = lambda x: predict(f0, x)

    config = ml_collections.ConfigDict({"objective": {"name": "heat", "sigma": SIGMA}, "heat": {
        "lam": 1.0, "kappa": 4, "delta": 1e-3, "distance": "l2", "timesteps": TIMESTEPS, "epochs_per_timestep": 1}})
    v, teacher = f0, f0
    for _ in range(TIMESTEPS):  # Algorithm 1: each timestep distils the previous one's frozen network
        loss = objectives.build(config, mlp_apply, (teacher, {}))
        v = fit(lambda p, key: loss(p, {}, batch, key), v, 400, 3e-3)
        teacher = v

    inner = np.abs(GRID) < 1.5  # away from the ends of the data
    target = gaussian_convolution(f, GRID[inner], SIGMA)
    error_f = np.sqrt(np.mean((f(GRID[inner]) - target) ** 2))
    error_v = np.sqrt(np.mean((predict(v, GRID[inner]) - target) ** 2))
    assert error_f > 0.1  # f is far from smooth: the comparison has power
    assert error_v < 0.35 * error_f, (error_v, error_f)
    # The paper's weight h sigma^2 / 2 (lambda = 1) makes each timestep an implicit Euler step of
    # u_t = sigma^2 u_xx, whose solution at t = 1 is f * N(0, 2 sigma^2): v is closer still to that.
    wide = gaussian_convolution(f, GRID[inner], np.sqrt(2) * SIGMA)
    assert np.sqrt(np.mean((predict(v, GRID[inner]) - wide) ** 2)) < 0.5 * error_v
