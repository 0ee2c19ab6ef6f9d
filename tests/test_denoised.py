"""Denoised smoothing: a DnCNN denoiser in front of a classifier (`models.dncnn`, certify --denoiser, the API).

The denoiser is part of the base classifier, so Cohen et al.'s guarantee
holds for f(D(x + noise)). That is checked on a pair known in closed form: a
DnCNN whose weights make it exactly the scaling D(x) = 2x, before a linear
classifier; and the same pair with the noise added after the denoiser (the
clean input denoised, then smoothed: D outside the base classifier) is shown
to claim radii twice too large.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsmooth
from jaxsmooth import attack, certification as C, certify, checkpoint, data, loader, models, parallel
from jaxsmooth.errors import UserError
from jaxsmooth.models import dncnn, wrappers

from helpers import denoiser_workdir, fails_with, sidecar_settings, tsv_rows


# --------------------------------------------------------------------------
# The model


@pytest.mark.slow
def test_dncnn_is_the_papers_layout():
    """Parameters C w 9 + w (first conv and bias) + (depth - 2)(9 w^2 + 2 w) (convs, BatchNorm) + 9 w C (last); an
    untrained DnCNN is exactly the identity (zero last kernel); BatchNorm folds into every middle conv."""
    for name, arch in dncnn.ARCHS.items():
        c, w, d = arch.input_shape[-1], arch.width, arch.depth
        abstract = dncnn.build(dncnn.metadata(arch.input_shape, 0.25, arch=name))
        assert models.num_params(abstract.params) == c * w * 9 + w + (d - 2) * (9 * w * w + 2 * w) + 9 * w * c
        assert len(abstract.model_state["norms"]) == d - 2
    info = dncnn.metadata((28, 28, 1), 0.5, arch="mnist_dncnn")
    assert info == {"wrapper": "denoiser", "arch": "mnist_dncnn", "depth": 8, "width": 32, "input_shape": [28, 28, 1],
                    "sigma": 0.5}
    model = models.split(dncnn.create(info))
    x = np.random.default_rng(0).uniform(-0.5, 1.5, (2, 8, 8, 1)).astype(np.float32)  # fully convolutional
    np.testing.assert_array_equal(model.apply(model.params, model.model_state, x, train=False)[0], x)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda v: np.asarray(v) + rng.normal(0, 0.1, v.shape).astype(np.float32), model.params)
    state = jax.tree.map(lambda v: np.asarray(v) * rng.uniform(0.5, 1.5, v.shape).astype(np.float32),
                         model.model_state)
    plain = models.Model(model.apply, params, state)
    folded = models.fold_batch_norm(plain)
    assert all("bias" in conv for conv in folded.params["convs"].values())
    expected = plain.apply(params, state, x, train=False)[0]
    np.testing.assert_allclose(folded.apply(folded.params, folded.model_state, x, train=False)[0], expected,
                               rtol=0, atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("entries, field, words", [
    ({"depth": 1}, "depth", "a DnCNN's depth is an integer >= 2, got 1"),
    ({"width": 0}, "width", "a DnCNN's width is an integer >= 1, got 0"),
    ({"sigma": 0}, "sigma", "a denoiser records the noise level it was trained for, > 0, got 0"),
    ({"input_shape": [8, 8]}, "input_shape", "must be (H, W, C), three positive integers, got [8, 8]"),
])
def test_a_denoisers_model_json_is_checked(entries, field, words, tmp_path):
    info = {**dncnn.metadata((8, 8, 1), 0.25, depth=3, width=2), **entries}
    with pytest.raises(UserError) as e:
        dncnn.build(info)
    assert (e.value.field, e.value.message) == (field, words)
    with pytest.raises(UserError) as e:
        dncnn.metadata((8, 8, 1), 0.25, arch="dncnn")
    assert (e.value.field, e.value.message) == ("arch", "unknown DnCNN 'dncnn'; known: cifar_dncnn, cifar_dncnn_wide, "
                                                        "imagenet_dncnn, mnist_dncnn")
    bad = str(tmp_path / "bad")  # variables of a good DnCNN, a model.json that is not
    abstract = dncnn.build(dncnn.metadata((8, 8, 1), 0.25, depth=3, width=2))
    zeros = (jax.tree.map(lambda v: np.zeros(v.shape, np.float32), t) for t in (abstract.params, abstract.model_state))
    checkpoint.write_workdir(bad, info, *zeros)
    with pytest.raises(UserError) as e:
        loader.load_model(bad, field="denoiser")
    assert e.value.field == "denoiser" and e.value.message == f"{bad}/model.json: {field}: {words}"


# --------------------------------------------------------------------------
# Bad input: one line, nothing written


@pytest.mark.slow
def test_bad_denoisers_are_one_error_line_and_nothing_is_written(untrained_model, tmp_path, capsys):
    """Another sigma, another input shape, a classifier as --denoiser, a denoiser as --checkpoint."""
    trained_05 = denoiser_workdir(tmp_path / "d05", sigma=0.5)
    colour = denoiser_workdir(tmp_path / "colour", input_shape=(8, 8, 3))
    small = denoiser_workdir(tmp_path / "small", input_shape=(4, 4, 1))
    cases = [
        (["--checkpoint", untrained_model, "--denoiser", trained_05, "--sigma", "0.25"], "--denoiser",
         f"{trained_05} was trained for sigma 0.5, certifying at sigma 0.25; certify at sigma 0.5 or give a "
         "denoiser trained for sigma 0.25"),
        (["--checkpoint", untrained_model, "--denoiser", colour], "--denoiser",
         f"{colour} takes inputs of shape (8, 8, 3), the classifier (8, 8, 1)"),
        (["--checkpoint", untrained_model, "--denoiser", small], "--denoiser",
         f"{small} takes inputs of shape (4, 4, 1), the classifier (8, 8, 1)"),
        (["--checkpoint", untrained_model, "--denoiser", untrained_model], "--denoiser",
         f"{untrained_model} holds a classifier, not a denoiser (its model.json names no 'wrapper' kind)"),
        (["--checkpoint", trained_05], "--checkpoint",
         f"{trained_05} holds a model wrapper of kind 'denoiser' (images to images), not a classifier; put it in "
         "front of one (--wrapper; a denoiser: --denoiser)"),
        (["--checkpoint", trained_05, "--config", "quickstart"], "--checkpoint",
         f"{trained_05} holds a model wrapper of kind 'denoiser' (images to images), not a classifier; put it in "
         "front of one (--wrapper; a denoiser: --denoiser)"),
    ]
    for i, (argv, field, message) in enumerate(cases):
        out = tmp_path / f"out{i}.tsv"
        line = fails_with(certify.main, capsys, argv + ["--out", str(out), "--n", "100", "--no-progress"], field)
        assert line == f"error: {field}: {message}"
        assert not out.exists() and not (tmp_path / f"out{i}.tsv.json").exists()
    out = tmp_path / "attack.tsv"  # attack takes --denoiser through the same loader
    line = fails_with(attack.main, capsys, ["--checkpoint", untrained_model, "--denoiser", colour, "--attack", "pgd",
                                            "--out", str(out), "--no-progress"], "--denoiser")
    assert line == f"error: --denoiser: {colour} takes inputs of shape (8, 8, 3), the classifier (8, 8, 1)"
    assert not out.exists()


def test_the_api_names_the_denoiser(untrained_model, tmp_path):
    """jaxsmooth.load(denoiser=) certifies at the denoiser's sigma and refuses another; api.certify(denoiser=)
    too; a denoiser is no classifier, and a wrapper and a denoiser at once are refused."""
    trained_05 = denoiser_workdir(tmp_path / "d05", sigma=0.5)
    model = jaxsmooth.load(untrained_model, denoiser=trained_05)
    assert model.sigma == 0.5 and model.wrapper.workdir == trained_05 and model.wrapper.wrapper == "denoiser"
    x = np.full((1, 8, 8, 1), 0.5, np.float32)
    refusal = (f"{trained_05} was trained for sigma 0.5, certifying at sigma 0.25; certify at sigma 0.5 or give a "
               "denoiser trained for sigma 0.25")
    classifier = loader.load_model(untrained_model)

    def logits(variables, x):
        return classifier.apply(variables, classifier.model_state, x, train=False)[0]

    for call in (lambda: model.certify(x, sigma=0.25, n=100),
                 lambda: jaxsmooth.api.certify(logits, classifier.params, x, sigma=0.25, n=100, denoiser=trained_05),
                 lambda: jaxsmooth.api.predict(logits, classifier.params, x, sigma=0.25, n=100, denoiser=trained_05)):
        with pytest.raises(UserError) as e:
            call()
        assert (e.value.field, e.value.message) == ("denoiser", refusal)
    with pytest.raises(UserError) as e:
        jaxsmooth.load(trained_05)
    assert e.value.field == "workdir" and "holds a model wrapper of kind 'denoiser'" in e.value.message
    with pytest.raises(UserError) as e:
        jaxsmooth.load(untrained_model, wrapper=trained_05, denoiser=trained_05)
    assert e.value.field == "denoiser" and e.value.message.startswith("give one of wrapper= and denoiser=")
    assert jaxsmooth.load(untrained_model, wrapper=trained_05).sigma == 0.5  # --wrapper takes a denoiser too


# --------------------------------------------------------------------------
# The CLI records the denoiser; the same counts on 1 and 8 devices, at any batch


@pytest.mark.slow
def test_certify_denoiser_records_it_and_gives_the_same_counts_on_1_and_8_devices_at_any_batch(
        untrained_model, tmp_path, capsys):
    first = denoiser_workdir(tmp_path / "first", seed=1)
    out = tmp_path / "denoised.tsv"
    fast = dict(n0=20, n=300, alpha=0.01, skip=90, no_progress=True)
    assert certify.write(checkpoint=untrained_model, denoiser=first, out=str(out), batch=100, **fast) == 0
    settings = sidecar_settings(out, "certify")
    assert (settings["wrapper"], settings["wrapper_kind"], settings["wrapper_step"]) == (first, "denoiser", 0)
    assert settings["sigma"] == 0.25 and settings["batch"] == 100
    header, rows = tsv_rows(out)
    idx = np.array([int(r[0]) for r in rows])
    images, labels = data.load("digits").test.get(idx)
    x = images / 255
    counts = [(int(r[header.index("count_A")]), int(r[header.index("count_B")])) for r in rows]
    model = jaxsmooth.load(untrained_model, denoiser=first)
    seed, options = model.config.seed, settings["xla_options"]
    for mesh, batch, inputs in [(parallel.make_mesh(jax.devices()[:1]), 40, 1), (None, 60, 2)]:
        again = model.certify(x, n0=20, n=300, alpha=0.01, batch=batch, inputs=inputs, index=idx, labels=labels,
                              seed=seed, mesh=mesh, compiler_options=options)
        assert [(r["count_A"], r["count_B"]) for r in again] == counts
    classifier = loader.load_model(untrained_model)

    def logits(variables, x):
        return classifier.apply(variables, classifier.model_state, x, train=False)[0]

    by_hand = jaxsmooth.api.certify(logits, classifier.params, x, sigma=0.25, n0=20, n=300, alpha=0.01, batch=50,
                                    index=idx, seed=seed, compiler_options=options, denoiser=first)
    assert [(r["count_A"], r["count_B"]) for r in by_hand] == counts
    bare = jaxsmooth.load(untrained_model).certify(x, n0=20, n=300, alpha=0.01, batch=100, index=idx, seed=seed,
                                                   compiler_options=options)
    assert [(r["count_A"], r["count_B"]) for r in bare] != counts  # the denoiser is really applied
    # a resumed file refuses another denoiser, naming both; nothing is lost
    before = out.read_bytes()
    other = denoiser_workdir(tmp_path / "other", seed=2)
    with pytest.raises(UserError) as e:
        certify.write(checkpoint=untrained_model, denoiser=other, out=str(out), batch=100, **fast)
    assert e.value.field == "out" and f"wrapper={first!r}, not {other!r}" in e.value.message
    assert out.read_bytes() == before


# --------------------------------------------------------------------------
# Soundness on a pair known in closed form

SHAPE, D = (2, 5, 1), 10
LINEAR = {"w": np.random.default_rng(0).normal(size=D).astype(np.float32), "b": np.float32(0.3)}


def linear_apply(params, model_state, x, train=False):
    """Two classes: logit_1 = w.x + b, logit_0 = 0; so f(x) = 1[w.x + b > 0]."""
    z = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
    return jnp.stack([jnp.zeros_like(z), z], -1), model_state


def _scaling_denoiser(path, a: float, sigma: float) -> loader.LoadedModel:
    """A DnCNN (depth 3, width 2) that is exactly D(x) = a x, read back through the loader (BatchNorm folded).

    The first conv's centre tap splits x into (x, -x), the ReLUs pass relu(x)
    and relu(-x), the middle conv and BatchNorm (mean 0, var + eps = 1) pass
    them on, and the last conv makes the residual (1 - a)(relu(x) - relu(-x))
    = (1 - a) x, so x - residual = a x.
    """
    info = dncnn.metadata(SHAPE, sigma, depth=3, width=2)
    abstract = dncnn.build(info)
    params, state = (jax.tree.map(lambda v: np.zeros(v.shape, np.float32), tree)
                     for tree in (abstract.params, abstract.model_state))
    params["first"]["kernel"][1, 1, 0] = [1, -1]
    params["convs"][0]["kernel"][1, 1] = np.eye(2)
    params["norms"][0]["scale"][:] = 1
    state["norms"][0]["var"][:] = 1 - dncnn.EPSILON
    params["last"]["kernel"][1, 1, :, 0] = [1 - a, a - 1]
    checkpoint.write_workdir(str(path), info, params, state)
    return loader.load_model(str(path))


def _failures(apply, params, model_state, inputs, margin, exact, alpha, sigma):
    """(certified, wrong): CERTIFY at `inputs` in 50-input batches; wrong: the class is not sign(margin)'s, or the
    radius exceeds `exact`."""
    sampler = C.Sampler(apply, params, model_state, input_shape=SHAPE, num_classes=2, inputs=50, chunk=20)
    settings = C.Settings(n0=50, n=1000, alpha=alpha)
    certified = wrong = 0
    for start in range(0, len(inputs), 50):
        rows = C.certify_batch(sampler, inputs[start:start + 50], np.arange(start, start + 50), sigma, settings,
                               jax.random.key(7))
        for o, m, r in zip(rows, margin[start:start + 50], exact[start:start + 50]):
            if o.predict != C.ABSTAIN:
                certified += 1
                wrong += o.predict != int(m > 0) or o.radius > r
    return certified, wrong


@pytest.mark.slow
def test_denoised_certificates_are_wrong_at_most_alpha_and_noise_after_the_denoiser_far_more(tmp_path):
    """f(D(x)) = 1[2 w.x + b > 0] for D(x) = 2x: the exact radius at x is |2 w.x + b| / (2 ||w||). Smoothing
    f(D(.)) (the denoiser inside the base classifier) errs at most alpha of the time; smoothing f at D(x) and
    claiming its radius for x (the noise after the denoiser) claims twice the radius, and errs on most points."""
    a, sigma, alpha, count = 2.0, 0.5, 0.05, 400
    denoiser = _scaling_denoiser(tmp_path / "scale2", a, sigma)
    xs = (np.random.default_rng(11).normal(size=(count, D)) * 0.15).astype(np.float32).reshape(-1, *SHAPE)
    np.testing.assert_array_equal(denoiser.apply(denoiser.params, denoiser.model_state, xs, train=False)[0], a * xs)
    w, b = LINEAR["w"].astype(np.float64), float(LINEAR["b"])
    margin = a * xs.reshape(count, D).astype(np.float64) @ w + b
    exact = np.abs(margin) / (a * np.linalg.norm(w))
    pair = wrappers.wrap(denoiser, models.Model(linear_apply, LINEAR, {}))
    certified, wrong = _failures(pair.apply, pair.params, pair.model_state, xs, margin, exact, alpha, sigma)
    assert certified > count / 2  # the test has power
    bound = alpha + 3 * np.sqrt(alpha * (1 - alpha) / count)
    assert wrong / count <= bound
    certified, wrong = _failures(linear_apply, LINEAR, {}, a * xs, margin, exact, alpha, sigma)
    assert certified > count / 2 and wrong / count > 0.5 > bound
