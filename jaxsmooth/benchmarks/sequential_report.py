"""The report of ``python -m jaxsmooth.bench sequential`` (`jaxsmooth.benchmarks.sequential`), from its workdir.

Reads each model's grid TSV (the real run), its recorded streams
(``LABEL_stream.npz``: the counts of samples [0, p) at each position p) and
``timing.json``; writes the fixed-n and max-radius TSVs that the streams
give (`batching.replay`, `certification.certificate` on the first n samples),
the tables (``report.md``) and the figures. Tables cover the images that
have both a grid row and a recorded stream, and say how many.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from jaxsmooth import certification, results
from jaxsmooth.certification import batching

SAME = ("predict", "radius", "pA_lower", "count_A", "count_B", "n_used")  # replayed = run, field by field


def fixed_rows(stream: dict, n: int, n0: int, alpha: float, sigma: float) -> list[dict]:
    """The rows of a fixed-n run at n: CERTIFY on the first n samples of each recorded stream."""
    j = list(stream["positions"]).index(n)
    rows = []
    for i in range(len(stream["idx"])):
        cert = certification.certificate(int(stream["candidate"][i]), stream["counts"][i, j], alpha, sigma)
        rows.append(_row(stream, i, results.Outcome(-1, None, cert.label, cert.count_a, cert.count_b, sigma, 0.0,
                                                    n0 + n, pa_lower=cert.pa_lower, radius=cert.radius)))
    return rows


def replayed_rows(stream: dict, settings, sigma: float) -> list[dict]:
    """The rows a sequential run with `settings` gives, replayed from the recorded streams."""
    return [_row(stream, i, batching.replay(stream["counts"][i], stream["positions"], int(stream["candidate"][i]),
                                            settings.n0, settings, sigma)) for i in range(len(stream["idx"]))]


def _row(stream, i, outcome: results.Outcome) -> dict:
    """The certify row of recorded image i (time not measured: 0), with the samples it took."""
    outcome = dataclasses.replace(outcome, index=int(stream["idx"][i]), label=int(stream["label"][i]))
    return {**results.CERTIFY.row(outcome), "samples": outcome.samples}


def certified_accuracy(rows: Sequence[dict], radius: float) -> float:
    return float(np.mean([r["correct"] == 1 and r["radius"] >= radius for r in rows]))


def acr(rows: Sequence[dict]) -> float:
    return float(np.mean([r["radius"] * r["correct"] for r in rows]))


def _write_tsv(path: str, rows: Sequence[dict], header: dict, note: str) -> None:
    for old in (path, path + ".json"):
        if os.path.exists(old):
            os.remove(old)
    cols = results.CERTIFY.header({"label"} | ({"sequential"} if header.get("sequential") else set()))
    writer = results.Writer(path, results.CERTIFY, header, cols, notes=(note,))
    for row in sorted(rows, key=lambda r: r["idx"]):
        writer.write(row)
    writer.close()


def _grid_rows(path: str) -> dict[int, dict]:
    from jaxsmooth import analysis

    if not os.path.exists(path):
        return {}
    run = analysis.read_run(path)
    c = run.columns
    return {int(c["idx"][j]): {**{k: c[k][j].item() for k in (*SAME, "label", "correct", "idx")},
                               "samples": c["n_used"][j].item()} for j in range(run.num_examples)}


def write(workdir: str, models, fixed: Sequence[int], tolerances: Sequence[float], settings: dict) -> str:
    """Replays, tables and figures of every model in `workdir`; returns the markdown (also ``report.md``)."""
    timing_path = os.path.join(workdir, "timing.json")
    timing = json.load(open(timing_path)) if os.path.exists(timing_path) else {}
    sections, curves = [], {}
    for model in models:
        section, curve = _model_report(workdir, model, fixed, tolerances, settings, timing.get(model.label, {}))
        sections.append(section)
        curves[model.label] = curve
    if any(c for c in curves.values()):
        _tradeoff_figure(curves).savefig(os.path.join(workdir, "tradeoff.png"))
    text = "\n".join(sections)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(text)
    return text


def _model_report(workdir, model, fixed, tolerances, settings, timing) -> tuple[str, dict]:
    n0, n, alpha = settings["n0"], settings["n"], settings["alpha"]
    grid_settings = certification.Settings(n0=n0, n=n, alpha=alpha, sequential=True, radii=model.radii)
    grid = _grid_rows(os.path.join(workdir, f"{model.label}_grid.tsv"))
    path = os.path.join(workdir, f"{model.label}_stream.npz")
    lines = [f"## {model.label}: sigma {model.sigma:g}, {model.workdir}\n"]
    if not os.path.exists(path):
        return "\n".join(lines + [f"no recorded streams yet ({len(grid)} grid rows)\n", _timing_table(timing)]), {}
    stream = {k: v for k, v in np.load(path).items()}
    keep = np.isin(stream["idx"], list(grid))
    stream = {k: v if k == "positions" else v[keep] for k, v in stream.items()}
    header = {"mode": "certify", "sigma": model.sigma, "n0": n0, "alpha": alpha, "checkpoint": model.workdir,
              "skip": settings["skip"], "max": settings["max"], "seed": settings["seed"]}
    note = "replayed from the recorded streams of python -m jaxsmooth.bench sequential; time not measured per row"
    runs = {}
    for m in fixed:
        runs[f"fixed n={m:,}"] = fixed_rows(stream, m, n0, alpha, model.sigma)
        _write_tsv(os.path.join(workdir, f"{model.label}_fixed_{m}.tsv"), runs[f"fixed n={m:,}"],
                   {**header, "n": m}, note)
    for tol in tolerances:
        max_settings = dataclasses.replace(grid_settings, radii=None, tolerance=tol)
        rows = replayed_rows(stream, max_settings, model.sigma)
        runs[f"max-radius {tol:g}"] = rows
        _write_tsv(os.path.join(workdir, f"{model.label}_max_{tol:g}.tsv"), rows,
                   {**header, "n": n,
                    **max_settings.sequential_header(certification.gaussian_rule(model.sigma))[0]}, note)
    replay = replayed_rows(stream, grid_settings, model.sigma)
    real = [grid[int(i)] for i in stream["idx"]]
    equal = sum(all(_same(a[k], b[k]) for k in SAME) for a, b in zip(replay, real))
    lines.append(f"{len(real)} images (grid rows {len(grid)}, recorded streams {int(keep.sum())}); grid rows "
                 f"replayed from the streams equal the real run's: {equal}/{len(real)}\n")
    lines.append(_grid_table(model, runs[f"fixed n={n:,}"], real, workdir))
    lines.append(_full_run_rates(workdir, model, stream))
    lines.append(_tradeoff_table(runs, n0))
    lines.append(_timing_table(timing))
    from jaxsmooth import analysis
    from jaxsmooth.analysis import samples

    grid_run = analysis.read_run(os.path.join(workdir, f"{model.label}_grid.tsv"))
    samples.samples_figure([grid_run], title=f"{model.label}: grid mode, radii {model.radii}").savefig(
        os.path.join(workdir, f"{model.label}_n_used.png"))
    curve = {name: (float(np.mean([r["samples"] for r in rows])), acr(rows)) for name, rows in runs.items()}
    return "\n".join(lines), curve


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and abs(a - b) <= 1e-12 * max(1.0, abs(b)))


def _grid_table(model, fixed_rows_, grid_rows, workdir) -> str:
    radii = (0.0, *model.radii)
    usage_path = os.path.join(workdir, f"{model.label}_grid_usage.json")
    usage = json.load(open(usage_path)) if os.path.exists(usage_path) else None
    lines = ["| run | " + " | ".join(f"r = {r:g}" for r in radii) + " | mean samples | median samples | "
             "x fewer (mean) | slots doing useful work |", "|---|" + "---:|" * (len(radii) + 4)]
    budget = fixed_rows_[0]["samples"]
    for name, rows, use in (("fixed", fixed_rows_, None), ("grid sequential", grid_rows, usage)):
        used = np.array([r["samples"] for r in rows], np.float64)
        cells = [f"{certified_accuracy(rows, r):.3f}" for r in radii]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {used.mean():,.0f} | {np.median(used):,.0f} | "
                     f"{budget / used.mean():.1f} | {'-' if use is None else format(use['fraction'], '.1%')} |")
    diff = max(abs(certified_accuracy(fixed_rows_, r) - certified_accuracy(grid_rows, r)) for r in radii)
    return "\n".join(lines) + f"\n\nlargest certified-accuracy difference over the radii: {diff:.3f}\n"


def _full_run_rates(workdir, model, stream) -> str:
    """Images/s of the two passes over every image: the grid run and the recorded fixed-n stream."""
    usage_path = os.path.join(workdir, f"{model.label}_grid_usage.json")
    usage = json.load(open(usage_path)) if os.path.exists(usage_path) else None
    grid = "" if usage is None else f"grid {usage['images'] / usage['seconds']:.3f} images/s ({usage['images']} images)"
    fixed = f"fixed n={stream['positions'][-1]:,} {len(stream['seconds']) / stream['seconds'].sum():.3f} images/s " \
            f"({len(stream['seconds'])} images, the recorded stream)"
    return f"wall-clock over the whole passes (at different times: compare the side-by-side table below): " \
           f"{grid}{'; ' if grid else ''}{fixed}\n"


def _tradeoff_table(runs: dict, n0: int) -> str:
    lines = ["| run | mean samples | median samples | ACR | certified accuracy at 0 |", "|---|---:|---:|---:|---:|"]
    for name, rows in runs.items():
        used = np.array([r["samples"] for r in rows], np.float64)
        lines.append(f"| {name} | {used.mean():,.0f} | {np.median(used):,.0f} | {acr(rows):.4f} | "
                     f"{certified_accuracy(rows, 0.0):.3f} |")
    return "\n".join(lines) + "\n"


def _timing_table(timing: dict) -> str:
    if not timing:
        return ""
    images = next(iter(timing.values()))["images"]
    lines = [f"wall-clock on {images} of the images, each mode run for real in turn (median over rounds):\n",
             "| mode | s | images/s | samples/s |", "|---|---:|---:|---:|"]
    for name, t in timing.items():
        seconds = float(np.median(t["seconds"]))
        lines.append(f"| {name} | {seconds:,.1f} | {t['images_per_s']:.3f} | {t['samples'] / seconds:,.0f} |")
    return "\n".join(lines) + "\n"


def _tradeoff_figure(curves: dict):
    """ACR against mean samples per image: fixed n (a line over n) and max-radius (one point per tolerance)."""
    from jaxsmooth.analysis import plotting

    Figure = plotting.figure_class()

    fig = Figure(figsize=(6.4 * len(curves), 4.8), dpi=150)
    axes = np.atleast_1d(fig.subplots(1, len(curves)))
    for ax, (label, curve) in zip(axes, curves.items()):
        for kind, style in (("fixed", "o-"), ("max-radius", "s--")):
            points = sorted((v[0], v[1], k) for k, v in curve.items() if k.startswith(kind))
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=kind)
                for x, y, name in points:
                    ax.annotate(name.split()[-1], (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xscale("log")
        plotting.finish(fig, ax, xlabel="mean samples per image (selection included)", ylabel="ACR",
                        title=f"{label}: ACR against samples", ylim=None, legend="lower right")
    return fig
