"""The fault-injection suite (python -m jaxsmooth.bench faults), small: kills, a stop, a copy, full disks, cuts."""

import json
import os
import subprocess
import sys

import pytest

from jaxsmooth.benchmarks import faults

from conftest import ROOT

SHORT = ["--config.model.width=4", "--config.train.num_epochs=3", "--config.train.checkpoint_every_steps=11",
         "--config.train.eval_every_epochs=0"]


@pytest.mark.slow
def test_every_injected_fault_is_survived_to_a_bit_identical_end(tmp_path):
    """Train: a SIGKILL during a checkpoint save, a SIGTERM, a second copy, a full disk, a cut checkpoint; certify:
    a SIGKILL mid-row, a full disk, a cut last row. Each chain ends identical to its undisturbed run."""
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    run = subprocess.run([sys.executable, "-m", "jaxsmooth.bench", "faults", "--workdir", str(tmp_path / "suite"),
                          "--kills", "2", "--terms", "1", "--copies", "1", "--disks", "2", "--cuts", "2",
                          "--per-chain", "8", "--n", "200", "--seed", "3", "--json", str(out)] + SHORT,
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.load(open(out))
    injected = [f for f in report["faults"] if f["injected"]]
    assert all(f["survived"] and not f["failed"] for f in injected), injected
    assert report["rows_lost"] == report["rows_twice"] == report["rows_different"] == 0
    assert report["array_differences"] == report["metrics_lines_different"] == report["unfinished_chains"] == 0
    kinds = {(f["kind"], f["job"]) for f in injected}
    assert {("kill", "certify"), ("copy", "train"), ("cut", "certify")} <= kinds, kinds
    if "disk faults skipped" not in run.stderr:
        assert {("disk", "train"), ("disk", "certify")} <= kinds, kinds
    assert report["headline"] == f"{len(injected)} faults injected, {len(injected)} survived, 0 rows lost or " \
                                 "duplicated, 0 parameter differences"
    assert report["headline"] in run.stdout


def test_plan_shares_faults_between_train_and_certify_and_never_starts_with_a_cut():
    import numpy as np

    chains = faults.plan({"kill": 5, "term": 2, "copy": 1, "disk": 0, "cut": 3}, 4, np.random.default_rng(0))
    by_job = {job: sum((kinds for j, kinds in chains if j == job), []) for job in ("train", "certify")}
    assert sorted(by_job["train"]) == sorted(["kill"] * 3 + ["term", "copy"] + ["cut"] * 2)
    assert sorted(by_job["certify"]) == sorted(["kill"] * 2 + ["term", "cut"])
    assert all(len(kinds) <= 4 for _, kinds in chains)
    assert all(kinds[0] != "cut" for _, kinds in chains if set(kinds) != {"cut"})


def test_compare_certify_counts_lost_twice_and_different_rows(tmp_path):
    head = "idx\tlabel\tpredict\tlbound_mc\ttime\n"
    (tmp_path / "ref.tsv").write_text(head + "0\t1\t1\t0.25\t1.5\n1\t2\t2\t0.5\t1.5\n2\t3\t3\t0.5\t1.5\n"
                                      "3\t3\t3\t0.30000001\t1.5\n")
    (tmp_path / "got.tsv").write_text(head + "0\t1\t1\t0.25\t9.5\n1\t2\t5\t0.5\t1.5\n1\t2\t5\t0.5\t1.5\n"
                                      "3\t3\t3\t0.30000002\t1.5\n")  # 3: lbound_mc within float32 rounding
    assert faults.compare_certify(str(tmp_path / "got.tsv"), str(tmp_path / "ref.tsv")) == {
        "rows_lost": 1, "rows_twice": 1, "rows_different": 1}
    (tmp_path / "got.tsv").write_text(head + "0\t1\t1\t0.2501\t1.5\n")
    assert faults.compare_certify(str(tmp_path / "got.tsv"), str(tmp_path / "ref.tsv"))["rows_different"] == 1
