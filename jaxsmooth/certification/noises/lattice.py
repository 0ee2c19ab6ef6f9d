"""Lattice noise: the discretised normal on the 1/255 grid of 8-bit images, drawn exactly (Voracek & Hein 2023).

The draw, its table and its certificate are `jaxsmooth.certification.lattice`:
an integer offset m per pixel, added to the image's levels k as
fl(k + m) x fl(1/255), so the base classifier is a function of lattice
points; p_A's lower bound is lowered by the table's total variation tau.
8-bit inputs and a scalar sigma only.
"""

from __future__ import annotations

import numpy as np

from jaxsmooth.certification import lattice
from jaxsmooth.certification.noises import NoiseKind
from jaxsmooth.errors import UserError


def perturb(x, keys, arrays):
    """[B, C, *S]: x + m / 255 as an exact integer sum, m drawn from each sample's key (keys: [B, C])."""
    return lattice.perturb(x, lattice.draw(keys, x.shape[1:], arrays))


def scale(sigma, input_shape):
    """The tables of the discretised normal at sigma (`lattice.table`), which the draw reads."""
    del input_shape
    if np.ndim(sigma):
        raise UserError("sigma", "lattice noise takes a scalar sigma, not a per-pixel one; use noise gaussian")
    return lattice.table(float(sigma)).arrays


def applies(sigma, x) -> bool:
    """A scalar sigma and 8-bit inputs (the data sources' are)."""
    return np.ndim(sigma) == 0 and (x is None or lattice.off_grid(x) is None)


def total_variation(sigma, input_shape) -> float:
    return lattice.total_variation(float(sigma), input_shape)


KIND = NoiseKind(name="lattice",
                 summary="the discretised normal on the 1/255 grid of 8-bit images, drawn exactly, whose "
                         "certificates hold in floating point (Voracek & Hein 2023; scalar sigma)",
                 perturb=perturb, scale=scale, check_inputs=lattice.check_inputs, applies=applies,
                 total_variation=total_variation)
