"""``standard``: cross-entropy on clean inputs (the undefended baseline, and the model heat and bootcamp start from)."""

from __future__ import annotations

from jaxsmooth.objectives.base import Objective
from jaxsmooth.objectives.common import classification_loss


def make(config, apply, teacher=None):
    del config, teacher

    def loss(params, model_state, batch, key):
        del key
        return classification_loss(apply, params, model_state, batch["image"], batch["label"])

    return loss


OBJECTIVE = Objective(name="standard", reference="cross-entropy on clean inputs", make_loss=make)
