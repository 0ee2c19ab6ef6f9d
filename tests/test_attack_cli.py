"""The attack CLI on a trained quick-start model, and the adversarial-distance analysis of attack TSVs."""

import json
import math
import os
import re

import numpy as np
import pytest

from jaxsmooth import analysis, analyze, attack, cli, data, loader
from jaxsmooth.errors import UserError

from helpers import QUICKSTART, SMALL, copy_sidecar, sidecar_settings, tsv_rows

FAST = ["--steps", "5", "--rounds", "3", "--batch", "2", "--no-progress"]
COLUMNS = ["idx", "label", "predict", "success", "distance", "time"]


def _attack(workdir, out, *extra):
    return attack.main(["--config", QUICKSTART, "--checkpoint", workdir, "--out", str(out)] + SMALL + FAST
                      + list(extra))


def _clean_predictions(workdir, idx):
    config = cli.load_config(QUICKSTART, [s.removeprefix("--config.") for s in SMALL])
    model = loader.load_model(workdir, fold_batch_norm=False)
    images, _ = data.load(config.data.name).test.get(np.asarray(idx))
    logits, _ = model.apply(model.params, model.model_state, np.asarray(images, np.float32) / 255, train=False)
    return np.argmax(logits, -1).tolist()


def _check_rows(rows):
    for r in rows:
        label, predict, success, distance = int(r[1]), int(r[2]), int(r[3]), float(r[4])
        assert success in (0, 1)
        assert math.isfinite(distance) == (success == 1), r
        if predict != label:
            assert success == 1 and distance == 0.0, r
        else:
            assert distance > 0.0, r


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pgd", "ddn"])
def test_rows_columns_and_distances(small_model, tmp_path, capsys, name):
    out = tmp_path / f"{name}.tsv"
    assert _attack(small_model, out, "--attack", name, "--skip", "20", "--max", "100") == 0
    settings = sidecar_settings(out, "attack")
    assert settings["attack"] == name and settings["smoothed"] is False and settings["steps"] == 5
    header, rows = tsv_rows(out)
    assert header == COLUMNS
    assert [int(r[0]) for r in rows] == [0, 20, 40, 60, 80]
    _check_rows(rows)
    assert [int(r[2]) for r in rows] == _clean_predictions(small_model, [0, 20, 40, 60, 80])
    import pandas as pd

    frame = pd.read_csv(out, delimiter="\t")
    assert list(frame.columns) == COLUMNS and frame["idx"].tolist() == [0, 20, 40, 60, 80]
    # pandas before 3.0 parses floats to within an ulp by default (its C parser), not to the nearest double
    assert frame["distance"].tolist() == pytest.approx([float(r[4]) for r in rows], rel=1e-15, abs=0)
    if name == "pgd":  # the bisection's search range
        assert all(float(r[4]) <= 4.0 or r[4] == "inf" for r in rows)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    success = np.mean([int(r[3]) for r in rows])
    assert summary.startswith(f"{name}: 5 examples in {out} (5 this run), success rate {success:.3f}, median distance")


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_rows(small_model, tmp_path, capsys):
    full, cut = tmp_path / "full.tsv", tmp_path / "cut.tsv"
    args = ["--attack", "ddn", "--skip", "30", "--max", "150"]
    assert _attack(small_model, full, *args) == 0
    lines = full.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:-2]) + lines[-2][:5])  # the last row lost, the one before cut mid-line
    copy_sidecar(full, cut)
    assert _attack(small_model, cut, *args) == 0
    assert "(2 this run)" in capsys.readouterr().out
    drop_time = lambda p: [r[:5] for r in tsv_rows(p)[1]]
    assert drop_time(cut) == drop_time(full) and len(drop_time(full)) == 5
    # a different setting refuses to resume the file
    assert _attack(small_model, cut, "--attack", "ddn", "--skip", "30", "--max", "150", "--steps", "6") == 2
    assert capsys.readouterr().err.startswith("error: --out: ")


@pytest.mark.slow
def test_smoothed_attack_and_analyze_table(small_model, tmp_path, capsys):
    out = tmp_path / "smoothed.tsv"
    assert _attack(small_model, out, "--attack", "ddn", "--smoothed", "--num-noise", "4", "--skip", "50",
                   "--max", "150") == 0
    run = analysis.read_attack(str(out))
    config = cli.load_config(QUICKSTART, [s.removeprefix("--config.") for s in SMALL])
    assert run.settings["smoothed"] is True and run.settings["sigma"] == config.objective.sigma
    assert run.settings["num_noise"] == 4 and run.columns["idx"].tolist() == [0, 50, 100]
    assert run.label == "run"  # the checkpoint's base name
    _, rows = tsv_rows(out)
    for r in rows:
        assert math.isfinite(float(r[4])) == (r[3] == "1")
    # analyze: the attack file's table, one row per model
    pgd = tmp_path / "pgd.tsv"
    assert _attack(small_model, pgd, "--attack", "pgd", "--skip", "50", "--max", "150") == 0
    capsys.readouterr()
    png = str(tmp_path / "curve.png")
    assert analyze.main([str(pgd), str(out), "--curve", png]) == 0
    table = capsys.readouterr().out
    (row,) = [line for line in table.splitlines() if line.startswith("| run |")]
    median, mean = analysis.median_and_mean(analysis.read_attack(str(pgd)).columns["distance"])
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["run", "3", "–", "–"]
    assert cells[4] == ("∞" if math.isinf(median) else f"{median:.3f}")
    assert os.path.getsize(png) > 0


@pytest.mark.parametrize("extra, field", [
    (["--attack", "fgsm"], "--attack"),
    (["--attack", "pgd", "--steps", "0"], "--steps"),
    (["--attack", "pgd", "--max-epsilon", "-1"], "--max-epsilon"),
    (["--attack", "ddn", "--smoothed", "--num-noise", "0"], "--num-noise"),
    (["--attack", "ddn", "--loss", "mse"], "--loss"),
    (["--attack", "ddn", "--sigma", "0.5"], "--sigma"),
    (["--attack", "ddn", "--smoothed", "--sigma", "0"], "--sigma"),
    (["--attack", "ddn", "--topk", "10"], "--topk"),
    (["--attack", "ddn", "--batch", "0"], "--batch"),
    (["--attack", "ddn", "--skip", "0"], "--skip"),
])
def test_bad_input_is_one_line(untrained_model, tmp_path, capsys, extra, field):
    assert _attack(untrained_model, tmp_path / "x.tsv", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(f"error: {re.escape(field)}: ", err[0]), err
    assert not (tmp_path / "x.tsv").exists()


# --- analysis of hand-built attack files ---

def _write_attack(path, name, rows, checkpoint="runs/m1", tail=""):
    """rows: (idx, label, predict, distance); success = finite distance."""
    settings = {"attack": name, "smoothed": False, "checkpoint": checkpoint}
    lines = ["# jaxsmooth attack " + json.dumps(settings), "\t".join(COLUMNS)]
    for idx, label, predict, distance in rows:
        lines.append(f"{idx}\t{label}\t{predict}\t{int(math.isfinite(distance))}\t{distance!r}\t0:00:00.5")
    path.write_text("\n".join(lines) + "\n" + tail)
    return str(path)


def _write_certify(path, rows, checkpoint="runs/m1"):
    """rows: (idx, label, predict, lbound_model)."""
    settings = {"mode": "certify", "checkpoint": checkpoint}
    lines = ["# jaxsmooth certify " + json.dumps(settings), "\t".join(
        ["idx", "label", "predict", "radius", "correct", "time", "lbound_mc", "lbound_model"])]
    for idx, label, predict, lbound in rows:
        lines.append(f"{idx}\t{label}\t{predict}\t0.5\t{int(label == predict)}\t0:00:01\t{lbound / 2}\t{lbound}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


PGD = [(0, 1, 2, 0.0), (1, 1, 1, 0.5), (2, 3, 3, 1.0), (3, 4, 4, math.inf), (4, 0, 0, 2.0)]
DDN = [(0, 1, 2, 0.0), (1, 1, 1, 0.25), (2, 3, 3, 0.75), (3, 4, 4, 1.25)]
CERT = [(0, 1, 1, 0.3), (1, 1, 2, 0.4), (2, 3, 3, 0.1), (3, 4, 4, 0.2)]


@pytest.fixture
def files(tmp_path):
    return (_write_attack(tmp_path / "pgd.tsv", "pgd", PGD), _write_attack(tmp_path / "ddn.tsv", "ddn", DDN),
            _write_certify(tmp_path / "cert.tsv", CERT))


def test_distance_table_medians_and_means(files):
    pgd, ddn, cert = files
    attacks = [analysis.read_attack(pgd), analysis.read_attack(ddn)]
    (row,) = analysis.distance_rows(attacks, [analysis.read_run(cert, "m1")])
    assert row.label == "m1" and row.n == (4, 5, 4)
    assert row.pgd == (1.0, 0.875)  # median of 0, .5, 1, 2, inf; mean of the finite four
    assert row.ddn == (0.5, 0.5625)
    assert row.lbound == pytest.approx((0.15, 0.15))  # 0.3, 0 (misclassified), 0.1, 0.2
    (mc,) = analysis.distance_rows([], [analysis.read_run(cert, "m1")], lbound_column="lbound_mc")
    assert mc.lbound == pytest.approx((0.075, 0.075)) and mc.pgd is None
    table = analysis.distance_table(attacks, [analysis.read_run(cert, "m1")])
    assert "| m1 | 4/5/4 | 0.150 | 0.150 | 1.000 | 0.875 | 0.500 | 0.562 |" in table
    assert analysis.median_and_mean([0.0, math.inf, math.inf]) == (math.inf, 0.0)


def test_analyze_cli_groups_files_by_model(tmp_path, files, capsys):
    pgd, ddn, cert = files
    other = _write_attack(tmp_path / "pgd2.tsv", "pgd", [(0, 1, 1, math.inf), (1, 2, 2, math.inf)],
                          checkpoint="runs/m2/")
    md = str(tmp_path / "t.md")
    assert analyze.main([pgd, ddn, cert, other, "--markdown", md]) == 0
    out = capsys.readouterr().out
    assert out == open(md).read()
    assert out.splitlines()[2] == "| m1 | 4/5/4 | 0.150 | 0.150 | 1.000 | 0.875 | 0.500 | 0.562 |"
    assert out.splitlines()[3] == "| m2 | 2 | – | – | ∞ | – | – | – |"
    assert analyze.main([pgd, ddn, "--labels", "a,b"]) == 0
    assert [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["| a", "| b"]


@pytest.mark.parametrize("args, field", [
    (["PGD", "PGD"], "PGD"),  # two pgd files for one model
    (["PGD", "--radii", "0,1"], "--radii"),
    (["PGD", "--lbound", "x"], "--lbound"),
    (["PGD", "--labels", "a,b"], "--labels"),
    (["CERT", "--curve", "c.png"], "--curve"),
])
def test_analyze_cli_attack_errors(files, capsys, args, field):
    pgd, _, cert = files
    args = [pgd if a == "PGD" else cert if a == "CERT" else a for a in args]
    field = pgd if field == "PGD" else field
    assert analyze.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err


def test_bad_attack_rows(tmp_path):
    path = tmp_path / "bad.tsv"
    _write_attack(path, "pgd", PGD)
    path.write_text(path.read_text().replace("1\t0.5\t", "0\t0.5\t"))  # success 0 with a finite distance
    with pytest.raises(UserError, match="disagrees"):
        analysis.read_attack(str(path))
    killed = _write_attack(tmp_path / "killed.tsv", "pgd", PGD, tail="5\t1\t1")
    assert analysis.read_attack(killed).num_examples == 5 and analysis.read_attack(killed).ignored_line == 8


def test_attack_curve_is_the_fraction_attacked(files):
    pgd, ddn, _ = files
    runs = [analysis.read_attack(pgd), analysis.read_attack(ddn, "other")]
    fig = analysis.attack_curve_figure(runs)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["m1 pgd", "other ddn"]
    for line, rows in zip(lines, (PGD, DDN)):
        x, y = line.get_xdata(), line.get_ydata()
        assert x[0] == 0.0 and x[-1] == 2.0  # the largest finite distance
        expected = [np.mean([r[3] <= t for r in rows]) for t in x]
        np.testing.assert_array_equal(y, expected)
