"""Non-uniform smoothing on CIFAR-10 (non_uniform Alg. 1, appendix B): a per-pixel sigma for a frozen ResNet-110.

    python -m jaxsmooth.train --config configs/cifar10_sigma.py --workdir workdirs/cifar10_sigma \
        --config.train.init_from=workdirs/cifar10_gaussian --config.objective.sigma=0.25

Appendix B: Adam, learning rate 5e-3, 10 sub-epochs per initial sigma, the
learning rate x0.8 after each; initial constants in steps of 0.01; batch 32;
n0 = 32 (§5.2). One sub-epoch is one epoch here (the step schedule decays per
whole epoch; the paper does not define a sub-epoch).
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "cifar10"
    c.data.augment = "none"  # sigma is per pixel: no crops or flips
    c.model.name = "resnet110"
    c.objective.name = "sigma"
    c.objective.sigma = 0.25  # initial constant sigma
    c.sigma.num_noise = 32  # n0
    c.train.init_from = "workdirs/cifar10_gaussian"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 5e-3
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "step"
    c.optimizer.decay_every_epochs = 1  # a sub-epoch
    c.optimizer.decay_factor = 0.8
    c.train.batch_size = 32
    c.train.num_epochs = 10
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_batch_size = 1000
    return c
