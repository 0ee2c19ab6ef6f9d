"""The starting model of the MNIST HeatSmoothing / Boot Camp runs: `mnist_gaussian` without noise.

    python -m jaxsmooth.train --config configs/mnist_standard.py --workdir workdirs/mnist_standard \
        --config.data.name=idx:../shared/data/mnist
"""

import os

from jaxsmooth.config import load


def get_config():
    c = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_gaussian.py"))
    c.objective.name = "standard"  # sigma stays: the noisy evaluation's
    return c
