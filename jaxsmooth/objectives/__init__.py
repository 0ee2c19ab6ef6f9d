"""Training objectives, picked by name from the config: one file each, one line each in `REGISTRY`.

An objective file ends with ``OBJECTIVE = base.Objective(...)``: its loss,
its config block, its teacher policy, the variables it trains, the smoothed
classifier it stands for, its extra evaluation and its paper
(`base.Objective`). The trainer asks `get(config.objective.name)` and knows
no objective by name.
"""

from __future__ import annotations

from typing import Callable

from jaxsmooth.errors import UserError
from jaxsmooth.objectives import bootcamp, denoise, gaussian, heat, nal, sigma, smoothadv, standard, wrm
from jaxsmooth.objectives.base import Evaluation, Objective, Teacher

REGISTRY: dict[str, Objective] = {}

# Names of config sections an objective's block may not take.
RESERVED = ("seed", "data", "model", "objective", "optimizer", "train", "certify")


def register(objective: Objective) -> Objective:
    """Adds `objective` to `REGISTRY` (its config block joins `jaxsmooth.config.default`); returns it."""
    if objective.name in RESERVED or not objective.name.isidentifier():
        raise ValueError(f"an objective cannot be named {objective.name!r}: it names its config block, "
                         f"which must be an identifier other than {', '.join(RESERVED)}")
    REGISTRY[objective.name] = objective
    return objective


for _objective in (standard.OBJECTIVE, gaussian.OBJECTIVE, heat.OBJECTIVE, bootcamp.OBJECTIVE, nal.OBJECTIVE,
                   wrm.OBJECTIVE, smoothadv.OBJECTIVE, sigma.OBJECTIVE, denoise.OBJECTIVE):
    register(_objective)


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Objective:
    """The registered objective `name`, or a `UserError` on ``objective.name`` listing the others."""
    if name not in REGISTRY:
        raise UserError("objective.name", f"unknown objective {name!r}; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build(config, apply: Callable, teacher=None) -> Callable:
    """The loss of ``config.objective.name``: ``loss(params, model_state, batch, key) -> (scalar, aux)``.

    Args:
      config: the resolved experiment config.
      apply: the model's pure ``apply(params, model_state, x, *, train)``.
      teacher: frozen ``(params, model_state)`` for an objective with a teacher
        policy (`base.Teacher`); unused by the others.
    """
    return get(config.objective.name).make_loss(config, apply, teacher)


__all__ = ["Evaluation", "Objective", "REGISTRY", "Teacher", "build", "get", "names", "register"]
