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

import jax.numpy as jnp

from jaxsmooth.errors import UserError
from jaxsmooth.objectives import bootcamp, gaussian, heat, nal, sigma, smoothadv, standard

_BUILDERS = {
    "standard": standard.make,
    "gaussian": gaussian.make,
    "heat": heat.make,
    "bootcamp": bootcamp.make,
    "nal": nal.make,
    "wrm": nal.make_wrm,
    "smoothadv": smoothadv.make,
    "sigma": sigma.make,
}

NAMES = tuple(_BUILDERS)
DISTANCES = heat.DISTANCES
# Objectives that start from a pretrained model (train.init_from), held frozen as the `teacher`.
DISTILLING = ("heat", "bootcamp", "sigma")
# Of those, the ones whose teacher becomes the trained model at each timestep boundary (heat Alg. 1).
RETEACHING = ("heat", "bootcamp")
# Objectives that train a pytree of their own, not the model (`initial_variables`): the teacher is the classifier.
OWN_VARIABLES = ("sigma",)


def initial_variables(config, params, model_state, input_shape):
    """``(params, model_state)`` that the objective trains: the model's own, or (`OWN_VARIABLES`) its pytree.

    ``sigma``: ``({"log_sigma": [*input_shape]}, {})``, the frozen classifier being the teacher.
    """
    if config.objective.name == "sigma":
        return sigma.initial_variables(config, input_shape)
    return params, model_state


def smoothed(config, params, model_state, teacher):
    """``(params, model_state, sigma)`` of the smoothed classifier a train state stands for (for evaluation).

    The model and the constant ``objective.sigma``; for ``sigma``, the frozen
    teacher and the learned per-pixel exp(log_sigma).
    """
    if config.objective.name == "sigma":
        return (*teacher, jnp.exp(params["log_sigma"]))
    return params, model_state, config.objective.sigma


def area_eval(config, apply: Callable) -> Callable | None:
    """For ``sigma`` runs, the test-split certified-area evaluation of `sigma.make_area_eval` with n0 draws; else None."""
    if config.objective.name != "sigma":
        return None
    return sigma.make_area_eval(apply, int(config.objective.num_noise))


def build(config, apply: Callable, teacher=None) -> Callable:
    """Returns the loss function named by ``config.objective.name``.

    Args:
      config: the resolved experiment config.
      apply: the model's pure ``apply(params, model_state, x, *, train)``.
      teacher: frozen ``(params, model_state)`` of a teacher model, for the
        objectives that distil one (``heat``, ``bootcamp``), the frozen
        classifier for ``sigma`` (`DISTILLING`); unused by the others (``standard``, ``gaussian``, ``nal``, ``wrm``,
        ``smoothadv``).
    """
    name = config.objective.name
    if name not in _BUILDERS:
        raise UserError("objective.name", f"unknown objective {name!r}; allowed: {', '.join(NAMES)}")
    return _BUILDERS[name](config, apply, teacher)
