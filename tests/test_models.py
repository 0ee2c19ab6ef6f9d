"""Models: shapes, parameter counts, BatchNorm state, normalisation, dtype, errors, tracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsmooth import models

CIFAR = (32, 32, 3)


def _model(name, shape=CIFAR, classes=10, **kwargs):
    c = shape[-1]
    kwargs.setdefault("mean", (0.5,) * c)
    kwargs.setdefault("std", (0.25,) * c)
    return models.split(models.create(name, num_classes=classes, input_shape=shape, **kwargs))


def _x(shape, batch=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, *shape)), jnp.float32)


@pytest.mark.parametrize("name, shape, classes, params", [
    ("cnn", (28, 28, 1), 10, 3_274_634),  # 32/64 filters, 1,024 hidden units
    ("cnn", (8, 8, 1), 10, 325_514),
    ("resnet20", CIFAR, 10, 272_474),
    ("resnet56", CIFAR, 10, 855_770),
    ("resnet110", CIFAR, 10, 1_730_714),  # "about 1.7M" (Cohen et al.'s CIFAR-10 model)
    ("resnet18", CIFAR, 10, 11_173_962),
    ("resnet34", CIFAR, 10, 21_282_122),
    ("vgg16", CIFAR, 10, 14_728_266),
    ("resnet50", (32, 32, 3), 1000, 25_557_032),  # torchvision's ResNet-50: 25,557,032
])
def test_output_shape_and_parameter_count(name, shape, classes, params):
    m = _model(name, shape, classes)
    logits, _ = m.apply(m.params, m.model_state, _x(shape), train=False)
    chex.assert_shape(logits, (2, classes))
    assert logits.dtype == jnp.float32
    assert models.num_params(m.params) == params
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(m.params))


def test_resnet50_has_the_imagenet_layout():
    m = _model("resnet50", (64, 64, 3), 1000)
    assert m.params["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
    assert m.params["head"]["kernel"].shape == (2048, 1000)


def test_batchnorm_state_changes_only_in_training():
    m = _model("resnet20")
    x = _x(CIFAR, batch=4)
    _, trained = m.apply(m.params, m.model_state, x, train=True)
    _, evaluated = m.apply(m.params, m.model_state, x, train=False)
    chex.assert_trees_all_equal(evaluated, m.model_state)
    diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), trained, m.model_state)
    assert all(d > 0 for d in jax.tree.leaves(diffs)), "every running statistic moves in training mode"
    # PyTorch's momentum 0.1: the running mean moves 10% of the way to the batch mean
    stem = m.params["stem_conv"]["kernel"]
    z = jax.lax.conv_general_dilated((x - 0.5) / 0.25, stem, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(trained["stem_bn"]["mean"], 0.1 * z.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_eval_is_deterministic_and_train_uses_batch_statistics():
    m = _model("resnet20")
    x = _x(CIFAR, batch=4)
    a, _ = m.apply(m.params, m.model_state, x, train=False)
    b, _ = m.apply(m.params, m.model_state, x, train=False)
    chex.assert_trees_all_equal(a, b)
    # In training mode an example's output depends on the rest of the batch; in eval mode it does not.
    t_full, _ = m.apply(m.params, m.model_state, x, train=True)
    t_half, _ = m.apply(m.params, m.model_state, x[:2], train=True)
    e_half, _ = m.apply(m.params, m.model_state, x[:2], train=False)
    assert float(jnp.abs(t_full[:2] - t_half).max()) > 1e-4
    chex.assert_trees_all_close(e_half, a[:2], atol=1e-5)


@pytest.mark.parametrize("name", ["cnn", "resnet20"])
def test_first_layer_normalises_by_mean_and_std(name):
    shape = (8, 8, 1) if name == "cnn" else CIFAR
    c = shape[-1]
    mean, std = tuple(np.linspace(0.2, 0.4, c)), tuple(np.linspace(0.15, 0.3, c))
    with_stats = _model(name, shape, mean=mean, std=std)
    identity = _model(name, shape, mean=(0.0,) * c, std=(1.0,) * c)
    chex.assert_trees_all_equal(with_stats.params, identity.params)  # same seed, normalisation has no parameters
    x = _x(shape, batch=3)
    a, _ = with_stats.apply(with_stats.params, with_stats.model_state, x, train=False)
    b, _ = identity.apply(identity.params, identity.model_state,
                          (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32), train=False)
    chex.assert_trees_all_close(a, b, atol=1e-5, rtol=1e-5)


def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
    f32 = _model("resnet20")
    bf16 = _model("resnet20", dtype="bfloat16")
    chex.assert_trees_all_equal(f32.params, bf16.params)
    x = _x(CIFAR, batch=4)
    a, _ = f32.apply(f32.params, f32.model_state, x, train=False)
    b, _ = bf16.apply(bf16.params, bf16.model_state, x, train=False)
    assert b.dtype == jnp.float32
    assert float(jnp.abs(a - b).max()) > 0, "bfloat16 compute changes the function"
    np.testing.assert_allclose(b, a, atol=0.1 * float(jnp.abs(a).max()) + 0.05)
    lowered = jax.jit(lambda p, s, x: bf16.apply(p, s, x, train=False)).lower(bf16.params, bf16.model_state, x)
    assert "bf16" in lowered.as_text()


def test_activation_option():
    relu, elu = _model("cnn", (8, 8, 1)), _model("cnn", (8, 8, 1), activation="elu")
    x = _x((8, 8, 1))
    a, _ = relu.apply(relu.params, relu.model_state, x, train=False)
    b, _ = elu.apply(elu.params, elu.model_state, x, train=False)
    assert float(jnp.abs(a - b).max()) > 1e-3


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "resnet21"}, "model.name"),
    ({"name": "cnn", "activation": "gelu"}, "model.activation"),
    ({"name": "cnn", "dtype": "float16"}, "model.dtype"),
])
def test_unknown_names_raise_naming_the_field(kwargs, field):
    with pytest.raises(models.ModelError) as info:
        models.create(num_classes=10, input_shape=(8, 8, 1), mean=(0.5,), std=(0.25,), **kwargs)
    assert info.value.field == field
    assert "allowed" in info.value.message


def test_apply_compiles_once_and_is_differentiable():
    m = _model("resnet20")

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss(params, state, x):
        logits, new_state = m.apply(params, state, x, train=True)
        return logits.sum(), new_state

    for seed in range(3):
        loss(m.params, m.model_state, _x(CIFAR, seed=seed))
    grads, _ = jax.grad(loss, has_aux=True)(m.params, m.model_state, _x(CIFAR))
    chex.assert_trees_all_equal_structs(grads, m.params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_materialize_is_the_exact_identity_with_identity_gradient():
    from jaxsmooth.models import layers

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 3)) * 1e3, jnp.float32)
    anchor = jnp.asarray([0.7, 1.3], jnp.float32)
    f = jax.jit(layers.materialize)
    chex.assert_trees_all_equal(f(x, anchor), x)
    gx, ga = jax.grad(lambda x, a: (layers.materialize(x, a) * x).sum(), argnums=(0, 1))(x, anchor)
    chex.assert_trees_all_equal(gx, 2 * x)
    chex.assert_trees_all_equal(ga, jnp.zeros_like(anchor))
