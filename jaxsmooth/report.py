"""``python -m jaxsmooth.report deterministic|nal|sigma --suite S --workdir DIR [--config.FIELD=VALUE ...]``

The papers' comparisons, each trained, certified or attacked and tabulated
from the suite's configs (configs/<suite>_<objective>.py); every stage
resumes. ``--config.FIELD=VALUE`` overrides apply to every run of the suite
(e.g. ``--config.data.name=idx:../shared/data/mnist``).

``deterministic``: standard -> heat / bootcamp against gaussian, certified
accuracy, ACR, L-bound, agreement and training time (heat, bootcamp).
``nal``: standard / gaussian / wrm / smoothadv / nal, accuracy under ell_2
PGD and training time (nal §5). ``sigma``: a learned per-pixel sigma against
isotropic ones, certified accuracy against certified area and the sigma
image (non_uniform Fig. 1, 3; appendix B.1's sweep).
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxsmooth import cli


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("report", __doc__.split("\n\n")[1])
    sub = cli.add_subcommands(p, dest="what", required=True)
    _add_nal(sub)
    _add_deterministic(sub)
    _add_sigma(sub)
    return p


def _add_nal(sub) -> None:
    a = sub.add_parser("nal", help="standard / gaussian / wrm / smoothadv / nal: accuracy under ell_2 PGD, "
                                   "training time (nal §5)")
    a.add_argument("--suite", default="digits", help="digits (bundled) or mnist (configs/<suite>_*.py)")
    a.add_argument("--workdir", required=True, help="the report's folder (resumed when it exists)")
    a.add_argument("--runs", default="standard,gaussian,wrm,smoothadv,nal",
                   help="comma-separated subset of standard,gaussian,wrm,smoothadv,nal")
    a.add_argument("--radii", default="0,0.25,0.5,0.75,1", help="comma-separated PGD radii")
    a.add_argument("--skip", type=int, default=1, help="attack every skip-th test example")
    a.add_argument("--max", type=int, default=-1, help="stop before this test example (-1: all)")
    a.add_argument("--test-noise-sigma", type=float, default=0.0,
                   help="test-time noise of every run's evaluation (0: each run's objective.sigma)")
    a.add_argument("--markdown", default="", help="also write the table here")


def _add_deterministic(sub) -> None:
    d = sub.add_parser("deterministic", help="standard -> heat / bootcamp vs gaussian: certified accuracy, ACR, "
                                             "L-bound, agreement, training time")
    d.add_argument("--suite", default="digits", help="digits (bundled) or mnist (configs/<suite>_<objective>.py)")
    d.add_argument("--workdir", required=True, help="the report's folder (resumed when it exists)")
    d.add_argument("--runs", default=",".join(("standard", "gaussian", "heat", "bootcamp")),
                   help="comma-separated subset of standard,gaussian,heat,bootcamp")
    d.add_argument("--skip", type=int, default=1, help="certify every skip-th test example")
    d.add_argument("--max", type=int, default=-1, help="stop before this test example (-1: all)")
    d.add_argument("--n", type=int, default=10_000, help="certification samples")
    d.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    d.add_argument("--radii", default="0,0.125,0.25,0.5", help="comma-separated radii of the table")
    d.add_argument("--markdown", default="", help="also write the table here")


def _add_sigma(sub) -> None:
    s = sub.add_parser("sigma", help="learned per-pixel sigma vs isotropic: certified accuracy vs certified area, "
                                     "the sigma image (non_uniform Fig. 1, 3)")
    s.add_argument("--suite", default="digits", help="digits (bundled), mnist or fashion_mnist")
    s.add_argument("--workdir", required=True, help="the report's folder (resumed when it exists)")
    s.add_argument("--skip", type=int, default=1, help="certify every skip-th test example")
    s.add_argument("--max", type=int, default=-1, help="stop before this test example (-1: all)")
    s.add_argument("--n", type=int, default=10_000, help="certification samples")
    s.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    s.add_argument("--areas", default="", help="comma-separated certified-area thresholds of the table (default: "
                                               "quartiles of the certified areas); negative ones as --areas=-60,-50")
    s.add_argument("--sigma-sweep", default="",
                   help="comma-separated initial constant sigmas: one sigma run each, filtered by the blanket "
                        "algorithm (non_uniform appendix B.1); default: one run with the config's")
    s.add_argument("--sigma-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a config override for the sigma runs only (repeatable), e.g. optimizer.learning_rate=0.01; "
                        "--config.FIELD=VALUE overrides apply to the base model too")
    s.add_argument("--markdown", default="", help="also write the table here (always: WORKDIR/sigma_report.md)")


def command(argv: list[str]) -> int:
    rest, overrides = cli.split_overrides(argv)
    args = _parser().parse_args(rest)
    return {"deterministic": _deterministic, "nal": _nal, "sigma": _sigma}[args.what](args, overrides)


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _radii(text: str) -> list[float]:
    from jaxsmooth import values

    return list(values.radii(text))


def _nal(args, overrides) -> int:
    from jaxsmooth.benchmarks import nal_report

    rows = nal_report.run_suite(args.suite, args.workdir, overrides=overrides,
                                radii=_radii(args.radii), skip=args.skip, maximum=args.max,
                                runs=args.runs.split(","), test_noise_sigma=args.test_noise_sigma,
                                on_stage=_say)
    _publish(nal_report.markdown(rows), [args.markdown], f"nal report, suite {args.suite}",
             f"ell_2 PGD, 20 steps; --skip {args.skip} --max {args.max}")
    return 0


def _publish(table: str, paths: list[str], title: str, settings: str) -> None:
    """Writes a report's markdown table to each of `paths` (empty ones skipped) and prints it under a line naming
    the report, the device, jax's version and the settings."""
    import jax

    for path in paths:
        if path:
            with open(path, "w") as f:
                f.write(table)
    print(f"{title}, {jax.devices()[0].device_kind}, jax {jax.__version__}; {settings}")
    print(table, end="")


def _deterministic(args, overrides) -> int:
    from jaxsmooth.benchmarks import deterministic

    radii = _radii(args.radii)
    rows = deterministic.run_suite(args.suite, args.workdir, overrides=overrides,
                                   skip=args.skip, maximum=args.max, n=args.n, batch=args.batch, radii=radii,
                                   runs=args.runs.split(","), on_stage=_say)
    _publish(deterministic.markdown(rows), [args.markdown], f"deterministic smoothing, suite {args.suite}",
             f"certified: --skip {args.skip} --max {args.max} --n {args.n}")
    return 0


def _sigma(args, overrides) -> int:
    from jaxsmooth.analysis import sigma as sigma_analysis
    from jaxsmooth.benchmarks import sigma_report

    sweep = sigma_report.parse_sweep(args.sigma_sweep)
    areas = sigma_report.parse_areas(args.areas)
    sigma_report.base_config(args.suite)  # a bad --suite before anything runs
    report = sigma_report.run_suite(args.suite, args.workdir, overrides=overrides,
                                    skip=args.skip, maximum=args.max, n=args.n, batch=args.batch, sweep=sweep,
                                    areas=areas, sigma_overrides=args.sigma_set,
                                    on_stage=_say)
    table = sigma_report.markdown(report.rows)
    extra_figures = []
    if sweep:
        learned = [r for r in report.rows if r.name.startswith("sigma")]
        kept = sigma_analysis.blanket([r.certified_accuracy for r in learned], [r.area_mean for r in learned])
        table += "\n" + sigma_report.sweep_markdown(learned, kept)
        points = sigma_report.sweep_points(args.workdir, [r.name for r in learned])
        if points:  # appendix B.1: every sub-epoch evaluation of every run, then the blanket filter
            acc, area = [p.accuracy for p in points], [p.area for p in points]
            kept = sigma_analysis.blanket(acc, area)
            table += "\n" + sigma_report.sweep_points_markdown(points, kept)
            extra_figures.append(os.path.join(args.workdir, "sweep.png"))
            sigma_analysis.sweep_figure(acc, area, [p.run for p in points], kept,
                                        title=f"{args.suite}: sigma sweep, blanket filter").savefig(extra_figures[-1])
    _publish(table, [os.path.join(args.workdir, "sigma_report.md"), args.markdown],
             f"non-uniform smoothing, suite {args.suite}",
             f"certified: --skip {args.skip} --max {args.max} --n {args.n}")
    figures = sigma_report.write_figures(report, args.workdir, title=f"{args.suite}: learned vs isotropic sigma")
    print("figures: " + " ".join(figures + extra_figures))
    return 0


main = cli.main_wrapper(command, parser=_parser)

if __name__ == "__main__":
    sys.exit(main())
