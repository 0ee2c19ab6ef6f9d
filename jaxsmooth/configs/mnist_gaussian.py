"""Gaussian-noise training of the LeNet-style `cnn` on MNIST (Cohen et al.'s recipe at MNIST scale).

The tensorflow-datasets `mnist` by default; the original IDX files work too:
    python -m jaxsmooth.train --config configs/mnist_gaussian.py --workdir workdirs/mnist \
        --config.data.name=idx:../shared/data/mnist
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "mnist"
    c.model.name = "cnn"
    c.objective.name = "gaussian"
    c.objective.sigma = 0.25  # Cohen et al. use {0.12, 0.25, 0.5, 1.0}
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "step"
    c.optimizer.decay_every_epochs = 10
    c.optimizer.decay_factor = 0.1
    c.train.batch_size = 128
    c.train.num_epochs = 30
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_batch_size = 1000
    return c
