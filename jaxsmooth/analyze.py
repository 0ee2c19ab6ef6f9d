"""``python -m jaxsmooth.analyze RUN.tsv [RUN2.tsv ...] [--labels a,b] [--radii 0,0.25,0.5 | --max-radius R
--step S] [--markdown FILE] [--latex FILE] [--plot FILE.png] [--area-plot FILE.png]``

Tabulates certify runs: certified accuracy at each radius, average certified
radius (ACR), abstain rate and clean accuracy, one row per run (Cohen et
al.'s analysis); predict runs get accuracy and abstain rate. Prints the
markdown table; writes it as LaTeX, and plots certified accuracy against
radius (and against the certified area, for anisotropic runs), on request.
"""

from __future__ import annotations

import argparse
import math
import sys

from jaxsmooth import analysis, cli
from jaxsmooth.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxsmooth.analyze", description=__doc__.split("\n\n")[1])
    p.add_argument("runs", nargs="+", metavar="RUN.tsv", help="TSVs written by python -m jaxsmooth.certify "
                   "(or locuslab/smoothing), all of one mode")
    p.add_argument("--labels", default=None, help="comma-separated names of the runs, one per file "
                   "(default: the file stems)")
    p.add_argument("--radii", default=None, help="comma-separated radii of the table's columns, e.g. 0,0.25,0.5")
    p.add_argument("--max-radius", default=None, help="largest radius of the grid 0, step, ... "
                   "(default: the largest certified radius, rounded up to a step)")
    p.add_argument("--step", default=None, help=f"radius grid step (default {analysis.DEFAULT_STEP})")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the markdown table here")
    p.add_argument("--latex", default=None, metavar="FILE", help="write the table as a booktabs LaTeX tabular")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="plot certified accuracy vs radius, all runs")
    p.add_argument("--area-plot", default=None, metavar="FILE.png",
                   help="plot certified accuracy vs the certified-area objective (anisotropic runs)")
    return p


def _number(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(flag, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(flag, f"{text!r} is not a finite number")
    return value


def _list(text: str, flag: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise UserError(flag, f"{text!r} has an empty item; write a comma-separated list like a,b")
    return items


def _write_text(path: str, text: str, flag: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise UserError(flag, f"cannot write {path}: {e.strerror}") from None


def _save_figure(fig, path: str, flag: str) -> None:
    try:
        fig.savefig(path)
    except OSError as e:
        raise UserError(flag, f"cannot write {path}: {e.strerror}") from None
    except ValueError as e:  # an image format matplotlib does not know
        raise UserError(flag, f"cannot write {path}: {e}") from None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    labels = _list(args.labels, "--labels") if args.labels is not None else None
    radii = [_number(r, "--radii") for r in _list(args.radii, "--radii")] if args.radii is not None else None
    max_radius = _number(args.max_radius, "--max-radius") if args.max_radius is not None else None
    step = _number(args.step, "--step") if args.step is not None else None

    runs = analysis.read_runs(args.runs, labels)
    grid = analysis.radius_grid(runs, radii, max_radius, step)
    summaries = [analysis.summarize(run, grid) for run in runs]
    markdown = analysis.markdown_table(summaries)
    if args.markdown:
        _write_text(args.markdown, markdown, "--markdown")
    if args.latex:
        _write_text(args.latex, analysis.latex_table(summaries), "--latex")
    if args.plot:
        _save_figure(analysis.certified_accuracy_figure(runs, max_radius=float(grid[-1]) or None), args.plot, "--plot")
    if args.area_plot:
        _save_figure(analysis.area_figure(runs), args.area_plot, "--area-plot")
    for run in runs:
        if run.ignored_line is not None:
            print(f"note: {run.path}: ignored the partial last line {run.ignored_line}", file=sys.stderr)
    print(markdown, end="")
    return 0


run = cli.main_wrapper(main)

if __name__ == "__main__":
    sys.exit(run())
