"""Lattice noise: the discretised normal on the 1/255 grid of 8-bit images, drawn exactly from random bits.

Why. Continuous noise computed in floating point, ``fl(x + sigma * z)``,
is not x plus a Gaussian: the rounding depends on x, and a classifier can
read it (Voracek & Hein 2023, "Sound randomized smoothing in floating-point
arithmetic": a radius of 1.26 certified around a point with an adversarial
example at 0.8; tests/test_lattice.py builds one of the same kind). Cohen et
al.'s Theorem 1 then certifies a function the machine never computes.

The noise (Voracek & Hein 2023). For sigma > 0 let s = 255 sigma. The
discretised normal puts on each integer m the mass

    P(m) = Phi((m + 1/2) / s) - Phi((m - 1/2) / s),                       (1)

the law of round(255 eps) for eps ~ N(0, sigma^2). An 8-bit image x = k/255
(k integer in [0, 255]^d) gets the noise eta = m/255, m_i i.i.d. by (1),
added as integers: the base classifier f sees fl(fl(k + m) * fl(1/255)), a
function of the integer vector k + m alone.

The certificate (Voracek & Hein 2023, from Cohen et al. 2019 Thm 1).
Let Pi(y) = round(255 y) / 255 componentwise and h = f o Pi: h maps every
real vector to a class, whatever f's arithmetic does. For a lattice point x
and eps ~ N(0, sigma^2 I), Pi(x + eps) = (k + round(255 eps)) / 255, which
has the law of x + eta. So the lattice-smoothed classifier

    g(x) = argmax_c P[f(x + eta) = c]

is, at every lattice point, the Gaussian smoothing of h. Cohen et al.'s
Theorem 1 holds for any h: if P[h(x + eps) = A] >= p_A_lower > 1/2, the
Gaussian smoothing of h predicts A on the open ell_2 ball of radius

    R = sigma * Phi^-1(p_A_lower)                                         (2)

around x. At a lattice point x' of that ball the smoothing of h is g(x'), so
g(x') = A for every x' in (1/255) Z^d with ||x' - x||_2 < R: the radius has
the continuous formula, and it covers the 8-bit images within it (points off
the lattice are not inputs of g; the engine refuses them). Nothing is
assumed of f's floating point (float32, bfloat16, fused or reordered
operations), only that it is a function: the same input gives the same
class.

Exact draws. The thresholds T_j = round(2^64 Phi((j + 1/2) / s)) are
integers, computed once on the host in 60-digit decimal arithmetic
(`_normal_cdf`). The draw maps 64 uniform random bits to m by integer
comparisons only (`draw`): its law q has masses W_m / 2^64 with W_m the
differences of the T_j, exactly. It differs from (1) by rounding (at most
2^-65 per threshold) and by the tails beyond |m| > M, which the end bins
absorb; so TV(q, P) <= eps = (J/2 + 1) 2^-64 + 2 Phi(-(M + 1/2)/s) for J
thresholds, and over d pixels the noise vectors differ in total variation by
at most tau = d eps (about 3e-14 for MNIST at sigma 0.25). Every probability
under the drawn noise is within tau of the ideal one, so p_A_lower - tau
bounds the ideal p_A from below and (2) is applied to it (`Table.tv`,
`bounds.certificate`'s ``tv``). PREDICT answers other than g(x) with
probability at most alpha + n tau.

The draw (`draw`) is a sorted-table search in two stages with no
per-threshold loop. Write W_m = A_m 2^32 + B_m (0 <= B_m < 2^32) and
R = 2^32 - sum A_m. Stage 1 reads one 32-bit word u, the same bits the
Gaussian sampler reads: if u < 2^32 - R, m is found by a binary search of u
in the cumulative sums of A (mass A_m / 2^32). Otherwise (probability
R / 2^32, about 1e-7) a second word v picks m by a binary search of
(u - 2^32 + R) 2^32 + v in the cumulative sums of B (mass B_m / (R 2^32)
within the stage). Together: A_m / 2^32 + (R / 2^32) B_m / (R 2^32) =
W_m / 2^64. The second word is drawn only for chunks that need it.

Stage 1 reads the very word from which `jax.random.normal` makes z, and
both maps are increasing: with one key, m and z are comonotone draws, and
m = round(255 sigma z) but for words near a bin edge (5 pixels in 10^5 at
sigma 0.25). Counts with the two noises and one seed are thus paired, not
independent.
"""

from __future__ import annotations

import decimal
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsmooth.errors import UserError

LEVELS = 255  # the grid is (1/255) Z: 8-bit images
BITS = 64  # thresholds are multiples of 2^-64
TAIL = 9.5  # the table spans |m| <= M = ceil(9.5 s): beyond, Phi(-9.5) = 1e-21 of mass goes to the end bins
_DIGITS = 60
_PI = decimal.Decimal("3.14159265358979323846264338327950288419716939937510582097494459230781640628620899863")
SECOND_WORD = 0x5EC0D  # fold_in tag of the stage-2 bits' key
_WORD = 1 << 32


def _normal_cdf(x: decimal.Decimal) -> decimal.Decimal:
    """Phi(x) in 60-digit arithmetic: 1/2 + phi(x) (x + x^3/3 + x^5/(3 5) + ...) (Marsaglia 2004, "Evaluating
    the normal distribution").

    Every term has the sign of x, so the sum loses no digits; for the
    |x| <= 10 used here the absolute error stays far below 1e-40.
    """
    with decimal.localcontext() as ctx:
        ctx.prec = _DIGITS
        x2 = x * x
        term = total = x
        n = 1
        while n < x2 or abs(term) > total.copy_abs() * decimal.Decimal(10) ** -(_DIGITS + 2):
            n += 2
            term = term * x2 / n
            total += term
        density = (-x2 / 2).exp() / (2 * _PI).sqrt()
        return decimal.Decimal("0.5") + density * total


class Table(NamedTuple):
    """The threshold tables of the discretised normal (1) at one sigma, and what the draw's law is.

    sigma: the sigma of (1) (float64, as given); low: the first bin -M;
    weights: W_m for m = -M .. M, Python ints summing to 2^64 (the drawn law
    is W_m / 2^64 exactly); tv: eps, the bound on TV(drawn law, (1)) of one
    pixel. `arrays` are what the jitted draw reads.
    """

    sigma: float
    low: int
    weights: tuple[int, ...]
    tv: float
    arrays: dict

    def pmf(self) -> np.ndarray:
        """[2M + 1] float64: the drawn law W_m / 2^64 on m = low .. -low."""
        return np.array([w / 2.0**BITS for w in self.weights])


def _padded(values: list[int], fill: int) -> np.ndarray:
    """values sorted ascending, padded with `fill` to 2^L - 1 entries (the branchless search's size)."""
    size = (1 << max(1, len(values)).bit_length()) - 1
    return np.array(values + [fill] * (size - len(values)), np.uint64).astype(np.uint32)


@functools.lru_cache(maxsize=8)
def table(sigma: float) -> Table:
    """The discretised normal's draw tables at `sigma` (see the module docstring for the two stages)."""
    sigma = float(sigma)
    if not (math.isfinite(sigma) and 0 < sigma <= 8):
        raise UserError("sigma", f"lattice noise needs a scalar sigma in (0, 8], got {sigma}")
    s = decimal.Decimal(LEVELS) * decimal.Decimal(sigma)  # exact: the float's binary value
    big = math.ceil(TAIL * LEVELS * sigma)
    with decimal.localcontext() as ctx:
        ctx.prec = _DIGITS
        upper = [_normal_cdf((j + decimal.Decimal("0.5")) / s) for j in range(big)]  # Phi at m + 1/2, m = 0..M-1
        scale = decimal.Decimal(2) ** BITS
        above = [int((scale * f).to_integral_value(decimal.ROUND_HALF_EVEN)) for f in upper]
        tail = float(1 - _normal_cdf((big + decimal.Decimal("0.5")) / s))
    # thresholds at m + 1/2 for m = -M .. M-1, symmetric: T(-b) = 2^64 - T(b)
    thresholds = [(1 << BITS) - t for t in reversed(above)] + above
    edges = [0] + thresholds + [1 << BITS]
    weights = tuple(b - a for a, b in zip(edges[:-1], edges[1:]))
    if any(w < 0 for w in weights):
        raise AssertionError("thresholds out of order")
    tv = (len(thresholds) / 2 + 1) / 2.0**BITS + 2 * tail
    return Table(sigma, -big, weights, tv, _arrays(weights, -big))


def _arrays(weights: tuple[int, ...], low: int) -> dict:
    """The device tables of the two-stage search for the law W_m / 2^64 on m = low, low + 1, ..."""
    a = [w >> 32 for w in weights]
    b = [w & (_WORD - 1) for w in weights]
    rare = _WORD - sum(a)  # R: stage 2's share of 2^32
    base = _WORD - rare
    cum_a = np.cumsum(np.array(a, np.int64))[:-1].tolist()  # bin i ends where the cumulative sum passes u
    skip = sum(1 for c in cum_a if c == 0)  # leading empty bins: every u is past them
    stage1 = [c for c in cum_a[skip:] if c < base]  # the trailing ones no stage-1 u reaches
    cum_b = np.cumsum(np.array(b, np.uint64))[:-1].tolist()  # < R 2^32 <= 2^44: exact in uint64
    return {"stage1": _padded(stage1, _WORD - 1), "stage1_count": np.int32(len(stage1)),
            "stage1_low": np.int32(low + skip), "base": np.uint32(base % _WORD), "rare": np.bool_(rare > 0),
            "stage2_hi": _padded([c >> 32 for c in cum_b], _WORD - 1),
            "stage2_lo": _padded([c & (_WORD - 1) for c in cum_b], _WORD - 1), "low": np.int32(low)}


def _count_at_most(sorted_table: jax.Array, u: jax.Array, lo_table: jax.Array | None = None,
                   v: jax.Array | None = None) -> jax.Array:
    """#{i : table[i] <= u} for each u, by a branchless binary search of log2(len + 1) steps.

    With `lo_table` and `v`, entries and keys are 64-bit pairs (hi, lo),
    compared lexicographically. The table is sorted and 2^L - 1 long.
    """
    sorted_table = jnp.asarray(sorted_table)
    lo_table = None if lo_table is None else jnp.asarray(lo_table)
    pos = jnp.zeros(u.shape, jnp.int32)
    for level in reversed(range(int(sorted_table.shape[0] + 1).bit_length() - 1)):
        probe = pos + ((1 << level) - 1)
        hi = sorted_table.at[probe].get(mode="clip")
        if lo_table is None:
            below = hi <= u
        else:
            below = (hi < u) | ((hi == u) & (lo_table.at[probe].get(mode="clip") <= v))
        pos = jnp.where(below, pos + (1 << level), pos)
    return pos


def _each(f, ndim: int):
    """f mapped over the leading `ndim` axes."""
    for _ in range(ndim):
        f = jax.vmap(f)
    return f


def first_stage(u: jax.Array, arrays: dict) -> tuple[jax.Array, jax.Array]:
    """Stage 1 of the draw: (m, rare) for 32-bit words u; m is valid where rare is False."""
    count = jnp.minimum(_count_at_most(arrays["stage1"], u), arrays["stage1_count"])
    return arrays["stage1_low"] + count, arrays["rare"] & (u >= arrays["base"])


def second_stage(u: jax.Array, v: jax.Array, arrays: dict) -> jax.Array:
    """Stage 2 of the draw: m for the words (u, v) where stage 1 says rare."""
    return arrays["low"] + _count_at_most(arrays["stage2_hi"], u - arrays["base"], arrays["stage2_lo"], v)


def draw(keys: jax.Array, shape: tuple[int, ...], arrays: dict) -> jax.Array:
    """m of (1) for each key: [*keys.shape, *shape] int32, drawn from the tables of `table(sigma).arrays`.

    Key k gives ``u = bits(k, shape)`` (stage 1) and, only where stage 2 is
    needed, ``v = bits(fold_in(k, tag), shape)``; so m depends on the key and
    the pixel only, never on how many keys are drawn together. The second
    words are drawn for the whole call when any pixel needs them (a
    ``lax.cond``, not a select: rare calls pay for them).
    """
    u = _each(lambda k: jax.random.bits(k, shape, jnp.uint32), keys.ndim)(keys)
    first, rare = first_stage(u, arrays)

    def with_second_stage():
        v = _each(lambda k: jax.random.bits(jax.random.fold_in(k, SECOND_WORD), shape, jnp.uint32), keys.ndim)(keys)
        return jnp.where(rare, second_stage(u, v, arrays), first)

    return jax.lax.cond(jnp.any(rare), with_second_stage, lambda: first)


def perturb(x: jax.Array, m: jax.Array) -> jax.Array:
    """The noisy inputs fl(fl(k + m) * fl(1/255)) of x = k/255 [B, *shape] and noise m [B, S, *shape]: [B, S, *shape].

    A function of the integer k + m alone (one correctly rounded product),
    so the base classifier is a function on the lattice, as the certificate
    needs.
    """
    k = jnp.round(x * LEVELS).astype(jnp.int32)
    return (k[:, None] + m).astype(jnp.float32) * jnp.float32(1 / LEVELS)


def off_grid(x: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first value of x that is not k/255 for an integer k in [0, 255], or None."""
    x = np.asarray(x, np.float64)
    k = np.round(x * LEVELS)
    bad = (np.abs(x * LEVELS - k) > 1e-3) | (k < 0) | (k > LEVELS) | ~np.isfinite(x)
    return tuple(int(i) for i in np.argwhere(bad)[0]) if np.any(bad) else None


def check_inputs(x: np.ndarray) -> None:
    """Refuses (one line) inputs that are not 8-bit images: values k/255, k an integer in [0, 255]."""
    at = off_grid(x)
    if at is not None:
        raise UserError("x", f"lattice noise needs 8-bit images, values k/255 with k an integer in [0, 255]; "
                             f"x{list(at)} = {float(np.asarray(x)[at])!r} is not one (use noise='gaussian' for "
                             "other inputs)")


def total_variation(sigma: float, input_shape) -> float:
    """tau = d eps: the bound on the total variation between the drawn noise of one example and (1)^d."""
    return float(np.prod(input_shape)) * table(sigma).tv
