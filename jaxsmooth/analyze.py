"""``python -m jaxsmooth.analyze RUN.tsv [RUN2.tsv ...] [--labels a,b] [--radii 0,0.25,0.5 | --max-radius R
--step S] [--markdown FILE] [--latex FILE] [--plot FILE.png] [--area-plot FILE.png] [--curve FILE.png]
[--samples-plot FILE.png]``

Tabulates certify runs: certified accuracy at each radius, average certified
radius (ACR), abstain rate and clean accuracy, one row per run (Cohen et
al.'s analysis); predict runs get accuracy and abstain rate. Prints the
markdown table; writes it as LaTeX, and plots certified accuracy against
radius (and against the certified area, for anisotropic runs), on request.

Sequential runs (``certify --sequential``, an ``n_used`` column) add a
second table: mean and median samples per input, and how many times fewer
than the fixed-n run of the same images given with them
(`jaxsmooth.analysis.samples`); ``--samples-plot FILE.png`` draws n_used
against pA_lower::

    python -m jaxsmooth.analyze seq.tsv fixed.tsv --radii 0,0.25,0.5,0.75 --samples-plot n_used.png

Attack files (``python -m jaxsmooth.attack``; first line ``# jaxsmooth
attack``) are recognised by their header. When any file given is one, the
command prints instead the adversarial-distance table of heat Tables 1-2:
one row per model with the median and mean of the L-bound, the PGD and the
DDN distance (means over finite distances: failed attacks are left out; see
`jaxsmooth.analysis.attacks`). A model's files share a label: the
``--labels`` entry given for each file, by default the base name of the
checkpoint in the file's header, so ``analyze pgd.tsv ddn.tsv cert.tsv``
makes one row of the three files of one checkpoint. Certify files among
attack files give the L-bound (``--lbound model|mc``: their lbound_model or
lbound_mc column; default lbound_model when present). ``--curve FILE.png``
plots the fraction of examples attacked vs ell_2 distance, one line per
attack file; ``--markdown`` writes the table. Example::

    python -m jaxsmooth.analyze pgd.tsv ddn.tsv cert.tsv --curve attacks.png

Distributional files (``python -m jaxsmooth.certify --mode distributional``)
are recognised by their header too: each gets the tables of
`jaxsmooth.analysis.distributional` (per gamma E[phi], rho = E[c] and
epsilon = sqrt(rho), nal eq. 8; per gamma_adv the empirical worst-case point
(rho_test, E[loss]) and the certificate there; the certificate curve
min_gamma gamma rho + E[phi_gamma] at ``--rho`` budgets, nal eq. 3/7), and
``--plot FILE.png`` draws nal Fig. 2(a). Example::

    python -m jaxsmooth.analyze dist.tsv --rho 0,2,4,8 --plot fig2a.png

``--common`` compares the runs on the examples they all have, for example
a sequential run against a fixed-n run that has reached part of the same
images::

    python -m jaxsmooth.analyze grid.tsv fixed.tsv --radii 0,0.25,0.5,0.75 --common

The shards of a run certified over several processes with
``--config.certify.parallel=examples`` (``OUT.shard<p>of<P>.tsv``) are
merged into one run (one row of the table); ``--merge OUT.tsv`` also writes
them as one TSV::

    python -m jaxsmooth.analyze cert.shard0of2.tsv cert.shard1of2.tsv --merge cert.tsv

Accuracy files (``python -m jaxsmooth.attack --mode accuracy``; first line
``# jaxsmooth attack-accuracy``) give nal Fig. 1: accuracy under ell_2 PGD
at each radius, without and with test-time noise, one row per file, and
``--plot FILE.png`` draws it (dotted: without noise; solid: with)::

    python -m jaxsmooth.analyze nal_acc.tsv gaussian_acc.tsv --plot fig1.png
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

from jaxsmooth import analysis, cli, values
from jaxsmooth.analysis import attacks as attack_analysis
from jaxsmooth.analysis import samples as samples_analysis
from jaxsmooth.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("analyze", __doc__.split("\n\n")[1])
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
    p.add_argument("--curve", default=None, metavar="FILE.png",
                   help="attack files: plot the fraction of examples attacked vs ell_2 distance")
    p.add_argument("--rho", default=None, help="distributional files: comma-separated transport budgets rho of "
                   "the certificate table (default: 5 from 0 to 1.1 x the largest mean cost)")
    p.add_argument("--merge", default=None, metavar="OUT.tsv",
                   help="write the shards of one run (certify.parallel = examples: OUT.shard<p>of<P>.tsv) as one "
                        "TSV, rows in idx order; the table is printed as well")
    p.add_argument("--common", action="store_true", default=None,
                   help="compare the runs on the examples (idx) they all have, leaving out the rest")
    p.add_argument("--samples-plot", default=None, metavar="FILE.png",
                   help="sequential runs (an n_used column): plot samples used against pA_lower")
    p.add_argument("--lbound", default=None, metavar="{model,mc}",
                   help="attack files: the certify files' L-bound column, model or mc (default: model when present)")
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


def _attack_main(args, labels) -> int:
    for flag in ("common", "radii", "max_radius", "step", "latex", "plot", "area_plot", "merge", "samples_plot"):
        if getattr(args, flag) is not None:
            name = "--" + flag.replace("_", "-")
            raise UserError(name, "is for certify files; with attack files use --markdown, --curve, --lbound")
    if args.lbound not in (None, "model", "mc"):
        raise UserError("--lbound", f"must be model or mc, got {args.lbound!r}")
    if labels is not None and len(labels) != len(args.runs):
        raise UserError("--labels", f"{len(labels)} label(s) for {len(args.runs)} file(s); give one per file, "
                                    "comma-separated")
    attacks, certify_runs = [], []
    for i, path in enumerate(args.runs):
        label = None if labels is None else labels[i]
        if analysis.is_attack_file(path):
            attacks.append(analysis.read_attack(path, label))
        else:
            run = analysis.read_run(path, label)
            if run.mode != "certify":
                raise UserError(path, f"is a {run.mode} file; among attack files only certify files "
                                      "(for the L-bound) are read")
            if label is None:
                run = dataclasses.replace(run, label=analysis.model_label(run.settings, path))
            certify_runs.append(run)
    column = None if args.lbound is None else "lbound_" + args.lbound
    markdown = analysis.distance_table(attacks, certify_runs, lbound_column=column)
    if args.markdown:
        _write_text(args.markdown, markdown, "--markdown")
    if args.curve:
        _save_figure(analysis.attack_curve_figure(attacks), args.curve, "--curve")
    for run in attacks + certify_runs:
        if run.ignored_line is not None:
            print(f"note: {run.path}: ignored the partial last line {run.ignored_line}", file=sys.stderr)
    print(markdown, end="")
    return 0


def _accuracy_main(args, labels) -> int:
    for flag in ("common", "radii", "max_radius", "step", "latex", "area_plot", "curve", "lbound", "rho", "merge",
                 "samples_plot"):
        if getattr(args, flag) is not None:
            raise UserError("--" + flag.replace("_", "-"),
                            "is not for accuracy files; with them use --markdown, --plot")
    if labels is not None and len(labels) != len(args.runs):
        raise UserError("--labels", f"{len(labels)} label(s) for {len(args.runs)} file(s); give one per file, "
                                    "comma-separated")
    runs = [attack_analysis.read_accuracy(p, None if labels is None else labels[i]) for i, p in enumerate(args.runs)]
    markdown = attack_analysis.accuracy_table(runs)
    if args.markdown:
        _write_text(args.markdown, markdown, "--markdown")
    if args.plot:
        _save_figure(attack_analysis.accuracy_figure(runs), args.plot, "--plot")
    print(markdown, end="")
    return 0


def _distributional_main(args, labels) -> int:
    for flag in ("common", "radii", "max_radius", "step", "latex", "area_plot", "curve", "lbound", "merge",
                 "samples_plot"):
        if getattr(args, flag) is not None:
            name = "--" + flag.replace("_", "-")
            raise UserError(name, "is not for distributional files; with them use --rho, --markdown, --plot")
    if labels is not None and len(labels) != len(args.runs):
        raise UserError("--labels", f"{len(labels)} label(s) for {len(args.runs)} file(s); give one per file, "
                                    "comma-separated")
    for path in args.runs:
        if not analysis.is_distributional_file(path):
            raise UserError(path, "is not a distributional file; analyse distributional files on their own")
    runs = [analysis.read_distributional(p, None if labels is None else labels[i]) for i, p in enumerate(args.runs)]
    rho = None
    if args.rho is not None:
        rho = [_number(r, "--rho") for r in _list(args.rho, "--rho")]
        if any(r < 0 for r in rho):
            raise UserError("--rho", f"budgets are >= 0, got {args.rho!r}")
    markdown = "\n".join(analysis.distributional_markdown(run, rho) for run in runs)
    if args.markdown:
        _write_text(args.markdown, markdown, "--markdown")
    if args.plot:
        _save_figure(analysis.distributional_figure(runs), args.plot, "--plot")
    for run in runs:
        if run.ignored_line is not None:
            print(f"note: {run.path}: ignored the partial last line {run.ignored_line}", file=sys.stderr)
    print(markdown, end="")
    return 0


def command(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    labels = _list(args.labels, "--labels") if args.labels is not None else None
    if any(attack_analysis.is_accuracy_file(path) for path in args.runs):
        return _accuracy_main(args, labels)
    if any(analysis.is_distributional_file(path) for path in args.runs):
        return _distributional_main(args, labels)
    if args.rho is not None:
        raise UserError("--rho", "is for distributional files (python -m jaxsmooth.certify --mode distributional)")
    if any(analysis.is_attack_file(path) for path in args.runs):
        return _attack_main(args, labels)
    for flag in ("curve", "lbound"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag}", "is for attack files (python -m jaxsmooth.attack); none was given")
    radii = values.radii(args.radii) if args.radii is not None else None
    max_radius = _number(args.max_radius, "--max-radius") if args.max_radius is not None else None
    step = _number(args.step, "--step") if args.step is not None else None

    if args.merge is not None:
        merged = analysis.write_merged(args.runs, args.merge)
        print(f"merged {merged.settings['shards_merged']} shards, {merged.num_examples} examples, into {args.merge}",
              file=sys.stderr)
    runs = analysis.read_runs(args.runs, labels)
    if args.common:
        runs = analysis.common_images(runs)
    grid = analysis.radius_grid(runs, radii, max_radius, step)
    summaries = [analysis.summarize(run, grid) for run in runs]
    markdown = analysis.markdown_table(summaries)
    samples = samples_analysis.samples_rows(runs)
    if samples:  # sequential runs: samples per input, against the fixed-n run of the same images
        markdown += "\n" + samples_analysis.samples_markdown(samples)
    if args.markdown:
        _write_text(args.markdown, markdown, "--markdown")
    if args.latex:
        _write_text(args.latex, analysis.latex_table(summaries), "--latex")
    if args.plot:
        _save_figure(analysis.certified_accuracy_figure(runs, max_radius=float(grid[-1]) or None), args.plot, "--plot")
    if args.area_plot:
        _save_figure(analysis.area_figure(runs), args.area_plot, "--area-plot")
    if args.samples_plot:
        _save_figure(samples_analysis.samples_figure(runs), args.samples_plot, "--samples-plot")
    for run in runs:
        if run.ignored_line is not None:
            print(f"note: {run.path}: ignored the partial last line {run.ignored_line}", file=sys.stderr)
    print(markdown, end="")
    return 0


main = cli.main_wrapper(command, parser=_parser)

if __name__ == "__main__":
    sys.exit(main())
