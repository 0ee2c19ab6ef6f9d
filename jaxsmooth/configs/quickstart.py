"""Quick start: Gaussian-noise training on scikit-learn's digits (8x8x1), on a laptop CPU.

    python -m jaxsmooth.train --config configs/quickstart.py --workdir workdirs/quickstart

A small `cnn` trained with N(0, 0.25^2) noise; about a minute on 2 CPU cores.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "digits"
    c.model.name = "cnn"
    c.model.width = 32
    c.objective.name = "gaussian"
    c.objective.sigma = 0.25
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.05
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "cosine"
    c.train.batch_size = 64
    c.train.num_epochs = 40
    c.train.log_every_steps = 22
    c.train.checkpoint_every_steps = 220
    c.train.eval_every_epochs = 10
    c.train.eval_batch_size = 120
    return c
