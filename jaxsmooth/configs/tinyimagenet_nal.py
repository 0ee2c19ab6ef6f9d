"""NAL on Tiny ImageNet (nal §5, Table 1): ResNet-18, 64x64x3, 200 classes, sigma 0.1, gamma 1.5, eta_2 2e-5.

    python -m jaxsmooth.train --config configs/tinyimagenet_nal.py --workdir workdirs/tinyimagenet_nal \
        --config.data.name=npz:~/data/tiny_imagenet.npz

Tiny ImageNet is not in the tensorflow-datasets catalogue: give it as an
``npz:`` file (x_train [100000, 64, 64, 3] uint8, y_train, x_test [10000, ...],
y_test; the validation split as test, as the paper's evaluation), or point
data.name at any tfds source of that shape (e.g. ``imagenet_resized/64x64``,
1,000 classes). ResNet-18 with the CIFAR stem keeps the 64x64 resolution in
its first stage.
"""

import os

from jaxsmooth.config import load


def get_config():
    c = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_nal.py"))
    c.data.name = "npz:~/data/tiny_imagenet.npz"
    c.data.augment = "cifar"  # 4-pixel pad, random 64x64 crop, horizontal flip
    c.optimizer.learning_rate = 2e-5  # Table 1's eta_2 for Tiny ImageNet
    return c
