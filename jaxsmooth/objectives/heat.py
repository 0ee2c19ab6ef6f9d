"""``heat``: one timestep of HeatSmoothing (heat eq. 4, Alg. 1).

Timestep k retrains v to stay close to the frozen previous model f^k while
penalising its input Jacobian, an implicit Euler step of the heat equation
with h = 1 / n_T:

    f^{k+1} = argmin_v E_x [ d(v(x), f^k(x)) + lambda sigma^2 / (2 n_T) ||J_x v(x)||_F^2 ]   (eq. 4)

It uses no labels. The trainer runs ``heat.timesteps`` timesteps of
``heat.epochs_per_timestep`` epochs each, starting from the model in
``train.init_from`` (f^0 = f) and passing f^k as the `teacher` (`OBJECTIVE`'s
teacher policy).

The distance d is picked by ``heat.distance`` (`DISTANCES`): ``l2`` is the
paper's CIFAR-10 choice, ``kl`` its ImageNet one (§4) and ``softmax_l2``
Adversarial Boot Camp's (bootcamp eq. 3). The penalty is
`penalty.finite_difference_penalty`, an unbiased estimate of ||J||_F^2; the
paper's Alg. 1 sums its kappa projections without the K / kappa factor, which
is the same when kappa = K (its CIFAR-10 setting), and otherwise differs by a
factor absorbed into lambda.

Train/eval mode: v runs in training mode everywhere, as in the paper's code
(Alg. 1: "a model v set to 'train' mode"), including the penalty's forward
passes, which therefore normalise by the statistics of their own batches
(B clean, kappa * B shifted inputs). Only the main forward pass's BatchNorm
statistics are returned; the penalty's are discarded. The teacher runs in
inference mode (``train=False``) under `lax.stop_gradient`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from jaxsmooth.errors import UserError
from jaxsmooth.objectives.base import Objective, Teacher, check_choice, check_positive, require_teacher
from jaxsmooth.objectives.penalty import finite_difference_penalty

DISTANCES = ("l2", "kl", "softmax_l2")


def distance(name: str, logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """Per-example distance between the model's and the teacher's outputs.

    ``l2``: (1/2) ||v - f||^2 of the logits, summed over classes (heat eq. 4).
    ``kl``: KL(softmax f || softmax v) (heat §4, ImageNet).
    ``softmax_l2``: (1/2) ||softmax v - softmax f||^2 (bootcamp eq. 3, eq. 10).

    Args:
      logits: [B, K] outputs of the trained model v.
      teacher_logits: [B, K] outputs of the teacher f^k.
    Returns:
      [B] float32 distances, each >= 0 and 0 where the two outputs are equal.
    """
    if name == "l2":
        return 0.5 * jnp.sum(jnp.square(logits - teacher_logits), axis=-1)
    if name == "softmax_l2":
        diff = jax.nn.softmax(logits, axis=-1) - jax.nn.softmax(teacher_logits, axis=-1)
        return 0.5 * jnp.sum(jnp.square(diff), axis=-1)
    if name == "kl":
        log_p = jax.nn.log_softmax(teacher_logits, axis=-1)
        log_q = jax.nn.log_softmax(logits, axis=-1)
        return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    raise UserError("distance", f"unknown distance {name!r}; allowed: {', '.join(DISTANCES)}")


def smoothing_loss(apply: Callable, params, model_state, teacher, images: jax.Array, key: jax.Array,
                   index: jax.Array, *, distance_name: str, weight: float, kappa: int, delta: float,
                   teacher_images: jax.Array | None = None):
    """mean_b d(v(x_b), f(x_b)) + weight * mean_b ||J_x v(x_b)||_F^2 (estimated), shared by heat and bootcamp.

    Args:
      apply: the model's ``apply(params, model_state, x, *, train)``.
      teacher: frozen ``(params, model_state)`` of f, same architecture as v.
      images: [B, H, W, C] float32, the inputs both v and f see.
      key: the penalty's key; example b draws its projections from ``fold_in(key, index[b])``.
      index: [B] int32 global example indices.
      weight: the penalty's coefficient (heat: lambda sigma^2 / (2 n_T); bootcamp: sigma^2 / 2).
      teacher_images: what f sees instead of `images` (bootcamp eq. 10: the clean x while v sees x + eta).
    Returns:
      (loss, aux) in the objective interface; metrics ``distance``, ``penalty``, ``loss``.
    """
    teacher_params, teacher_state = jax.lax.stop_gradient(teacher)
    teacher_logits, _ = apply(teacher_params, teacher_state, images if teacher_images is None else teacher_images,
                              train=False)
    teacher_logits = jax.lax.stop_gradient(teacher_logits)

    logits, new_state = apply(params, model_state, images, train=True)
    dist = distance(distance_name, logits, teacher_logits).mean()
    penalty = finite_difference_penalty(lambda z: apply(params, model_state, z, train=True)[0], images, key,
                                        kappa=kappa, delta=delta, index=index).mean()
    loss = dist + weight * penalty
    return loss, {"model_state": new_state, "metrics": {"distance": dist, "penalty": penalty, "loss": loss}}


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.lam = 5.0  # lambda, scale of the gradient penalty: its weight is lam sigma^2 / (2 timesteps) (heat eq. 4)
    c.kappa = 10  # JL projections per example of the penalty (heat eq. 17-18)
    c.delta = 0.1  # finite-difference step of the penalty (heat eq. 17)
    c.distance = "l2"  # to the teacher: l2 (logits, CIFAR-10) | kl (ImageNet) | softmax_l2 (heat §4)
    c.timesteps = 5  # n_T, retraining timesteps (Alg. 1)
    c.epochs_per_timestep = 1  # the run lasts timesteps x epochs_per_timestep epochs (not train.num_epochs)
    return c


def validate(config) -> None:
    h = config.heat
    check_positive(h.lam, "heat.lam", allow_zero=True)
    check_positive(h.kappa, "heat.kappa")
    check_positive(h.delta, "heat.delta")
    check_choice(h.distance, "heat.distance", DISTANCES)
    check_positive(h.timesteps, "heat.timesteps")
    check_positive(h.epochs_per_timestep, "heat.epochs_per_timestep")


def make(config, apply, teacher=None):
    validate(config)
    teacher = require_teacher(config, teacher)
    h = config.heat
    weight = float(h.lam) * float(config.objective.sigma) ** 2 / (2 * int(h.timesteps))
    kwargs = dict(distance_name=h.distance, weight=weight, kappa=int(h.kappa), delta=float(h.delta))

    def loss(params, model_state, batch, key):
        return smoothing_loss(apply, params, model_state, teacher, batch["image"], key, batch["index"], **kwargs)

    return loss


OBJECTIVE = Objective(
    name="heat",
    reference="Campbell, Finlay, Oberman: Deterministic Gaussian Averaged Neural Networks (heat eq. 4, Alg. 1)",
    make_loss=make,
    defaults=defaults,
    validate=validate,
    teacher=Teacher(every_epochs=lambda config: config.heat.epochs_per_timestep),
    num_epochs=lambda config: config.heat.timesteps * config.heat.epochs_per_timestep,
    renamed={f"objective.{f}": f"heat.{f}" for f in ("lam", "kappa", "delta", "distance", "timesteps",
                                                    "epochs_per_timestep")},
)
