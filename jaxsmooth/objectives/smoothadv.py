"""``smoothadv``: adversarial training of the smoothed classifier (Salman et al. 2019, SmoothAdv-PGD).

The attack maximises the loss of the soft smoothed classifier, estimated with
m = ``smoothadv.num_noise`` draws z_j ~ N(0, sigma^2 I),

    L(x') = -log( (1/m) sum_j softmax(f(x' + z_j))_y ),

by ``smoothadv.pgd_steps`` steps of normalised-gradient ell_2 PGD of size
2 epsilon / steps from x, each followed by the projection onto
||x' - x||_2 <= epsilon (``smoothadv.epsilon``), as in Salman et al.'s
``PGD_L2``. The model then descends the Gaussian-noise cross-entropy at the
adversarial points, (1/m) sum_j l(theta; x' + z_j), with x' held constant.

As in Salman et al.'s code (``train_pgd.py``), the noise is drawn once per
example and step and reused: the same z_j in every attack step and in the
parameter loss; the attack runs the model in inference mode and the
parameter loss in training mode. Their code also clamps x' to [0, 1]
before projecting; here that is ``smoothadv.clip = True`` (off by default,
like ``nal``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxsmooth import noise
from jaxsmooth.objectives.base import Objective, check_positive
from jaxsmooth.objectives.nal import UNROLL, DrawLoss, draw_losses, noisy_loss


def _per_example_norm(v: jax.Array) -> jax.Array:
    """||v_b||_2 as [B, 1, ..., 1], broadcastable to v."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))


def soft_smoothed_loss(loss_fn: DrawLoss, x: jax.Array, z: jax.Array) -> jax.Array:
    """-log((1/m) sum_j exp(-l(x + z_j))) per example: with l the cross-entropy, -log of the mean softmax_y.

    Args:
      loss_fn: ``s [B, m, *shape] -> [B, m]`` per-draw cross-entropies.
      x: [B, *shape]; z: [B, m, *shape].
    Returns:
      [B] float32.
    """
    m = z.shape[1]
    return -(jax.nn.logsumexp(-loss_fn(x[:, None] + z), axis=1) - jnp.log(m))


def attack(loss_fn: DrawLoss, x0: jax.Array, z: jax.Array, *, epsilon: float, steps: int,
           clip: bool = False) -> jax.Array:
    """SmoothAdv-PGD (Salman et al. 2019, §4): ell_2 PGD on `soft_smoothed_loss` within radius epsilon of x0.

    Args:
      loss_fn: per-draw losses, separable over examples (inference mode).
      x0: [B, *shape] clean inputs, the start.
      z: [B, m, *shape] noise draws, fixed over the steps.
      epsilon: the ell_2 radius; steps: PGD steps, each of size 2 epsilon / steps.
      clip: clamp x' to [0, 1] before each projection (Salman et al.'s code does).
    Returns:
      [B, *shape] x' with ||x' - x0||_2 <= epsilon.
    """
    step_size = 2.0 * epsilon / max(steps, 1)
    grad = jax.grad(lambda x: soft_smoothed_loss(loss_fn, x, z).sum())

    def step(x, _):
        g = grad(x)
        norm = _per_example_norm(g)
        x = x + step_size * g / jnp.where(norm > 0, norm, 1.0)
        if clip:
            x = jnp.clip(x, 0.0, 1.0)
        delta = x - x0
        norm = _per_example_norm(delta)
        delta = delta * jnp.minimum(1.0, epsilon / jnp.where(norm > 0, norm, 1.0))
        return x0 + delta, None

    x, _ = jax.lax.scan(step, x0, None, length=steps, unroll=True if steps <= UNROLL else UNROLL)  # see nal.UNROLL
    return x


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_noise = 4  # m, noise draws per example of the soft smoothed classifier
    c.pgd_steps = 4  # ell_2 PGD steps of the attack, each 2 epsilon / pgd_steps long; 0: none
    c.epsilon = 0.5  # ell_2 radius of the attack
    c.clip = False  # clamp x' to [0, 1] before each projection (Salman et al.'s code does)
    return c


def validate(config) -> None:
    o = config.smoothadv
    check_positive(o.epsilon, "smoothadv.epsilon", "the ell_2 attack radius")
    check_positive(o.num_noise, "smoothadv.num_noise", "noise draws m per example")
    check_positive(o.pgd_steps, "smoothadv.pgd_steps", "PGD steps", allow_zero=True)


def make(config, apply, teacher=None):
    del teacher
    validate(config)
    o = config.smoothadv
    sigma, num_noise = float(config.objective.sigma), int(o.num_noise)
    kwargs = dict(epsilon=float(o.epsilon), steps=int(o.pgd_steps), clip=bool(o.clip))

    def loss(params, model_state, batch, key):
        x0, labels = batch["image"], batch["label"]
        z = noise.isotropic_draws(key, batch["index"], x0.shape[1:], sigma, num_noise, x0.dtype)
        frozen_params, frozen_state = jax.lax.stop_gradient((params, model_state))
        inner = draw_losses(apply, frozen_params, frozen_state, labels, train=False)
        x_adv = jax.lax.stop_gradient(attack(inner, x0, z, **kwargs))
        value, aux = noisy_loss(apply, params, model_state, x_adv, z, labels)
        del aux["per_draw"]
        aux["metrics"]["perturbation"] = _per_example_norm(x_adv - x0).mean()
        return value, aux

    return loss



OBJECTIVE = Objective(
    name="smoothadv",
    reference="Salman et al. 2019: Provably robust deep learning via adversarially trained smoothed "
              "classifiers (SmoothAdv-PGD)",
    make_loss=make,
    defaults=defaults,
    validate=validate,
    renamed={"objective.num_noise": "smoothadv.num_noise", "objective.pgd_steps": "smoothadv.pgd_steps",
             "objective.epsilon": "smoothadv.epsilon", "objective.clip": "smoothadv.clip"},
)
