"""``nal``: noisy adversarial learning (nal §3.2, Alg. 1, eq. 6), and its ``wrm`` baseline.

NAL minimises the robust surrogate of nal Thm 1 (eq. 3-4),

    phi_gamma(theta; x_0) = sup_x E_Z [ l(theta; x + z) - gamma c(x + z, x_0) ],   z ~ N(0, sigma^2 I),

estimated with r draws z_ij per example (eq. 6):

    min_theta (1/nr) sum_i sum_j sup_x [ l(theta; x + z_ij) - gamma c(x + z_ij, x_0^i) ].   (eq. 6)

The sup is approximated by K steps of gradient ascent from x_0 = the clean
input (Alg. 1 lines 3-6), each along the r-average gradient:

    x_{k+1} = x_k + eta_1 (1/r) sum_j grad_x [ l(theta; x_k + z_ij) - gamma c(x_k + z_ij, x_0) ]

and theta then descends (1/r) sum_j l(theta; x_K + z_ij) with x_K held
constant (Alg. 1 line 8: no gradient flows through the ascent). l is the
cross-entropy with the true label and c(s, x_0) = ||s - x_0||_2^2 over the
flattened example (nal §5). ``nal.cost_with_noise = False`` uses
c(x, x_0) instead (the ablation of nal §5, Fig. 2(b)); ``nal.clip``
keeps x in [0, 1] (the paper takes X = R^d).

Choices the paper leaves open:

- The r draws z_ij of an example are drawn once per step, from
  ``fold_in(key, index)``, and used for all K ascent steps and for the
  parameter loss: the z_ij of eq. 6 and Alg. 1 line 8 carry no k.
- The ascent runs the model in inference mode (``train=False``), so its
  K * r forward passes per example neither update nor depend on the
  BatchNorm statistics of the batch; this also makes the ascent separable
  over examples. The parameter loss runs in training mode on the B * r
  noisy adversarial inputs and returns their BatchNorm statistics.

``wrm`` (Sinha et al. 2018, objectives/wrm.py) is the same ascent without
noise: r = 1 and sigma = 0, i.e. sup_x [ l(theta; x) - gamma ||x - x_0||^2 ].

Convergence: by nal Cor. 1 the population objective E_Z[l - gamma c] is
strongly concave in x when gamma >= 2M / sigma^2 for a loss bounded by M, so
the ascent has one fixed point; eta_1 = 0.5 / gamma (the paper's, the
default) is the Newton step of the quadratic cost.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxsmooth import noise
from jaxsmooth.objectives.base import Objective, check_positive

# loss_fn(s: [B, r, *shape]) -> [B, r]: per-draw losses l(theta; s_bj), separable over examples.
DrawLoss = Callable[[jax.Array], jax.Array]


def transport_cost(x: jax.Array, x0: jax.Array, z: jax.Array, *, cost_with_noise: bool = True) -> jax.Array:
    """c(x + z_j, x_0) = ||x + z_j - x_0||_2^2 (or ||x - x_0||^2 without noise), per draw (nal §5).

    Args:
      x, x0: [B, *shape].
      z: [B, r, *shape] noise draws.
    Returns:
      [B, r] float32 costs.
    """
    delta = (x - x0)[:, None]
    delta = delta + z if cost_with_noise else jnp.broadcast_to(delta, z.shape)
    return jnp.sum(jnp.square(delta), axis=tuple(range(2, z.ndim)))


def surrogate(loss_fn: DrawLoss, x: jax.Array, x0: jax.Array, z: jax.Array, *, gamma: float,
              cost_with_noise: bool = True) -> jax.Array:
    """phi(x) = (1/r) sum_j [ l(x + z_j) - gamma c(x + z_j, x_0) ] per example (nal Thm 1, eq. 6).

    At x = `inner_maximize`'s x_K this estimates the robust surrogate
    phi_gamma(theta; x_0) of the certificate gamma rho + E[phi_gamma] (eq. 3).
    With the same draws z as the ascent it is the in-sample sup, biased up;
    with fresh draws it is an unbiased estimate of E_Z at x_K, biased down.

    Args:
      loss_fn: ``s [B, r, *shape] -> [B, r]`` per-draw losses l(theta; s).
      x, x0: [B, *shape], the point and the clean input.
      z: [B, r, *shape] noise draws.
    Returns:
      [B] float32.
    """
    s = x[:, None] + z
    return jnp.mean(loss_fn(s) - gamma * transport_cost(x, x0, z, cost_with_noise=cost_with_noise), axis=1)


UNROLL = 8  # ascent steps unrolled per loop iteration


def _ascend(loss_fn: DrawLoss, x_start: jax.Array, x0: jax.Array, z: jax.Array, *, gamma: float, steps: int,
            lr: float, cost_with_noise: bool, clip: bool) -> jax.Array:
    """`steps` ascent steps on `surrogate` from `x_start` (the public form starts at x_0)."""
    # The examples are independent, so the gradient of the sum is each example's gradient.
    grad = jax.grad(lambda x: surrogate(loss_fn, x, x0, z, gamma=gamma, cost_with_noise=cost_with_noise).sum())

    def step(x, _):
        x = x + lr * grad(x)
        return (jnp.clip(x, 0.0, 1.0) if clip else x), None

    # Unrolled: XLA:CPU runs a convolution's input gradient inside a while loop about 2.7x slower than
    # outside one (cnn, batch 128 x 4 draws: 0.56 s vs 0.21 s a step); K is small (the paper: 4).
    x, _ = jax.lax.scan(step, x_start, None, length=steps, unroll=True if steps <= UNROLL else UNROLL)
    return x


def inner_maximize(loss_fn: DrawLoss, x0: jax.Array, z: jax.Array, *, gamma: float, steps: int, lr: float,
                   cost_with_noise: bool = True, clip: bool = False) -> jax.Array:
    """x_K of K gradient-ascent steps on `surrogate` from x_0 (nal Alg. 1 lines 3-6).

        x_{k+1} = x_k + lr * grad_x (1/r) sum_j [ l(x_k + z_j) - gamma c(x_k + z_j, x_0) ]

    A `lax.scan` over the K steps; the r draws are one batched call of `loss_fn`.

    Args:
      loss_fn: ``s [B, r, *shape] -> [B, r]`` per-draw losses; must be separable
        over examples (e.g. a model in inference mode).
      x0: [B, *shape] clean inputs, also the starting point.
      z: [B, r, *shape] noise draws, fixed over the steps.
      gamma: the penalty gamma > 0; steps: K >= 0; lr: eta_1 (the paper: 0.5 / gamma).
      cost_with_noise: c(x + z, x_0) (True, the paper) or c(x, x_0).
      clip: project x onto [0, 1] after each step (False: X = R^d, the paper).
    Returns:
      [B, *shape] x_K (differentiable; the objectives stop its gradient).
    """
    return _ascend(loss_fn, x0, x0, z, gamma=gamma, steps=steps, lr=lr, cost_with_noise=cost_with_noise, clip=clip)


def draw_losses(apply: Callable, params, model_state, labels: jax.Array, *, train: bool = False) -> DrawLoss:
    """The cross-entropy of the model as a `DrawLoss`: one forward pass over all B * r inputs.

    Args:
      labels: [B] int32 true labels.
    """
    def loss_fn(s):
        b, r = s.shape[:2]
        logits, _ = apply(params, model_state, s.reshape(b * r, *s.shape[2:]), train=train)
        return optax.softmax_cross_entropy_with_integer_labels(logits.reshape(b, r, -1), labels[:, None])

    return loss_fn


def noisy_loss(apply: Callable, params, model_state, x: jax.Array, z: jax.Array, labels: jax.Array):
    """(1/Br) sum_b sum_j l(theta; x_b + z_bj) in training mode (nal Alg. 1 line 8), in the objective interface.

    Args:
      x: [B, *shape] points, held constant (the caller stops their gradient).
      z: [B, r, *shape] noise draws.
      labels: [B] int32.
    Returns:
      (loss, aux); aux also holds ``per_draw``, the [B, r] losses, for metrics.
    """
    b, r = z.shape[:2]
    s = (x[:, None] + z).reshape(b * r, *z.shape[2:])
    logits, new_state = apply(params, model_state, s, train=True)
    logits = logits.reshape(b, r, -1)
    per_draw = optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, None])
    loss = per_draw.mean()
    accuracy = (jnp.argmax(logits, -1) == labels[:, None]).mean()
    return loss, {"model_state": new_state, "metrics": {"loss": loss, "accuracy": accuracy}, "per_draw": per_draw}


def check_ascent(block, prefix: str) -> None:
    """The ascent's fields of a ``nal`` or ``wrm`` block: gamma > 0, ascent_steps >= 0, ascent_lr >= 0."""
    check_positive(block.gamma, f"{prefix}.gamma", "the penalty gamma of nal eq. 6")
    check_positive(block.ascent_steps, f"{prefix}.ascent_steps", "ascent steps K", allow_zero=True)
    check_positive(block.ascent_lr, f"{prefix}.ascent_lr", "0: 0.5 / gamma", allow_zero=True)


def ascent_loss(block, apply, *, num_noise: int, sigma: float, cost_with_noise: bool = True):
    """The loss of nal eq. 6 with the ascent settings of `block` (``config.nal`` or ``config.wrm``)."""
    gamma = float(block.gamma)
    kwargs = dict(gamma=gamma, steps=int(block.ascent_steps), lr=float(block.ascent_lr) or 0.5 / gamma,
                  cost_with_noise=bool(cost_with_noise), clip=bool(block.clip))

    def loss(params, model_state, batch, key):
        x0, labels = batch["image"], batch["label"]
        if sigma > 0:
            z = noise.isotropic_draws(key, batch["index"], x0.shape[1:], sigma, num_noise, x0.dtype)
        else:
            z = jnp.zeros((x0.shape[0], num_noise, *x0.shape[1:]), x0.dtype)
        frozen_params, frozen_state = jax.lax.stop_gradient((params, model_state))
        inner = draw_losses(apply, frozen_params, frozen_state, labels, train=False)
        x_k = jax.lax.stop_gradient(inner_maximize(inner, x0, z, **kwargs))
        value, aux = noisy_loss(apply, params, model_state, x_k, z, labels)
        cost = transport_cost(x_k, x0, z, cost_with_noise=kwargs["cost_with_noise"])
        # rho-hat and phi of the certificate (eq. 3), from the training-mode forward pass.
        aux["metrics"]["cost"] = cost.mean()
        aux["metrics"]["surrogate"] = jax.lax.stop_gradient(aux.pop("per_draw") - gamma * cost).mean()
        return value, aux

    return loss


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_noise = 4  # r, noise draws per example (nal eq. 6)
    c.ascent_steps = 4  # K, gradient-ascent steps of the inner sup (Alg. 1); 0: none
    c.ascent_lr = 0.0  # eta_1, the ascent step; 0: 0.5 / gamma (Table 1)
    c.gamma = 1.0  # the penalty gamma on the transport cost (eq. 6)
    c.cost_with_noise = True  # cost c(x + z, x_0) as the paper; false: c(x, x_0) (§5 ablation)
    c.clip = False  # keep the ascent's x in [0, 1] (false: X = R^d, the paper)
    return c


def validate(config) -> None:
    check_ascent(config.nal, "nal")
    check_positive(config.nal.num_noise, "nal.num_noise", "noise draws r per example")


def make(config, apply, teacher=None):
    del teacher
    validate(config)
    return ascent_loss(config.nal, apply, num_noise=int(config.nal.num_noise), sigma=float(config.objective.sigma),
                       cost_with_noise=config.nal.cost_with_noise)


OBJECTIVE = Objective(
    name="nal",
    reference="A distributional robustness certificate by randomized smoothing (nal §3.2, Alg. 1, eq. 6)",
    make_loss=make,
    defaults=defaults,
    validate=validate,
    renamed={"objective.num_noise": "nal.num_noise", "objective.pgd_steps": "nal.ascent_steps",
             "objective.pgd_lr": "nal.ascent_lr", "objective.gamma": "nal.gamma",
             "objective.cost_with_noise": "nal.cost_with_noise", "objective.clip": "nal.clip"},
)
