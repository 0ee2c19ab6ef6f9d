"""Models by name, and the pure-function boundary the rest of jaxsmooth sees.

A model is a flax.nnx module; `split` turns it once into

    apply(params, model_state, x, *, train) -> (logits, new_model_state)

a pure function of pytrees (plain nested dicts of float32 arrays, as
`nnx.to_pure_dict` writes them): `params` are the trainable parameters,
`model_state` the BatchNorm running statistics ({} for models without
BatchNorm). With ``train=True`` BatchNorm normalises by batch statistics and
returns updated running averages (PyTorch's momentum 0.1); with
``train=False`` it uses the running averages and returns `model_state`
itself. x: [B, H, W, C] float32 in [0, 1], pixel space (each model normalises
by its data set's mean/std in its first layer, so callers add noise before the
model); logits: [B, num_classes] float32 whatever the compute dtype.

| name | architecture | reference |
|---|---|---|
| cnn | conv5x5(32)-pool-conv5x5(64)-pool-dense(1024)-dense | LeNet-style MNIST CNN (`lenet.py`) |
| resnet20/56/110 | 3 stages of 6n+2 basic blocks, 16/32/64 | He et al. 2016 §4.2, as in Cohen et al. 2019 |
| resnet18/34 | basic blocks [2,2,2,2]/[3,4,6,3], 64-512, CIFAR stem | He et al. 2016, CIFAR stem |
| resnet50 | bottlenecks [3,4,6,3], 7x7/2 stem + max-pool | torchvision ResNet-50 (v1.5) |
| vgg16 | 13 conv-BN layers, 5 max-pools, global pool, dense | Simonyan & Zisserman 2015 (D), with BN |

Model wrappers (maps from images to images put in front of a classifier) are
registered kinds of `wrappers.REGISTRY`; the package's: ``denoiser``, DnCNN
(`dncnn.py`: cifar_dncnn, cifar_dncnn_wide, imagenet_dncnn, and mnist_dncnn, the
small one for a CPU).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsmooth.errors import UserError
from jaxsmooth.models import dncnn, layers, lenet, resnet, vgg, wrappers

_BUILDERS = {
    "cnn": lenet.LeNet,
    "resnet20": resnet.cifar_resnet(20),
    "resnet56": resnet.cifar_resnet(56),
    "resnet110": resnet.cifar_resnet(110),
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "vgg16": vgg.VGG16,
}

NAMES = tuple(_BUILDERS)
wrappers.register(dncnn.KIND)  # the package's wrapper kinds: one line each
ACTIVATIONS = tuple(layers.ACTIVATIONS)
DTYPES = tuple(layers.DTYPES)
cnn_sizes = lenet.sizes


class ModelError(UserError):
    """An unknown model name, activation or dtype; ``str(error)`` starts with the field (``model.name: ...``)."""


def create(name: str, *, num_classes: int, input_shape: tuple[int, int, int], mean, std,
           activation: str = "relu", dtype: str = "float32", width: int = 0, seed: int = 0) -> nnx.Module:
    """Builds the nnx module `name`.

    Args:
      name: one of `NAMES`.
      num_classes: logits per example.
      input_shape: (H, W, C) of one input.
      mean, std: per-channel statistics of the data set in pixel space ([0, 1]);
        the model's first layer computes (x - mean) / std with them as constants.
      activation: ``"relu"`` or ``"elu"``, used everywhere the architecture has a ReLU.
      dtype: compute dtype, ``"float32"`` or ``"bfloat16"``; parameters are float32 either way.
      width: ``cnn`` only: channels of its first convolution (0: the default 32); ignored by the others.
      seed: parameter initialisation seed.
    Raises:
      ModelError: naming ``model.name``, ``model.activation``, ``model.dtype`` or ``model.width``.
    """
    if name not in _BUILDERS:
        raise ModelError("model.name", f"unknown model {name!r}; allowed: {', '.join(NAMES)}")
    if activation not in ACTIVATIONS:
        raise ModelError("model.activation", f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
    if dtype not in DTYPES:
        raise ModelError("model.dtype", f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if width < 0:
        raise ModelError("model.width", f"must be >= 0 (0: the default), got {width}")
    kwargs = dict(activation=activation, dtype=layers.DTYPES[dtype], rngs=nnx.Rngs(seed))
    if name == "cnn":
        kwargs["width"] = width
    return _BUILDERS[name](tuple(input_shape), num_classes, tuple(mean), tuple(std), **kwargs)


@dataclasses.dataclass(frozen=True)
class Apply:
    """``apply(params, model_state, x, *, train) -> (logits, new_model_state)`` of one graph definition.

    Holds only the (hashable, array-free) `nnx.GraphDef`, so two splits of
    the same architecture give equal, equally hashed functions, and nothing
    it captures is a constant baked into a jitted computation.

    Args:
      params: nested dict of float32 parameters (`Model.params`).
      model_state: nested dict of BatchNorm statistics (`Model.model_state`).
      x: [B, H, W, C] float32 in [0, 1].
      train: BatchNorm on batch statistics, running averages updated (True),
        or on the running averages (False). A Python bool: static under jit.
    Returns:
      logits [B, num_classes] float32, and the new model_state (`model_state`
      itself when ``train=False``).
    """

    graphdef: nnx.GraphDef

    def __call__(self, params, model_state, x: jax.Array, *, train: bool) -> tuple[jax.Array, Any]:
        module = nnx.merge(self.graphdef, params, model_state)
        logits = module(x, train=train).astype(jnp.float32)
        if not train:
            return logits, model_state
        return logits, nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))


class Model(NamedTuple):
    """A model split at the pure-function boundary."""

    apply: Callable[..., tuple[jax.Array, Any]]  # an `Apply`
    params: Any  # nested dict of float32 arrays
    model_state: Any  # nested dict of BatchNorm statistics ({} when there is none)


def split(module: nnx.Module) -> Model:
    """Splits `module` into a pure `apply` and its parameter and BatchNorm-statistics pytrees.

    Works on abstract modules too (``nnx.eval_shape(lambda: create(...))``):
    params and model_state then hold `jax.ShapeDtypeStruct` leaves.
    """
    graphdef, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
    return Model(apply=Apply(graphdef), params=nnx.to_pure_dict(params), model_state=nnx.to_pure_dict(stats))


def fold_batch_norm(model: Model) -> Model:
    """An inference-only copy of `model` with every BatchNorm folded into the convolution before it.

    The same function in eval mode (up to float rounding) with one
    elementwise pass less per BatchNorm: what certification runs, thousands
    of forward passes on fixed parameters. Calling it with ``train=True``
    raises.

    The model interface for folding: each module that applies a BatchNorm to
    a convolution's output says so with ``batch_norm_pairs() -> [(conv,
    bn), ...]`` (`layers.Conv`, `layers.BatchNorm`). A model whose
    BatchNorm layers are not all named by such pairs is refused (a
    `ModelError`), never silently left unfolded. A model without BatchNorm,
    or an apply that is not a split nnx module (a plain function), comes back
    unchanged: there is nothing to fold.
    """
    if not isinstance(model.apply, Apply):
        return model
    module = nnx.merge(model.apply.graphdef, model.params, model.model_state)
    norms = [m for _, m in nnx.iter_modules(module) if isinstance(m, nnx.BatchNorm)]
    pairs = [pair for _, m in nnx.iter_modules(module) if hasattr(m, "batch_norm_pairs")
             for pair in m.batch_norm_pairs()]
    unpaired = [type(m).__name__ for m in norms if not any(bn is m for _, bn in pairs)]
    if unpaired:
        raise ModelError("model", f"{type(module).__name__} has {len(unpaired)} BatchNorm layer(s) that no "
                                  "batch_norm_pairs() names; each module applying a BatchNorm to a convolution's "
                                  "output must list (conv, bn) in batch_norm_pairs() to be folded")
    for conv, bn in pairs:
        layers.fold_into_conv(conv, bn)
    return split(module) if pairs else model


def num_params(params) -> int:
    """Number of scalars in a parameter pytree (arrays or `jax.ShapeDtypeStruct` leaves)."""
    return int(sum(np.prod(np.shape(v), dtype=np.int64) for v in jax.tree.leaves(params)))
