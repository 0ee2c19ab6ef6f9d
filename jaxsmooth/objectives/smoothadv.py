"""``smoothadv``: adversarial training of the smoothed classifier (Salman et al. 2019, SmoothAdv-PGD).

The attack maximises the loss of the soft smoothed classifier, estimated with
m = ``objective.num_noise`` draws z_j ~ N(0, sigma^2 I),

    L(x') = -log( (1/m) sum_j softmax(f(x' + z_j))_y ),

by ``objective.pgd_steps`` steps of normalised-gradient ell_2 PGD of size
2 epsilon / steps from x, each followed by the projection onto
||x' - x||_2 <= epsilon (``objective.epsilon``), as in Salman et al.'s
``PGD_L2``. The model then descends the Gaussian-noise cross-entropy at the
adversarial points, (1/m) sum_j l(theta; x' + z_j), with x' held constant.

As in Salman et al.'s code (``train_pgd.py``), the noise is drawn once per
example and step and reused: the same z_j in every attack step and in the
parameter loss; the attack runs the model in inference mode and the
parameter loss in training mode. Their code also clamps x' to [0, 1]
before projecting; here that is ``objective.clip = True`` (off by default,
like ``nal``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsmooth import noise
from jaxsmooth.errors import UserError
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


def make(config, apply, teacher=None):
    del teacher
    o = config.objective
    if not o.epsilon > 0:
        raise UserError("objective.epsilon", f"must be > 0 (the ell_2 attack radius), got {o.epsilon!r}")
    if not o.num_noise >= 1:
        raise UserError("objective.num_noise", f"must be >= 1 (noise draws m per example), got {o.num_noise!r}")
    if not o.pgd_steps >= 0:
        raise UserError("objective.pgd_steps", f"must be >= 0 (PGD steps), got {o.pgd_steps!r}")
    sigma, num_noise = float(o.sigma), int(o.num_noise)
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

