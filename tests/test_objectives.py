"""Objectives: hand-computed values on a tiny linear model; gaussian -> standard as sigma -> 0."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxsmooth import noise, objectives
from jaxsmooth.errors import UserError

H, W, C, K, B = 4, 4, 1, 3, 5


def linear_apply(params, model_state, x, *, train):
    del train
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"], model_state


def _config(name, sigma=0.25):
    c = ml_collections.ConfigDict()
    c.objective = ml_collections.ConfigDict({"name": name, "sigma": sigma})
    return c


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(H * W * C, K)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(K,)), jnp.float32)}
    batch = {"image": jnp.asarray(rng.uniform(size=(B, H, W, C)), jnp.float32),
             "label": jnp.asarray([0, 1, 2, 1, 0], jnp.int32),
             "index": jnp.asarray([7, 3, 11, 0, 42], jnp.int32)}
    return params, batch


def _numpy_cross_entropy(logits, labels):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def test_standard_matches_hand_computed(problem):
    params, batch = problem
    loss_fn = objectives.build(_config("standard"), linear_apply)
    loss, aux = loss_fn(params, {}, batch, jax.random.key(0))
    x = np.asarray(batch["image"]).reshape(B, -1)
    expected = _numpy_cross_entropy(x @ np.asarray(params["w"]) + np.asarray(params["b"]), np.asarray(batch["label"]))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert set(aux) == {"model_state", "metrics"} and "accuracy" in aux["metrics"]


def test_gaussian_matches_hand_computed_with_documented_keys(problem):
    params, batch = problem
    sigma = 0.5
    root, step = jax.random.key(123), 17
    step_key = noise.step_key(root, step)
    loss, _ = objectives.build(_config("gaussian", sigma), linear_apply)(params, {}, batch, step_key)
    # The noise of example i is sigma * N(0, I) from fold_in(fold_in(root, step), index_i)
    # (docs/design.md, "Randomness").
    eta = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(root, step), int(i)), (H, W, C)))
                    for i in batch["index"]])
    x = (np.asarray(batch["image"]) + sigma * eta).reshape(B, -1)
    expected = _numpy_cross_entropy(x @ np.asarray(params["w"]) + np.asarray(params["b"]), np.asarray(batch["label"]))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_gaussian_tends_to_standard_as_sigma_vanishes(problem):
    params, batch = problem
    key = jax.random.key(1)
    standard = objectives.build(_config("standard"), linear_apply)
    gaussian = objectives.build(_config("gaussian", 1e-7), linear_apply)
    (l0, _), g0 = jax.value_and_grad(standard, has_aux=True)(params, {}, batch, key)
    (l1, _), g1 = jax.value_and_grad(gaussian, has_aux=True)(params, {}, batch, key)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    chex.assert_trees_all_close(g1, g0, atol=1e-5)
    # and a real sigma does change it
    l2, _ = objectives.build(_config("gaussian", 0.5), linear_apply)(params, {}, batch, key)
    assert abs(float(l2) - float(l0)) > 1e-3


def test_noise_follows_the_example_not_its_position(problem):
    params, batch = problem
    key = jax.random.key(5)
    perm = jnp.asarray([3, 0, 4, 1, 2])
    shuffled = jax.tree.map(lambda v: v[perm], batch)
    eta = noise.isotropic(key, batch["index"], (H, W, C), 1.0)
    eta_shuffled = noise.isotropic(key, shuffled["index"], (H, W, C), 1.0)
    chex.assert_trees_all_close(eta_shuffled, eta[perm])
    chex.assert_shape(eta, (B, H, W, C))


def test_noise_statistics():
    eta = noise.isotropic(jax.random.key(0), jnp.arange(2000), (8, 8, 1), 0.25)
    z = np.asarray(eta).ravel() / 0.25
    n = z.size
    # mean and variance of N(0, 1) within 5 standard errors
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2.0 / n)


def test_unknown_objective():
    with pytest.raises(UserError) as info:
        objectives.build(_config("gausian"), linear_apply)
    assert info.value.field == "objective.name"
