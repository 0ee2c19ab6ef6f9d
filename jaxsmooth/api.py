"""The Python API: certify or predict with any JAX classifier, or with a model read from a workdir.

    import jaxsmooth
    from jaxsmooth import api

    model = jaxsmooth.load("workdirs/quickstart")      # a training run's or a converted checkpoint's workdir
    logits = model.logits(x)                            # x: [B, H, W, C] floats in [0, 1]
    rows = model.certify(x, n0=100, n=100_000, alpha=0.001, labels=y)

    rows = api.certify(apply_fn, variables, x, sigma=0.25)   # any (variables, x) -> logits

    model = jaxsmooth.load("workdirs/clean", denoiser="workdirs/dncnn_0.25")   # denoised smoothing

Each call returns one dict per input: the row ``python -m jaxsmooth.certify``
writes for it (``idx``, ``predict``, ``radius``, ``pA_lower``, ``count_A``,
``count_B``, the L-bounds, ``time``; ``label`` and ``correct`` when labels
are given; ``-1`` in ``predict`` is an abstention; ``n_used`` with
``sequential=True``). Input b's noise is drawn
from the key of `seed` and its index (``index[b]``, default b), exactly as
the CLI draws example ``index[b]``'s: the same seed, index, settings and
model give the same counts here and in a CLI's TSV, on any number of devices.

``noise`` picks the smoothing noise, a registered noise kind
(`jaxsmooth.certification.noises`): ``"lattice"`` (the discretised normal
on the 1/255 grid, drawn exactly, whose certificates hold in floating point;
8-bit inputs k/255 and a scalar sigma only), ``"gaussian"`` (x + sigma z in
floating point, as Cohen et al.), one the caller registered, or ``"auto"``
(the default): the first registered kind that applies, so lattice when every
input is an 8-bit image and sigma a scalar, as for the CLI's data sources,
else gaussian. A workdir's model takes images as floats in [0, 1]: values
outside (a forgotten ``/ 255``) are refused.

Like the CLIs, `load`, `certify` and `predict` switch on JAX's persistent
compilation cache in jaxsmooth's cache folder (unless JAX already has one,
or ``JAXSMOOTH_CACHE_DIR=off``), and ``compiler_options="auto"`` takes the
option set remembered there for the same program and machine
(`jaxsmooth.compilation`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import jax
import numpy as np

from jaxsmooth import certification, compilation, loader, noise
from jaxsmooth.certification import noises, records
from jaxsmooth.errors import UserError

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def _engine_apply(apply_fn: ApplyFn) -> Callable:
    """``apply(params, model_state, x, *, train)`` (the engine's form) of ``apply_fn(variables, x) -> logits``."""

    def apply(params, model_state, x, *, train=False):
        return apply_fn(params, x), model_state

    return apply


def _inputs(x, index, labels, input_shape=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    x = np.asarray(x, np.float32)
    if x.ndim < 2:
        raise UserError("x", f"must be a batch [B, ...] of inputs, got shape {x.shape}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise UserError("x", f"inputs must have the model's shape {tuple(input_shape)}, got {tuple(x.shape[1:])} "
                             f"(x: [B, H, W, C] floats in [0, 1])")
    if input_shape is not None and x.size and not (float(np.min(x)) >= -1e-3 and float(np.max(x)) <= 1 + 1e-3):
        raise UserError("x", f"a workdir's model takes images as floats in [0, 1], got values in "
                             f"[{float(np.min(x)):g}, {float(np.max(x)):g}] (8-bit images: divide by 255)")
    index = np.arange(len(x)) if index is None else np.asarray(index, np.int64)
    if index.shape != (len(x),) or len(np.unique(index)) != len(x) or np.any(index < 0):
        raise UserError("index", f"must be {len(x)} distinct example indices >= 0, one per input")
    if labels is not None:
        labels = np.asarray(labels, np.int64)
        if labels.shape != (len(x),):
            raise UserError("labels", f"must be one label per input, shape ({len(x)},), got {labels.shape}")
    return x, index, labels


def _run(apply: Callable, params, model_state, x, index, labels, sigma, settings: certification.Settings, *,
         mode: str, seed: int, batch: int, inputs: int, mesh, compiler_options, kind: str = "auto") -> list[dict]:
    """The rows of `records.certification_rows` for in-memory inputs (the one path behind every entry point here)."""
    compilation.use_persistent_cache()
    if batch <= 0 or inputs <= 0 or batch % inputs:
        raise UserError("batch", f"must be > 0 and a multiple of inputs={inputs}, got {batch}")
    if settings.topk and labels is None:
        raise UserError("topk", "the top-k certificate needs the true labels (labels=...)")
    num_classes = int(jax.eval_shape(lambda v, s, a: apply(v, s, a, train=False)[0], params, model_state,
                                     jax.ShapeDtypeStruct((1, *x.shape[1:]), np.float32)).shape[-1])
    sigma = certification.check_sigma(sigma, x.shape[1:])
    sampler = certification.Sampler(apply, params, model_state, input_shape=x.shape[1:], num_classes=num_classes,
                                    inputs=min(inputs, len(x)), chunk=batch // inputs, mesh=mesh,
                                    with_softmax=mode == "certify", compiler_options=compiler_options,
                                    noise=noises.choose(kind, sigma, x).name)
    if kind in (None, "auto") and x.size and not (float(np.min(x)) >= 0 and float(np.max(x)) <= 1):
        warnings.warn(f"inputs lie in [{float(np.min(x)):g}, {float(np.max(x)):g}], not [0, 1], where the data sources "
                      f"and models read images: {sampler.noise} noise of sigma {float(np.max(sigma)):g} is added "
                      "there. Divide 8-bit images by 255; pass noise='gaussian' to smooth inputs of another space "
                      "(and silence this)", UserWarning, stacklevel=3)
    if mode == "certify":
        settings.check(num_classes, sampler.kind)
    clean = certification.make_clean_probabilities(apply, params, model_state)
    position = {int(i): b for b, i in enumerate(index)}

    def examples(idx):
        rows = [position[int(i)] for i in idx]
        return x[rows], None if labels is None else labels[rows]

    key = noise.certify_key(noise.root_key(seed))
    sigma = float(sigma) if sigma.ndim == 0 else sigma
    if settings.sequential and settings.radii:
        note = settings.sequential_header(sampler.radius_rule(sigma))[1]
        if note:
            warnings.warn(note, stacklevel=3)
    rows = records.certification_rows(sampler, examples, index, sigma, settings, key, mode=mode,
                                      clean_probabilities=clean)
    rows = sorted(rows, key=lambda row: position[row["idx"]])  # a sequential run yields rows as inputs finish
    return [{k: v for k, v in row.items() if k not in ("seconds", "samples")} for row in rows]


def certify(apply_fn: ApplyFn, variables: Any, x, *, sigma, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
            seed: int = 0, labels=None, index=None, candidate: str = "selection", topk: int = 0, batch: int = 1000,
            inputs: int = 1, mesh: jax.sharding.Mesh | None = None, compiler_options="auto",
            sequential: bool = False, radii=None, tolerance: float | None = None, noise: str = "auto",
            denoiser: str | None = None) -> list[dict]:
    """CERTIFY (Cohen et al. 2019) of the classifier smoothed by N(0, sigma^2) (or lattice) noise at each input.

    Args:
      apply_fn: ``apply_fn(variables, x) -> logits [B, K]``, any JAX function
        (flax linen ``module.apply``, an nnx ``merge``-and-call, equinox, plain jnp).
      variables: its first argument (a pytree of arrays).
      x: [B, *input_shape] float inputs, in the space the noise is added in.
      sigma: noise level, a scalar or one per input element (shape input_shape).
      n0, n, alpha: selection samples, estimation samples, failure probability per input.
      seed: noise seed; index: [B] the inputs' example indices (default 0 .. B-1).
      labels: [B] true labels (optional; adds ``label`` and ``correct``).
      candidate: "selection" (n0 noisy samples) or "clean" (one clean forward pass).
      topk: also certify the true class in the top k (needs labels; 0: off).
      batch: noisy samples per forward pass on each device; inputs: inputs per pass.
      mesh: devices to spread samples over (default: all).
      sequential: stop each input as soon as its answer is known (anytime-valid,
        `jaxsmooth.certification.sequential`); n is then each input's budget.
      radii: with sequential, decide certified or not at each of these radii (grid
        mode); None: the largest radius, stopped by `tolerance` (default 0.02).
      noise: "auto" or a registered noise kind: "lattice", "gaussian", ... (module docstring).
      denoiser: the workdir of a denoiser trained for `sigma` (denoised smoothing, docs/denoised.md): what is
        certified is then the classifier smoothed of apply_fn(variables, denoiser(x)).
    Returns:
      one row dict per input, in order (module docstring).
    """
    x, index, labels = _inputs(x, index, labels)
    settings = certification.make_settings(n0=n0, n=n, alpha=alpha, candidate=candidate, topk=topk,
                                           sequential=sequential, radii=radii, tolerance=tolerance)
    model = _denoised(apply_fn, variables, x, sigma, denoiser)
    return _run(model.apply, model.params, model.model_state, x, index, labels, sigma, settings, mode="certify",
                seed=seed, batch=batch, inputs=inputs, mesh=mesh, compiler_options=compiler_options, kind=noise)


def predict(apply_fn: ApplyFn, variables: Any, x, *, sigma, n: int = 100_000, alpha: float = 0.001, seed: int = 0,
            labels=None, index=None, batch: int = 1000, inputs: int = 1, mesh: jax.sharding.Mesh | None = None,
            compiler_options="auto", noise: str = "auto", denoiser: str | None = None) -> list[dict]:
    """PREDICT (Cohen et al. 2019): the top class of n noisy samples, or -1 when the binomial test fails at alpha.

    Arguments as `certify`; rows hold ``predict``, ``count_A``, ``count_B``,
    ``pvalue``, ``clean`` (the class of one clean forward pass) and ``time``.
    """
    settings = certification.make_settings("predict", n=n, alpha=alpha)
    x, index, labels = _inputs(x, index, labels)
    model = _denoised(apply_fn, variables, x, sigma, denoiser)
    return _run(model.apply, model.params, model.model_state, x, index, labels, sigma, settings, mode="predict",
                seed=seed, batch=batch, inputs=inputs, mesh=mesh, compiler_options=compiler_options, kind=noise)


def _denoised(apply_fn: ApplyFn, variables, x: np.ndarray, sigma, denoiser: str | None) -> loader.LoadedModel:
    """The engine's apply and variables of ``apply_fn(variables, x)``, with the denoiser of the workdir `denoiser`
    in front when given (`loader.wrap`: it must take inputs of x's shape and be trained for `sigma`)."""
    from jaxsmooth.models import dncnn

    model = loader.of_apply(_engine_apply(apply_fn), variables, {}, x.shape[1:], sigma)
    if denoiser:
        model = loader.wrap_workdir(model, denoiser, kind=dncnn.NAME)
        loader.refuse_other_sigma(model, sigma, dncnn.NAME)
    return model


@dataclasses.dataclass(frozen=True)
class SmoothedModel(loader.LoadedModel):
    """A classifier read from a workdir (`jaxsmooth.loader.LoadedModel`, BatchNorm folded: inference only), with
    the noise level it certifies with (``sigma``: the run's, or the per-pixel sigma a ``sigma`` run learned), and
    PREDICT and CERTIFY of its smoothed classifier. `wrapper_field`: the keyword its wrapper was given by in `load`
    (``wrapper`` or ``denoiser``), which errors about the wrapper name."""

    wrapper_field: str = "wrapper"

    def logits(self, x) -> np.ndarray:
        """[B, K] float32 logits of one clean forward pass; x: [B, H, W, C] floats in [0, 1]."""
        x, _, _ = _inputs(x, None, None, self.input_shape)
        return np.asarray(_jitted_logits(self.apply)(self.params, self.model_state, x))

    def predict(self, x, *, n: int = 100_000, alpha: float = 0.001, seed: int = 0, sigma=None, labels=None,
                index=None, batch: int = 1000, inputs: int = 1, mesh=None, compiler_options="auto",
                noise: str = "auto") -> list[dict]:
        """PREDICT at each input (`jaxsmooth.api.predict`); sigma defaults to the model's."""
        settings = certification.make_settings("predict", n=n, alpha=alpha)
        return self._run(x, index, labels, sigma, settings, "predict", seed, batch, inputs, mesh, compiler_options,
                         noise)

    def certify(self, x, *, sigma=None, n0: int = 100, n: int = 100_000, alpha: float = 0.001, seed: int = 0,
                labels=None, index=None, candidate: str = "selection", topk: int = 0, batch: int = 1000,
                inputs: int = 1, mesh=None, compiler_options="auto", sequential: bool = False, radii=None,
                tolerance: float | None = None, noise: str = "auto") -> list[dict]:
        """CERTIFY at each input (`jaxsmooth.api.certify`); sigma defaults to the model's."""
        settings = certification.make_settings(n0=n0, n=n, alpha=alpha, candidate=candidate, topk=topk,
                                               sequential=sequential, radii=radii, tolerance=tolerance)
        return self._run(x, index, labels, sigma, settings, "certify", seed, batch, inputs, mesh, compiler_options,
                         noise)

    def _run(self, x, index, labels, sigma, settings, mode, seed, batch, inputs, mesh, compiler_options, noise):
        x, index, labels = _inputs(x, index, labels, self.input_shape)
        sigma = self.sigma if sigma is None else sigma
        loader.refuse_other_sigma(self, sigma, self.wrapper_field)
        return _run(self.apply, self.params, self.model_state, x, index, labels, sigma, settings, mode=mode,
                    seed=seed, batch=batch, inputs=inputs, mesh=mesh, compiler_options=compiler_options, kind=noise)


_LOGITS: dict = {}


def _jitted_logits(apply: Callable) -> Callable:
    if apply not in _LOGITS:  # one compilation per architecture (`models.Apply` hashes by its graph)
        _LOGITS[apply] = jax.jit(lambda params, model_state, x: apply(params, model_state, x, train=False)[0])
    return _LOGITS[apply]


def load(workdir: str, *, step: int | None = None, wrapper: str | None = None,
         denoiser: str | None = None) -> SmoothedModel:
    """The smoothed classifier of a workdir: a training run's, or one `jaxsmooth.convert` wrote.

    Read by the one loader (`jaxsmooth.loader.load_model`): the model from
    ``model.json`` and the checkpoint at `step` (default: the latest), in
    config.json's compute dtype, BatchNorm folded, with the sigma it certifies
    with. `wrapper`: the workdir of a model wrapper (`jaxsmooth.models.wrappers`)
    to put in front of it: the smoothed classifier of classifier(wrapper(x)).
    `denoiser`: a wrapper that must be a denoiser (denoised smoothing,
    docs/denoised.md); the model then certifies at the sigma it was trained
    for, and refuses another.
    """
    from jaxsmooth.models import dncnn

    compilation.use_persistent_cache()
    if wrapper and denoiser:
        raise UserError("denoiser", "give one of wrapper= and denoiser=: a denoiser is a wrapper of one kind")
    loader.refuse_wrapper(workdir, "workdir")
    model = loader.load_model(workdir, step, field="workdir")
    kind = dncnn.NAME if denoiser else None
    if wrapper or denoiser:
        model = loader.wrap_workdir(model, wrapper or denoiser, kind=kind)
    return SmoothedModel(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model)},
                         wrapper_field=kind or "wrapper")
