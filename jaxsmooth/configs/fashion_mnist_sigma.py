"""Non-uniform smoothing on Fashion-MNIST (non_uniform Alg. 1, appendix B): a per-pixel sigma for a frozen `cnn`.

    python -m jaxsmooth.train --config configs/fashion_mnist_sigma.py --workdir workdirs/fashion_mnist_sigma \
        --config.train.init_from=workdirs/fashion_mnist_gaussian --config.objective.sigma=0.5

Appendix B: Adam, learning rate 1e-3, batch 128, 5 "sub-epochs" per initial
sigma, the learning rate x0.5 after each; the initial constant sigma swept in
steps of 0.1 (one run per --config.objective.sigma), n0 = 32 (§5.2). The
paper does not define a sub-epoch; the trainer's step schedule decays per
whole epoch, so one sub-epoch is one epoch here (decay_every_epochs = 1).
"""

import os

from jaxsmooth.config import load


def get_config():
    c = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_sigma.py"))  # the same recipe
    c.data.name = "fashion_mnist"
    c.train.init_from = "workdirs/fashion_mnist_gaussian"  # configs/mnist_gaussian.py, data.name=fashion_mnist
    return c
