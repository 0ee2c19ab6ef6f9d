"""jaxsmooth.jobs: stop signals, exclusive locks and whole-row writes; the trainer and the CLIs under them."""

import errno
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import chex
import jax
import pytest

from jaxsmooth import attack, certify, checkpoint, cli, jobs, results, train, trainer
from jaxsmooth.benchmarks import faults
from jaxsmooth.certification import records
from jaxsmooth.errors import UserError

from conftest import ROOT
from helpers import QUICKSTART, SMALL, quick_config, tsv_rows

# A process that holds a lock until killed; it prints "held" once it has it.
HOLDER = ("import sys, time\nfrom jaxsmooth import jobs\nwith jobs.session():\n"
          "    getattr(jobs, sys.argv[1])(sys.argv[2])\n    print('held', flush=True)\n    time.sleep(600)\n")


def _hold(kind, path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_second_copy_is_refused_naming_the_holder_until_the_holder_is_killed(tmp_path):
    workdir = tmp_path / "run"
    holder = _hold("lock_workdir", workdir)
    try:
        with jobs.session():
            with pytest.raises(UserError) as info:
                jobs.lock_workdir(str(workdir))
            jobs.lock_output(str(tmp_path / "other.tsv"))  # another file: no conflict
        assert info.value.field == "workdir"
        assert f"host {socket.gethostname()}, pid {holder.pid}," in info.value.message
        assert "\n" not in info.value.message
    finally:
        _kill(holder)
    with jobs.session():  # kill -9 released it
        jobs.lock_workdir(str(workdir))
        assert f"pid {os.getpid()}," in (workdir / jobs.LOCK_FILE).read_text()
    with jobs.session():  # and so did the end of the session
        jobs.lock_workdir(str(workdir))


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """An undisturbed 22-step quick-start run logging every step: (workdir, final state)."""
    workdir = str(tmp_path_factory.mktemp("undisturbed") / "run")
    state, _ = trainer.train_and_evaluate(quick_config("train.log_every_steps=1"), workdir)
    return workdir, jax.device_get(state.params)


@pytest.fixture(scope="module")
def trained(undisturbed):
    """The undisturbed run's workdir: a quick-start model to certify and attack."""
    return undisturbed[0]


@pytest.mark.slow
def test_train_certify_and_attack_refuse_a_held_workdir_or_output(trained, tmp_path, capsys):
    out = tmp_path / "held.tsv"
    holders = [_hold("lock_workdir", tmp_path / "run"), _hold("lock_output", out)]
    try:
        runs = [train.main(["--config", QUICKSTART, "--workdir", str(tmp_path / "run")] + SMALL + ["--no-progress"]),
                certify.main(["--config", QUICKSTART, "--checkpoint", trained, "--out", str(out), "--n", "100",
                             "--n0", "10", "--alpha", "0.1", "--no-progress"] + SMALL),
                attack.main(["--config", QUICKSTART, "--checkpoint", trained, "--out", str(out), "--attack", "ddn",
                            "--no-progress"] + SMALL)]
    finally:
        for h in holders:
            _kill(h)
    assert runs == [2, 2, 2]
    lines = capsys.readouterr().err.strip().splitlines()
    expected = [["error", " --workdir"], ["error", " --out"], ["error", " --out"]]
    assert [line.split(":")[:2] for line in lines] == expected
    assert f"pid {holders[0].pid}," in lines[0] and all(f"pid {holders[1].pid}," in line for line in lines[1:])
    assert not out.exists() and not (tmp_path / "run" / "config.json").exists()  # nothing written


def _failing_write(monkeypatch, calls_before_failure: int):
    """os.write that succeeds `calls_before_failure` times, then writes half its bytes and fails with ENOSPC."""
    real, count = os.write, [0]

    def write(fd, data):
        count[0] += 1
        if count[0] <= calls_before_failure:
            return real(fd, data)
        if count[0] == calls_before_failure + 1:
            return real(fd, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)


def test_a_row_that_does_not_fit_is_cut_back_to_the_last_whole_row(tmp_path, monkeypatch):
    path = str(tmp_path / "c.tsv")
    cols = ["idx", "label"]
    writer = results.Writer(path, results.CERTIFY, {"n": 1}, cols)
    writer.write({"idx": 0, "label": 3})
    before = open(path).read()
    _failing_write(monkeypatch, 0)
    with pytest.raises(jobs.WriteFailed) as info:
        writer.write({"idx": 1, "label": 123456789})
    monkeypatch.undo()
    assert info.value.field == "out" and info.value.exit_status == 74
    assert "No space left on device" in info.value.message
    assert open(path).read() == before  # the half row is gone
    writer.write({"idx": 1, "label": 4})  # room again: the file goes on
    writer.close()
    assert results.Writer(path, results.CERTIFY, {"n": 1}, cols).done == [0, 1]


def test_a_metrics_line_that_does_not_fit_is_cut_back(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    writer = trainer.MetricsWriter(workdir, 0)
    writer.write({"step": 5, "loss": 1.0})
    before = open(os.path.join(workdir, "metrics.jsonl")).read()
    _failing_write(monkeypatch, 0)
    with pytest.raises(jobs.WriteFailed) as info:
        writer.write({"step": 10, "loss": 0.5})
    assert info.value.field == "metrics"
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == before


def test_resume_drops_metrics_after_the_checkpoint_and_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (5, 10, 10, 15)]
    path.write_text("".join(rows) + '{"step": 2')
    trainer.MetricsWriter(str(tmp_path), 10)
    assert path.read_text() == "".join(rows[:3])
    path.write_text("".join(rows[:2]) + '{"step": 1')
    trainer.MetricsWriter(str(tmp_path), 20)
    assert path.read_text() == "".join(rows[:2])
    evaluation = json.dumps({"step": 10, "test_accuracy": 0.5}) + "\n"
    path.write_text("".join(rows[:2]) + evaluation)
    trainer.MetricsWriter(str(tmp_path), 10, total_steps=20)  # mid-run: the evaluation at the checkpoint stays
    assert path.read_text() == "".join(rows[:2]) + evaluation
    trainer.MetricsWriter(str(tmp_path), 10, total_steps=10)  # a finished run: its final evaluation is redone
    assert path.read_text() == "".join(rows[:2])


def test_write_error_reads_oserrors_and_tensorstore_messages():
    spaceless = ValueError("RESOURCE_EXHAUSTED: Failed to write 4031 bytes to file 4: No space left on device "
                           "[os_error_code='28']")
    assert jobs.write_error(spaceless) == os.strerror(errno.ENOSPC)
    assert jobs.write_error(OSError(errno.EIO, "x")) == os.strerror(errno.EIO)
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "x")
    assert jobs.write_error(wrapped) == os.strerror(errno.EDQUOT)
    assert jobs.write_error(FileNotFoundError(errno.ENOENT, "x")) is None
    assert jobs.write_error(ValueError("NOT_FOUND [os_error_code='2']")) is None


def test_cli_statuses_for_a_stop_a_failed_write_and_bad_input(capsys):
    def main_raising(error):
        def main(argv):
            raise error
        return cli.main_wrapper(main, job=True)

    assert main_raising(jobs.Stopped("stopped by SIGTERM at step 3"))([]) == 75
    assert main_raising(jobs.WriteFailed("out", "cannot write x: No space left on device"))([]) == 74
    assert main_raising(UserError("n", "must be > 0"))([]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "stopped by SIGTERM at step 3", "error: out: cannot write x: No space left on device", "error: n: must be > 0"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the session's handlers are gone


def test_until_stopped_drops_the_row_in_flight_and_a_second_signal_stops_at_once():
    def rows():
        for i in range(10):
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while row 2 is computed
            yield i

    got = []
    with jobs.session():
        with pytest.raises(jobs.Stopped) as info:
            for row in jobs.until_stopped(rows(), "x.tsv"):
                got.append(row)
        assert got == [0, 1]
        assert str(info.value).startswith("stopped by SIGTERM after 2 rows of this run")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def _signal_at(step):
    def callback(event):
        if event["event"] == "train" and event["step"] == step:
            os.kill(os.getpid(), signal.SIGTERM)
    return callback


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_next_step_and_the_resumed_run_ends_bit_identical(undisturbed, tmp_path):
    config = quick_config("train.log_every_steps=1")
    workdir = str(tmp_path / "run")
    with jobs.session():
        with pytest.raises(jobs.Stopped) as info:
            trainer.train_and_evaluate(config, workdir, callback=_signal_at(13))
    # the signal came after step 13; step 14 was in flight: it is finished, logged and saved
    assert str(info.value).startswith("stopped by SIGTERM at step 14 of 22; its checkpoint is ")
    assert sorted(checkpoint.Checkpointer(workdir)._manager.all_steps()) == [10, 14]
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [m["step"] for m in metrics] == list(range(1, 15))
    events = []
    resumed, _ = trainer.train_and_evaluate(config, workdir, callback=events.append)
    assert events[0]["start_step"] == 14
    chex.assert_trees_all_equal(jax.device_get(resumed.params), undisturbed[1])


@pytest.mark.slow
def test_a_cut_last_checkpoint_is_moved_aside_and_the_run_redoes_its_steps(undisturbed, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(undisturbed[0], workdir)
    for name in glob.glob(os.path.join(workdir, "checkpoints", "22", "default", "**", "d", "*"), recursive=True):
        os.truncate(name, os.path.getsize(name) // 2)  # a host crash before the data reached the disk
    events = []
    state, _ = trainer.train_and_evaluate(quick_config("train.log_every_steps=1"), workdir, callback=events.append)
    unreadable = [e for e in events if e["event"] == "unreadable_checkpoint"]
    assert [e["step"] for e in unreadable] == [22] and os.path.isdir(unreadable[0]["moved_to"])
    assert next(e for e in events if e["event"] == "start")["start_step"] == 20
    chex.assert_trees_all_equal(jax.device_get(state.params), undisturbed[1])


def _certify(workdir, out):
    return certify.main(["--config", QUICKSTART, "--checkpoint", workdir, "--out", str(out), "--skip", "10",
                        "--max", "60", "--n0", "20", "--n", "200", "--alpha", "0.01", "--batch", "100",
                        "--no-progress"] + SMALL)


@pytest.mark.slow
def test_sigterm_mid_row_stops_certify_with_whole_rows_and_it_resumes_to_the_same_rows(trained, tmp_path,
                                                                                        monkeypatch, capsys):
    full, stopped = tmp_path / "full.tsv", tmp_path / "stopped.tsv"
    assert _certify(trained, full) == 0
    real = records.certification_rows

    def signalling(*args, **kwargs):
        for i, row in enumerate(real(*args, **kwargs)):
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # while the third row is in flight
            yield row

    monkeypatch.setattr(records, "certification_rows", signalling)
    capsys.readouterr()
    assert _certify(trained, stopped) == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stopped by SIGTERM after 2 rows of this run, each written whole to {stopped}; "
                   "rerun the same command to resume"]
    assert [r[0] for r in tsv_rows(stopped)[1]] == ["0", "10"]
    monkeypatch.undo()
    assert _certify(trained, stopped) == 0
    # every row once, each equal but for time (and lbound_mc to float32 rounding: see faults.ROUNDED_COLUMNS)
    assert faults.compare_certify(str(stopped), str(full)) == {"rows_lost": 0, "rows_twice": 0, "rows_different": 0}
    assert [r[0] for r in tsv_rows(stopped)[1]] == [r[0] for r in tsv_rows(full)[1]]


@pytest.mark.slow
def test_sigterm_stops_attack_between_rows_with_one_line(trained, tmp_path, monkeypatch, capsys):
    """The attack CLI's rows pass through the same stop: the rows before the signal whole, the one in flight dropped."""
    from jaxsmooth.attacks import runner

    def rows(attack_fn, params, model_state, split, todo, key, *, batch):
        for i in todo:
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # while the third example is attacked
            yield {"idx": int(i), "label": 1, "predict": 1, "success": 1, "distance": 0.5, "time": "0:00:01",
                   "seconds": 1.0}

    monkeypatch.setattr(runner, "attack_rows", rows)
    out = tmp_path / "a.tsv"
    code = attack.main(["--config", QUICKSTART, "--checkpoint", trained, "--out", str(out), "--attack", "ddn",
                       "--max", "5", "--no-progress"] + SMALL)
    assert code == 75
    assert capsys.readouterr().err.strip().splitlines() == [
        f"stopped by SIGTERM after 2 rows of this run, each written whole to {out}; rerun the same command to resume"]
    assert [r[0] for r in tsv_rows(out)[1]] == ["0", "1"]
