"""Cohen et al. (2019) ImageNet training: ResNet-50, 90 epochs, SGD lr 0.1 / 10 every 30, batch 256.

Needs `imagenet2012` prepared in a tensorflow-datasets data_dir:
    --config.data.data_dir=/path/to/tensorflow_datasets
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "imagenet2012"
    c.data.augment = "imagenet"  # random-resized crop + flip; eval resize 256 / center crop 224
    c.data.image_size = 224
    c.model.name = "resnet50"
    c.objective.name = "gaussian"
    c.objective.sigma = 0.25  # Cohen et al. use {0.25, 0.5, 1.0}
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "step"
    c.optimizer.decay_every_epochs = 30
    c.optimizer.decay_factor = 0.1
    c.train.batch_size = 256
    c.train.num_epochs = 90
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 2000
    c.train.eval_batch_size = 512
    return c
