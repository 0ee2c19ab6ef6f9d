"""Cohen et al. (2019) CIFAR-10 training: ResNet-110, 90 epochs, SGD lr 0.1 / 10 every 30, batch 256.

Pick sigma from {0.12, 0.25, 0.5, 1.0} with --config.objective.sigma=0.5.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "cifar10"
    c.data.augment = "cifar"  # 4-pixel pad + random crop + horizontal flip
    c.model.name = "resnet110"
    c.objective.name = "gaussian"
    c.objective.sigma = 0.25
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "step"
    c.optimizer.decay_every_epochs = 30
    c.optimizer.decay_factor = 0.1
    c.train.batch_size = 256
    c.train.num_epochs = 90
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 1000
    c.train.eval_batch_size = 1000
    return c
