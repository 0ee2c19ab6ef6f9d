"""``vgg16``: VGG-16 with BatchNorm (Simonyan & Zisserman 2015, configuration D), CIFAR variant.

Thirteen 3x3 conv - BN - act layers in five stages (64, 64 | 128, 128 | 256 x3 |
512 x3 | 512 x3), a 2x2 max-pool after each stage, global average pooling (1x1
at 32x32 inputs) and one dense layer (512 -> classes): the usual CIFAR-10
VGG-16, our reading of the NAL paper's (it names VGG-16 without details);
ImageNet's 4096-4096 classifier is left out. Convolutions keep their bias, as in torchvision's ``vgg16_bn``.
14,728,266 parameters with 10 classes. Inputs need H, W >= 32.
x: [B, H, W, C] float32 in [0, 1] -> logits [B, num_classes].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsmooth.models import layers

STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16(nnx.Module):
    """[conv3x3 - BN - act] x 13 in `STAGES`, 2x2 max-pool after each stage, global average pool, dense."""

    def __init__(self, input_shape, num_classes: int, mean, std, *, activation: str = "relu",
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.normalize = layers.Normalize(mean, std)
        convs, bns, cin = [], [], input_shape[-1]
        for stage in STAGES:
            for cout in stage:
                convs.append(layers.Conv(cin, cout, 3, use_bias=True, dtype=dtype, rngs=rngs))
                bns.append(layers.batch_norm(cout, dtype, rngs))
                cin = cout
        self.convs, self.bns = nnx.List(convs), nnx.List(bns)
        self.head = layers.dense(cin, num_classes, dtype, rngs)
        self.act = activation

    def batch_norm_pairs(self):
        return list(zip(self.convs, self.bns))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        act = layers.activation(self.act)
        x = self.normalize(x)
        i = 0
        for stage in STAGES:
            for _ in stage:
                x = act(self.bns[i](self.convs[i](x), use_running_average=not train))
                i += 1
            x = layers.max_pool(x, 2, 2)
        return self.head(layers.global_avg_pool(x))
