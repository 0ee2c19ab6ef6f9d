"""``python -m jaxsmooth.attack --config C --checkpoint DIR --attack pgd|ddn --out FILE.tsv [--smoothed] ...``

Attacks a trained run's model on every `--skip`-th example of a split and
writes, one TSV row per example, the smallest ell_2 adversarial distance the
attack found (heat §3.4): ``pgd`` by bisection on PGD's epsilon, ``ddn`` by
DDN. The deterministic form attacks the model's eval-mode logits (heat eq.
8); ``--smoothed`` attacks the Gaussian-smoothed model with gradients
averaged over ``--num-noise`` draws (heat eq. 9). Rerunning the same command
resumes after the last written row.

The file is a plain TSV with the columns
``idx label predict success distance time`` (predict: the clean
prediction; distance 0 for examples adversarial before the attack, inf where
the attack failed); its settings are in ``FILE.tsv.json``. Tabulate with
``python -m jaxsmooth.analyze FILE.tsv``.

``--mode accuracy --radii 0,0.5,1`` instead measures the accuracy under
deterministic ell_2 PGD at each radius (nal §5: ``--steps`` 20 iterations of
step 2 eps / steps, cross-entropy), on the base classifier and with one
test-time Gaussian draw of std ``--test-noise-sigma`` (default: the config's
objective.sigma) added to the attacked point. The file has the columns
``idx label radius correct correct_noisy time``, one row per example and
radius; the run ends by printing the accuracy table
(`jaxsmooth.analysis.accuracy_table`).
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from jaxsmooth import cli
from jaxsmooth.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("attack", __doc__.split("\n\n")[1])
    cli.add_config_arguments(p, required=False)
    p.add_argument("--checkpoint", required=True, help="the workdir of the classifier: a training run's --workdir "
                                                       "or a converted one")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    cli.add_wrapper_arguments(p, "attacks classifier(wrapper(x))")
    p.add_argument("--out", required=True, help="output TSV (resumed when it exists)")
    p.add_argument("--mode", choices=("distance", "accuracy"), default="distance",
                   help="distance: the smallest adversarial distance per example (default); accuracy: the "
                        "accuracy under ell_2 PGD at each of --radii (nal §5)")
    p.add_argument("--attack", default=None, metavar="{pgd,ddn}",
                   help="pgd (minimal distance by bisection on epsilon) or ddn; required in --mode distance "
                        "(--mode accuracy: pgd)")
    p.add_argument("--radii", default=None, help="--mode accuracy: comma-separated ell_2 radii >= 0, e.g. 0,0.5,1")
    p.add_argument("--test-noise-sigma", type=float, default=None,
                   help="--mode accuracy: std of the test-time noise (default: the config's objective.sigma)")
    p.add_argument("--smoothed", action="store_true", help="attack the smoothed model (heat eq. 9)")
    p.add_argument("--num-noise", type=int, default=25, help="noise draws per step with --smoothed")
    p.add_argument("--sigma", type=float, default=None,
                   help="noise level with --smoothed (default: the config's objective.sigma)")
    p.add_argument("--loss", default="ce", metavar="{ce,kl}", help="attack loss: ce (cross-entropy) or kl")
    p.add_argument("--topk", type=int, default=1, help="success when the label leaves the top k classes")
    p.add_argument("--steps", type=int, default=20,
                   help="gradient steps (pgd: per bisection round; --mode accuracy: PGD iterations K_attack)")
    p.add_argument("--max-epsilon", type=float, default=4.0, help="pgd: the largest ell_2 radius searched")
    p.add_argument("--rounds", type=int, default=10, help="pgd: bisection rounds after the first run")
    p.add_argument("--init-epsilon", type=float, default=1.0, help="ddn: the initial perturbation norm")
    p.add_argument("--split", choices=("test", "train"), default="test", help="the data set split")
    p.add_argument("--skip", type=int, default=1, help="attack every skip-th example")
    p.add_argument("--max", type=int, default=-1, help="stop before this example index (-1: the whole split)")
    p.add_argument("--batch", type=int, default=100, help="examples attacked together")
    p.add_argument("--seed", type=int, default=None, help="attack seed (default: the config's seed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def command(argv: list[str]) -> int:
    rest, overrides = cli.split_overrides(argv)
    return _main(_parser().parse_args(rest), overrides)


def _load(args, overrides):
    """(config, model, dataset): the model as trained (BatchNorm not folded: attacks differentiate it)."""
    cli.start_jax()
    return cli.load_model(args.config, overrides, args.checkpoint, args.step, **cli.wrapper_of(args),
                          fold_batch_norm=False)


def _model_sigma(model, flag: str) -> float:
    """The scalar sigma the model certifies with, the default of `flag`."""
    if np.ndim(model.sigma):
        raise UserError(flag, f"{model.workdir} certifies with a per-pixel sigma; give --{flag}")
    return float(model.sigma)


def _main(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.mode == "accuracy":
        return _accuracy(args, overrides)
    _distance_settings(args, None)  # the flags alone, before anything is loaded
    from jaxsmooth.attacks import dataset as attack_job

    config, model, dataset = _load(args, overrides)
    _, settings = _distance_settings(args, model)
    job = attack_job.open_attack(model, dataset, settings, _examples(args, config))
    _progress(job, args, "img", lambda row: row["success"], "success")
    from jaxsmooth import analysis

    result = analysis.read_attack(args.out)
    median = float(np.median(result.columns["distance"]))
    print(f"{settings.attack}: {job.total} examples in {args.out} ({job.total - job.done} this run), success rate "
          f"{float(np.mean(result.columns['success'])):.3f}, median distance "
          f"{median:.4g}" + (" (over half not broken)" if math.isinf(median) else ""))
    return 0


def _examples(args, config):
    from jaxsmooth.attacks import dataset as attack_job

    return attack_job.Examples(out=args.out, seed=config.seed if args.seed is None else args.seed, split=args.split,
                               skip=args.skip, max=args.max, batch=args.batch, names={"dataset": config.data.name})


def _progress(job, args, unit: str, hit, hit_name: str) -> int:
    """Writes the job's rows under a progress bar (rows/s and the running rate of `hit`); the rows written."""
    from tqdm import tqdm

    from jaxsmooth import jobs

    bar = tqdm(total=job.total, initial=job.done, unit=unit, dynamic_ncols=True, file=sys.stderr,
               disable=args.no_progress)
    written = hits = 0
    seconds = 0.0
    try:
        for row in jobs.until_stopped(job.rows, args.out):
            job.writer.write(row)
            written += 1
            hits += hit(row)
            seconds += row["seconds"]
            bar.update(1)
            bar.set_postfix({f"{unit}_per_s": f"{written / seconds:.2f}" if seconds else "-",
                             hit_name: f"{hits / written:.3f}"}, refresh=False)
    finally:
        bar.close()
        job.writer.close()
    return written


def _distance_settings(args, model):
    """(sigma or None, `runner.Settings`) of the distance mode, refusing the accuracy mode's flags; before the model
    is loaded (`model` None), the flags alone."""
    from jaxsmooth.attacks import runner

    if args.radii is not None:
        raise UserError("radii", "is for --mode accuracy; the distance mode searches up to --max-epsilon")
    if args.test_noise_sigma is not None:
        raise UserError("test-noise-sigma", "is for --mode accuracy")
    if args.attack is None:
        raise UserError("attack", "is required in --mode distance: pgd or ddn")
    if args.batch <= 0:
        raise UserError("batch", f"must be > 0, got {args.batch}")
    if not args.smoothed and args.sigma is not None:
        raise UserError("sigma", "is the smoothed form's noise level; add --smoothed or drop --sigma")
    sigma = args.sigma if args.smoothed else None
    if args.smoothed and sigma is None and model is not None:
        sigma = _model_sigma(model, "sigma")
    return sigma, runner.Settings(attack=args.attack, sigma=sigma, num_noise=args.num_noise, loss=args.loss,
                                  topk=args.topk, steps=args.steps, max_epsilon=args.max_epsilon,
                                  rounds=args.rounds, init_epsilon=args.init_epsilon).check()


def _radii(text: str | None) -> tuple[float, ...]:
    from jaxsmooth import values

    if text is None:
        raise UserError("radii", "--mode accuracy needs --radii, comma-separated ell_2 radii >= 0, e.g. 0,0.5,1")
    return values.radii(text)


def _accuracy(args, overrides) -> int:
    """--mode accuracy (module docstring)."""
    from jaxsmooth.attacks import dataset as attack_job, runner

    radii = _radii(args.radii)
    if args.attack not in (None, "pgd"):
        raise UserError("attack", f"--mode accuracy attacks with pgd only, got {args.attack!r}")
    for flag, given in (("smoothed", args.smoothed), ("sigma", args.sigma is not None)):
        if given:
            raise UserError(flag, "is for --mode distance; --mode accuracy attacks the base classifier and adds "
                                  "test-time noise of std --test-noise-sigma")
    if args.batch <= 0:
        raise UserError("batch", f"must be > 0, got {args.batch}")
    if args.test_noise_sigma is not None:
        runner.check_accuracy_settings(args.steps, args.test_noise_sigma)
    config, model, dataset = _load(args, overrides)
    sigma = _model_sigma(model, "test-noise-sigma") if args.test_noise_sigma is None else args.test_noise_sigma
    job = attack_job.open_accuracy(model, dataset, radii, args.steps, sigma, _examples(args, config))
    written = _progress(job, args, "row", lambda row: row["correct"], "acc")
    from jaxsmooth.analysis import attacks as attack_analysis

    result = attack_analysis.read_accuracy(args.out)
    print(f"accuracy under ell_2 PGD ({args.steps} steps): {job.total // len(radii)} "
          f"examples x {len(radii)} radii in {args.out} ({written} rows this run)")
    print(attack_analysis.accuracy_table([result]), end="")
    return 0


main = cli.main_wrapper(command, job=True, parser=_parser)
write = cli.keyword_entry("attack", _parser, _main)

if __name__ == "__main__":
    sys.exit(main())
