"""``gaussian``: cross-entropy under Gaussian noise (Cohen et al. 2019, §4 training).

The base classifier is trained on ``x + eta``, eta ~ N(0, sigma^2 I), one
fresh draw per example and step, added in pixel space and not clipped (as
Cohen et al. do), so that f is accurate under the noise it is smoothed with.
"""

from __future__ import annotations

from jaxsmooth import noise
from jaxsmooth.objectives.base import Objective
from jaxsmooth.objectives.common import classification_loss


def make(config, apply, teacher=None):
    del teacher
    sigma = float(config.objective.sigma)

    def loss(params, model_state, batch, key):
        images = batch["image"]
        eta = noise.isotropic(key, batch["index"], images.shape[1:], sigma, images.dtype)
        return classification_loss(apply, params, model_state, images + eta, batch["label"])

    return loss


OBJECTIVE = Objective(
    name="gaussian",
    reference="Cohen, Rosenfeld, Kolter 2019: Certified adversarial robustness via randomized smoothing (§4)",
    make_loss=make,
)
