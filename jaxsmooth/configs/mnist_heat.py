"""HeatSmoothing (Algorithm 1) on MNIST, from a `standard` model.

    python -m jaxsmooth.train --config configs/mnist_standard.py --workdir workdirs/mnist_standard \
        --config.data.name=idx:../shared/data/mnist
    python -m jaxsmooth.train --config configs/mnist_heat.py --workdir workdirs/mnist_heat \
        --config.data.name=idx:../shared/data/mnist

The CIFAR-10 recipe of the paper (l2 distance on logits, lambda 5, kappa 10,
delta 0.1, 5 timesteps) at sigma 0.25, one epoch per timestep, SGD 5e-4; certify with
--candidate clean.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "mnist"
    c.model.name = "cnn"
    c.objective.name = "heat"
    c.objective.sigma = 0.25
    c.heat.lam = 5.0
    c.heat.kappa = 10
    c.heat.delta = 0.1
    c.heat.distance = "l2"
    c.heat.timesteps = 5
    c.heat.epochs_per_timestep = 1
    c.train.init_from = "workdirs/mnist_standard"
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.0005  # 0.002 (digits) overshoots on MNIST: the distance jumps 0.1 -> 38 in 3 steps
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.train.batch_size = 128
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 469
    c.train.eval_every_epochs = 1
    c.train.eval_batch_size = 1000
    return c
