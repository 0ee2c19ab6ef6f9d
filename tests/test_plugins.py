"""Plug-in points, used from outside the package: a noise kind and a model wrapper registered by a test.

Uniform noise on the cube [-lam, lam]^d (lam: the sigma given) certifies the
ell_1 radius 2 lam (p_A - 1/2) (Yang et al. 2020, "Randomized smoothing of all
shapes and sizes"); a fixed affine map a x + b is a model wrapper with a
workdir of its own. Both go through the CLI entry and the Python API with no
change to the package.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxsmooth
from jaxsmooth import certify, checkpoint, data, loader, models
from jaxsmooth.certification import bounds, noises
from jaxsmooth.errors import UserError
from jaxsmooth.models import wrappers

from helpers import sidecar_settings, tsv_rows


def _uniform_perturb(x, keys, lam):
    shape = x.shape[1:]
    u = jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, shape, x.dtype, -1.0, 1.0)))(keys)
    return x[:, None] + lam * u


def _uniform_scale(sigma, input_shape):
    if np.ndim(sigma):
        raise UserError("sigma", "uniform noise takes a scalar half-width")
    return sigma


def _l1_rule(sigma):
    lam = float(sigma)
    return bounds.RadiusRule(lambda p: 2 * lam * (p - 0.5), lambda r: 0.5 + r / (2 * lam), lam, "ell_1")


UNIFORM = noises.NoiseKind(name="uniform", summary="x + U[-sigma, sigma]^d", perturb=_uniform_perturb,
                           scale=_uniform_scale, applies=lambda sigma, x: False, rule=_l1_rule)


def _affine(params, model_state, x, *, train):
    return params["a"] * x + params["b"], model_state


def _build_affine(info):
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    return models.Model(_affine, {"a": scalar, "b": scalar}, {})


AFFINE = wrappers.WrapperKind(name="affine", build=_build_affine, reference="a fixed contrast change a x + b")


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(noises.REGISTRY, UNIFORM.name, UNIFORM)
    monkeypatch.setitem(wrappers.REGISTRY, AFFINE.name, AFFINE)


def _affine_workdir(path, a, b, **extra) -> str:
    checkpoint.write_workdir(str(path), {"wrapper": "affine", "input_shape": [8, 8, 1], **extra},
                             {"a": np.float32(a), "b": np.float32(b)}, {})
    return str(path)


def _threshold(params, x):
    """Class 1 iff the first pixel exceeds 0.5: under U[-lam, lam] noise, p_1 = clip((x0 + lam - 0.5) / 2 lam)."""
    first = x.reshape(x.shape[0], -1)[:, 0] - params["t"]
    return jnp.stack([-first, first, jnp.full_like(first, -10.0)], -1)  # a third class that never wins


def test_a_registered_noise_kind_draws_its_noise_and_certifies_with_its_own_radius_rule(registered):
    lam, n, alpha = 0.5, 20_000, 1e-4
    x0 = np.array([0.05, 0.2, 0.25, 0.75, 0.8, 0.95], np.float32)
    x = np.zeros((len(x0), 4), np.float32)
    x[:, 0] = x0
    p_one = np.clip((x0 + lam - 0.5) / (2 * lam), 0, 1)
    rows = jaxsmooth.api.certify(_threshold, {"t": np.float32(0.5)}, x, sigma=lam, n0=100, n=n, alpha=alpha,
                                 noise="uniform", batch=500, compiler_options=None)
    for row, p in zip(rows, p_one):
        p_a = max(p, 1 - p)
        assert row["predict"] == int(p > 0.5)
        assert row["pA_lower"] <= p_a  # the bound holds (each fails with probability <= alpha)
        assert row["count_A"] / n == pytest.approx(float(p_a), abs=float(5 * np.sqrt(p_a * (1 - p_a) / n)) + 1e-9)
        assert row["radius"] == 2 * lam * (row["pA_lower"] - 0.5)  # the kind's own rule, exactly
    # the same points under Gaussian noise of the same sigma have other p_A: the draw is the kind's own
    gauss = jaxsmooth.api.certify(_threshold, {"t": np.float32(0.5)}, x, sigma=lam, n0=100, n=n, alpha=alpha,
                                  noise="gaussian", batch=500, compiler_options=None)
    p_gauss = stats.norm.cdf((x0 - 0.5) / lam)
    assert [r["count_A"] / n for r in gauss] == pytest.approx(np.maximum(p_gauss, 1 - p_gauss), abs=0.02)
    assert all(abs(a["count_A"] - b["count_A"]) / n > 0.03 for a, b in zip(rows, gauss))  # p_A apart >= 0.058
    # grid mode thresholds come from the rule too: r is certified iff the lower bound clears 1/2 + r / (2 lam)
    radii = (0.1, 0.2, 0.4)
    grid = jaxsmooth.api.certify(_threshold, {"t": np.float32(0.5)}, x, sigma=lam, n0=100, n=n, alpha=alpha,
                                 noise="uniform", batch=500, compiler_options=None, sequential=True, radii=radii)
    with pytest.raises(UserError) as e:  # top-k (Jia et al.) is a Gaussian certificate too
        jaxsmooth.api.certify(_threshold, {"t": np.float32(0.5)}, x, sigma=lam, n0=100, n=1000, noise="uniform",
                              labels=np.zeros(len(x), np.int64), topk=2, compiler_options=None)
    assert e.value.field == "topk" and "uniform" in e.value.message
    for row in grid:
        cleared = [r for r in (0.0, *radii) if row["pA_lower"] >= 0.5 + r / (2 * lam)]
        assert row["radius"] == (max(cleared) if cleared else 0.0)
    assert max(row["radius"] for row in grid) == 0.4  # p_A = 0.95 clears 1/2 + 0.4 / (2 lam) = 0.9


@pytest.mark.slow
def test_a_registered_wrapper_and_noise_kind_certify_through_the_cli_and_the_api(registered, small_model, tmp_path,
                                                                                 capsys):
    wrapper = _affine_workdir(tmp_path / "affine", 0.5, 0.25)
    out = tmp_path / "wrapped.tsv"
    fast = dict(n0=20, n=300, alpha=0.01, batch=100, skip=90, no_progress=True)
    assert certify.write(checkpoint=small_model, wrapper=wrapper, noise="uniform", out=str(out), **fast) == 0
    settings = sidecar_settings(out, "certify")
    assert (settings["noise"], settings["wrapper"], settings["wrapper_kind"]) == ("uniform", wrapper, "affine")
    header, rows = tsv_rows(out)
    assert "lbound_mc" not in header and "lbound_model" not in header  # L-bounds are Gaussian theorems
    # the API's wrapped model gives the CLI's rows
    model = jaxsmooth.load(small_model, wrapper=wrapper)
    idx = np.array([int(r[0]) for r in rows])
    images, labels = data.load("digits").test.get(idx)
    api_rows = model.certify(images / 255, n0=20, n=300, alpha=0.01, batch=100, index=idx, labels=labels,
                             seed=model.config.seed, noise="uniform", compiler_options=settings["xla_options"])
    for ours, theirs in zip(api_rows, rows):
        for column in ("predict", "count_A", "count_B"):
            assert int(ours[column]) == int(theirs[header.index(column)])
        assert ours["radius"] == float(theirs[header.index("radius")]) == max(2 * 0.25 * (ours["pA_lower"] - 0.5), 0)
    # and the composition any JAX function would be: the classifier of a x + b
    plain = loader.load_model(small_model)
    composed = jaxsmooth.api.certify(lambda v, x: plain.apply(v, plain.model_state, 0.5 * x + 0.25, train=False)[0],
                                     plain.params, images / 255, sigma=0.25, n0=20, n=300, alpha=0.01, batch=100,
                                     index=idx, seed=model.config.seed, noise="uniform",
                                     compiler_options=settings["xla_options"])
    assert [r["count_A"] for r in composed] == [r["count_A"] for r in api_rows]
    # without the wrapper the counts differ: it is really applied
    bare = jaxsmooth.load(small_model).certify(images / 255, n0=20, n=300, alpha=0.01, batch=100, index=idx,
                                              seed=model.config.seed, noise="uniform", compiler_options=None)
    assert [r["count_A"] for r in bare] != [r["count_A"] for r in api_rows]
    # a resumed file refuses another wrapper, naming it; nothing is lost
    before = out.read_bytes()
    other = _affine_workdir(tmp_path / "other", 1.0, 0.0)
    with pytest.raises(UserError) as e:
        certify.write(checkpoint=small_model, wrapper=other, noise="uniform", out=str(out), **fast)
    assert e.value.field == "out" and f"wrapper={wrapper!r}, not {other!r}" in e.value.message
    assert out.read_bytes() == before


def test_a_wrapper_sets_the_sigma_it_was_made_for_and_a_classifier_as_wrapper_is_refused(registered, untrained_model,
                                                                                         tmp_path):
    cls = loader.load_model(untrained_model)
    made_for = _affine_workdir(tmp_path / "s", 1, 0, sigma=0.5)
    wrapped = loader.wrap(cls, loader.load_model(made_for, field="wrapper"))
    assert (cls.sigma, wrapped.sigma) == (0.25, 0.5)  # the wrapper's, not the classifier's
    loader.refuse_other_sigma(wrapped, 0.5, "wrapper")
    with pytest.raises(UserError) as e:
        loader.refuse_other_sigma(wrapped, 0.25, "wrapper")
    assert e.value.field == "wrapper" and f"{made_for} was trained for sigma 0.5, certifying at sigma 0.25" in \
        e.value.message
    with pytest.raises(UserError) as e:
        loader.wrap(cls, loader.load_model(untrained_model, field="wrapper"))
    assert e.value.field == "wrapper" and "holds a classifier, not a wrapper" in e.value.message
    with pytest.raises(UserError) as e:  # a kind asked for is named, and no other kind passes for it
        loader.wrap(cls, loader.load_model(made_for, field="denoiser"), kind="denoiser")
    assert (e.value.field, e.value.message) == ("denoiser", f"{made_for} holds a wrapper of kind 'affine', not a "
                                                            "denoiser")
    unknown = str(tmp_path / "unknown")
    checkpoint.write_workdir(unknown, {"wrapper": "nope", "input_shape": [8, 8, 1]}, {"a": np.float32(1)}, {})
    with pytest.raises(UserError) as e:
        loader.load_model(unknown, field="wrapper")
    assert e.value.field == "wrapper" and "unknown wrapper kind 'nope'; known: denoiser, affine" in e.value.message
