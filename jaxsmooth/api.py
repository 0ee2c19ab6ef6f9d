"""The Python API: certify or predict with any JAX classifier, or with a model read from a workdir.

    import jaxsmooth

    model = jaxsmooth.load("workdirs/quickstart")      # a training run's or a converted checkpoint's workdir
    logits = model.logits(x)                            # x: [B, H, W, C] floats in [0, 1]
    rows = model.certify(x, n0=100, n=100_000, alpha=0.001, labels=y)

    rows = jaxsmooth.certify(apply_fn, variables, x, sigma=0.25)   # any (variables, x) -> logits

Each call returns one dict per input: the row ``python -m jaxsmooth.certify``
writes for it (``idx``, ``predict``, ``radius``, ``pA_lower``, ``count_A``,
``count_B``, the L-bounds, ``time``; ``label`` and ``correct`` when labels
are given; ``-1`` in ``predict`` is an abstention; ``n_used`` with
``sequential=True``). Input b's noise is drawn
from the key of `seed` and its index (``index[b]``, default b), exactly as
the CLI draws example ``index[b]``'s: the same seed, index, settings and
model give the same counts here and in a CLI's TSV, on any number of devices.

``noise`` picks the smoothing noise: ``"lattice"`` (the discretised normal
on the 1/255 grid, drawn exactly, whose certificates hold in floating point:
`jaxsmooth.certification.lattice`; 8-bit inputs k/255 and a scalar sigma
only), ``"gaussian"`` (x + sigma z in floating point, as Cohen et al.), or
``"auto"`` (the default): lattice when every input is an 8-bit image and
sigma a scalar, as for the CLI's data sources, else gaussian.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Callable

import jax
import numpy as np

from jaxsmooth import certification, checkpoint, models, noise
from jaxsmooth.certification import lattice, records
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
    index = np.arange(len(x)) if index is None else np.asarray(index, np.int64)
    if index.shape != (len(x),) or len(np.unique(index)) != len(x) or np.any(index < 0):
        raise UserError("index", f"must be {len(x)} distinct example indices >= 0, one per input")
    if labels is not None:
        labels = np.asarray(labels, np.int64)
        if labels.shape != (len(x),):
            raise UserError("labels", f"must be one label per input, shape ({len(x)},), got {labels.shape}")
    return x, index, labels


NOISES = ("auto", *certification.NOISES)


def noise_kind(noise: str, x: np.ndarray, sigma) -> str:
    """The engine's noise for `noise` ("auto": lattice for 8-bit inputs and a scalar sigma, else gaussian)."""
    if noise not in NOISES:
        raise UserError("noise", f"unknown {noise!r}; allowed: {', '.join(NOISES)}")
    if noise != "auto":
        return noise
    return "lattice" if np.ndim(sigma) == 0 and lattice.off_grid(x) is None else "gaussian"


def _run(apply: Callable, params, model_state, x, index, labels, sigma, settings: certification.Settings, *,
         mode: str, seed: int, batch: int, inputs: int, mesh, compiler_options, kind: str = "auto") -> list[dict]:
    """The rows of `records.run` for in-memory inputs (the one path behind every entry point here)."""
    if batch <= 0 or inputs <= 0 or batch % inputs:
        raise UserError("batch", f"must be > 0 and a multiple of inputs={inputs}, got {batch}")
    if settings.topk and labels is None:
        raise UserError("topk", "the top-k certificate needs the true labels (labels=...)")
    num_classes = int(jax.eval_shape(lambda v, s, a: apply(v, s, a, train=False)[0], params, model_state,
                                     jax.ShapeDtypeStruct((1, *x.shape[1:]), np.float32)).shape[-1])
    if mode == "certify":
        settings.check(num_classes)
    sigma = certification.check_sigma(sigma, x.shape[1:])
    sampler = certification.Sampler(apply, params, model_state, input_shape=x.shape[1:], num_classes=num_classes,
                                    inputs=min(inputs, len(x)), chunk=batch // inputs, mesh=mesh,
                                    with_softmax=mode == "certify", compiler_options=compiler_options,
                                    noise=noise_kind(kind, x, sigma))
    clean = certification.make_clean_probabilities(apply, params, model_state)
    position = {int(i): b for b, i in enumerate(index)}

    def examples(idx):
        rows = [position[int(i)] for i in idx]
        return x[rows], None if labels is None else labels[rows]

    key = noise.certify_key(noise.root_key(seed))
    sigma = float(sigma) if sigma.ndim == 0 else sigma
    if settings.sequential and settings.radii:
        from jaxsmooth.certification import sequential

        sigma_min = float(np.min(sigma))
        note = sequential.out_of_reach_note(settings.radii, settings.schedule(sigma_min), sigma_min, settings.alpha)
        if note:
            warnings.warn(note, stacklevel=3)
    rows = records.run(sampler, examples, index, sigma, settings, key, mode=mode, clean_probabilities=clean)
    rows = sorted(rows, key=lambda row: position[row["idx"]])  # a sequential run yields rows as inputs finish
    return [{k: v for k, v in row.items() if k not in ("seconds", "samples")} for row in rows]


def _settings(n0, n, alpha, candidate, topk, sequential, radii, tolerance) -> certification.Settings:
    """CERTIFY's settings; sequential ones (`certification.sequential`) when asked for."""
    from jaxsmooth.certification import sequential as sequential_stats

    fields = dict(n0=n0, n=n, alpha=alpha, candidate=candidate, topk=topk)
    if not sequential:
        for name, value in (("radii", radii), ("tolerance", tolerance)):
            if value is not None:
                raise UserError(name, "is for a sequential test; pass sequential=True too")
        return certification.Settings(**fields)
    if radii is not None and tolerance is not None:
        raise UserError("tolerance", "stops the max-radius mode; with radii every listed radius is decided")
    extra = {} if tolerance is None else {"tolerance": tolerance}
    return certification.Settings(**fields, sequential=True, **extra,
                                  radii=None if radii is None else sequential_stats.check_radii(radii))


def certify(apply_fn: ApplyFn, variables: Any, x, *, sigma, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
            seed: int = 0, labels=None, index=None, candidate: str = "selection", topk: int = 0, batch: int = 1000,
            inputs: int = 1, mesh: jax.sharding.Mesh | None = None, compiler_options="auto",
            sequential: bool = False, radii=None, tolerance: float | None = None, noise: str = "auto") -> list[dict]:
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
      noise: "auto", "lattice" or "gaussian" (module docstring).
    Returns:
      one row dict per input, in order (module docstring).
    """
    x, index, labels = _inputs(x, index, labels)
    settings = _settings(n0, n, alpha, candidate, topk, sequential, radii, tolerance)
    return _run(_engine_apply(apply_fn), variables, {}, x, index, labels, sigma, settings, mode="certify", seed=seed,
                batch=batch, inputs=inputs, mesh=mesh, compiler_options=compiler_options, kind=noise)


def predict(apply_fn: ApplyFn, variables: Any, x, *, sigma, n: int = 100_000, alpha: float = 0.001, seed: int = 0,
            labels=None, index=None, batch: int = 1000, inputs: int = 1, mesh: jax.sharding.Mesh | None = None,
            compiler_options="auto", noise: str = "auto") -> list[dict]:
    """PREDICT (Cohen et al. 2019): the top class of n noisy samples, or -1 when the binomial test fails at alpha.

    Arguments as `certify`; rows hold ``predict``, ``count_A``, ``count_B``,
    ``pvalue``, ``clean`` (the class of one clean forward pass) and ``time``.
    """
    if not 0 < alpha < 1:
        raise UserError("alpha", f"must be in (0, 1), got {alpha}")
    if n <= 0:
        raise UserError("n", f"must be > 0, got {n}")
    x, index, labels = _inputs(x, index, labels)
    settings = certification.Settings(n0=0, n=n, alpha=alpha)
    return _run(_engine_apply(apply_fn), variables, {}, x, index, labels, sigma, settings, mode="predict", seed=seed,
                batch=batch, inputs=inputs, mesh=mesh, compiler_options=compiler_options, kind=noise)


@dataclasses.dataclass(frozen=True)
class SmoothedModel:
    """A classifier read from a workdir, with the noise level it was trained (or published) for.

    Attributes:
      apply: ``apply(params, model_state, x, *, train)`` of `jaxsmooth.models`
        (BatchNorm folded: inference only).
      params, model_state: its variables, host arrays.
      sigma: the smoothing noise: the run's ``objective.sigma``, or the
        per-pixel sigma a ``sigma`` run learned ([H, W, C]).
      input_shape: (H, W, C); num_classes: K.
      info: the workdir's model.json (model, dataset, mean/std, ...).
      workdir, step: where it was read from.
    """

    apply: Callable
    params: Any
    model_state: Any
    sigma: Any
    input_shape: tuple
    num_classes: int
    info: dict
    workdir: str
    step: int

    def logits(self, x) -> np.ndarray:
        """[B, K] float32 logits of one clean forward pass; x: [B, H, W, C] floats in [0, 1]."""
        x, _, _ = _inputs(x, None, None, self.input_shape)
        return np.asarray(_jitted_logits(self.apply)(self.params, self.model_state, x))

    def predict(self, x, *, n: int = 100_000, alpha: float = 0.001, seed: int = 0, sigma=None, labels=None,
                index=None, batch: int = 1000, inputs: int = 1, mesh=None, compiler_options="auto",
                noise: str = "auto") -> list[dict]:
        """PREDICT at each input (`jaxsmooth.api.predict`); sigma defaults to the model's."""
        return self._run(x, index, labels, sigma, certification.Settings(n0=0, n=n, alpha=alpha), "predict", seed,
                         batch, inputs, mesh, compiler_options, noise)

    def certify(self, x, *, sigma=None, n0: int = 100, n: int = 100_000, alpha: float = 0.001, seed: int = 0,
                labels=None, index=None, candidate: str = "selection", topk: int = 0, batch: int = 1000,
                inputs: int = 1, mesh=None, compiler_options="auto", sequential: bool = False, radii=None,
                tolerance: float | None = None, noise: str = "auto") -> list[dict]:
        """CERTIFY at each input (`jaxsmooth.api.certify`); sigma defaults to the model's."""
        settings = _settings(n0, n, alpha, candidate, topk, sequential, radii, tolerance)
        return self._run(x, index, labels, sigma, settings, "certify", seed, batch, inputs, mesh, compiler_options,
                         noise)

    def _run(self, x, index, labels, sigma, settings, mode, seed, batch, inputs, mesh, compiler_options, noise):
        if mode == "predict" and not 0 < settings.alpha < 1:
            raise UserError("alpha", f"must be in (0, 1), got {settings.alpha}")
        x, index, labels = _inputs(x, index, labels, self.input_shape)
        return _run(self.apply, self.params, self.model_state, x, index, labels,
                    self.sigma if sigma is None else sigma, settings, mode=mode, seed=seed, batch=batch,
                    inputs=inputs, mesh=mesh, compiler_options=compiler_options, kind=noise)


_LOGITS: dict = {}


def _jitted_logits(apply: Callable) -> Callable:
    if apply not in _LOGITS:  # one compilation per architecture (`models.Apply` hashes by its graph)
        _LOGITS[apply] = jax.jit(lambda params, model_state, x: apply(params, model_state, x, train=False)[0])
    return _LOGITS[apply]


def load(workdir: str, *, step: int | None = None) -> SmoothedModel:
    """The smoothed classifier of a workdir: a training run's, or one `jaxsmooth.convert` wrote.

    The model is rebuilt from ``model.json`` (architecture, input, classes,
    normalisation) and ``config.json`` (compute dtype), its variables read
    from the checkpoint at `step` (default: the latest), and BatchNorm
    folded. A ``sigma`` run gives its frozen base classifier
    (``train.init_from``) with the per-pixel sigma it learned.
    """
    info = checkpoint.read_json(os.path.join(workdir, checkpoint.MODEL_FILE), "workdir")
    if info.get("objective") == "sigma":
        sigma, base, sigma_step = checkpoint.read_learned_sigma(workdir, field="workdir", step=step)
        return dataclasses.replace(load(base), sigma=sigma, workdir=workdir, step=sigma_step)
    config = checkpoint.read_json(os.path.join(workdir, checkpoint.CONFIG_FILE), "workdir")
    try:
        name, arguments = info["model"], dict(
            num_classes=int(info["num_classes"]), input_shape=tuple(info["input_shape"]), mean=tuple(info["mean"]),
            std=tuple(info["std"]), activation=info.get("activation", "relu"),
            dtype=config.get("model", {}).get("dtype", "float32"), width=int(info.get("width", 0)))
        sigma = float(info["sigma"])
    except KeyError as e:
        raise UserError("workdir", f"{workdir}/{checkpoint.MODEL_FILE} lacks the entry {e}") from None
    from flax import nnx

    abstract = models.split(nnx.eval_shape(lambda: models.create(name, **arguments)))
    params, model_state, step = checkpoint.read_variables(workdir, (abstract.params, abstract.model_state),
                                                          "workdir", step)
    model = models.fold_batch_norm(models.Model(abstract.apply, params, model_state))
    return SmoothedModel(apply=model.apply, params=model.params, model_state=model.model_state,
                         sigma=sigma, input_shape=tuple(info["input_shape"]),
                         num_classes=int(info["num_classes"]), info=info, workdir=workdir, step=step)
