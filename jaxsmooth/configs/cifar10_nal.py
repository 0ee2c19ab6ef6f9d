"""NAL on CIFAR-10 with ResNet-18 (nal §5, Table 1): sigma 0.1, gamma 1.5, K = r = 4, 100 epochs.

    python -m jaxsmooth.train --config configs/cifar10_nal.py --workdir workdirs/cifar10_nal

Table 1's other gammas are 0.25 and 5; gamma 1.5 is the paper's best on
CIFAR-10 (§5). eta_1 = 0.5 / gamma (nal.ascent_lr = 0). ReLU, as NAL's
comparison with SmoothAdv (Fig. 3(b)); --config.model.activation=elu for the
WRM comparison. eta_2 = 1e-4 with Adam (the paper does not name the optimizer).
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "cifar10"
    c.data.augment = "cifar"  # 4-pixel pad + random crop + horizontal flip
    c.model.name = "resnet18"
    c.model.activation = "relu"
    c.objective.name = "nal"
    c.objective.sigma = 0.1
    c.nal.gamma = 1.5
    c.nal.ascent_lr = 0.0  # eta_1 = 0.5 / gamma
    c.nal.ascent_steps = 4  # K
    c.nal.num_noise = 4  # r
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-4  # eta_2
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.train.batch_size = 128
    c.train.num_epochs = 100
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_batch_size = 1000
    return c
