"""What clusters do to jobs, and how train, certify and attack survive it: signals, a second copy, a full disk.

Exit statuses of ``python -m jaxsmooth.train``, ``.certify`` and ``.attack``
(the names are sysexits.h's):

====  ===========================================================================
0     finished
2     bad input, one ``error: FIELD: ...`` line; also a workdir or --out that
      another job holds (the line names its host and pid)
74    EX_IOERR: a checkpoint, metrics line or TSV row could not be written (a
      full disk, an I/O error); one ``error:`` line; nothing half-written is
      left for a resume to take as valid. Free space and rerun: it resumes.
75    EX_TEMPFAIL: stopped by SIGTERM or SIGINT after saving (train: a
      checkpoint at the step in flight; certify, attack: every finished row);
      one line says where. Rerun the same command to resume; this is the
      status a requeue script tests (launch/slurm.sbatch).
130   a second SIGINT or SIGTERM: stopped at once, as by a kill; the run
      resumes from its last checkpoint or row.
====  ===========================================================================

Signals (`session`, `stop_requested`). In one process, SIGTERM and SIGINT
only ask the job to stop: the trainer finishes the step in flight, saves it
and stops; certify and attack drop the row in flight (`until_stopped`), so
they leave at once with every written row whole. In a multi-process run JAX's
preemption notifier (installed by ``jax.distributed.initialize``) owns
SIGTERM and `stop_requested` is ``multihost_utils.reached_preemption_sync_point``:
true on every process at the same step, so they all save that step together
(orbax's ``CheckpointManager.reached_preemption`` asks the same). SIGINT is
passed on to it as a SIGTERM of this process.

Locks (`lock_workdir`, `lock_output`). One job at a time per workdir and per output file: an
``fcntl.flock`` on a lock file (``WORKDIR/jaxsmooth.lock``, ``OUT.lock``),
which the kernel releases when the process ends in any way, ``kill -9``
included. Only the process that writes takes it, so the processes of one
multi-process job never lock each other out; they agree on the outcome. The
file system must honour flock across hosts (local disks, NFSv4, Lustre with
``-o flock``); where it refuses locks the job runs unlocked, with one warning.

Writes (`append_line`, `write_atomic`, `WriteFailed`). A row is one
``write`` of a whole line; a failed one is cut back to the last whole row
before the error is raised. Orbax writes a checkpoint into a temporary
folder and renames it when complete, so a failed or killed save never looks
like a checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import logging
import os
import re
import signal
import socket
import sys
from typing import Iterable, Iterator, TypeVar

from jaxsmooth.errors import UserError

EXIT_WRITE_FAILED = 74  # sysexits.h EX_IOERR
EXIT_STOPPED = 75  # sysexits.h EX_TEMPFAIL
LOCK_FILE = "jaxsmooth.lock"
# errno values of a write that failed for lack of room or a broken disk (not of a bad path or permissions).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})
T = TypeVar("T")


class Stopped(Exception):
    """The job stopped on a signal after saving its work; the message is the one line that says where."""

    exit_status = EXIT_STOPPED


class WriteFailed(UserError):
    """A checkpoint, metrics line or TSV row could not be written (full disk, I/O error); exit status 74."""

    exit_status = EXIT_WRITE_FAILED


class _Interrupted(Exception):
    """Raised by the signal handler inside `interruptible` blocks: the work in flight is dropped."""


# --------------------------------------------------------------------------
# Signals


class _State:
    def __init__(self):
        self.signal: str | None = None  # name of the first stop signal received
        self.interruptible = False  # inside an `interruptible` block
        self.forwarded = False  # a signal caught before JAX's preemption notifier was passed on to it
        self.locks: list = []  # open lock files of this session


_state = _State()


def _distributed() -> bool:
    return "jax" in sys.modules and sys.modules["jax"].distributed.is_initialized()


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _distributed() and signum == signal.SIGINT:
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier tells every process
        return
    if _state.signal is not None:
        raise KeyboardInterrupt(f"a second {name}")
    _state.signal = name
    if _state.interruptible:
        raise _Interrupted(name)


@contextlib.contextmanager
def session() -> Iterator[None]:
    """The life of one job in this process: stop signals asked for, write-error logs silenced, locks released.

    Installs the SIGTERM and SIGINT handlers of the module docstring (before
    ``jax.distributed.initialize``, which then takes SIGTERM for JAX's
    preemption notifier), and on leaving restores the previous handlers and
    releases every lock taken inside. Log records of orbax (``absl``) and of
    its event loops (``asyncio``, some at exit) about a failed write, and the
    "Event loop is closed" of its writes still in flight (`_UnraisableFilter`),
    are dropped for the rest of the process: the job's ``error:`` line says it once.
    """
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        if not (s == signal.SIGTERM and _distributed()):
            signal.signal(s, _on_signal)
    for name in ("absl", "asyncio"):  # orbax's threads and its event loops' leftovers, until the process ends
        if not any(isinstance(f, _WriteErrorFilter) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(_WriteErrorFilter())
    if not isinstance(sys.unraisablehook, _UnraisableFilter):
        sys.unraisablehook = _UnraisableFilter(sys.unraisablehook)
    _state.signal, _state.interruptible, _state.forwarded = None, False, False
    try:
        yield
    finally:
        for s, handler in previous.items():
            if signal.getsignal(s) is _on_signal:
                signal.signal(s, handler)
        while _state.locks:
            _release(_state.locks.pop())
        _state.signal = None


def stop_requested(step: int) -> bool:
    """Whether the job should stop after `step` (call it once per step, with increasing steps).

    Multi-process: JAX's preemption sync point, true at the same step on every
    process once any of them got SIGTERM. One process: whether a stop signal
    arrived.
    """
    if _distributed():
        from jax.experimental import multihost_utils

        if _state.signal is not None and not _state.forwarded:
            # caught by our handler before jax.distributed.initialize took SIGTERM over: tell JAX's notifier
            _state.forwarded = True
            os.kill(os.getpid(), signal.SIGTERM)
        try:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        except RuntimeError:  # the preemption service is switched off (jax_enable_preemption_service)
            pass
    return _state.signal is not None


def stop_reason() -> str:
    return f"by {_state.signal}" if _state.signal else "on a preemption notice"


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A block that a stop signal ends at once (one process), raising `_Interrupted`: its work is dropped."""
    _state.interruptible = True
    try:
        if _state.signal is not None:
            raise _Interrupted(_state.signal)
        yield
    finally:
        _state.interruptible = False


def until_stopped(rows: Iterable[T], out: str) -> Iterator[T]:
    """The items of `rows`, until a stop signal; then `Stopped`, naming `out` and how many rows this run wrote.

    The consumer writes each row before asking for the next, so a stop checked
    here falls between rows; a signal while a row is computed drops that row
    (one process: at once; several: at the next row, on every process together).
    """
    iterator = iter(rows)
    done = 0
    while True:
        try:
            if stop_requested(done):
                raise _Interrupted(_state.signal)
            with interruptible():
                row = next(iterator)
        except StopIteration:
            return
        except _Interrupted:
            raise Stopped(f"stopped {stop_reason()} after {done} rows of this run, each written whole to {out}; "
                          "rerun the same command to resume") from None
        yield row
        done += 1


# --------------------------------------------------------------------------
# Locks


def lock_workdir(workdir: str, *, take: bool = True) -> None:
    """`WORKDIR/jaxsmooth.lock` (see `lock`), refused as ``workdir``."""
    lock(os.path.join(workdir, LOCK_FILE), workdir, "workdir", take=take)


def lock_output(path: str, *, take: bool = True, field: str = "out") -> None:
    """`OUT.lock` beside an output file (see `lock`), refused as `field`."""
    lock(path + ".lock", path, field, take=take)


def _holder() -> str:
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"host {socket.gethostname()}, pid {os.getpid()}, since {started}"


def lock(path: str, target: str, field: str, *, take: bool = True) -> None:
    """Takes the exclusive lock file `path` until the `session` ends, or refuses: `UserError(field)` naming the holder.

    Args:
      path: the lock file; its folder is made. It holds the holder's host, pid
        and start time, and stays after the job (an unlocked file is free).
      target: the workdir or output file it guards, for the message.
      field: the flag named in the error (``workdir``, ``out``).
      take: whether this process takes it (the process that writes); in a
        multi-process run every process learns whether all that took one got it.
    """
    refusal = None
    if take:
        f = _open_lock_file(path, target, field)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "its host and pid not yet written"
            f.close()
            refusal = (f"{target} is in use by another job ({holder}); a second copy would write the same files: "
                       "wait for that job to end, or stop it, and rerun")
        except OSError as e:  # a file system without locks (gcsfuse, Lustre without -o flock)
            print(f"warning: {field}: cannot lock {path} ({e.strerror}); a second copy of this job would not be "
                  "refused", file=sys.stderr)
            f.close()
        else:
            f.seek(0)
            f.truncate()
            f.write(_holder() + "\n")
            f.flush()
            _state.locks.append(f)
    if _distributed():
        import numpy as np
        from jax.experimental import multihost_utils

        refused = multihost_utils.process_allgather(np.asarray(refusal is not None))
        if refusal is None and np.any(refused):
            refusal = "another process of this job found its files in use by another job (see its error line)"
    if refusal is not None:
        raise UserError(field, refusal)


def _open_lock_file(path: str, target: str, field: str):
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(field, f"cannot create the folder of {target}: a part of {folder} is a file, "
                               "not a folder") from None
    except OSError as e:
        raise UserError(field, f"cannot create the folder {folder}: {e.strerror}") from None
    try:
        return open(path, "a+")
    except OSError as e:
        raise UserError(field, f"cannot write {path} beside {target}: {e.strerror}") from None


def _release(f) -> None:
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()


# --------------------------------------------------------------------------
# Writes


def write_error(e: BaseException | None) -> str | None:
    """The OS's words for a failed write (``No space left on device``) if `e` or its causes is one, else None.

    Knows `OSError`, ``[Errno 28]`` in a message, and tensorstore's ``[os_error_code='28']`` (orbax's arrays).
    """
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return os.strerror(e.errno)
        code = re.search(r"os_error_code=\\?'?(\d+)|\[Errno (\d+)\]", str(e))
        number = int(code.group(1) or code.group(2)) if code else None
        if number in WRITE_ERRNOS:
            return os.strerror(number)
        e = e.__cause__ or e.__context__
    return None


class _WriteErrorFilter(logging.Filter):
    """Drops library log records about a failed write or a preemption stop: the job's one line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Reached preemption sync point" in message:  # orbax's; the job's stop line says it
            return False
        error = record.exc_info[1] if record.exc_info else None
        return write_error(error) is None and write_error(Exception(message)) is None


class _UnraisableFilter:
    """Drops "Event loop is closed" from callbacks (tensorstore's) of an orbax operation that already failed.

    Orbax runs each asynchronous write in an event loop of its own and closes
    it when the first write fails; the writes still in flight then complete
    into the closed loop, and their callbacks' errors have nobody to reach.
    """

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        if unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError) \
                and str(unraisable.exc_value) == "Event loop is closed":
            return
        self.previous(unraisable)


def append_line(f, line: str, field: str) -> None:
    """Appends `line` (ending in a newline) to the open file `f` in one write, or not at all.

    The bytes go straight to the file descriptor (nothing stays buffered); a
    write that fails part way is cut back to the file's previous end, then
    raised as `WriteFailed` naming `field`.
    """
    fd = f.fileno()
    f.flush()
    end = os.lseek(fd, 0, os.SEEK_END)
    data = line.encode()
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
        raise WriteFailed(field, f"cannot write to {f.name}: {e.strerror}; every row before stays whole: free space "
                                 "and rerun the same command to resume") from None


@contextlib.contextmanager
def write_errors(field: str, path: str) -> Iterator[None]:
    """Turns a failed write (`WRITE_ERRNOS`) inside the block into `WriteFailed(field)` naming `path`."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise WriteFailed(field, f"cannot write {path}: {e.strerror}; free space and rerun the same command") from None


def write_atomic(path: str, text: str, field: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename: readers see the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with write_errors(field, path):
        try:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
