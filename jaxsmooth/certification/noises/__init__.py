"""Noise kinds: what the sampling engine adds to an input, one file each, one line each in `REGISTRY`.

A kind is a `NoiseKind` record: its draw (traced inside the engine's loop,
from the per-sample keys of `jaxsmooth.certification.engine`), what the
draw reads of sigma (host arrays, checked), the inputs it accepts, its
radius correction (the total variation between the drawn noise and the
smoothing distribution certified; 0 for an exact draw) and its radius rule
(how a lower bound on p_A becomes a certified radius, and back). The name is
what ``certify --noise``, the API's ``noise=`` and ``bench certify --noise``
take, and what a result file's settings record as ``noise``. Adding a kind
is one file ending in ``KIND = NoiseKind(...)`` and one `register` line
(a test or a user's code may register its own).

* lattice: the discretised normal on the 1/255 grid, drawn exactly (8-bit
  inputs, scalar sigma); Cohen et al.'s ell_2 radius, p_A lowered by the
  table's total variation;
* gaussian: x + sigma z in floating point (scalar or per-pixel sigma);
  Cohen et al.'s ell_2 radius (the inscribed one, per pixel).

Without a kind named, `choose` takes the first registered kind that applies
to the inputs and sigma, so lattice for 8-bit images and a scalar sigma,
gaussian otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from jaxsmooth.certification import bounds
from jaxsmooth.errors import UserError


def _accepts_all(x) -> None:
    del x


def _exact(sigma, input_shape) -> float:
    del sigma, input_shape
    return 0.0


@dataclasses.dataclass(frozen=True)
class NoiseKind:
    """One kind of smoothing noise.

    Attributes:
      name: as flags, settings and the registry name it.
      summary: one line for help texts.
      perturb: ``(x [B, *S], keys [B, C], scale) -> [B, C, *S]`` noisy inputs, traced on the device; keys are
        sample j's ``fold_in(fold_in(key, index_b), j)`` (engine docstring), so a draw depends on them only.
      scale: ``(sigma, input_shape) -> pytree of arrays`` the draw reads, on the host; sigma is float32,
        positive, a scalar or of the input's shape (`engine.check_sigma`); a `UserError` on ``sigma`` for a
        sigma the kind does not take. A new tree shape compiles the engine again.
      check_inputs: ``(x [B, *S]) -> None``: a `UserError` on ``x`` for inputs the kind does not take.
      applies: ``(sigma, x) -> bool``: whether `choose` may pick it unasked (x: the inputs, or None for the
        data sources' 8-bit images).
      total_variation: ``(sigma, input_shape) -> tau``: the radius correction; every certificate subtracts tau
        from p_A's lower bound (`bounds.certificate`, `sequential`).
      rule: ``(sigma) -> bounds.RadiusRule``: the certified radius of a p_A lower bound, and back.
    """

    name: str
    summary: str
    perturb: Callable[..., Any]
    scale: Callable[[np.ndarray, tuple], Any]
    check_inputs: Callable[[np.ndarray], None] = _accepts_all
    applies: Callable[[Any, Any], bool] = lambda sigma, x: True
    total_variation: Callable[[Any, tuple], float] = _exact
    rule: Callable[[Any], bounds.RadiusRule] = bounds.gaussian_rule

    @property
    def gaussian_certificate(self) -> bool:
        """Whether its radius is Cohen et al.'s, so that the Gaussian top-k, L-bound and certified-area
        statistics apply too."""
        return self.rule is bounds.gaussian_rule


REGISTRY: dict[str, NoiseKind] = {}


def register(kind: NoiseKind) -> NoiseKind:
    """Adds `kind` to `REGISTRY` (after the others; replacing one of the same name in its place); returns it."""
    if not kind.name.isidentifier() or kind.name == "auto":
        raise ValueError(f"a noise kind is named by an identifier other than 'auto', got {kind.name!r}")
    REGISTRY[kind.name] = kind
    return kind


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str, field: str = "noise") -> NoiseKind:
    """The registered kind `name`, or a `UserError` naming `field` and the kinds there are."""
    if name not in REGISTRY:
        raise UserError(field, f"unknown {name!r}; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def choose(name: str | None, sigma, x=None, field: str = "noise") -> NoiseKind:
    """The kind `name`, or (None or "auto") the first registered kind that applies to sigma and the inputs x
    (None: the data sources' 8-bit images). A named kind that does not take sigma is refused here, naming
    `field`, before anything is sampled."""
    if name is None or name == "auto":
        return next(kind for kind in REGISTRY.values() if kind.applies(sigma, x))
    kind = get(name, field)
    try:
        kind.scale(np.asarray(sigma, np.float32), np.shape(sigma))
    except UserError as e:
        raise UserError(field, e.message) from None
    return kind


from jaxsmooth.certification.noises import gaussian, lattice  # noqa: E402  (the kinds use the record above)

for _kind in (lattice.KIND, gaussian.KIND):
    register(_kind)

GAUSSIAN = gaussian.KIND  # what the distributional certificate draws, its own way

__all__ = ["GAUSSIAN", "NoiseKind", "REGISTRY", "choose", "get", "names", "register"]
