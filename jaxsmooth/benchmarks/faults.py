"""``python -m jaxsmooth.bench faults``: the quick start and a digits certify under kills, stops, copies, full disks.

`run_suite` runs the real CLIs as child processes: ``python -m jaxsmooth.train
--config configs/quickstart.py`` (with the ``--config.*`` overrides given,
and ``train.log_every_steps=1`` so that each step leaves a metrics line to
watch) and ``python -m jaxsmooth.certify`` of that model on digits. First
one undisturbed run of each, the reference; then chains of at most
``--per-chain`` faults (`jaxsmooth.benchmarks.fault_kinds`: kill, term,
copy, disk, cut), drawn in a random order with ``--seed``, each fault at a
random moment. Every start shares one cache folder (``JAXSMOOTH_CACHE_DIR``:
JAX's compilations and the XLA option sets chosen; the reference fills it),
so a restart costs its imports and not its compilations.
After its faults a chain runs its job to the end, which must
exit 0 without being refused, and compares with the reference
(`compare_train`, `compare_certify`): every array of the final train state
bit for bit (parameters, BatchNorm statistics, optimizer state), the
metrics lines but for ``examples_per_s``, the TSV rows but for ``time``. A
fault survived when it was injected (the job had not ended first), its own
checks held, and its chain ended identical to the reference.

Disk faults need a small file system to fill: with ``--disks`` the suite
runs itself again in a user and mount namespace (``unshare -rm``) and
mounts a ``--disk-mb`` tmpfs on its scratch folder; where namespaces are not
allowed it says so and skips them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

from jaxsmooth import benchmarks, config as config_lib
from jaxsmooth.benchmarks import fault_kinds
from jaxsmooth.benchmarks.fault_kinds import Fault, Job
from jaxsmooth.errors import UserError

KINDS = ("kill", "term", "copy", "disk", "cut")
_NAMESPACE_ENV = "JAXSMOOTH_FAULTS_TMPFS"  # set inside the namespace the suite re-runs itself in


@dataclasses.dataclass
class Report:
    """What a suite found: every fault, and the differences of the chains' end states from the reference."""

    faults: list[Fault]
    chains: int = 0
    rows_lost: int = 0
    rows_twice: int = 0
    rows_different: int = 0
    metrics_lines_different: int = 0  # lost, twice or different
    array_differences: int = 0
    unfinished_chains: int = 0  # the last start did not exit 0
    settings: dict = dataclasses.field(default_factory=dict)

    def totals(self) -> tuple[int, int]:
        injected = [f for f in self.faults if f.injected]
        return len(injected), sum(f.survived for f in injected)

    def headline(self) -> str:
        injected, survived = self.totals()
        return (f"{injected} faults injected, {survived} survived, {self.rows_lost + self.rows_twice} rows lost or "
                f"duplicated, {self.array_differences} parameter differences")


def add_parser(subparsers) -> Any:
    """Adds ``faults`` to `python -m jaxsmooth.bench`'s subcommands; returns its parser."""
    p = subparsers.add_parser("faults", help="train and certify under SIGKILLs, SIGTERMs, second copies, full disks "
                                             "and cut files; each resumed run compared with an undisturbed one")
    p.add_argument("--workdir", required=True, help="the suite's folder (its old contents are removed)")
    for name, default, what in (("kills", 10, "SIGKILLs at random moments (train: a third during a checkpoint "
                                               "save; certify: mid-row)"),
                                ("terms", 2, "SIGTERMs mid-run"), ("copies", 2, "second copies beside a running job"),
                                ("disks", 2, "disks filled mid-run (needs unshare -rm)"),
                                ("cuts", 2, "cut newest checkpoints / last TSV lines")):
        p.add_argument(f"--{name}", type=int, default=default, help=f"{what} (default {default}), shared between "
                                                                    "train and certify")
    p.add_argument("--per-chain", type=int, default=4, help="faults before a chain runs its job to the end")
    p.add_argument("--n", type=int, default=1000, help="certify: samples per example")
    p.add_argument("--skip", type=int, default=2, help="certify every skip-th test example")
    p.add_argument("--max", type=int, default=-1, help="certify: stop before this example (-1: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault order and moments")
    p.add_argument("--disk-mb", type=int, default=64, help="size of the tmpfs the disk faults fill")
    p.add_argument("--json", default="", help="write every fault and the differences here")
    return p


def main(args, overrides: list[str], argv: list[str]) -> int:
    """Checks the arguments, re-runs itself in a mount namespace for disk faults, runs `run_suite`, prints the table."""
    counts = {k: getattr(args, f"{k}s" if k != "copy" else "copies") for k in KINDS}
    for name, value in list(counts.items()) + [("per-chain", args.per_chain - 1), ("n", args.n - 1),
                                               ("disk-mb", args.disk_mb - 1)]:
        if value < 0:
            raise UserError(name, f"must be >= {0 if name in KINDS else 1}, got {value + (name not in KINDS)}")
    tmpfs = os.environ.get(_NAMESPACE_ENV)
    if counts["disk"] and not tmpfs:
        why = _namespace_refusal()
        if why is None:
            env = dict(os.environ, **{_NAMESPACE_ENV: str(args.disk_mb)})
            command = ["unshare", "-rm", sys.executable, "-m", "jaxsmooth.bench"] + argv
            return subprocess.run(command, env=env).returncode
        print(f"disk faults skipped: {why}", file=sys.stderr)
        counts["disk"] = 0
    scratch = _fresh_folders(args.workdir)
    if tmpfs:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(tmpfs)}m", "jaxsmooth-faults", scratch], check=True)
    report = run_suite(args.workdir, counts, per_chain=args.per_chain, overrides=overrides,
                       certify_args=["--n", str(args.n), "--skip", str(args.skip), "--max", str(args.max)],
                       seed=args.seed, on_line=lambda line: print(line, file=sys.stderr, flush=True))
    settings = report.settings
    print(f"bench faults: quick start {settings['train_total']} steps ({' '.join(overrides) or 'as configured'}), "
          f"digits certify {settings['certify_total']} rows ({' '.join(settings['certify_args'])}); seed "
          f"{args.seed}, {args.per_chain} faults per chain; {settings['machine']}\n")
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**dataclasses.asdict(report), "headline": report.headline()}, f, indent=2)
    return 0 if report.totals()[0] == report.totals()[1] and not report.unfinished_chains else 1


def _namespace_refusal() -> str | None:
    """None when ``unshare -rm`` may mount a tmpfs here, else why not."""
    try:
        out = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt 2>&1 || "
                              "mount -t tmpfs -o size=1m none /tmp 2>&1"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare: {e}"
    return None if out.returncode == 0 else f"unshare -rm: {(out.stderr or out.stdout).strip()[:200]}"


def _fresh_folders(workdir: str) -> str:
    """Empties `workdir`, makes reference/, logs/, scratch/ (where the chains run) and failed/ (chains that did not
    survive, moved there whole); returns scratch."""
    if os.path.isdir(workdir):
        shutil.rmtree(workdir)
    for name in ("reference", "logs", "scratch", "failed"):
        os.makedirs(os.path.join(workdir, name))
    return os.path.join(workdir, "scratch")


def _jobs(workdir: str, overrides: list[str], certify_args: list[str]) -> Callable[[str, str], Job]:
    """make(kind, out) -> a Job of the quick start (train) or of certifying the reference model (certify)."""
    config = config_lib.packaged("quickstart")
    common = ["--config", config, "--no-progress"] + [f"--config.{o}" for o in overrides]
    reference = os.path.join(workdir, "reference", "train")

    def make(kind: str, out: str) -> Job:
        if kind == "train":
            argv = ["--workdir", out, "--config.train.log_every_steps=1"]
        else:
            argv = ["--checkpoint", reference, "--out", out, "--n0", "100", "--alpha", "0.001", "--batch",
                    str(min(1000, int(certify_args[1])))] + certify_args
        return Job(kind, argv + common, out, os.path.join(workdir, "logs"),
                   compilation_cache=os.path.join(workdir, "compilation_cache"))

    return make


def _reference(job: Job) -> None:
    """Runs `job` undisturbed; sets its total and time per step or row, then its start-up time: the time a rerun
    takes to find the job finished and leave (its compilations then come from the cache, as a restart's do)."""
    for rerun in (False, True):
        t0 = time.monotonic()
        proc, log = job.start()
        fault_kinds.wait(proc, lambda: job.progress() > 0)
        t1 = time.monotonic()
        proc.wait(fault_kinds.TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"the undisturbed {job.kind} run failed (exit {proc.returncode}): "
                               + " | ".join(fault_kinds.lines(log)[-5:]))
        if rerun:
            job.startup_s = time.monotonic() - t0
        else:
            job.total, job.unit_s = job.progress(), (time.monotonic() - t1) / max(job.progress(), 1)


def plan(counts: dict[str, int], per_chain: int, rng: np.random.Generator) -> list[tuple[str, list[str]]]:
    """Chains (job kind, fault kinds) of at most `per_chain` faults: each kind's faults shared between train and
    certify (train first), in a random order; a chain never starts with a cut (a fresh job has nothing to cut)."""
    faults: dict[str, list[str]] = {"train": [], "certify": []}
    for kind in KINDS:
        for i in range(counts[kind]):
            faults["train" if i % 2 == 0 else "certify"].append(kind)
    chains = []
    for job, kinds in faults.items():
        order = [str(k) for k in rng.permutation(kinds)]
        for i in range(0, len(order), per_chain):
            chain = order[i:i + per_chain]
            first = next((j for j, k in enumerate(chain) if k != "cut"), 0)
            chain[0], chain[first] = chain[first], chain[0]
            chains.append((job, chain))
    return chains


def run_suite(workdir: str, counts: dict[str, int], *, per_chain: int = 4, overrides: list[str] = (),
              certify_args: list[str] = ("--n", "1000"), seed: int = 0,
              on_line: Callable[[str], None] = lambda line: None) -> Report:
    """The references, then every chain of `plan`; see the module docstring. `workdir` must hold reference/,
    logs/ and scratch/ (the disk faults fill scratch: a tmpfs)."""
    rng = np.random.default_rng(seed)
    make = _jobs(workdir, list(overrides), list(certify_args))
    scratch = os.path.join(workdir, "scratch")
    references = {"train": make("train", os.path.join(workdir, "reference", "train")),
                  "certify": make("certify", os.path.join(workdir, "reference", "certify.tsv"))}
    for ref in references.values():  # train first: certify reads its model
        _reference(ref)
    report = Report(faults=[], settings={"counts": counts, "per_chain": per_chain, "overrides": list(overrides),
                                         "certify_args": list(certify_args), "seed": seed,
                                         "machine": benchmarks.machine(),
                                         **{f"{k}_total": j.total for k, j in references.items()},
                                         **{f"{k}_startup_s": round(j.startup_s, 2) for k, j in references.items()}})
    on_line(f"references: train {references['train'].total} steps, certify {references['certify'].total} rows")
    for number, (kind, kinds) in enumerate(plan(counts, per_chain, rng)):
        ref = references[kind]
        out = os.path.join(scratch, f"chain{number}" + ("" if kind == "train" else ".tsv"))
        job = make(kind, out)
        job.total, job.startup_s, job.unit_s = ref.total, ref.startup_s, ref.unit_s
        faults = _run_chain(job, kinds, rng, scratch, ref.out, report)
        on_line(f"chain {number} ({kind}): " + "; ".join(f"{f.kind} {f.moment}" + ("" if f.injected else
                                                                                   " (not injected)")
                                                        + (f" FAILED {f.failed}" if f.failed else "") for f in faults)
                + f" -> {'identical' if all(f.survived for f in faults if f.injected) else 'DIFFERENT'}")
        kept = all(f.survived for f in faults if f.injected)  # a chain that did not survive is kept to be read
        for path in (out, out + ".lock"):
            if not kept and os.path.exists(path):
                shutil.move(path, os.path.join(workdir, "failed", os.path.basename(path)))
            elif os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    return report


def _run_chain(job: Job, kinds: list[str], rng: np.random.Generator, scratch: str, reference: str,
               report: Report) -> list[Fault]:
    """Injects `kinds` in order, runs the job to the end, compares with `reference`; adds all to `report`."""
    faults = []
    for i, kind in enumerate(kinds):
        starts, job.faults_left = job.starts, len(kinds) - i
        try:
            fault = fault_kinds.disk(job, rng, scratch) if kind == "disk" else getattr(fault_kinds, kind)(job, rng)
        except TimeoutError as e:
            fault = Fault(kind, job.kind, failed=[f"hung: {e}"])
        fault_starts = (starts, job.starts)
        faults.append((fault, fault_starts))
    proc, log = job.start()
    try:
        proc.wait(fault_kinds.TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    finished = proc.returncode == 0
    found = compare_train(job.out, reference, job.total) if job.kind == "train" else compare_certify(job.out, reference)
    for name, value in found.items():
        setattr(report, name, getattr(report, name) + value)
    identical = finished and not any(found.values())
    for fault, (_, after) in faults:
        if fault.kind == "cut" and fault.injected and job.kind == "train":
            step = fault.moment.split()[1]
            later = [line for i in range(after + 1, job.starts + 1) for line in fault_kinds.lines(job.log(i))]
            if not any(line.startswith(f"warning: checkpoint: {step} does not read") for line in later):
                fault.failed.append(f"no later start said checkpoint {step} does not read")
        fault.survived = fault.injected and not fault.failed and identical
    report.chains += 1
    report.unfinished_chains += not finished
    report.faults += [f for f, _ in faults]
    return [f for f, _ in faults]


def _arrays(workdir: str, step: int) -> dict[str, np.ndarray]:
    """Every array of the train state saved at `step`, by its path in the tree; {} when it does not read."""
    import jax

    from jaxsmooth import checkpoint

    try:
        tree = checkpoint.read_model(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, str(step)), "checkpoint")
    except UserError:
        return {}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _metrics_lines(workdir: str) -> list[str]:
    """metrics.jsonl's lines without ``examples_per_s`` (a timing), as canonical JSON."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [json.dumps({k: v for k, v in r.items() if k != "examples_per_s"}, sort_keys=True) for r in rows]


def compare_train(got: str, reference: str, total: int) -> dict[str, int]:
    """array_differences: arrays of the final state not bit-identical (or missing); metrics_lines_different:
    metrics lines lost, twice or different."""
    a, b = _arrays(got, total), _arrays(reference, total)
    same = lambda x, y: x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()  # noqa: E731
    differences = sum(1 for k in b if k not in a or not same(a[k], b[k])) + len(set(a) - set(b))
    mine, theirs = _metrics_lines(got), _metrics_lines(reference)
    return {"array_differences": differences,
            "metrics_lines_different": 0 if mine == theirs else sum(1 for x, y in zip(mine, theirs) if x != y)
            + abs(len(mine) - len(theirs))}


# A float32 mean of the samples' softmax: its rounding follows the XLA option set the sampler picks by timing
# (`certification.Sampler`, compiler_options="auto"), as it follows the device count; the counts, p_A
# bound and radius it does not touch are compared exactly.
ROUNDED_COLUMNS = ("lbound_mc",)


def _tsv(path: str) -> tuple[list[str], list[tuple[int, tuple[str, ...]]]]:
    """(column names but time, [(idx, fields but time)]) of a TSV's data rows."""
    if not os.path.exists(path):
        return [], []
    with open(path) as f:
        lines = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    keep = [j for j, name in enumerate(lines[0]) if name != "time"] if lines else []
    return [lines[0][j] for j in keep] if lines else [], [(int(r[0]), tuple(r[j] for j in keep)) for r in lines[1:]]


def _same_row(names: list[str], a: tuple[str, ...], b: tuple[str, ...] | None) -> bool:
    if b is None or len(a) != len(b):
        return False
    for name, x, y in zip(names, a, b):
        if name in ROUNDED_COLUMNS:
            if abs(float(x) - float(y)) > 1e-6 * max(abs(float(x)), abs(float(y))) + 1e-7:
                return False
        elif x != y:
            return False
    return True


def compare_certify(got: str, reference: str) -> dict[str, int]:
    """rows_lost: reference examples missing; rows_twice: extra copies of an example; rows_different: rows whose
    fields but ``time`` differ from the reference's (`ROUNDED_COLUMNS` by more than float32 rounding, 1e-6)."""
    names, mine = _tsv(got)
    theirs = dict(_tsv(reference)[1])
    seen: dict[int, tuple] = {}
    twice = 0
    for idx, fields in mine:
        twice += idx in seen
        seen.setdefault(idx, fields)
    return {"rows_lost": sum(1 for idx in theirs if idx not in seen), "rows_twice": twice,
            "rows_different": sum(1 for idx, fields in seen.items() if not _same_row(names, fields, theirs.get(idx)))}


def markdown(report: Report) -> str:
    """One table row per (fault, job): injected, survived, where; then the differences and the headline."""
    from collections import Counter

    lines = ["| fault | job | injected | survived | where |", "|---|---|---:|---:|---|"]
    names = {"kill": "SIGKILL", "term": "SIGTERM", "copy": "second copy", "disk": "full disk",
             "cut": "cut newest checkpoint / last row"}
    for kind in KINDS:
        for job in ("train", "certify"):
            mine = [f for f in report.faults if f.kind == kind and f.job == job and f.injected]
            if not mine:
                continue
            where = Counter(f.where for f in mine if f.where)
            lines.append(f"| {names[kind]} | {job} | {len(mine)} | {sum(f.survived for f in mine)} | "
                         + ", ".join(f"{n} {w}" for w, n in where.most_common()) + " |")
    skipped = sum(1 for f in report.faults if not f.injected)
    lines += ["", f"{report.chains} chains, each run to the end and compared with an undisturbed run; {skipped} "
                  "planned faults not injected (the job had ended first, or had no older checkpoint or no row to "
                  f"cut); rows different {report.rows_different}, metrics lines lost, twice or different "
                  f"{report.metrics_lines_different}, chains whose last run failed {report.unfinished_chains}.", "",
              f"**{report.headline()}**"]
    return "\n".join(lines) + "\n"
