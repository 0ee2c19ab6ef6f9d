"""The layers every model is built from.

Convolutions and pooling go through this module alone, so how they are
lowered (XLA's native convolution, or patches and one matrix product where
that is faster, as on XLA:CPU) is decided in one place. Padding follows
PyTorch's symmetric ``k // 2`` convention, so architectures match their
PyTorch definitions pixel for pixel. BatchNorm and Linear are flax.nnx's,
with PyTorch's defaults and float32 parameters in every compute dtype.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ACTIVATIONS = {"relu": jax.nn.relu, "elu": jax.nn.elu}
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")

kaiming_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """2-D cross-correlation. x: [B, H, W, Cin]; kernel: [kh, kw, Cin, Cout]; symmetric zero padding.

    On a small image (no more pixels than kernel taps: a 5x5 kernel on 4x4,
    a 3x3 one on 2x2) every output pixel sees almost the whole input, and the
    convolution is computed as the one matrix product it is (`_conv_as_dense`):
    no more multiply-adds, and XLA:CPU's convolution kernels are pathologically
    slow there (a 32 -> 64 channel 5x5 convolution on 4x4 images: ~0.8 s per
    1,000 images against ~10 ms as a product).
    """
    h, w = x.shape[1:3]
    if h * w <= kernel.shape[0] * kernel.shape[1]:
        return _conv_as_dense(x, kernel, stride, padding)
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                        dimension_numbers=_DIMENSIONS)


def _taps(size: int, k: int, stride: int, padding: int) -> np.ndarray:
    """[size, out, k] 0/1: input position p feeds output position o through kernel tap t = p - o*stride + padding."""
    out = (size + 2 * padding - k) // stride + 1
    p, o, t = np.ogrid[:size, :out, :k]
    return (p - o * stride + padding == t).astype(np.float32)


def _conv_as_dense(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The convolution as x.reshape(B, H*W*Cin) @ M, M [H*W*Cin, H'*W'*Cout] built from the kernel (exact)."""
    b, h, w, cin = x.shape
    rows = jnp.asarray(_taps(h, kernel.shape[0], stride, padding), kernel.dtype)
    cols = jnp.asarray(_taps(w, kernel.shape[1], stride, padding), kernel.dtype)
    dense = jnp.einsum("pik,qjl,klco->pqcijo", rows, cols, kernel)
    ho, wo = rows.shape[1], cols.shape[1]
    y = x.reshape(b, h * w * cin) @ dense.reshape(h * w * cin, ho * wo * kernel.shape[-1])
    return y.reshape(b, ho, wo, kernel.shape[-1])


class Conv(nnx.Module):
    """2-D convolution, float32 parameters, computed in `dtype`: [B, H, W, in_features] -> [B, H', W', out_features].

    The kernel ([k, k, in, out], Kaiming-normal fan-out init as torchvision) and
    optional bias are this module's; the arithmetic is `conv2d`, the one place
    to change how convolutions are lowered. Padding defaults to ``k // 2``;
    `kernel_init` replaces the Kaiming init where an architecture's paper uses another.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
                 padding: int | None = None, use_bias: bool = False, dtype=jnp.float32, rngs: nnx.Rngs,
                 kernel_init=kaiming_fan_out):
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv2d(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.stride, self.padding)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def materialize(x: jax.Array, anchor: jax.Array) -> jax.Array:
    """Returns `x` unchanged, as a value XLA computes once instead of re-deriving it in every consumer.

    XLA duplicates chains of cheap elementwise operations into each consumer
    fusion. Along a ResNet's residual path (BatchNorm, ReLU, addition, block
    after block) that means the layout copies feeding XLA:CPU's kernel-gradient
    convolutions each recompute the whole chain: about a third of a ResNet-20
    train step. XLA does not duplicate a division, so dividing by one (taken
    from a parameter, `anchor`, so that it is not a constant XLA could fold)
    ends the chain here. Exact: x / 1 == x, and its gradient is the identity.
    Only training needs it: inference has no backward pass to feed.
    """
    one = jax.lax.stop_gradient(1.0 + 0.0 * anchor.reshape(-1)[0]).astype(x.dtype)
    return x / one


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """Max pooling over [B, H, W, C] with symmetric -inf padding (PyTorch's ``MaxPool2d``)."""
    if window == stride and padding == 0 and x.shape[1] % window == 0 and x.shape[2] % window == 0:
        # Non-overlapping windows: a reshape and a max, whose gradient is cheap everywhere.
        b, h, w, c = x.shape
        return x.reshape(b, h // window, window, w // window, window, c).max(axis=(2, 4))
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, C]."""
    return x.mean(axis=(1, 2))


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` over [..., features] whose training update assigns the running averages whole.

    Same variables, defaults and numbers as `nnx.BatchNorm` (fast variance
    E[x^2] - E[x]^2, statistics in at least float32, running average
    ``momentum * old + (1 - momentum) * batch``). The only change: nnx writes
    the averages with ``variable[...] = new``, whose sharding check on a jit
    tracer builds an error message by walking the whole program traced so
    far, so tracing a train step grows quadratically with depth (a ResNet-110
    ``jit(grad)`` traced in 5.0 s instead of 1.1 s); ``set_value(new)`` skips it.
    """

    folded = False  # set by `fold_into_conv`: the convolution before it applies it

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *, mask=None) -> jax.Array:
        if use_running_average is None:
            use_running_average = self.use_running_average
        if self.folded:
            if use_running_average is False:
                raise ValueError("this BatchNorm is folded into its convolution (models.fold_batch_norm): "
                                 "the model is for inference only")
            return x
        plain = self.dtype is None or self.scale is None or self.bias is None or self.axis not in (-1, x.ndim - 1)
        if use_running_average is not False or mask is not None or self.axis_name is not None or plain:
            return super().__call__(x, use_running_average, mask=mask)  # nnx's own path (and errors)
        x, scale, bias = (a.astype(self.dtype) for a in (x, self.scale[...], self.bias[...]))
        axes = tuple(range(x.ndim - 1))
        x_stats = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = x_stats.mean(axes)
        var = jnp.maximum(jnp.square(x_stats).mean(axes) - jnp.square(mean), 0.0)
        m = self.momentum
        self.mean.set_value(m * self.mean[...] + (1 - m) * mean)
        self.var.set_value(m * self.var[...] + (1 - m) * var)
        y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(self.dtype)


def fold_into_conv(conv: Conv, bn: BatchNorm) -> None:
    """Folds inference-mode `bn` (applied to `conv`'s output) into `conv`'s kernel and bias, in place.

    bn(conv(x)) = conv(x) * s + (beta - mean * s), s = gamma / sqrt(var + eps):
    the kernel's output channels scale by s and the bias becomes
    (bias - mean) * s + beta. `bn` then passes its input through.
    """
    s = bn.scale[...] * jax.lax.rsqrt(bn.var[...] + bn.epsilon)
    bias = conv.bias[...] if conv.bias is not None else jnp.zeros_like(s)
    conv.kernel = nnx.Param(conv.kernel[...] * s)
    conv.bias = nnx.data(nnx.Param((bias - bn.mean[...]) * s + bn.bias[...]))
    bn.folded = True


def batch_norm(features: int, dtype, rngs: nnx.Rngs, *, epsilon: float = 1e-5,
               torch_momentum: float = 0.1) -> BatchNorm:
    """BatchNorm with PyTorch's defaults (running-average momentum 0.1, eps 1e-5), float32 parameters.

    `torch_momentum` is PyTorch's: the weight of the batch statistic in the running average (nnx's momentum is
    the old average's, 1 - it).
    """
    return BatchNorm(features, momentum=1 - torch_momentum, epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                     rngs=rngs)


def dense(in_features: int, out_features: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """Fully connected layer, float32 parameters, computed in `dtype`. [..., in_features] -> [..., out_features]."""
    return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def activation(name: str):
    """The elementwise nonlinearity called `name` in `ACTIVATIONS`."""
    return ACTIVATIONS[name]


class Normalize(nnx.Module):
    """(x - mean) / std per channel, with constants (not parameters): the first layer of every model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, x: jax.Array) -> jax.Array:
        return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
