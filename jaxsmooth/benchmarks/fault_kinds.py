"""The faults of ``python -m jaxsmooth.bench faults`` (`jaxsmooth.benchmarks.faults`), each one start of a job.

`Job` is a CLI command the suite starts again and again, watching how far it
has got (train: the last step of metrics.jsonl, logged every step; certify:
the whole rows of its TSV). Each fault starts it once (`cut`: while it is
down) and returns a `Fault` listing the checks that failed:

* `kill`: SIGKILL during start-up, after a random number of new steps or
  rows (mid-row: the next row is being computed), or, in training, as soon
  as a checkpoint save is under way (its ``*.orbax-checkpoint-tmp`` folder
  seen; the folder left behind proves the save was cut);
* `term`: SIGTERM after a random number of new steps or rows; the job must
  exit 75 with one ``stopped by SIGTERM`` line; in training the step it
  names must be the newest checkpoint and the last metrics line;
* `copy`: while the job runs (held with SIGSTOP, so surely running) a
  second copy of the same command must exit 2 with one line naming the
  first's pid; the first then goes on and is killed with SIGKILL;
* `disk`: after a random number of new steps or rows a ballast file fills
  the scratch folder (a small tmpfs); the job must exit 74 with one
  ``error:`` line and nothing else on stderr; the ballast is then removed;
* `cut`: the newest checkpoint's array files cut to half their size (a host
  crash before they reached the disk; only with an older checkpoint to fall
  back on) or the TSV's last line cut at a random byte.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

TIMEOUT_S = 900.0  # one start of a job; beyond it the start counts as hung


@dataclasses.dataclass
class Job:
    """One command the suite starts again and again, and how far it has got.

    kind: ``train`` (`out` is the workdir) or ``certify`` (`out` is the TSV).
    total: steps or rows at the end; startup_s: how long a restart takes to
    begin (a rerun of the finished reference, compilations cached); unit_s: the
    reference's time per step or row.
    """

    kind: str
    argv: list[str]
    out: str
    logs: str
    total: int = 0
    startup_s: float = 5.0
    unit_s: float = 0.05
    starts: int = 0
    faults_left: int = 1  # in the chain, this one included (`_target` spreads the run over them)
    compilation_cache: str = ""  # the cache folder (jaxsmooth.cache), shared by every start

    def progress(self) -> int:
        """Train: the last step in metrics.jsonl; certify: whole data rows in the TSV."""
        try:
            with open(self._watched(), "rb") as f:
                lines = f.read().split(b"\n")[:-1]  # a line without its newline is not whole
        except FileNotFoundError:
            return 0
        if self.kind == "certify":
            return sum(1 for line in lines if line[:1].isdigit())
        steps = [json.loads(line)["step"] for line in lines if b'"loss"' in line]
        return steps[-1] if steps else 0

    def advanced(self, resume: int, since_ns: int) -> bool:
        """Whether this start has made a step or row of its own: progress past `resume` written after `since_ns`.

        (Until a resumed run truncates its metrics, lines of the steps it will redo are still there.)
        """
        try:
            return os.stat(self._watched()).st_mtime_ns > since_ns and self.progress() > resume
        except FileNotFoundError:
            return False

    def _watched(self) -> str:
        return os.path.join(self.out, "metrics.jsonl") if self.kind == "train" else self.out

    def start(self) -> tuple[subprocess.Popen, str]:
        """Starts the command with its stderr in a log file of its own (outside the scratch folder); (process, log)."""
        self.starts += 1
        log = self.log(self.starts)
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env.pop("XLA_FLAGS", None)
        if self.compilation_cache:  # a restart then costs its imports, not its compilations; the same executables
            env.update(JAXSMOOTH_CACHE_DIR=self.compilation_cache)
            env.pop("JAX_COMPILATION_CACHE_DIR", None)
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", f"jaxsmooth.{self.kind}"] + self.argv, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err, cwd=repo_root())
        return proc, log

    def log(self, start: int) -> str:
        """The stderr of this job's `start`-th start."""
        return os.path.join(self.logs, f"{os.path.basename(self.out)}_{start:03d}.err")

    def checkpoints(self) -> list[int]:
        folder = os.path.join(self.out, "checkpoints")
        return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


@dataclasses.dataclass
class Fault:
    """One injected fault: what, when, and which of its checks failed (none: it held).

    where: how its moment was chosen, for the report: ``early`` (a random time
    within a restart's start-up, `Job.startup_s`, or its first new step or row
    if that comes first), ``mid-run`` / ``mid-row`` (after a
    random number of new steps or rows), ``during a save`` (a checkpoint's
    temporary folder seen, and left behind by the kill), ``just after a save``;
    moment: what the job had done by then.
    """

    kind: str
    job: str
    moment: str = ""
    where: str = ""
    injected: bool = True
    failed: list[str] = dataclasses.field(default_factory=list)
    survived: bool = False


def repo_root() -> str:
    """The checkout jaxsmooth runs from (its configs/ are the suite's)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lines(log: str) -> list[str]:
    """The non-blank lines of a log file."""
    with open(log) as f:
        return [line for line in f.read().splitlines() if line.strip()]


def wait(proc: subprocess.Popen, until=lambda: False, timeout: float = TIMEOUT_S) -> bool:
    """Polls every 2 ms until `until()` holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if until():
            return True
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"no progress in {timeout:.0f} s")
        time.sleep(0.002)
    return False


def _target(job: Job, rng: np.random.Generator, spare: int = 0) -> int:
    """A random progress to reach before the fault: 1 to (what is left) / (faults left in the chain + `spare`) new
    steps or rows, so that the chain's later faults find the job still running."""
    now = job.progress()
    left = job.total - now - 2  # the last steps or rows go by too fast to be hit reliably
    return now + int(rng.integers(1, max(2, left // max(job.faults_left + spare, 1))))


# ----------------------------------------------------------------------------- the faults


def kill(job: Job, rng: np.random.Generator) -> Fault:
    """SIGKILL in start-up, mid-run, or (train) during a checkpoint save."""
    modes = ["startup", "running", "save"] if job.kind == "train" else ["startup", "running"]
    mode = modes[int(rng.choice(len(modes), p=[0.2, 0.5, 0.3] if len(modes) == 3 else [0.2, 0.8]))]
    fault = Fault("kill", job.kind)
    resume = max(job.checkpoints(), default=0) if job.kind == "train" else job.progress()
    t0, started = time.monotonic(), time.time_ns()
    proc, _ = job.start()
    if mode == "startup":  # a random time in start-up, or the first new step or row if that comes first
        delay = rng.uniform(0, job.startup_s)
        wait(proc, lambda: time.monotonic() - t0 > delay or job.advanced(resume, started))
        fault.where, fault.moment = "early", f"{time.monotonic() - t0:.2f} s after the start"
    else:
        target = _target(job, rng)
        wait(proc, lambda: job.progress() >= target)
        if mode == "save":
            tmp = os.path.join(job.out, "checkpoints", "*.orbax-checkpoint-tmp*")
            wait(proc, lambda: bool(glob.glob(tmp)))
        else:
            time.sleep(rng.uniform(0, job.unit_s))
        now = job.progress()
        fault.where = "during a save" if mode == "save" else _mid(job)
        fault.moment = f"after step {now}" if job.kind == "train" else f"computing row {now + 1}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fault.injected = proc.returncode == -signal.SIGKILL
    if mode == "save" and fault.injected and not glob.glob(tmp):
        fault.where = "just after a save"  # the save had finished
    return fault


def _mid(job: Job) -> str:
    return "mid-run" if job.kind == "train" else "mid-row"


def term(job: Job, rng: np.random.Generator) -> Fault:
    """SIGTERM mid-run: exit 75 and one line; train: the step it names is a checkpoint and the last metrics line."""
    proc, log = job.start()
    before = job.progress()
    target = _target(job, rng)
    wait(proc, lambda: job.progress() >= target)
    time.sleep(rng.uniform(0, job.unit_s))
    proc.send_signal(signal.SIGTERM)
    proc.wait(TIMEOUT_S)
    fault = Fault("term", job.kind, injected=proc.returncode != 0, where=_mid(job))
    if not fault.injected:
        return fault
    stops = [line for line in lines(log) if line.startswith("stopped")]
    if proc.returncode != 75 or len(stops) != 1 or not stops[0].startswith("stopped by SIGTERM"):
        fault.failed.append(f"exit {proc.returncode}, stop lines {stops}")
        return fault
    if job.kind == "train":
        step = int(stops[0].split(" at step ")[1].split()[0])
        fault.moment = f"saved step {step}"
        if step not in job.checkpoints() or job.progress() != step:
            fault.failed.append(f"step {step} not both the last checkpoint {job.checkpoints()} and metrics line")
    else:
        rows = int(stops[0].split(" after ")[1].split()[0])
        fault.moment = f"after {rows} rows of this run"
        if rows != job.progress() - before:
            fault.failed.append(f"the line says {rows} rows, the file gained {job.progress() - before}")
    return fault


def copy(job: Job, rng: np.random.Generator) -> Fault:
    """A second copy beside a running first: refused with one line naming the first; the first is then killed."""
    first, _ = job.start()
    fault = Fault("copy", job.kind)
    before = job.progress()
    if not wait(first, lambda: job.progress() > before):
        fault.injected = False
        return fault
    first.send_signal(signal.SIGSTOP)  # surely running while the second copy tries
    second, log = job.start()
    second.wait(TIMEOUT_S)
    said = lines(log)
    fault.moment = f"second copy at progress {job.progress()}"
    if second.returncode != 2 or len(said) != 1 or "is in use by another job" not in said[0] \
            or f"pid {first.pid}," not in said[0]:
        fault.failed.append(f"second copy: exit {second.returncode}, stderr {said[-3:]}")
    if first.poll() is not None:
        fault.failed.append("the first copy did not outlive the second")
    first.send_signal(signal.SIGCONT)
    target = _target(job, rng)
    wait(first, lambda: job.progress() >= target)
    first.send_signal(signal.SIGKILL)
    first.wait()
    return fault


def disk(job: Job, rng: np.random.Generator, scratch: str) -> Fault:
    """The scratch tmpfs filled at a random moment: exit 74 with one ``error:`` line; the ballast then removed."""
    proc, log = job.start()
    target = _target(job, rng, spare=1)  # room after the fill: appends into a file's last page need no new one
    wait(proc, lambda: job.progress() >= target)
    ballast = os.path.join(scratch, "ballast")
    _fill(ballast)
    fault = Fault("disk", job.kind, moment=f"disk full at progress {job.progress()}", where=_mid(job))
    proc.wait(TIMEOUT_S)
    os.remove(ballast)
    fault.injected = proc.returncode != 0
    if not fault.injected:
        return fault
    said = [line for line in lines(log) if not line.startswith("warning: checkpoint:")]  # a cut one, said earlier
    errors = [line for line in said if line.startswith("error:")]
    if proc.returncode != 74 or len(errors) != 1 or "No space left on device" not in errors[0]:
        fault.failed.append(f"exit {proc.returncode}, stderr {said[-3:]}")
    elif len(said) != 1:
        fault.failed.append(f"{len(said)} lines on stderr, not one: {said[:3]}")
    return fault


def _fill(path: str) -> None:
    """Writes zeros to `path` until the file system has no byte left."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def cut(job: Job, rng: np.random.Generator) -> Fault:
    """Train: the newest checkpoint's array files cut to half (with an older one to fall back on); certify: the TSV's
    last line cut at a random byte. The job is down."""
    fault = Fault("cut", job.kind)
    if job.kind == "train":
        steps = job.checkpoints()
        if len(steps) < 2:
            fault.injected = False
            return fault
        files = glob.glob(os.path.join(job.out, "checkpoints", str(steps[-1]), "default", "**", "d", "*"),
                          recursive=True)
        for name in files:
            os.truncate(name, os.path.getsize(name) // 2)
        fault.moment = f"checkpoint {steps[-1]} cut ({len(files)} array files)"
        return fault
    with open(job.out, "rb") as f:
        text = f.read()
    start = text.rstrip(b"\n").rfind(b"\n") + 1
    if not job.progress():
        fault.injected = False
        return fault
    keep = start + int(rng.integers(1, len(text) - start))  # at least one byte of the row goes, one stays
    os.truncate(job.out, keep)
    fault.moment = f"last row cut to {keep - start} of {len(text) - start} bytes"
    return fault
