"""The learned per-pixel sigma as an image (non_uniform Fig. 3) and the sweep's blanket filter (appendix B.1).

`sigma_image` rescales sigma [H, W, C] linearly to [0, 1]: (sigma - min) /
(max - min), min and max taken over the whole array (over all channels at
once for a colour image, so the channels keep their relative scale); a
constant sigma maps to 0.5. `sigma_image_figure` draws it: C = 1 as one
viridis image with a colourbar in sigma units, C = 3 as one RGB image.

`pareto_front` keeps the (certified accuracy, certified area) points of an
initialisation sweep that no other point dominates (at least as good in both,
better in one): the "blanket" of appendix B.1.

NumPy and matplotlib only: no JAX.
"""

from __future__ import annotations

import numpy as np

from jaxsmooth.analysis import plotting
from jaxsmooth.errors import UserError


def sigma_image(sigma, field: str = "sigma") -> np.ndarray:
    """sigma [H, W, C] (C = 1 or 3) -> [H, W, C] float64 in [0, 1], linearly and globally over channels.

    Raises `UserError` naming `field` for another shape or a non-finite sigma.
    """
    sigma = np.asarray(sigma, np.float64)
    if sigma.ndim != 3 or sigma.shape[-1] not in (1, 3) or sigma.size == 0:
        raise UserError(field, f"must be an [H, W, C] array with C = 1 or 3, got shape {sigma.shape}")
    if not np.all(np.isfinite(sigma)):
        raise UserError(field, "holds non-finite values")
    lo, hi = float(sigma.min()), float(sigma.max())
    if hi == lo:
        return np.full(sigma.shape, 0.5)
    return (sigma - lo) / (hi - lo)


def sigma_image_figure(sigma, figsize=(4.8, 4.0), dpi: int = 150, title: str | None = None):
    """The sigma image (non_uniform Fig. 3) as a matplotlib Figure (Agg, no pyplot).

    The drawn array is `sigma_image(sigma)` (``fig.axes[0].images[0].get_array()``):
    C = 1 as an [H, W] viridis image on [0, 1] with a colourbar labelled in
    sigma's own units; C = 3 as one [H, W, 3] RGB image.
    """
    Figure = plotting.figure_class()

    image = sigma_image(sigma)
    sigma = np.asarray(sigma, np.float64)
    lo, hi = float(sigma.min()), float(sigma.max())
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    if image.shape[-1] == 1:
        shown = ax.imshow(image[..., 0], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        bar = fig.colorbar(shown, ax=ax)
        ticks = np.linspace(0.0, 1.0, 5)
        bar.set_ticks(ticks)
        bar.set_ticklabels([f"{lo + t * (hi - lo):.3g}" for t in ticks])
        bar.set_label(r"$\sigma$")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or rf"learned $\sigma$ (min {lo:.3g}, mean {sigma.mean():.3g}, max {hi:.3g})", fontsize=9)
    fig.tight_layout()
    return fig


def _points(accuracy, area) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, area) as float64 [P] arrays of one length (ValueError otherwise)."""
    accuracy = np.asarray(accuracy, np.float64)
    area = np.asarray(area, np.float64)
    if accuracy.shape != area.shape or accuracy.ndim != 1:
        raise ValueError(f"accuracy and area must be [P] arrays of one length, got {accuracy.shape} and {area.shape}")
    return accuracy, area


def pareto_front(accuracy, area) -> np.ndarray:
    """Indices (increasing) of the points that no other point dominates.

    Point j dominates i when accuracy_j >= accuracy_i and area_j >= area_i,
    with one of them strict; equal points all stay. NaN points are dropped.

    Args:
      accuracy, area: [P] float.
    Returns:
      [K] int64.
    """
    accuracy, area = _points(accuracy, area)
    ok = ~(np.isnan(accuracy) | np.isnan(area))
    keep = []
    for i in np.flatnonzero(ok):
        ge = ok & (accuracy >= accuracy[i]) & (area >= area[i])
        gt = (accuracy > accuracy[i]) | (area > area[i])
        if not np.any(ge & gt):
            keep.append(i)
    return np.asarray(keep, np.int64)


def blanket(accuracy, area) -> np.ndarray:
    """Indices (increasing) kept by the "blanket" filter of non_uniform appendix B.1.

    Points are visited by decreasing accuracy (ties: by index); the first is
    kept, and each next one only when its area lies strictly outside the
    [min, max] area range of the points kept so far. A point is thus dropped
    when a more accurate point lies at a lower and at a higher area (or equal
    ones). NaN points are dropped.

    Args:
      accuracy, area: [P] float.
    Returns:
      [K] int64.
    """
    accuracy, area = _points(accuracy, area)
    ok = np.flatnonzero(~(np.isnan(accuracy) | np.isnan(area)))
    order = ok[np.argsort(-accuracy[ok], kind="stable")]
    keep, lo, hi = [], np.inf, -np.inf
    for i in order:
        if area[i] < lo or area[i] > hi:
            keep.append(i)
            lo, hi = min(lo, area[i]), max(hi, area[i])
    return np.asarray(sorted(keep), np.int64)


def sweep_figure(accuracy, area, labels, kept, figsize=(6.4, 4.8), dpi: int = 150, title: str | None = None):
    """Clean accuracy against certified area of every sweep point, the blanket-kept ones joined (non_uniform Fig. 2).

    Args:
      accuracy, area: [P]; labels: [P] the run of each point (one colour per run); kept: indices kept.
    """
    plotting.figure_class()  # matplotlib is there, or one error line
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy, area = np.asarray(accuracy, np.float64), np.asarray(area, np.float64)
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    for name in dict.fromkeys(labels):
        at = [i for i, label in enumerate(labels) if label == name]
        ax.plot(area[at], accuracy[at], "o-", alpha=0.5, markersize=4, label=name)
    kept = np.asarray(kept, np.int64)
    if kept.size:
        order = kept[np.argsort(area[kept])]
        ax.plot(area[order], accuracy[order], "k*--", markersize=9, label="blanket filter")
    return plotting.finish(fig, ax, xlabel="mean certified area O_CA (Monte Carlo, test split)",
                           ylabel="clean accuracy of the smoothed classifier", title=title, ylim=None,
                           legend="lower right", legend_size=8)
