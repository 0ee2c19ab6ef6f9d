"""``python -m jaxsmooth.bench train --model M --batch B``

Throughput of jaxsmooth against PyTorch references, measured alternately in
one process (medians over rounds, ratios). Prints a markdown table; add
``--json FILE`` to keep the raw per-round timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

from jaxsmooth import cli
from jaxsmooth.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxsmooth.bench", description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="train-step examples/s")
    t.add_argument("--model", required=True)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--input", default="", help="H,W,C (default: the model's usual input)")
    t.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16")
    t.add_argument("--steps", type=int, default=5, help="train steps per timed round")
    t.add_argument("--rounds", type=int, default=7, help="rounds; medians are over rounds")
    t.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    t.add_argument("--xla-defaults", action="store_true",
                   help="also time the JAX step compiled without jaxsmooth's XLA:CPU options")
    t.add_argument("--json", default="", help="write per-round timings here")
    return p


def _table(results, unit: str) -> str:
    torch_rates = [r.rate for n, r in results.items() if n.startswith("torch")]
    best_torch = max(torch_rates) if torch_rates else None
    lines = [f"| contender | {unit} (median) | spread | setup s | vs best torch |", "|---|---|---|---|---|"]
    for name, r in results.items():
        ratio = f"{r.rate / best_torch:.2f}x" if best_torch else "-"
        lines.append(f"| {name} | {r.rate:,.0f} | {r.spread:.0%} | {r.setup_s:.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from jaxsmooth import models
    from jaxsmooth.benchmarks import train as train_bench

    if args.model not in models.NAMES:
        raise UserError("--model", f"unknown model {args.model!r}; allowed: {', '.join(models.NAMES)}")
    if args.batch <= 0:
        raise UserError("--batch", f"must be > 0, got {args.batch}")
    dtypes = tuple(args.dtype.split(","))
    for d in dtypes:
        if d not in ("float32", "bfloat16"):
            raise UserError("--dtype", f"unknown dtype {d!r}; allowed: float32, bfloat16")
    shape = None
    if args.input:
        try:
            shape = tuple(int(v) for v in args.input.split(","))
            assert len(shape) == 3
        except (ValueError, AssertionError):
            raise UserError("--input", f"expected H,W,C such as 32,32,3, got {args.input!r}") from None

    import jax
    from tqdm import tqdm

    with tqdm(total=args.rounds, desc=f"bench train {args.model}", file=sys.stderr, leave=False) as bar:
        results = train_bench.benchmark(args.model, args.batch, input_shape=shape, dtypes=dtypes, steps=args.steps,
                                        rounds=args.rounds, with_torch=not args.no_torch, xla_defaults=args.xla_defaults,
                                        on_round=lambda r: bar.update(1))
    shape = shape or train_bench.input_shape_of(args.model)
    print(f"train step, {args.model}, batch {args.batch}, input {'x'.join(map(str, shape))}, "
          f"{args.rounds} rounds x {args.steps} steps, {jax.devices()[0].device_kind} "
          f"({platform.processor() or platform.machine()}), jax {jax.__version__}")
    print(_table(results, "examples/s"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({n: {"seconds": r.seconds, "items_per_round": r.items_per_round, "setup_s": r.setup_s}
                       for n, r in results.items()}, f, indent=2)
    return 0


run = cli.main_wrapper(main)

if __name__ == "__main__":
    sys.exit(run())
