"""Denoised smoothing on scikit-learn's digits, in seconds: a small DnCNN for the frozen `digits_standard` model.

    python -m jaxsmooth.train --config configs/digits_standard.py --workdir workdirs/digits_standard
    python -m jaxsmooth.train --config configs/digits_denoiser.py --workdir workdirs/digits_dncnn \
        --config.denoise.classifier=workdirs/digits_standard
    python -m jaxsmooth.certify --checkpoint workdirs/digits_standard --denoiser workdirs/digits_dncnn \
        --out workdirs/digits_denoised.tsv --n 1000

A DnCNN of depth 4 and width 16 (mnist_dncnn's layout, shrunk) on the 8x8
images, the paper's Adam at learning rate 1e-3 for 4 epochs.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "digits"
    c.data.augment = "none"
    c.objective.name = "denoise"
    c.objective.sigma = 0.25
    c.denoise.loss = "mse"
    c.denoise.arch = "mnist_dncnn"
    c.denoise.depth = 4
    c.denoise.width = 16
    c.denoise.classifier = "workdirs/digits_standard"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9  # Adam's b1
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "constant"
    c.train.batch_size = 64
    c.train.num_epochs = 4
    c.train.log_every_steps = 22
    c.train.checkpoint_every_steps = 220
    c.train.eval_every_epochs = 2
    c.train.eval_batch_size = 120
    return c
