"""report sigma: the sigma image (non_uniform Fig. 3), the blanket/Pareto filters, the report table, bad input."""

import math
import os

import numpy as np
import pytest

from jaxsmooth import config as config_lib, report
from jaxsmooth.results import CERTIFY, Table
from jaxsmooth.analysis import sigma as sigma_analysis
from jaxsmooth.benchmarks import sigma_report
from jaxsmooth.errors import UserError

from conftest import ROOT, one_device_env


def test_gray_sigma_image_is_the_linear_rescaling():
    sigma = np.array([0.1, 0.2, 0.3, 0.5], np.float32).reshape(2, 2, 1)
    want = np.array([[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(sigma_analysis.sigma_image(sigma)[..., 0], want, rtol=0, atol=1e-7)
    fig = sigma_analysis.sigma_image_figure(sigma)
    drawn = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_array_equal(drawn, sigma_analysis.sigma_image(sigma)[..., 0])
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)
    assert len(fig.axes) == 2  # the colourbar
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["0.1", "0.2", "0.3", "0.4", "0.5"]


def test_colour_sigma_image_is_scaled_globally_over_channels():
    sigma = np.zeros((1, 2, 3))
    sigma[0, 0] = [1.0, 2.0, 3.0]
    sigma[0, 1] = [2.0, 2.0, 5.0]
    want = (sigma - 1.0) / 4.0  # one min and max for all channels, not per channel
    image = sigma_analysis.sigma_image(sigma)
    np.testing.assert_array_equal(image, want)
    assert image[0, 1, 0] == 0.25 and image[0, 1, 2] == 1.0  # per channel these would be 1 and 1
    fig = sigma_analysis.sigma_image_figure(sigma)
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), want)
    assert len(fig.axes) == 1


def test_constant_sigma_is_mid_gray_and_bad_shapes_raise():
    np.testing.assert_array_equal(sigma_analysis.sigma_image(np.full((2, 2, 1), 0.3)), np.full((2, 2, 1), 0.5))
    for bad in (np.ones((2, 2)), np.ones((2, 2, 2)), np.full((1, 1, 1), np.nan)):
        with pytest.raises(UserError):
            sigma_analysis.sigma_image(bad)


def test_pareto_front_keeps_the_undominated_points():
    acc = [0.9, 0.8, 0.7, 0.85, 0.6, 0.9, np.nan]
    area = [1.0, 2.0, 3.0, 1.5, 2.5, 1.0, 9.0]
    # 4 (0.6, 2.5) is dominated by 2 (0.7, 3.0); equal points 0 and 5 both stay; nan dropped
    np.testing.assert_array_equal(sigma_analysis.pareto_front(acc, area), [0, 1, 2, 3, 5])
    np.testing.assert_array_equal(sigma_analysis.pareto_front([0.5, 0.6], [2.0, 2.0]), [1])


def test_blanket_keeps_points_outside_the_area_range_of_more_accurate_ones():
    acc = [0.9, 0.8, 0.85, 0.7, 0.95, np.nan]
    area = [2.0, 3.0, 1.0, 4.0, 2.5, 0.0]
    # by accuracy: 4 (2.5) kept; 0 (2.0 < 2.5) kept; 2 (1.0) kept; 1 (3.0 > 2.5) kept; 3 (4.0) kept
    np.testing.assert_array_equal(sigma_analysis.blanket(acc, area), [0, 1, 2, 3, 4])
    # (0.5, 2.0) lies between more accurate points at areas 1 and 3: dropped by both filters
    acc, area = [0.9, 0.5, 0.8, 0.6], [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_array_equal(sigma_analysis.blanket(acc, area), [0, 2, 3])
    np.testing.assert_array_equal(sigma_analysis.pareto_front(acc, area), [0, 2, 3])
    np.testing.assert_array_equal(sigma_analysis.blanket([0.9, 0.8, 0.7], [1.0, 3.0, 2.0]), [0, 1])
    # (0.5, 0.5) left of (0.9, 1.0): blanket keeps it (outside the range), Pareto drops it (dominated)
    np.testing.assert_array_equal(sigma_analysis.blanket([0.9, 0.5], [1.0, 0.5]), [0, 1])
    np.testing.assert_array_equal(sigma_analysis.pareto_front([0.9, 0.5], [1.0, 0.5]), [0])


def _run(label, correct, area, radius):
    cols = {"idx": np.arange(len(correct)), "label": np.zeros(len(correct), np.int64),
            "predict": np.where(np.isfinite(area), 0, -1), "correct": np.asarray(correct, np.int64),
            "radius": np.asarray(radius, np.float64), "area_objective": np.asarray(area, np.float64),
            "time": np.zeros(len(correct))}
    return Table(path=f"{label}.tsv", label=label, schema=CERTIFY, settings={"anisotropic": True}, columns=cols)


def test_rows_and_markdown_on_hand_built_runs():
    learned = _run("sigma", [1, 1, 1, 0, 0], [-10.0, -20.0, -30.0, -5.0, -np.inf], [0.5, 0.25, 0.25, 0.1, 0.0])
    iso = _run("isotropic", [1, 1, 0, 0], [-40.0, -np.inf, -10.0, -np.inf], [0.5, 0.0, 0.3, 0.0])
    # pooled correct finite areas: -10, -20, -30, -40 -> quartiles -32.5, -25, -17.5
    np.testing.assert_array_equal(sigma_report.default_areas([learned, iso]), [-32.5, -25.0, -17.5])
    areas = [-35.0, -25.0, -15.0]
    a = sigma_report.row_of(learned, areas, 41.6, 0.3125)
    b = sigma_report.row_of(iso, areas, 12.2, 0.3125)
    assert (a.num_examples, a.certified_accuracy, a.area_mean, a.area_median) == (5, 0.6, -20.0, -20.0)
    np.testing.assert_array_equal(a.area_accuracy, [0.6, 0.4, 0.2])
    assert a.mean_radius == pytest.approx(0.2)
    assert (b.certified_accuracy, b.area_mean, b.area_median) == (0.5, -40.0, -40.0)
    np.testing.assert_array_equal(b.area_accuracy, [0.0, 0.0, 0.0])
    assert b.mean_radius == 0.125
    assert sigma_report.markdown([a, b]).splitlines() == [
        "| run | n | mean sigma | cert. acc | O_CA mean | O_CA median | cert. acc O_CA >= -35 | cert. acc O_CA >= -25 "
        "| cert. acc O_CA >= -15 | mean inscribed r | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| sigma | 5 | 0.312 | 0.600 | -20.00 | -20.00 | 0.600 | 0.400 | 0.200 | 0.200 | 42 |",
        "| isotropic | 4 | 0.312 | 0.500 | -40.00 | -40.00 | 0.000 | 0.000 | 0.000 | 0.125 | 12 |"]
    none = sigma_report.row_of(_run("x", [0], [-1.0], [0.0]), areas, 1.0)
    assert math.isnan(none.area_mean) and "| x | 1 | - | 0.000 | - | - |" in sigma_report.markdown([none])
    assert sigma_report.sweep_markdown([a, b], [1]).splitlines()[2:] == [
        "| sigma | 0.600 | -20.00 | no |", "| isotropic | 0.500 | -40.00 | yes |"]
    with pytest.raises(ValueError):
        sigma_report.markdown([a, sigma_report.row_of(iso, [0.0], 1.0)])


def test_suite_configs():
    for suite in sigma_report.SUITES:
        path, own = sigma_report.base_config(suite)
        assert os.path.exists(path) and os.path.exists(sigma_report.sigma_config(suite)), suite
    assert sigma_report.base_config("fashion_mnist") == (config_lib.packaged("mnist_gaussian"),
                                                         ["data.name=fashion_mnist"])
    assert sigma_report.parse_sweep("0.1,0.25") == [0.1, 0.25] and sigma_report.parse_sweep("") == []


@pytest.mark.parametrize("args, field", [(["--suite", "svhn"], "--suite"),
                                         (["--sigma-sweep", "0.1,x"], "--sigma-sweep"),
                                         (["--sigma-sweep", "0.1,-1"], "--sigma-sweep"),
                                         (["--sigma-sweep", "0.1,0.1"], "--sigma-sweep"),
                                         (["--areas=-3,-5"], "--areas"), (["--areas=1,x"], "--areas")])
def test_bad_input_is_one_line(tmp_path, capsys, args, field):
    assert report.main(["sigma", "--workdir", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_learned_sigma_certifies_a_larger_area_than_its_isotropic_mean_on_digits(quickstart_model, tmp_path):
    """non_uniform Fig. 1 on digits: the CLI in a one-device subprocess (the 8 fake devices here are slower)."""
    import shutil
    import subprocess
    import sys

    from jaxsmooth import analysis

    workdir = str(tmp_path / "sigma")
    shutil.copytree(quickstart_model[0], os.path.join(workdir, "gaussian"))  # its base run: resumed, not trained
    subprocess.run([sys.executable, "-m", "jaxsmooth.report", "sigma", "--suite", "digits", "--workdir", workdir,
                    "--skip", "6", "--n", "2000"], check=True, env=one_device_env(), cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    learned, isotropic = (analysis.read_run(os.path.join(workdir, f"{name}_certify.tsv"))
                          for name in ("sigma", "isotropic"))
    accuracy = lambda run: float(np.mean(run.columns["correct"] == 1))
    assert accuracy(learned) >= accuracy(isotropic) >= 0.9
    area = lambda run: float(np.mean(sigma_report.correct_areas(run)))
    assert area(learned) > area(isotropic) + 5.0, (area(learned), area(isotropic))


def test_sweep_points_are_every_evaluation_of_every_run(tmp_path):
    import json

    rows = {"sigma_0.1": [(1, 0.99, -40.0), (2, 0.98, -35.0)], "sigma_0.3": [(1, 0.95, -20.0), (2, 0.96, -38.0)]}
    for name, evals in rows.items():
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "metrics.jsonl", "w") as f:
            f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n")  # a training row: not a point
            for epoch, acc, area in evals:
                f.write(json.dumps({"epoch": epoch, "test_smoothed_accuracy": acc, "test_area": area}) + "\n")
    points = sigma_report.sweep_points(str(tmp_path), list(rows))
    assert [(p.run, p.epoch, p.accuracy, p.area) for p in points] == [
        (name, e, a, o) for name, evals in rows.items() for e, a, o in evals]
    kept = sigma_analysis.blanket([p.accuracy for p in points], [p.area for p in points])
    # by accuracy: 0.99 @ -40 kept; 0.98 @ -35 widens the range; 0.96 @ -38 lies inside it: dropped; 0.95 @ -20 kept
    np.testing.assert_array_equal(kept, [0, 1, 2])
    table = sigma_report.sweep_points_markdown(points, kept)
    assert table.count("| yes |") == 3 and table.count("| no |") == 1
