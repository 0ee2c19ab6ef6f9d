"""DnCNN, the denoiser of denoised smoothing, and the ``denoiser`` wrapper kind.

Denoised smoothing (Salman et al. 2020, "Denoised Smoothing: A Provable
Defense for Pretrained Classifiers") certifies f(D(x + noise)) for a frozen
classifier f and a denoiser D trained for the noise level sigma; D is part of
the base classifier, so Cohen et al.'s guarantee holds unchanged
(`jaxsmooth.models.wrappers`).

D is Zhang et al.'s DnCNN as the paper's code builds it
(microsoft/denoised-smoothing, code/archs/dncnn.py): 3x3 convolutions with
padding 1 throughout; conv (bias) + ReLU; depth - 2 times conv (no bias) +
BatchNorm (eps 1e-4, PyTorch momentum 0.95) + ReLU; a last conv (no bias) back
to the image's channels. It predicts the noise and returns the input minus it:
x: [B, H, W, C] in pixel space ([0, 1] plus noise, no normalisation) ->
[B, H, W, C]. Orthogonal kernels and a zero last kernel at initialisation, as
the paper's: an untrained DnCNN is the identity.

| name | depth | width | input | parameters |
|---|---:|---:|---|---:|
| cifar_dncnn | 17 | 64 | 32x32x3 | 558,400 |
| cifar_dncnn_wide | 17 | 128 | 32x32x3 | 2,222,720 |
| imagenet_dncnn | 17 | 64 | 224x224x3 | 558,400 |
| mnist_dncnn | 8 | 32 | 28x28x1 | 56,288 |

The first three are the paper's (`python -m jaxsmooth.convert` reads their
checkpoints); ``mnist_dncnn`` is the small one for MNIST-size images, the
choice for a CPU.

A denoiser's workdir has model.json `metadata` (``"wrapper": "denoiser"``, the
architecture, its input shape and the sigma it was trained for) and its
variables as an orbax checkpoint (`checkpoint.write_workdir`).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsmooth.errors import UserError
from jaxsmooth.models import layers, wrappers

NAME = "denoiser"  # the wrapper kind, as model.json, the registry and certify --denoiser name it
EPSILON, TORCH_MOMENTUM = 1e-4, 0.95  # the paper's BatchNorm2d(n_channels, eps=0.0001, momentum=0.95)


class Arch(NamedTuple):
    depth: int  # convolutions
    width: int  # channels of the hidden convolutions
    dataset: str  # the data set it is for: a key of jaxsmooth.convert.DATASETS, or "mnist"
    input_shape: tuple[int, int, int]


ARCHS = {
    "cifar_dncnn": Arch(17, 64, "cifar10", (32, 32, 3)),
    "cifar_dncnn_wide": Arch(17, 128, "cifar10", (32, 32, 3)),
    "imagenet_dncnn": Arch(17, 64, "imagenet", (224, 224, 3)),
    "mnist_dncnn": Arch(8, 32, "mnist", (28, 28, 1)),
}


class DnCNN(nnx.Module):
    """x - residual(x): [B, H, W, channels] -> [B, H, W, channels] (module docstring).

    Args:
      channels: the image's channels C.
      depth: convolutions in all (>= 2); width: channels of the hidden ones.
      dtype: compute dtype; parameters are float32.
    """

    def __init__(self, channels: int, *, depth: int, width: int, dtype=jnp.float32, rngs: nnx.Rngs):
        orthogonal = jax.nn.initializers.orthogonal()  # torch's init.orthogonal_ of [out, in * 9]: orthonormal rows
        self.first = layers.Conv(channels, width, 3, use_bias=True, dtype=dtype, rngs=rngs, kernel_init=orthogonal)
        self.convs = nnx.List([layers.Conv(width, width, 3, dtype=dtype, rngs=rngs, kernel_init=orthogonal)
                               for _ in range(depth - 2)])
        self.norms = nnx.List([layers.batch_norm(width, dtype, rngs, epsilon=EPSILON, torch_momentum=TORCH_MOMENTUM)
                               for _ in range(depth - 2)])
        self.last = layers.Conv(width, channels, 3, dtype=dtype, rngs=rngs, kernel_init=jax.nn.initializers.zeros)

    def batch_norm_pairs(self):
        return list(zip(self.convs, self.norms))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = jax.nn.relu(self.first(x))
        for conv, norm in zip(self.convs, self.norms):
            y = jax.nn.relu(norm(conv(y), use_running_average=not train))
        return x - self.last(y)


def metadata(input_shape, sigma: float, *, arch: str | None = None, depth: int | None = None,
             width: int | None = None) -> dict:
    """The model.json of a denoiser's workdir: `arch`'s depth and width (or the ones given), for images of
    `input_shape` (H, W, C), trained for noise of `sigma`."""
    if arch is not None and arch not in ARCHS:
        raise UserError("arch", f"unknown DnCNN {arch!r}; known: {', '.join(ARCHS)}")
    if arch is not None:
        depth, width = depth or ARCHS[arch].depth, width or ARCHS[arch].width
    info = {wrappers.WRAPPER_KEY: NAME, "depth": depth, "width": width, "input_shape": [int(d) for d in input_shape],
            "sigma": float(sigma)}
    if arch is not None:
        info["arch"] = arch
    _check(info)
    return info


def _check(info: Mapping[str, Any]) -> tuple[int, int, tuple]:
    """(depth, width, input_shape) of a denoiser's model.json, or a `UserError` naming the entry that is wrong."""
    for entry, low in (("depth", 2), ("width", 1)):
        if not isinstance(info.get(entry), int) or info[entry] < low:
            raise UserError(entry, f"a DnCNN's {entry} is an integer >= {low}, got {info.get(entry)!r}")
    shape = info.get("input_shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise UserError("input_shape", f"must be (H, W, C), three positive integers, got {shape!r}")
    if not isinstance(info.get("sigma"), (int, float)) or not info["sigma"] > 0:
        raise UserError("sigma", f"a denoiser records the noise level it was trained for, > 0, got "
                                 f"{info.get('sigma')!r}")
    return info["depth"], info["width"], tuple(shape)


def create(info: Mapping[str, Any], *, dtype: str = "float32", seed: int = 0) -> DnCNN:
    """The DnCNN that the model.json `info` describes, initialised from `seed` (the identity: module docstring)."""
    depth, width, shape = _check(info)
    return DnCNN(shape[-1], depth=depth, width=width, dtype=layers.DTYPES[dtype], rngs=nnx.Rngs(seed))


def build(info: Mapping[str, Any]):
    """The wrapper kind's build: the `models.Model` of `info` with `jax.ShapeDtypeStruct` leaves."""
    from jaxsmooth import models

    _check(info)
    return models.split(nnx.eval_shape(lambda: create(info, dtype=info.get("dtype", "float32"))))


KIND = wrappers.WrapperKind(name=NAME, build=build, reference="Salman et al. 2020, Denoised Smoothing (DnCNN)")
