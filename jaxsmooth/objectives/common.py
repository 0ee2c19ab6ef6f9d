"""Pieces shared by the objectives."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def classification_loss(apply: Callable, params, model_state, images: jax.Array, labels: jax.Array):
    """Mean softmax cross-entropy of the model on `images` in training mode.

    Args:
      images: [B, H, W, C] float32 (possibly noisy, not clipped).
      labels: [B] int32.
    Returns:
      (loss, aux) in the objective interface; metrics ``loss`` and ``accuracy``.
    """
    logits, new_state = apply(params, model_state, images, train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = (jnp.argmax(logits, -1) == labels).mean()
    return loss, {"model_state": new_state, "metrics": {"loss": loss, "accuracy": accuracy}}
