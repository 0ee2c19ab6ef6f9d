"""Denoised smoothing on scikit-learn's digits, in seconds: a small DnCNN for the frozen `digits_standard` model.

    python -m jaxsmooth.train --config configs/digits_standard.py --workdir workdirs/digits_standard
    python -m jaxsmooth.train --config configs/digits_denoiser.py --workdir workdirs/digits_dncnn \
        --config.denoise.classifier=workdirs/digits_standard
    python -m jaxsmooth.certify --checkpoint workdirs/digits_standard --denoiser workdirs/digits_dncnn \
        --out workdirs/digits_denoised.tsv --n 1000

`mnist_denoiser` on the 8x8 images: a DnCNN of depth 4 and width 16
(mnist_dncnn's layout, shrunk), the paper's Adam at a constant learning rate
1e-3 for 4 epochs of batch 64.
"""

import os

from jaxsmooth.config import load


def get_config():
    c = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_denoiser.py"))
    c.data.name = "digits"
    c.denoise.depth = 4
    c.denoise.width = 16
    c.denoise.classifier = "workdirs/digits_standard"
    c.optimizer.schedule = "constant"
    c.train.batch_size = 64
    c.train.num_epochs = 4
    c.train.log_every_steps = 22
    c.train.checkpoint_every_steps = 220
    c.train.eval_every_epochs = 2
    c.train.eval_batch_size = 120
    return c
