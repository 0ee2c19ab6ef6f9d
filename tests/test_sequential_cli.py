"""certify --sequential on a trained quick-start model: the fixed run's stream, resume, errors, analyze, the docs."""

import json
import os
import re
import shlex

import numpy as np
import pytest

from jaxsmooth import analysis, analyze, bench, certification, certify, results
from jaxsmooth.certification import records
from jaxsmooth.errors import UserError

from conftest import ROOT
from helpers import sidecar_settings, tsv_rows

FAST = ["--n0", "20", "--alpha", "0.01", "--batch", "100", "--inputs", "5", "--no-progress"]
PAGES = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "docs", "sequential.md")]


def _certify(workdir, out, *extra):
    return certify.main(["--checkpoint", workdir, "--out", str(out)] + FAST + list(extra))


def _rows(path, exact=True):
    """{idx: {column: value}} of a certify TSV, time left out; lbound_mc too unless `exact` is false.

    lbound_mc is a float32 sum whose order follows how the calls grouped the samples.
    """
    header, rows = tsv_rows(path)
    left_out = ("time",) if exact else ("time", "lbound_mc")
    return {int(r[0]): {k: float(v) for k, v in zip(header, r) if k not in left_out} for r in rows}


@pytest.mark.slow
def test_a_killed_run_resumes_and_an_unreachable_radius_is_said_once(small_model, tmp_path, capsys):
    full, cut = tmp_path / "full.tsv", tmp_path / "cut.tsv"
    args = ["--skip", "20", "--max", "200", "--n", "3000", "--sequential", "--radii", "0.1,0.25,3"]
    assert _certify(small_model, full, *args) == 0
    err = capsys.readouterr().err
    assert err.count("out of reach") == 1 and "note: radius 3 out of reach at sigma 0.25, alpha 0.01" in err
    assert all(row["radius"] <= 0.25 for row in _rows(full).values())  # 3 is never certified
    lines = full.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:-3]) + lines[-3][:7])  # two rows lost, the one before cut mid-line
    (tmp_path / "cut.tsv.json").write_text((tmp_path / "full.tsv.json").read_text())
    assert _certify(small_model, cut, *args) == 0
    assert "3 this run" in capsys.readouterr().out
    assert _rows(cut, exact=False) == _rows(full, exact=False)
    for i, row in _rows(cut).items():
        assert row["lbound_mc"] == pytest.approx(_rows(full)[i]["lbound_mc"], rel=1e-5)


@pytest.mark.slow
def test_a_file_of_another_schedule_is_refused_and_one_from_before_futility_was_recorded_resumes(small_model, tmp_path,
                                                                                                 capsys):
    """The looks, their levels and the futility level are part of a sequential file's identity."""
    grid, radius = tmp_path / "grid.tsv", tmp_path / "max.tsv"
    common = ["--skip", "20", "--max", "40", "--n", "3000", "--sequential"]
    assert _certify(small_model, grid, *common, "--radii", "0.25") == 0
    assert _certify(small_model, radius, *common) == 0
    capsys.readouterr()
    for path, edit in ((grid, lambda s: s.pop("futility")),  # a grid file of the earlier schedule: futility 0.01
                       (radius, lambda s: s.pop("futility"))):  # a max-radius file of then: the same 0.01
        side = json.loads((tmp_path / (path.name + ".json")).read_text())
        edit(side["settings"])
        (tmp_path / (path.name + ".json")).write_text(json.dumps(side))
    before = grid.read_text()
    assert _certify(small_model, grid, *common, "--radii", "0.25") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out: {grid} was written with futility=0.01, not 0.05; choose another --out to change it"]
    assert grid.read_text() == before
    assert _certify(small_model, radius, *common) == 0  # max-radius: futility 0.01 then and now
    assert "0 this run" in capsys.readouterr().out


@pytest.mark.parametrize("extra, field", [
    (["--sequential", "--radii", "0.25,-1"], "--radii"),
    (["--sequential", "--radii", "0.25,abc"], "--radii"),
    (["--sequential", "--tolerance", "0"], "--tolerance"),
    (["--sequential", "--tolerance", "1"], "--tolerance"),
    (["--sequential", "--tolerance", "1.5"], "--tolerance"),
    (["--radii", "0.25"], "--radii"),
    (["--tolerance", "0.1"], "--tolerance"),
    (["--sequential", "--radii", "0.25", "--tolerance", "0.1"], "--tolerance"),
    (["--sequential", "--topk", "2"], "--topk"),
    (["--sequential", "--mode", "predict"], "--sequential"),
])
def test_bad_sequential_input_is_one_line_and_writes_nothing(untrained_model, tmp_path, capsys, extra, field):
    out = tmp_path / "x.tsv"
    assert _certify(untrained_model, out, "--max", "20", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err
    assert not out.exists() and not (tmp_path / "x.tsv.json").exists()


def _docs_commands(page):
    """The `python -m jaxsmooth.X` lines of a page, as argument lists (program, args)."""
    with open(page) as f:
        text = re.sub(r"\\\n\s*", " ", f.read())  # continued lines joined
    lines = re.findall(r"^python -m jaxsmooth\.(\w+) (.*)$", text, re.M)
    return [(program, shlex.split(args)) for program, args in lines]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_docs_quick_start_on_a_few_digits(small_model, tmp_path, capsys, page):
    """The sequential example's certify and analyze lines (README, docs/sequential.md) on the first 100 test digits:
    the sequential rows are drawn from the fixed run's stream, its class is the fixed run's, and it spends fewer
    samples."""
    quick = [(p, a) for p, a in _docs_commands(page)
             if any(name in " ".join(a) for name in ("quickstart/sequential.tsv", "quickstart/fixed.tsv"))]
    assert [p for p, _ in quick] == ["certify", "certify", "analyze"]
    folder = tmp_path / "q"
    swap = lambda args: [a.replace("workdirs/quickstart", str(folder)) for a in args]  # noqa: E731
    os.makedirs(folder)
    for _, args in quick[:2]:
        args = swap(args) + ["--max", "100", "--no-progress"]
        args[args.index("--checkpoint") + 1] = small_model  # the quick-start model, trained small
        assert certify.main(args) == 0
    settings = sidecar_settings(str(folder / "sequential.tsv"), "certify")
    assert settings["sequential"] == "grid" and settings["radii"] == [0.25, 0.5] and settings["n"] == 100_000
    assert settings["looks"][-1] == 100_000 and sum(settings["look_alphas"]) == pytest.approx(0.001)
    seq, fixed = _rows(folder / "sequential.tsv"), _rows(folder / "fixed.tsv")
    assert sorted(seq) == sorted(fixed) == list(range(0, 100, 10))
    for i, row in seq.items():
        assert 100 < row["n_used"] <= 100_100 and row["radius"] in (0.0, 0.25, 0.5)
        if row["predict"] != -1 and fixed[i]["predict"] != -1:  # the same selection samples: one candidate
            assert row["predict"] == fixed[i]["predict"]
        if row["n_used"] == 100_100:  # to the budget: the fixed run's counts
            assert (row["count_A"], row["count_B"]) == (fixed[i]["count_A"], fixed[i]["count_B"])
    assert np.mean([r["n_used"] for r in seq.values()]) < 100_100 / 5
    capsys.readouterr()
    assert analyze.main(swap(quick[2][1])) == 0
    out = capsys.readouterr().out
    assert "| sequential | 10 |" in out and (folder / "n_used.png").read_bytes()[:4] == b"\x89PNG"
    run = analysis.read_run(str(folder / "sequential.tsv"))
    assert run.columns["n_used"].dtype == np.int64


def _write(path, n, idx, n_used=None, candidate="selection", radius=None):
    """A certify TSV with settings n, n0 = 100 and the given rows (n_used: a sequential run's; radius: 0.5 each)."""

    header = {"mode": "certify", "n": n, "n0": 100, "alpha": 0.001, "candidate": candidate}
    if n_used is not None:
        header["sequential"] = "grid"
    cols = records.columns("certify", certification.Settings(sequential=n_used is not None), anisotropic=False,
                           model_lbound=False)
    writer = results.Writer(str(path), results.CERTIFY, header, cols)
    for j, i in enumerate(idx):
        row = {"idx": i, "label": 1, "predict": 1, "radius": 0.5 if radius is None else radius[j], "correct": 1,
               "time": "0", "pA_lower": 0.9, "count_A": 9, "count_B": 1, "lbound_mc": 0.1}
        writer.write({**row, **({} if n_used is None else {"n_used": n_used[j]})})
    writer.close()


def test_samples_table_takes_the_fixed_run_of_the_same_images(tmp_path, capsys):
    from jaxsmooth.analysis import samples

    _write(tmp_path / "seq.tsv", 10_000, [0, 20, 40], n_used=[300, 700, 10_100])
    _write(tmp_path / "fixed_big.tsv", 20_000, [0, 20, 40])
    _write(tmp_path / "fixed_budget.tsv", 10_000, [40, 0, 20])  # the same images in another order
    _write(tmp_path / "fixed_other.tsv", 10_000, [0, 20, 60])  # other images
    runs = analysis.read_runs([str(tmp_path / f) for f in ("seq.tsv", "fixed_big.tsv", "fixed_other.tsv",
                                                          "fixed_budget.tsv")])
    (row,) = samples.samples_rows(runs)
    assert (row.reference, row.reference_samples, row.images) == ("fixed_budget", 10_100, 3)
    assert (row.mean, row.median) == (3700.0, 700.0)
    assert row.mean_ratio == pytest.approx(10_100 / 3700) and row.median_ratio == pytest.approx(10_100 / 700)
    (row,) = samples.samples_rows(runs[:2])
    assert row.reference == "fixed_big" and row.reference_samples == 20_100
    assert samples.samples_rows(runs[1:]) == []
    assert analyze.main([str(tmp_path / "fixed_big.tsv"), "--samples-plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --samples-plot: no run has an n_used column")


def _cells(text):
    """The cells of a markdown table's rows, bold marks dropped."""
    return [[c.strip().strip("*") for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]


def _accuracy_rows(out):
    text = out if isinstance(out, str) else out.readouterr().out
    return [row[:3] for row in _cells(text) if row[0] in ("seq", "fixed") and len(row) == 6]


def test_analyze_common_compares_runs_on_the_images_they_share(tmp_path, capsys):
    _write(tmp_path / "seq.tsv", 10_000, [0, 20, 40], n_used=[300, 700, 10_100])
    _write(tmp_path / "fixed.tsv", 10_000, [80, 20, 0, 60], radius=[0.1, 0.1, 0.5, 0.1])
    files = [str(tmp_path / "seq.tsv"), str(tmp_path / "fixed.tsv"), "--radii", "0.25"]
    assert analyze.main(files) == 0
    assert _accuracy_rows(capsys) == [["seq", "3", "1.000"], ["fixed", "4", "0.250"]]  # run, n, r = 0.25
    assert analyze.main(files + ["--common"]) == 0
    table = capsys.readouterr().out
    assert _accuracy_rows(table) == [["seq", "2", "1.000"], ["fixed", "2", "0.500"]]
    (samples,) = [row for row in _cells(table) if row[:2] == ["seq", "2"] and len(row) > 6]
    assert samples[2:4] == ["500", "500"]  # mean and median n_used of images 0 and 20
    _write(tmp_path / "other.tsv", 10_000, [100, 120])
    assert analyze.main([str(tmp_path / "seq.tsv"), str(tmp_path / "other.tsv"), "--common"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --common: the runs share no example"), err


@pytest.mark.parametrize("extra, field", [
    (["--sigmas", "0.25,0.5"], "--sigmas"),
    (["--fixed", "10,200000"], "--fixed"),
    (["--radii-sigma", "1,x"], "--radii-sigma"),
    (["--retime", "grid,fast"], "--retime"),
    (["--timing-images", "2"], "--timing-images"),  # fewer images than the 10 slots: the fixed run would idle
])
def test_bench_sequential_bad_input_is_one_line(tmp_path, capsys, extra, field):
    args = ["sequential", "--checkpoints", str(tmp_path / "run"), "--sigmas", "0.25", "--workdir", str(tmp_path / "b")]
    assert bench.main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err
    assert not (tmp_path / "b").exists()
    assert bench.main(["scaling", "--config.seed=1"]) == 2  # overrides: bench sequential's (and the reports') only
    assert capsys.readouterr().err.startswith(
        "error: --config: --config.FIELD=VALUE overrides apply to bench sequential")


def test_bench_sequential_times_images_spread_over_the_test_split():
    from jaxsmooth.benchmarks import sequential as sequential_bench

    np.testing.assert_array_equal(sequential_bench._timing_indices(10_000, 20), np.arange(0, 10_000, 500))
    with pytest.raises(UserError) as e:
        sequential_bench._timing_indices(360, 361)
    assert e.value.field == "--timing-images" and "has 360 images" in e.value.message


@pytest.mark.slow
def test_bench_sequential_replays_the_real_grid_run_and_records_each_schedule(small_model, tmp_path, capsys):
    """On a few digits: the grid rows replayed from the recorded streams equal the real run's, the fixed-n rows at the
    budget are certify's, and each TSV's settings hold the looks and futility level of its own mode."""
    out = tmp_path / "b"
    args = ["sequential", "--checkpoints", small_model, "--sigmas", "0.25", "--workdir", str(out), "--skip", "60",
            "--max", "360", "--n0", "20", "--n", "3000", "--alpha", "0.01", "--fixed", "1000", "--tolerances", "0.1",
            "--timing-images", "6", "--timing-tolerances", "0.1", "--batch", "100", "--inputs", "5"]
    assert bench.main(args) == 0
    report = capsys.readouterr().out
    assert "grid rows replayed from the streams equal the real run's: 6/6" in report
    grid = sidecar_settings(out / "sigma0.25_grid.tsv", "certify")
    radius = sidecar_settings(out / "sigma0.25_max_0.1.tsv", "certify")
    settings = certification.Settings(n0=20, n=3000, alpha=0.01, sequential=True, radii=(0.25, 0.5, 0.75))
    for saved, s in ((grid, settings), (radius, certification.Settings(n0=20, n=3000, alpha=0.01, sequential=True,
                                                                        tolerance=0.1))):
        schedule = s.schedule(certification.gaussian_rule(0.25))
        assert (saved["looks"], saved["look_alphas"], saved["futility"]) == (list(schedule.looks),
                                                                               list(schedule.alphas),
                                                                               schedule.futility)
    assert (grid["futility"], radius["futility"]) == (0.05, 0.01)
    with open(out / "timing.json") as f:
        before = json.load(f)["sigma0.25"]
    assert bench.main(args + ["--retime", "grid"]) == 0  # the grid timed again, the other modes kept
    capsys.readouterr()
    with open(out / "timing.json") as f:
        after = json.load(f)["sigma0.25"]
    assert after.keys() == before.keys() == {"fixed n=3,000", "max-radius 0.1", "grid"}
    assert {k: after[k] for k in ("fixed n=3,000", "max-radius 0.1")} == \
           {k: before[k] for k in ("fixed n=3,000", "max-radius 0.1")}
    grid = _rows(out / "sigma0.25_grid.tsv", exact=False)  # the timing images: every 60th of 360, the grid's too
    timed = sum(grid[i]["n_used"] for i in (0, 60, 120, 180, 240, 300))
    assert after["grid"]["samples"] == before["grid"]["samples"] == timed
    assert certify.main(["--checkpoint", small_model, "--out", str(tmp_path / "fixed.tsv"), "--skip", "60",
                        "--max", "360", "--n0", "20", "--n", "3000", "--alpha", "0.01", "--batch", "100",
                        "--inputs", "5", "--noise", "gaussian", "--no-progress"]) == 0
    fixed = _rows(tmp_path / "fixed.tsv")
    replayed = _rows(out / "sigma0.25_fixed_3000.tsv", exact=False)
    assert replayed.keys() == fixed.keys() and len(fixed) == 6
    for i, row in replayed.items():
        assert {k: row[k] for k in ("predict", "count_A", "count_B", "radius")} == \
               {k: fixed[i][k] for k in ("predict", "count_A", "count_B", "radius")}
