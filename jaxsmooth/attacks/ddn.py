"""Decoupled Direction and Norm (Rony et al. 2019, Alg. 1), deterministic or smoothed (heat §3.4).

DDN searches for the smallest ell_2 adversarial by moving the direction and
the norm of the perturbation separately. With delta_0 = 0 and eps_0 =
`init_epsilon`, step t = 0 .. steps - 1 does

    g_t       = grad_x L at x_t = x + delta_t (heat eq. 8, or eq. 9 in the smoothed form; key fold_in(key, t))
    delta'    = delta_t + alpha_t g_t / ||g_t||_2
    eps_{t+1} = (1 - gamma) eps_t if x_t is adversarial else (1 + gamma) eps_t
    delta_t+1 = clip(x + eps_{t+1} delta' / ||delta'||_2, 0, 1) - x

with alpha_t cosine-annealed from `step_size` to `min_step_size` (as in the
authors' code). eps is also capped at the largest distance any point of
[0, 1]^D can have from x, ||max(x, 1 - x)||_2, so that it never grows where
it cannot matter. Unlike PGD, DDN keeps moving after a success (it shrinks
eps); what it returns is the smallest-norm adversarial among the points it
checked: x_0 .. x_{steps-1} with their step's forward pass, and the last
point x_steps with the key ``fold_in(key, steps)``.

A pure, jit-able function of the batch: one ``lax.fori_loop`` over the
static number of steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsmooth.attacks.common import (REFERENCE_STREAM, AttackLoss, AttackResult, ascent_direction, check_positive,
                                      check_steps, default_index, expand, l2_norm, per_example_setting, rescale)
from jaxsmooth.errors import UserError


def cosine_step_sizes(steps: int, step_size: float, min_step_size: float) -> jax.Array:
    """[steps] alpha_t = min + (max - min) (1 + cos(pi t / steps)) / 2, from `step_size` towards `min_step_size`."""
    t = jnp.arange(steps, dtype=jnp.float32)
    return min_step_size + (step_size - min_step_size) * (1 + jnp.cos(jnp.pi * t / steps)) / 2


def ddn(attack_loss: AttackLoss, images: jax.Array, labels: jax.Array, key: jax.Array, *, steps: int,
        step_size: float = 1.0, min_step_size: float = 0.01, gamma: float = 0.05, init_epsilon: float = 1.0,
        index: jax.Array | None = None) -> AttackResult:
    """DDN (Rony et al. 2019, Alg. 1; module docstring) with the gradient step of heat eq. 8 or 9.

    Args:
      attack_loss: from `make_loss`.
      images: [B, H, W, C] float32 in [0, 1].
      labels: [B] int32 true labels.
      key: the attack's key (step t draws from ``fold_in(key, t)``).
      steps: number of steps, a static int >= 1 (Rony et al.: 100 to 1000; heat: 20).
      step_size: alpha at the first step, a scalar > 0 (Rony et al.: 1.0).
      min_step_size: alpha at the end of the cosine schedule, a scalar >= 0 (authors' code: 0.01).
      gamma: the norm's multiplicative update, in (0, 1) (Rony et al.: 0.05).
      init_epsilon: eps_0, a scalar or [B], > 0 (Rony et al.: 1.0).
      index: [B] int32 global example indices (the smoothed form's noise follows them); default ``arange(B)``.
    Returns:
      `AttackResult`: the smallest adversarial found per example, success,
      and its distance (inf where DDN found none).
    """
    batch = images.shape[0]
    steps = check_steps(steps)
    if isinstance(gamma, (int, float)) and not 0 < gamma < 1:
        raise UserError("gamma", f"must be in (0, 1) (Rony et al.: 0.05), got {gamma!r}")
    if isinstance(min_step_size, (int, float)) and not min_step_size >= 0:
        raise UserError("min_step_size", f"must be >= 0, got {min_step_size!r}")
    check_positive(step_size, "step_size")
    epsilon = per_example_setting(init_epsilon, batch, "init_epsilon")
    index = default_index(index, batch)
    reference = attack_loss.reference(images, jax.random.fold_in(key, REFERENCE_STREAM), index)
    alphas = cosine_step_sizes(steps, step_size, min_step_size)
    farthest = l2_norm(jnp.maximum(images, 1.0 - images))

    def keep_best(best, x, success):
        distance = l2_norm(x - images)
        better = success & (distance < best.distance)
        return AttackResult(adversarial=jnp.where(expand(better, x), x, best.adversarial),
                            success=best.success | success, distance=jnp.where(better, distance, best.distance))

    def step(t, carry):
        x, epsilon, best = carry
        step_key = jax.random.fold_in(key, t)
        grad, success = attack_loss.gradient(x, labels, reference, step_key, index)
        best = keep_best(best, x, success)
        delta = x - images + alphas[t] * ascent_direction(grad, step_key, index)
        epsilon = jnp.minimum(jnp.where(success, 1.0 - gamma, 1.0 + gamma) * epsilon, farthest)
        return jnp.clip(images + rescale(delta, epsilon), 0.0, 1.0), epsilon, best

    none = AttackResult(adversarial=images, success=jnp.zeros(batch, bool), distance=jnp.full(batch, jnp.inf))
    x, _, best = jax.lax.fori_loop(0, steps, step, (images, epsilon, none))
    best = keep_best(best, x, attack_loss.success(x, labels, jax.random.fold_in(key, steps), index))
    # Where nothing was found, return the last point, as PGD does.
    return best._replace(adversarial=jnp.where(expand(best.success, x), best.adversarial, x))
