"""The one model loader: a workdir in, everything a consumer of its model needs out.

    model = loader.load_model("workdirs/quickstart")         # a training run's workdir, or a converted one
    model.apply(model.params, model.model_state, x, train=False) -> (logits, model_state)
    model.sigma, model.input_shape, model.num_classes, model.info

certify, attack, the Python API (`jaxsmooth.load`) and the benchmarks read
models through `load_model`, and only through it. It reads ``model.json``
(what the model is), ``config.json`` when there is one (the compute dtype),
and the model's variables from one checkpoint, each process by itself
(host arrays). It never validates a training config, loads a data set or
builds an optimizer: certifying on any number of devices works whatever the
run's ``train.batch_size`` was.

What a workdir certifies is its objective's answer (`Objective.certified`):
the saved model with the sigma model.json records, or, for a run that
learned a per-pixel sigma, the frozen classifier saved with it and that
sigma. A workdir whose model.json names a ``wrapper`` kind holds a model
wrapper (`jaxsmooth.models.wrappers`); `wrap` puts one in front of a
classifier.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np

from jaxsmooth import checkpoint
from jaxsmooth.errors import UserError


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model read from a workdir (`load_model`).

    Attributes:
      apply: ``apply(params, model_state, x, *, train) -> (out, model_state)``; x: [B, *input_shape] float32
        in [0, 1]; out: logits [B, num_classes] for a classifier, [B, *input_shape] for a wrapper.
      params, model_state: its variables, host arrays (BatchNorm folded when `folded`).
      input_shape: one input's shape (H, W, C).
      num_classes: K (None for a wrapper).
      mean, std: the per-channel normalisation of its first layer (None for a wrapper).
      sigma: the noise level it certifies with: a float, or [H, W, C] float32 for a per-pixel sigma
        (None for a wrapper that records none); with a wrapper in front (`wrap`) that records one (a denoiser:
        the sigma it was trained for), the wrapper's.
      info: its model.json.
      config: its resolved config.json, or None when the workdir has none.
      workdir, step: where it was read from.
      folded: whether BatchNorm is folded into the convolutions (inference only).
      dtype: the compute dtype it was built with.
      wrapper: the wrapper kind of a wrapper's workdir; for a classifier with a wrapper in front (`wrap`),
        that wrapper's `LoadedModel`; None for a plain classifier.
    """

    apply: Callable
    params: Any
    model_state: Any
    input_shape: tuple
    num_classes: int | None
    mean: tuple | None
    std: tuple | None
    sigma: Any
    info: dict
    config: Any
    workdir: str
    step: int
    folded: bool = False
    dtype: str = "float32"
    wrapper: Any = None

    @property
    def is_wrapper(self) -> bool:
        """Whether this is a wrapper's workdir (not a classifier)."""
        return isinstance(self.wrapper, str)

    def settings(self) -> dict:
        """What a result file's settings record of where this model came from (its identity)."""
        fields = {"checkpoint": self.workdir, "checkpoint_step": self.step}
        if isinstance(self.wrapper, LoadedModel):
            fields.update(wrapper=self.wrapper.workdir, wrapper_step=self.wrapper.step,
                          wrapper_kind=self.wrapper.wrapper)
        return fields


def load_model(workdir: str, step: int | None = None, *, field: str = "checkpoint", dtype: str | None = None,
               fold_batch_norm: bool = True) -> LoadedModel:
    """The model of `workdir` at checkpoint `step` (default: the latest).

    Args:
      workdir: a training run's --workdir, one `jaxsmooth.convert` wrote, or a wrapper's.
      field: the name errors give the workdir (``checkpoint`` for the CLIs, ``workdir`` for the API).
      dtype: the compute dtype (default: config.json's model.dtype, else float32).
      fold_batch_norm: fold BatchNorm into the convolutions (`models.fold_batch_norm`): what
        certification runs; attacks take the model as trained.
    Raises:
      UserError: naming `field` (or ``step``) when the workdir, its checkpoint or its model.json is missing
        or does not describe a model.
    """
    folder, step = checkpoint.checkpoint_folder(workdir, field, step)
    info = _read_info(workdir, field)
    raw = checkpoint.read_model(folder, field)
    from jaxsmooth.models import wrappers

    if wrappers.WRAPPER_KEY in info:
        return _load_wrapper(workdir, step, info, raw, field, fold_batch_norm)
    config = _read_config(workdir, field)
    params, model_state, sigma = _certified_variables(workdir, info, raw, field)
    if dtype is None:
        dtype = config.model.dtype if config is not None else "float32"
    model = _read_into(_abstract_classifier(workdir, info, dtype, field), params, model_state, workdir, field)
    if fold_batch_norm:
        from jaxsmooth import models

        model = models.fold_batch_norm(model)
    return LoadedModel(apply=model.apply, params=model.params, model_state=model.model_state,
                       input_shape=tuple(info["input_shape"]), num_classes=int(info["num_classes"]),
                       mean=tuple(info["mean"]), std=tuple(info["std"]), sigma=sigma, info=info, config=config,
                       workdir=workdir, step=step, folded=fold_batch_norm, dtype=dtype)


def load_with_data(config, workdir: str, step: int | None = None, *, field: str = "checkpoint", wrapper: str = "",
                   wrapper_kind: str | None = None, fold_batch_norm: bool = True):
    """(model, dataset): what certify and attack run on. The model of `workdir` (`load_model`, in the config's
    model.dtype), with the wrapper of the workdir `wrapper` in front when given (`wrap`; `wrapper_kind`: one of
    that kind only, named by it: ``--denoiser``), and the data set the config names.

    A model whose model.json does not fit the config and data set (another
    architecture, input shape or number of classes) is refused, naming `field`.
    """
    from jaxsmooth import data

    refuse_wrapper(workdir, field)
    model = load_model(workdir, step, field=field, dtype=config.model.dtype, fold_batch_norm=fold_batch_norm)
    dataset = data.load(config.data.name, data_dir=config.data.data_dir, image_size=config.data.image_size)
    checkpoint.refuse_other_model(model.info, workdir, checkpoint.model_metadata(config, dataset), field)
    if wrapper:
        model = wrap_workdir(model, wrapper, kind=wrapper_kind, fold_batch_norm=fold_batch_norm)
    return model, dataset


def of_apply(apply: Callable, params, model_state, input_shape, sigma=None) -> LoadedModel:
    """A classifier that no workdir holds, given by its ``apply(params, model_state, x, *, train)`` and variables
    (inputs: [B, *input_shape]), as `wrap` takes one: no model.json, config, normalisation or class count."""
    return LoadedModel(apply=apply, params=params, model_state=model_state, input_shape=tuple(input_shape),
                       num_classes=None, mean=None, std=None, sigma=sigma, info={}, config=None, workdir="",
                       step=0)


def wrap_workdir(classifier: LoadedModel, workdir: str, *, kind: str | None = None,
                 fold_batch_norm: bool = True) -> LoadedModel:
    """`classifier` with the wrapper read from `workdir` (`load_model`) in front (`wrap`); errors name `kind`,
    else ``wrapper``."""
    return wrap(classifier, load_model(workdir, field=kind or "wrapper", fold_batch_norm=fold_batch_norm), kind=kind)


def wrap(classifier: LoadedModel, wrapper: LoadedModel, *, kind: str | None = None) -> LoadedModel:
    """`classifier` with `wrapper` in front: apply is ``classifier(wrapper(x))`` (`models.wrappers.wrap`).

    The wrapper must take the classifier's input shape, and be of `kind`
    when one is asked for: otherwise a `UserError` names the field (`kind`,
    else ``wrapper``) and both values. A wrapper that records the sigma it
    was made for (a denoiser) makes that the composition's sigma: the
    classifier's own (a `standard` run's, say) plays no part in it.
    """
    from jaxsmooth.models import wrappers

    field = kind or "wrapper"
    if not wrapper.is_wrapper:
        raise UserError(field, f"{wrapper.workdir} holds a classifier, not a {field} (its model.json names no "
                               f"{wrappers.WRAPPER_KEY!r} kind)")
    if kind is not None and wrapper.wrapper != kind:
        raise UserError(field, f"{wrapper.workdir} holds a wrapper of kind {wrapper.wrapper!r}, not a {kind}")
    if wrapper.input_shape != classifier.input_shape:
        raise UserError(field, f"{wrapper.workdir} takes inputs of shape {wrapper.input_shape}, the classifier "
                               f"{classifier.input_shape}")
    model = wrappers.wrap(wrapper, classifier)
    sigma = classifier.sigma if wrapper.sigma is None else wrapper.sigma
    return dataclasses.replace(classifier, apply=model.apply, params=model.params, model_state=model.model_state,
                               sigma=sigma, wrapper=wrapper)


def refuse_other_sigma(model: LoadedModel, sigma, field: str) -> None:
    """A `UserError` naming `field` (the wrapper's flag) when `model` has a wrapper trained for another noise
    level than `sigma`, the one certified with: a denoiser removes the noise it was trained on."""
    front = model.wrapper
    if not isinstance(front, LoadedModel) or front.sigma is None or np.array_equal(np.asarray(sigma), front.sigma):
        return
    at = f"sigma {float(sigma):g}" if np.ndim(sigma) == 0 else "a per-pixel sigma"
    raise UserError(field, f"{front.workdir} was trained for sigma {front.sigma:g}, certifying at {at}; "
                           f"certify at sigma {front.sigma:g} or give a {front.wrapper} trained for {at}")


def refuse_wrapper(workdir: str, field: str) -> None:
    """A `UserError` naming `field` when `workdir` holds a model wrapper (a denoiser) where a classifier belongs."""
    from jaxsmooth.models import wrappers

    path = os.path.join(workdir, checkpoint.MODEL_FILE)
    info = checkpoint.read_json(path, field) if os.path.isfile(path) else None
    if isinstance(info, dict) and wrappers.WRAPPER_KEY in info:
        raise UserError(field, f"{workdir} holds a model wrapper of kind {info[wrappers.WRAPPER_KEY]!r} (images to "
                               "images), not a classifier; put it in front of one (--wrapper; a denoiser: --denoiser)")


def _read_info(workdir: str, field: str) -> dict:
    path = os.path.join(workdir, checkpoint.MODEL_FILE)
    if not os.path.isfile(path):
        raise UserError(field, f"{workdir} has checkpoints but no {checkpoint.MODEL_FILE}: not a jaxsmooth workdir "
                               "(a training run's --workdir, or one jaxsmooth.convert wrote)")
    info = checkpoint.read_json(path, field)
    if not isinstance(info, dict) or "input_shape" not in info:
        raise UserError(field, f"{path} does not describe a model (it has no input_shape)")
    return info


def _read_config(workdir: str, field: str):
    path = os.path.join(workdir, checkpoint.CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    from jaxsmooth import config as config_lib

    with open(path) as f:
        return config_lib.from_json(f.read(), field)


def _certified_variables(workdir: str, info: dict, raw: dict, field: str) -> tuple[Any, Any, Any]:
    """(params, model_state, sigma) of the classifier the checkpoint certifies: its objective's answer."""
    from jaxsmooth import objectives
    from jaxsmooth.objectives import base

    name = info.get("objective")
    certified = base.recorded_sigma if name is None else None
    if certified is None:
        if name not in objectives.REGISTRY:
            raise UserError(field, f"{workdir} was trained with the objective {name!r}, which is not registered "
                                   f"(registered: {', '.join(objectives.names())})")
        certified = objectives.get(name).certified
    teacher = raw.get("teacher")
    if isinstance(teacher, dict):  # orbax gives a saved tuple back with string keys
        teacher = (teacher["0"], teacher["1"])
    try:
        return certified(info, raw.get("params"), raw.get("model_state", {}), teacher)
    except UserError as e:
        raise UserError(field, f"{workdir}: {e.field}: {e.message}") from None


def _abstract_classifier(workdir: str, info: dict, dtype: str, field: str):
    """The `models.Model` model.json describes, with `jax.ShapeDtypeStruct` leaves (nothing initialised)."""
    from flax import nnx

    from jaxsmooth import models

    try:
        name, arguments = info["model"], dict(
            num_classes=int(info["num_classes"]), input_shape=tuple(info["input_shape"]), mean=tuple(info["mean"]),
            std=tuple(info["std"]), activation=info.get("activation", "relu"), dtype=dtype,
            width=int(info.get("width", 0)))
    except KeyError as e:
        raise UserError(field, f"{workdir}/{checkpoint.MODEL_FILE} lacks the entry {e}") from None
    return models.split(nnx.eval_shape(lambda: models.create(name, **arguments)))


def _read_into(abstract, params, model_state, workdir: str, field: str):
    """`abstract` (a `models.Model`) with its leaves read from the raw checkpoint trees, as host arrays."""
    from jaxsmooth import models

    try:
        return models.Model(abstract.apply, checkpoint.lookup(abstract.params, params),
                            checkpoint.lookup(abstract.model_state, model_state or {}))
    except (KeyError, TypeError) as e:
        raise UserError(field, f"{workdir}'s checkpoint lacks model variable {e}") from None


def _load_wrapper(workdir: str, step: int, info: dict, raw: dict, field: str, fold: bool) -> LoadedModel:
    from jaxsmooth import models
    from jaxsmooth.models import wrappers

    kind = wrappers.get(str(info[wrappers.WRAPPER_KEY]), field)
    try:
        abstract = kind.build(info)
    except UserError as e:
        raise UserError(field, f"{workdir}/{checkpoint.MODEL_FILE}: {e.field}: {e.message}") from None
    model = _read_into(abstract, raw.get("params"), raw.get("model_state", {}), workdir, field)
    if fold:
        model = models.fold_batch_norm(model)
    sigma = info.get("sigma")
    return LoadedModel(apply=model.apply, params=model.params, model_state=model.model_state,
                       input_shape=tuple(info["input_shape"]), num_classes=None, mean=None, std=None,
                       sigma=None if sigma is None else float(sigma), info=info, config=None, workdir=workdir,
                       step=step, folded=fold, wrapper=kind.name)
