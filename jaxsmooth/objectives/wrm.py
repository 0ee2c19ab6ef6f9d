"""``wrm``: Wasserstein robust training (Sinha et al. 2018), NAL's ascent without noise.

    min_theta E_x sup_x' [ l(theta; x') - gamma ||x' - x||_2^2 ]

the sup approximated by ``wrm.ascent_steps`` gradient-ascent steps from the
clean input, as `nal`'s with r = 1 draw and sigma = 0 (objectives/nal.py
gives the ascent and its choices). ``objective.sigma`` sets only the noisy
evaluation. nal §5 compares it with NAL (Fig. 2(c)), both with ELU.
"""

from __future__ import annotations

import ml_collections

from jaxsmooth.objectives.base import Objective
from jaxsmooth.objectives.nal import ascent_loss, check_ascent


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.ascent_steps = 4  # gradient-ascent steps of the inner sup; 0: none
    c.ascent_lr = 0.0  # the ascent step; 0: 0.5 / gamma
    c.gamma = 1.0  # the penalty gamma on the transport cost ||x' - x||^2
    c.clip = False  # keep the ascent's x' in [0, 1] (false: X = R^d)
    return c


def validate(config) -> None:
    check_ascent(config.wrm, "wrm")


def make(config, apply, teacher=None):
    del teacher
    validate(config)
    return ascent_loss(config.wrm, apply, num_noise=1, sigma=0.0)


OBJECTIVE = Objective(
    name="wrm",
    reference="Sinha, Namkoong, Duchi 2018: Certifying some distributional robustness with principled "
              "adversarial training (WRM)",
    make_loss=make,
    defaults=defaults,
    validate=validate,
    renamed={"objective.pgd_steps": "wrm.ascent_steps", "objective.pgd_lr": "wrm.ascent_lr",
             "objective.gamma": "wrm.gamma", "objective.clip": "wrm.clip"},
)
