"""``python -m jaxsmooth.certify --config C --checkpoint DIR --out FILE.tsv [--mode certify|predict] ...``

Certifies (Cohen et al.'s CERTIFY) or predicts (PREDICT) the smoothed
classifier of a trained run on every `--skip`-th example of a split, one
TSV row per example. Rerunning the same command resumes after the last
written row.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from jaxsmooth import cli
from jaxsmooth.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxsmooth.certify", description=__doc__.split("\n\n")[1])
    cli.add_config_arguments(p)
    p.add_argument("--checkpoint", required=True, help="the training run's --workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", required=True, help="output TSV (resumed when it exists)")
    p.add_argument("--mode", choices=("certify", "predict"), default="certify")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--skip", type=int, default=1, help="certify every skip-th example")
    p.add_argument("--max", type=int, default=-1, help="stop before this example index (-1: the whole split)")
    p.add_argument("--sigma", type=float, default=None, help="noise level (default: the config's objective.sigma)")
    p.add_argument("--sigma-file", default="", help="a per-pixel sigma: .npy array of the input's shape (H, W, C)")
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
    p.add_argument("--coordinator", default=None, help="multi-host: coordinator address host:port")
    p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's id")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _load_sigma(args, default: float, input_shape) -> tuple[object, dict]:
    if args.sigma_file:
        if args.sigma is not None:
            raise UserError("sigma", "give --sigma or --sigma-file, not both")
        try:
            sigma = np.load(args.sigma_file)
        except (OSError, ValueError) as e:
            raise UserError("sigma-file", f"cannot read {args.sigma_file}: {e}") from None
        from jaxsmooth import certification

        sigma = certification.check_sigma(sigma, input_shape)
        return sigma, {"sigma": float(sigma.min()), "sigma_max": float(sigma.max()), "anisotropic": True}
    sigma = default if args.sigma is None else args.sigma
    if not sigma > 0:
        raise UserError("sigma", f"must be > 0, got {sigma}")
    return float(sigma), {"sigma": float(sigma), "anisotropic": False}


def main(argv: list[str]) -> int:
    rest, overrides = cli.split_overrides(argv)
    args = _parser().parse_args(rest)
    from jaxsmooth import parallel

    parallel.maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    config = cli.load_config(args.config, overrides)

    import jax

    from jaxsmooth import certification, models, noise, trainer
    from jaxsmooth.certification import records

    settings = certification.Settings(n0=args.n0, n=args.n, alpha=args.alpha, candidate=args.candidate, topk=args.topk)
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

    run, params, model_state, step = trainer.load_trained(config, args.checkpoint, step=args.step)
    dataset = run.dataset
    if args.mode == "certify":
        settings.check(dataset.num_classes)
    split = dataset.test if args.split == "test" else dataset.train
    indices = records.example_indices(len(split), args.skip, args.max)
    sigma, sigma_info = _load_sigma(args, config.objective.sigma, dataset.input_shape)
    seed = config.seed if args.seed is None else args.seed

    header = {"mode": args.mode, **sigma_info, "sigma_file": args.sigma_file, "n0": settings.n0, "n": settings.n,
              "alpha": settings.alpha, "candidate": settings.candidate, "topk": settings.topk, "seed": seed,
              "key": f"fold_in(key({seed}), certify stream)", "dtype": config.model.dtype,
              "model": config.model.name, "dataset": config.data.name, "split": args.split, "skip": args.skip,
              "max": args.max, "batch": args.batch, "inputs": args.inputs, "checkpoint": args.checkpoint,
              "checkpoint_step": step, "devices": jax.device_count()}
    cols = records.columns(args.mode, settings, anisotropic=sigma_info["anisotropic"], model_lbound=True)
    writer = records.TsvWriter(args.out, header, cols, enabled=parallel.is_main_process())
    done = set(writer.done)
    todo = np.asarray([i for i in indices if int(i) not in done], np.int64)

    # BatchNorm folded into the convolutions: the eval-mode classifier up to float rounding, one pass less per layer
    model = models.fold_batch_norm(models.Model(run.model.apply, params, model_state))
    params, model_state = model.params, model.model_state
    sampler = certification.Sampler(model.apply, params, model_state, input_shape=dataset.input_shape,
                                    num_classes=dataset.num_classes, inputs=args.inputs,
                                    chunk=args.batch // args.inputs, mesh=run.mesh, with_softmax=args.mode == "certify",
                                    compiler_options="auto")
    clean = certification.make_clean_probabilities(model.apply, params, model_state)
    key = noise.certify_key(noise.root_key(seed))

    from tqdm import tqdm

    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), unit="img", dynamic_ncols=True, file=sys.stderr,
               disable=args.no_progress or not parallel.is_main_process())
    certified = correct = 0
    seconds = samples = 0.0
    try:
        for row in records.run(sampler, split, todo, sigma, settings, key, mode=args.mode,
                               clean_probabilities=clean):
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
    if parallel.is_main_process():
        print(f"{args.mode}: {len(indices)} examples in {args.out} ({len(todo)} this run"
              + (f", {samples / seconds:,.0f} samples/s" if seconds else "") + ")")
    return 0


run = cli.main_wrapper(main)

if __name__ == "__main__":
    sys.exit(run())
