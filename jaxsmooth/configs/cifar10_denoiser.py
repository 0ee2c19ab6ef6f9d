"""Denoised smoothing on CIFAR-10 (Salman et al. 2020, §3 and appendix): a `cifar_dncnn` for a frozen classifier.

    python -m jaxsmooth.train --config configs/cifar10_denoiser.py --workdir workdirs/cifar_dncnn_0.25 \
        --config.denoise.classifier=workdirs/cifar_resnet110_clean --config.denoise.loss=stability

The paper's train_denoiser.py settings: Adam (weight decay 1e-4), learning
rate 1e-3 divided by 10 every 30 epochs, 90 epochs, batch 256, random
crops and flips of the training images (their datasets.py). The loss is mse (the paper's
"denoising"), stability or classification; the classifier stays frozen.
Pick sigma from {0.12, 0.25, 0.5, 1.0} with --config.objective.sigma=0.5.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "cifar10"
    c.data.augment = "cifar"  # 4-pixel pad + random crop + horizontal flip
    c.objective.name = "denoise"
    c.objective.sigma = 0.25
    c.denoise.loss = "mse"
    c.denoise.arch = "cifar_dncnn"
    c.denoise.classifier = "workdirs/cifar_resnet110_clean"  # the classifier the denoiser serves
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9  # Adam's b1
    c.optimizer.weight_decay = 1e-4  # torch.optim.Adam's coupled weight decay, as the paper's
    c.optimizer.schedule = "step"
    c.optimizer.decay_every_epochs = 30
    c.optimizer.decay_factor = 0.1
    c.train.batch_size = 256
    c.train.num_epochs = 90
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 1000
    c.train.eval_batch_size = 1000
    return c
