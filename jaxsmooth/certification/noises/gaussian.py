"""Gaussian noise: x + sigma z, z ~ N(0, I), in floating point (Cohen et al. 2019), sigma a scalar or per pixel.

The certificate is Cohen et al.'s Theorem 1 (with a per-pixel sigma, the
inscribed ell_2 radius of non_uniform Thm 3.1's ellipsoid). It holds for the
smoothing distribution itself; what floating point computes differs from it
in the last bits (`jaxsmooth.certification.lattice` says how much that can
matter, and draws noise for which it cannot).
"""

from __future__ import annotations

import jax

from jaxsmooth.certification.noises import NoiseKind


def perturb(x, keys, sigma):
    """[B, C, *S] = x[:, None] + sigma z, z drawn from each sample's key (keys: [B, C])."""
    shape = x.shape[1:]
    z = jax.vmap(jax.vmap(lambda k: jax.random.normal(k, shape, x.dtype)))(keys)
    return x[:, None] + sigma * z


def scale(sigma, input_shape):
    """The draw reads sigma itself (a scalar, or [H, W, C])."""
    del input_shape
    return sigma


KIND = NoiseKind(name="gaussian", summary="x + sigma z in floating point, as Cohen et al. (scalar or per-pixel sigma)",
                 perturb=perturb, scale=scale)
