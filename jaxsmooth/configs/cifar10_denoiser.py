"""Denoised smoothing on CIFAR-10 (Salman et al. 2020, §3 and appendix): a `cifar_dncnn` for a frozen classifier.

    python -m jaxsmooth.train --config configs/cifar10_denoiser.py --workdir workdirs/cifar_dncnn_0.25 \
        --config.denoise.classifier=workdirs/cifar_resnet110_clean --config.denoise.loss=stability

The paper's train_denoiser.py settings: Cohen et al.'s CIFAR-10 recipe
(`cifar10_gaussian`: batch 256, 90 epochs, the learning rate x0.1 every 30,
random crops and flips, weight decay 1e-4) with Adam at learning rate 1e-3.
The loss is mse (the paper's "denoising"), stability or classification; the
classifier stays frozen. Pick sigma from {0.12, 0.25, 0.5, 1.0} with
--config.objective.sigma=0.5.
"""

import os

from jaxsmooth.config import load


def get_config():
    c = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_gaussian.py"))
    c.objective.name = "denoise"  # model.name is not read: the classifier is the workdir's, the denoiser the arch
    c.denoise.loss = "mse"
    c.denoise.arch = "cifar_dncnn"
    c.denoise.classifier = "workdirs/cifar_resnet110_clean"  # the classifier the denoiser serves
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3  # Adam's b1 is optimizer.momentum, 0.9; torch's coupled weight decay
    return c
