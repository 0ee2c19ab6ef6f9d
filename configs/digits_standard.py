"""The starting model of the digits HeatSmoothing / Boot Camp runs: the quick-start recipe without noise.

    python -m jaxsmooth.train --config configs/digits_standard.py --workdir workdirs/digits_standard
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "digits"
    c.model.name = "cnn"
    c.model.width = 32
    c.objective.name = "standard"
    c.objective.sigma = 0.25  # only for the noisy evaluation
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
