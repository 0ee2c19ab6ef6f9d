"""Adversarial Boot Camp's one-epoch retraining (eq. 10) applied to CIFAR-10: ResNet-34, sigma 0.1, SGD at 0.01.

The paper's CIFAR-10 appendix runs the HeatSmoothing schedule instead (`configs/cifar10_heat.py`);
this is the ImageNet recipe of §4 on the CIFAR-10 model, from `train.init_from`.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "cifar10"
    c.data.augment = "cifar"
    c.model.name = "resnet34"
    c.objective.name = "bootcamp"
    c.objective.sigma = 0.1
    c.bootcamp.kappa = 10
    c.bootcamp.delta = 0.1
    c.bootcamp.num_epochs = 1
    c.train.init_from = "workdirs/cifar10_resnet34"
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.0
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.train.batch_size = 128
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 100
    c.train.eval_batch_size = 1000
    return c
