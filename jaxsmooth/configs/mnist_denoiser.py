"""Denoised smoothing on MNIST, sized for a CPU: an `mnist_dncnn` for the frozen `cnn` of `mnist_standard`.

    python -m jaxsmooth.train --config configs/mnist_standard.py --workdir workdirs/mnist_standard \
        --config.data.name=idx:../shared/data/mnist
    python -m jaxsmooth.train --config configs/mnist_denoiser.py --workdir workdirs/mnist_dncnn_0.25 \
        --config.data.name=idx:../shared/data/mnist --config.denoise.classifier=workdirs/mnist_standard

The paper's optimiser (`cifar10_denoiser`: Adam, learning rate 1e-3, weight
decay 1e-4, step decay by 0.1) over 6 epochs instead of 90, decaying every 2,
batch 128, no augmentation. The classifier was trained without noise; the
denoiser makes it certifiable.
"""

import os

from jaxsmooth.config import load


def get_config():
    c = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_denoiser.py"))
    c.data.name = "mnist"
    c.data.augment = "none"
    c.denoise.arch = "mnist_dncnn"
    c.denoise.classifier = "workdirs/mnist_standard"
    c.optimizer.decay_every_epochs = 2
    c.train.batch_size = 128
    c.train.num_epochs = 6
    c.train.log_every_steps = 100
    return c
