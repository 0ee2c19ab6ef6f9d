"""Accuracy under ell_2 PGD over a radius grid (nal §5, Fig. 1): library, CLI, analysis, nal vs gaussian on digits."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxsmooth import analysis, attack, cli, data, loader, noise, values
from jaxsmooth.analysis import attacks as attack_analysis
from jaxsmooth.attacks import accuracy_under_pgd, make_accuracy, runner
from jaxsmooth.errors import UserError

from conftest import ROOT, one_device_env
from helpers import QUICKSTART, SMALL, copy_sidecar, sidecar_settings

DIGITS_NAL = os.path.join(ROOT, "configs", "digits_nal.py")
COLUMNS = ["idx", "label", "radius", "correct", "correct_noisy", "time"]
MAGIC = "# jaxsmooth attack-accuracy "


# --- a linear classifier: the closed form ---

SHAPE = (4, 4, 1)
RADII = (0.0, 0.2, 0.45, 0.7, 0.95)


def _linear_apply(params, model_state, x, train=False):
    del train
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"], model_state


def _linear_problem(n=200, seed=0):
    """A two-class linear model with boundary v.(x - 1/2) = 0, and inputs at signed distance s from it.

    Inputs stay inside [0.075, 0.925] after any move of norm <= 1 towards the
    boundary (|s| <= 1, |v_i| / ||v|| <= 0.375, orthogonal jitter <= 0.05), so
    the clip of PGD is inactive and an example is robust at eps iff it is
    correctly classified and |s| > eps.
    """
    rng = np.random.default_rng(seed)
    dim = int(np.prod(SHAPE))
    v = rng.choice([-1.0, 1.0], dim) * rng.uniform(0.8, 1.2, dim)
    unit = v / np.linalg.norm(v)
    s = rng.uniform(-1.0, 1.0, 4 * n)
    s = s[np.all(np.abs(np.abs(s)[:, None] - np.asarray(RADII)[None]) > 0.01, axis=1)][:n]
    jitter = rng.uniform(-1, 1, (n, dim))
    jitter -= (jitter @ unit)[:, None] * unit
    jitter *= 0.05 / np.max(np.abs(jitter), axis=1, keepdims=True)
    x = 0.5 + s[:, None] * unit + jitter
    predicted = (s > 0).astype(np.int32)
    flip = rng.uniform(size=n) < 0.2
    labels = np.where(flip, 1 - predicted, predicted).astype(np.int32)
    params = {"w": np.stack([np.zeros(dim), v], axis=1).astype(np.float32),
              "b": np.asarray([0.0, -0.5 * v.sum()], np.float32)}
    return params, x.reshape(n, *SHAPE).astype(np.float32), labels, s


def test_linear_accuracy_is_the_closed_form():
    params, x, labels, s = _linear_problem()
    key = noise.attack_key(noise.root_key(0))
    correct, correct_noisy = accuracy_under_pgd(_linear_apply, params, {}, x, labels, RADII, key,
                                                test_noise_sigma=0.25)
    assert correct.shape == correct_noisy.shape == (len(RADII), len(labels))
    clean = labels == (s > 0)
    for r, radius in enumerate(RADII):
        robust = clean & (np.abs(s) > radius)
        np.testing.assert_array_equal(correct[r], robust, err_msg=f"radius {radius}")
    assert correct[0].mean() == clean.mean() and 0.7 < clean.mean() < 0.9
    assert correct[-1].mean() < correct[1].mean()  # the grid spans robust and broken examples
    # the test-time noise: one draw per example from fold_in(key, TEST_NOISE_STREAM), at radius 0 on the clean input
    z = noise.isotropic(jax.random.fold_in(key, runner.TEST_NOISE_STREAM), np.arange(len(labels), dtype=np.int32),
                        SHAPE, 0.25)
    logits, _ = _linear_apply(params, {}, np.asarray(x + z))
    np.testing.assert_array_equal(correct_noisy[0], np.argmax(logits, -1) == labels)
    assert not np.array_equal(correct_noisy[0], correct[0])


def test_tiny_test_noise_changes_nothing_and_one_compilation_serves_all_radii():
    params, x, labels, s = _linear_problem(n=40, seed=1)
    fn = make_accuracy(_linear_apply, test_noise_sigma=1e-6, steps=20)
    key = noise.attack_key(noise.root_key(3))
    index = np.arange(40, dtype=np.int32)
    for radius in RADII:
        for half in (slice(0, 20), slice(20, 40)):
            correct, correct_noisy = fn(params, {}, x[half], labels[half], index[half], np.float32(radius), key)
            np.testing.assert_array_equal(correct, correct_noisy)
            np.testing.assert_array_equal(correct, (labels[half] == (s[half] > 0)) & (np.abs(s[half]) > radius))
    assert fn._cache_size() == 1


@pytest.mark.parametrize("radii, match", [([], "is empty"), ([0.5, -0.1], "-0.1 is not a radius"),
                                          ([0.5, float("nan")], "nan is not a radius"), ("0,a", "'a' is not a number")])
def test_bad_radii(radii, match):
    with pytest.raises(UserError, match=match):
        values.radii(radii)
    assert values.radii("1,0.5,0.5") == values.radii([0.5, 1.0]) == (0.5, 1.0)  # sorted, each once


# --- the CLI on a small quick-start model ---

def _accuracy(workdir, out, *extra):
    return attack.main(["--config", QUICKSTART, "--checkpoint", workdir, "--out", str(out), "--no-progress"] + SMALL
                      + list(extra))


ARGS = ["--mode", "accuracy", "--radii", "0,0.5", "--steps", "3", "--batch", "2", "--skip", "40", "--max", "200"]


def _rows(path):
    with open(path) as f:
        lines = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    return lines[0], lines[1:]


@pytest.mark.slow
def test_cli_rows_table_and_resume(small_model, tmp_path, capsys):
    out = tmp_path / "acc.tsv"
    assert _accuracy(small_model, out, *ARGS) == 0
    printed = capsys.readouterr().out.splitlines()
    settings = sidecar_settings(out, "attack-accuracy")
    config = cli.load_config(QUICKSTART, [s.removeprefix("--config.") for s in SMALL])
    assert settings["mode"] == "accuracy" and settings["radii"] == [0.0, 0.5] and settings["steps"] == 3
    assert settings["test_noise_sigma"] == config.objective.sigma
    header, rows = _rows(out)
    assert header == COLUMNS
    # batches of 2 examples: radius 0 then 0.5 within each batch
    assert [(int(r[0]), float(r[2])) for r in rows] == [
        (0, 0.0), (40, 0.0), (0, 0.5), (40, 0.5), (80, 0.0), (120, 0.0), (80, 0.5), (120, 0.5), (160, 0.0),
        (160, 0.5)]
    assert all(r[3] in ("0", "1") and r[4] in ("0", "1") for r in rows)
    # radius 0: the clean prediction
    model = loader.load_model(small_model, fold_batch_norm=False)
    idx = np.asarray([0, 40, 80, 120, 160])
    images, labels = data.load(config.data.name).test.get(idx)
    logits, _ = model.apply(model.params, model.model_state, np.asarray(images, np.float32) / 255, train=False)
    clean = {int(i): int(c) for i, c in zip(idx, np.argmax(logits, -1) == labels)}
    assert {int(r[0]): int(r[3]) for r in rows if float(r[2]) == 0.0} == clean
    # the printed summary and table
    assert printed[0] == f"accuracy under ell_2 PGD (3 steps): 5 examples x 2 radii in {out} (10 rows this run)"
    acc = attack_analysis.read_accuracy(str(out))
    assert printed[-1].startswith("| run | 5 | " + f"{np.mean(list(clean.values())):.3f} |")
    assert attack_analysis.is_accuracy_file(str(out)) and not analysis.is_attack_file(str(out))
    assert acc.label == "run"
    # a killed job resumes to the same rows
    lines = out.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.tsv"
    cut.write_text("".join(lines[:-2]) + lines[-2][:3])
    copy_sidecar(out, cut)
    assert _accuracy(small_model, cut, *ARGS) == 0
    assert "(2 rows this run)" in capsys.readouterr().out
    assert [r[:5] for r in _rows(cut)[1]] == [r[:5] for r in rows]
    assert _accuracy(small_model, cut, *ARGS) == 0
    assert "(0 rows this run)" in capsys.readouterr().out
    # another setting, or the distance mode, refuses the file
    assert _accuracy(small_model, cut, *ARGS, "--steps", "4") == 2
    assert capsys.readouterr().err.startswith("error: --out: ")
    assert _accuracy(small_model, cut, "--attack", "pgd") == 2
    assert capsys.readouterr().err.startswith("error: --out: ")


@pytest.mark.parametrize("extra, field", [
    (["--mode", "accuracy"], "--radii"),
    (["--mode", "accuracy", "--radii", "0,-0.5"], "--radii"),
    (["--mode", "accuracy", "--radii", "0,a"], "--radii"),
    (["--mode", "accuracy", "--radii", "0.5", "--attack", "ddn"], "--attack"),
    (["--mode", "accuracy", "--radii", "0.5", "--smoothed"], "--smoothed"),
    (["--mode", "accuracy", "--radii", "0.5", "--sigma", "0.5"], "--sigma"),
    (["--mode", "accuracy", "--radii", "0.5", "--test-noise-sigma", "0"], "--test-noise-sigma"),
    (["--mode", "accuracy", "--radii", "0.5", "--steps", "0"], "--steps"),
    (["--attack", "pgd", "--radii", "0.5"], "--radii"),
    (["--attack", "pgd", "--test-noise-sigma", "0.5"], "--test-noise-sigma"),
    ([], "--attack"),
])
def test_bad_input_is_one_line(untrained_model, tmp_path, capsys, extra, field):
    assert _accuracy(untrained_model, tmp_path / "x.tsv", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(f"error: {re.escape(field)}: ", err[0]), err
    assert not (tmp_path / "x.tsv").exists()


# --- analysis of hand-built accuracy files ---

def _write_accuracy(path, rows, checkpoint, sigma=0.25, tail=""):
    """rows: (idx, radius, correct, correct_noisy); label 3."""
    settings = {"mode": "accuracy", "attack": "pgd", "checkpoint": checkpoint, "test_noise_sigma": sigma}
    lines = [MAGIC + json.dumps(settings), "# a comment", "\t".join(COLUMNS)]
    lines += [f"{i}\t3\t{r!r}\t{c}\t{cn}\t0:00:00.01" for i, r, c, cn in rows]
    path.write_text("\n".join(lines) + "\n" + tail)
    return str(path)


# m1: 4 examples at radii 0, 0.5, 1; m2: 2 examples at radii 0, 0.5
M1 = [(0, 0.0, 1, 1), (1, 0.0, 1, 1), (2, 0.0, 1, 0), (3, 0.0, 0, 0),
      (0, 0.5, 1, 1), (1, 0.5, 1, 0), (2, 0.5, 0, 1), (3, 0.5, 0, 0),
      (0, 1.0, 1, 1), (1, 1.0, 0, 0), (2, 1.0, 0, 1), (3, 1.0, 0, 1)]
M2 = [(0, 0.0, 1, 1), (1, 0.0, 1, 0), (0, 0.5, 0, 1), (1, 0.5, 0, 0)]


@pytest.fixture
def accuracy_files(tmp_path):
    return (_write_accuracy(tmp_path / "a.tsv", M1, "runs/m1"),
            _write_accuracy(tmp_path / "b.tsv", M2, "runs/m2/", tail="2\t3\t0.5\t1"))


def test_accuracy_table(accuracy_files):
    runs = [attack_analysis.read_accuracy(p) for p in accuracy_files]
    assert runs[1].ignored_line == 8 and runs[1].columns["idx"].tolist() == [0, 1, 0, 1]
    radii, clean, noisy, n = attack_analysis.accuracy_by_radius(runs[0])
    assert radii.tolist() == [0.0, 0.5, 1.0] and clean.tolist() == [0.75, 0.5, 0.25]
    assert noisy.tolist() == [0.5, 0.5, 0.75] and n.tolist() == [4, 4, 4]
    table = attack_analysis.accuracy_table(runs).splitlines()
    assert table[0] == ("| model | n | ε=0 | ε=0.5 | ε=1 | ε=0 + noise σ=0.25 | ε=0.5 + noise σ=0.25 "
                        "| ε=1 + noise σ=0.25 |")
    assert table[2] == "| m1 | 4 | 0.750 | 0.500 | 0.250 | 0.500 | 0.500 | 0.750 |"
    assert table[3] == "| m2 | 2 | 1.000 | 0.000 | – | 0.500 | 0.500 | – |"
    assert len(table) == 4


def test_accuracy_figure_one_solid_and_one_dotted_line_per_model(accuracy_files, tmp_path):
    runs = [attack_analysis.read_accuracy(p) for p in accuracy_files]
    fig = attack_analysis.accuracy_figure(runs)
    lines = fig.axes[0].get_lines()
    assert [line.get_linestyle() for line in lines] == [":", "-", ":", "-"]  # nal Fig. 1: solid = with noise
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color() == lines[3].get_color()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "m1", "m1 + noise σ=0.25", "m2", "m2 + noise σ=0.25"]
    expected = [([0, 0.5, 1], [0.75, 0.5, 0.25]), ([0, 0.5, 1], [0.5, 0.5, 0.75]), ([0, 0.5], [1.0, 0.0]),
                ([0, 0.5], [0.5, 0.5])]
    for line, (x, y) in zip(lines, expected):
        np.testing.assert_array_equal(line.get_xdata(), x)
        np.testing.assert_array_equal(line.get_ydata(), y)
    png = tmp_path / "acc.png"
    fig.savefig(png)
    assert png.stat().st_size > 0


def test_bad_accuracy_files(tmp_path, accuracy_files):
    dup = _write_accuracy(tmp_path / "dup.tsv", M1 + [(0, 0.5, 1, 1)], "runs/m1")
    with pytest.raises(UserError, match="already on line"):
        attack_analysis.read_accuracy(dup)
    bad = _write_accuracy(tmp_path / "bad.tsv", [(0, 0.0, 2, 1)], "runs/m1")
    with pytest.raises(UserError, match="not 0 or 1"):
        attack_analysis.read_accuracy(bad)
    distance = tmp_path / "distance.tsv"
    distance.write_text('# jaxsmooth attack {"attack": "pgd"}\n')
    with pytest.raises(UserError, match="has no jaxsmooth attack-accuracy settings"):
        attack_analysis.read_accuracy(str(distance))
    assert not attack_analysis.is_accuracy_file(str(distance))
    assert not attack_analysis.is_accuracy_file(str(tmp_path / "missing.tsv"))


# --- nal vs gaussian on digits (the acceptance) ---

DIGITS_RADII = "0,0.25,0.5,0.75,1.0"


def _run_module(module, *args):
    subprocess.run([sys.executable, "-m", module, "--no-progress", *args], check=True, env=one_device_env(), cwd=ROOT,
                   stdout=subprocess.DEVNULL)


@pytest.mark.slow
def test_nal_matches_gaussian_under_pgd_at_the_largest_radii(quickstart_model, tmp_path):
    """Trains configs/digits_nal.py (configs/quickstart.py, gaussian: the session's) on one CPU device in
    subprocesses (the 8 fake devices of this process are 5x slower), attacks the 360 test digits, and compares
    accuracies."""
    runs = {}
    for name, config, workdir in (("nal", DIGITS_NAL, None), ("gaussian", QUICKSTART, quickstart_model[0])):
        out = str(tmp_path / f"{name}.tsv")
        if workdir is None:
            workdir = str(tmp_path / name)
            _run_module("jaxsmooth.train", "--config", config, "--workdir", workdir)
        _run_module("jaxsmooth.attack", "--config", config, "--mode", "accuracy", "--radii", DIGITS_RADII,
                    "--checkpoint", workdir, "--out", out)
        runs[name] = attack_analysis.read_accuracy(out)
    accuracy = {name: attack_analysis.accuracy_by_radius(run) for name, run in runs.items()}
    for name, (radii, clean, noisy, n) in accuracy.items():
        assert radii.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0] and n.tolist() == [360] * 5, name
        assert clean[0] >= 0.9, (name, clean)
        assert clean[-1] < clean[0] - 0.2, (name, clean)  # the grid reaches radii PGD breaks
    nal, gaussian = accuracy["nal"][1], accuracy["gaussian"][1]
    assert np.all(nal[-2:] >= gaussian[-2:]), (nal, gaussian)
