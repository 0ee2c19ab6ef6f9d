"""``sigma``: learn a per-pixel noise level for a frozen classifier (non_uniform §4.2-4.3, Alg. 1).

The trainable pytree is ``{"log_sigma": [H, W, C]}``, sigma = exp(log_sigma),
initialised to the constant ``objective.sigma``. The base classifier f is
frozen: it is loaded from ``train.init_from`` and handed to the objective as
the `teacher` (`OBJECTIVE`'s teacher policy), never updated, and evaluated in
inference mode (``train=False``). The trainer trains the pytree that
`initial_variables` returns and evaluates the smoothed classifier that
`smoothed` names, with the certified-area figures of `AREA_EVALUATION`.

For each example x with label c, n0 = ``sigma.num_noise`` draws
z_i ~ N(0, I) (from the example's key, `jaxsmooth.noise`) give, by
reparameterisation (gradients reach sigma through the noise, §4.3),

    p_hat = (1/n0) sum_i softmax(f(x + sigma * z_i))_c
    O_CA  = sum_j log sigma_j + D log Phi^-1(p_hat)                       (§4.1, §4.3)
    L     = - mean of O_CA over the examples with g(x) = c                (§4.2, Alg. 1)

with g(x) the majority vote of the same n0 draws. The n0 draws of the whole
batch are one forward pass of B * n0 inputs.

Where Phi^-1(p_hat) is undefined or unstable: Phi^-1(p_hat) <= 0 for
p_hat <= 1/2, and log Phi^-1(p_hat) and its gradient diverge as p_hat -> 1/2.
An example therefore counts in L only if g(x) = c AND p_hat > 1/2 + `P_MARGIN`
(it could not be certified otherwise: CERTIFY abstains when p_A < 1/2); the
others are masked with a double `where`, so neither the loss nor its gradient
sees them. Near p_hat = 1 float32 cannot hold 1 - p_hat, so Phi^-1 is taken
as -Phi^-1(q_hat), q_hat = 1 - p_hat computed as the mean of
-expm1(log_softmax_c), and q_hat is clipped below at `Q_FLOOR` (Phi^-1 <= 7.03:
beyond it the gradient through q_hat is zero and only sum log sigma pushes).
With no example counted in a batch, the loss is 0 and its gradient 0.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.scipy.special import ndtri

from jaxsmooth import noise
from jaxsmooth.errors import UserError
from jaxsmooth.objectives.base import Evaluation, Objective, Teacher, check_positive, require_teacher

P_MARGIN = 1e-3  # examples with p_hat <= 1/2 + P_MARGIN are left out of the mean
Q_FLOOR = 1e-12  # 1 - p_hat is clipped below here: Phi^-1(p_hat) <= 7.03


def initial_variables(config, input_shape) -> tuple[dict, dict]:
    """``({"log_sigma": log(objective.sigma) everywhere, shape input_shape}, {})``: the trained pytree."""
    sigma = float(config.objective.sigma)
    return {"log_sigma": jnp.full(tuple(input_shape), math.log(sigma), jnp.float32)}, {}


def smoothed(config, params, model_state, teacher):
    """The frozen classifier (the teacher) smoothed with the learned per-pixel sigma = exp(log_sigma)."""
    del config, model_state
    return (*teacher, jnp.exp(params["log_sigma"]))


def certified(info, params, model_state, teacher):
    """`smoothed` on a saved checkpoint's host arrays: the frozen classifier saved with the run (its teacher) and
    sigma = exp(log_sigma), computed in float64 and rounded to float32 (non_uniform Alg. 1's output).

    Raises `UserError` (on ``checkpoint``) when the checkpoint holds no teacher or no ``log_sigma`` of the input's
    shape, or when sigma is not finite and > 0 everywhere.
    """
    del model_state
    if teacher is None:
        raise UserError("checkpoint", "holds no frozen classifier (teacher) beside its learned sigma")
    if not isinstance(params, dict) or "log_sigma" not in params:
        raise UserError("checkpoint", "holds no params/log_sigma")
    log_sigma = np.asarray(params["log_sigma"], np.float64)
    shape = tuple(info.get("input_shape", ()))
    if log_sigma.shape != shape:
        raise UserError("checkpoint", f"its log_sigma has shape {log_sigma.shape}, not its input's {shape}")
    with np.errstate(over="ignore"):
        sigma = np.exp(log_sigma).astype(np.float32)
    if not np.all(np.isfinite(sigma) & (sigma > 0)):
        raise UserError("checkpoint", f"its sigma = exp(log_sigma) is not finite and > 0 everywhere "
                                      f"(min {np.min(sigma)}, max {np.max(sigma)})")
    return teacher[0], teacher[1], sigma


def certified_area_objective(log_sigma: jax.Array, logits: jax.Array, labels: jax.Array):
    """Per-example O_CA of the smoothed-softmax estimate, and which examples count (non_uniform §4.1-4.3).

    Args:
      log_sigma: [H, W, C].
      logits: [B, n0, K] of f at x_b + sigma * z_bi.
      labels: [B] int32, the true classes c.
    Returns:
      (o_ca [B], counted [B] bool, p_hat [B], correct [B] bool): o_ca is
      sum log sigma + D log Phi^-1(p_hat) where counted (g(x) = c and
      p_hat > 1/2 + P_MARGIN), and 0 elsewhere, with finite gradients everywhere.
    """
    p_sum, q_sum, votes = draw_sums(logits, labels)
    n0 = logits.shape[1]
    return area_from_sums(log_sigma, p_sum / n0, q_sum / n0, votes, labels)


def draw_sums(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Over the draws of logits [B, n, K]: sums of p_c and of 1 - p_c ([B] each), and the votes [B, K]."""
    log_p = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), -1),
                                labels[:, None, None], -1)[..., 0]  # [B, n]
    votes = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.int32).sum(1)
    return jnp.exp(log_p).sum(1), (-jnp.expm1(log_p)).sum(1), votes  # 1 - p without cancellation near p = 1


def area_from_sums(log_sigma, p_hat, q_hat, votes, labels):
    """`certified_area_objective` from the means p_hat, q_hat = 1 - p_hat and the votes of the draws."""
    correct = jnp.argmax(votes, -1) == labels
    counted = correct & (q_hat < 0.5 - P_MARGIN)
    q_safe = jnp.where(counted, jnp.maximum(q_hat, Q_FLOOR), 0.25)  # the double where: no NaN gradient when masked
    o_ca = jnp.sum(log_sigma) + log_sigma.size * jnp.log(-ndtri(q_safe))
    return jnp.where(counted, o_ca, 0.0), counted, p_hat, correct


def make_area_eval(apply: Callable, num_draws: int) -> Callable:
    """``area(params, model_state, x, labels, index, key, log_sigma, mask) -> sums`` for the test-split evaluation.

    The smoothed classifier of `num_draws` draws per example (one forward pass
    of the batch per draw, so memory stays that of one batch): ``smoothed_correct``
    (majority vote right), ``area_sum`` and ``area_count``: the sum and count of
    O_CA over the examples the training loss counts (the Monte Carlo estimate
    Alg. 1 optimises, not a certificate; appendix B.1's sub-epoch points),
    padding (mask False) left out.
    """

    def area(params, model_state, x, labels, index, key, log_sigma, mask):
        z = noise.isotropic_draws(key, index, x.shape[1:], 1.0, num_draws, x.dtype)  # [B, n, H, W, C]

        def one_draw(sums, zi):
            logits, _ = apply(params, model_state, x + jnp.exp(log_sigma) * zi, train=False)
            return jax.tree.map(jnp.add, sums, draw_sums(logits[:, None], labels)), None

        b = x.shape[0]
        logits_shape = jax.eval_shape(lambda: apply(params, model_state, x, train=False)[0])
        init = (jnp.zeros(b), jnp.zeros(b), jnp.zeros((b, logits_shape.shape[-1]), jnp.int32))
        (p_sum, q_sum, votes), _ = jax.lax.scan(one_draw, init, jnp.moveaxis(z, 1, 0))
        o_ca, counted, _, correct = area_from_sums(log_sigma, p_sum / num_draws, q_sum / num_draws, votes, labels)
        counted = counted & mask
        return {"smoothed_correct": jnp.sum(correct & mask, dtype=jnp.int32),
                "area_sum": jnp.sum(jnp.where(counted, o_ca, 0.0)), "area_count": jnp.sum(counted, dtype=jnp.int32)}

    return area


def _area_sums(config, apply: Callable) -> Callable:
    """`make_area_eval` with n0 draws, in the trainer's evaluation interface (`base.Evaluation`)."""
    area = make_area_eval(apply, int(config.sigma.num_noise))

    def sums(params, model_state, batch, key, sigma):
        return area(params, model_state, batch["image"], batch["label"], batch["index"], key, jnp.log(sigma),
                    batch["mask"])

    return sums


def _area_summary(totals, count: int) -> dict[str, float]:
    """The smoothed classifier's accuracy and the mean O_CA over the counted examples (Monte Carlo)."""
    counted = int(totals["area_count"])
    return {"test_smoothed_accuracy": int(totals["smoothed_correct"]) / count,
            "test_area": float(totals["area_sum"]) / counted if counted else float("nan"),
            "test_area_fraction": counted / count}


AREA_EVALUATION = Evaluation(make=_area_sums, summarize=_area_summary)


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_noise = 4  # n0, noise draws per example in the loss and the area evaluation (§4.3)
    return c


def validate(config) -> None:
    check_positive(config.sigma.num_noise, "sigma.num_noise", "n0, the noise draws per example")


def make(config, apply, teacher=None):
    validate(config)
    teacher = require_teacher(config, teacher)
    n0 = int(config.sigma.num_noise)

    def loss(params, model_state, batch, key):
        base_params, base_state = jax.lax.stop_gradient(teacher)
        x, labels = batch["image"], batch["label"]
        b, shape = x.shape[0], x.shape[1:]
        log_sigma = params["log_sigma"]
        z = noise.isotropic_draws(key, batch["index"], shape, 1.0, n0, x.dtype)  # [B, n0, H, W, C]
        noisy = (x[:, None] + jnp.exp(log_sigma) * z).reshape((b * n0, *shape))
        logits, _ = apply(base_params, base_state, noisy, train=False)
        o_ca, counted, p_hat, correct = certified_area_objective(log_sigma, logits.reshape((b, n0, -1)), labels)
        num = jnp.sum(counted)
        objective = jnp.sum(o_ca) / jnp.maximum(num, 1)
        loss = -objective
        metrics = {"loss": loss, "o_ca": objective, "certifiable": num / b, "accuracy": correct.mean(),
                   "p_hat": p_hat.mean(), "sigma_mean": jnp.exp(log_sigma).mean(),
                   "sigma_min": jnp.exp(log_sigma).min(), "sigma_max": jnp.exp(log_sigma).max()}
        return loss, {"model_state": model_state, "metrics": metrics}

    return loss


OBJECTIVE = Objective(
    name="sigma",
    reference="Tecot, Hsieh, Zhang, Gu: Robustness Verification with Non-Uniform Randomized Smoothing "
              "(non_uniform §4.2-4.3, Alg. 1)",
    make_loss=make,
    defaults=defaults,
    validate=validate,
    teacher=Teacher(),
    initial_variables=lambda config, params, model_state, input_shape: initial_variables(config, input_shape),
    smoothed=smoothed,
    certified=certified,
    evaluation=AREA_EVALUATION,
    renamed={"objective.num_noise": "sigma.num_noise"},
)
