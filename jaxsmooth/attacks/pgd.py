"""ell_2 projected gradient descent (Madry et al. 2018) and its minimal-distance search (heat §3.4).

`pgd` runs `steps` normalised-gradient ascent steps on the attack loss,

    x_{t+1} = clip(x + Proj_eps(x_t - x + step_size * g_t / ||g_t||_2), 0, 1)

with g_t the gradient of the deterministic (heat eq. 8) or smoothed (heat
eq. 9) form of an `AttackLoss`, evaluated with the key ``fold_in(key, t)``.
Proj_eps scales a perturbation back onto the ball ||delta||_2 <= eps; the
clip only moves coordinates towards x, so the ball still holds after it.
Success is checked at every point x_t, with the same forward pass as g_t;
an example that has succeeded stops moving and keeps that point. The last
point x_steps is checked with the key ``fold_in(key, steps)``.

`pgd_min_distance` finds, per example, the smallest epsilon at which PGD
succeeds, by bisection on [0, max_epsilon]: all examples bisect together for
a fixed number of `rounds`, each round one PGD run with a per-example
epsilon and step size ``relative_step_size * epsilon``.

Both are pure, jit-able functions of the batch with static `steps` and
`rounds`: one ``lax.fori_loop`` over steps (and one over rounds), so a jitted
attack compiles once per batch shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsmooth.attacks.common import (REFERENCE_STREAM, AttackLoss, AttackResult, ascent_direction, check_steps,
                                      default_index, expand, l2_norm, per_example_setting, rescale)


def pgd(attack_loss: AttackLoss, images: jax.Array, labels: jax.Array, key: jax.Array, *, epsilon, steps: int,
        step_size, index: jax.Array | None = None) -> AttackResult:
    """ell_2 PGD within the ball of radius `epsilon` (module docstring; heat eq. 8 or 9 by `attack_loss`'s form).

    Args:
      attack_loss: from `make_loss`.
      images: [B, H, W, C] float32 in [0, 1].
      labels: [B] int32 true labels.
      key: the attack's key (step t draws from ``fold_in(key, t)``).
      epsilon: the ball's radius, a scalar or [B], > 0.
      steps: number of gradient steps, a static int >= 1.
      step_size: alpha of eq. 8-9, a scalar or [B], > 0 (Madry et al.: 2.5 epsilon / steps).
      index: [B] int32 global example indices (the smoothed form's noise follows them); default ``arange(B)``.
    Returns:
      `AttackResult`: the adversarial points (||adversarial - images||_2 <=
      epsilon), success, and the distance (inf where PGD failed).
    """
    batch = images.shape[0]
    epsilon = per_example_setting(epsilon, batch, "epsilon")
    step_size = per_example_setting(step_size, batch, "step_size")
    steps = check_steps(steps)
    index = default_index(index, batch)
    reference = attack_loss.reference(images, jax.random.fold_in(key, REFERENCE_STREAM), index)

    def step(t, carry):
        x, done = carry
        step_key = jax.random.fold_in(key, t)
        grad, success = attack_loss.gradient(x, labels, reference, step_key, index)
        done = done | success
        delta = x - images + expand(step_size, x) * ascent_direction(grad, step_key, index)
        delta = rescale(delta, jnp.minimum(l2_norm(delta), epsilon))
        moved = jnp.clip(images + delta, 0.0, 1.0)
        return jnp.where(expand(done, x), x, moved), done

    x, done = jax.lax.fori_loop(0, steps, step, (images, jnp.zeros(batch, bool)))
    success = done | attack_loss.success(x, labels, jax.random.fold_in(key, steps), index)
    return AttackResult(adversarial=x, success=success, distance=jnp.where(success, l2_norm(x - images), jnp.inf))


def pgd_min_distance(attack_loss: AttackLoss, images: jax.Array, labels: jax.Array, key: jax.Array, *,
                     max_epsilon: float, steps: int, rounds: int = 10, relative_step_size: float | None = None,
                     index: jax.Array | None = None) -> AttackResult:
    """The smallest ell_2 distance at which `pgd` finds an adversarial, by per-example bisection on epsilon.

    Round 0 runs PGD at `max_epsilon`. Each round r = 1..rounds then runs
    PGD at the midpoint of each example's bracket [lo, hi], hi the norm of
    the smallest adversarial found so far (`max_epsilon` while there is
    none): on failure lo becomes the midpoint. An example not yet broken is
    thus retried at `max_epsilon`, with the next round's key. Round r uses
    the key ``fold_in(key, r)``. The returned point is the smallest-norm
    adversarial of all rounds, so its distance is within ``max_epsilon /
    2**rounds`` of the smallest epsilon at which PGD succeeded (PGD is not
    monotone in epsilon, so this is a search, not a bound). Cost:
    (rounds + 1) PGD runs.

    Args:
      attack_loss, images, labels, key, index: as in `pgd`.
      max_epsilon: the search's upper end, > 0.
      steps: PGD steps per round, a static int >= 1.
      rounds: bisection rounds after the first run, a static int >= 1.
      relative_step_size: PGD's step size as a fraction of each round's
        epsilon; default 2.5 / steps (Madry et al.).
    Returns:
      `AttackResult`: the smallest adversarial found per example, success,
      and its distance (inf where no round found one).
    """
    batch = images.shape[0]
    max_epsilon = per_example_setting(max_epsilon, batch, "max_epsilon")
    rounds = check_steps(rounds, "rounds")
    relative_step_size = 2.5 / check_steps(steps) if relative_step_size is None else relative_step_size
    relative_step_size = per_example_setting(relative_step_size, batch, "relative_step_size")
    index = default_index(index, batch)

    def bisect(r, carry):
        best, lo = carry
        hi = jnp.where(best.success, best.distance, max_epsilon)
        epsilon = jnp.where(r == 0, max_epsilon, (lo + hi) / 2)
        result = pgd(attack_loss, images, labels, jax.random.fold_in(key, r), epsilon=epsilon, steps=steps,
                     step_size=relative_step_size * epsilon, index=index)
        better = result.success & (result.distance < best.distance)
        success = best.success | result.success
        take = better | ~success  # where nothing is found yet, keep the latest point
        best = AttackResult(adversarial=jnp.where(expand(take, images), result.adversarial, best.adversarial),
                            success=success, distance=jnp.where(better, result.distance, best.distance))
        return best, jnp.where(result.success, lo, epsilon)

    none = AttackResult(adversarial=images, success=jnp.zeros(batch, bool), distance=jnp.full(batch, jnp.inf))
    best, _ = jax.lax.fori_loop(0, rounds + 1, bisect, (none, jnp.zeros(batch, jnp.float32)))
    return best
