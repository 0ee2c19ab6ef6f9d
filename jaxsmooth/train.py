"""``python -m jaxsmooth.train --config configs/X.py --workdir DIR [--config.a.b=value ...]``

Trains (or resumes) the run described by the config, with a progress bar,
and prints the test accuracy, clean and under Gaussian noise of the
training sigma.
"""

from __future__ import annotations

import argparse
import sys

from jaxsmooth import cli


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("train", __doc__.split("\n\n")[1])
    cli.add_config_arguments(p)
    p.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics.jsonl, config.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    cli.add_distributed_arguments(p)
    return p


def command(argv: list[str]) -> int:
    rest, overrides = cli.split_overrides(argv)
    args = _parser().parse_args(rest)
    from jaxsmooth import parallel  # imports jax: after argument errors are reported

    cli.start_jax(args)
    config = cli.load_config(args.config, overrides)
    from jaxsmooth import jobs, trainer

    jobs.lock_workdir(args.workdir, take=parallel.is_main_process())

    progress = _Progress(enabled=not args.no_progress and parallel.is_main_process())
    try:
        _, summary = trainer.train_and_evaluate(config, args.workdir, callback=progress)
    finally:
        progress.close()
    if parallel.is_main_process():
        sigma = summary["sigma"]
        print(f"test ({summary['test_examples']} examples): clean accuracy {summary['test_accuracy']:.4f}, "
              f"accuracy under N(0, {sigma:g}^2) noise {summary['test_noisy_accuracy']:.4f}; "
              f"workdir {args.workdir}")
    return 0


class _Progress:
    """tqdm bar over optimizer steps with loss and examples/s; eval lines above it."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, event: dict) -> None:
        from jaxsmooth import parallel

        if event["event"] == "unreadable_checkpoint" and parallel.is_main_process():
            print(f"warning: checkpoint: {event['step']} does not read (cut by a crash?); moved to "
                  f"{event['moved_to']}, resuming from the checkpoint before it", file=sys.stderr)
        if not self.enabled:
            return
        from tqdm import tqdm

        kind = event["event"]
        if kind == "start":
            self.bar = tqdm(total=event["total_steps"], initial=event["start_step"], unit="step",
                            dynamic_ncols=True, file=sys.stderr)
            if event["start_step"]:
                self.bar.write(f"resumed from step {event['start_step']}")
            self.bar.write(f"compiled the train step in {event['compile_s']:.1f} s")
        elif kind == "train" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{event['loss']:.4f}", acc=f"{event['accuracy']:.3f}",
                                 ex_per_s=f"{event['examples_per_s']:.0f}", refresh=False)
        elif kind == "eval":
            line = (f"epoch {event['epoch']:.0f} step {event['step']}: test accuracy {event['test_accuracy']:.4f}, "
                    f"under noise {event['test_noisy_accuracy']:.4f}")
            (self.bar.write if self.bar is not None else print)(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


main = cli.main_wrapper(command, job=True, parser=_parser)

if __name__ == "__main__":
    sys.exit(main())
