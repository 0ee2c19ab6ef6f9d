"""What an objective is: one record, `Objective`, that the trainer, the config and the docs read.

An objective file defines its loss and ends with ``OBJECTIVE = Objective(...)``;
`jaxsmooth.objectives` registers it with one line. The trainer asks the
record every question it has about an objective (which teacher, which
variables to train, which smoothed classifier to evaluate, how many epochs),
so it names none of them.

The loss interface (every objective)::

    make_loss(config, apply, teacher) -> loss
    loss(params, model_state, batch, key) -> (scalar, {"model_state": ..., "metrics": {name: scalar}})
    batch = {"image": [B, H, W, C] float32 in [0, 1], "label": [B] int32, "index": [B] int32}

`key` is the step key; an objective derives each example's noise from
``fold_in(key, batch["index"][b])`` (`jaxsmooth.noise`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from jaxsmooth.errors import UserError

Config = Any  # a resolved ml_collections.ConfigDict (jaxsmooth.config)
LossFn = Callable[..., tuple[Any, dict]]


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen model the loss distils or smooths: the latest checkpoint of ``train.init_from``, or a part of the
    run's model (`from_model`).

    The trainer loads it (refusing a run without ``train.init_from`` unless
    `from_model` gives it), passes it to ``make_loss`` as ``(params,
    model_state)`` inside the compiled step, and checkpoints it with the train
    state.

    Attributes:
      every_epochs: ``(config) -> epochs``: after each that many epochs the
        trained model becomes the teacher (heat Alg. 1, one timestep); None:
        the teacher stays the loaded model for the whole run.
      from_model: ``(params, model_state) -> (params, model_state)``: the
        teacher taken from the variables of the model the run builds
        (`Objective.build_model`: a classifier read from a workdir its block
        names); None: the teacher is read from ``train.init_from``.
    """

    every_epochs: Callable[[Config], int] | None = None
    from_model: Callable[[Any, Any], tuple[Any, Any]] | None = None

    @property
    def from_init(self) -> bool:
        """Whether the teacher is read from ``train.init_from`` (which the run must then set)."""
        return self.from_model is None


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Evaluation sums an objective adds to the trainer's clean and noisy accuracy.

    Attributes:
      make: ``(config, apply) -> sums``, with
        ``sums(params, model_state, batch, key, sigma) -> {name: scalar sum over unmasked examples}``,
        traced inside the evaluation step (``batch`` has ``mask``, ``key`` is its own stream).
      summarize: ``(totals, count) -> {name: float}``: the test-split figures
        from the summed totals over `count` examples.
    """

    make: Callable[[Config, Callable], Callable]
    summarize: Callable[[Mapping[str, Any], int], dict[str, float]]


def model_variables(config: Config, params, model_state, input_shape):
    """The default `Objective.initial_variables`: the objective trains the model itself."""
    del config, input_shape
    return params, model_state


def constant_sigma(config: Config, params, model_state, teacher):
    """The default `Objective.smoothed`: the trained model, smoothed with the constant ``objective.sigma``."""
    del teacher
    return params, model_state, config.objective.sigma


def recorded_sigma(info: Mapping[str, Any], params, model_state, teacher):
    """The default `Objective.certified`: the saved model itself, with the sigma its model.json records."""
    del teacher
    if "sigma" not in info:
        raise UserError("model.json", "lacks the entry 'sigma' (the noise level the model certifies with)")
    return params, model_state, float(info["sigma"])


def _no_check(config: Config) -> None:
    del config


@dataclasses.dataclass(frozen=True)
class Objective:
    """One training objective, everything about it in one place.

    Attributes:
      name: ``objective.name`` of the config; also the name of its config
        block (``config.<name>``) when it has one.
      reference: the paper (and section) it follows.
      make_loss: ``(config, apply, teacher) -> loss`` (module docstring);
        raises `UserError` on a bad field of its block.
      defaults: ``() -> ConfigDict``: its block of fields with their defaults
        and a comment each (docs/config.md is generated from them); None: no fields.
      validate: ``(config) -> None``: raises `UserError` naming the first bad
        field of its block (`config.validate` and `make_loss` both call it).
      teacher: the frozen model it needs from ``train.init_from``, or None.
      initial_variables: ``(config, params, model_state, input_shape) ->
        (params, model_state)``, what the optimizer trains, given the model's
        variables (with a teacher: the teacher's). Default: the model's own.
      smoothed: ``(config, params, model_state, teacher) -> (params,
        model_state, sigma)``: the smoothed classifier a train state stands for
        (sigma a scalar or [H, W, C]). Default: the model with ``objective.sigma``.
      certified: ``(info, params, model_state, teacher) -> (params,
        model_state, sigma)``: the same on a saved checkpoint, on the host:
        what the loader (`jaxsmooth.loader.load_model`) returns for a workdir
        of this objective (info: its model.json; the checkpoint's host arrays;
        teacher None without one). Default: the saved model with the sigma
        model.json records.
      evaluation: extra test-split figures, or None.
      build_model: ``(config, dataset) -> models.Model``: the model of a run
        (its apply is what `smoothed` is evaluated with), when it is not the
        classifier of the config's ``model`` section; None: that classifier.
      metadata: ``(config, dataset) -> dict``: the model.json of its
        workdir; None: a classifier's (`checkpoint.model_metadata`).
      num_epochs: ``(config) -> epochs`` of a run when it is not ``train.num_epochs``.
      renamed: config fields of earlier versions -> this objective's field
        that replaced them; a config that sets one is refused, naming the new field.
    """

    name: str
    reference: str
    make_loss: Callable[[Config, Callable, Any], LossFn]
    defaults: Callable[[], ml_collections.ConfigDict] | None = None
    validate: Callable[[Config], None] = _no_check
    teacher: Teacher | None = None
    initial_variables: Callable = model_variables
    smoothed: Callable = constant_sigma
    certified: Callable = recorded_sigma
    evaluation: Evaluation | None = None
    build_model: Callable[[Config, Any], Any] | None = None
    metadata: Callable[[Config, Any], dict] | None = None
    num_epochs: Callable[[Config], int] | None = None
    renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------
# Field checks shared by the objectives' `validate` (each raises `UserError` naming the field)


def check_positive(value, field: str, what: str = "", *, allow_zero: bool = False) -> None:
    """`value` > 0 (>= 0 with `allow_zero`) and finite; `what` says what the field is in the error."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(field, f"must be {bound}{f' ({what})' if what else ''}, got {value!r}")


def check_choice(value, field: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UserError(field, f"unknown value {value!r}; allowed: {', '.join(allowed)}")


def require_teacher(config: Config, teacher):
    """The teacher pair, or a `UserError` saying the trainer gave none."""
    if teacher is None:
        raise UserError("objective.name", f"objective {config.objective.name!r} needs a frozen teacher model "
                        "(the one loaded from train.init_from), and none was given")
    return teacher
