"""``bootcamp``: Adversarial Boot Camp's one-epoch retraining loss (bootcamp eq. 10, §4).

    (1/2) ||softmax v(x + eta) - softmax f(x)||^2 + sigma^2 / 2 ||J_x v(x + eta)||_F^2   (eq. 10)

f is the frozen original model (the `teacher`, from ``train.init_from``), v
the model being retrained from it. No labels are used. As in §4, noise
eta ~ N(0, sigma^2 I) is added to half of the training images: the first
``B // 2`` examples of each batch by position (the loss sees the global
batch, and batches are reshuffled each epoch, so which examples are noised
changes from epoch to epoch). v sees the possibly noisy input, the frozen
f the clean one, as eq. 10 writes it. eta of example b comes from ``fold_in(noise_key, index[b])``
(`jaxsmooth.noise.isotropic`) and the penalty's projections from
``fold_in(penalty_key, index[b])``, with ``noise_key, penalty_key =
jax.random.split(key)`` so that the two draws are independent.

The distance is eq. 10's ``softmax_l2`` unless ``bootcamp.distance`` names
another (`heat.DISTANCES`). The paper chose the softmax to keep the distance
from dominating the penalty with ImageNet's 1,000 classes; with 10 classes it
is too weak a tie to the teacher, and the penalty flattens the logits within a
few dozen steps (on digits: clean accuracy 0.98 -> 0.81 in 220 steps at the
paper's learning rate), so the digits and MNIST configs use ``kl``. The
penalty uses ``bootcamp.kappa`` and ``bootcamp.delta``, and v runs in
training mode as in `heat` (whose module docstring gives the details). The
teacher f stays the original model for the whole run: ``bootcamp.num_epochs``
(one in the paper) of retraining.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxsmooth import noise
from jaxsmooth.objectives.base import Objective, Teacher, check_choice, check_positive, require_teacher
from jaxsmooth.objectives.heat import DISTANCES, smoothing_loss


def noised_mask(batch_size: int) -> jax.Array:
    """[B] bool: which positions of a batch get noise (the first ``B // 2``)."""
    return jnp.arange(batch_size) < batch_size // 2


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kappa = 10  # JL projections per example of the penalty (heat eq. 17-18)
    c.delta = 0.1  # finite-difference step of the penalty (heat eq. 17)
    c.distance = "softmax_l2"  # to the teacher: softmax_l2 (eq. 10) | kl | l2 (heat.distance's)
    c.num_epochs = 1  # epochs of retraining, the teacher fixed (§4: one); the run reads no train.num_epochs
    return c


def validate(config) -> None:
    b = config.bootcamp
    check_positive(b.kappa, "bootcamp.kappa")
    check_positive(b.delta, "bootcamp.delta")
    check_choice(b.distance, "bootcamp.distance", DISTANCES)
    check_positive(b.num_epochs, "bootcamp.num_epochs")


def make(config, apply, teacher=None):
    validate(config)
    teacher = require_teacher(config, teacher)
    b = config.bootcamp
    sigma = float(config.objective.sigma)
    kwargs = dict(distance_name=b.distance, weight=sigma**2 / 2, kappa=int(b.kappa), delta=float(b.delta))

    def loss(params, model_state, batch, key):
        images, index = batch["image"], batch["index"]
        noise_key, penalty_key = jax.random.split(key)
        eta = noise.isotropic(noise_key, index, images.shape[1:], sigma, images.dtype)
        mask = noised_mask(images.shape[0]).reshape(-1, *(1,) * (images.ndim - 1))
        noisy = images + jnp.where(mask, eta, 0.0).astype(images.dtype)
        return smoothing_loss(apply, params, model_state, teacher, noisy, penalty_key, index, teacher_images=images,
                              **kwargs)

    return loss


OBJECTIVE = Objective(
    name="bootcamp",
    reference="Campbell, Finlay, Oberman: Adversarial Boot Camp (bootcamp eq. 10, §4)",
    make_loss=make,
    defaults=defaults,
    validate=validate,
    teacher=Teacher(),
    num_epochs=lambda config: config.bootcamp.num_epochs,
    renamed={"objective.kappa": "bootcamp.kappa", "objective.delta": "bootcamp.delta",
             "objective.distance": "bootcamp.distance", "objective.epochs_per_timestep": "bootcamp.num_epochs"},
)
