"""NAL on scikit-learn's digits (8x8x1), on a laptop CPU: the quick start's `cnn` trained by nal Alg. 1.

    python -m jaxsmooth.train --config configs/digits_nal.py --workdir workdirs/digits_nal

K = r = 4 as the paper; sigma 0.25 like the quick start, gamma 1.0 (eta_1 = 0.5).
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "digits"
    c.model.name = "cnn"
    c.model.width = 32
    c.objective.name = "nal"
    c.objective.sigma = 0.25
    c.nal.gamma = 1.0
    c.nal.ascent_steps = 4
    c.nal.num_noise = 4
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.05
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "cosine"
    c.train.batch_size = 64
    c.train.num_epochs = 15
    c.train.log_every_steps = 22
    c.train.checkpoint_every_steps = 220
    c.train.eval_every_epochs = 5
    c.train.eval_batch_size = 120
    return c
