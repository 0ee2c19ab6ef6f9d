"""The gradient-norm penalty ||grad_x v(x)||^2 of HeatSmoothing (heat eq. 4, App. C eq. 17-19).

Both heat (eq. 4, Alg. 1) and Adversarial Boot Camp (bootcamp eq. 3, eq. 10)
regularise the squared Frobenius norm of the model's input Jacobian,
``||J||_F^2`` with ``J = d v(x) / d x`` of shape [K, D]. Computing J exactly
costs K backward passes, so heat App. C estimates it with kappa random
projections of the output (Johnson-Lindenstrauss) and a finite difference
along each projection's normalised gradient:

    ||J||_F^2 ~ sum_i ||grad_x (w_i . v(x))||^2                          (17)
              ~ sum_i ((w_i . v(x + delta l_i) - w_i . v(x)) / delta)^2
    w_i = (w_i1, ..., w_iK) / sqrt(K),  w_ij ~ N(0, 1) iid               (18)
    l_i = grad_x (w_i . v(x)) / ||grad_x (w_i . v(x))||, 0 where that is 0   (19)

`finite_difference_penalty` implements (17)-(19), rescaled by K / kappa so
that it is unbiased for ||J||_F^2 (derivation in its docstring);
`jacobian_frobenius_sq` is the exact value, for small models and tests.

``apply_fn`` is any function [B, *shape] -> [B, K]; the caller binds the
parameters and the train/eval mode, e.g. ``lambda z: apply(p, s, z,
train=True)[0]``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxsmooth import noise
from jaxsmooth.errors import UserError


def jacobian_frobenius_sq(apply_fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Exact ``||d v(x_b) / d x_b||_F^2`` per example (the term of heat eq. 4).

    One reverse-mode Jacobian (K backward passes) per example, so only for
    small models. `apply_fn` must treat examples independently (eval-mode
    BatchNorm, no batch statistics): it is called on batches of one.

    Args:
      apply_fn: [B, *shape] -> [B, K].
      x: [B, *shape].
    Returns:
      [B] squared Frobenius norms of the [K, *shape] input Jacobians.
    """

    def one(x_b):
        jac = jax.jacrev(lambda z: apply_fn(z[None])[0])(x_b)  # [K, *shape]
        return jnp.sum(jnp.square(jac))

    return jax.vmap(one)(x)


def projections(key: jax.Array, index: jax.Array, *, kappa: int, num_outputs: int) -> jax.Array:
    """The JL projections w_i ~ N(0, I / K) of heat eq. 18, kappa per example.

    heat Alg. 1 draws w afresh inside its loop over the examples, so each
    example gets its own kappa draws, from ``fold_in(key, index[b])``
    (`jaxsmooth.noise.example_keys`): they depend only on the key and the
    example's index, not on the batch it sits in or on the model.

    Args:
      key: a step key.
      index: [B] int32 global example indices.
      kappa: number of projections per example.
      num_outputs: K, the model's output dimension.
    Returns:
      [B, kappa, K] float32, each row N(0, I / K).
    """
    keys = noise.example_keys(key, index)
    z = jax.vmap(lambda k: jax.random.normal(k, (kappa, num_outputs), jnp.float32))(keys)
    return z / jnp.sqrt(jnp.float32(num_outputs))


def finite_difference_penalty(
    apply_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    key: jax.Array,
    *,
    kappa: int,
    delta: float,
    index: jax.Array | None = None,
) -> jax.Array:
    """Unbiased JL + finite-difference estimate of ``||J_x v(x)||_F^2`` (heat eq. 17-19).

    Returns, per example,

        (K / kappa) * sum_{i=1..kappa} ((w_i . v(x + delta l_i) - w_i . v(x)) / delta)^2

    with w_i from `projections` and l_i the unit direction of heat eq. 19.

    Scaling. With w ~ N(0, I/K) (eq. 18), E_w ||J^T w||^2 = tr(J E[w w^T] J^T)
    = ||J||_F^2 / K. Since l_i = J^T w_i / ||J^T w_i||, the directional
    derivative is w_i . J l_i = ||J^T w_i||, so the finite difference is
    ||J^T w_i|| + O(delta), exactly so for every delta when v is affine. The
    paper's sum over kappa projections (eq. 17) thus has expectation
    (kappa / K) ||J||_F^2: it is unbiased only when kappa = K (its CIFAR-10
    setting, kappa = 10 = N_c); otherwise the factor is absorbed into its
    lambda (Alg. 1). We multiply by K / kappa so that the value is an unbiased
    estimate of ||J||_F^2 for affine v, and biased by O(delta) otherwise; the
    paper's eq. 17 value is this one times kappa / K.

    Gradients. l_i is held constant (`lax.stop_gradient`; Alg. 1 "detach");
    gradients with respect to whatever `apply_fn` closes over flow through
    v(x) and v(x + delta l_i) only, so a caller may write
    ``jax.grad(lambda p: finite_difference_penalty(lambda z: model(p, z), x,
    key, kappa=k, delta=d).mean())(params)``. (For affine v, holding l_i
    fixed does not change that gradient: l_i maximises w_i . J l over the
    unit sphere, so its first-order variation contributes nothing.)

    Cost: one forward and one backward pass of B examples (v(x) and the kappa
    directions, as a vmapped VJP) and one forward pass of kappa * B examples
    (all the v(x + delta l_i) at once). With train-mode BatchNorm the two
    forward passes normalise with different batch statistics, as in the
    paper's implementation.

    Args:
      apply_fn: [N, *shape] -> [N, K], called on N = B and N = kappa * B.
      x: [B, *shape] float32.
      key: a step key; example b draws its projections from
        ``fold_in(key, index[b])``.
      kappa: number of projections per example (heat: 10).
      delta: finite-difference step (heat: 0.1), > 0.
      index: [B] int32 global example indices; default ``arange(B)``.
    Returns:
      [B] float32 penalties.
    """
    if isinstance(kappa, bool) or int(kappa) != kappa or kappa < 1:
        raise UserError("kappa", f"must be a positive integer (heat uses 10), got {kappa!r}")
    if isinstance(delta, (int, float)) and not delta > 0:  # a traced delta is the caller's to check
        raise UserError("delta", f"must be > 0 (heat uses 0.1), got {delta!r}")
    kappa = int(kappa)
    batch, shape = x.shape[0], x.shape[1:]
    if index is None:
        index = jnp.arange(batch, dtype=jnp.int32)

    v_x, vjp_fn = jax.vjp(apply_fn, x)  # v_x: [B, K]
    num_outputs = v_x.shape[-1]
    w = jnp.swapaxes(projections(key, index, kappa=kappa, num_outputs=num_outputs), 0, 1)  # [kappa, B, K]
    w = w.astype(v_x.dtype)

    (grads,) = jax.vmap(vjp_fn)(w)  # [kappa, B, *shape]: grad_x (w_i . v(x)) per example
    sq_norm = jnp.sum(jnp.square(grads.reshape(kappa, batch, -1)), axis=-1)
    nonzero = sq_norm > 0
    # Double `where` keeps rsqrt away from 0, so a zero gradient gives l = 0 and no NaN (eq. 19).
    inv_norm = jnp.where(nonzero, jax.lax.rsqrt(jnp.where(nonzero, sq_norm, 1.0)), 0.0)
    directions = jax.lax.stop_gradient(grads * inv_norm.reshape(kappa, batch, *(1,) * len(shape)))

    x_shifted = (x[None] + delta * directions).reshape(kappa * batch, *shape)
    v_shifted = apply_fn(x_shifted).reshape(kappa, batch, num_outputs)
    derivative = jnp.einsum("ibk,ibk->ib", w, v_shifted - v_x[None]) / delta  # [kappa, B]
    return (num_outputs / kappa) * jnp.sum(jnp.square(derivative), axis=0)
