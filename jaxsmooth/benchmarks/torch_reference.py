"""PyTorch reference models and train step, for side-by-side benchmarks only.

The architectures mirror `jaxsmooth.models` layer for layer (same widths,
kernels, strides, shortcuts and normalisation), so a benchmark compares the
same computation. Imported only when torch is installed (``pip install
jaxsmooth[torch]``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F


class _Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _act(name: str) -> nn.Module:
    return nn.ELU() if name == "elu" else nn.ReLU()


class LeNet(nn.Module):
    """The `cnn` of jaxsmooth.models: conv5x5(w) - pool - conv5x5(2w) - pool - dense(hidden) - dense."""

    def __init__(self, input_shape, num_classes, width, hidden, activation="relu", mean=(0.5,), std=(0.25,)):
        super().__init__()
        h, w, c = input_shape
        self.norm = _Normalize(mean, std)
        self.conv1 = nn.Conv2d(c, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.fc1 = nn.Linear(2 * width * (h // 4) * (w // 4), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.act = _act(activation)

    def forward(self, x):
        x = F.max_pool2d(self.act(self.conv1(self.norm(x))), 2)
        x = F.max_pool2d(self.act(self.conv2(x)), 2)
        return self.fc2(self.act(self.fc1(torch.flatten(x, 1))))


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride, activation):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = _act(activation)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + (x if self.shortcut is None else self.shortcut(x)))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6n+2; 16/32/64 channels), as Cohen et al. train it."""

    def __init__(self, depth, num_classes, activation="relu", mean=(0.5,) * 3, std=(0.25,) * 3):
        super().__init__()
        n = (depth - 2) // 6
        self.norm = _Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), _act(activation))
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(_Basic(cin, cout, 2 if (stage > 0 and i == 0) else 1, activation))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(self.norm(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def create(name: str, input_shape, num_classes: int, *, width: int = 0, hidden: int = 0) -> nn.Module | None:
    """The reference for a jaxsmooth model name, or None where there is none."""
    if name == "cnn":
        return LeNet(input_shape, num_classes, width, hidden, mean=(0.5,) * input_shape[-1],
                     std=(0.25,) * input_shape[-1])
    if name in ("resnet20", "resnet56", "resnet110"):
        return CifarResNet(int(name[6:]), num_classes)
    return None


def make_train_step(model: nn.Module, *, sigma: float, lr: float = 0.01, momentum: float = 0.9,
                    weight_decay: float = 1e-4, channels_last: bool = False) -> Callable:
    """One Gaussian-noise SGD step, as Cohen et al.'s train.py does it: x + sigma*randn, CE, backward, step."""
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.to(memory_format=memory_format)
        noisy = x + torch.randn_like(x) * sigma
        loss = F.cross_entropy(model(noisy), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step
