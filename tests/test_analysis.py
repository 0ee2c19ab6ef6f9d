"""Analysis of certify/predict TSVs: exact certified accuracy, ACR and abstain rate on hand-built files;
locuslab/smoothing files; partial last lines; tables; PNG plots; one ``error:`` line per bad input."""

import datetime
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxsmooth import analysis, analyze
from jaxsmooth.errors import UserError

from conftest import ROOT
from helpers import fails_with

CERTIFY = ["idx", "label", "predict", "radius", "correct", "time", "pA_lower", "count_A", "count_B",
           "lbound_mc", "lbound_model"]
SETTINGS = {"mode": "certify", "sigma": 0.25, "anisotropic": False, "n0": 100, "n": 100000, "alpha": 0.001,
            "dtype": "float32", "topk": 0}

# (idx, label, predict, radius, correct): 5 correct (one with radius 0), one wrong, two abstentions.
ROWS = [
    (0, 3, 3, 0.9012345678901234, 1),
    (1, 7, 7, 0.5, 1),
    (2, 1, 1, 0.2634567890123456, 1),
    (3, 0, 0, 0.0, 1),
    (4, 2, 9, 1.2, 0),
    (5, 4, -1, 0.0, 0),
    (6, 5, -1, 0.0, 0),
    (7, 8, 8, 2.0123456789, 1),
]
N = len(ROWS)
# Radii 0, 0.25, ..., 2.25 and the certified examples at each: radius >= r among the correct rows.
GRID = np.arange(10) * 0.25
EXPECTED = np.array([5, 4, 3, 2, 1, 1, 1, 1, 1, 0]) / N
EXPECTED_ACR = (0.9012345678901234 + 0.5 + 0.2634567890123456 + 0.0 + 2.0123456789) / N


def _line(fields):
    return "\t".join(str(f) for f in fields) + "\n"


def _certify_rows(rows=ROWS, extra=lambda i: []):
    out = []
    for i, (idx, label, predict, radius, correct) in enumerate(rows):
        out.append([idx, label, predict, repr(radius), correct, str(datetime.timedelta(seconds=1.5)),
                    0.99, 99000, 10, 0.7, 0.6] + extra(i))
    return out


def write_tsv(path, header, rows, settings=SETTINGS, comments=("# alpha holds per example",), tail=""):
    """A certify-format file: the settings line, comments, the header, rows, then `tail` verbatim."""
    with open(path, "w") as f:
        if settings is not None:
            f.write("# jaxsmooth certify " + json.dumps(settings) + "\n")
        for comment in comments:
            f.write(comment + "\n")
        f.write(_line(header))
        for row in rows:
            f.write(_line(row))
        f.write(tail)
    return str(path)


@pytest.fixture
def certify_file(tmp_path):
    return write_tsv(tmp_path / "sigma_025.tsv", CERTIFY, _certify_rows())


def test_certified_accuracy_acr_and_abstain_rate_are_exact(certify_file):
    run = analysis.read_run(certify_file)
    assert (run.mode, run.label, run.num_examples, run.settings["sigma"]) == ("certify", "sigma_025", N, 0.25)
    np.testing.assert_array_equal(analysis.certified_accuracy(run, GRID), EXPECTED)
    assert analysis.average_certified_radius(run) == pytest.approx(EXPECTED_ACR, rel=1e-15)
    assert analysis.abstain_rate(run) == 2 / N
    assert analysis.clean_accuracy(run) == 5 / N == analysis.certified_accuracy(run, [0.0])[0]
    # A radius exactly on the grid is certified there, not just below it.
    assert analysis.certified_accuracy(run, [0.5, np.nextafter(0.5, 1)]).tolist() == [3 / N, 2 / N]
    np.testing.assert_array_equal(run.columns["time"], np.full(N, 1.5))
    assert run.columns["count_A"].dtype == np.int64 and run.columns["pA_lower"].dtype == np.float64


def test_acr_is_the_area_under_the_certified_accuracy_curve(tmp_path):
    # ACR = E[radius * correct] = integral_0^inf P(correct and radius >= r) dr: the curve's area.
    rng = np.random.default_rng(0)
    radius = np.round(rng.exponential(0.6, 500), 6)
    correct = rng.random(500) < 0.7
    rows = [(i, 0, 0 if c else 1, float(r) if c else 0.0, int(c)) for i, (r, c) in enumerate(zip(radius, correct))]
    run = analysis.read_run(write_tsv(tmp_path / "r.tsv", CERTIFY, _certify_rows(rows)))
    edges = np.concatenate([[0.0], np.sort(radius[correct])])
    area = np.sum(np.diff(edges) * analysis.certified_accuracy(run, edges[1:]))  # exact for a step function
    assert area == pytest.approx(analysis.average_certified_radius(run), rel=1e-12)
    assert np.all(np.diff(analysis.certified_accuracy(run, np.linspace(0, 5, 200))) <= 0)


def test_locuslab_file_reads_the_same(tmp_path, certify_file):
    # locuslab/smoothing certify.py: no '#' line, six columns, "{:.3}" radii, str(timedelta) times.
    path = tmp_path / "sigma_0.25"
    with open(path, "w") as f:
        print("idx\tlabel\tpredict\tradius\tcorrect\ttime", file=f, flush=True)
        for idx, label, predict, radius, correct in ROWS:
            time_elapsed = str(datetime.timedelta(seconds=round(0.25 * idx, 6)))
            print("{}\t{}\t{}\t{:.3}\t{}\t{}".format(idx, label, predict, radius, correct, time_elapsed),
                  file=f, flush=True)
    old, ours = analysis.read_run(str(path)), analysis.read_run(certify_file)
    assert (old.mode, old.settings, old.label) == ("certify", {}, "sigma_0.25")
    np.testing.assert_array_equal(analysis.certified_accuracy(old, GRID), analysis.certified_accuracy(ours, GRID))
    assert analysis.abstain_rate(old) == analysis.abstain_rate(ours)
    assert analysis.average_certified_radius(old) == pytest.approx(EXPECTED_ACR, abs=0.005 / N * 5)
    np.testing.assert_allclose(old.columns["time"], 0.25 * np.arange(N))
    assert old.columns["radius"][0] == 0.901


def test_locuslab_predict_file_and_long_times(tmp_path):
    path = tmp_path / "predict_out"
    path.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t1 day, 0:00:02\n1\t2\t-1\t0\t0:00:01\n")
    run = analysis.read_run(str(path))
    assert run.mode == "predict" and run.columns["time"].tolist() == [86402.0, 1.0]


@pytest.mark.parametrize("style", ["timedelta", "seconds"])
def test_both_locuslab_time_formats_give_pandas_certified_accuracy(tmp_path, style):
    # locuslab/smoothing's data/certify files write time as str(timedelta) ("0:00:15.412") or as seconds ("15.4").
    import pandas as pd

    path = tmp_path / f"noise_0.50_{style}"
    with open(path, "w") as f:
        f.write("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
        for idx, label, predict, radius, correct in ROWS:
            seconds = 15.4 + idx
            time = str(datetime.timedelta(seconds=seconds)) if style == "timedelta" else f"{seconds:.1f}"
            f.write(f"{idx * 20}\t{label}\t{predict}\t{radius:.3}\t{correct}\t{time}\n")
    frame = pd.read_csv(path, delimiter="\t")
    radii = np.arange(0, 2.25, 0.25)
    # their analyze.py: (df["correct"] & (df["radius"] >= radius)).mean()
    expected = [float((frame["correct"].astype(bool) & (frame["radius"] >= r)).mean()) for r in radii]
    run = analysis.read_run(str(path))
    assert analysis.certified_accuracy(run, radii).tolist() == expected
    np.testing.assert_allclose(run.columns["time"], 15.4 + np.arange(N), atol=1e-6)
    assert run.settings == {} and run.mode == "certify"


def test_our_files_read_by_pandas_have_no_comment_lines(tmp_path):
    from jaxsmooth import results

    path = tmp_path / "ours.tsv"
    writer = results.Writer(str(path), results.CERTIFY, SETTINGS, CERTIFY)
    for row in _certify_rows():
        writer.write(dict(zip(CERTIFY, row)))
    writer.close()
    import pandas as pd

    frame = pd.read_csv(path, delimiter="\t")
    assert list(frame.columns) == CERTIFY and frame["radius"].tolist() == [r[3] for r in ROWS]
    assert analysis.read_run(str(path)).settings == SETTINGS
    np.testing.assert_array_equal(analysis.certified_accuracy(analysis.read_run(str(path)), GRID), EXPECTED)


FULL = "8\t1\t1\t0.77\t1\t0:00:01.5\t0.99\t99000\t10\t0.7\t"


@pytest.mark.parametrize("tail, num_examples, ignored", [
    ("8\t1\t1\t0.77", N, 12),            # cut mid-line: too few fields
    (FULL + "0.6\t3\n", N, 12),          # too many fields, even with a newline
    (FULL, N, 12),                        # cut after the last tab: an empty number
    (FULL + "1e", N, 12),                 # cut inside the last field's text: unterminated and unreadable
    (FULL + "0.", N + 1, None),           # unterminated but readable: cannot be told from a whole line
])
def test_partial_last_line_is_ignored(tmp_path, tail, num_examples, ignored):
    run = analysis.read_run(write_tsv(tmp_path / "killed.tsv", CERTIFY, _certify_rows(), tail=tail))
    assert (run.num_examples, run.ignored_line) == (num_examples, ignored)
    np.testing.assert_array_equal(analysis.certified_accuracy(run, GRID)[:3] * run.num_examples,
                                  EXPECTED[:3] * N + (num_examples - N))


def test_a_header_repeated_on_resume_is_skipped(tmp_path):
    rows = _certify_rows()
    rows.insert(4, CERTIFY)
    run = analysis.read_run(write_tsv(tmp_path / "resumed.tsv", CERTIFY, rows))
    np.testing.assert_array_equal(analysis.certified_accuracy(run, GRID), EXPECTED)


def test_a_short_line_before_the_end_is_an_error(tmp_path):
    rows = _certify_rows()
    rows.insert(3, rows[3][:4])
    path = write_tsv(tmp_path / "bad.tsv", CERTIFY, rows)
    with pytest.raises(UserError) as e:
        analysis.read_run(path)
    assert e.value.field == f"{path}:7" and "4 tab-separated fields, the header has 11" in e.value.message


def test_topk_columns(tmp_path):
    topk = [(1.5, 1), (0.5, 1), (0.3, 1), (0.13, 1), (0.6, 1), (0.0, 0), (0.2, 1), (2.1, 1)]
    path = write_tsv(tmp_path / "top5.tsv", CERTIFY + ["topk_radius", "topk_correct"],
                     _certify_rows(extra=lambda i: [topk[i][0], topk[i][1]]), settings={**SETTINGS, "topk": 5})
    run = analysis.read_run(path)
    assert analysis.topk_of(run) == 5
    np.testing.assert_array_equal(analysis.topk_certified_accuracy(run, [0, 0.25, 0.5, 1.0, 2.0, 2.25]),
                                  np.array([7, 5, 4, 2, 1, 0]) / N)
    assert analysis.average_certified_radius(run, topk=True) == pytest.approx(5.33 / N)
    s = analysis.summarize(run, [0.0, 0.5])
    table = analysis.markdown_table([s])
    assert "| top5 (top-5) | 8 | 0.875 | 0.500 | 0.666 | - | 0.875 |" in table
    assert f"| top5 | 8 | 0.625 | 0.375 | {EXPECTED_ACR:.3f} | 0.250 | 0.625 |" in table


def test_anisotropic_area_accuracy(tmp_path):
    # area_objective of the rows: correct ones 10, -5, 3, -inf (p_A lower = 1/2); wrong 20; abstain nan.
    rows = [(0, 1, 1, 0.4, 1), (1, 1, 1, 0.1, 1), (2, 1, 1, 0.2, 1), (3, 1, 1, 0.0, 1), (4, 1, 2, 0.9, 0),
            (5, 1, -1, 0.0, 0)]
    area = ["10.0", "-5", "3.0", "-inf", "20.0", "nan"]
    path = write_tsv(tmp_path / "aniso.tsv", CERTIFY + ["area_objective"], _certify_rows(rows, lambda i: [area[i]]),
                     settings={**SETTINGS, "anisotropic": True})
    run = analysis.read_run(path)
    assert analysis.is_anisotropic(run)
    np.testing.assert_array_equal(analysis.area_accuracy(run, [-1e9, -10, 0, 3, 3.0001, 10, 11]),
                                  np.array([3, 3, 2, 2, 1, 1, 0]) / 6)
    grid = analysis.area_grid([run])
    assert grid[0] < -5 and grid[-1] > 10
    fig = analysis.area_figure([run, analysis.read_run(write_tsv(tmp_path / "iso.tsv", CERTIFY, _certify_rows()))])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["aniso"]  # isotropic left out


def test_predict_file(tmp_path):
    header = ["idx", "label", "predict", "correct", "time", "count_A", "count_B", "pvalue"]
    rows = [[0, 1, 1, 1, "0:00:00.100000", 90, 5, 1e-20], [1, 2, 2, 1, "0:00:00.1", 80, 10, 1e-12],
            [2, 3, 4, 0, "0:00:00.1", 70, 20, 1e-6], [3, 5, -1, 0, "0:00:00.1", 40, 38, 0.9]]
    run = analysis.read_run(write_tsv(tmp_path / "p.tsv", header, rows, settings={**SETTINGS, "mode": "predict"}))
    assert run.mode == "predict"
    assert (analysis.clean_accuracy(run), analysis.abstain_rate(run)) == (0.5, 0.25)
    assert analysis.markdown_table([analysis.summarize(run, GRID)]).splitlines() == [
        "| run | n | accuracy | abstain |", "|---|---:|---:|---:|", "| p | 4 | 0.500 | 0.250 |"]
    # with the one-forward-pass class: single-pass accuracy 3/4, agreement 2/4 (the abstention disagrees)
    rows = [r + [c] for r, c in zip(rows, [1, 2, 3, 3])]
    agree = analysis.read_run(write_tsv(tmp_path / "a.tsv", header + ["clean"], rows,
                                        settings={**SETTINGS, "mode": "predict"}))
    assert (analysis.agreement(agree), analysis.single_pass_accuracy(agree)) == (0.5, 0.75)
    assert analysis.markdown_table([analysis.summarize(agree, GRID), analysis.summarize(run, GRID)]).splitlines() == [
        "| run | n | accuracy | abstain | single-pass acc | agreement |", "|---|---:|---:|---:|---:|---:|",
        "| a | 4 | 0.500 | 0.250 | 0.750 | 0.500 |", "| p | 4 | 0.500 | 0.250 | - | - |"]


def test_radius_grid(certify_file):
    run = analysis.read_run(certify_file)
    # The largest certified radius, 2.012..., rounded up to a step.
    np.testing.assert_array_equal(analysis.radius_grid([run]), np.arange(10) * 0.25)
    assert analysis.radius_grid([run], max_radius=0.3, step=0.1).tolist() == [0.0, 0.1, 0.2, 0.3]
    assert analysis.radius_grid([run], radii=[0, 1.5]).tolist() == [0.0, 1.5]


def test_tables_hold_the_numbers(tmp_path, certify_file):
    better = [(i, 0, 0, 1.0, 1) for i in range(3)] + [(3, 0, -1, 0.0, 0)]
    runs = [analysis.read_run(certify_file, "$\\sigma = 0.25$"),
            analysis.read_run(write_tsv(tmp_path / "run_b.tsv", CERTIFY, _certify_rows(better)))]
    summaries = [analysis.summarize(r, [0.0, 0.5, 1.0, 2.5]) for r in runs]
    md = analysis.markdown_table(summaries).splitlines()
    assert md[0] == "| run | n | r = 0 | r = 0.5 | r = 1 | r = 2.5 | ACR | abstain | clean acc |"
    assert md[2] == f"| $\\sigma = 0.25$ | 8 | 0.625 | 0.375 | 0.125 | 0.000 | {EXPECTED_ACR:.3f} | 0.250 | 0.625 |"
    assert md[3] == "| run_b | 4 | **0.750** | **0.750** | **0.750** | 0.000 | **0.750** | 0.250 | **0.750** |"
    tex = analysis.latex_table(summaries).splitlines()
    assert tex[0] == r"\begin{tabular}{lrrrrrrrr}" and tex[-1] == r"\end{tabular}"
    assert tex[2] == r"run & $n$ & $r = 0$ & $r = 0.5$ & $r = 1$ & $r = 2.5$ & ACR & abstain & clean acc \\"
    assert tex[4] == rf"$\sigma = 0.25$ & 8 & 0.625 & 0.375 & 0.125 & 0.000 & {EXPECTED_ACR:.3f} & 0.250 & 0.625 \\"
    assert tex[5] == (r"run\_b & 4 & \textbf{0.750} & \textbf{0.750} & \textbf{0.750} & 0.000 & \textbf{0.750} & "
                      r"0.250 & \textbf{0.750} \\")


def _read_png(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def test_cli_writes_tables_and_plots(tmp_path, capsys, certify_file):
    other = write_tsv(tmp_path / "other.tsv", CERTIFY, _certify_rows(ROWS[:4]))
    out = {name: str(tmp_path / name) for name in ("t.md", "t.tex", "acc.png")}
    argv = [certify_file, other, "--labels", "first,second", "--radii", "0,0.5,1",
            "--markdown", out["t.md"], "--latex", out["t.tex"], "--plot", out["acc.png"]]
    assert analyze.main(argv) == 0
    stdout = capsys.readouterr().out
    runs = analysis.read_runs([certify_file, other], ["first", "second"])
    expected = analysis.markdown_table([analysis.summarize(r, [0, 0.5, 1]) for r in runs])
    assert stdout == expected == open(out["t.md"]).read()
    assert "| second | 4 | **1.000** | **0.500** | 0.000 |" in stdout
    assert open(out["t.tex"]).read() == analysis.latex_table([analysis.summarize(r, [0, 0.5, 1]) for r in runs])
    image = _read_png(out["acc.png"])
    assert image.shape == (round(4.8 * 150), round(6.4 * 150), 4)
    legend = analysis.certified_accuracy_figure(runs).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["first", "second"]


def test_cli_area_plot(tmp_path, capsys):
    rows = [(0, 1, 1, 0.4, 1), (1, 1, 1, 0.1, 1), (2, 1, -1, 0.0, 0)]
    area = ["12.5", "-3.25", "-inf"]
    path = write_tsv(tmp_path / "aniso.tsv", CERTIFY + ["area_objective"], _certify_rows(rows, lambda i: [area[i]]),
                     settings={**SETTINGS, "anisotropic": True})
    png = str(tmp_path / "area.png")
    assert analyze.main([path, "--area-plot", png]) == 0
    assert _read_png(png).shape == (720, 960, 4)


def test_cli_notes_an_ignored_partial_line(tmp_path, capsys):
    path = write_tsv(tmp_path / "killed.tsv", CERTIFY, _certify_rows(), tail="8\t1\t1")
    assert analyze.main([path]) == 0
    out = capsys.readouterr()
    assert "| killed | 8 | 0.625 |" in out.out
    assert out.err == f"note: {path}: ignored the partial last line 12\n"


def test_cli_errors_on_files(tmp_path, capsys, certify_file):
    missing = str(tmp_path / "nope.tsv")
    assert "no such file" in fails_with(analyze.main, capsys, [missing], missing)

    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    assert "empty" in fails_with(analyze.main, capsys, [str(empty)], str(empty))

    header_only = write_tsv(tmp_path / "header.tsv", CERTIFY, [])
    assert "no rows" in fails_with(analyze.main, capsys, [header_only], header_only)

    no_radius = write_tsv(tmp_path / "noradius.tsv", [c for c in CERTIFY if c != "radius"],
                          [r[:3] + r[4:] for r in _certify_rows()])
    assert "missing column 'radius'" in fails_with(analyze.main, capsys, [no_radius], no_radius)

    spaces = tmp_path / "spaces.tsv"
    spaces.write_text("idx label predict radius correct time\n0 1 1 0.5 1 0:00:01\n")
    assert "tab-separated" in fails_with(analyze.main, capsys, [str(spaces)], str(spaces))

    topk_half = write_tsv(tmp_path / "half.tsv", CERTIFY + ["topk_radius"], _certify_rows(extra=lambda i: [0.1]))
    assert "missing column 'topk_correct'" in fails_with(analyze.main, capsys, [topk_half], topk_half)

    unknown = write_tsv(tmp_path / "unknown.tsv", CERTIFY, _certify_rows(), settings={**SETTINGS, "mode": "attack"})
    assert "'attack'" in fails_with(analyze.main, capsys, [unknown], unknown)

    bad_json = tmp_path / "badjson.tsv"
    bad_json.write_text('# jaxsmooth certify {"mode": certify}\n' + _line(CERTIFY))
    fails_with(analyze.main, capsys, [str(bad_json)], f"{bad_json}:1")

    predict = write_tsv(tmp_path / "p.tsv", ["idx", "label", "predict", "correct", "time"],
                        [[0, 1, 1, 1, "0:00:01"]], settings={**SETTINGS, "mode": "predict"})
    assert "one mode at a time" in fails_with(analyze.main, capsys, [certify_file, predict], predict)
    fails_with(analyze.main, capsys, [predict, "--plot", str(tmp_path / "x.png")], predict)
    assert "area_objective" in fails_with(analyze.main, capsys, [certify_file, "--area-plot", str(tmp_path / "a.png")],
                                           "--area-plot")


@pytest.mark.parametrize("row, line, needle", [
    ((9, 1, 1, "0.5x", 1), 12, "column radius: '0.5x' is not a number"),
    ((9, 1, 1, "0.5", 2), 12, "column correct: 2 is not 0 or 1"),
    ((9, 1, 1, "-0.5", 1), 12, "is not a radius >= 0"),
    ((3, 1, 1, "0.5", 1), 12, "idx 3 is already on line 7"),
])
def test_cli_errors_on_rows(tmp_path, capsys, row, line, needle):
    rows = _certify_rows() + [list(row) + ["0:00:01", 0.9, 90, 1, 0.5, 0.5], _certify_rows()[0]]
    rows[-1][0] = 10
    path = write_tsv(tmp_path / "rows.tsv", CERTIFY, rows)
    assert needle in fails_with(analyze.main, capsys, [path], f"{path}:{line}")


@pytest.mark.parametrize("args, field", [
    (["--radii", "0,x"], "--radii"),
    (["--radii", "0,-1"], "--radii"),
    (["--radii", "0,,1"], "--radii"),
    (["--radii", "0,nan"], "--radii"),
    (["--radii", "0,1", "--step", "0.5"], "--radii"),
    (["--step", "0"], "--step"),
    (["--step", "abc"], "--step"),
    (["--max-radius", "-1"], "--max-radius"),
    (["--max-radius", "100", "--step", "0.01"], "--step"),
    (["--labels", "a,b"], "--labels"),
    (["--plot", "/nonexistent-dir/x.png"], "--plot"),
    (["--plot", "x.notaformat"], "--plot"),
])
def test_cli_errors_on_options(tmp_path, capsys, certify_file, args, field):
    argv = [certify_file] + [a.replace("x.notaformat", str(tmp_path / "x.notaformat")) for a in args]
    fails_with(analyze.main, capsys, argv, field)


def test_cli_runs_without_jax(tmp_path, certify_file):
    code = ("import sys; from jaxsmooth import analyze; rc = analyze.main(sys.argv[1:]); "
            "assert not [m for m in sys.modules if m == 'jax' or m.startswith('jax.')], 'jax imported'; "
            "sys.exit(rc)")
    png = str(tmp_path / "p.png")
    out = subprocess.run([sys.executable, "-c", code, certify_file, "--plot", png], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("| run | n | r = 0 |") and os.path.getsize(png) > 0
