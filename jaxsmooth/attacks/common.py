"""What the attacks share: the model in its two forms, the loss and its gradient, success, norms.

`make_loss` turns a classifier into an `AttackLoss`, three pure functions
over a batch that are everything PGD and DDN need from the model:

    reference(images, key, index) -> None | [B, K]
    gradient(x, labels, reference, key, index) -> (grad [B, H, W, C], success [B] bool)
    success(x, labels, key, index) -> [B] bool

in one of two forms (heat §3.4):

* deterministic (``sigma=None``): the loss of f(x), so that a normalised
  gradient step is heat eq. 8; for HeatSmoothing's averaged models and for
  undefended base classifiers. Keys are unused.
* smoothed (``sigma`` given): the loss averaged over ``num_noise`` Gaussian
  draws eta_i ~ N(0, sigma^2 I), so that the normalised gradient is heat
  eq. 9, sum_i grad L(f(x + eta_i)) / ||sum_i grad L(f(x + eta_i))||; for
  Cohen-style stochastically smoothed models. The draws are vmapped, one
  forward/backward pass of ``num_noise`` x B inputs; the noisy inputs are
  not clipped (noise lives in pixel space, as in certification).

The noise of example b under key k is ``sigma * normal(fold_in(k, index[b]),
(num_noise, H, W, C))`` (`jaxsmooth.noise.isotropic`): it depends on the
key and the example's global index only, not on the batch. The attacks pass
``fold_in(key, t)`` at step t, so a run is reproducible from its key.

Losses (``loss``): ``"ce"``, the cross-entropy of the true label;
``"kl"``, KL(p_clean || softmax f(x)) with p_clean the model's prediction on
the clean input (`reference`; the mean softmax over draws in the smoothed
form). Both are written so that their gradients stay exact in float32 when
the model is confident (`_loss_against`): softmax - one_hot, the textbook
form, rounds 1 - p_y to 0 there and points the step the wrong way.
KL(p_clean || .) grows in every direction away from p_clean, a more
confident prediction included, so it measures how far the output moves
(TRADES-style) rather than aiming at misclassification; use ``"ce"`` for
minimal adversarial distances. In the deterministic form its gradient at
the clean input is 0 up to rounding, so the first step's direction there is
arbitrary. In the smoothed form each draw's loss is taken and
averaged (eq. 9), not the loss of the averaged prediction.

Success (``topk``): the true label is not among the top k classes, ranked by
the logits (deterministic) or by the mean softmax over the draws (smoothed:
the smoothed classifier's prediction, estimated with the step's draws). A
label tied with the k-th class counts as still in the top k.

`logits_fn` maps [B, H, W, C] float32 in [0, 1] to [B, K] logits and must
treat examples independently (eval-mode BatchNorm), since per-example
gradients are taken as the gradient of the batch's summed loss. To keep the
parameters out of the compiled constants, build the loss inside the jitted
function::

    @jax.jit
    def attack(params, model_state, images, labels, key):
        loss = make_loss(eval_logits(apply, params, model_state), sigma=0.25, num_noise=25)
        return pgd(loss, images, labels, key, epsilon=0.5, steps=20, step_size=0.0625)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxsmooth import noise
from jaxsmooth.errors import UserError

LOSSES = ("ce", "kl")

# Stream tags folded into an attack's key, far above any step number t folded into it.
REFERENCE_STREAM = 2**31 - 1
_RANDOM_DIRECTION_STREAM = 2**31 - 2


class AttackLoss(NamedTuple):
    """The model as an attack sees it (module docstring). Built by `make_loss`.

    reference(images, key, index): None for ``"ce"``; for ``"kl"`` the
      clean prediction p_clean [B, K] (softmax, or mean softmax over the
      draws of `key`).
    gradient(x, labels, reference, key, index): grad_x of each example's
      loss at x (mean over the draws of `key` in the smoothed form),
      [B, H, W, C]; and whether x is adversarial, [B] bool, judged with the
      same forward pass.
    success(x, labels, key, index): whether x is adversarial, [B] bool,
      without a backward pass.

    x: [B, H, W, C] float32; labels: [B] int32; key: a PRNG key (unused in
    the deterministic form); index: [B] int32 global example indices, or
    None for ``arange(B)``.
    """

    reference: Callable[..., Any]
    gradient: Callable[..., tuple[jax.Array, jax.Array]]
    success: Callable[..., jax.Array]


class AttackResult(NamedTuple):
    """Per-example outcome of an attack.

    adversarial: [B, H, W, C] float32 in [0, 1]; the adversarial point where
      `success`, the attack's last point elsewhere.
    success: [B] bool.
    distance: [B] float32, ||adversarial - images||_2 where `success`, inf elsewhere.
    """

    adversarial: jax.Array
    success: jax.Array
    distance: jax.Array


def eval_logits(apply: Callable, params, model_state) -> Callable[[jax.Array], jax.Array]:
    """The logits function of a model in inference mode: ``x -> apply(params, model_state, x, train=False)[0]``."""
    return lambda x: apply(params, model_state, x, train=False)[0]


def is_adversarial(scores: jax.Array, labels: jax.Array, topk: int = 1) -> jax.Array:
    """Whether the true label is outside the top `topk` classes.

    Args:
      scores: [B, K], any per-class scores ordered like the prediction (logits, probabilities).
      labels: [B] int32.
      topk: k >= 1.
    Returns:
      [B] bool: #{j : scores_j > scores_y} >= k (ties keep the label in the top k).
    """
    label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
    return jnp.sum(scores > label_score, axis=-1) >= topk


def l2_norm(v: jax.Array) -> jax.Array:
    """[B] ell_2 norms of the examples of `v`: [B, ...]."""
    return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=-1))


def expand(s: jax.Array, like: jax.Array) -> jax.Array:
    """[B] values shaped to broadcast against `like`: [B, ...]."""
    return s.reshape(-1, *(1,) * (like.ndim - 1))


def ascent_direction(grad: jax.Array, key: jax.Array, index: jax.Array) -> jax.Array:
    """grad / ||grad||_2 per example: the direction of heat eq. 8-9.

    Scaled by its largest entry first, so that tiny gradients (a saturated
    softmax) do not underflow in the squared norm. Where the gradient is
    exactly 0 (a flat region: dead ReLUs, a logit margin so large that
    exp underflows) the direction is a random unit vector drawn from the
    step key and the example's index, as in the DDN reference code, so the
    attack does not stall.

    Args:
      grad: [B, H, W, C].
      key: the step key; index: [B] int32.
    Returns:
      [B, H, W, C], each example of unit ell_2 norm.
    """
    scale = jnp.max(jnp.abs(grad.reshape(grad.shape[0], -1)), axis=-1)
    random = noise.isotropic(jax.random.fold_in(key, _RANDOM_DIRECTION_STREAM), index, grad.shape[1:], 1.0,
                             grad.dtype)
    direction = jnp.where(expand(scale > 0, grad), grad / expand(jnp.where(scale > 0, scale, 1.0), grad),
                          random)
    return direction / expand(l2_norm(direction), grad)


def rescale(delta: jax.Array, radius: jax.Array) -> jax.Array:
    """`delta` scaled per example to ell_2 norm `radius` ([B]); a zero delta stays 0."""
    norm = l2_norm(delta)
    return delta * expand(jnp.where(norm > 0, radius / jnp.where(norm > 0, norm, 1.0), 0.0), delta)


def check_positive(value, name: str):
    """`value` itself; a Python number must be > 0 (arrays, possibly traced, are the caller's to check)."""
    if isinstance(value, (int, float)) and not value > 0:
        raise UserError(name, f"must be > 0, got {value!r}")
    return value


def per_example_setting(value, batch: int, name: str) -> jax.Array:
    """A scalar or [B] attack setting as a [B] float32 array (`check_positive`)."""
    return jnp.broadcast_to(jnp.asarray(check_positive(value, name), jnp.float32), (batch,))


def check_steps(steps, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(name, f"must be a positive integer, got {steps!r}")
    return steps


def default_index(index, batch: int) -> jax.Array:
    return jnp.arange(batch, dtype=jnp.int32) if index is None else index


def _loss_against(logits: jax.Array, target: jax.Array, top: jax.Array) -> jax.Array:
    """[B] KL(target || softmax(logits)) written around class `top` ([B] int32), exact gradient in float32.

    With u_j = z_j - z_top and sum_j target_j = 1,

        KL = sum_j t_j log t_j - sum_{j != top} t_j u_j + log(1 + sum_{j != top} exp(u_j)),

    whose gradient in z is softmax(z) - target with both 1 - softmax_top and
    1 - target_top formed as sums of the small terms, not as differences
    from 1 that float32 rounds to 0 when the model is confident. With the
    target one-hot at the label y (top = y) this is the cross-entropy
    log(1 + sum_{j != y} exp(z_j - z_y)).
    """
    u = logits - jnp.take_along_axis(logits, top[:, None], axis=-1)
    others = jnp.arange(logits.shape[-1]) != top[:, None]
    log_normaliser = jax.nn.softplus(jax.nn.logsumexp(u, axis=-1, where=others))
    return (jnp.sum(jax.scipy.special.xlogy(target, target), axis=-1) - jnp.sum(jnp.where(others, target * u, 0.0), -1)
            + log_normaliser)


def _cross_entropy(logits: jax.Array, labels: jax.Array, reference) -> jax.Array:
    """[B] -log softmax(logits)_y."""
    del reference
    return _loss_against(logits, jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), labels)


def _kl(logits: jax.Array, labels: jax.Array, reference: jax.Array) -> jax.Array:
    """[B] KL(reference || softmax(logits)), around the reference's top class."""
    del labels
    reference = jax.lax.stop_gradient(reference)
    return _loss_against(logits, reference, jnp.argmax(reference, axis=-1))


def make_loss(logits_fn: Callable[[jax.Array], jax.Array], *, loss: str = "ce", sigma=None, num_noise: int = 25,
              topk: int = 1) -> AttackLoss:
    """The `AttackLoss` of `logits_fn` in its deterministic (``sigma=None``) or smoothed form.

    Args:
      logits_fn: [B, H, W, C] float32 -> [B, K] logits, examples independent.
      loss: ``"ce"`` or ``"kl"`` (module docstring).
      sigma: None for the deterministic form (heat eq. 8); else the noise
        std of the smoothed form (heat eq. 9), a positive scalar or an array
        broadcastable to [H, W, C] (per-pixel sigma).
      num_noise: draws per example and step in the smoothed form (n of eq. 9).
      topk: success when the true label leaves the top `topk` classes (1: misclassification).
    Raises:
      UserError: naming ``loss``, ``sigma``, ``num_noise`` or ``topk``.
    """
    if loss not in LOSSES:
        raise UserError("loss", f"unknown attack loss {loss!r}; allowed: {', '.join(LOSSES)}")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise UserError("topk", f"must be a positive integer (1: top-1 misclassification), got {topk!r}")
    smoothed = sigma is not None
    if smoothed:
        check_steps(num_noise, "num_noise")
        check_positive(sigma, "sigma")
    per_example_loss = _cross_entropy if loss == "ce" else _kl

    def forward(x, key, index):
        """[n, B, K] logits at the n inputs the form evaluates (n = 1 when deterministic)."""
        if not smoothed:
            return logits_fn(x)[None]
        eta = noise.isotropic(key, default_index(index, x.shape[0]), (num_noise, *x.shape[1:]), sigma, x.dtype)
        return jax.vmap(logits_fn, in_axes=1)(x[:, None] + eta)  # eta: [B, n, H, W, C]

    def scores(logits):
        return jax.nn.softmax(logits, axis=-1).mean(0) if smoothed else logits[0]

    def reference(images, key, index=None):
        if loss == "ce":
            return None
        return jax.nn.softmax(forward(images, key, index), axis=-1).mean(0)

    def gradient(x, labels, reference, key, index=None):
        def summed_loss(x):
            logits = forward(x, key, index)
            losses = jax.vmap(per_example_loss, in_axes=(0, None, None))(logits, labels, reference)  # [n, B]
            return jnp.sum(jnp.mean(losses, axis=0)), logits

        grad, logits = jax.grad(summed_loss, has_aux=True)(x)
        return grad, is_adversarial(scores(logits), labels, topk)

    def success(x, labels, key, index=None):
        return is_adversarial(scores(forward(x, key, index)), labels, topk)

    return AttackLoss(reference=reference, gradient=gradient, success=success)
