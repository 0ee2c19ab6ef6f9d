"""``python -m jaxsmooth.certify --checkpoint DIR --out FILE.tsv [--mode certify|predict|distributional] ...``

Certifies (Cohen et al.'s CERTIFY) or predicts (PREDICT) the smoothed
classifier of a workdir on every `--skip`-th example of a split, one TSV row
per example; or (``--mode distributional --gamma G[,G2,...]
[--gamma-adv A1,A2,...]``) estimates the distributional-robustness
certificate gamma rho + E[phi_gamma] of nal Thm 1 and its empirical worst
case (nal §5.1), one row per example per gamma (see
`jaxsmooth.certification.distributional`). Rerunning the same command
resumes after the last written row.

The model is read by the one loader (`jaxsmooth.loader.load_model`), with
the sigma it certifies with: the run's, or the per-pixel sigma a ``sigma``
run learned (the anisotropic certificate of non_uniform Thm 3.1, with its
certified-area column). ``--sigma-from SIGMA_WORKDIR`` takes that learned
sigma for another classifier (--checkpoint). ``--wrapper WORKDIR`` puts a
model wrapper (`jaxsmooth.models.wrappers`) in front of the classifier: the
smoothed classifier is then that of classifier(wrapper(x)). ``--denoiser
WORKDIR`` is --wrapper for a denoiser only (denoised smoothing,
docs/denoised.md), which certifies at the sigma it was trained for.

Over the processes of a multi-host run, ``certify.parallel`` in the config
(``--config.certify.parallel=samples|examples``) chooses how the work is
split (`jaxsmooth.certification.dataset`); both give the counts one process
gives, and both resume after a kill.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from jaxsmooth import cli
from jaxsmooth.errors import UserError


def _parser() -> argparse.ArgumentParser:
    from jaxsmooth.certification import noises

    p = cli.parser("certify", __doc__.split("\n\n")[1])
    cli.add_config_arguments(p, required=False)
    p.add_argument("--checkpoint", default="",
                   help="the workdir of the classifier: a training run's --workdir or a converted one "
                        "(with --sigma-from: default that run's)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    cli.add_wrapper_arguments(p, "certifies the smoothed classifier of classifier(wrapper(x))")
    p.add_argument("--out", required=True, help="output TSV (resumed when it exists)")
    p.add_argument("--mode", choices=("certify", "predict", "distributional"), default="certify",
                   help="certify: CERTIFY, a class and a certified radius; predict: PREDICT, a class or an abstention; "
                        "distributional: nal's certificate")
    p.add_argument("--split", choices=("test", "train"), default="test", help="the data set split")
    p.add_argument("--skip", type=int, default=1, help="certify every skip-th example")
    p.add_argument("--max", type=int, default=-1, help="stop before this example index (-1: the whole split)")
    p.add_argument("--sigma", type=float, default=None, help="noise level (default: the one the model certifies with)")
    p.add_argument("--sigma-file", default="", help="a per-pixel sigma: .npy array of the input's shape (H, W, C)")
    p.add_argument("--sigma-from", default="",
                   help="the workdir of a `sigma` run: certify with its learned per-pixel sigma (latest checkpoint)")
    p.add_argument("--n0", type=int, default=100, help="selection samples")
    p.add_argument("--n", type=int, default=100_000, help="estimation samples (PREDICT: all samples)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability, per example")
    p.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass on each device")
    p.add_argument("--inputs", type=int, default=1, help="examples sampled together in each forward pass")
    p.add_argument("--candidate", choices=("selection", "clean"), default="selection",
                   help="selection: top class of n0 noisy samples (Cohen et al.); "
                        "clean: top class of one clean forward pass (deterministic HeatSmoothing models)")
    p.add_argument("--topk", type=int, default=0, help="also certify the true class in the top k (0: off)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: the config's seed)")
    p.add_argument("--noise", choices=noises.names(), default=None,
                   help="; ".join(f"{k.name}: {k.summary}" for k in noises.REGISTRY.values())
                        + " (default: the first that applies to the inputs and sigma, in this order)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = p.add_argument_group("--sequential: stop each input as soon as its answer is known (docs/sequential.md)")
    q.add_argument("--sequential", action="store_true",
                   help="anytime-valid CERTIFY; --n is then each input's budget of estimation samples")
    q.add_argument("--radii", default=None,
                   help="grid mode: decide certified or not at each of these radii R1,R2,... (default: the largest "
                        "radius, stopped by --tolerance)")
    q.add_argument("--tolerance", type=float, default=None,
                   help="max-radius mode: stop when the radius still reachable within the budget exceeds the "
                        "certified one by less than this fraction, in (0, 1) (default 0.02)")
    cli.add_distributed_arguments(p)
    d = p.add_argument_group("--mode distributional (nal Thm 1, eq. 3/7/8, §5.1)")
    d.add_argument("--gamma", default=None, help="certificate penalties gamma, comma-separated, each > 0 (required)")
    d.add_argument("--gamma-adv", default="", help="empirical worst case: penalties gamma_adv, comma-separated")
    d.add_argument("--num-draws", type=int, default=32, help="noise draws r per example (ascent, and as many fresh)")
    d.add_argument("--ascent-steps", type=int, default=20, help="gradient-ascent steps K")
    d.add_argument("--ascent-lr", type=float, default=0.0, help="ascent step eta_1 (0: 0.5 / gamma)")
    d.add_argument("--examples", type=int, default=0,
                   help="examples per jitted call (0: max(1, --batch // --num-draws))")
    return p


def _gammas(text: str | None, flag: str, required: bool) -> list[float]:
    if text is None or not text.strip():
        if required:
            raise UserError(flag, "--mode distributional needs --gamma G[,G2,...]: the certificate's penalties "
                                  "gamma > 0 (nal eq. 3)")
        return []
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise UserError(flag, f"{text!r} is not a comma-separated list of numbers") from None
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise UserError(flag, f"each {flag.replace('-', '_')} must be a finite number > 0, got {text!r}")
    if len(set(values)) != len(values):
        raise UserError(flag, f"{text!r} repeats a value")
    return values


def _check_flags(args) -> None:
    """What the flags alone can refuse, before anything is loaded."""
    if args.mode == "distributional":
        _gammas(args.gamma, "gamma", True)
        for flag, given in (("sigma-file", args.sigma_file), ("sigma-from", args.sigma_from),
                            ("sequential", args.sequential)):
            if given:
                raise UserError(flag, "--mode distributional takes an isotropic --sigma only")
    elif args.gamma is not None or args.gamma_adv:
        raise UserError("gamma", "--gamma and --gamma-adv are for --mode distributional")
    given = [f"--{name}" for name, value in (("sigma", args.sigma is not None), ("sigma-file", args.sigma_file),
                                             ("sigma-from", args.sigma_from)) if value]
    if len(given) > 1:
        raise UserError(given[1][2:], f"give one of --sigma, --sigma-file, --sigma-from, not {' and '.join(given)}")
    if args.sigma is not None and not args.sigma > 0:
        raise UserError("sigma", f"must be > 0, got {args.sigma}")
    if not args.checkpoint and not args.sigma_from:
        raise UserError("checkpoint", "is required: the workdir of the classifier to certify")
    if args.noise is not None and args.mode != "distributional" and (args.sigma_file or args.sigma_from):
        from jaxsmooth.certification import noises

        noises.choose(args.noise, np.ones((1, 1, 1), np.float32))  # whether the kind takes a per-pixel sigma


def _sigma(args, model) -> tuple[object, dict]:
    """The sigma to certify with, and the settings fields saying where it came from."""
    from jaxsmooth import certification, loader

    extra = {}
    if args.sigma is not None:
        sigma = float(args.sigma)
    elif args.sigma_file:
        try:
            sigma = np.load(args.sigma_file)
        except (OSError, ValueError) as e:
            raise UserError("sigma-file", f"cannot read {args.sigma_file}: {e}") from None
    elif args.sigma_from:
        source = model if args.sigma_from == model.workdir else loader.load_model(args.sigma_from, field="sigma-from")
        sigma, extra = source.sigma, {"sigma_from": args.sigma_from, "sigma_from_step": source.step}
    else:
        sigma = model.sigma
    flag = "sigma-file" if args.sigma_file else "sigma-from" if args.sigma_from else None
    try:
        sigma = certification.check_sigma(sigma, model.input_shape)
    except UserError as e:
        raise UserError(flag or e.field, e.message) from None
    if sigma.ndim == 0:
        if flag:
            raise UserError(flag, f"must be a per-pixel array of the input's shape {tuple(model.input_shape)}, "
                                  f"got a scalar sigma {float(sigma):g} (use --sigma)")
        return float(sigma), {"sigma": float(sigma), "anisotropic": False, "sigma_file": ""}
    return sigma, {"sigma": float(sigma.min()), "sigma_max": float(sigma.max()), "sigma_mean": float(sigma.mean()),
                   "anisotropic": True, "sigma_file": args.sigma_file, **extra}


def _load(args, overrides):
    """(config, model, dataset) of the command: the classifier of --checkpoint, else of --sigma-from."""
    return cli.load_model(args.config, overrides, args.checkpoint or args.sigma_from, args.step,
                          field="checkpoint" if args.checkpoint else "sigma-from", **cli.wrapper_of(args))


def command(argv: list[str]) -> int:
    rest, overrides = cli.split_overrides(argv)
    return _main(_parser().parse_args(rest), overrides)


def _main(args: argparse.Namespace, overrides: list[str]) -> int:
    cli.start_jax(args)
    _check_flags(args)
    if args.mode == "distributional":
        job = _distributional(args, overrides)
    else:
        job = _certification(args, overrides)
    return _write(args, job)


def _certification(args, overrides):
    from jaxsmooth import certification, loader
    from jaxsmooth.certification import dataset as dataset_job, noises

    settings = certification.make_settings(args.mode, n0=args.n0, n=args.n, alpha=args.alpha,
                                           candidate=args.candidate, topk=args.topk, sequential=args.sequential,
                                           radii=args.radii, tolerance=args.tolerance)
    dataset_job.check_batch(args.batch, args.inputs)  # before loading anything
    config, model, dataset = _load(args, overrides)
    sigma, sigma_fields = _sigma(args, model)
    loader.refuse_other_sigma(model, sigma, cli.wrapper_field(args))
    noise = noises.choose(args.noise, sigma).name  # x None: the data sources are 8-bit
    request = dataset_job.Request(
        out=args.out, mode=args.mode, settings=settings, sigma=sigma, sigma_fields=sigma_fields, noise=noise,
        seed=config.seed if args.seed is None else args.seed, batch=args.batch, inputs=args.inputs,
        split=args.split, skip=args.skip, max=args.max, parallel=config.certify.parallel,
        names={"dataset": config.data.name})
    return dataset_job.open_certification(model, dataset, request)


def _distributional(args, overrides):
    from jaxsmooth import loader
    from jaxsmooth.certification import distributional, noises

    if args.noise is not None and noises.get(args.noise) is not noises.GAUSSIAN:
        raise UserError("noise", "--mode distributional draws gaussian noise only; leave --noise out")
    config, model, dataset = _load(args, overrides)
    sigma = float(model.sigma if args.sigma is None else args.sigma)
    loader.refuse_other_sigma(model, sigma, cli.wrapper_field(args))
    request = distributional.DistributionalRequest(
        out=args.out, gammas=tuple(_gammas(args.gamma, "gamma", True)),
        gamma_adv=tuple(_gammas(args.gamma_adv, "gamma-adv", False)), sigma=sigma,
        seed=config.seed if args.seed is None else args.seed, num_draws=args.num_draws,
        ascent_steps=args.ascent_steps, ascent_lr=args.ascent_lr,
        examples=args.examples or max(1, args.batch // max(args.num_draws, 1)), split=args.split, skip=args.skip,
        max=args.max, names={"dataset": config.data.name})
    return distributional.open_distributional(model, dataset, request)


def _write(args, job) -> int:
    """Writes the job's rows under a progress bar, then says what was written."""
    from jaxsmooth import jobs, parallel
    from jaxsmooth.certification import dataset as dataset_job

    if job.note and parallel.is_main_process():
        print(f"note: {job.note}", file=sys.stderr)
    per_example = job.rows_per_example
    rows = jobs.until_stopped(job.rows, job.shard.out)
    seconds, samples = _progress(rows, job.writer, total=job.total, done=job.done, per_example=per_example,
                                 quiet=args.no_progress or not parallel.is_main_process())
    todo = job.total - job.done
    if job.shard.writes and args.mode == "distributional":
        print(f"distributional: {job.total} examples x {per_example} gammas in {args.out} ({todo} this run)")
    elif job.shard.writes:
        print(f"{args.mode}: {job.total} examples in {job.shard.out} ({todo} this run"
              + (f", {samples / seconds:,.0f} samples/s" if seconds else "") + ")"
              + (f"\n{job.usage.summary(todo, samples)}" if job.usage is not None and todo else ""))
    if job.shard.processes > 1 and parallel.is_main_process():
        shards = " ".join(dataset_job.shard_paths(args.out, job.shard.processes))
        print(f"one shard per process; merge them with: python -m jaxsmooth.analyze {shards} --merge {args.out}")
    return 0


def _progress(rows, writer, *, total: int, done: int, per_example: int, quiet: bool) -> tuple[float, float]:
    """Writes the rows as they come, under a progress bar; (seconds, samples) they took."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="img", dynamic_ncols=True, file=sys.stderr, disable=quiet)
    count = correct = 0
    seconds = samples = 0.0
    try:
        for row in rows:
            writer.write(row)
            count += 1
            correct += row.get("correct", 0)
            seconds += row["seconds"]
            samples += row.get("samples", 0)
            if count % per_example:
                continue
            bar.update(1)
            if "samples" in row and seconds:
                examples = count // per_example
                bar.set_postfix(img_per_s=f"{examples / seconds:.2f}", samples_per_s=f"{samples / seconds:,.0f}",
                                acc=f"{correct / examples:.3f}", refresh=False)
    finally:
        bar.close()
        writer.close()
    return seconds, samples


main = cli.main_wrapper(command, job=True, parser=_parser)
write = cli.keyword_entry("certify", _parser, _main)

if __name__ == "__main__":
    sys.exit(main())
