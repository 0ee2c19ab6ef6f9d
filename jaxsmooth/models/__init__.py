"""Models by name, and the pure-function boundary the rest of jaxsmooth sees.

A model is a flax.nnx module; `split` turns it once into

    apply(params, model_state, x, *, train) -> (logits, new_model_state)

a pure function of pytrees (plain nested dicts of float32 arrays): `params`
are the trainable parameters, `model_state` the BatchNorm running statistics.
With ``train=True`` BatchNorm uses batch statistics and returns updated running
averages; with ``train=False`` it uses the running averages and returns
`model_state` unchanged. x: [B, H, W, C] float32 in [0, 1] (pixel space: each
model normalises by its data set's mean/std in its first layer); logits:
[B, num_classes] float32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsmooth.errors import UserError
from jaxsmooth.models import layers, lenet, resnet, vgg

_BUILDERS = {
    "cnn": lenet.LeNet,
    "resnet20": lambda *a, **k: resnet.cifar_resnet(20, *a, **k),
    "resnet56": lambda *a, **k: resnet.cifar_resnet(56, *a, **k),
    "resnet110": lambda *a, **k: resnet.cifar_resnet(110, *a, **k),
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "vgg16": vgg.VGG16,
}

NAMES = tuple(_BUILDERS)
ACTIVATIONS = ("relu", "elu")
DTYPES = tuple(layers.DTYPES)
cnn_sizes = lenet.sizes


class ModelError(UserError):
    """An unknown model name, activation or dtype."""


class Model(NamedTuple):
    """A model split at the pure-function boundary."""

    apply: Callable[..., tuple[jax.Array, Any]]
    params: Any  # nested dict of float32 arrays
    model_state: Any  # nested dict of BatchNorm statistics ({} when there is none)


def create(name: str, *, num_classes: int, input_shape: tuple[int, int, int], mean, std,
           activation: str = "relu", dtype: str = "float32", width: int = 0, seed: int = 0) -> nnx.Module:
    """Builds the nnx module `name` for inputs of `input_shape` (H, W, C) with `num_classes` outputs.

    `width` applies to ``cnn`` only (channels of its first convolution).
    """
    if name not in _BUILDERS:
        raise ModelError("model.name", f"unknown model {name!r}; allowed: {', '.join(NAMES)}")
    if activation not in ACTIVATIONS:
        raise ModelError("model.activation", f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
    if dtype not in DTYPES:
        raise ModelError("model.dtype", f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    kwargs = dict(activation=activation, dtype=layers.DTYPES[dtype], rngs=nnx.Rngs(seed))
    if name == "cnn":
        kwargs["width"] = width
    return _BUILDERS[name](tuple(input_shape), num_classes, tuple(mean), tuple(std), **kwargs)


def split(module: nnx.Module) -> Model:
    """Splits `module` into a pure `apply` and its parameter and BatchNorm-statistics pytrees."""
    graphdef, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)

    def apply(params_dict, state_dict, x, *, train: bool):
        p, s = jax.tree.map(lambda v: v, params), jax.tree.map(lambda v: v, stats)
        nnx.replace_by_pure_dict(p, params_dict)
        nnx.replace_by_pure_dict(s, state_dict)
        m = nnx.merge(graphdef, p, s)
        logits = m(x, train=train).astype(jnp.float32)
        new_state = nnx.to_pure_dict(nnx.state(m, nnx.BatchStat)) if train else state_dict
        return logits, new_state

    return Model(apply=apply, params=nnx.to_pure_dict(params), model_state=nnx.to_pure_dict(stats))


def num_params(params) -> int:
    return int(sum(np.prod(np.shape(v)) for v in jax.tree.leaves(params)))
