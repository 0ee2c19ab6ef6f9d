"""heat (heat eq. 4, Alg. 1) and bootcamp (bootcamp eq. 10, §4) against hand computations on tiny models."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxsmooth import config as config_lib
from jaxsmooth import noise, objectives
from jaxsmooth.errors import UserError
from jaxsmooth.objectives.heat import distance
from jaxsmooth.objectives.penalty import finite_difference_penalty

H, W, C, K, B = 4, 4, 1, 3, 6
D = H * W * C


def linear_apply(params, model_state, x, *, train):
    del train
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"], model_state


def bn_apply(params, model_state, x, *, train):
    """tanh features centred like BatchNorm: by the batch mean in training, else the running one."""
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w"])
    if train:
        mu = h.mean(0)
        model_state = {"mean": 0.9 * model_state["mean"] + 0.1 * mu}
    else:
        mu = model_state["mean"]
    return (h - mu) @ params["v"] + params["b"], model_state


def _config(name, *, sigma=0.25, lam=5.0, timesteps=5, distance_name="", kappa=K, delta=0.1):
    """heat's or bootcamp's config; distance "": the default of the objective's block."""
    c = ml_collections.ConfigDict()
    c.objective = ml_collections.ConfigDict({"name": name, "sigma": sigma})
    c.heat = ml_collections.ConfigDict({"lam": lam, "kappa": kappa, "delta": delta, "timesteps": timesteps,
                                        "distance": distance_name or objectives.get("heat").defaults().distance,
                                        "epochs_per_timestep": 1})
    distance = distance_name or objectives.get("bootcamp").defaults().distance
    c.bootcamp = ml_collections.ConfigDict({"kappa": kappa, "delta": delta, "num_epochs": 1, "distance": distance})
    return c


def _linear_params(rng, scale=0.5):
    return {"w": jnp.asarray(scale * rng.normal(size=(D, K)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(K,)), jnp.float32)}


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    params, teacher = _linear_params(rng), _linear_params(rng)
    batch = {"image": jnp.asarray(rng.uniform(size=(B, H, W, C)), jnp.float32),
             "index": jnp.asarray([7, 3, 11, 0, 42, 5], jnp.int32)}
    return params, teacher, batch


def _logits(params, x):
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    return x @ np.asarray(params["w"], np.float64) + np.asarray(params["b"], np.float64)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _numpy_distance(name, v, f):
    if name == "l2":
        return 0.5 * np.sum((v - f) ** 2, -1)
    if name == "softmax_l2":
        return 0.5 * np.sum((_softmax(v) - _softmax(f)) ** 2, -1)
    p, q = _softmax(f), _softmax(v)
    return np.sum(p * (np.log(p) - np.log(q)), -1)


@pytest.mark.parametrize("name", ["l2", "kl", "softmax_l2"])
def test_distance_matches_numpy_and_vanishes_on_equal_outputs(name):
    rng = np.random.default_rng(1)
    v, f = 3 * rng.normal(size=(5, 7)), 3 * rng.normal(size=(5, 7))
    got = distance(name, jnp.asarray(v, jnp.float32), jnp.asarray(f, jnp.float32))
    chex.assert_shape(got, (5,))
    np.testing.assert_allclose(np.asarray(got), _numpy_distance(name, v, f), rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(got) >= 0)
    np.testing.assert_allclose(np.asarray(distance(name, jnp.asarray(v), jnp.asarray(v))), 0.0, atol=1e-6)


@pytest.mark.parametrize("name", ["l2", "kl", "softmax_l2"])
def test_heat_without_penalty_is_the_distance_to_the_teacher(problem, name):
    params, teacher, batch = problem
    loss_fn = objectives.build(_config("heat", lam=0.0, distance_name=name), linear_apply, (teacher, {}))
    loss, aux = loss_fn(params, {}, batch, jax.random.key(0))
    expected = _numpy_distance(name, _logits(params, batch["image"]), _logits(teacher, batch["image"])).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert set(aux["metrics"]) == {"distance", "penalty", "loss"}


def test_heat_with_itself_as_teacher_is_the_weighted_penalty(problem):
    params, _, batch = problem
    sigma, lam, n_t, key = 0.5, 3.0, 4, jax.random.key(9)
    loss_fn = objectives.build(_config("heat", sigma=sigma, lam=lam, timesteps=n_t), linear_apply, (params, {}))
    loss, aux = loss_fn(params, {}, batch, key)
    penalty = finite_difference_penalty(lambda z: linear_apply(params, {}, z, train=True)[0], batch["image"], key,
                                        kappa=K, delta=0.1, index=batch["index"])
    np.testing.assert_allclose(float(aux["metrics"]["distance"]), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(loss), lam * sigma**2 / (2 * n_t) * float(penalty.mean()), rtol=1e-5)
    # For a linear v the estimate is unbiased for ||W||_F^2 (and positive).
    assert float(aux["metrics"]["penalty"]) > 0


@pytest.mark.parametrize("name", ["heat", "bootcamp"])
def test_labels_are_never_read(problem, name):
    params, teacher, batch = problem
    loss_fn = objectives.build(_config(name), linear_apply, (teacher, {}))
    key = jax.random.key(3)
    (l0, _), g0 = jax.value_and_grad(loss_fn, has_aux=True)(params, {}, batch, key)  # no "label" at all
    garbage = dict(batch, label=jnp.asarray([-5, 99, 1, 2**30, 0, 7], jnp.int32))
    (l1, _), g1 = jax.value_and_grad(loss_fn, has_aux=True)(params, {}, garbage, key)
    assert float(l0) == float(l1)
    chex.assert_trees_all_equal(g0, g1)


@pytest.mark.parametrize("name", ["heat", "bootcamp"])
def test_no_gradient_flows_into_the_teacher(problem, name):
    params, _, batch = problem
    config, key = _config(name), jax.random.key(4)

    def through_teacher(p):  # the teacher is the differentiated parameters themselves
        return objectives.build(config, linear_apply, (p, {}))(p, {}, batch, key)[0]

    constant = objectives.build(config, linear_apply, (params, {}))
    g_traced = jax.grad(through_teacher)(params)
    g_const = jax.grad(lambda p: constant(p, {}, batch, key)[0])(params)
    chex.assert_trees_all_close(g_traced, g_const, atol=1e-6)
    g_teacher = jax.grad(lambda t: objectives.build(config, linear_apply, (t, {}))(params, {}, batch, key)[0])(params)
    chex.assert_trees_all_close(g_teacher, jax.tree.map(jnp.zeros_like, params))


def test_heat_returns_the_main_pass_batch_statistics_and_uses_an_eval_mode_teacher():
    rng = np.random.default_rng(2)
    params = {"w": jnp.asarray(rng.normal(size=(D, 4)), jnp.float32),
              "v": jnp.asarray(rng.normal(size=(4, K)), jnp.float32), "b": jnp.zeros((K,), jnp.float32)}
    state = {"mean": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    x = jnp.asarray(rng.uniform(size=(B, H, W, C)), jnp.float32)
    batch = {"image": x, "index": jnp.arange(B, dtype=jnp.int32)}
    loss, aux = objectives.build(_config("heat", lam=0.0), bn_apply, (params, state))(params, state, batch,
                                                                                     jax.random.key(0))
    chex.assert_trees_all_close(aux["model_state"], bn_apply(params, state, x, train=True)[1])
    # lam = 0: the distance between v in training mode and the same weights in inference mode.
    v = np.asarray(bn_apply(params, state, x, train=True)[0], np.float64)
    f = np.asarray(bn_apply(params, state, x, train=False)[0], np.float64)
    assert abs(v - f).max() > 1e-3
    np.testing.assert_allclose(float(loss), _numpy_distance("l2", v, f).mean(), rtol=1e-5)


def test_bootcamp_noises_exactly_the_first_half_with_documented_keys(problem):
    params, teacher, batch = problem
    sigma, key = 0.5, jax.random.key(11)
    seen = {True: [], False: []}

    def recording_apply(p, s, x, *, train):
        if not isinstance(x, jax.core.Tracer):  # the penalty's passes run under jax transformations
            seen[train].append(np.asarray(x))
        return linear_apply(p, s, x, train=train)

    objectives.build(_config("bootcamp", sigma=sigma), recording_apply, (teacher, {}))(params, {}, batch, key)
    (teacher_seen,), x_seen = seen[False], seen[True][0]  # the teacher's one call; v's main forward pass
    noise_key, _ = jax.random.split(key)
    eta = np.asarray(noise.isotropic(noise_key, batch["index"], (H, W, C), sigma))
    x = np.asarray(batch["image"])
    np.testing.assert_allclose(x_seen[: B // 2], x[: B // 2] + eta[: B // 2], rtol=1e-6)
    np.testing.assert_array_equal(x_seen[B // 2:], x[B // 2:])
    assert np.all(np.abs(x_seen[: B // 2] - x[: B // 2]).reshape(B // 2, -1).max(-1) > 0.1)
    np.testing.assert_array_equal(teacher_seen, x)  # eq. 10: the frozen model sees the clean x


def test_bootcamp_penalty_weight_is_half_sigma_squared(problem):
    params, _, batch = problem
    sigma, key = 0.5, jax.random.key(12)
    loss, _ = objectives.build(_config("bootcamp", sigma=sigma, lam=77.0, timesteps=9), linear_apply,
                               (params, {}))(params, {}, batch, key)
    noise_key, penalty_key = jax.random.split(key)
    eta = noise.isotropic(noise_key, batch["index"], (H, W, C), sigma)
    noisy = batch["image"].at[: B // 2].add(eta[: B // 2])
    penalty = finite_difference_penalty(lambda z: linear_apply(params, {}, z, train=True)[0], noisy, penalty_key,
                                        kappa=K, delta=0.1, index=batch["index"])
    # the teacher (here equal to v) sees the clean x, v the half-noised batch: the distance is not 0
    dist = _numpy_distance("softmax_l2", _logits(params, noisy), _logits(params, batch["image"])).mean()
    np.testing.assert_allclose(float(loss), dist + sigma**2 / 2 * float(penalty.mean()), rtol=1e-5)


@pytest.mark.parametrize("configured, used", [("", "softmax_l2"), ("kl", "kl"), ("l2", "l2")])
def test_bootcamp_tends_to_its_distance_as_sigma_vanishes(problem, configured, used):
    params, teacher, batch = problem
    loss, _ = objectives.build(_config("bootcamp", sigma=1e-6, distance_name=configured), linear_apply,
                               (teacher, {}))(params, {}, batch, jax.random.key(13))
    expected = _numpy_distance(used, _logits(params, batch["image"]), _logits(teacher, batch["image"])).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["heat", "bootcamp"])
def test_a_missing_teacher_is_refused(name):
    with pytest.raises(UserError):
        objectives.build(_config(name), linear_apply)


@pytest.mark.slow
def test_heat_on_a_tiny_cnn_with_itself_as_teacher_is_the_weighted_penalty():
    from jaxsmooth import models
    model = models.split(models.create("cnn", num_classes=K, input_shape=(8, 8, 1), mean=(0.5,), std=(0.25,), width=2))
    batch = {"image": jax.random.uniform(jax.random.key(0), (4, 8, 8, 1)), "index": jnp.arange(4, dtype=jnp.int32)}
    key = jax.random.key(1)
    loss_fn = objectives.build(_config("heat", distance_name="kl"), model.apply, (model.params, model.model_state))
    (loss, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(model.params, model.model_state, batch, key)
    penalty = finite_difference_penalty(lambda z: model.apply(model.params, model.model_state, z, train=True)[0],
                                        batch["image"], key, kappa=K, delta=0.1, index=batch["index"])
    np.testing.assert_allclose(float(aux["metrics"]["distance"]), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(loss), 5.0 * 0.25**2 / (2 * 5) * float(penalty.mean()), rtol=1e-4)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# --------------------------------------------------------------------------
# Config


def _heat_config(*overrides):
    c = config_lib.default()
    config_lib.apply_overrides(c, ["objective.name=heat", "train.init_from=/tmp/pretrained", *overrides])
    return c


def test_defaults_follow_heat_cifar10_and_validate():
    c = _heat_config()
    config_lib.validate(c)
    o = c.heat
    # each objective's own distance (heat: l2, the paper's CIFAR-10 choice; bootcamp: softmax_l2)
    assert (o.lam, o.kappa, o.delta, o.distance, o.timesteps, o.epochs_per_timestep) == (5.0, 10, 0.1, "l2", 5, 1)
    b = c.bootcamp
    assert (b.kappa, b.delta, b.distance, b.num_epochs) == (10, 0.1, "softmax_l2", 1)
    assert config_lib.default().train.init_from == ""
    config_lib.validate(_heat_config("objective.name=bootcamp"))
    config_lib.validate(_heat_config("heat.lam=0"))


@pytest.mark.parametrize("override, field", [
    ("heat.lam=-1", "heat.lam"),
    ("heat.kappa=0", "heat.kappa"),
    ("heat.delta=0", "heat.delta"),
    ("heat.delta=-0.1", "heat.delta"),
    ("heat.distance=l1", "heat.distance"),
    ("heat.timesteps=0", "heat.timesteps"),
    ("heat.epochs_per_timestep=0", "heat.epochs_per_timestep"),
])
def test_each_bad_field_is_named(override, field):
    with pytest.raises(UserError) as info:
        config_lib.validate(_heat_config(override))
    assert info.value.field == field


@pytest.mark.parametrize("name", ["heat", "bootcamp"])
def test_distilling_objectives_need_a_pretrained_model(name):
    c = config_lib.default()
    config_lib.apply_overrides(c, [f"objective.name={name}"])
    with pytest.raises(UserError) as info:
        config_lib.validate(c)
    assert info.value.field == "train.init_from" and "pretrained" in info.value.message
