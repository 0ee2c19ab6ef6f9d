"""Residual networks (He et al. 2016), one `ResNet` class for all five names.

- ``resnet20/56/110`` (`cifar_resnet`): He et al. §4.2, depth 6n + 2: a 3x3
  stem conv (16), three stages of n basic blocks (16, 32, 64 channels, stride 2
  at the start of stages 2 and 3), global average pooling, dense. Shortcuts are
  1x1 conv + BatchNorm projections where the shape changes, as in the CIFAR
  ResNet that Cohen et al. 2019 (locuslab/smoothing) train. ResNet-110:
  1,730,714 parameters with 10 classes; ResNet-20: 272,474.
- ``resnet18/34``: the ImageNet ResNet's basic-block layout ([2,2,2,2],
  [3,4,6,3]; 64-512 channels) with a CIFAR stem (3x3 conv 64, stride 1, no
  max-pool) for 32x32 inputs, the CIFAR-10 models of the NAL (ResNet-18) and
  HeatSmoothing / Boot Camp (ResNet-34) papers. ResNet-18: 11,173,962 parameters.
- ``resnet50``: torchvision's ImageNet ResNet-50 (v1.5: stride on the 3x3 conv
  of a bottleneck): 7x7/2 stem conv, 3x3/2 max-pool, bottlenecks [3,4,6,3]
  with expansion 4, as Cohen et al. and the HeatSmoothing paper use on
  ImageNet. 25,557,032 parameters with 1000 classes.

Every stage ends in global average pooling, so any input large enough for the
strides works (8x8 final maps at 32x32 for the CIFAR nets, 7x7 at 224x224 for
ResNet-50). x: [B, H, W, C] float32 in [0, 1] -> logits [B, num_classes].
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsmooth.models import layers


class _Shortcut(nnx.Module):
    """Identity, or 1x1 conv + BatchNorm where stride or width change."""

    def __init__(self, cin: int, cout: int, stride: int, dtype, rngs: nnx.Rngs):
        self.project = stride != 1 or cin != cout
        if self.project:
            self.conv = layers.Conv(cin, cout, 1, stride=stride, dtype=dtype, rngs=rngs)
            self.bn = layers.batch_norm(cout, dtype, rngs)

    def __call__(self, x, train: bool):
        return self.bn(self.conv(x), use_running_average=not train) if self.project else x

    def batch_norm_pairs(self):
        return [(self.conv, self.bn)] if self.project else []


class BasicBlock(nnx.Module):
    """3x3 conv - BN - act - 3x3 conv - BN, plus shortcut, then act."""

    expansion = 1

    def batch_norm_pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2)]

    def __init__(self, cin: int, planes: int, stride: int, act: str, dtype, rngs: nnx.Rngs):
        self.conv1 = layers.Conv(cin, planes, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(planes, dtype, rngs)
        self.conv2 = layers.Conv(planes, planes, 3, dtype=dtype, rngs=rngs)
        self.bn2 = layers.batch_norm(planes, dtype, rngs)
        self.shortcut = _Shortcut(cin, planes, stride, dtype, rngs)
        self.act = act

    def __call__(self, x, train: bool):
        act = layers.activation(self.act)
        y = act(self.bn1(self.conv1(x), use_running_average=not train))
        y = self.bn2(self.conv2(y), use_running_average=not train)
        out = act(y + self.shortcut(x, train))
        return layers.materialize(out, self.bn2.scale[...]) if train else out


class Bottleneck(nnx.Module):
    """1x1 conv (planes) - 3x3 conv (planes, stride) - 1x1 conv (4 planes), BN after each, plus shortcut."""

    expansion = 4

    def batch_norm_pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]

    def __init__(self, cin: int, planes: int, stride: int, act: str, dtype, rngs: nnx.Rngs):
        cout = planes * self.expansion
        self.conv1 = layers.Conv(cin, planes, 1, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(planes, dtype, rngs)
        self.conv2 = layers.Conv(planes, planes, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn2 = layers.batch_norm(planes, dtype, rngs)
        self.conv3 = layers.Conv(planes, cout, 1, dtype=dtype, rngs=rngs)
        self.bn3 = layers.batch_norm(cout, dtype, rngs)
        self.shortcut = _Shortcut(cin, cout, stride, dtype, rngs)
        self.act = act

    def __call__(self, x, train: bool):
        act = layers.activation(self.act)
        y = act(self.bn1(self.conv1(x), use_running_average=not train))
        y = act(self.bn2(self.conv2(y), use_running_average=not train))
        y = self.bn3(self.conv3(y), use_running_average=not train)
        out = act(y + self.shortcut(x, train))
        return layers.materialize(out, self.bn3.scale[...]) if train else out


class ResNet(nnx.Module):
    """Stem, stages of residual blocks (stride 2 at the start of every stage but the first), average pool, dense.

    Args:
      block: `BasicBlock` or `Bottleneck`.
      blocks_per_stage: e.g. (2, 2, 2, 2) for ResNet-18, (18, 18, 18) for CIFAR ResNet-110.
      widths: planes per stage, e.g. (64, 128, 256, 512) or (16, 32, 64).
      stem: ``"cifar"`` (3x3 conv, stride 1) or ``"imagenet"`` (7x7 conv stride 2, 3x3 max-pool stride 2).
    """

    def __init__(self, block, blocks_per_stage: Sequence[int], widths: Sequence[int], stem: str,
                 input_shape, num_classes: int, mean, std, *, activation: str = "relu",
                 dtype=jnp.float32, rngs: nnx.Rngs):
        c = input_shape[-1]
        self.normalize = layers.Normalize(mean, std)
        self.imagenet_stem = stem == "imagenet"
        stem_width = widths[0]
        self.stem_conv = layers.Conv(c, stem_width, 7 if self.imagenet_stem else 3,
                                     stride=2 if self.imagenet_stem else 1, dtype=dtype, rngs=rngs)
        self.stem_bn = layers.batch_norm(stem_width, dtype, rngs)
        blocks, cin = [], stem_width
        for stage, (n, planes) in enumerate(zip(blocks_per_stage, widths)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(cin, planes, stride, activation, dtype, rngs))
                cin = planes * block.expansion
        self.blocks = nnx.List(blocks)
        self.head = layers.dense(cin, num_classes, dtype, rngs)
        self.act = activation

    def batch_norm_pairs(self):
        return [(self.stem_conv, self.stem_bn)]

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.stem_bn(self.stem_conv(self.normalize(x)), use_running_average=not train)
        x = layers.activation(self.act)(x)
        if self.imagenet_stem:
            x = layers.max_pool(x, 3, 2, padding=1)
        for block in self.blocks:
            x = block(x, train)
        return self.head(layers.global_avg_pool(x))


def cifar_resnet(depth: int) -> Callable[..., ResNet]:
    """The builder of He et al.'s CIFAR ResNet of `depth` = 6n + 2 (20, 56, 110): n basic blocks per stage."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    return functools.partial(ResNet, BasicBlock, (n, n, n), (16, 32, 64), "cifar")


# Builders: (input_shape, num_classes, mean, std, *, activation, dtype, rngs) -> ResNet.
resnet18 = functools.partial(ResNet, BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), "cifar")
resnet34 = functools.partial(ResNet, BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), "cifar")
resnet50 = functools.partial(ResNet, Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), "imagenet")
