"""The starting model of the digits HeatSmoothing / Boot Camp runs: the quick-start recipe without noise.

    python -m jaxsmooth.train --config configs/digits_standard.py --workdir workdirs/digits_standard
"""

import os

from jaxsmooth.config import load


def get_config():
    c = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.objective.name = "standard"  # sigma stays: the noisy evaluation's
    return c
