"""Non-uniform smoothing on ImageNet (non_uniform Alg. 1, appendix B): a per-pixel sigma for a frozen ResNet-50.

    python -m jaxsmooth.train --config configs/imagenet_sigma.py --workdir workdirs/imagenet_sigma \
        --config.train.init_from=workdirs/imagenet_resnet50 --config.objective.sigma=0.25

Appendix B: Adam, learning rate 1e-3, 10 sub-epochs per initial sigma, the
learning rate x0.8 after each; batch 2; n0 = 32 (§5.2). The paper samples a
5000-image train set from ILSVRC 2012; this config reads the whole train
split (shorten it with --config.train.num_epochs or a subset dataset). One
sub-epoch is one epoch here (the step schedule decays per whole epoch).
The batch of 2 splits over at most 2 devices; on more, raise
--config.train.batch_size to a multiple of the device count.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "imagenet2012"
    c.data.augment = "none"  # center crops: sigma is per pixel
    c.data.image_size = 224
    c.model.name = "resnet50"
    c.objective.name = "sigma"
    c.objective.sigma = 0.25  # initial constant sigma
    c.sigma.num_noise = 32  # n0
    c.train.init_from = "workdirs/imagenet_resnet50"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "step"
    c.optimizer.decay_every_epochs = 1  # a sub-epoch
    c.optimizer.decay_factor = 0.8
    c.train.batch_size = 2
    c.train.num_epochs = 10
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_batch_size = 64
    return c
