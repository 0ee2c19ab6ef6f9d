"""NAL on CIFAR-10 with VGG-16 (nal §5, Table 1's second CIFAR-10 row): as cifar10_nal.py, model vgg16.

    python -m jaxsmooth.train --config configs/cifar10_nal_vgg16.py --workdir workdirs/cifar10_nal_vgg16

Table 1 pairs gamma {0.25, 1.5, 5} with eps {1.23, 0.57, 0.28} for VGG-16.
"""

import os

from jaxsmooth.config import load


def get_config():
    c = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_nal.py"))
    c.model.name = "vgg16"
    return c
