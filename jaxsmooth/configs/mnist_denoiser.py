"""Denoised smoothing on MNIST, sized for a CPU: an `mnist_dncnn` for the frozen `cnn` of `mnist_standard`.

    python -m jaxsmooth.train --config configs/mnist_standard.py --workdir workdirs/mnist_standard \
        --config.data.name=idx:../shared/data/mnist
    python -m jaxsmooth.train --config configs/mnist_denoiser.py --workdir workdirs/mnist_dncnn_0.25 \
        --config.data.name=idx:../shared/data/mnist --config.denoise.classifier=workdirs/mnist_standard

The paper's optimiser (Adam, learning rate 1e-3, weight decay 1e-4, step
decay by 0.1) over 6 epochs instead of 90, decaying every 2. The classifier
was trained without noise; the denoiser makes it certifiable.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "mnist"
    c.data.augment = "none"
    c.objective.name = "denoise"
    c.objective.sigma = 0.25
    c.denoise.loss = "mse"
    c.denoise.arch = "mnist_dncnn"
    c.denoise.classifier = "workdirs/mnist_standard"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9  # Adam's b1
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "step"
    c.optimizer.decay_every_epochs = 2
    c.optimizer.decay_factor = 0.1
    c.train.batch_size = 128
    c.train.num_epochs = 6
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_batch_size = 1000
    return c
