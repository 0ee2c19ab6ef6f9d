"""The train CLI: one ``error: <field>: ...`` line and exit 2 for each bad input; the real quick start."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from jaxsmooth import cli, train

from conftest import ROOT, one_device_env
from helpers import fails_with, saved_params

QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")
SMALL = ["--config.model.width=4", "--config.train.num_epochs=1", "--config.train.eval_every_epochs=0",
         "--no-progress"]


@pytest.mark.parametrize("override, field", [
    ("--config.train.batchsize=64", "train.batchsize"),
    ("--config.objective.sigma=0", "objective.sigma"),
    ("--config.objective.sigma=-1", "objective.sigma"),
    ("--config.model.name=resnet21", "model.name"),
    ("--config.objective.name=gausian", "objective.name"),
    ("--config.data.name=cifar11", "data.name"),
    ("--config.train.batch_size=60", "train.batch_size"),  # 8 devices
])
def test_bad_input_is_one_line_naming_the_field(tmp_path, capsys, override, field):
    fails_with(train.main, capsys, ["--config", QUICKSTART, "--workdir", str(tmp_path / "w"), override] + SMALL, field)


def test_npz_with_missing_keys_or_wrong_dtype(tmp_path, capsys):
    x = np.zeros((16, 8, 8, 1), np.uint8)
    y = np.zeros((16,), np.int64)
    np.savez(tmp_path / "missing.npz", x_train=x, y_train=y, x_test=x)
    np.savez(tmp_path / "float.npz", x_train=x.astype(np.float32), y_train=y, x_test=x, y_test=y)
    for name, needle in (("missing", "y_test"), ("float", "uint8")):
        line = fails_with(train.main, capsys, ["--config", QUICKSTART, "--workdir", str(tmp_path / name),
                                    f"--config.data.name=npz:{tmp_path / name}.npz"] + SMALL, "data.name")
        assert needle in line


def test_unreadable_checkpoint_through_the_cli(tmp_path, capsys):
    workdir = str(tmp_path / "w")
    os.makedirs(os.path.join(workdir, "checkpoints", "10", "default"))
    with open(os.path.join(workdir, "checkpoints", "10", "default", "_METADATA"), "w") as f:
        f.write("{not json")
    fails_with(train.main, capsys, ["--config", QUICKSTART, "--workdir", workdir] + SMALL, "checkpoint")


def _train_cmd(workdir, *extra):
    return [sys.executable, "-m", "jaxsmooth.train", "--config", QUICKSTART, "--workdir", workdir, *extra]


@pytest.mark.slow
def test_quickstart_reaches_the_accuracy_it_promises(quickstart_model):
    workdir, stdout = quickstart_model  # the README's command, on one CPU device
    final = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))][-1]
    assert final["test_accuracy"] >= 0.96, final
    assert final["test_noisy_accuracy"] >= 0.90, final
    assert f"clean accuracy {final['test_accuracy']:.4f}" in stdout
    assert {"config.json", "model.json", "metrics.jsonl", "checkpoints"} <= set(os.listdir(workdir))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    args = ["--no-progress", "--config.train.num_epochs=8", "--config.train.checkpoint_every_steps=11",
            "--config.train.eval_every_epochs=0"]
    whole = str(tmp_path / "whole")
    assert subprocess.run(_train_cmd(whole, *args), env=one_device_env(), cwd=ROOT, capture_output=True).returncode == 0

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(_train_cmd(killed, *args), env=one_device_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = os.path.join(killed, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(ckpts) and any(d.isdigit() and int(d) >= 22 for d in os.listdir(ckpts)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    total = 8 * (1437 // 64)
    assert not os.path.isdir(os.path.join(ckpts, str(total)))

    resumed = subprocess.run(_train_cmd(killed, *args), env=one_device_env(), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    chex.assert_trees_all_close(saved_params(killed, total), saved_params(whole, total), atol=0, rtol=0)


def test_keyword_arguments_equal_the_parsed_flags_and_refuse_bad_names():
    from jaxsmooth import attack, certify, cli
    from jaxsmooth.errors import UserError

    argv = ["--checkpoint", "w", "--out", "o.tsv", "--n", "500", "--sigma-from", "s", "--radii", "0.25,0.5",
            "--sequential", "--noise", "gaussian"]
    parsed = certify._parser().parse_args(argv)
    given = cli.keyword_arguments(certify._parser(), dict(checkpoint="w", out="o.tsv", n="500", sigma_from="s",
                                                          radii=[0.25, 0.5], sequential=True, noise="gaussian"))
    assert vars(given) == vars(parsed)
    assert cli.keyword_arguments(certify._parser(), dict(out="o.tsv", n=500)).n == 500
    for options, field in [(dict(out="o.tsv", sigma_form="s"), "sigma_form"),  # a misspelt flag
                           (dict(checkpoint="w"), "out"),  # required
                           (dict(out="o.tsv", noise="uniform"), "noise"),  # outside its choices
                           (dict(out="o.tsv", n="many"), "n")]:  # not its type
        with pytest.raises(UserError) as e:
            cli.keyword_arguments(certify._parser(), options)
        assert e.value.field == field
    with pytest.raises(UserError) as e:
        attack.write(out="o.tsv")  # refused before anything is read or written
    assert e.value.field == "checkpoint" and not os.path.exists("o.tsv")


@pytest.mark.parametrize("program", ["train", "certify", "attack"])
def test_helps_show_config_overrides_defaults_and_choices(program):
    """--help names the --config.FIELD=VALUE form, each option's default and the choices the program takes."""
    import importlib

    text = " ".join(importlib.import_module(f"jaxsmooth.{program}")._parser().format_help().split())
    assert "--config.FIELD=VALUE" in text
    expected = {"train": [], "attack": ["{pgd,ddn}", "{ce,kl}", "(default: 20)", "(default: test)"],
                "certify": ["{lattice,gaussian}", "(default: 100000)", "(default: 100)", "(default: 0.001)",
                            "(default: 1000)", "(default: 1)", "(default: certify)", "(default: test)"]}[program]
    assert [e for e in expected if e not in text] == []


def test_the_help_formatter_adds_a_default_only_where_the_help_says_none():
    p = cli.parser("x", "")
    p.add_argument("--a", default=3, help="a number")
    p.add_argument("--b", default=None, help="a path")
    p.add_argument("--c", default=5, help="five (default: five)")
    text = " ".join(p.format_help().split())
    assert "a number (default: 3)" in text and "a path --c" in text and "five (default: five) " in text + " "


@pytest.mark.parametrize("bad", ["0.25,x", "0.5,-1", ""])
def test_a_bad_radii_is_one_line_worded_alike_by_every_program_that_takes_radii(bad, tmp_path, capsys):
    from jaxsmooth import analyze, attack, certify, report

    out = str(tmp_path / "o.tsv")
    programs = [(certify.main, ["--checkpoint", "w", "--out", out, "--sequential"]),
                (attack.main, ["--checkpoint", "w", "--out", out, "--mode", "accuracy"]),
                (analyze.main, [str(tmp_path / "none.tsv")]),
                (report.main, ["nal", "--workdir", str(tmp_path / "r")]),
                (report.main, ["deterministic", "--workdir", str(tmp_path / "r")])]
    lines = []
    for main, argv in programs:
        assert main(argv + ["--radii", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        lines.append(err[0])
    assert len(set(lines)) == 1 and lines[0].startswith("error: --radii: "), lines
