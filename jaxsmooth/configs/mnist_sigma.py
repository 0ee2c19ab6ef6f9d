"""Non-uniform smoothing on MNIST (non_uniform Alg. 1, appendix B): a per-pixel sigma for a frozen `cnn`.

    python -m jaxsmooth.train --config configs/mnist_sigma.py --workdir workdirs/mnist_sigma \
        --config.train.init_from=workdirs/mnist --config.objective.sigma=0.5

Appendix B: Adam, learning rate 1e-3, batch 128, 5 "sub-epochs" per initial
sigma, the learning rate x0.5 after each; the initial constant sigma swept in
steps of 0.1 (one run per --config.objective.sigma), n0 = 32 (§5.2). The
paper does not define a sub-epoch; the trainer's step schedule decays per
whole epoch, so one sub-epoch is one epoch here (decay_every_epochs = 1).
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "mnist"
    c.data.augment = "none"
    c.model.name = "cnn"
    c.objective.name = "sigma"
    c.objective.sigma = 0.5  # initial constant sigma
    c.sigma.num_noise = 32  # n0
    c.train.init_from = "workdirs/mnist"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9  # Adam's b1
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "step"
    c.optimizer.decay_every_epochs = 1  # a sub-epoch
    c.optimizer.decay_factor = 0.5
    c.train.batch_size = 128
    c.train.num_epochs = 5
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_batch_size = 1000
    return c
