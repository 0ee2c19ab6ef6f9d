"""report nal's table: the accuracy table of analyze with a training-time column, on hand-built accuracy files."""

import pytest

from jaxsmooth import report
from jaxsmooth.analysis import attacks as attack_analysis
from jaxsmooth.benchmarks import nal_report


def _accuracy_file(path, rows):
    settings = '{"mode": "accuracy", "attack": "pgd", "radii": [0.0, 1.0], "steps": 20, "test_noise_sigma": 0.25}'
    lines = ["# jaxsmooth attack-accuracy " + settings, "idx\tlabel\tradius\tcorrect\tcorrect_noisy\ttime"]
    lines += ["\t".join(map(str, r)) + "\t0:00:01" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_markdown_adds_the_training_time(tmp_path):
    a = attack_analysis.read_accuracy(_accuracy_file(tmp_path / "a.tsv", [(0, 1, 0.0, 1, 1), (0, 1, 1.0, 0, 1)]), "nal")
    b = attack_analysis.read_accuracy(_accuracy_file(tmp_path / "b.tsv", [(0, 1, 0.0, 1, 0), (0, 1, 1.0, 0, 0)]), "wrm")
    rows = [nal_report.Row("nal", 0.9, a, 41.6), nal_report.Row("wrm", 0.8, b, 12.2)]
    table = nal_report.markdown(rows).splitlines()
    assert table[0].endswith(" train s |") and table[1].endswith("---:|")
    assert table[2].startswith("| nal |") and table[2].endswith(" 42 |")
    assert table[3].startswith("| wrm |") and table[3].endswith(" 12 |")
    assert table[2:] == [line + f" {t} |" for line, t in zip(
        attack_analysis.accuracy_table([a, b]).splitlines()[2:], (42, 12))]


def test_suite_configs_exist_for_every_run():
    for suite in ("digits", "mnist"):
        for name in nal_report.RUNS:
            path, overrides = nal_report.run_config(suite, name)
            assert path.endswith(".py") and __import__("os").path.exists(path), path
    # wrm and smoothadv take the nal config's settings into their own blocks (configs/mnist_nal.py: gamma 0.25)
    assert nal_report.run_config("mnist", "wrm")[1] == [
        "objective.name=wrm", "model.activation=elu", "wrm.gamma=0.25", "wrm.ascent_steps=4", "wrm.ascent_lr=0.0",
        "wrm.clip=False"]
    assert nal_report.run_config("mnist", "smoothadv", ["nal.gamma=3", "nal.num_noise=2"])[1] == [
        "objective.name=smoothadv", "smoothadv.num_noise=2", "smoothadv.pgd_steps=4", "smoothadv.clip=False"]


@pytest.mark.parametrize("args, field", [(["--suite", "svhn"], "--suite"), (["--runs", "nal,trades"], "--runs"),
                                         (["--radii", "0,x"], "--radii")])
def test_bad_input_is_one_line(tmp_path, capsys, args, field):
    assert report.main(["nal", "--workdir", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err
