"""The distributional-robustness certificate of nal Thm 1 / Thm 3 and its empirical worst case (nal §5.1, Fig. 2a).

A distributional TSV, as ``python -m jaxsmooth.certify --mode distributional`` writes it (`results.DISTRIBUTIONAL`:
tab-separated, settings such as ``{"mode": "distributional", "gammas": [1.0], "gamma_adv": [0.5, 2.0], "sigma": 0.25,
...}`` in the sidecar ``FILE.tsv.json``)::

    idx label kind gamma phi cost loss last_step time

one row per example per gamma, the ``certificate`` rows (``--gamma``) first,
then the ``empirical`` rows (``--gamma-adv``). Each row is one ascent
x_K ~ argmax_x E_Z[l(x + z) - gamma c(x + z, x_0)] of that row's gamma, and
on fresh noise draws (independent of the ascent's)::

    phi  = E_Z[l(x_K + z) - gamma c(x_K + z, x_0)]   (the robust surrogate phi_gamma(x_0), nal Thm 1)
    cost = E_Z c(x_K + z, x_0)                      (the transport cost; rho_test of an empirical row)
    loss = E_Z l(x_K + z)
    last_step = ||x_K - x_{K-1}||_2                 (a convergence diagnostic of the ascent)

From the rows of the examples that have all their rows:

* the certificate curve (nal eq. 3 and eq. 7)::

      certificate(rho) = min over the certificate gammas of  gamma rho + mean_i phi_gamma(x_0^i)

* the empirical worst case of nal §5.1 per gamma_adv: the point
  (rho_test, loss) = (mean_i cost_i, mean_i loss_i), which the theorem puts
  under the curve;
* epsilon = sqrt(mean_i cost_i) per gamma (nal eq. 8: the ell_2 radius the
  paper equates with the Wasserstein budget rho).

Monte Carlo error: the means are over examples and draws; the tables give
the standard error over examples (which includes the draws' variance).

NumPy and matplotlib only: no JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxsmooth import results
from jaxsmooth.analysis import plotting
from jaxsmooth.errors import UserError
from jaxsmooth.results import KINDS, Table


def certificate(rho, gammas, mean_phi) -> np.ndarray:
    """The certificate min_g gamma_g rho + E[phi_{gamma_g}] at each rho (nal eq. 3, and its inf over gamma, eq. 7).

    Args:
      rho: scalar or [R] transport budgets rho >= 0.
      gammas: [G] penalties gamma_g > 0.
      mean_phi: [G] the mean robust surrogate E_{P_0}[phi_{gamma_g}(x_0)] of each gamma.
    Returns:
      [R] float64 (a scalar's shape for a scalar rho): an upper bound on the worst-case
      loss sup_{S: W_c(S, P_0) <= rho} E_S[l(s)].
    """
    rho = np.asarray(rho, np.float64)
    gammas = np.atleast_1d(np.asarray(gammas, np.float64))
    mean_phi = np.atleast_1d(np.asarray(mean_phi, np.float64))
    if gammas.shape != mean_phi.shape or gammas.ndim != 1 or gammas.size == 0:
        raise ValueError(f"gammas {gammas.shape} and mean_phi {mean_phi.shape} must be one non-empty [G] each")
    return np.min(gammas * rho[..., None] + mean_phi, axis=-1)


def epsilon_from_rho(mean_cost) -> np.ndarray:
    """epsilon = sqrt(rho), rho = E_{P_0} E_Z c(x_K + z, x_0) (nal eq. 8), elementwise."""
    return np.sqrt(np.asarray(mean_cost, np.float64))


def gammas_of(run: Table, kind: str) -> list[float]:
    """The gammas of `kind`'s rows, in the order of the settings (else of first appearance)."""
    key = "gammas" if kind == "certificate" else "gamma_adv"
    wanted = [float(g) for g in run.settings.get(key, [])]
    present = run.columns["gamma"][run.columns["kind"] == kind]
    seen = [float(g) for g in dict.fromkeys(present.tolist())]
    return [g for g in wanted if g in seen] + [g for g in seen if g not in wanted]


def complete_examples(run: Table) -> np.ndarray:
    """A [N] mask: the rows of the examples that have a row for every (kind, gamma) of the file."""
    idx, kind, gamma = run.columns["idx"], run.columns["kind"], run.columns["gamma"]
    pairs = {(k, g) for k in KINDS for g in gammas_of(run, k)}
    have: dict[int, set] = {}
    for i, k, g in zip(idx.tolist(), kind.tolist(), gamma.tolist()):
        have.setdefault(i, set()).add((k, g))
    return np.asarray([have[i] >= pairs for i in idx.tolist()], bool)


@dataclasses.dataclass(frozen=True)
class GammaSummary:
    """Means over the complete examples of one (kind, gamma); ``*_se``: standard errors over examples."""

    kind: str
    gamma: float
    num_examples: int
    phi: float
    phi_se: float
    cost: float
    cost_se: float
    loss: float
    loss_se: float
    epsilon: float


def is_distributional_file(path: str) -> bool:
    """Whether `path` is a certify TSV whose settings have ``"mode": "distributional"``; False if unreadable."""
    return results.kind_of(path) is results.DISTRIBUTIONAL


def read_distributional(path: str, label: str | None = None) -> Table:
    """Reads one distributional TSV (module docstring; `results.read`); a last line cut short is left out."""
    return results.read(path, (results.DISTRIBUTIONAL,), label)


def summarize_distributional(run: Table) -> list[GammaSummary]:
    """One `GammaSummary` per (kind, gamma), certificate gammas first, over the complete examples."""
    mask = complete_examples(run)
    if not mask.any():
        raise UserError(run.path, "no example has all its rows yet; nothing to analyse")
    out = []
    for kind in KINDS:
        for g in gammas_of(run, kind):
            sel = mask & (run.columns["kind"] == kind) & (run.columns["gamma"] == g)
            stats = {}
            for name in ("phi", "cost", "loss"):
                v = run.columns[name][sel]
                stats[name] = float(v.mean())
                stats[name + "_se"] = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
            out.append(GammaSummary(kind, g, int(sel.sum()), epsilon=float(epsilon_from_rho(stats["cost"])), **stats))
    return out


def certificate_of(summaries: Sequence[GammaSummary]):
    """(gammas [G], mean_phi [G]) of the certificate rows; UserError-free: empty arrays when there are none."""
    cert = [s for s in summaries if s.kind == "certificate"]
    return np.asarray([s.gamma for s in cert], np.float64), np.asarray([s.phi for s in cert], np.float64)


def rho_grid(summaries: Sequence[GammaSummary], num: int = 5) -> np.ndarray:
    """[num] budgets 0 .. 1.1 x the largest mean cost of the file (certificate and empirical rows)."""
    top = max([s.cost for s in summaries] + [0.0])
    return np.linspace(0.0, 1.1 * top if top > 0 else 1.0, num)


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else str(value)


def distributional_markdown(run: Table, rho=None, digits: int = 4) -> str:
    """Three markdown tables: per certificate gamma (E[phi], rho = E[c], epsilon, E[loss]), per gamma_adv the
    empirical worst-case point and the certificate at its rho_test, and the certificate curve over `rho`.
    """
    summaries = summarize_distributional(run)
    gammas, phis = certificate_of(summaries)
    d = digits
    n = int(np.unique(run.columns["idx"][complete_examples(run)]).size)
    lines = [f"### {run.label.replace('|', chr(92) + '|')} ({n} examples, sigma {run.settings.get('sigma')})", ""]
    lines += ["| kind | gamma | n | E[phi] | se | rho = E[c] | se | epsilon | E[loss] | se |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {s.kind} | {s.gamma:g} | {s.num_examples} | {_fmt(s.phi, d)} | {_fmt(s.phi_se, d)} | "
                     f"{_fmt(s.cost, d)} | {_fmt(s.cost_se, d)} | {_fmt(s.epsilon, d)} | {_fmt(s.loss, d)} | "
                     f"{_fmt(s.loss_se, d)} |")
    empirical = [s for s in summaries if s.kind == "empirical"]
    if gammas.size and empirical:
        lines += ["", "| gamma_adv | rho_test | E[loss] | certificate(rho_test) | loss <= certificate |",
                  "|---:|---:|---:|---:|---|"]
        for s in empirical:
            bound = float(certificate(s.cost, gammas, phis))
            lines.append(f"| {s.gamma:g} | {_fmt(s.cost, d)} | {_fmt(s.loss, d)} | {_fmt(bound, d)} | "
                         f"{'yes' if s.loss <= bound else 'no'} |")
    if gammas.size:
        grid = rho_grid(summaries) if rho is None else np.asarray(rho, np.float64)
        values = certificate(grid, gammas, phis)
        lines += ["", "| rho | " + " | ".join(_fmt(r, d) for r in grid) + " |",
                  "|---|" + "---:|" * grid.size,
                  "| certificate | " + " | ".join(_fmt(v, d) for v in values) + " |"]
    return "\n".join(lines) + "\n"


def distributional_figure(runs: Sequence[Table], num_points: int = 201, figsize=(6.4, 4.8),
                          dpi: int = 150, title: str | None = None):
    """nal Fig. 2(a): the certificate curve min_gamma gamma rho + E[phi_gamma] (line) and the empirical
    worst-case points (rho_test, E[loss]) per gamma_adv (markers), one color per file. A matplotlib Figure."""
    Figure = plotting.figure_class()

    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    all_summaries = [summarize_distributional(run) for run in runs]
    top = max(float(rho_grid(s, 2)[-1]) for s in all_summaries)
    x = np.linspace(0.0, top, num_points)
    for run, summaries in zip(runs, all_summaries):
        gammas, phis = certificate_of(summaries)
        color = None
        if gammas.size:
            names = ",".join(f"{g:g}" for g in gammas)
            (line,) = ax.plot(x, certificate(x, gammas, phis), label=f"{run.label}: certificate, gamma={names}")
            color = line.get_color()
        emp = [s for s in summaries if s.kind == "empirical"]
        if emp:
            ax.errorbar([s.cost for s in emp], [s.loss for s in emp], xerr=[s.cost_se for s in emp],
                        yerr=[s.loss_se for s in emp], fmt="o", color=color, label=f"{run.label}: worst case (test)")
            for s in emp:
                ax.annotate(f"{s.gamma:g}", (s.cost, s.loss), textcoords="offset points", xytext=(4, -10),
                            fontsize=7)
    return plotting.finish(fig, ax, xlabel=r"$\rho$", ylabel="loss", title=title, xlim=(0.0, top), ylim=None,
                           legend="upper left", legend_size=8)
