"""PyTorch reference models, train step and certification sampling, for side-by-side benchmarks only.

The architectures mirror `jaxsmooth.models` layer for layer (same widths,
kernels, strides, shortcuts and normalisation), so a benchmark compares the
same computation; `DnCNN` is the denoiser of denoised smoothing, and `Denoised`
puts it in front of a classifier. Imported only when torch is installed (``pip install
jaxsmooth[torch]``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
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


def _projection(cin: int, cout: int, stride: int) -> nn.Module | None:
    """The 1x1 conv + BatchNorm shortcut where stride or width change, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


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
        self.shortcut = _projection(cin, cout, stride)

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


class _Bottleneck(nn.Module):
    """1x1 conv (planes) - 3x3 conv (planes, stride) - 1x1 conv (4 planes), BN after each, plus shortcut."""

    expansion = 4

    def __init__(self, cin, planes, stride, activation):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.act = _act(activation)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """``resnet18/34`` (basic blocks, CIFAR 3x3 stem); ``resnet50`` (torchvision v1.5: bottlenecks, 7x7/2 stem)."""

    def __init__(self, bottleneck: bool, blocks_per_stage, num_classes, input_channels=3, activation="relu",
                 mean=(0.5,) * 3, std=(0.25,) * 3):
        super().__init__()
        block, expansion = (_Bottleneck, _Bottleneck.expansion) if bottleneck else (_Basic, 1)
        self.norm = _Normalize(mean, std)
        stem = ([nn.Conv2d(input_channels, 64, 7, 2, 3, bias=False)] if bottleneck else
                [nn.Conv2d(input_channels, 64, 3, 1, 1, bias=False)])
        stem += [nn.BatchNorm2d(64), _act(activation)] + ([nn.MaxPool2d(3, 2, 1)] if bottleneck else [])
        self.stem = nn.Sequential(*stem)
        blocks, cin = [], 64
        for stage, (n, planes) in enumerate(zip(blocks_per_stage, (64, 128, 256, 512))):
            for i in range(n):
                blocks.append(block(cin, planes, 2 if (stage > 0 and i == 0) else 1, activation))
                cin = planes * expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(self.norm(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DnCNN(nn.Module):
    """The denoiser of denoised smoothing (`jaxsmooth.models.dncnn`) as microsoft/denoised-smoothing's
    code/archs/dncnn.py lays it out: one ``nn.Sequential`` named ``dncnn`` (``dncnn.{i}``: a conv with bias and
    ReLU; depth - 2 times a conv without bias, BatchNorm2d(eps 1e-4, momentum 0.95) and ReLU; a last conv without
    bias, all 3x3 with padding 1), and the input minus its output. [N, C, H, W] -> [N, C, H, W]."""

    def __init__(self, depth: int, width: int, channels: int):
        super().__init__()
        layers = [nn.Conv2d(channels, width, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width, eps=1e-4, momentum=0.95), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)

    def forward(self, x):
        return x - self.dncnn(x)


class Denoised(nn.Module):
    """classifier(denoiser(x)): the base classifier of denoised smoothing, which the samplers below take like any
    classifier (the noise goes in front of the denoiser)."""

    def __init__(self, denoiser: nn.Module, classifier: nn.Module):
        super().__init__()
        self.denoiser, self.classifier = denoiser, classifier

    def forward(self, x):
        return self.classifier(self.denoiser(x))


_RESNETS = {"resnet18": (False, (2, 2, 2, 2)), "resnet34": (False, (3, 4, 6, 3)), "resnet50": (True, (3, 4, 6, 3))}


def create(name: str, input_shape, num_classes: int, *, width: int = 0, hidden: int = 0,
           denoiser: tuple[int, int] | None = None) -> nn.Module | None:
    """The reference for a jaxsmooth model name, or None where there is none (``vgg16``); with `denoiser`
    (depth, width), that model behind a `DnCNN` of that size (`Denoised`)."""
    model = _classifier(name, input_shape, num_classes, width=width, hidden=hidden)
    if model is None or denoiser is None:
        return model
    return Denoised(DnCNN(*denoiser, input_shape[-1]), model)


def _classifier(name: str, input_shape, num_classes: int, *, width: int, hidden: int) -> nn.Module | None:
    if name in _RESNETS:
        c = input_shape[-1]
        return ResNet(*_RESNETS[name], num_classes, input_channels=c, mean=(0.5,) * c, std=(0.25,) * c)
    if name == "cnn":
        return LeNet(input_shape, num_classes, width, hidden, mean=(0.5,) * input_shape[-1],
                     std=(0.25,) * input_shape[-1])
    if name in ("resnet20", "resnet56", "resnet110"):
        return CifarResNet(int(name[6:]), num_classes)
    return None


def make_train_step(model: nn.Module, *, sigma: float, lr: float = 0.01, momentum: float = 0.9,
                    weight_decay: float = 1e-4, channels_last: bool = False, bf16: bool = False,
                    compile_mode: str = "") -> Callable:
    """One Gaussian-noise SGD step, as Cohen et al.'s train.py does it: x + sigma*randn, CE, backward, step.

    The tuned variants a performance-minded user adds: ``channels_last``, the
    forward pass under bfloat16 autocast (``bf16``), and the model under
    ``torch.compile(mode=compile_mode)`` (forward and backward compiled; the
    optimizer step stays eager).
    """
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    forward = torch.compile(model, mode=compile_mode, dynamic=False) if compile_mode else model

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.to(memory_format=memory_format)
        noisy = x + torch.randn_like(x) * sigma
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(noisy).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def make_heat_step(model: nn.Module, *, sigma: float, lam: float = 5.0, timesteps: int = 5, kappa: int = 10,
                   delta: float = 0.1, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4,
                   channels_last: bool = False) -> Callable:
    """One HeatSmoothing SGD step (heat Alg. 1, eq. 4 with the l2 distance), written as its PyTorch code does it.

    A frozen copy of `model` in eval mode is the teacher; v (`model`, train
    mode) is compared with it on the clean batch, and the penalty loops over
    the kappa projections: w ~ N(0, I/K), the input gradient of w . v(x)
    (``autograd.grad`` keeping the graph), its normalised direction, one more
    forward pass at x + delta * direction, and the squared finite difference.
    Scaled by K / kappa as `jaxsmooth.objectives.penalty` is.
    """
    import copy

    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    model.train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model, teacher = model.to(memory_format=memory_format), teacher.to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    weight = lam * sigma**2 / (2 * timesteps)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        del y  # label-free
        x = x.to(memory_format=memory_format).requires_grad_(True)
        with torch.no_grad():
            target = teacher(x)
        out = model(x)
        num_classes = out.shape[-1]
        distance = 0.5 * (out - target).pow(2).sum(-1)
        penalty = torch.zeros_like(distance)
        for _ in range(kappa):
            w = torch.randn_like(out) / math.sqrt(num_classes)
            wv = (out * w).sum(-1)
            (g,) = torch.autograd.grad(wv.sum(), x, retain_graph=True)
            norm = g.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (g.dim() - 1)))
            shifted = (model(x + delta * g / norm) * w).sum(-1)
            penalty = penalty + ((shifted - wv) / delta).pow(2)
        loss = (distance + weight * penalty * (num_classes / kappa)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def sample_counts_canonical(model: nn.Module, x: torch.Tensor, sigma: float, n: int, batch: int,
                            num_classes: int) -> np.ndarray:
    """Class counts of n noisy copies of one input, as Cohen et al.'s ``Smooth._sample_noise`` draws them.

    locuslab/smoothing ``code/core.py``: under ``torch.no_grad``, float32
    NCHW, batches of at most `batch` copies made with ``x.repeat``, noise from
    ``torch.randn_like`` times sigma, the argmax of each batch copied to the
    host and counted there with numpy (one host sync per batch).

    Args:
      model: an NCHW classifier in eval mode.
      x: [C, H, W] float32 in [0, 1], on the model's device.
    Returns:
      [num_classes] int64 counts summing to n.
    """
    counts = np.zeros(num_classes, np.int64)
    with torch.no_grad():
        remaining = n
        for _ in range(math.ceil(n / batch)):
            this_batch_size = min(batch, remaining)
            remaining -= this_batch_size
            copies = x.repeat((this_batch_size, 1, 1, 1))
            noise = torch.randn_like(copies) * sigma
            predictions = model(copies + noise).argmax(1)
            np.add.at(counts, predictions.cpu().numpy(), 1)
    return counts


def make_tuned_sampler(model: nn.Module, *, batch: int = 250, bf16: bool = False,
                       compile_mode: str = "") -> Callable[[torch.Tensor, float, int, int], torch.Tensor]:
    """``sample(x, sigma, n, num_classes) -> counts`` as a performance-minded PyTorch user writes it.

    ``inference_mode``, the model and the noisy batches in ``channels_last``,
    the noise drawn in place into one reused buffer (no ``repeat``), counts
    kept on the device with ``scatter_add_`` (``bincount`` syncs with the host
    on CUDA), and with ``bf16`` the forward pass under bfloat16 autocast.
    The model is converted to channels_last in place; with `compile_mode` its
    forward pass runs under ``torch.compile(mode=compile_mode)`` (e.g.
    ``max-autotune``; a last batch of another size compiles once more).

    x: [I, C, H, W] float32 in [0, 1]; returns [I, num_classes] int64 counts on
    x's device, each row summing to n (the caller syncs by reading them).
    """
    model.eval().to(memory_format=torch.channels_last)
    forward = torch.compile(model, mode=compile_mode, dynamic=False) if compile_mode else model

    def sample(x: torch.Tensor, sigma: float, n: int, num_classes: int) -> torch.Tensor:
        device = x.device
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            counts = torch.zeros(x.shape[0], num_classes, dtype=torch.int64, device=device)
            ones = torch.ones(batch, dtype=torch.int64, device=device)
            noisy = torch.empty((batch, *x.shape[1:]), device=device).contiguous(memory_format=torch.channels_last)
            for i in range(x.shape[0]):
                for start in range(0, n, batch):
                    b = min(batch, n - start)
                    copies = noisy[:b].normal_(0.0, sigma).add_(x[i])
                    counts[i].scatter_add_(0, forward(copies).argmax(1), ones[:b])
        return counts

    return sample
