"""Deterministic smoothing on digits: from a `standard` model, `heat` and `bootcamp` certify far better.

The suite of ``python -m jaxsmooth.report deterministic`` (configs/digits_*.py),
certified on the 360 test digits with n = 1,000 at sigma = 0.25. The CLI runs
in a subprocess on one CPU device (about 2 minutes; the 8 fake devices of
this test process would take 5 times as long), then `run_suite` in this
process resumes the finished report, training and certifying nothing again.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from jaxsmooth import report
from jaxsmooth.benchmarks import deterministic

from conftest import ROOT, one_device_env

HALF_SIGMA = 0.125


@pytest.fixture(scope="module")
def rows(tmp_path_factory, quickstart_model):
    workdir = str(tmp_path_factory.mktemp("deterministic"))
    shutil.copytree(quickstart_model[0], os.path.join(workdir, "gaussian"))  # its gaussian run: resumed, not trained
    subprocess.run([sys.executable, "-m", "jaxsmooth.report", "deterministic", "--suite", "digits", "--workdir",
                    workdir, "--n", "1000"], check=True, env=one_device_env(), cwd=ROOT, stdout=subprocess.DEVNULL)
    with open(os.path.join(workdir, "times.json")) as f:
        times = json.load(f)
    out = deterministic.run_suite("digits", workdir, n=1000, radii=(0.0, HALF_SIGMA, 0.25))
    assert {r.name: r.train_seconds for r in out} == times  # resumed: nothing trained again
    return {r.name: r for r in out}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["heat", "bootcamp"])
def test_retraining_a_standard_model_raises_certified_accuracy_and_acr(rows, name):
    standard, gaussian, ours = rows["standard"], rows["gaussian"], rows[name]
    at = lambda r: float(r.summary.certified_accuracy[1])  # radius sigma / 2
    assert at(ours) >= at(standard) + 0.015, (at(ours), at(standard))
    assert ours.summary.acr >= standard.summary.acr + 0.04, (ours.summary.acr, standard.summary.acr)
    # within reach of noise training from scratch
    assert ours.summary.acr >= gaussian.summary.acr - 0.05, (ours.summary.acr, gaussian.summary.acr)
    assert ours.test_accuracy >= 0.93


@pytest.mark.slow
def test_the_report_table_has_a_row_per_run(rows):
    table = deterministic.markdown(list(rows.values())).splitlines()
    assert table[0].startswith("| run | clean acc (1 pass) | cert. r = 0 | cert. r = 0.125 | cert. r = 0.25 | ACR |")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| standard", "| gaussian", "| heat", "| bootcamp"]
    assert rows["standard"].lbound_median is None and rows["heat"].lbound_mean > 0
    # one forward pass agrees with PREDICT (n = 100) for most digits once the model is smooth
    assert rows["heat"].agreement >= 0.9


@pytest.mark.parametrize("args, field", [
    (["--suite", "cifar"], "--suite"),
    (["--runs", "heat"], "--runs"),
    (["--radii", "0,a"], "--radii"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, field):
    assert report.main(["deterministic", "--workdir", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err
