"""``denoise``: train a denoiser D in front of a frozen classifier f (Salman et al. 2020, denoised smoothing §3).

The run's model is the composition f(D(y)) (`models.wrappers.Wrapped`): D a
DnCNN (`models.dncnn`, ``denoise.arch``) built for the data set's images, f the
classifier of the workdir ``denoise.classifier``, read by the one loader
(`loader.load_model`, BatchNorm folded as certification runs it). Only D's
variables are trained; f's are the run's teacher (`Teacher.from_model`): an
argument of the compiled step that the loss never differentiates, saved with
the train state and never changed. D's BatchNorm trains on batch statistics
(``train=True``); f runs in inference mode (``train=False``).

With delta drawn from the noise kind ``denoise.noise`` at sigma =
``objective.sigma`` (as certification draws it, `certification.noises`; one
draw per example from ``fold_in(key, index)``), x: [B, H, W, C] and labels c,
the losses (§3.2, the paper's ``--objective``) are

    mse             mean over B, H, W, C of (D(x + delta) - x)^2          (denoising)
    stability       mean_b CE(f(D(x_b + delta_b)), argmax f(x_b))
    classification  mean_b CE(f(D(x_b + delta_b)), c_b)

with CE the softmax cross-entropy. The workdir is a denoiser's
(`models.dncnn.metadata`: ``"wrapper": "denoiser"``, the architecture and
sigma), which ``certify --denoiser`` reads and ``certify --checkpoint`` refuses;
its model.json also names the objective, the loss and the classifier.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsmooth import noise
from jaxsmooth.errors import UserError
from jaxsmooth.objectives.base import Evaluation, Objective, Teacher, check_choice, check_positive, require_teacher

LOSSES = ("mse", "stability", "classification")


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # mse: ||D(x + delta) - x||^2 | stability: CE(f(D(x + delta)), argmax f(x)) | classification: CE to the label
    c.loss = "mse"
    c.classifier = ""  # workdir of the frozen classifier f (a training run's or a converted one)
    c.arch = "cifar_dncnn"  # the DnCNN: cifar_dncnn | cifar_dncnn_wide | imagenet_dncnn | mnist_dncnn
    c.depth = 0  # convolutions of the DnCNN (0: the arch's)
    c.width = 0  # channels of its hidden convolutions (0: the arch's)
    c.noise = "gaussian"  # the noise kind of certification drawn in training: gaussian | lattice (8-bit data)
    return c


def validate(config) -> None:
    from jaxsmooth.certification import noises
    from jaxsmooth.models import dncnn

    block = config.denoise
    check_choice(block.loss, "denoise.loss", LOSSES)
    if not block.classifier:
        raise UserError("denoise.classifier", "is empty; give the workdir of the classifier the denoiser serves")
    check_choice(block.arch, "denoise.arch", tuple(dncnn.ARCHS))
    if block.depth and block.depth < 2:
        raise UserError("denoise.depth", f"must be 0 (the arch's) or >= 2, got {block.depth!r}")
    check_positive(block.width, "denoise.width", "0: the arch's", allow_zero=True)
    check_choice(block.noise, "denoise.noise", noises.names())


def metadata(config, dataset) -> dict:
    """The model.json of the run: a denoiser's (`dncnn.metadata`) for the data set's images at objective.sigma,
    with the objective, its loss and its classifier."""
    from jaxsmooth.models import dncnn

    block = config.denoise
    info = dncnn.metadata(dataset.input_shape, config.objective.sigma, arch=block.arch, depth=block.depth or None,
                          width=block.width or None)
    return {**info, "objective": config.objective.name, "loss": block.loss, "classifier": block.classifier,
            "dataset": config.data.name}


def build_model(config, dataset):
    """f(D(y)) as a `models.Model`: a fresh DnCNN (the identity, `dncnn`) in front of the classifier read from
    ``denoise.classifier``, which must take the data set's images and classes (else a `UserError` naming it)."""
    from jaxsmooth import checkpoint, loader, models
    from jaxsmooth.models import dncnn, wrappers

    field = "denoise.classifier"
    path = config.denoise.classifier
    loader.refuse_wrapper(path, field)
    classifier = loader.load_model(path, field=field)
    expected = {"input_shape": list(dataset.input_shape), "num_classes": int(dataset.num_classes)}
    checkpoint.refuse_other_model(classifier.info, path, expected, field, fields=tuple(expected))
    denoiser = models.split(dncnn.create(metadata(config, dataset), dtype=config.model.dtype,
                                         seed=noise.init_seed(config.seed)))
    front = models.Model(classifier.apply, jax.tree.map(jnp.asarray, classifier.params),
                         jax.tree.map(jnp.asarray, classifier.model_state))
    return wrappers.wrap(denoiser, front)


def classifier_variables(params, model_state):
    """The teacher: f's ``(params, model_state)`` out of the composition's variables."""
    return params["classifier"], model_state["classifier"]


def initial_variables(config, params, model_state, input_shape):
    """What the optimizer trains: D's variables out of the composition's."""
    del config, input_shape
    return params["wrapper"], model_state["wrapper"]


def smoothed(config, params, model_state, teacher):
    """f(D(.)) with D's current variables and the frozen f, at ``objective.sigma``."""
    return ({"wrapper": params, "classifier": teacher[0]}, {"wrapper": model_state, "classifier": teacher[1]},
            config.objective.sigma)


def noisy_inputs(config, x: jax.Array, key: jax.Array, index: jax.Array) -> jax.Array:
    """x + delta: [B, H, W, C], delta of the kind ``denoise.noise`` at ``objective.sigma``, example b's drawn from
    ``fold_in(key, index[b])`` as certification draws a sample from its key (`NoiseKind.perturb`)."""
    from jaxsmooth.certification import noises

    kind = noises.get(config.denoise.noise, "denoise.noise")
    scale = kind.scale(np.float32(config.objective.sigma), x.shape[1:])
    return kind.perturb(x, noise.example_keys(key, index)[:, None], scale)[:, 0]


def losses(apply, teacher, x, labels, denoised) -> dict[str, Callable[[], tuple[jax.Array, dict]]]:
    """Each loss of `LOSSES` as a thunk ``() -> (scalar, metrics)`` (module docstring); `denoised`: D(x + delta).

    Args:
      apply: the composition's `Wrapped` apply; f is ``apply.classifier``.
      teacher: f's ``(params, model_state)``, constants here (stop_gradient).
      x: [B, H, W, C] clean images; labels: [B] int32; denoised: [B, H, W, C].
    """
    f_params, f_state = jax.lax.stop_gradient(teacher)
    f = lambda y: apply.classifier(f_params, f_state, y, train=False)[0]  # noqa: E731

    def cross_entropy(targets):
        logits = f(denoised)
        value = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return value, {"accuracy": (jnp.argmax(logits, -1) == labels).mean()}

    return {"mse": lambda: (jnp.mean(jnp.square(denoised - x)), {}),
            "stability": lambda: cross_entropy(jax.lax.stop_gradient(jnp.argmax(f(x), -1))),
            "classification": lambda: cross_entropy(labels)}


def make(config, apply, teacher=None):
    """``loss(params, model_state, batch, key)`` of D's variables (`base` module docstring)."""
    validate(config)
    teacher = require_teacher(config, teacher)
    name = config.denoise.loss

    def loss(params, model_state, batch, key):
        x = batch["image"]
        denoised, new_state = apply.wrapper(params, model_state, noisy_inputs(config, x, key, batch["index"]),
                                            train=True)
        value, metrics = losses(apply, teacher, x, batch["label"], denoised)[name]()
        metrics = {**metrics, "loss": value, "mse": jnp.mean(jnp.square(denoised - x))}
        return value, {"model_state": new_state, "metrics": metrics}

    return loss


def _mse_sums(config, apply) -> Callable:
    """``sums(params, model_state, batch, key, sigma)``: the summed per-example mean of (D(x + delta) - x)^2."""

    def sums(params, model_state, batch, key, sigma):
        del sigma
        x = batch["image"]
        denoised, _ = apply.wrapper(params["wrapper"], model_state["wrapper"],
                                    noisy_inputs(config, x, key, batch["index"]), train=False)
        per_example = jnp.mean(jnp.square(denoised - x), axis=(1, 2, 3))
        return {"mse_sum": jnp.sum(jnp.where(batch["mask"], per_example, 0.0))}

    return sums


EVALUATION = Evaluation(make=_mse_sums, summarize=lambda totals, count: {"test_mse": float(totals["mse_sum"]) / count})

OBJECTIVE = Objective(
    name="denoise",
    reference="Salman, Sun, Yang, Kapoor, Kolter 2020: Denoised Smoothing: A Provable Defense for Pretrained "
              "Classifiers (§3.2: MSE, stability and classification objectives)",
    make_loss=make,
    defaults=defaults,
    validate=validate,
    teacher=Teacher(from_model=classifier_variables),
    initial_variables=initial_variables,
    smoothed=smoothed,
    evaluation=EVALUATION,
    build_model=build_model,
    metadata=metadata,
)
