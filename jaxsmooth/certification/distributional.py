"""The distributional-robustness certificate of nal Thm 1 (eq. 3), eq. 7 and eq. 8, and its empirical worst case (§5.1).

For a trained model and a loss l (the cross-entropy with the true label),
c(s, x_0) = ||s - x_0||_2^2 and z ~ N(0, sigma^2 I), nal Thm 1 bounds the
worst-case loss over noisy inputs within Wasserstein budget rho by

    sup_{S: W_c(S, P_0) <= rho} E_S[l(s)]  <=  gamma rho + E_{P_0}[phi_gamma(x_0)]          (eq. 3)
    phi_gamma(x_0) = sup_x E_Z[ l(x + z) - gamma c(x + z, x_0) ]

for every gamma > 0, hence by their minimum over gamma (eq. 7; `certificate`).
`make_estimator` estimates, per example, with r draws:

1. x_K: K steps of `nal.inner_maximize`'s ascent (gradient ascent from x_0
   along the r-draw average gradient, eta_1 = 0.5 / gamma by default) on the
   *ascent draws* z_j; by default (`ascend`, keep_best) the iterate with the
   largest surrogate on those draws is kept, which is x_K once the ascent
   has converged and guards against eta_1 oscillating where the surrogate
   is not concave (gamma < 2M / sigma^2, nal Cor. 1);
2. on *fresh draws* z'_j, independent of the ascent's (another key):

       phi  = (1/r) sum_j [ l(x_K + z'_j) - gamma c(x_K + z'_j, x_0) ]
       cost = (1/r) sum_j c(x_K + z'_j, x_0)          (rho_i; eq. 8: epsilon^2 = E_{P_0} cost)
       loss = (1/r) sum_j l(x_K + z'_j)

Why fresh draws: the surrogate on the ascent's own draws is the maximum of
a sample mean, biased *up* (for a linear loss by exactly + gamma d sigma^2 / r;
see `jaxsmooth.objectives.nal` and tests/test_nal.py). On fresh draws it is
an unbiased estimate of E_Z[l - gamma c] at the point x_K, which is at most
phi_gamma(x_0): biased *down* only by how far x_K misses the true maximiser
(for a linear loss by exactly - gamma d sigma^2 / r, since x_K = x* - zbar).
Both biases shrink as 1/r. The fresh-draw estimate is never inflated by the
draws' own noise; what remains (x_K short of the maximiser) makes it a little
low, so a certificate from it is slightly optimistic by O(gamma d sigma^2 / r):
raise r (``--num-draws``) and K until phi stops moving.
``last_step`` = ||x_K - x_{K-1}||_2 tells whether K steps converged.

The empirical worst case (nal §5.1) is the same computation with gamma_adv
in place of gamma: x_* = x_K of gamma_adv, rho_test = E_Z c(x_* + z, x_0)
and its loss E_Z l(x_* + z); by Thm 1 every such point (mean rho_test, mean
loss) lies under the curve gamma rho + E[phi_gamma] (up to Monte Carlo error).

Noise: example i draws from ``fold_in(fold_in(key, stream), index_i)``, the
same draws for every gamma (common random numbers), independent of batching.
The model runs in inference mode. One jitted function per input shape;
gamma and the step size are traced, so new gammas do not recompile.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxsmooth import noise
from jaxsmooth.analysis.distributional import certificate, epsilon_from_rho
from jaxsmooth.errors import UserError
from jaxsmooth.objectives import nal

__all__ = ["ASCENT_STREAM", "FRESH_STREAM", "certificate", "check", "default_lr", "epsilon_from_rho",
           "ascend", "estimate_batch", "estimate_points",
           "make_estimator", "open_distributional", "DistributionalRequest", "distributional_rows"]

ASCENT_STREAM = 0xA5C  # the ascent's draws z_j
FRESH_STREAM = 0xF7E5  # the fresh draws z'_j of phi, cost and loss


def default_lr(gamma: float) -> float:
    """eta_1 = 0.5 / gamma (nal Table 1): the Newton step of the quadratic cost."""
    return 0.5 / gamma


def check(gammas, *, num_draws: int, steps: int, lr: float, sigma: float, field: str = "gamma") -> None:
    """One `UserError` per bad setting, naming it."""
    gammas = list(gammas)
    if not gammas or not all(np.isfinite(g) and g > 0 for g in gammas):
        raise UserError(field, f"each gamma must be a finite number > 0 (the penalty of nal eq. 3), got {gammas}")
    if num_draws < 1:
        raise UserError("num-draws", f"must be >= 1 (noise draws r per example), got {num_draws}")
    if steps < 0:
        raise UserError("ascent-steps", f"must be >= 0 (ascent steps K), got {steps}")
    if not (np.isfinite(lr) and lr >= 0):
        raise UserError("ascent-lr", f"must be >= 0 (0: 0.5 / gamma), got {lr}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise UserError("sigma", f"must be > 0, got {sigma}")


def ascend(loss_fn: nal.DrawLoss, x0: jax.Array, z: jax.Array, *, gamma, lr, steps: int,
           cost_with_noise: bool = True, clip: bool = False, keep_best: bool = True) -> tuple[jax.Array, jax.Array]:
    """The iterates of `nal.inner_maximize` (same update, same draws z), returning (x_hat, ||x_K - x_{K-1}||_2).

    keep_best=False: x_hat = x_K, exactly `nal.inner_maximize`'s. keep_best=True
    (default): x_hat is, per example, the iterate x_0, ..., x_K with the
    largest surrogate on the ascent draws z. Below gamma = 2M / sigma^2 the
    objective need not be concave (nal Cor. 1) and eta_1 = 0.5 / gamma can
    oscillate; any iterate is a valid point for phi (a sup), and the one
    kept is scored again on fresh draws, so the choice adds no upward bias.
    The values come with the gradients (`jax.value_and_grad`): one forward
    pass more than the ascent in all (for x_K).
    """
    def values(x):
        return nal.surrogate(loss_fn, x, x0, z, gamma=gamma, cost_with_noise=cost_with_noise)

    value_and_grad = jax.value_and_grad(lambda x: (lambda v: (v.sum(), v))(values(x)), has_aux=True)

    def pick(better, a, b):
        return jnp.where(better.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    def step(carry, _):
        x, best, best_value, _ = carry
        (_, v), g = value_and_grad(x)
        better = v > best_value
        best, best_value = pick(better, x, best), jnp.where(better, v, best_value)
        x_new = x + lr * g
        return ((jnp.clip(x_new, 0.0, 1.0) if clip else x_new), best, best_value, x), None

    if steps == 0:
        return x0, jnp.zeros(x0.shape[:1], x0.dtype)
    init = (x0, x0, jnp.full(x0.shape[:1], -jnp.inf, x0.dtype), x0)
    (x_k, best, best_value, x_prev), _ = jax.lax.scan(step, init, None, length=steps,
                                                      unroll=True if steps <= nal.UNROLL else nal.UNROLL)
    last_step = jnp.sqrt(jnp.sum(jnp.square(x_k - x_prev), axis=tuple(range(1, x0.ndim))))
    if not keep_best:
        return x_k, last_step
    return pick(values(x_k) > best_value, x_k, best), last_step


def estimate_points(loss_fn: nal.DrawLoss, x0: jax.Array, index: jax.Array, gamma, lr, key: jax.Array, *,
                    sigma: float, num_draws: int, steps: int, cost_with_noise: bool = True, clip: bool = False,
                    keep_best: bool = True) -> dict[str, jax.Array]:
    """phi, cost, loss and last_step per example for any per-draw loss (module docstring); not jitted.

    Args:
      loss_fn: ``s [B, r, *shape] -> [B, r]`` per-draw losses, separable over examples.
      x0: [B, *shape] clean inputs; index: [B] int32 global example indices (their noise).
      gamma, lr: the penalty and the ascent step; key: the run's key (ascent and fresh draws
        come from its two sub-streams `ASCENT_STREAM`, `FRESH_STREAM`).
    Returns:
      {"phi", "cost", "loss", "last_step"}: [B] each.
    """
    shape = x0.shape[1:]
    z = noise.isotropic_draws(jax.random.fold_in(key, ASCENT_STREAM), index, shape, sigma, num_draws, x0.dtype)
    fresh = noise.isotropic_draws(jax.random.fold_in(key, FRESH_STREAM), index, shape, sigma, num_draws, x0.dtype)
    x_k, last_step = ascend(loss_fn, x0, z, gamma=gamma, lr=lr, steps=steps, cost_with_noise=cost_with_noise,
                            clip=clip, keep_best=keep_best)
    losses = loss_fn(x_k[:, None] + fresh)
    costs = nal.transport_cost(x_k, x0, fresh, cost_with_noise=cost_with_noise)
    return {"phi": jnp.mean(losses - gamma * costs, axis=1), "cost": jnp.mean(costs, axis=1),
            "loss": jnp.mean(losses, axis=1), "last_step": last_step}


def make_estimator(apply: Callable, *, sigma: float, num_draws: int, steps: int,
                   cost_with_noise: bool = True, clip: bool = False, keep_best: bool = True) -> Callable:
    """A jitted ``estimate(params, model_state, x0, labels, index, gamma, lr, key) -> dict of [B] arrays``.

    Args (of `make_estimator`):
      apply: the model's pure ``apply(params, model_state, x, *, train)``; run with train=False.
      sigma: the noise level; num_draws: r, draws per example (for the ascent and, as many, fresh);
      steps: K ascent steps; cost_with_noise, clip: as `nal.inner_maximize`; keep_best: as `ascend`.
    Args (of `estimate`):
      x0: [B, H, W, C] float32 clean inputs in [0, 1]; labels: [B] int32; index: [B] int32 global indices.
      gamma: scalar > 0; lr: the ascent step eta_1 (e.g. `default_lr(gamma)`); key: the run's key.
    Returns:
      {"phi", "cost", "loss", "last_step"}: [B] float32 each (module docstring).
    """

    def estimate(params, model_state, x0, labels, index, gamma, lr, key):
        loss_fn = nal.draw_losses(apply, params, model_state, labels, train=False)
        return estimate_points(loss_fn, x0, index, gamma, lr, key, sigma=sigma, num_draws=num_draws, steps=steps,
                               cost_with_noise=cost_with_noise, clip=clip, keep_best=keep_best)

    return jax.jit(estimate)


def estimate_batch(estimator: Callable, params, model_state, x0, labels, index, gamma: float, key: jax.Array,
                   *, lr: float = 0.0, batch: int | None = None) -> dict[str, np.ndarray]:
    """`estimator` on host arrays, padded to `batch` examples (one compiled shape), as float64 host arrays.

    lr = 0 means `default_lr(gamma)`. Returns {"phi", "cost", "loss", "last_step"}: [B] float64.
    """
    b = len(index)
    batch = b if batch is None else batch
    if b > batch:
        raise ValueError(f"{b} examples for a batch of {batch}")
    pad = batch - b
    x0, labels, index = (np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a
                         for a in (np.asarray(x0, np.float32), np.asarray(labels, np.int32),
                                   np.asarray(index, np.int32)))
    out = estimator(params, model_state, x0, labels, index, jnp.float32(gamma),
                    jnp.float32(lr or default_lr(gamma)), key)
    return {name: np.asarray(value, np.float64)[:b] for name, value in out.items()}


def distributional_rows(estimator: Callable, params, model_state, split, indices: np.ndarray, gammas, gamma_adv,
                        key: jax.Array, *, batch: int, lr: float = 0.0) -> Iterator[dict[str, Any]]:
    """Estimates the examples `indices` of `split`, `batch` at a time, yielding rows in order (the TSV's).

    Per example: one ``kind="certificate"`` row per gamma of `gammas`, then one
    ``kind="empirical"`` row per gamma of `gamma_adv` (module docstring), each
    with idx, label, gamma, phi, cost, loss, last_step and time (this row's
    share of its gamma's batch wall time, a ``datetime.timedelta`` string);
    ``seconds`` feeds progress displays. lr = 0: 0.5 / gamma.
    """
    jobs = [("certificate", float(g)) for g in gammas] + [("empirical", float(g)) for g in gamma_adv]
    for start in range(0, len(indices), batch):
        idx = np.asarray(indices[start:start + batch])
        images, labels = split.get(idx)
        x = np.divide(images, 255, dtype=np.float32)
        results = []
        for kind, gamma in jobs:
            t0 = time.perf_counter()
            out = estimate_batch(estimator, params, model_state, x, labels, idx, gamma, key, lr=lr, batch=batch)
            results.append((kind, gamma, out, (time.perf_counter() - t0) / len(idx)))
        for b, (i, label) in enumerate(zip(idx, labels)):
            for kind, gamma, out, seconds in results:
                yield {"idx": int(i), "label": int(label), "kind": kind, "gamma": gamma,
                       **{name: float(out[name][b]) for name in ("phi", "cost", "loss", "last_step")},
                       "time": str(datetime.timedelta(seconds=seconds)), "seconds": seconds}


@dataclasses.dataclass(frozen=True)
class DistributionalRequest:
    """What ``certify --mode distributional`` estimates (module docstring) and where it writes it.

    gammas: the certificate's penalties; gamma_adv: the empirical worst case's; examples: examples per
    jitted call; split, skip, max: the examples; names: the data set's name for the settings.
    """

    out: str
    gammas: tuple
    gamma_adv: tuple
    sigma: float
    seed: int
    num_draws: int = 32
    ascent_steps: int = 20
    ascent_lr: float = 0.0
    examples: int = 1
    split: str = "test"
    skip: int = 1
    max: int = -1
    names: dict = dataclasses.field(default_factory=dict)


def open_distributional(model, dataset, request: DistributionalRequest):
    """Opens `request.out` for the distributional certificate of `model` on `dataset`, resuming it if it exists.

    Returns a `jaxsmooth.certification.dataset.Job` whose rows come one per example per gamma, in order.
    """
    from jaxsmooth import jobs, parallel, results
    from jaxsmooth.certification import dataset as dataset_job, records

    check(request.gammas, num_draws=request.num_draws, steps=request.ascent_steps, lr=request.ascent_lr,
          sigma=request.sigma)
    if request.examples < 1:
        raise UserError("examples", f"must be >= 1 (0: from --batch), got {request.examples}")
    split = dataset_job.split_of(dataset, request.split)
    indices = records.example_indices(len(split), request.skip, request.max)
    seed = request.seed
    header = {"mode": "distributional", "gammas": list(request.gammas), "gamma_adv": list(request.gamma_adv),
              "sigma": request.sigma, "num_draws": request.num_draws, "ascent_steps": request.ascent_steps,
              "ascent_lr": request.ascent_lr, "cost": "||x + z - x0||_2^2", "loss": "cross-entropy", "seed": seed,
              "key": f"fold_in(key({seed}), certify stream); ascent and fresh draws from two sub-streams",
              "dtype": model.dtype, "model": model.info.get("model"), **request.names, "split": request.split,
              "skip": request.skip, "max": request.max, "examples": request.examples, **model.settings(),
              "devices": jax.device_count()}
    writes = parallel.is_main_process()
    jobs.lock_output(request.out, take=writes)
    writer = results.Writer(request.out, results.DISTRIBUTIONAL, header, enabled=writes)
    done = set(writer.done)
    todo = np.asarray([i for i in indices if int(i) not in done], np.int64)
    estimator = make_estimator(model.apply, sigma=request.sigma, num_draws=request.num_draws,
                               steps=request.ascent_steps)
    key = noise.certify_key(noise.root_key(seed))
    rows = distributional_rows(estimator, model.params, model.model_state, split, todo, request.gammas,
                               request.gamma_adv, key, batch=request.examples, lr=request.ascent_lr)
    shard = dataset_job.Shard(request.out, 0, 1, None, writes)
    return dataset_job.Job(rows=rows, writer=writer, total=len(indices), done=len(indices) - len(todo), shard=shard,
                           usage=None, rows_per_example=len(request.gammas) + len(request.gamma_adv))
