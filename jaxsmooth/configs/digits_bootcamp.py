"""Adversarial Boot Camp (eq. 10) on scikit-learn's digits, from a `standard` model.

    python -m jaxsmooth.train --config configs/digits_standard.py --workdir workdirs/digits_standard
    python -m jaxsmooth.train --config configs/digits_bootcamp.py --workdir workdirs/digits_bootcamp

SGD at a fixed learning rate 0.01 as the paper; its "one epoch" of ImageNet
is thousands of steps, so on the 1,437 digits the pass is repeated 20 times
(`bootcamp.num_epochs`): 440 steps, about one epoch of MNIST. The
distance is `kl`, not eq. 10's softmax-L2, which with 10 classes lets the
penalty flatten the logits (see jaxsmooth/objectives/bootcamp.py).
"""

from jaxsmooth.config import default


def get_config():
    c = default()
    c.data.name = "digits"
    c.model.name = "cnn"
    c.model.width = 32
    c.objective.name = "bootcamp"
    c.objective.sigma = 0.25
    c.bootcamp.kappa = 10
    c.bootcamp.delta = 0.1
    c.bootcamp.distance = "kl"
    c.bootcamp.num_epochs = 20
    c.train.init_from = "workdirs/digits_standard"
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.0
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "constant"
    c.train.batch_size = 64
    c.train.log_every_steps = 22
    c.train.checkpoint_every_steps = 220
    c.train.eval_every_epochs = 10
    c.train.eval_batch_size = 120
    return c
