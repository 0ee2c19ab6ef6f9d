"""HeatSmoothing (Algorithm 1) on scikit-learn's digits, from a `standard` model, on a laptop CPU.

    python -m jaxsmooth.train --config configs/digits_standard.py --workdir workdirs/digits_standard
    python -m jaxsmooth.train --config configs/digits_heat.py --workdir workdirs/digits_heat

Label-free: n_T timesteps, each distilling the previous timestep's frozen
model with the JL gradient penalty; certify with --candidate clean.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "digits"
    c.model.name = "cnn"
    c.model.width = 32
    c.objective.name = "heat"
    c.objective.sigma = 0.25
    c.heat.lam = 5.0
    c.heat.kappa = 10
    c.heat.delta = 0.1
    c.heat.distance = "l2"
    c.heat.timesteps = 5
    c.heat.epochs_per_timestep = 4
    c.train.init_from = "workdirs/digits_standard"
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.002
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.train.batch_size = 64
    c.train.log_every_steps = 22
    c.train.checkpoint_every_steps = 220
    c.train.eval_every_epochs = 4
    c.train.eval_batch_size = 120
    return c
