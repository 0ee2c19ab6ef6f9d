"""Training a denoiser for a frozen classifier (the `denoise` objective; Salman et al. 2020 §3.2).

The losses are checked in closed form on an untrained DnCNN (exactly the
identity: its last kernel is zero) before a linear classifier; the frozen
classifier gets no gradient and its saved variables stay bit-identical; the
trained workdir is a denoiser's, which certify --denoiser takes and
--checkpoint refuses.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsmooth import certify, checkpoint, config as config_lib, loader, models, noise, train, trainer
from jaxsmooth.models import dncnn, wrappers
from jaxsmooth.objectives import denoise

from conftest import ROOT
from helpers import fails_with

SIGMA = 0.25
SHAPE = (8, 8, 1)
DIGITS = os.path.join(ROOT, "configs", "digits_denoiser.py")


def _config(loss="mse", noise_kind="gaussian"):
    c = config_lib.load(DIGITS, [f"denoise.loss={loss}", f"denoise.noise={noise_kind}", "denoise.depth=3",
                                 "denoise.width=4", f"objective.sigma={SIGMA}"])
    return c


def _linear_classifier(seed=0, classes=3):
    """f(y) = flatten(y) W + b: ``(apply, (params, {}))``."""
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(0, 1, (int(np.prod(SHAPE)), classes)).astype(np.float32),
              "b": rng.normal(0, 1, classes).astype(np.float32)}

    def apply(params, model_state, y, train=False):
        del train
        return y.reshape(y.shape[0], -1) @ params["w"] + params["b"], model_state

    return apply, (params, {})


def _problem(loss="mse", noise_kind="gaussian", b=8):
    """(loss fn, D's params, D's state, batch, key, classifier params, the composition's apply)."""
    config = _config(loss, noise_kind)
    identity = models.split(dncnn.create(dncnn.metadata(SHAPE, SIGMA, depth=3, width=4)))
    f_apply, teacher = _linear_classifier()
    apply = wrappers.Wrapped(identity.apply, f_apply)
    rng = np.random.default_rng(1)
    batch = {"image": (rng.integers(0, 256, (b, *SHAPE)) / 255).astype(np.float32),
             "label": rng.integers(0, 3, b).astype(np.int32), "index": np.arange(100, 100 + b, dtype=np.int32)}
    return (jax.jit(denoise.make(config, apply, teacher)), identity.params, identity.model_state, batch,
            jax.random.key(7), teacher, apply)


def _norm(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(tree))))


def _cross_entropy(logits, targets):
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
    return float(np.mean(log_z - logits[np.arange(len(targets)), targets]))


# --------------------------------------------------------------------------
# The losses in closed form


@pytest.mark.slow
def test_mse_loss_of_the_identity_denoiser_is_the_mean_squared_noise():
    loss, params, state, batch, key, _, _ = _problem("mse")
    value, aux = loss(params, state, batch, key)
    delta = noise.isotropic(key, batch["index"], SHAPE, SIGMA)  # the draw of certification's gaussian kind
    x = batch["image"]
    expected = np.mean(np.square(np.float32((x + delta) - x)), dtype=np.float64)
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)
    assert float(aux["metrics"]["mse"]) == float(value)


@pytest.mark.parametrize("loss_name", ["classification", "stability"])
def test_cross_entropy_losses_equal_their_closed_form(loss_name):
    """f(D(x + delta)) = W(x + delta) + b for the identity D; the targets are the labels or argmax f(x)."""
    loss, params, state, batch, key, (f_params, _), _ = _problem(loss_name)
    value, aux = loss(params, state, batch, key)
    x = batch["image"].reshape(len(batch["label"]), -1).astype(np.float64)
    delta = np.asarray(noise.isotropic(key, batch["index"], SHAPE, SIGMA), np.float64).reshape(x.shape)
    w, b = f_params["w"].astype(np.float64), f_params["b"].astype(np.float64)
    targets = batch["label"] if loss_name == "classification" else np.argmax(x @ w + b, -1)
    logits = (x + delta) @ w + b
    np.testing.assert_allclose(float(value), _cross_entropy(logits, targets), rtol=1e-5)
    assert float(aux["metrics"]["accuracy"]) == float(np.mean(np.argmax(logits, -1) == batch["label"]))


@pytest.mark.slow
def test_lattice_noise_puts_the_noisy_images_on_the_1_255_grid():
    """``denoise.noise=lattice`` draws certification's lattice noise: x + delta is a multiple of 1/255."""
    loss, params, state, batch, key, _, _ = _problem("mse", "lattice")
    noisy = denoise.noisy_inputs(_config("mse", "lattice"), jnp.asarray(batch["image"]), key, batch["index"])
    noisy = np.asarray(noisy)
    levels = noisy.astype(np.float64) * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert np.abs(np.round(levels) - np.round(batch["image"] * 255)).max() > 0  # there is noise
    assert float(loss(params, state, batch, key)[0]) == pytest.approx(
        float(np.mean(np.square(noisy - batch["image"]), dtype=np.float64)), rel=1e-6)


# --------------------------------------------------------------------------
# Only the denoiser learns


@pytest.mark.slow
@pytest.mark.parametrize("loss_name", ["classification", "stability"])
def test_no_gradient_reaches_the_classifier(loss_name):
    """The gradient is a tree of D's parameters only, and the loss's gradient in f's variables is zero."""
    loss, params, state, batch, key, teacher, apply = _problem(loss_name)
    grads = jax.grad(lambda p: loss(p, state, batch, key)[0])(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert _norm(grads) > 0
    config = _config(loss_name)
    of_teacher = jax.grad(lambda t: denoise.make(config, apply, t)(params, state, batch, key)[0])(teacher)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(of_teacher))


@pytest.mark.slow
def test_a_small_gradient_step_lowers_the_mse_by_its_first_order_amount():
    """On one fixed batch and noise, L(theta - eta g) = L(theta) - eta |g|^2 + O(eta^2): the decrease matches
    eta |g|^2 to 2% at eta = 1e-3 (BatchNorm on batch statistics, as in training)."""
    loss, params, state, batch, key, _, _ = _problem("mse", b=16)
    value_and_grad = jax.value_and_grad(lambda p: loss(p, state, batch, key)[0])
    before, grads = value_and_grad(params)
    eta = 1e-3
    after = loss(jax.tree.map(lambda p, g: p - eta * g, params, grads), state, batch, key)[0]
    predicted = eta * _norm(grads) ** 2
    assert float(before - after) == pytest.approx(predicted, rel=2e-2)


# --------------------------------------------------------------------------
# Config errors: one line naming the field


@pytest.mark.parametrize("override, field", [
    ("denoise.loss=l1", "denoise.loss"),
    ("denoise.classifier=", "denoise.classifier"),
    ("denoise.arch=dncnn", "denoise.arch"),
    ("denoise.depth=1", "denoise.depth"),
    ("denoise.noise=uniform", "denoise.noise"),
])
def test_bad_fields_are_refused_naming_them(override, field, tmp_path, capsys):
    workdir = tmp_path / "run"
    fails_with(train.main, capsys, ["--config", DIGITS, "--workdir", str(workdir), "--no-progress",
                                    f"--config.{override}"], field)
    assert not (workdir / "model.json").exists()


def test_a_missing_classifier_or_a_denoiser_as_classifier_is_refused(tmp_path, capsys):
    workdir = tmp_path / "run"
    line = fails_with(train.main, capsys, ["--config", DIGITS, "--workdir", str(workdir), "--no-progress",
                                           f"--config.denoise.classifier={tmp_path / 'none'}"], "denoise.classifier")
    assert "holds no checkpoints" in line
    front = tmp_path / "dncnn"
    info = dncnn.metadata(SHAPE, SIGMA, depth=3, width=4)
    model = models.split(dncnn.create(info))
    checkpoint.write_workdir(str(front), info, *jax.device_get((model.params, model.model_state)))
    line = fails_with(train.main, capsys, ["--config", DIGITS, "--workdir", str(workdir), "--no-progress",
                                           f"--config.denoise.classifier={front}"], "denoise.classifier")
    assert "not a classifier" in line
    assert not (workdir / "model.json").exists()


# --------------------------------------------------------------------------
# End to end, through the CLIs


@pytest.mark.slow
def test_trained_denoiser_certifies_with_its_classifier_which_stays_unchanged(small_model, tmp_path, capsys):
    workdir = str(tmp_path / "dncnn")
    tiny = ["--config.denoise.depth=3", "--config.denoise.width=4", "--config.train.num_epochs=1",
            "--config.train.eval_every_epochs=0", f"--config.denoise.classifier={small_model}"]
    assert train.main(["--config", DIGITS, "--workdir", workdir, "--no-progress"] + tiny) == 0
    steps = 1437 // 64
    info = checkpoint.read_json(os.path.join(workdir, "model.json"), "x")
    assert {k: info[k] for k in ("wrapper", "arch", "depth", "width", "input_shape", "sigma")} == {
        "wrapper": "denoiser", "arch": "mnist_dncnn", "depth": 3, "width": 4, "input_shape": [8, 8, 1], "sigma": 0.25}
    # the frozen classifier saved with the run is the one the loader reads, bit for bit
    raw = checkpoint.read_model(os.path.join(workdir, "checkpoints", str(steps)), "x")
    classifier = loader.load_model(small_model)
    teacher = raw["teacher"]["0"] if isinstance(raw["teacher"], dict) else raw["teacher"][0]
    jax.tree.map(np.testing.assert_array_equal, checkpoint.lookup(classifier.params, teacher), classifier.params)
    # D moved from the identity, and its test MSE fell below the identity's (sigma^2 in expectation)
    denoiser = loader.load_model(workdir)
    assert np.abs(denoiser.params["last"]["kernel"]).max() > 0
    rows = [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if "test_mse" in r]
    assert rows[-1]["test_mse"] < 0.8 * SIGMA**2

    out = str(tmp_path / "c.tsv")
    fast = ["--n0", "10", "--n", "100", "--alpha", "0.01", "--batch", "80", "--no-progress", "--max", "4"]
    assert certify.main(["--checkpoint", small_model, "--denoiser", workdir, "--out", out] + fast) == 0
    assert len([line for line in open(out) if not line.startswith("#")]) == 5
    fails_with(certify.main, capsys, ["--checkpoint", workdir, "--out", str(tmp_path / "x.tsv")] + fast, "--checkpoint")


@pytest.mark.slow
def test_the_trainer_trains_only_the_denoiser_and_keeps_the_classifier_as_teacher(untrained_model):
    """`trainer.build_run` builds f(D(y)); step 0's trainable variables are D's, its teacher f's as loaded."""
    config = config_lib.apply_overrides(_config(), [f"denoise.classifier={untrained_model}"])
    run = trainer.build_run(config)
    assert isinstance(run.model.apply, wrappers.Wrapped)
    state = trainer.initial_state(run.objective, config, run.model.params, run.model.model_state, SHAPE, run.tx,
                                  run.objective.teacher.from_model(run.model.params, run.model.model_state))
    assert jax.tree.structure(state.params) == jax.tree.structure(run.model.params["wrapper"])
    classifier = loader.load_model(untrained_model)
    jax.tree.map(np.testing.assert_array_equal, state.teacher[0], classifier.params)
    assert trainer.model_metadata(run)["wrapper"] == dncnn.NAME
