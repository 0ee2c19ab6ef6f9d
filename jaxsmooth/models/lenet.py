"""``cnn``: the LeNet-style MNIST network (two convolutions, max-pooling, two dense layers).

With the default width it is the classic MNIST CNN of TensorFlow's "Deep
MNIST" tutorial (LeCun et al. 1998 in spirit): 5x5 convolutions with 32 and 64
filters, 'same' padding and a bias, each followed by the activation and a 2x2
max-pool, then 1,024 hidden units and the output layer. Shapes at 28x28x1:
28x28x32 -> 14x14x32 -> 14x14x64 -> 7x7x64 -> 1024 -> classes (3,274,634
parameters); at 8x8x1 (scikit-learn digits): 8 -> 4 -> 2, 325,514 parameters.
`width` w scales all three hidden layers: w, 2w channels and 32w units.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsmooth.models import layers

DEFAULT_WIDTH = 32


def sizes(width: int = 0) -> tuple[int, int]:
    """(channels of the first convolution, dense hidden units) for a `width` (0: the default 32, 1024)."""
    width = width or DEFAULT_WIDTH
    return width, 32 * width


class LeNet(nnx.Module):
    """conv5x5(w) - act - maxpool2 - conv5x5(2w) - act - maxpool2 - dense(32w) - act - dense(classes).

    With the default w = 32 this is the classic MNIST CNN (32 and 64 filters, 1,024 hidden units;
    3.27M parameters at 28x28x1). 'Same' padding, so 8x8 inputs work too.
    x: [B, H, W, C] in [0, 1] -> logits [B, num_classes].
    """

    def __init__(self, input_shape, num_classes: int, mean, std, *, activation: str = "relu",
                 dtype=jnp.float32, width: int = 0, rngs: nnx.Rngs):
        h, w, c = input_shape
        width, hidden = sizes(width)
        self.normalize = layers.Normalize(mean, std)
        self.conv1 = layers.Conv(c, width, 5, use_bias=True, dtype=dtype, rngs=rngs)
        self.conv2 = layers.Conv(width, 2 * width, 5, use_bias=True, dtype=dtype, rngs=rngs)
        self.fc1 = layers.dense(2 * width * (h // 4) * (w // 4), hidden, dtype, rngs)
        self.fc2 = layers.dense(hidden, num_classes, dtype, rngs)
        self.act = activation

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        act = layers.activation(self.act)
        x = layers.max_pool(act(self.conv1(self.normalize(x))), 2, 2)
        x = layers.max_pool(act(self.conv2(x)), 2, 2)
        x = act(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc2(x)
