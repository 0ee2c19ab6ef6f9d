"""Non-uniform smoothing: Theorem 3.1 on linear classifiers, the sigma objective's gradient and masking,
that it learns where a classifier does not look, and one error per bad input."""

import argparse
import math
import os
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from scipy import stats

from jaxsmooth import (certification as C, certify, checkpoint, config as config_lib, loader, objectives, results,
                       trainer)
from jaxsmooth.errors import UserError
from jaxsmooth.objectives import sigma as sigma_objective

from helpers import quick_config, sidecar_settings, tsv_rows

SHAPE = (2, 5, 1)
D = 10


def linear_apply(params, model_state, x, train=False):
    """Two classes: logit_1 = w.x + b, logit_0 = 0; so f(x) = 1[w.x + b > 0]."""
    z = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
    return jnp.stack([jnp.zeros_like(z), z], -1), model_state


def _sigma_config(**fields):
    """The sigma objective's config: `sigma` sets objective.sigma (the initial constant), the others its block."""
    c = config_lib.default()
    with c.unlocked():
        c.objective.name = "sigma"
        for k, v in fields.items():
            (c.objective if k == "sigma" else c.sigma)[k] = v
    return c


def _points(rng, w, b, sigma, margins):
    """Inputs x with (w.x + b) / ||sigma w|| = margins (signed), in the shape SHAPE."""
    base = rng.normal(size=(len(margins), D))
    scale = np.linalg.norm(sigma.ravel() * w)
    # move each x along w so that w.x + b hits the target
    target = np.asarray(margins) * scale
    x = base + ((target - base @ w - b) / (w @ w))[:, None] * w[None]
    return x.reshape((-1, *SHAPE)).astype(np.float32)


def _exact_area(x, w, b, sigma):
    """sum log sigma + D log(|w.x + b| / ||sigma w||): the largest ellipsoid {||delta / sigma|| < R} within g's
    class."""
    margin = np.abs(x.reshape(len(x), -1).astype(np.float64) @ w + b) / np.linalg.norm(sigma.ravel() * w)
    return np.sum(np.log(sigma)) + D * np.log(margin)


# --------------------------------------------------------------------------
# Theorem 3.1 on a linear classifier


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    w = rng.normal(size=D)
    sigma = rng.uniform(1.0, 3.0, size=SHAPE)
    return {"w": w, "b": 0.3, "sigma": sigma, "params": {"w": w.astype(np.float32), "b": np.float32(0.3)}}


def test_probability_under_per_pixel_noise_is_phi_of_the_scaled_margin(linear):
    """P[f(x + sigma z) = 1] = Phi((w.x + b) / ||sigma w||) (the closed form behind Thm 3.1's tightness)."""
    w, b, sigma = linear["w"], linear["b"], linear["sigma"]
    margins = np.array([-1.0, 0.0, 0.5, 1.5])
    x = _points(np.random.default_rng(1), w, b, sigma, margins)
    sampler = C.Sampler(linear_apply, linear["params"], {}, input_shape=SHAPE, num_classes=2, inputs=4, chunk=1000)
    n = 40_000
    counts = sampler(x, np.arange(4), sigma.astype(np.float32), n, jax.random.key(3)).counts
    p = stats.norm.cdf(margins)
    np.testing.assert_allclose(counts[:, 1] / n, p, atol=4 * np.sqrt(0.25 / n))


def test_certified_area_is_sound_and_tight_on_a_linear_classifier(linear):
    """Over points x keys, certified O_CA > exact O_CA in at most an alpha fraction; at n = 1e5 the median is tight.

    The exact O_CA is that of the largest ellipsoid {||delta / sigma|| < R} inside the smoothed classifier's
    half-space: R = |w.x + b| / ||sigma w|| = Phi^-1(p_A), which Theorem 3.1 attains for a linear f.
    """
    w, b, sigma = linear["w"], linear["b"], linear["sigma"]
    rng = np.random.default_rng(2)
    points, keys, alpha = 40, 60, 0.05
    margins = rng.uniform(0.3, 2.0, points) * rng.choice([-1, 1], points)
    x = _points(rng, w, b, sigma, margins)
    exact = _exact_area(x, w, b, sigma)
    truth = (margins > 0).astype(int)
    sampler = C.Sampler(linear_apply, linear["params"], {}, input_shape=SHAPE, num_classes=2, inputs=points,
                        chunk=125)
    settings = C.Settings(n0=50, n=1000, alpha=alpha)
    violations = certified = 0
    for k in range(keys):
        rows = map(results.CERTIFY.row, C.certify_batch(sampler, x, np.arange(points), sigma, settings,
                                                        jax.random.key(100 + k)))
        for i, row in enumerate(rows):
            area = row["area_objective"]
            if row["predict"] == C.ABSTAIN:
                assert area == -math.inf
                continue
            certified += 1
            # a wrong class certified at all, or the right one with more area than exists: the certificate fails
            violations += row["predict"] != truth[i] or area > exact[i]
    cases = points * keys
    assert certified > 0.8 * cases
    # Clopper-Pearson is nearly exact at n = 1000, so the violation rate sits just under alpha (117 of 2400 with
    # these keys): allow the binomial sampling error of a rate of alpha (one-sided, level 0.001), no more.
    assert violations <= stats.binom.ppf(0.999, cases, alpha), (violations, cases)

    # tightness: n = 100,000 estimates p_A closely, so the certified area approaches the exact one
    tight = np.abs(margins) > 1.0
    xt, exact_t = x[tight][:6], exact[tight][:6]
    sampler = C.Sampler(linear_apply, linear["params"], {}, input_shape=SHAPE, num_classes=2, inputs=len(xt),
                        chunk=2500)
    rows = map(results.CERTIFY.row, C.certify_batch(sampler, xt, np.arange(len(xt)), sigma,
                                                    C.Settings(n0=100, n=100_000, alpha=0.001), jax.random.key(7)))
    areas = np.array([r["area_objective"] for r in rows])
    assert np.all(areas <= exact_t)
    assert np.median(np.abs(areas - exact_t) / np.abs(exact_t)) < 0.05, (areas, exact_t)


# --------------------------------------------------------------------------
# The objective


def _objective(num_noise=8, sigma=0.5, params=None, bias=0.3):
    rng = np.random.default_rng(4)
    w = rng.normal(size=D).astype(np.float32)
    teacher = ({"w": w, "b": np.float32(bias)} if params is None else params, {})
    config = _sigma_config(num_noise=num_noise, sigma=sigma)
    return objectives.build(config, linear_apply, teacher), teacher


def _batch(x, labels):
    return {"image": jnp.asarray(x), "label": jnp.asarray(labels, jnp.int32),
            "index": jnp.arange(len(x), dtype=jnp.int32)}


def test_objective_matches_algorithm_1_with_the_same_noise():
    """The loss is - mean over counted examples of sum log sigma + D Phi^-1(mean softmax_c) with the z it drew."""
    loss_fn, (params, _) = _objective(num_noise=6)
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, size=(5, *SHAPE)).astype(np.float32)
    labels = np.array([1, 0, 1, 1, 0])
    log_sigma = np.log(rng.uniform(0.2, 0.8, size=SHAPE)).astype(np.float32)
    key = jax.random.key(11)
    loss, aux = loss_fn({"log_sigma": jnp.asarray(log_sigma)}, {}, _batch(x, labels), key)
    z = np.asarray(jax.vmap(lambda k: jax.random.normal(k, (6, *SHAPE)))(
        jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(5))), np.float64)
    noisy = x[:, None].astype(np.float64) + np.exp(log_sigma) * z
    logit = noisy.reshape(5, 6, D) @ params["w"].astype(np.float64) + params["b"]
    p1 = 1 / (1 + np.exp(-logit))
    pc = np.where(labels[:, None] == 1, p1, 1 - p1)
    p_hat = pc.mean(1)
    votes = np.where(labels[:, None] == 1, logit > 0, logit <= 0).mean(1)
    counted = (votes > 0.5) & (p_hat > 0.5 + sigma_objective.P_MARGIN)
    assert counted.sum() >= 2
    o_ca = np.sum(log_sigma) + D * np.log(stats.norm.ppf(np.maximum(p_hat, 0.5 + 1e-9)))
    assert float(loss) == pytest.approx(-o_ca[counted].mean(), rel=1e-4)
    assert float(aux["metrics"]["certifiable"]) == pytest.approx(counted.mean())


def test_test_split_area_evaluation_is_the_objective_on_its_draws():
    """The per-sub-epoch evaluation (one pass per draw, a scan) sums what the loss computes on the same draws."""
    n, b = 7, 6
    rng = np.random.default_rng(9)
    w = rng.normal(size=D).astype(np.float32)
    params = {"w": w, "b": np.float32(0.2)}
    x = rng.uniform(0, 1, size=(b, *SHAPE)).astype(np.float32)
    labels = (x.reshape(b, D) @ w + 0.2 > 0).astype(np.int32)
    labels[0] = 1 - labels[0]  # one wrong: not counted
    labels = jnp.asarray(labels)
    index = jnp.arange(b, dtype=jnp.int32)
    mask = jnp.asarray([True] * (b - 1) + [False])
    log_sigma = jnp.asarray(np.log(rng.uniform(0.05, 0.3, size=SHAPE)), jnp.float32)
    key = jax.random.key(4)
    got = jax.jit(sigma_objective.make_area_eval(linear_apply, n))(params, {}, x, labels, index, key, log_sigma, mask)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    z = jax.vmap(lambda k: jax.random.normal(k, (n, *SHAPE)))(keys)
    logits, _ = linear_apply(params, {}, (x[:, None] + jnp.exp(log_sigma) * z).reshape((b * n, *SHAPE)))
    o_ca, counted, _, correct = sigma_objective.certified_area_objective(log_sigma, logits.reshape((b, n, 2)), labels)
    counted = np.asarray(counted & mask)
    assert counted.sum() >= 3 and int(got["area_count"]) == counted.sum()
    assert int(got["smoothed_correct"]) == int(np.sum(np.asarray(correct) & np.asarray(mask)))
    assert float(got["area_sum"]) == pytest.approx(float(np.sum(np.asarray(o_ca)[counted])), rel=1e-5)


def test_reparameterised_gradient_matches_finite_differences():
    loss_fn, _ = _objective(num_noise=16)
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, size=(6, *SHAPE)).astype(np.float32)
    labels = np.array([1, 1, 0, 1, 0, 1])
    log_sigma = jnp.asarray(np.log(rng.uniform(0.2, 0.6, size=SHAPE)), jnp.float32)
    batch, key = _batch(x, labels), jax.random.key(12)  # a fixed key: fixed z

    f = jax.jit(lambda ls: loss_fn({"log_sigma": ls}, {}, batch, key)[0])
    grad = jax.grad(f)(log_sigma)
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 0
    eps = 1e-2
    for d in range(4):
        direction = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
        fd = (float(f(log_sigma + eps * direction)) - float(f(log_sigma - eps * direction))) / (2 * eps)
        assert float(jnp.vdot(grad, direction)) == pytest.approx(fd, rel=2e-2, abs=1e-2)


@pytest.mark.slow
def test_loss_and_gradient_are_finite_for_every_p_hat():
    """p_hat near 0, at and around the 1/2 + margin cut, and at 1 (saturated float32 softmax): finite values."""
    log_sigma = jnp.full(SHAPE, math.log(0.3))
    # logit gaps g: p_c = sigmoid(g); from certain misclassification to saturation
    gaps = np.array([-200.0, -30.0, -1e-3, 0.0, 1e-7, 1e-3, 2.0 * sigma_objective.P_MARGIN, 0.01, 5.0, 30.0, 200.0,
                     1e4], np.float32)

    def total(ls, g):
        logits = jnp.stack([jnp.zeros_like(g), g], -1)[:, None, :].repeat(3, 1)  # [B, n0 = 3, 2]
        o_ca, counted, _, _ = sigma_objective.certified_area_objective(ls, logits, jnp.ones(len(g), jnp.int32))
        return -jnp.sum(o_ca) / jnp.maximum(counted.sum(), 1)

    value_and_grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))
    value, (g_sigma, g_logits) = value_and_grad(log_sigma, jnp.asarray(gaps))
    assert np.isfinite(value) and np.all(np.isfinite(g_sigma)) and np.all(np.isfinite(g_logits))
    for g in gaps:  # each example alone, counted or not
        value, (g_sigma, g_logits) = value_and_grad(log_sigma, jnp.asarray([g]))
        assert np.isfinite(value) and np.all(np.isfinite(g_sigma)) and np.all(np.isfinite(g_logits)), g
    # the same through the whole objective, with classifiers that put p_hat at 0, 1/2 and 1
    x = _batch(np.full((4, *SHAPE), 0.5, np.float32), [1, 1, 0, 1])
    for bias in (-1e4, 0.0, 1e-6, 1e4):
        loss_fn, _ = _objective(params={"w": np.zeros(D, np.float32), "b": np.float32(bias)})
        value, grad = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, {}, x, jax.random.key(0))[0]))(
            {"log_sigma": log_sigma})
        assert np.isfinite(value) and np.all(np.isfinite(grad["log_sigma"])), bias


def test_sigma_grows_where_the_classifier_does_not_look():
    """Only the first 4 of 16 pixels carry the label and are read; trained sigma is >= 3x larger on the other 12."""
    shape, read = (4, 4, 1), 4
    rng = np.random.default_rng(8)
    w = np.zeros(16, np.float32)
    w[:read] = 1.0

    def apply(params, model_state, x, train=False):
        z = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
        return jnp.stack([-z, z], -1), model_state

    labels = rng.integers(0, 2, 512)
    x = rng.uniform(0, 1, size=(512, 16)).astype(np.float32)
    x[:, :read] = np.where(labels[:, None] == 1, 0.75, 0.25) + rng.normal(0, 0.05, (512, read))
    x = x.reshape((512, *shape))
    loss_fn = objectives.build(_sigma_config(num_noise=8, sigma=0.1), apply, ({"w": w, "b": np.float32(-2.0)}, {}))
    params, _ = sigma_objective.initial_variables(_sigma_config(sigma=0.1), shape)
    tx = optax.adam(0.02)

    @jax.jit
    def step(params, opt_state, i):
        sl = jax.lax.dynamic_slice_in_dim
        batch = {"image": sl(jnp.asarray(x), (i % 8) * 64, 64), "label": sl(jnp.asarray(labels, jnp.int32),
                                                                          (i % 8) * 64, 64),
                 "index": (i % 8) * 64 + jnp.arange(64, dtype=jnp.int32)}
        grads = jax.grad(lambda p: loss_fn(p, {}, batch, jax.random.fold_in(jax.random.key(0), i))[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for i in range(300):
        params, opt_state = step(params, opt_state, i)
    sigma = np.exp(np.asarray(params["log_sigma"])).ravel()
    assert np.all(np.isfinite(sigma))
    assert sigma[read:].mean() >= 3 * sigma[:read].mean(), sigma


# --------------------------------------------------------------------------
# Bad input


def test_n0_below_one_and_missing_init_from_are_refused():
    with pytest.raises(UserError) as e:
        objectives.build(_sigma_config(num_noise=0), linear_apply, ({"w": np.zeros(D), "b": 0.0}, {}))
    assert e.value.field == "sigma.num_noise"
    config = quick_config("objective.name=sigma", "sigma.num_noise=0", "train.init_from=/x")
    with pytest.raises(UserError) as e:
        config_lib.validate(config)
    assert e.value.field == "sigma.num_noise"
    with pytest.raises(UserError) as e:
        config_lib.validate(quick_config("objective.name=sigma"))
    assert e.value.field == "train.init_from"
    with pytest.raises(UserError) as e:
        objectives.build(_sigma_config(), linear_apply, None)
    assert e.value.field == "objective.name" and "teacher" in str(e.value)


def test_init_from_missing_or_of_another_input_shape_is_refused(tmp_path):
    other = tmp_path / "mnist_run"
    (other / "checkpoints" / "5").mkdir(parents=True)
    meta = {"model": "cnn", "activation": "relu", "width": 4, "input_shape": [28, 28, 1], "num_classes": 10,
            "objective": "gaussian"}
    checkpoint.write_json(str(other / "model.json"), meta)
    for init_from, needle in [(str(tmp_path / "nowhere"), "holds no checkpoints"),
                              (str(other), "input_shape=[28, 28, 1], not [8, 8, 1]")]:
        config = quick_config("objective.name=sigma", f"train.init_from={init_from}")
        with pytest.raises(UserError) as e:
            trainer.train_and_evaluate(config, str(tmp_path / "w"))
        assert e.value.field == "train.init_from" and needle in str(e.value), str(e.value)


def _fake_sigma_run(path, log_sigma, input_shape=(8, 8, 1), objective="sigma"):
    os.makedirs(path / "checkpoints" / "3")
    checkpoint.write_json(str(path / "model.json"), {"input_shape": list(input_shape), "objective": objective})
    checkpoint.write_json(str(path / "config.json"), {"train": {"init_from": "/base"}})
    saver = ocp.StandardCheckpointer()
    saver.save(os.path.abspath(path / "checkpoints" / "3" / "default"),
               {"params": {"log_sigma": np.asarray(log_sigma, np.float32)}})
    saver.wait_until_finished()
    return str(path)


def test_learned_sigma_is_what_the_loader_certifies_with_and_bad_ones_are_refused(tmp_path):
    info, teacher = {"input_shape": [8, 8, 1], "objective": "sigma"}, ({"w": np.ones(2, np.float32)}, {})
    good = np.log(np.linspace(0.1, 0.9, 64).reshape(8, 8, 1)).astype(np.float32)
    params, _, sigma = sigma_objective.certified(info, {"log_sigma": good}, {}, teacher)
    assert params is teacher[0] and sigma.dtype == np.float32
    np.testing.assert_array_equal(sigma, np.exp(good.astype(np.float64)).astype(np.float32))  # exp in float64
    zero = good.copy()
    zero[0, 0, 0] = -np.inf  # sigma = 0
    cases = [({"log_sigma": zero}, teacher, "finite and > 0"),
             ({"log_sigma": np.full((8, 8, 1), 1e4, np.float32)}, teacher, "finite and > 0"),
             ({"log_sigma": np.zeros((4, 4, 1), np.float32)}, teacher, "shape (4, 4, 1)"),
             ({"w": good}, teacher, "no params/log_sigma"), ({"log_sigma": good}, None, "no frozen classifier")]
    for saved, frozen, needle in cases:
        with pytest.raises(UserError) as e:
            sigma_objective.certified(info, saved, {}, frozen)
        assert e.value.field == "checkpoint" and needle in str(e.value), str(e.value)
    # through the loader, the error names the caller's field and the workdir
    path = _fake_sigma_run(tmp_path / "no_teacher", good)
    for workdir, needle in [(path, f"{path}: checkpoint: holds no frozen classifier"),
                            (str(tmp_path / "missing"), "holds no checkpoints")]:
        with pytest.raises(UserError) as e:
            loader.load_model(workdir, field="sigma-from")
        assert e.value.field == "sigma-from" and needle in str(e.value), str(e.value)


def test_sigma_of_the_wrong_shape_or_non_positive_is_refused_by_certify(tmp_path):
    shape = (8, 8, 1)
    args = lambda **kw: argparse.Namespace(**{"sigma": None, "sigma_file": "", "sigma_from": "", **kw})  # noqa: E731
    model = lambda sigma: types.SimpleNamespace(input_shape=shape, sigma=sigma, workdir="w", step=3)  # noqa: E731
    for name, value, needle in [("shape", np.ones((4, 4, 1)), "input's shape"), ("zero", np.zeros(shape), "> 0"),
                                ("neg", -np.ones(shape), "> 0"), ("scalar", np.float32(0.5), "per-pixel")]:
        np.save(tmp_path / f"{name}.npy", value)
        with pytest.raises(UserError) as e:
            certify._sigma(args(sigma_file=str(tmp_path / f"{name}.npy")), model(0.25))
        assert e.value.field == "sigma-file" and needle in str(e.value), str(e.value)
        with pytest.raises(UserError) as e:
            certify._sigma(args(sigma_from="w"), model(np.asarray(value, np.float32)))
        assert e.value.field == "sigma-from" and needle in str(e.value), str(e.value)
    sigma, info = certify._sigma(args(sigma_from="w"), model(np.full(shape, 0.5, np.float32)))
    chex.assert_shape(sigma, shape)
    assert info["anisotropic"] and info["sigma_from"] == "w" and info["sigma_from_step"] == 3
    assert certify._sigma(args(), model(0.25)) == (0.25, {"sigma": 0.25, "anisotropic": False, "sigma_file": ""})
    with pytest.raises(UserError) as e:
        certify._check_flags(argparse.Namespace(sigma=0.5, sigma_file="", sigma_from="w", checkpoint="c",
                                                mode="certify", gamma=None, gamma_adv="", noise=None))
    assert e.value.field == "sigma-from"


# --------------------------------------------------------------------------
# End to end: the trainer trains log_sigma only; certify --sigma-from uses it


@pytest.mark.slow
def test_trainer_learns_sigma_of_a_frozen_model_and_certify_uses_it(tmp_path, capsys):
    from jaxsmooth import train

    from conftest import ROOT

    quick = os.path.join(ROOT, "configs", "quickstart.py")
    small = ["--config.model.width=8", "--config.train.num_epochs=4", "--config.train.eval_every_epochs=0"]
    base = str(tmp_path / "base")  # confident enough that p_hat > 1/2 on many examples
    assert train.main(["--config", quick, "--workdir", base, "--no-progress"] + small) == 0
    run_dir = str(tmp_path / "sigma")
    sigma_cfg = os.path.join(ROOT, "configs", "digits_sigma.py")
    small_sigma = ["--config.model.width=8", "--config.train.num_epochs=1", "--config.train.eval_every_epochs=0",
                   f"--config.train.init_from={base}"]
    assert train.main(["--config", sigma_cfg, "--workdir", run_dir, "--no-progress"] + small_sigma) == 0
    learned = loader.load_model(run_dir)
    sigma, step = learned.sigma, learned.step
    chex.assert_shape(sigma, (8, 8, 1))
    assert learned.config.train.init_from == base and step == 1437 // 64
    assert not np.allclose(sigma, 0.25)  # it moved from the initial constant
    # the base model is untouched: the sigma run's frozen teacher equals the base checkpoint
    raw = checkpoint.read_model(os.path.join(run_dir, "checkpoints", str(step)), "x")
    saved = checkpoint.read_model(os.path.join(base, "checkpoints", str(4 * (1437 // 64))), "x")
    chex.assert_trees_all_close(raw["teacher"][0], saved["params"], atol=0, rtol=0)

    out = tmp_path / "c.tsv"
    fast = ["--n0", "20", "--n", "200", "--alpha", "0.01", "--batch", "100", "--no-progress", "--max", "30",
            "--skip", "10"]
    assert certify.main(["--config", sigma_cfg, "--sigma-from", run_dir, "--out", str(out)] + small_sigma + fast) == 0
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    assert "area_objective" in header and len(rows) == 3
    assert sidecar_settings(out, "certify")["sigma_from"] == run_dir
    assert certify.main(["--config", sigma_cfg, "--sigma-from", run_dir, "--out", str(tmp_path / "y.tsv")]
                       + small_sigma + fast + ["--sigma", "0.5"]) == 2
    assert capsys.readouterr().err.startswith("error: --sigma-from: ")
    # the sigma run's workdir alone certifies its frozen classifier with the sigma it learned: the same rows
    same = tmp_path / "same.tsv"
    assert certify.main(["--checkpoint", run_dir, "--out", str(same)] + fast) == 0
    untimed = lambda rows: [r[:5] + r[6:] for r in rows]  # noqa: E731  (column 5: time)
    assert tsv_rows(same)[0] == header and untimed(tsv_rows(same)[1]) == untimed(rows)
