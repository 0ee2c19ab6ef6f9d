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
    p = argparse.ArgumentParser(prog="python -m jaxsmooth.attack", description=__doc__.split("\n\n")[1])
    cli.add_config_arguments(p, required=False)
    p.add_argument("--checkpoint", required=True, help="the workdir of the classifier: a training run's --workdir "
                                                       "or a converted one")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--wrapper", default="", help="the workdir of a model wrapper (a denoiser) put in front of the "
                                                 "classifier: the attack is on classifier(wrapper(x))")
    p.add_argument("--out", required=True, help="output TSV (resumed when it exists)")
    p.add_argument("--mode", choices=("distance", "accuracy"), default="distance",
                   help="distance: the smallest adversarial distance per example (default); accuracy: the "
                        "accuracy under ell_2 PGD at each of --radii (nal §5)")
    p.add_argument("--attack", default=None,
                   help="pgd (minimal distance by bisection on epsilon) or ddn; required in --mode distance "
                        "(--mode accuracy: pgd)")
    p.add_argument("--radii", default=None, help="--mode accuracy: comma-separated ell_2 radii >= 0, e.g. 0,0.5,1")
    p.add_argument("--test-noise-sigma", type=float, default=None,
                   help="--mode accuracy: std of the test-time noise (default: the config's objective.sigma)")
    p.add_argument("--smoothed", action="store_true", help="attack the smoothed model (heat eq. 9)")
    p.add_argument("--num-noise", type=int, default=25, help="noise draws per step with --smoothed")
    p.add_argument("--sigma", type=float, default=None,
                   help="noise level with --smoothed (default: the config's objective.sigma)")
    p.add_argument("--loss", default="ce", help="attack loss: ce (cross-entropy) or kl")
    p.add_argument("--topk", type=int, default=1, help="success when the label leaves the top k classes")
    p.add_argument("--steps", type=int, default=20,
                   help="gradient steps (pgd: per bisection round; --mode accuracy: PGD iterations K_attack)")
    p.add_argument("--max-epsilon", type=float, default=4.0, help="pgd: the largest ell_2 radius searched")
    p.add_argument("--rounds", type=int, default=10, help="pgd: bisection rounds after the first run")
    p.add_argument("--init-epsilon", type=float, default=1.0, help="ddn: the initial perturbation norm")
    p.add_argument("--split", choices=("test", "train"), default="test")
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
    from jaxsmooth import checkpoint, loader

    if not args.config:  # the workdir's own config.json: say first when the workdir itself is wrong
        checkpoint.checkpoint_folder(args.checkpoint, "checkpoint", args.step)
    config = cli.load_config(args.config, overrides, args.checkpoint)
    model, dataset = loader.load_with_data(config, args.checkpoint, args.step, wrapper=args.wrapper,
                                           fold_batch_norm=False)
    return config, model, dataset


def _model_sigma(model, flag: str) -> float:
    """The scalar sigma the model certifies with, the default of `flag`."""
    if np.ndim(model.sigma):
        raise UserError(flag, f"{model.workdir} certifies with a per-pixel sigma; give --{flag}")
    return float(model.sigma)


def _main(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxsmooth.attacks import runner

    if args.mode == "accuracy":
        return _accuracy(args, overrides)
    _distance_settings(args, None)  # the flags alone, before anything is loaded

    import jax

    from jaxsmooth import jobs, noise, results
    from jaxsmooth.certification import records

    config, model, dataset = _load(args, overrides)
    sigma, settings = _distance_settings(args, model)
    params, model_state = model.params, model.model_state
    if settings.topk >= dataset.num_classes:
        raise UserError("topk", f"must be < the number of classes {dataset.num_classes}, got {settings.topk}")
    split = dataset.test if args.split == "test" else dataset.train
    indices = records.example_indices(len(split), args.skip, args.max)
    seed = config.seed if args.seed is None else args.seed

    header = {"attack": settings.attack, "smoothed": args.smoothed, "sigma": sigma,
              "num_noise": settings.num_noise if args.smoothed else None, "loss": settings.loss,
              "topk": settings.topk, "steps": settings.steps,
              "max_epsilon": settings.max_epsilon if settings.attack == "pgd" else None,
              "rounds": settings.rounds if settings.attack == "pgd" else None,
              "init_epsilon": settings.init_epsilon if settings.attack == "ddn" else None, "seed": seed,
              "key": f"fold_in(key({seed}), attack stream)", "dtype": model.dtype,
              "model": model.info["model"], "dataset": config.data.name, "split": args.split, "skip": args.skip,
              "max": args.max, "batch": args.batch, **model.settings(), "devices": jax.device_count()}
    jobs.lock_output(args.out)
    writer = results.Writer(args.out, results.ATTACK, header)
    done = set(writer.done)
    todo = np.asarray([i for i in indices if int(i) not in done], np.int64)
    attack = runner.make_attack(model.apply, settings)
    key = noise.attack_key(noise.root_key(seed))

    from tqdm import tqdm

    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), unit="img", dynamic_ncols=True, file=sys.stderr,
               disable=args.no_progress)
    attacked = broken = 0
    seconds = 0.0
    try:
        rows = runner.attack_rows(attack, params, model_state, split, todo, key, batch=args.batch)
        for row in jobs.until_stopped(rows, args.out):
            writer.write(row)
            attacked += 1
            broken += row["success"]
            seconds += row["seconds"]
            bar.update(1)
            bar.set_postfix(img_per_s=f"{attacked / seconds:.2f}" if seconds else "-",
                            success=f"{broken / attacked:.3f}", refresh=False)
    finally:
        bar.close()
        writer.close()
    from jaxsmooth import analysis

    result = analysis.read_attack(args.out)
    distance = result.columns["distance"]
    median = float(np.median(distance))
    print(f"{settings.attack}: {len(indices)} examples in {args.out} ({len(todo)} this run), success rate "
          f"{float(np.mean(result.columns['success'])):.3f}, median distance "
          f"{median:.4g}" + (" (over half not broken)" if math.isinf(median) else ""))
    return 0


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
    from jaxsmooth.attacks import runner

    if text is None:
        raise UserError("radii", "--mode accuracy needs --radii, comma-separated ell_2 radii >= 0, e.g. 0,0.5,1")
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError("radii", f"must be comma-separated numbers >= 0, got {text!r}") from None
    return runner.check_radii(values)


def _accuracy(args, overrides) -> int:
    """--mode accuracy (module docstring)."""
    from jaxsmooth.attacks import runner

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

    import jax

    from jaxsmooth import jobs, noise, results
    from jaxsmooth.certification import records

    config, model, dataset = _load(args, overrides)
    sigma = _model_sigma(model, "test-noise-sigma") if args.test_noise_sigma is None else args.test_noise_sigma
    runner.check_accuracy_settings(args.steps, sigma)
    params, model_state = model.params, model.model_state
    split = dataset.test if args.split == "test" else dataset.train
    indices = records.example_indices(len(split), args.skip, args.max)
    seed = config.seed if args.seed is None else args.seed
    header = {"mode": "accuracy", "attack": "pgd", "radii": list(radii), "steps": args.steps,
              "step_size": "2 * radius / steps", "loss": "ce", "test_noise_sigma": float(sigma),
              "test_noise": "one draw per example, the same at every radius", "seed": seed,
              "key": f"fold_in(key({seed}), attack stream)", "dtype": model.dtype,
              "model": model.info["model"], "dataset": config.data.name, "split": args.split, "skip": args.skip,
              "max": args.max, "batch": args.batch, **model.settings(), "devices": jax.device_count()}
    jobs.lock_output(args.out)
    writer = results.Writer(args.out, results.ACCURACY, header)
    done = _done_pairs(args.out)  # the writer has checked the settings and dropped a cut last row
    total = len(indices) * len(radii)
    accuracy = runner.make_accuracy(model.apply, test_noise_sigma=sigma, steps=args.steps)
    key = noise.attack_key(noise.root_key(seed))

    from tqdm import tqdm

    todo = total - sum(1 for i in indices for r in radii if (int(i), r) in done)
    bar = tqdm(total=total, initial=total - todo, unit="row", dynamic_ncols=True, file=sys.stderr,
               disable=args.no_progress)
    written = 0
    try:
        for row in jobs.until_stopped(runner.accuracy_rows(accuracy, params, model_state, split, indices, radii, key,
                                                          batch=args.batch, done=done), args.out):
            writer.write(row)
            written += 1
            bar.update(1)
    finally:
        bar.close()
        writer.close()
    from jaxsmooth.analysis import attacks as attack_analysis

    result = attack_analysis.read_accuracy(args.out)
    print(f"accuracy under ell_2 PGD ({args.steps} steps): {len(indices)} examples x {len(radii)} radii in "
          f"{args.out} ({written} rows this run)")
    print(attack_analysis.accuracy_table([result]), end="")
    return 0


def _done_pairs(path: str) -> set[tuple[int, float]]:
    """The (idx, radius) pairs of the rows of an accuracy TSV whose cut last row `results.Writer` has dropped."""
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    return {(int(r[0]), float(r[2])) for r in rows[1:] if r and r[0]}


main = cli.main_wrapper(command, job=True)
write = cli.keyword_entry("attack", _parser, _main)

if __name__ == "__main__":
    sys.exit(main())
