"""Two JAX processes (launch/local.sh, 4 fake CPU devices each, gloo) compute what one process with 8 devices does.

Training, certification in both ``certify.parallel`` modes (the n samples of each input over all devices;
the examples over the processes, one TSV shard each), the processes' data shards, a checkpoint moving
between process counts, and a sharded certification killed and resumed.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from jaxsmooth import analysis, certify, checkpoint, data

from conftest import ROOT
from helpers import quick_config

QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")
OVERRIDES = ["train.num_epochs=1"]
SMALL = ["--config.model.width=4", "--config.train.batch_size=64", "--config.train.checkpoint_every_steps=10",
         "--config.train.eval_every_epochs=0", "--config.train.eval_batch_size=120"] + \
        [f"--config.{o}" for o in OVERRIDES]
CERTIFY = ["--n0", "50", "--n", "500", "--alpha", "0.01", "--batch", "100", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, name, args, devices_per_process=4, processes=2, **popen):
    """launch/local.sh PROCESSES python ARGS...; returns the finished process, or the Popen with `popen`."""
    env = dict(os.environ, DEVICES_PER_PROCESS=str(devices_per_process), LOGDIR=str(tmp_path / f"logs_{name}"),
               PORT=str(_free_port()))
    env.pop("XLA_FLAGS", None)
    cmd = [os.path.join(ROOT, "launch", "local.sh"), str(processes), sys.executable] + list(args)
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """A quick-start model trained by 2 processes x 4 devices: (workdir, stdout)."""
    tmp = tmp_path_factory.mktemp("two")
    workdir = str(tmp / "run")
    out = _launch(tmp, "train", ["-m", "jaxsmooth.train", "--config", QUICKSTART, "--workdir", workdir,
                                 "--no-progress"] + SMALL)
    return workdir, out.stdout


def _rows(path):
    """{idx: row fields without the time column} of a certify TSV, and its header."""
    with open(path) as f:
        lines = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    header, body = lines[0], lines[1:]
    keep = [j for j, name in enumerate(header) if name != "time"]
    ids = [int(r[0]) for r in body]
    assert len(ids) == len(set(ids)), f"{path} repeats an example"
    return {int(r[0]): [r[j] for j in keep] for r in body}, [header[j] for j in keep]


def _assert_same_rows(got_path, want_path, *, close=("lbound_mc",), rel=1e-6):
    """Equal rows: integer columns and the radius exactly; `close` columns (sums of floats, whose order follows
    the device count) to `rel`."""
    got, header = _rows(got_path)
    want, _ = _rows(want_path)
    assert sorted(got) == sorted(want)
    for i in want:
        for name, a, b in zip(header, got[i], want[i]):
            if name in close:
                assert float(a) == pytest.approx(float(b), rel=rel, abs=1e-7), (i, name)
            else:
                assert a == b, (i, name, a, b)


@pytest.mark.slow
def test_two_processes_train_what_one_process_with_eight_devices_trains(two_process_run, quick_run):
    workdir, stdout = two_process_run
    _, one, summary = quick_run  # quick_config(*OVERRIDES) on one process's 8 devices
    assert quick_config(*OVERRIDES) == quick_config()
    # The 2-process checkpoint restores in this 1-process run, and holds the same parameters.
    restored = checkpoint.Checkpointer(workdir).restore(int(one.step), one)
    chex.assert_trees_all_close(jax.device_get(restored.params), jax.device_get(one.params), atol=2e-5, rtol=2e-5)
    assert f"clean accuracy {summary['test_accuracy']:.4f}" in stdout


@pytest.mark.slow
def test_processes_read_disjoint_and_complete_data_shards(tmp_path):
    out = str(tmp_path / "shards")
    _launch(tmp_path, "data", [os.path.join(ROOT, "tests", "mp_data_shards.py"), "--out", out, "--batch", "64"],
            devices_per_process=2)
    got = [json.load(open(f"{out}.{p}.json")) for p in range(2)]
    assert [g["processes"] for g in got] == [2, 2] and got[0]["devices"] == 4
    train = data.load("digits").train
    for step in range(3):
        expected = data.global_batch_indices(len(train), 64, 0, step)
        mine = [np.asarray(g["local"][step]) for g in got]
        assert not set(mine[0].tolist()) & set(mine[1].tolist())
        np.testing.assert_array_equal(np.concatenate(mine), expected)  # complete, in the 1-process order
        for g, m in zip(got, mine):  # what each process placed on its devices is its own share
            assert g["placed"][step] == sorted(m.tolist())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["samples", "examples"])
def test_certify_counts_match_one_process(two_process_run, tmp_path, mode):
    workdir, _ = two_process_run
    two = str(tmp_path / "two.tsv")
    args = ["-m", "jaxsmooth.certify", "--config", QUICKSTART, "--checkpoint", workdir, "--out", two, "--max", "10",
            f"--config.certify.parallel={mode}"] + CERTIFY + SMALL
    _launch(tmp_path, f"certify_{mode}", args)
    if mode == "samples":  # a rerun finds every row done (process 0's view, broadcast) and adds none
        before = open(two).read()
        assert "(0 this run" in _launch(tmp_path, "again", args).stdout
        assert open(two).read() == before
    one = str(tmp_path / "one.tsv")
    assert certify.main(["--config", QUICKSTART, "--checkpoint", workdir, "--out", one, "--max", "10"]
                       + CERTIFY + SMALL) == 0
    if mode == "examples":
        shards = [analysis.shard_path(two, p, 2) for p in range(2)]
        assert not os.path.exists(two)
        assert [len(_rows(s)[0]) for s in shards] == [5, 5]
        analysis.write_merged(shards, two)
    _assert_same_rows(two, one)


SEQUENTIAL = ["--sequential", "--tolerance", "0.05", "--inputs", "5", "--n", "3000"]  # max-radius mode


@pytest.fixture(scope="module")
def sequential_one(two_process_run, tmp_path_factory):
    """A sequential (max-radius) certification of the first 10 examples by one process with 8 devices."""
    one = str(tmp_path_factory.mktemp("seq") / "one.tsv")
    assert certify.main(["--config", QUICKSTART, "--checkpoint", two_process_run[0], "--out", one, "--max", "10"]
                       + CERTIFY + SEQUENTIAL + SMALL) == 0
    return one


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["samples", "examples"])
def test_sequential_certify_matches_one_process(two_process_run, sequential_one, tmp_path, mode):
    two = str(tmp_path / "two.tsv")
    _launch(tmp_path, f"sequential_{mode}", ["-m", "jaxsmooth.certify", "--config", QUICKSTART, "--checkpoint",
                                              two_process_run[0], "--out", two, "--max", "10",
                                              f"--config.certify.parallel={mode}"] + CERTIFY + SEQUENTIAL + SMALL)
    if mode == "examples":
        analysis.write_merged([analysis.shard_path(two, p, 2) for p in range(2)], two)
    assert len(_rows(two)[0]) == 10 and "n_used" in _rows(two)[1]
    _assert_same_rows(two, sequential_one, rel=1e-5)


@pytest.mark.slow
def test_sharded_certification_resumes_after_a_kill(two_process_run, tmp_path):
    workdir, _ = two_process_run
    out = str(tmp_path / "cert.tsv")
    shards = [analysis.shard_path(out, p, 2) for p in range(2)]
    args = ["-m", "jaxsmooth.certify", "--config", QUICKSTART, "--checkpoint", workdir, "--out", out, "--max", "30",
            "--n", "20000", "--n0", "50", "--alpha", "0.01", "--batch", "1000", "--no-progress",
            "--config.certify.parallel=examples"] + SMALL

    def data_rows(path):
        if not os.path.exists(path):
            return 0
        with open(path) as f:
            return sum(1 for line in f if line[:1].isdigit())

    job = _launch(tmp_path, "killed", args, popen=True)
    deadline = time.monotonic() + 300
    while not all(data_rows(s) >= 1 for s in shards):
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    before = [data_rows(s) for s in shards]
    assert sum(before) < 30  # killed part way

    _launch(tmp_path, "resumed", args)
    merged = str(tmp_path / "merged.tsv")
    run = analysis.write_merged(shards, merged)
    np.testing.assert_array_equal(run.columns["idx"], np.arange(30))  # every example exactly once
    uninterrupted = str(tmp_path / "uninterrupted.tsv")
    assert certify.main(["--config", QUICKSTART, "--checkpoint", workdir, "--out", uninterrupted] + args[8:]) == 0
    _assert_same_rows(merged, uninterrupted)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_saved_step_and_the_run_resumes_bit_identical(
        two_process_run, tmp_path, monkeypatch):
    """JAX's preemption sync point: the notice of one process reaches the other; both save one step and exit 75."""
    for name, value in (("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "cache")),  # the resumed run compiles nothing
                        ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),
                        ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")):
        monkeypatch.setenv(name, value)
    workdir = str(tmp_path / "run")
    args = ["-m", "jaxsmooth.train", "--config", QUICKSTART, "--workdir", workdir, "--no-progress"] + SMALL
    job = _launch(tmp_path, "preempted", args, popen=True)
    deadline = time.monotonic() + 300
    while not os.path.exists(os.path.join(workdir, "jaxsmooth.lock")):  # process 0 is past initialize()
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before it could be signalled"
        time.sleep(0.05)
    second = subprocess.run(["pgrep", "-s", str(job.pid), "-f", "--", "process-id 1"], capture_output=True, text=True)
    os.kill(int(second.stdout.split()[0]), signal.SIGTERM)  # one host's preemption notice
    assert job.wait(timeout=300) == 75
    logs = [open(tmp_path / "logs_preempted" / f"process_{p}.log").read() for p in range(2)]
    stops = [[line for line in log.splitlines() if line.startswith("stopped ")] for log in logs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops
    step = int(stops[0][0].split(" at step ")[1].split()[0])
    assert step < 1437 // 64 and step in checkpoint.Checkpointer(workdir)._manager.all_steps()
    _launch(tmp_path, "resumed", args)
    total = 1437 // 64
    final = lambda w: checkpoint.read_model(os.path.join(w, "checkpoints", str(total)), "checkpoint")["params"]
    chex.assert_trees_all_equal(final(workdir), final(two_process_run[0]))


# ---- bad input: one clear error each ------------------------------------------------------------------------


def test_an_unreachable_coordinator_is_one_error_after_the_timeout(tmp_path, capsys):
    address = f"127.0.0.1:{_free_port()}"  # nobody listens there
    t0 = time.monotonic()
    code = certify.main(["--config", QUICKSTART, "--checkpoint", str(tmp_path), "--out", str(tmp_path / "c.tsv"),
                        "--coordinator", address, "--num-processes", "2", "--process-id", "1",
                        "--coordinator-timeout", "1"])
    waited = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: --coordinator: cannot reach {address} within 1 s")
    assert waited >= 1  # it waited the timeout it states, not less
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize("args, field", [
    (["--coordinator", "127.0.0.1", "--num-processes", "2", "--process-id", "0"], "--coordinator"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2"], "--process-id"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], "--process-id"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "0", "--process-id", "0"], "--num-processes"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "1", "--coordinator-timeout", "0"],
     "--coordinator-timeout"),
])
def test_bad_process_arguments_name_the_flag(tmp_path, capsys, args, field):
    code = certify.main(["--config", QUICKSTART, "--checkpoint", str(tmp_path), "--out", str(tmp_path / "c.tsv")]
                       + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {field}: "), err


def test_a_process_count_that_does_not_divide_the_batch_is_named():
    from jaxsmooth import config as config_lib
    from jaxsmooth.errors import UserError

    with pytest.raises(UserError, match=r"train.batch_size: 65 is not divisible by the number of devices "
                                        r"\(8 devices in 2 processes"):
        config_lib.validate(quick_config("train.batch_size=65"), num_devices=8, num_processes=2)
    with pytest.raises(data.DataError, match=r"train.batch_size: 65 is not divisible by the number of processes"):
        data.train_batch(data.load("digits").train, global_batch_size=65, seed=0, step=0, process_index=0,
                         process_count=2)


def test_an_unknown_certify_parallel_mode_is_named(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    from jaxsmooth import train

    assert train.main(["--config", QUICKSTART, "--workdir", workdir, "--no-progress", "--config.train.num_epochs=1",
                      "--config.model.width=4", "--config.train.eval_every_epochs=0"]) == 0
    capsys.readouterr()
    code = certify.main(["--config", QUICKSTART, "--checkpoint", workdir, "--out", str(tmp_path / "c.tsv"),
                        "--config.model.width=4", "--config.certify.parallel=hosts"] + CERTIFY)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: certify.parallel: must be one of samples, examples, got 'hosts'"]


def _shard(path, shard, shards, indices, **settings):
    """A certify TSV shard as `certify.parallel = examples` writes it, with made-up rows."""
    header = {"mode": "certify", "n": 100, "seed": 0, "devices": 4, "shard": shard, "shards": shards, **settings}
    with open(path, "w") as f:
        f.write("# jaxsmooth certify " + json.dumps(header) + "\n")
        f.write("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
        for i in indices:
            f.write(f"{i}\t{i % 10}\t{i % 10}\t0.{i + 1}\t1\t0:00:00.1\n")
    return str(path)


def test_analyze_merges_the_shards_of_one_run(tmp_path):
    # each process timed its own XLA options: the shards of one run may record different ones
    a = _shard(tmp_path / "c.shard0of2.tsv", 0, 2, [0, 2, 4], xla_options={"ynn": "DOT"})
    b = _shard(tmp_path / "c.shard1of2.tsv", 1, 2, [1, 3], xla_options={"ynn": "DOT,ELTWISE"})
    other = _shard(tmp_path / "d.tsv", 0, 1, [7])
    runs = analysis.read_runs([b, other, a])
    assert [r.label for r in runs] == ["c", "d"]
    np.testing.assert_array_equal(runs[0].columns["idx"], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(runs[0].columns["radius"], [0.1, 0.2, 0.3, 0.4, 0.5])
    merged = analysis.write_merged([a, b], str(tmp_path / "c.tsv"))
    again = analysis.read_run(str(tmp_path / "c.tsv"))
    np.testing.assert_array_equal(again.columns["idx"], merged.columns["idx"])
    assert "shard" not in again.settings and again.settings["shards_merged"] == 2


@pytest.mark.parametrize("case, message", [
    ("other run", r"c.shard1of2.tsv: is a shard of another run than .*c.shard0of2.tsv: seed=1, not 0"),
    ("missing", r"c.tsv: is certified in 2 shards and the files given lacks shard\(s\) 1"),
    ("repeated", r"c.tsv: is certified in 2 shards and the files given lacks shard\(s\) 1; repeats shard\(s\) 0"),
    ("overlap", r"c.tsv: example 2 is in more than one shard"),
])
def test_analyze_refuses_shards_of_different_runs(tmp_path, case, message):
    from jaxsmooth.errors import UserError

    paths = [_shard(tmp_path / "c.shard0of2.tsv", 0, 2, [0, 2])]
    if case == "other run":
        paths.append(_shard(tmp_path / "c.shard1of2.tsv", 1, 2, [1, 3], seed=1))
    elif case == "repeated":
        paths.append(paths[0])
    elif case == "overlap":
        paths.append(_shard(tmp_path / "c.shard1of2.tsv", 1, 2, [1, 2]))
    with pytest.raises(UserError, match=message):
        analysis.read_runs(paths)
