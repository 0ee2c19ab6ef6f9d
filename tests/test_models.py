"""Models: shapes, parameter counts, BatchNorm state, normalisation, dtype, errors, tracing."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsmooth import models
from jaxsmooth.models import layers

CIFAR = (32, 32, 3)


def _kwargs(shape, kwargs):
    c = shape[-1]
    return dict({"mean": (0.5,) * c, "std": (0.25,) * c}, **kwargs)


def _model(name, shape=CIFAR, classes=10, **kwargs):
    return models.split(models.create(name, num_classes=classes, input_shape=shape, **_kwargs(shape, kwargs)))


def _abstract(name, shape=CIFAR, classes=10, **kwargs):
    """The split model with jax.ShapeDtypeStruct leaves: nothing initialised, nothing run."""
    create = functools.partial(models.create, name, num_classes=classes, input_shape=shape, **_kwargs(shape, kwargs))
    return models.split(nnx.eval_shape(create))


def _x(shape, batch=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, *shape)), jnp.float32)


# Exact counts pin each architecture; they equal the PyTorch definitions (torchvision's ResNet-50:
# 25,557,032; the "Deep MNIST" CNN: 3,274,634; tests/test_bench.py checks our PyTorch references).
# `published`: the range the papers quote (He et al. 2016 Table 6: ResNet-20 0.27M, ResNet-56 0.85M,
# ResNet-110 1.7M, as in Cohen et al. 2019; torchvision: ResNet-18 at 10 classes 11.2M, ResNet-50 25.6M).
@pytest.mark.parametrize("name, shape, classes, params, published", [
    ("cnn", (28, 28, 1), 10, 3_274_634, None),
    ("cnn", (8, 8, 1), 10, 325_514, None),
    ("resnet20", CIFAR, 10, 272_474, (0.265e6, 0.275e6)),
    ("resnet56", CIFAR, 10, 855_770, (0.84e6, 0.86e6)),
    ("resnet110", CIFAR, 10, 1_730_714, (1.65e6, 1.75e6)),
    ("resnet18", CIFAR, 10, 11_173_962, (11.15e6, 11.25e6)),
    ("resnet34", CIFAR, 10, 21_282_122, None),
    ("vgg16", CIFAR, 10, 14_728_266, None),
    ("resnet50", (64, 64, 3), 1000, 25_557_032, (25.5e6, 25.6e6)),  # 224x224 is not needed to count
])
def test_output_shape_and_parameter_count(name, shape, classes, params, published):
    m = _abstract(name, shape, classes)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    logits, new_state = jax.eval_shape(functools.partial(m.apply, train=True), m.params, m.model_state, x)
    chex.assert_shape(logits, (2, classes))
    assert logits.dtype == jnp.float32
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, m.model_state)
    assert models.num_params(m.params) == params
    if published:
        assert published[0] <= params <= published[1]
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(m.params))
    assert (m.model_state == {}) == (name == "cnn"), "every model but cnn has BatchNorm statistics"


def test_resnet_stems():
    r50, r18 = _abstract("resnet50", (64, 64, 3), 1000), _abstract("resnet18")
    assert r50.params["stem_conv"]["kernel"].shape == (7, 7, 3, 64)  # ImageNet stem
    assert r50.params["head"]["kernel"].shape == (2048, 1000)  # bottleneck expansion 4
    assert r18.params["stem_conv"]["kernel"].shape == (3, 3, 3, 64)  # CIFAR stem
    assert r18.params["head"]["kernel"].shape == (512, 10)


def test_only_training_moves_batchnorm_statistics_with_pytorch_momentum():
    m = _model("resnet20")
    x = _x(CIFAR, batch=4)
    run = jax.jit(m.apply, static_argnames="train")
    logits, trained = run(m.params, m.model_state, x, train=True)
    assert bool(jnp.isfinite(logits).all())
    moved = jax.tree.map(lambda a, b: bool((a != b).any()), trained, m.model_state)
    assert all(jax.tree.leaves(moved)), "every running mean and variance moves in training mode"
    _, evaluated = run(m.params, m.model_state, x, train=False)
    chex.assert_trees_all_equal(evaluated, m.model_state)
    # PyTorch's momentum 0.1: the running mean moves 10% of the way from 0 to the batch mean and
    # the running variance 10% of the way from 1 to the batch variance (flax's is the biased one,
    # PyTorch's the unbiased: a factor n / (n - 1) with n = B * H * W = 4096 here, below rtol).
    z = layers.conv2d((x - 0.5) / 0.25, m.params["stem_conv"]["kernel"], 1, 1)
    np.testing.assert_allclose(trained["stem_bn"]["mean"], 0.1 * z.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(trained["stem_bn"]["var"], 0.9 + 0.1 * z.var((0, 1, 2)), rtol=1e-4)


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
    # A model built with (mean, std) on x computes exactly what the same parameters built with
    # (0, 1), i.e. no normalisation, compute on (x - mean) / std: normalisation is the first layer,
    # per channel, and holds no parameters or state.
    shape = (8, 8, 3) if name == "cnn" else CIFAR
    mean, std = (0.2, 0.3, 0.4), (0.15, 0.2, 0.3)
    with_stats = _model(name, shape, mean=mean, std=std)
    identity = _model(name, shape, mean=(0.0,) * 3, std=(1.0,) * 3)
    chex.assert_trees_all_equal(with_stats.params, identity.params)
    chex.assert_trees_all_equal(with_stats.model_state, identity.model_state)
    x = _x(shape, batch=3)
    mean_a, std_a = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    a, _ = with_stats.apply(with_stats.params, with_stats.model_state, x, train=False)
    b, _ = identity.apply(identity.params, identity.model_state, (x - mean_a) / std_a, train=False)
    chex.assert_trees_all_close(a, b, atol=1e-5, rtol=1e-5)
    # An image equal to the mean reaches the layers as zeros.
    a, _ = with_stats.apply(with_stats.params, with_stats.model_state, jnp.broadcast_to(mean_a, x.shape), train=False)
    b, _ = identity.apply(identity.params, identity.model_state, jnp.zeros_like(x), train=False)
    chex.assert_trees_all_close(a, b, atol=1e-6)


@pytest.mark.slow
def test_bfloat16_computes_in_bfloat16_with_float32_parameters_and_state():
    f32 = _model("resnet20")
    bf16 = _model("resnet20", dtype="bfloat16")
    chex.assert_trees_all_equal(f32.params, bf16.params)
    x = _x(CIFAR, batch=4)
    a, _ = f32.apply(f32.params, f32.model_state, x, train=False)
    b, _ = bf16.apply(bf16.params, bf16.model_state, x, train=False)
    assert b.dtype == jnp.float32
    assert float(jnp.abs(a - b).max()) > 0, "bfloat16 compute changes the function"
    np.testing.assert_allclose(b, a, atol=0.1 * float(jnp.abs(a).max()) + 0.05)
    _, trained = bf16.apply(bf16.params, bf16.model_state, x, train=True)
    chex.assert_trees_all_equal_shapes_and_dtypes(trained, bf16.model_state)  # a train step's carry keeps its dtype
    lowered = jax.jit(functools.partial(bf16.apply, train=False)).lower(bf16.params, bf16.model_state, x)
    assert "bf16" in lowered.as_text()


def test_activation_option():
    relu, elu = _model("cnn", (8, 8, 1)), _model("cnn", (8, 8, 1), activation="elu")
    chex.assert_trees_all_equal(relu.params, elu.params)
    x = _x((8, 8, 1))
    a, _ = relu.apply(relu.params, relu.model_state, x, train=False)
    b, _ = elu.apply(elu.params, elu.model_state, x, train=False)
    assert float(jnp.abs(a - b).max()) > 1e-3


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "resnet21"}, "model.name"),
    ({"name": "cnn", "activation": "gelu"}, "model.activation"),
    ({"name": "cnn", "dtype": "float16"}, "model.dtype"),
    ({"name": "cnn", "width": -1}, "model.width"),
])
def test_unknown_names_raise_naming_the_field(kwargs, field):
    with pytest.raises(models.ModelError) as info:
        models.create(num_classes=10, input_shape=(8, 8, 1), mean=(0.5,), std=(0.25,), **kwargs)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{field}: ")
    assert info.value.field == field
    assert "allowed" in info.value.message or field == "model.width"


@pytest.mark.slow
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
    assert any(bool((g != 0).any()) for g in jax.tree.leaves(grads))


def test_apply_captures_only_the_graph_definition():
    a, b = _model("cnn", (8, 8, 1), seed=0), _model("cnn", (8, 8, 1), seed=1)
    assert a.apply == b.apply and hash(a.apply) == hash(b.apply)  # same architecture: same function
    assert a.apply != _model("cnn", (8, 8, 1), activation="elu").apply
    assert not any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(vars(a.apply)))
    # Equal functions share one jit cache entry when passed as a static argument.
    run = jax.jit(chex.assert_max_traces(lambda apply, p, s, x: apply(p, s, x, train=False)[0], n=1),
                  static_argnums=0)
    x = _x((8, 8, 1))
    run(a.apply, a.params, a.model_state, x)
    run(b.apply, b.params, b.model_state, x)


def test_apply_under_vmap_matches_the_batched_call():
    m = _model("resnet20")
    x = _x(CIFAR, batch=4)
    batched, _ = m.apply(m.params, m.model_state, x, train=False)
    per_example = jax.vmap(lambda xi: m.apply(m.params, m.model_state, xi[None], train=False)[0][0])(x)
    chex.assert_trees_all_close(per_example, batched, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batchnorm_is_nnx_batchnorm(dtype):
    # layers.BatchNorm only writes the running averages differently (see its docstring).
    ours = layers.batch_norm(3, dtype, nnx.Rngs(0))
    theirs = nnx.BatchNorm(3, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for bn in (ours, theirs):
        bn.scale[...] = jnp.asarray([0.5, 1.0, 2.0])
        bn.bias[...] = jnp.asarray([0.1, -0.2, 0.3])
    x = jnp.asarray(rng.normal(size=(4, 5, 5, 3)) * 3 + 1, jnp.float32)
    for train in (True, False, True):
        a, b = ours(x, use_running_average=not train), theirs(x, use_running_average=not train)
        assert a.dtype == b.dtype == dtype
        chex.assert_trees_all_close(a.astype(jnp.float32), b.astype(jnp.float32), atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(nnx.to_pure_dict(nnx.state(ours)), nnx.to_pure_dict(nnx.state(theirs)),
                                    atol=1e-6, rtol=1e-6)


def test_materialize_is_the_exact_identity_with_identity_gradient():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 3)) * 1e3, jnp.float32)
    anchor = jnp.asarray([0.7, 1.3], jnp.float32)
    chex.assert_trees_all_equal(jax.jit(layers.materialize)(x, anchor), x)
    gx, ga = jax.grad(lambda x, a: (layers.materialize(x, a) * x).sum(), argnums=(0, 1))(x, anchor)
    chex.assert_trees_all_equal(gx, 2 * x)
    chex.assert_trees_all_equal(ga, jnp.zeros_like(anchor))


@pytest.mark.parametrize("size, k, stride, padding", [(4, 5, 1, 2), (2, 3, 1, 1), (3, 3, 2, 1), (5, 5, 1, 2)])
def test_small_image_convolution_as_a_product_is_the_convolution(size, k, stride, padding):
    """layers.conv2d computes convolutions on images of at most k*k pixels as one matrix product: same values, same
    gradients."""
    x = jax.random.normal(jax.random.key(0), (3, size, size, 4))
    w = jax.random.normal(jax.random.key(1), (k, k, 4, 6))

    def reference(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def ours(x, w):
        return layers.conv2d(x, w, stride, padding)

    assert size * size <= k * k
    np.testing.assert_allclose(ours(x, w), reference(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))(x, w)
    for a, b in zip(loss(ours), loss(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, shape", [("resnet20", (32, 32, 3)), ("vgg16", (32, 32, 3)),
                                         pytest.param("resnet50", (64, 64, 3), marks=pytest.mark.slow)])
def test_folded_batch_norm_is_the_same_function_in_eval_mode(name, shape):
    model = models.split(models.create(name, num_classes=10, input_shape=shape, mean=(0.5,) * 3, std=(0.25,) * 3,
                                       seed=0))
    x = jax.random.uniform(jax.random.key(0), (8, *shape))
    state = model.model_state
    for _ in range(2):  # running statistics away from their initial 0 / 1
        _, state = model.apply(model.params, state, x, train=True)
    model = model._replace(model_state=state)
    folded = models.fold_batch_norm(model)
    expected = model.apply(model.params, model.model_state, x, train=False)[0]
    got = folded.apply(folded.params, folded.model_state, x, train=False)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(expected))))
    assert not np.allclose(expected, models.split(models.create(  # the statistics matter: the test has power
        name, num_classes=10, input_shape=shape, mean=(0.5,) * 3, std=(0.25,) * 3, seed=0)).apply(
        model.params, jax.tree.map(jnp.zeros_like, state), x, train=False)[0])
    with pytest.raises(ValueError, match="inference only"):
        folded.apply(folded.params, folded.model_state, x, train=True)


def test_fold_leaves_a_model_without_batch_norm_alone():
    model = models.split(models.create("cnn", num_classes=10, input_shape=(8, 8, 1), mean=(0.5,), std=(0.25,),
                                       width=4, seed=0))
    assert models.fold_batch_norm(model) is model
