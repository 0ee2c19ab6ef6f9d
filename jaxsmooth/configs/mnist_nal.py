"""NAL on MNIST (nal §5, Table 1): the three-layer `cnn`, sigma 0.05, gamma 0.25, K = r = 4, 25 epochs.

    python -m jaxsmooth.train --config configs/mnist_nal.py --workdir workdirs/mnist_nal

Table 1's other MNIST gammas are 1.5 and 3 (--config.nal.gamma=1.5);
eta_1 = 0.5 / gamma follows from nal.ascent_lr = 0. NAL keeps ReLU (nal §3.2:
it needs no smooth activation); the WRM comparison of Fig. 2(c) uses ELU on
both: --config.model.activation=elu, and for WRM --config.objective.name=wrm
--config.wrm.gamma=0.25 (WRM's block has its own gamma, K and eta_1).
The paper gives eta_2 = 1e-4 but not the optimizer; a step of 1e-4 suits Adam,
not plain SGD, so this uses Adam.
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "mnist"
    c.model.name = "cnn"
    c.model.activation = "relu"
    c.objective.name = "nal"
    c.objective.sigma = 0.05
    c.nal.gamma = 0.25
    c.nal.ascent_lr = 0.0  # eta_1 = 0.5 / gamma = 2.0
    c.nal.ascent_steps = 4  # K
    c.nal.num_noise = 4  # r
    c.nal.cost_with_noise = True
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-4  # eta_2
    c.optimizer.momentum = 0.9  # Adam's b1
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.train.batch_size = 128
    c.train.num_epochs = 25
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    c.train.eval_batch_size = 1000
    return c
