"""Training objectives: pure loss functions picked by name from the config.

Every objective has one signature (DESIGN.md, "The functional core")::

    loss(params, model_state, batch, key) -> (scalar, Aux)
    Aux = {"model_state": new BatchNorm statistics, "metrics": {name: scalar}}
    batch = {"image": [B, H, W, C] float32 in [0, 1], "label": [B] int32,
             "index": [B] int32 global example indices}

`key` is the step key; an objective derives each example's noise from
``fold_in(key, batch["index"][b])`` (`jaxsmooth.noise`). The trainer knows
nothing about any one objective.
"""

from __future__ import annotations

from typing import Callable

from jaxsmooth.errors import UserError
from jaxsmooth.objectives import bootcamp, gaussian, heat, nal, smoothadv, standard

_BUILDERS = {
    "standard": standard.make,
    "gaussian": gaussian.make,
    "heat": heat.make,
    "bootcamp": bootcamp.make,
    "nal": nal.make,
    "wrm": nal.make_wrm,
    "smoothadv": smoothadv.make,
}

NAMES = tuple(_BUILDERS)
DISTANCES = heat.DISTANCES
# Objectives that retrain a pretrained model towards a frozen teacher (train.init_from).
DISTILLING = ("heat", "bootcamp")


def build(config, apply: Callable, teacher=None) -> Callable:
    """Returns the loss function named by ``config.objective.name``.

    Args:
      config: the resolved experiment config.
      apply: the model's pure ``apply(params, model_state, x, *, train)``.
      teacher: frozen ``(params, model_state)`` of a teacher model, for the
        objectives that distil one (`DISTILLING`: ``heat``, ``bootcamp``);
        unused by the others (``standard``, ``gaussian``, ``nal``, ``wrm``,
        ``smoothadv``).
    """
    name = config.objective.name
    if name not in _BUILDERS:
        raise UserError("objective.name", f"unknown objective {name!r}; allowed: {', '.join(NAMES)}")
    return _BUILDERS[name](config, apply, teacher)
