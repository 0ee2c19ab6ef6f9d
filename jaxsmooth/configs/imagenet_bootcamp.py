"""Adversarial Boot Camp on ImageNet (boot camp §4, eq. 10): ResNet-50, sigma 0.25, one epoch of SGD at 0.01.

Retrains a pretrained ResNet-50 (`train.init_from`; the paper's was trained 29 epochs with cross-entropy,
or an adversarially trained one, §4.2) without labels, noise on half of each batch.
Needs `imagenet2012` prepared in a tensorflow-datasets data_dir (--config.data.data_dir=...).
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "imagenet2012"
    c.data.augment = "imagenet"
    c.data.image_size = 224
    c.model.name = "resnet50"
    c.objective.name = "bootcamp"
    c.objective.sigma = 0.25
    c.bootcamp.kappa = 10
    c.bootcamp.delta = 0.1
    c.bootcamp.num_epochs = 1
    c.train.init_from = "workdirs/imagenet_resnet50"
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.0
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.train.batch_size = 256
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_batch_size = 512
    return c
