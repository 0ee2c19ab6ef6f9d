"""The certify CLI on a trained quick-start model: rows, resume after a kill, and one error line per bad input."""

import json
import re

import numpy as np
import pytest
from scipy import stats

from jaxsmooth import analysis, certify, cli, data, loader
from jaxsmooth.certification import noises
from jaxsmooth.errors import UserError

from helpers import QUICKSTART, SMALL, copy_sidecar, sidecar_settings, tsv_rows

FAST = ["--n0", "20", "--n", "200", "--alpha", "0.01", "--batch", "100", "--no-progress"]


def _certify(workdir, out, *extra):
    return certify.main(["--config", QUICKSTART, "--checkpoint", workdir, "--out", str(out)] + SMALL + FAST
                       + list(extra))


@pytest.mark.slow
def test_rows_follow_cohen_columns_and_statistics(small_model, tmp_path, capsys):
    out = tmp_path / "c.tsv"
    assert _certify(small_model, out, "--skip", "20", "--max", "100", "--topk", "2") == 0
    header, rows = tsv_rows(out)
    assert header[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert [int(r[0]) for r in rows] == [0, 20, 40, 60, 80]
    col = {name: i for i, name in enumerate(header)}
    for r in rows:
        predict, label, pa = int(r[col["predict"]]), int(r[col["label"]]), float(r[col["pA_lower"]])
        assert int(r[col["correct"]]) == int(predict == label)
        radius = float(r[col["radius"]])
        if predict == -1:
            assert radius == 0.0 and pa < 0.5
        else:
            assert radius == pytest.approx(0.25 * stats.norm.ppf(pa), rel=1e-12)
            assert pa == pytest.approx(stats.beta.ppf(0.01, int(r[col["count_A"]]), 200 - int(r[col["count_A"]]) + 1))
    run = analysis.read_run(str(out))
    assert run.settings["n"] == 200 and run.settings["alpha"] == 0.01 and run.settings["dtype"] == "float32"


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_rows(small_model, tmp_path, capsys):
    full, cut = tmp_path / "full.tsv", tmp_path / "cut.tsv"
    assert _certify(small_model, full, "--skip", "30", "--max", "150") == 0
    text = full.read_text()
    lines = text.splitlines(keepends=True)
    cut.write_text("".join(lines[:-2]) + lines[-2][:9])  # the last row lost, the one before cut mid-line
    copy_sidecar(full, cut)
    assert _certify(small_model, cut, "--skip", "30", "--max", "150") == 0
    drop_time = lambda p: [r[:5] + r[6:] for r in tsv_rows(p)[1]]
    assert drop_time(cut) == drop_time(full)
    assert "2 this run" in capsys.readouterr().out


@pytest.mark.slow
def test_predict_mode_and_deterministic_candidate(small_model, tmp_path, capsys):
    out = tmp_path / "p.tsv"
    assert _certify(small_model, out, "--mode", "predict", "--skip", "50", "--max", "100") == 0
    header, rows = tsv_rows(out)
    assert header == ["idx", "label", "predict", "correct", "time", "count_A", "count_B", "pvalue", "clean"]
    for r in rows:
        a, b, p = int(r[5]), int(r[6]), float(r[7])
        assert p == pytest.approx(stats.binomtest(a, a + b, 0.5).pvalue)
        assert (int(r[2]) == -1) == (p > 0.01)
    # "clean": one noise-free forward pass of the trained model, computed here independently
    config = cli.load_config(QUICKSTART, [s.removeprefix("--config.") for s in SMALL])
    model = loader.load_model(small_model, fold_batch_norm=False)
    idx = [int(r[0]) for r in rows]
    images, _ = data.load(config.data.name).test.get(np.asarray(idx))
    logits, _ = model.apply(model.params, model.model_state, np.asarray(images, np.float32) / 255, train=False)
    assert [int(r[8]) for r in rows] == np.argmax(logits, -1).tolist()
    summary = analysis.summarize(analysis.read_run(str(out)), [0.0])
    assert summary.agreement == np.mean([r[8] == r[2] for r in rows])
    assert summary.single_pass_accuracy == np.mean([r[8] == r[1] for r in rows])
    out = tmp_path / "clean.tsv"
    assert _certify(small_model, out, "--candidate", "clean", "--skip", "50", "--max", "100") == 0
    assert len(tsv_rows(out)[1]) == 2


@pytest.mark.parametrize("extra, field", [
    (["--n0", "300"], "--n0"),
    (["--alpha", "1.5"], "--alpha"),
    (["--n", "5", "--n0", "5", "--alpha", "0.001"], "--n"),
    (["--sigma", "0"], "--sigma"),
    (["--skip", "0"], "--skip"),
    (["--max", "100000"], "--max"),
    (["--topk", "1"], "--topk"),
    (["--inputs", "3"], "--inputs"),
    (["--config.model.width=8"], "--checkpoint: .* holds a model with width=4, not 8"),
    (["--noise", "lattice", "--sigma-file", "s.npy"], "--noise"),
    (["--noise", "lattice", "--mode", "distributional", "--gamma", "1"], "--noise"),
])
def test_bad_input_is_one_line(untrained_model, tmp_path, capsys, extra, field):
    assert _certify(untrained_model, tmp_path / "x.tsv", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    pattern = f"error: {field}" if ":" in field else f"error: {re.escape(field)}: "
    assert len(err) == 1 and re.match(pattern, err[0]), err


@pytest.mark.slow
def test_bad_sigma_file_checkpoint_and_mismatched_out(small_model, tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.ones((4, 4, 1), np.float32))
    cases = [(["--sigma-file", str(tmp_path / "s.npy")], "--sigma-file"),
             (["--sigma-file", str(tmp_path / "missing.npy")], "--sigma-file")]
    for extra, field in cases:
        assert _certify(small_model, tmp_path / "x.tsv", *extra) == 2
        assert capsys.readouterr().err.startswith(f"error: {field}: ")
    assert certify.main(["--config", QUICKSTART, "--checkpoint", str(tmp_path / "none"), "--out",
                        str(tmp_path / "x.tsv")] + SMALL + FAST) == 2
    assert capsys.readouterr().err.startswith("error: --checkpoint: ")
    out = tmp_path / "o.tsv"
    assert _certify(small_model, out, "--max", "2") == 0
    before = out.read_text()
    assert _certify(small_model, out, "--max", "2", "--n", "300") == 2
    err = capsys.readouterr().err
    assert "error: --out: " in err and "n=200" in err
    assert out.read_text() == before  # nothing lost


@pytest.mark.slow
def test_noise_kind_is_recorded_and_a_resume_refuses_another(small_model, tmp_path, capsys):
    out = tmp_path / "n.tsv"
    assert _certify(small_model, out, "--max", "2") == 0
    assert sidecar_settings(out, "certify")["noise"] == "lattice"  # the default: the digits are 8-bit
    before = out.read_bytes(), (tmp_path / "n.tsv.json").read_bytes()
    assert _certify(small_model, out, "--max", "2", "--noise", "gaussian") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out: ") and "noise='lattice', not 'gaussian'" in err[0]
    assert (out.read_bytes(), (tmp_path / "n.tsv.json").read_bytes()) == before  # nothing lost


@pytest.mark.parametrize("noise, sigma, x, expected", [
    (None, 0.25, None, "lattice"), ("auto", 0.25, None, "lattice"), ("gaussian", 0.25, None, "gaussian"),
    ("lattice", 0.25, None, "lattice"), (None, np.full((8, 8, 1), 0.25), None, "gaussian"),
    (None, 0.25, np.full((1, 8, 8, 1), 0.5), "gaussian"), (None, 0.25, np.full((1, 8, 8, 1), 128 / 255), "lattice"),
])
def test_default_noise_is_lattice_where_it_applies(noise, sigma, x, expected):
    """The first registered kind that applies: lattice for a scalar sigma and 8-bit inputs (x None: the data
    sources'), gaussian for a per-pixel sigma or other inputs; a named kind as named."""
    assert noises.choose(noise, sigma, x).name == expected


def test_a_named_noise_that_does_not_take_the_sigma_is_refused_naming_noise():
    with pytest.raises(UserError) as e:
        noises.choose("lattice", np.full((8, 8, 1), 0.25))
    assert e.value.field == "noise" and "scalar sigma" in e.value.message
    with pytest.raises(UserError) as e:
        noises.choose("uniform", 0.25)
    assert e.value.field == "noise" and "lattice, gaussian" in e.value.message


@pytest.mark.slow
def test_pandas_reads_certify_and_predict_files_as_cohen_analyze_does(small_model, tmp_path):
    import pandas as pd

    for mode in ("certify", "predict"):
        out = tmp_path / f"{mode}.tsv"
        assert _certify(small_model, out, "--mode", mode, "--skip", "45", "--max", "200") == 0
        header, rows = tsv_rows(out)
        frame = pd.read_csv(out, delimiter="\t")  # locuslab/smoothing's analyze.py reads files so
        assert list(frame.columns) == header and len(frame) == len(rows) == 5
        assert frame["idx"].tolist() == [0, 45, 90, 135, 180]
        run = analysis.read_run(str(out))
        assert run.settings["mode"] == mode and sidecar_settings(out, "certify")["n"] == 200
        assert frame["predict"].tolist() == run.columns["predict"].tolist()
        if mode == "certify":
            # pandas before 3.0 parses floats to within an ulp by default (its C parser), not to the nearest double
            assert frame["radius"].tolist() == pytest.approx(run.columns["radius"].tolist(), rel=1e-15, abs=0)
            radii = [0.0, 0.1, 0.2, 0.3]
            theirs = [float((frame["correct"].astype(bool) & (frame["radius"] >= r)).mean()) for r in radii]
            assert analysis.certified_accuracy(run, radii).tolist() == theirs


@pytest.mark.slow
def test_resume_refuses_a_changed_setting_and_leaves_both_files_alone(small_model, tmp_path, capsys):
    out = tmp_path / "c.tsv"
    assert _certify(small_model, out, "--max", "3") == 0
    before = out.read_bytes(), (tmp_path / "c.tsv.json").read_bytes()
    assert _certify(small_model, out, "--max", "3", "--alpha", "0.02") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out: ") and "alpha=0.01" in err[0]
    assert (out.read_bytes(), (tmp_path / "c.tsv.json").read_bytes()) == before


@pytest.mark.slow
def test_a_file_of_the_earlier_format_resumes_in_the_new_one(small_model, tmp_path):
    full, old = tmp_path / "full.tsv", tmp_path / "old.tsv"
    assert _certify(small_model, full, "--skip", "30", "--max", "120") == 0
    settings = sidecar_settings(full, "certify")
    lines = full.read_text().splitlines(keepends=True)
    legacy = ["# jaxsmooth certify " + json.dumps(settings) + "\n", "# a note\n"] + lines[:-1]
    old.write_text("".join(legacy))  # the settings line, a comment, the header and all rows but the last
    assert _certify(small_model, old, "--skip", "30", "--max", "120") == 0
    assert not old.read_text().startswith("#")
    assert sidecar_settings(old, "certify") == settings
    assert json.loads((tmp_path / "old.tsv.json").read_text())["notes"] == ["a note"]
    drop_time = lambda p: [r[:5] + r[6:] for r in tsv_rows(p)[1]]
    assert drop_time(old) == drop_time(full)


@pytest.mark.slow
def test_out_through_a_regular_file_is_one_error_line(small_model, tmp_path, capsys):
    (tmp_path / "plain").write_text("a file, not a folder\n")
    assert _certify(small_model, tmp_path / "plain" / "sub" / "c.tsv", "--max", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out: ") and "is a file" in err[0], err
