"""What every analysis figure does first (matplotlib, an optional dependency) and last: limits, labels, grid,
legend, title, layout."""

from __future__ import annotations

from jaxsmooth import extras


def figure_class() -> type:
    """matplotlib's ``Figure``, the class of every plot (Agg, no pyplot); without matplotlib, a `UserError`."""
    return extras.require("matplotlib.figure", field="plot", purpose="drawing a plot").Figure



def finish(fig, ax, *, xlabel: str, ylabel: str, title: str | None = None, xlim=None, ylim=(0.0, 1.0),
           legend: str = "upper right", legend_size=None):
    """Labels, light grid, legend at `legend`, optional title and limits (None: matplotlib's); returns `fig`."""
    if xlim is not None:
        ax.set_xlim(*xlim)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=legend_size)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
