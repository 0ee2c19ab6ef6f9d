"""``python -m jaxsmooth.bench startup --workdir W``: what the cache folder saves a certify process.

Each round empties a cache folder (``JAXSMOOTH_CACHE_DIR``), then runs the
same ``python -m jaxsmooth.certify`` of the quick-start model twice, each a
fresh process timed whole (start to exit): the first compiles every program
and times the XLA option sets, the second finds both in the folder. Both
must write the same rows (every column but ``time``) and record the same
``xla_options``. One untimed run comes first, so that no timed run pays for
reading the packages from disk. Prints each round and the medians.

The model is ``--checkpoint``, or the quick start trained into
``W/quickstart`` (``configs/quickstart.py``) when that holds no model yet.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from jaxsmooth import benchmarks
from jaxsmooth.errors import UserError


def add_parser(subparsers) -> Any:
    """Adds ``startup`` to `python -m jaxsmooth.bench`'s subcommands; returns its parser."""
    p = subparsers.add_parser("startup", help="wall time of a certify process with an empty cache folder and with "
                                              "the folder the first one filled")
    p.add_argument("--workdir", required=True, help="the benchmark's folder (the model, the cache, the TSVs)")
    p.add_argument("--checkpoint", default="", help="the quick-start workdir to certify (default: train one into "
                                                    "WORKDIR/quickstart)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (empty cache, first run, second run)")
    p.add_argument("--skip", type=int, default=18, help="certify every skip-th test digit (18: 20 of 360)")
    p.add_argument("--n", type=int, default=1000, help="estimation samples per digit")
    p.add_argument("--json", default="", help="write every round's times here")
    return p


def main(args) -> int:
    """Checks the flags, trains the model if needed, runs the rounds and prints their table."""
    for flag in ("rounds", "skip", "n"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag}", f"must be > 0, got {getattr(args, flag)}")
    os.makedirs(args.workdir, exist_ok=True)
    model = args.checkpoint or _trained(os.path.join(args.workdir, "quickstart"))
    argv = ["--checkpoint", model, "--skip", str(args.skip), "--n", str(args.n), "--no-progress"]
    folder = os.path.join(args.workdir, "cache")
    _certify(argv, os.path.join(args.workdir, "warmup.tsv"), "off")
    rounds = []
    for r in range(args.rounds):
        shutil.rmtree(folder, ignore_errors=True)
        first, second = [_certify(argv, os.path.join(args.workdir, f"round{r}_{which}.tsv"), folder)
                         for which in ("first", "second")]
        rounds.append({"first_s": first["s"], "second_s": second["s"], "ratio": second["s"] / first["s"],
                       "first_cpu_s": first["cpu_s"], "second_cpu_s": second["cpu_s"],
                       "cpu_ratio": second["cpu_s"] / first["cpu_s"],
                       "same_rows": first["rows"] == second["rows"] and first["xla_options"] == second["xla_options"],
                       "rows": len(first["rows"]) - 1, "xla_options": first["xla_options"]})
    print(_table(rounds, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "machine": benchmarks.machine(), "rounds": rounds}, f, indent=2)
    return 0 if all(r["same_rows"] for r in rounds) else 1


def _trained(workdir: str) -> str:
    """`workdir`, after training the quick start into it unless it holds a model already."""
    from jaxsmooth.benchmarks import fault_kinds

    if not os.path.exists(os.path.join(workdir, "model.json")):
        config = os.path.join(fault_kinds.repo_root(), "configs", "quickstart.py")
        _run(["-m", "jaxsmooth.train", "--config", config, "--workdir", workdir, "--no-progress"], "off")
    return workdir


def _certify(argv: list[str], out: str, folder: str) -> dict:
    """The wall and CPU seconds of one certify process writing a new `out` with the cache folder `folder`, its rows
    without their time column, and the xla_options it recorded."""
    for path in (out, f"{out}.json"):
        if os.path.exists(path):
            os.remove(path)
    seconds, cpu = _run(["-m", "jaxsmooth.certify", "--out", out] + argv, folder)
    with open(out) as f:
        lines = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    keep = [j for j, name in enumerate(lines[0]) if name != "time"]
    with open(f"{out}.json") as f:
        options = json.load(f)["settings"].get("xla_options")
    return {"s": seconds, "cpu_s": cpu, "rows": [[row[j] for j in keep] for row in lines], "xla_options": options}


def _run(argv: list[str], folder: str) -> tuple[float, float]:
    """Runs ``python ARGV`` with ``JAXSMOOTH_CACHE_DIR=folder`` and JAX's own cache folder unset; its wall seconds and
    its CPU seconds (user + system, all threads)."""
    from jaxsmooth import cache

    env = dict(os.environ, **{cache.ENV: folder})
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable] + argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        said = (done.stderr.strip().splitlines() or ["nothing on stderr"])[-1]
        raise UserError("startup", f"python {' '.join(argv)} exited {done.returncode}: {said}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _table(rounds: list[dict], args) -> str:
    """A markdown table of the rounds and a line of medians."""
    lines = [f"certify of every {args.skip}th quick-start test digit ({rounds[0]['rows']} rows) at n = {args.n:,}, "
             f"each run a fresh process timed whole; {benchmarks.machine()}", "",
             "| round | first s (empty cache) | second s | second / first | CPU s: first, second | CPU ratio "
             "| same rows |", "|---:|---:|---:|---:|---:|---:|---|"]
    for i, r in enumerate(rounds, 1):
        lines.append(f"| {i} | {r['first_s']:.1f} | {r['second_s']:.1f} | {r['ratio']:.2f} | "
                     f"{r['first_cpu_s']:.1f}, {r['second_cpu_s']:.1f} | {r['cpu_ratio']:.2f} | "
                     f"{'yes' if r['same_rows'] else 'NO'} |")
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k.endswith(("_s", "ratio"))}
    lines += ["", f"medians over {len(rounds)} rounds: first {median['first_s']:.1f} s, second "
                  f"{median['second_s']:.1f} s, second / first {median['ratio']:.2f} (CPU: {median['first_cpu_s']:.1f} "
                  f"s, {median['second_cpu_s']:.1f} s, {median['cpu_ratio']:.2f}); same rows in "
                  f"{sum(r['same_rows'] for r in rounds)} of {len(rounds)} rounds"]
    return "\n".join(lines)
