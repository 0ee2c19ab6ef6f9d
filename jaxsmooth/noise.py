"""Key derivation and noise draws.

All randomness descends from one root key, ``config.seed``. The noise of an
example depends only on (root, step, global example index), never on the
device, process or position in a batch, so results are the same on one CPU
and on a pod:

    key(example, step) = fold_in(fold_in(root, step), index)

Evaluation draws from its own stream, `eval_key(root)`, so a noisy
evaluation never reuses training noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Distinct, fixed stream tags folded into the root key.
_EVAL_STREAM = 0x7E5A1
_INIT_STREAM = 0x1A17
_CERTIFY_STREAM = 0xCE27
_ATTACK_STREAM = 0xA77AC


def root_key(seed: int) -> jax.Array:
    return jax.random.key(seed)


def step_key(root: jax.Array, step: jax.Array | int) -> jax.Array:
    return jax.random.fold_in(root, step)


def eval_key(root: jax.Array) -> jax.Array:
    return jax.random.fold_in(root, _EVAL_STREAM)


def certify_key(root: jax.Array) -> jax.Array:
    """The certification stream: PREDICT/CERTIFY noise never reuses training or evaluation noise."""
    return jax.random.fold_in(root, _CERTIFY_STREAM)


def attack_key(root: jax.Array) -> jax.Array:
    """The attack stream (smoothed attacks' noise, DDN/PGD random directions), apart from the others."""
    return jax.random.fold_in(root, _ATTACK_STREAM)


def init_seed(seed: int) -> int:
    """Parameter-initialisation seed, distinct from the noise streams of `seed`."""
    return (seed * 1_000_003 + _INIT_STREAM) % (2**31 - 1)


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
    """Per-example keys ``fold_in(key, index)``.

    Args:
      key: a step key (`step_key`) or stream key.
      index: [B] int32, global example indices.
    Returns:
      [B] keys.
    """
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)


def isotropic(key: jax.Array, index: jax.Array, shape: tuple[int, ...], sigma, dtype=jnp.float32) -> jax.Array:
    """Gaussian noise ``sigma * z``, z ~ N(0, I), one independent draw per example.

    Args:
      key: a step key; each example uses ``fold_in(key, index[b])``.
      index: [B] int32 global example indices.
      shape: the per-example shape, e.g. (H, W, C).
      sigma: scalar, or an array broadcastable to `shape` (per-pixel sigma).
    Returns:
      [B, *shape] noise.
    """
    keys = example_keys(key, index)
    z = jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)
    return sigma * z


def isotropic_draws(key: jax.Array, index: jax.Array, shape: tuple[int, ...], sigma, num_noise: int,
                    dtype=jnp.float32) -> jax.Array:
    """`num_noise` independent draws ``sigma * z_j``, z_j ~ N(0, I), per example (nal Alg. 1 line 4's z_ij).

    Example b draws all of its noise from ``fold_in(key, index[b])``, so its
    draws do not depend on its position in the batch.

    Args:
      key: a step key.
      index: [B] int32 global example indices.
      shape: the per-example shape, e.g. (H, W, C).
      sigma: scalar noise level.
      num_noise: r, the draws per example.
    Returns:
      [B, num_noise, *shape] noise.
    """
    keys = example_keys(key, index)
    z = jax.vmap(lambda k: jax.random.normal(k, (num_noise, *shape), dtype))(keys)
    return sigma * z
