"""Non-uniform smoothing (non_uniform Alg. 1) on scikit-learn's digits: learn a per-pixel sigma, on a laptop CPU.

    python -m jaxsmooth.train --config configs/quickstart.py --workdir workdirs/quickstart
    python -m jaxsmooth.train --config configs/digits_sigma.py --workdir workdirs/digits_sigma
    python -m jaxsmooth.certify --config configs/digits_sigma.py --sigma-from workdirs/digits_sigma \
        --out digits_sigma.tsv --n 10000

The quick-start gaussian model (sigma 0.25) stays frozen; only log_sigma
[8, 8, 1], initialised to log 0.25, is trained (Adam, n0 = 16 draws per
example). About a minute on 2 CPU cores.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "digits"
    c.data.augment = "none"  # sigma is per pixel: keep the pixels where the test images have them
    c.model.name = "cnn"
    c.model.width = 32  # the quick-start model's
    c.objective.name = "sigma"
    c.objective.sigma = 0.25  # initial constant sigma
    c.sigma.num_noise = 16  # n0
    c.train.init_from = "workdirs/quickstart"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 0.03
    c.optimizer.momentum = 0.9  # Adam's b1
    c.optimizer.weight_decay = 0.0  # decay on log_sigma would pull sigma towards 1
    c.optimizer.schedule = "step"
    c.optimizer.decay_every_epochs = 3
    c.optimizer.decay_factor = 0.5
    c.train.batch_size = 64
    c.train.num_epochs = 12
    c.train.log_every_steps = 22
    c.train.checkpoint_every_steps = 220
    c.train.eval_every_epochs = 4
    c.train.eval_batch_size = 120
    return c
