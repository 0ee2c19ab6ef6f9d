"""The distributional-robustness certificate (nal Thm 1 eq. 3, eq. 7, eq. 8, §5.1): hand computations, the
linear closed form, soundness against the empirical worst case on digits, the CLI and analyze."""

import datetime
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsmooth import analysis, analyze, certify, cli, loader, noise, results, train
from jaxsmooth.certification import distributional

from conftest import ROOT
from helpers import copy_sidecar, sidecar_settings

QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")
SMALL = ["--config.model.width=4", "--config.train.num_epochs=2", "--config.train.eval_every_epochs=0"]


# ---- the certificate curve and epsilon, by hand ----

def test_certificate_is_the_min_over_gamma_of_the_lines():
    # gamma = 1, E[phi] = 0.5 and gamma = 3, E[phi] = -1: at rho = 0 min(0.5, -1) = -1; at rho = 1
    # min(1.5, 2) = 1.5; at rho = 2 min(2.5, 5) = 2.5; at rho = 0.75 min(1.25, 1.25) = 1.25.
    got = distributional.certificate([0.0, 1.0, 2.0, 0.75], [1.0, 3.0], [0.5, -1.0])
    np.testing.assert_allclose(got, [-1.0, 1.5, 2.5, 1.25], rtol=0, atol=1e-15)
    assert float(distributional.certificate(2.0, [0.5], [0.25])) == 1.25  # one gamma: the line of eq. 3
    np.testing.assert_allclose(distributional.epsilon_from_rho([4.0, 0.25, 0.0]), [2.0, 0.5, 0.0])
    with pytest.raises(ValueError):
        distributional.certificate([0.0], [1.0, 2.0], [0.0])


# ---- phi on fresh draws for a linear loss ----

def test_phi_on_fresh_draws_matches_the_closed_form_minus_the_documented_bias():
    # l(s) = w.s: sup_x E_Z[w.(x+z) - gamma ||x+z-x0||^2] = w.x0 + ||w||^2/(4 gamma) - gamma d sigma^2 (nal Thm 1).
    # The ascent lands on x* - zbar (one Newton step), so on fresh draws E[phi] = closed - gamma d sigma^2 / r,
    # E[cost] = ||w||^2/(4 gamma^2) + d sigma^2 (1 + 1/r), E[loss] = w.x0 + ||w||^2/(2 gamma).
    rng = np.random.default_rng(5)
    d, gamma, sigma, r, n = 16, 0.5, 0.5, 4, 4000
    w = jnp.asarray(rng.normal(size=d), jnp.float32)
    x0 = jnp.asarray(rng.uniform(size=(n, 4, 4, 1)), jnp.float32)
    loss = lambda s: jnp.einsum("nrd,d->nr", s.reshape(*s.shape[:2], -1), w)
    out = jax.jit(lambda x, i: distributional.estimate_points(
        loss, x, i, gamma, 0.5 / gamma, jax.random.key(7), sigma=sigma, num_draws=r, steps=3))(
        x0, jnp.arange(n, dtype=jnp.int32))
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}
    wx0, ww = np.asarray(x0.reshape(n, -1) @ w, np.float64), float(w @ w)
    closed = wx0 + ww / (4 * gamma) - gamma * d * sigma**2
    bias = gamma * d * sigma**2 / r
    checks = [(out["phi"] - closed, -bias),
              (out["cost"], ww / (4 * gamma**2) + d * sigma**2 * (1 + 1 / r)),
              (out["loss"] - wx0, ww / (2 * gamma))]
    for values, expected in checks:
        se = values.std() / np.sqrt(n)
        assert abs(values.mean() - expected) < 3 * se, (values.mean(), expected, se)
    assert abs((out["phi"] - closed).mean()) > 3 * (out["phi"] - closed).std() / np.sqrt(n)  # the bias is real
    assert np.all(out["last_step"] < 1e-4)  # converged after the first step


def test_keep_best_never_lowers_the_ascent_surrogate():
    # Without concavity (a loss of period ~ the step) eta_1 oscillates: the kept iterate is the best one seen.
    rng = np.random.default_rng(1)
    w = jnp.asarray(3 * rng.normal(size=16), jnp.float32)
    loss = lambda s: jnp.sin(4 * jnp.einsum("nrd,d->nr", s, w))
    x0 = jnp.asarray(rng.uniform(size=(64, 16)), jnp.float32)
    z = 0.3 * jax.random.normal(jax.random.key(0), (64, 8, 16))
    kw = dict(gamma=0.1, lr=5.0, steps=6)
    best, _ = distributional.ascend(loss, x0, z, **kw)
    last, step = distributional.ascend(loss, x0, z, keep_best=False, **kw)
    from jaxsmooth.objectives import nal
    np.testing.assert_allclose(last, nal.inner_maximize(loss, x0, z, **kw), atol=1e-5)
    value = lambda x: np.asarray(nal.surrogate(loss, x, x0, z, gamma=0.1))
    assert np.all(value(best) >= value(last) - 1e-5) and np.all(value(best) >= value(x0) - 1e-5)
    assert np.any(value(best) > value(last) + 1e-3)
    np.testing.assert_allclose(step, np.linalg.norm(last - nal.inner_maximize(loss, x0, z, **{**kw, "steps": 5}),
                                                    axis=1), rtol=1e-4, atol=1e-5)


# ---- soundness on data ----

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("distributional") / "run")
    assert train.main(["--config", QUICKSTART, "--workdir", path, "--no-progress"] + SMALL) == 0
    return path


@pytest.mark.slow
def test_empirical_worst_case_lies_under_the_certificate_on_digits(workdir):
    # nal Thm 1: for any x, E_Z l(x+z) - gamma E_Z c(x+z, x0) <= phi_gamma(x0); so each gamma_adv's point
    # (mean rho_test, mean loss) is under gamma rho + E[phi_gamma] for every certificate gamma, hence under their min.
    # Paired per example: mean_i (loss_i - gamma cost_i - phi_i) <= 3 standard errors.
    config = cli.load_config(QUICKSTART, [s.removeprefix("--config.") for s in SMALL])
    model, dataset = loader.load_with_data(config, workdir)  # BatchNorm folded, as certify runs it
    idx = np.arange(0, 360, 4)
    images, labels = dataset.test.get(idx)
    x = np.asarray(images, np.float32) / 255
    estimator = distributional.make_estimator(model.apply, sigma=0.25, num_draws=16, steps=20)
    key = noise.certify_key(noise.root_key(0))
    est = lambda g: distributional.estimate_batch(estimator, model.params, model.model_state, x, labels, idx, g, key)
    gammas, gamma_adv = [2.0, 4.0], [0.5, 1.5, 3.0, 8.0]
    cert = {g: est(g) for g in gammas}
    mean_phi = [cert[g]["phi"].mean() for g in gammas]
    points = []
    for ga in gamma_adv:
        adv = est(ga)
        points.append((adv["cost"].mean(), adv["loss"].mean()))
        for g in gammas:
            diff = adv["loss"] - g * adv["cost"] - cert[g]["phi"]
            se = diff.std(ddof=1) / np.sqrt(diff.size)
            assert diff.mean() <= 3 * se, (ga, g, diff.mean(), se)
        assert points[-1][1] <= distributional.certificate(points[-1][0], gammas, mean_phi) + 3 * adv["loss"].std()
    rho, loss = np.asarray(points).T
    assert np.all(np.diff(rho) < 0)  # a larger gamma_adv buys less transport and less loss: the curve is traced
    assert loss[0] > loss[-1] + 1.0
    # at gamma = 4 the ascent has converged; at gamma = 2 eta_1 = 0.5 / gamma still oscillates on many examples
    # (keep_best keeps its best iterate), and the bound holds all the same
    assert np.median(cert[4.0]["last_step"]) < 0.02


# ---- the CLI ----

def _dist(workdir, out, *extra):
    return certify.main(["--config", QUICKSTART, "--checkpoint", workdir, "--out", str(out), "--mode",
                        "distributional", "--num-draws", "8", "--ascent-steps", "5", "--no-progress"] + SMALL
                       + list(extra))


def _rows(path):
    with open(path) as f:
        lines = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    return lines[0], lines[1:]


@pytest.mark.slow
def test_cli_rows_and_resume(workdir, tmp_path, capsys):
    full, cut = tmp_path / "full.tsv", tmp_path / "cut.tsv"
    args = ["--gamma", "2", "--gamma-adv", "1,4", "--skip", "30", "--max", "150", "--examples", "2"]
    assert _dist(workdir, full, *args) == 0
    header, rows = _rows(full)
    assert header == ["idx", "label", "kind", "gamma", "phi", "cost", "loss", "last_step", "time"]
    assert [(int(r[0]), r[2], float(r[3])) for r in rows] == [
        (i, k, g) for i in (0, 30, 60, 90, 120) for k, g in (("certificate", 2.0), ("empirical", 1.0),
                                                              ("empirical", 4.0))]
    for r in rows:
        phi, cost, loss, gamma = float(r[4]), float(r[5]), float(r[6]), float(r[3])
        assert phi == pytest.approx(loss - gamma * cost, rel=1e-4, abs=1e-4) and cost > 0 and loss >= 0
    settings = sidecar_settings(full, "certify")
    assert settings["mode"] == "distributional" and settings["gammas"] == [2.0] and settings["gamma_adv"] == [1.0, 4.0]
    lines = full.read_text().splitlines(keepends=True)
    # the last example: its third row lost, its second cut mid-line; its first row complete but to be redone
    cut.write_text("".join(lines[:-2]) + lines[-2][:7])
    copy_sidecar(full, cut)
    capsys.readouterr()
    assert _dist(workdir, cut, *args) == 0
    assert "(1 this run)" in capsys.readouterr().out
    drop_time = lambda p: [r[:8] for r in _rows(p)[1]]
    assert drop_time(cut) == drop_time(full)
    assert _dist(workdir, cut, *args) == 0  # complete: nothing to do
    assert "(0 this run)" in capsys.readouterr().out
    assert _dist(workdir, cut, "--gamma", "3", *args[2:]) == 2  # other settings: refused, nothing lost
    assert "error: --out: " in capsys.readouterr().err and drop_time(cut) == drop_time(full)


@pytest.mark.parametrize("extra, field", [
    ([], "--gamma"),
    (["--gamma", "0"], "--gamma"),
    (["--gamma=-1,2"], "--gamma"),
    (["--gamma", "a"], "--gamma"),
    (["--gamma", "1", "--gamma-adv", "0"], "--gamma-adv"),
    (["--gamma", "1", "--num-draws", "0"], "--num-draws"),
    (["--gamma", "1", "--ascent-steps", "-1"], "--ascent-steps"),
])
def test_cli_bad_input_is_one_line(untrained_model, tmp_path, capsys, extra, field):
    assert _dist(untrained_model, tmp_path / "x.tsv", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err
    assert not (tmp_path / "x.tsv").exists()


def test_gamma_without_distributional_mode_is_refused(untrained_model, tmp_path, capsys):
    assert certify.main(["--config", QUICKSTART, "--checkpoint", untrained_model, "--out", str(tmp_path / "x.tsv"),
                        "--gamma", "1"] + SMALL) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match("error: --gamma: ", err[0])


# ---- analyze ----

SETTINGS = {"mode": "distributional", "gammas": [1.0, 2.0], "gamma_adv": [0.5], "sigma": 0.25}
# (idx, kind, gamma, phi, cost, loss)
ROWS = [
    (0, "certificate", 1.0, 1.0, 3.0, 4.0), (0, "certificate", 2.0, 0.0, 1.0, 2.0),
    (0, "empirical", 0.5, 2.0, 6.0, 5.0),
    (1, "certificate", 1.0, 3.0, 5.0, 8.0), (1, "certificate", 2.0, -2.0, 3.0, 4.0),
    (1, "empirical", 0.5, 4.0, 10.0, 9.0),
    (2, "certificate", 1.0, 9.0, 9.0, 9.0),  # an incomplete example (killed run): left out
]


def _write(path, rows=ROWS, tail=""):
    with open(path, "w") as f:
        f.write("# jaxsmooth certify " + json.dumps(SETTINGS) + "\n# a comment\n")
        f.write("\t".join(results.DISTRIBUTIONAL.header()) + "\n")
        for idx, kind, gamma, phi, cost, loss in rows:
            f.write("\t".join(str(v) for v in (idx, 7, kind, gamma, phi, cost, loss, 0.001,
                                               datetime.timedelta(seconds=0.5))) + "\n")
        f.write(tail)


def test_analyze_table_on_a_hand_built_file(tmp_path, capsys):
    path = tmp_path / "dist.tsv"
    _write(path, tail="3\t7\tcertif")
    run = analysis.read_distributional(str(path))
    assert run.ignored_line == 11
    s = {(x.kind, x.gamma): x for x in analysis.summarize_distributional(run)}
    # gamma 1: E[phi] = 2, E[c] = 4, eps = 2; gamma 2: E[phi] = -1, E[c] = 2; gamma_adv 0.5: rho_test 8, loss 7
    assert (s["certificate", 1.0].phi, s["certificate", 1.0].cost, s["certificate", 1.0].epsilon) == (2.0, 4.0, 2.0)
    assert (s["certificate", 2.0].phi, s["certificate", 2.0].cost) == (-1.0, 2.0)
    assert s["certificate", 2.0].epsilon == pytest.approx(np.sqrt(2.0), abs=1e-15)
    assert (s["empirical", 0.5].cost, s["empirical", 0.5].loss, s["empirical", 0.5].num_examples) == (8.0, 7.0, 2)
    assert s["certificate", 1.0].phi_se == pytest.approx(1.0)  # std (ddof 1) of 1, 3 is sqrt 2; / sqrt 2
    png = tmp_path / "fig.png"
    assert analyze.main([str(path), "--rho", "0,1,3,8", "--plot", str(png), "--markdown", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr()
    assert "ignored the partial last line 11" in out.err
    # certificate(rho) = min(rho + 2, 2 rho - 1): 0 -> -1, 1 -> 1, 3 -> 5, 8 -> 10; at rho_test 8: 10 >= loss 7
    assert "| certificate | -1.0000 | 1.0000 | 5.0000 | 10.0000 |" in out.out
    assert "| 0.5 | 8.0000 | 7.0000 | 10.0000 | yes |" in out.out
    assert "| certificate | 1 | 2 | 2.0000 | 1.0000 | 4.0000 | 1.0000 | 2.0000 | 6.0000 | 2.0000 |" in out.out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "t.md").read_text() == out.out


def test_analyze_distributional_flags_and_mixing(tmp_path, capsys):
    path = tmp_path / "dist.tsv"
    _write(path)
    assert analyze.main([str(path), "--radii", "0,1"]) == 2
    assert capsys.readouterr().err.startswith("error: --radii: ")
    assert analyze.main([str(path), "--rho", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --rho: ")
    assert not analysis.is_distributional_file(str(tmp_path / "missing.tsv"))
