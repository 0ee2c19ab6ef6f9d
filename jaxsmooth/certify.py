"""``python -m jaxsmooth.certify --config C --checkpoint DIR --out FILE.tsv [--mode certify|predict|distributional] ...``

Certifies (Cohen et al.'s CERTIFY) or predicts (PREDICT) the smoothed
classifier of a trained run on every `--skip`-th example of a split, one
TSV row per example; or (``--mode distributional --gamma G[,G2,...]
[--gamma-adv A1,A2,...]``) estimates the distributional-robustness
certificate gamma rho + E[phi_gamma] of nal Thm 1 and its empirical worst
case (nal §5.1), one row per example per gamma (see
`jaxsmooth.certification.distributional`). Rerunning the same command
resumes after the last written row.

With ``--sigma-from SIGMA_WORKDIR`` (a run of the ``sigma`` objective) the
smoothed classifier uses the per-pixel sigma that run learned (the anisotropic
certificate of non_uniform Thm 3.1, with its certified-area column); the base
classifier is --checkpoint when given, else that run's ``train.init_from``
(the frozen model the sigma was learned for). --config describes that base
model.

Over the processes of a multi-host run, ``certify.parallel`` in the config
(``--config.certify.parallel=...``) chooses how the work is split:
``samples`` (default) spreads the n samples of each input over every device
of every process and ``psum``s the counts (best for few inputs and large n;
process 0 writes --out); ``examples`` gives process p the examples
indices[p::P], sampled on its own devices, written to its own shard
``OUT.shard<p>of<P>.tsv`` (best for many inputs; ``analyze`` merges the
shards). Both give the counts one process gives: the noise of an example
depends on the key and its index only. Both resume after a kill.

Called as a function, ``jaxsmooth.certify(apply_fn, variables, x, ...)`` is
`jaxsmooth.api.certify`: CERTIFY of any JAX classifier on in-memory inputs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple

import numpy as np

from jaxsmooth import cli
from jaxsmooth.errors import UserError

PARALLEL_MODES = ("samples", "examples")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxsmooth.certify", description=__doc__.split("\n\n")[1])
    cli.add_config_arguments(p, required=False)
    p.add_argument("--checkpoint", default="",
                   help="the training run's --workdir (with --sigma-from: default that run's train.init_from)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", required=True, help="output TSV (resumed when it exists)")
    p.add_argument("--mode", choices=("certify", "predict", "distributional"), default="certify")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--skip", type=int, default=1, help="certify every skip-th example")
    p.add_argument("--max", type=int, default=-1, help="stop before this example index (-1: the whole split)")
    p.add_argument("--sigma", type=float, default=None, help="noise level (default: the config's objective.sigma)")
    p.add_argument("--sigma-file", default="", help="a per-pixel sigma: .npy array of the input's shape (H, W, C)")
    p.add_argument("--sigma-from", default="",
                   help="the --workdir of a `sigma` run: certify with its learned per-pixel sigma (latest checkpoint)")
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
    p.add_argument("--noise", choices=("lattice", "gaussian"), default=None,
                   help="lattice: the discretised normal on the 1/255 grid of 8-bit images, drawn exactly, whose "
                        "certificates hold in floating point (Voracek & Hein 2023; see "
                        "jaxsmooth.certification.lattice); gaussian: x + sigma z in floating point, as Cohen et al. "
                        "(default: lattice for an isotropic --sigma in certify and predict, every data source being "
                        "8-bit; gaussian for a per-pixel sigma and --mode distributional)")
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


def _distributional(args, config) -> int:
    """``--mode distributional``: rows of `jaxsmooth.certification.distributional.run` into a resumable TSV."""
    import jax

    from jaxsmooth import jobs, models, noise, parallel, results, trainer
    from jaxsmooth.certification import distributional, records

    gammas = _gammas(args.gamma, "gamma", True)
    gamma_adv = _gammas(args.gamma_adv, "gamma-adv", False)
    if args.sigma_file:
        raise UserError("sigma-file", "--mode distributional takes an isotropic --sigma only")
    sigma = float(config.objective.sigma if args.sigma is None else args.sigma)
    distributional.check(gammas, num_draws=args.num_draws, steps=args.ascent_steps, lr=args.ascent_lr, sigma=sigma)
    examples = args.examples or max(1, args.batch // args.num_draws)
    if examples < 1:
        raise UserError("examples", f"must be >= 1 (0: from --batch), got {args.examples}")
    run, params, model_state, step = trainer.load_trained(config, args.checkpoint, step=args.step)
    dataset = run.dataset
    split = dataset.test if args.split == "test" else dataset.train
    indices = records.example_indices(len(split), args.skip, args.max)
    seed = config.seed if args.seed is None else args.seed
    header = {"mode": "distributional", "gammas": gammas, "gamma_adv": gamma_adv, "sigma": sigma,
              "num_draws": args.num_draws, "ascent_steps": args.ascent_steps, "ascent_lr": args.ascent_lr,
              "cost": "||x + z - x0||_2^2", "loss": "cross-entropy", "seed": seed,
              "key": f"fold_in(key({seed}), certify stream); ascent and fresh draws from two sub-streams",
              "dtype": config.model.dtype, "model": config.model.name, "dataset": config.data.name,
              "split": args.split, "skip": args.skip, "max": args.max, "examples": examples,
              "checkpoint": args.checkpoint, "checkpoint_step": step, "devices": jax.device_count()}
    jobs.lock_output(args.out, take=parallel.is_main_process())
    writer = results.Writer(args.out, results.DISTRIBUTIONAL, header, enabled=parallel.is_main_process())
    done = set(writer.done)
    todo = np.asarray([i for i in indices if int(i) not in done], np.int64)
    model = models.fold_batch_norm(models.Model(run.model.apply, params, model_state))
    estimator = distributional.make_estimator(model.apply, sigma=sigma, num_draws=args.num_draws,
                                              steps=args.ascent_steps)
    key = noise.certify_key(noise.root_key(seed))

    from tqdm import tqdm

    per_example = len(gammas) + len(gamma_adv)
    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), unit="img", dynamic_ncols=True, file=sys.stderr,
               disable=args.no_progress or not parallel.is_main_process())
    count = 0
    try:
        for row in jobs.until_stopped(distributional.run(estimator, model.params, model.model_state, split, todo,
                                                         gammas, gamma_adv, key, batch=examples, lr=args.ascent_lr),
                                      args.out):
            writer.write(row)
            count += 1
            if count % per_example == 0:
                bar.update(1)
    finally:
        bar.close()
        writer.close()
    if parallel.is_main_process():
        print(f"distributional: {len(indices)} examples x {per_example} gammas in {args.out} "
              f"({len(todo)} this run)")
    return 0


def _sequential_header(settings, sigma) -> dict:
    """The settings fields of a sequential run; says once which listed radii are out of reach."""
    from jaxsmooth import parallel

    fields, note = settings.sequential_header(float(np.min(sigma)))
    if note and parallel.is_main_process():
        print(f"note: {note}", file=sys.stderr)
    return fields


def _sigma_sources(args) -> None:
    """Refuses more than one of --sigma, --sigma-file, --sigma-from, and a missing --checkpoint."""
    given = [f"--{name}" for name, value in (("sigma", args.sigma is not None), ("sigma-file", args.sigma_file),
                                             ("sigma-from", args.sigma_from)) if value]
    if len(given) > 1:
        raise UserError(given[1][2:], f"give one of --sigma, --sigma-file, --sigma-from, not {' and '.join(given)}")
    if args.sigma_from and args.mode == "distributional":
        raise UserError("sigma-from", "--mode distributional takes an isotropic --sigma only")
    if not args.checkpoint and not args.sigma_from:
        raise UserError("checkpoint", "is required: the --workdir of the training run to certify")


def _model_workdir(args) -> str:
    """The workdir whose config.json stands for a missing --config: --checkpoint, else --sigma-from's base model."""
    if args.checkpoint or not args.sigma_from:
        return args.checkpoint
    from jaxsmooth import checkpoint

    return checkpoint.read_learned_sigma(args.sigma_from)[1]


def _load_sigma(args, default: float, input_shape, learned=None) -> tuple[object, dict]:
    """The sigma to certify with and its header entries; `learned`: (sigma, step) read from --sigma-from."""
    from jaxsmooth import certification

    if args.sigma_file or learned is not None:
        field = "sigma-file" if args.sigma_file else "sigma-from"
        if args.sigma_file:
            try:
                sigma = np.load(args.sigma_file)
            except (OSError, ValueError) as e:
                raise UserError("sigma-file", f"cannot read {args.sigma_file}: {e}") from None
        else:
            sigma = learned[0]
        try:
            sigma = certification.check_sigma(sigma, input_shape)
        except UserError as e:
            raise UserError(field, e.message) from None
        if sigma.ndim == 0:
            raise UserError(field, f"must be a per-pixel array of the input's shape {tuple(input_shape)}, "
                                   "got a scalar (use --sigma)")
        info = {"sigma": float(sigma.min()), "sigma_max": float(sigma.max()), "sigma_mean": float(sigma.mean()),
                "anisotropic": True}
        if learned is not None:
            info.update(sigma_from=args.sigma_from, sigma_from_step=learned[1])
        return sigma, info
    sigma = default if args.sigma is None else args.sigma
    if not sigma > 0:
        raise UserError("sigma", f"must be > 0, got {sigma}")
    return float(sigma), {"sigma": float(sigma), "anisotropic": False}


def _noise(args) -> str:
    """The noise kind: --noise, or lattice where it applies (isotropic sigma, certify/predict), else gaussian."""
    isotropic = not (args.sigma_file or args.sigma_from)
    if args.noise == "lattice" and args.mode == "distributional":
        raise UserError("noise", "--mode distributional draws gaussian noise only; leave --noise out")
    if args.noise == "lattice" and not isotropic:
        raise UserError("noise", "lattice noise takes an isotropic --sigma, not --sigma-file or --sigma-from; "
                                 "use --noise gaussian")
    return args.noise or ("lattice" if isotropic and args.mode != "distributional" else "gaussian")


def main(argv: list[str]) -> int:
    rest, overrides = cli.split_overrides(argv)
    return _main(_parser().parse_args(rest), overrides)


def _main(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxsmooth import parallel

    cli.initialize_distributed(args)
    if args.mode == "distributional":
        _gammas(args.gamma, "gamma", True)  # before loading anything
    elif args.gamma is not None or args.gamma_adv:
        raise UserError("gamma", "--gamma and --gamma-adv are for --mode distributional")
    _sigma_sources(args)
    from jaxsmooth.certification import sequential  # the flags checked before loading anything

    sequential_fields = sequential.flag_fields(args.sequential, args.radii, args.tolerance, args.mode, args.topk)
    noise_kind = _noise(args)
    config = cli.load_config(args.config, overrides, _model_workdir(args))
    if args.mode == "distributional":
        return _distributional(args, config)

    from jaxsmooth import certification, checkpoint, jobs, models, noise, results, trainer
    from jaxsmooth.certification import batching, records

    settings = _settings(args, sequential_fields)
    learned = None
    if args.sigma_from:  # the base classifier: --checkpoint, else the one the sigma was learned for
        sigma_arr, init_from, sigma_step = checkpoint.read_learned_sigma(args.sigma_from)
        learned = (sigma_arr, sigma_step)
        args.checkpoint = args.checkpoint or init_from
    run, params, model_state, step = trainer.load_trained(config, args.checkpoint, step=args.step)
    dataset = run.dataset
    if args.mode == "certify":
        settings.check(dataset.num_classes)
    split = dataset.test if args.split == "test" else dataset.train
    indices = records.example_indices(len(split), args.skip, args.max)
    sigma, sigma_info = _load_sigma(args, config.objective.sigma, dataset.input_shape, learned)
    seed = config.seed if args.seed is None else args.seed
    shard = _shard(config.certify.parallel, args.out, run.mesh)
    indices = indices[shard.process::shard.processes]

    # BatchNorm folded into the convolutions: the eval-mode classifier up to float rounding, one pass less per layer
    model = models.fold_batch_norm(models.Model(run.model.apply, params, model_state))
    params, model_state = model.params, model.model_state
    sampler = certification.Sampler(model.apply, params, model_state, input_shape=dataset.input_shape,
                                    num_classes=dataset.num_classes, inputs=args.inputs,
                                    chunk=args.batch // args.inputs, mesh=shard.mesh, with_softmax=args.mode == "certify",
                                    compiler_options=_xla_options(shard), noise=noise_kind)
    clean = certification.make_clean_probabilities(model.apply, params, model_state)
    key = noise.certify_key(noise.root_key(seed))

    header = {"mode": args.mode, "noise": noise_kind, **sigma_info, "sigma_file": args.sigma_file, "n0": settings.n0,
              "n": settings.n, "alpha": settings.alpha, "candidate": settings.candidate, "topk": settings.topk, "seed": seed,
              "key": f"fold_in(key({seed}), certify stream)", "dtype": config.model.dtype,
              "model": config.model.name, "dataset": config.data.name, "split": args.split, "skip": args.skip,
              "max": args.max, "batch": args.batch, "inputs": args.inputs, "checkpoint": args.checkpoint,
              "checkpoint_step": step, "devices": shard.mesh.size, "parallel": config.certify.parallel,
              "xla_options": sampler.prepare(sigma, settings.n, key, batching.CUTS if settings.sequential else 0),
              **({"shard": shard.process, "shards": shard.processes} if shard.processes > 1 else {}),
              **(_sequential_header(settings, sigma) if settings.sequential else {})}
    cols = records.columns(args.mode, settings, anisotropic=sigma_info["anisotropic"], model_lbound=True)
    jobs.lock_output(shard.out, take=shard.writes)
    writer = results.Writer(shard.out, results.SCHEMAS[args.mode], header, cols, enabled=shard.writes)
    todo = _todo(writer.done, indices, shard)

    usage = batching.Usage()
    rows = jobs.until_stopped(records.run(sampler, records.split_examples(split), todo, sigma, settings, key,
                                          mode=args.mode, clean_probabilities=clean, usage=usage), shard.out)
    seconds, samples = _write_rows(rows, writer, total=len(indices), done=len(indices) - len(todo),
                                   quiet=args.no_progress or not parallel.is_main_process())
    if shard.writes:
        print(f"{args.mode}: {len(indices)} examples in {shard.out} ({len(todo)} this run"
              + (f", {samples / seconds:,.0f} samples/s" if seconds else "") + ")"
              + (f"\n{usage.summary(len(todo), samples)}" if settings.sequential and len(todo) else ""))
    if shard.processes > 1 and parallel.is_main_process():
        shards = " ".join(_shard_paths(args.out, shard.processes))
        print(f"one shard per process; merge them with: python -m jaxsmooth.analyze {shards} --merge {args.out}")
    return 0


def _todo(done, indices: np.ndarray, shard: "_Shard") -> np.ndarray:
    """The examples of `indices` not in the TSV yet (`done`: those that are)."""
    import jax

    done = set(done)
    pending = np.asarray([int(i) not in done for i in indices])
    if shard.processes == 1 and jax.process_count() > 1:
        # samples mode: every process must sample the same examples, and only process 0 read its own --out
        # (the others may not see that file: a disk of their own); its view is everyone's.
        from jax.experimental import multihost_utils

        pending = np.asarray(multihost_utils.broadcast_one_to_all(pending), bool)
    return np.asarray(indices[pending], np.int64)


def _xla_options(shard: "_Shard") -> str | dict:
    """The XLA options an existing --out was sampled with (its settings' ``xla_options``), so that its remaining
    examples are sampled by the same executable (`Sampler.prepare`); "auto" for a new file.

    In samples mode every process takes process 0's view, as they run the same collective programs.
    """
    import jax

    from jaxsmooth import compilation
    from jaxsmooth.results import sidecar

    found = sidecar.program_of(shard.out) if os.path.exists(shard.out) else None
    recorded = found[1].get("xla_options") if found else None
    if shard.processes == 1 and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        known = [None, *compilation.AUTO_CANDIDATES, {}]
        index = known.index(recorded) if recorded in known else 0
        recorded = known[int(multihost_utils.broadcast_one_to_all(np.int32(index)))]
    return "auto" if recorded is None else recorded


def _settings(args, sequential_fields: dict):
    """The `certification.Settings` of --mode certify or predict, refusing bad --n0/--n/--alpha/--batch/--inputs."""
    from jaxsmooth import certification

    settings = certification.Settings(n0=args.n0, n=args.n, alpha=args.alpha, candidate=args.candidate, topk=args.topk,
                                      **sequential_fields)
    if args.mode == "predict":
        settings = certification.Settings(n0=0, n=args.n, alpha=args.alpha, candidate="selection", topk=0)
        if not 0 < args.alpha < 1:
            raise UserError("alpha", f"must be in (0, 1), got {args.alpha}")
        if args.n <= 0:
            raise UserError("n", f"must be > 0, got {args.n}")
    if args.mode == "certify":
        certification.check_settings(settings.n0, settings.n, settings.alpha,
                                     needs_selection=settings.candidate == "selection")
    if args.batch <= 0:
        raise UserError("batch", f"must be > 0, got {args.batch}")
    if args.inputs <= 0 or args.batch % args.inputs:
        raise UserError("inputs", f"must be > 0 and divide --batch {args.batch}, got {args.inputs}")
    return settings


def _write_rows(rows, writer, *, total: int, done: int, quiet: bool) -> tuple[float, float]:
    """Writes the certified rows as they come, under a progress bar; (seconds, samples) they took."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="img", dynamic_ncols=True, file=sys.stderr, disable=quiet)
    certified = correct = 0
    seconds = samples = 0.0
    try:
        for row in rows:
            writer.write(row)
            correct += row["correct"]
            certified += 1
            seconds += row["seconds"]
            samples += row["samples"]
            bar.update(1)
            bar.set_postfix(img_per_s=f"{certified / seconds:.2f}", samples_per_s=f"{samples / seconds:,.0f}",
                            acc=f"{correct / certified:.3f}", refresh=False)
    finally:
        bar.close()
        writer.close()
    return seconds, samples


class _Shard(NamedTuple):
    out: str  # the TSV this process writes
    process: int  # this process's share of the examples: indices[process::processes]
    processes: int
    mesh: object  # the devices that sample this process's examples
    writes: bool  # whether this process writes its TSV


def _shard(mode: str, out: str, mesh) -> _Shard:
    """How this process takes part (``certify.parallel``; see `jaxsmooth.config.default`)."""
    import jax

    from jaxsmooth import parallel

    if mode not in PARALLEL_MODES:
        raise UserError("certify.parallel", f"must be one of {', '.join(PARALLEL_MODES)}, got {mode!r}")
    if mode == "samples" or jax.process_count() == 1:
        return _Shard(out, 0, 1, mesh, parallel.is_main_process())
    p, count = jax.process_index(), jax.process_count()
    return _Shard(_shard_paths(out, count)[p], p, count, parallel.make_mesh(jax.local_devices()), True)


def _shard_paths(out: str, processes: int) -> list[str]:
    from jaxsmooth.analysis.tsv import shard_path

    return [shard_path(out, p, processes) for p in range(processes)]


run = cli.main_wrapper(main, job=True)
write = cli.keyword_entry("certify", _parser, _main)


class _CallableModule(type(sys)):
    """This module, callable: ``jaxsmooth.certify(apply_fn, variables, x, ...)`` is `jaxsmooth.api.certify`."""

    def __call__(self, *args, **kwargs):
        from jaxsmooth import api

        return api.certify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(run())
