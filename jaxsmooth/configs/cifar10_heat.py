"""HeatSmoothing on CIFAR-10 (heat §4): ResNet-34, sigma 0.1, lambda 5, n_T = 5 timesteps of 200 epochs.

Starts from a ResNet-34 trained with plain cross-entropy (the paper: 200 epochs), e.g.
    python -m jaxsmooth.train --config configs/cifar10_heat.py --config.objective.name=standard \
        --config.train.num_epochs=200 --config.optimizer.learning_rate=0.1 --workdir workdirs/cifar10_resnet34
then
    python -m jaxsmooth.train --config configs/cifar10_heat.py --workdir workdirs/cifar10_heat
The paper does not state the optimizer of the smoothing timesteps; SGD with momentum at a constant 0.01 here.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "cifar10"
    c.data.augment = "cifar"
    c.model.name = "resnet34"
    c.objective.name = "heat"
    c.objective.sigma = 0.1
    c.heat.lam = 5.0
    c.heat.kappa = 10
    c.heat.delta = 0.1
    c.heat.distance = "l2"
    c.heat.timesteps = 5
    c.heat.epochs_per_timestep = 200
    c.train.init_from = "workdirs/cifar10_resnet34"
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.train.batch_size = 128
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 1000
    c.train.eval_every_epochs = 10
    c.train.eval_batch_size = 1000
    return c
