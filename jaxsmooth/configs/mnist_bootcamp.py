"""Adversarial Boot Camp (eq. 10) on MNIST, from a `standard` model: one epoch.

    python -m jaxsmooth.train --config configs/mnist_standard.py --workdir workdirs/mnist_standard \
        --config.data.name=idx:../shared/data/mnist
    python -m jaxsmooth.train --config configs/mnist_bootcamp.py --workdir workdirs/mnist_bootcamp \
        --config.data.name=idx:../shared/data/mnist

One epoch (469 steps) of SGD at the paper's fixed learning rate 0.01, half of
each batch noised, sigma^2 / 2 times the penalty; the distance is `kl`, not
eq. 10's softmax-L2, which with 10 classes lets the penalty flatten the
logits (see jaxsmooth/objectives/bootcamp.py). Certify with --candidate clean.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "mnist"
    c.model.name = "cnn"
    c.objective.name = "bootcamp"
    c.objective.sigma = 0.25
    c.bootcamp.kappa = 10
    c.bootcamp.delta = 0.1
    c.bootcamp.distance = "kl"
    c.bootcamp.num_epochs = 1
    c.train.init_from = "workdirs/mnist_standard"
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.0
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.train.batch_size = 128
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 469
    c.train.eval_every_epochs = 1
    c.train.eval_batch_size = 1000
    return c
