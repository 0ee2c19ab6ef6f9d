"""Experiment configuration: defaults, loading, overrides and validation.

A config file is a Python module with ``get_config() -> ConfigDict`` that
starts from `default()` and changes what the experiment needs. Every field a
run can read is declared here, so a misspelt field is an error, not a silently
ignored setting. Each check raises `UserError` naming the dotted field.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
from typing import Any, Iterator, Sequence

import ml_collections

from jaxsmooth.errors import UserError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")

# Fields that only change how a run reports or saves, not what it computes:
# a resumed run may change them.
RESUME_MUTABLE = (
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.eval_every_epochs",
    "train.eval_batch_size",
    "certify.parallel",
    "data.workers",
)


def default() -> ml_collections.ConfigDict:
    """Every field, with the defaults an experiment config starts from."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # root of all randomness: init, shuffling, noise

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # digits | npz:PATH | idx:DIR | a tensorflow-datasets name
    c.data.data_dir = ""  # tensorflow-datasets data_dir ("" = tfds default)
    c.data.augment = "default"  # default (the dataset's) | none | cifar | imagenet
    c.data.image_size = 0  # model input side for resized datasets (0 = dataset's own)
    c.data.workers = 0  # grain worker processes making training batches (0: a thread pool); the same batches

    c.model = ml_collections.ConfigDict()
    c.model.name = "cnn"
    c.model.activation = "relu"
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.width = 0  # cnn only: channels of the first conv (0 = default)

    c.objective = ml_collections.ConfigDict()
    c.objective.name = "gaussian"
    c.objective.sigma = 0.25  # noise level of training and of the noisy evaluation
    # heat and bootcamp (defaults: heat's CIFAR-10 setting)
    c.objective.lam = 5.0  # heat: lambda, scale of the gradient penalty (heat eq. 4)
    c.objective.kappa = 10  # JL projections per example of the penalty (heat eq. 17-18)
    c.objective.delta = 0.1  # finite-difference step of the penalty (heat eq. 17)
    c.objective.distance = ""  # heat, bootcamp: l2 | kl | softmax_l2 to the teacher; "": heat l2, bootcamp softmax_l2
    c.objective.timesteps = 5  # heat: n_T, retraining timesteps; penalty weight lam sigma^2 / (2 n_T)
    c.objective.epochs_per_timestep = 1  # heat: epochs of each timestep
    # nal, wrm, smoothadv (defaults: nal's, nal §5 and Table 1)
    c.objective.num_noise = 4  # nal: r noise draws per example (nal eq. 6); smoothadv: m; sigma: n0; wrm: unused
    # sigma (non_uniform Alg. 1): objective.sigma is the initial constant sigma, train.init_from the frozen model
    c.objective.pgd_steps = 4  # nal, wrm: K ascent steps (nal Alg. 1); smoothadv: PGD steps; 0: none
    c.objective.gamma = 1.0  # nal, wrm: penalty gamma on the transport cost (nal eq. 6)
    c.objective.pgd_lr = 0.0  # nal, wrm: ascent step eta_1; 0: 0.5 / gamma (nal Table 1)
    c.objective.cost_with_noise = True  # nal: cost c(x + z, x_0) as the paper; false: c(x, x_0) (nal §5 ablation)
    c.objective.clip = False  # nal, wrm, smoothadv: keep the adversarial x in [0, 1] (false: X = R^d, the paper)
    c.objective.epsilon = 0.5  # smoothadv: ell_2 radius of the attack (Salman et al. 2019)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9  # sgd momentum; adam's b1
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4  # coupled L2, as torch.optim.SGD's weight_decay
    c.optimizer.schedule = "step"
    c.optimizer.decay_every_epochs = 30  # step schedule
    c.optimizer.decay_factor = 0.1  # step schedule
    c.optimizer.warmup_epochs = 0

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256  # global, over all devices and processes
    c.train.num_epochs = 90
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 500
    c.train.keep_checkpoints = 2
    c.train.eval_every_epochs = 1  # 0: evaluate only at the end
    c.train.eval_batch_size = 512
    # A training workdir whose latest checkpoint initialises the model ("" = none);
    # heat and bootcamp require it, and it is their first teacher; sigma: the frozen classifier.
    c.train.init_from = ""

    c.certify = ml_collections.ConfigDict()
    # How `jaxsmooth.certify` spreads work over the processes of a multi-host run:
    #   samples   every device shares the n samples of each input, counts psum-ed (few inputs, large n);
    #   examples  the examples split over processes, each certifying its share on its own devices into
    #             its own TSV shard OUT.shard<p>of<P>.tsv, merged by `analyze` (many inputs).
    c.certify.parallel = "samples"
    return c


# --------------------------------------------------------------------------
# Loading


def _leaves(c: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key in sorted(c.keys()):
        value = c[key]
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _unknown_field(path: str, known: Sequence[str]) -> UserError:
    close = difflib.get_close_matches(path, known, n=1)
    hint = f"did you mean {close[0]}?" if close else "see jaxsmooth/config.py for the fields"
    return UserError(path, f"unknown config field; {hint}")


def resolve(loaded: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Returns `default()` updated with `loaded`, refusing unknown fields."""
    base = default()
    known = dict(_leaves(base))
    for path, value in _leaves(loaded):
        if path not in known:
            raise _unknown_field(path, list(known))
        _set(base, path, value)
    base.lock()
    return base


def _set(c: ml_collections.ConfigDict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
        node = node[p]
    old = node[leaf]
    if isinstance(old, bool) and not isinstance(value, bool):
        raise UserError(path, f"expected true or false, got {value!r}")
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(path, f"expected a number, got {value!r}")
        if isinstance(old, int) and not float(value).is_integer():
            raise UserError(path, f"expected an integer, got {value!r}")
        value = type(old)(value)
    if isinstance(old, str) and not isinstance(value, str):
        raise UserError(path, f"expected a string, got {value!r}")
    node[leaf] = value


def load(path: str) -> ml_collections.ConfigDict:
    """Loads a config file (``get_config()``) and resolves it against the defaults."""
    if not os.path.isfile(path):
        raise UserError("config", f"no such config file {path!r}")
    spec = importlib.util.spec_from_file_location("_jaxsmooth_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError("config", f"{path} defines no get_config()")
    return resolve(module.get_config())


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies ``a.b=value`` overrides (values parsed as Python literals, else strings)."""
    known = [p for p, _ in _leaves(config)]
    with config.unlocked():
        for item in overrides:
            if "=" not in item:
                raise UserError("config", f"override {item!r} is not of the form field=value")
            path, text = item.split("=", 1)
            if path not in known:
                raise _unknown_field(path, known)
            old = get(config, path)
            value = text if isinstance(old, str) else _parse_value(text)
            _set(config, path, value)
    return config


def get(c: ml_collections.ConfigDict, path: str) -> Any:
    """The value of a dotted field, e.g. ``get(config, "objective.sigma")``."""
    node = c
    for p in path.split("."):
        node = node[p]
    return node


# --------------------------------------------------------------------------
# Validation


def _choice(c, path: str, allowed: Sequence[str]) -> None:
    value = get(c, path)
    if value not in allowed:
        raise UserError(path, f"unknown value {value!r}; allowed: {', '.join(allowed)}")


def _positive(c, path: str, *, allow_zero: bool = False) -> None:
    value = get(c, path)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(path, f"must be {bound}, got {value!r}")


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None, num_processes: int = 1) -> None:
    """Checks every field a training run reads; raises `UserError` on the first bad one.

    Model and dataset names are checked where they are resolved (`models`,
    `data`), since their lists live there.
    """
    from jaxsmooth import data, models, objectives  # local: they import jax; loading a config must not

    _choice(config, "model.name", models.NAMES)
    _choice(config, "model.activation", models.ACTIVATIONS)
    _choice(config, "model.dtype", models.DTYPES)
    _positive(config, "model.width", allow_zero=True)
    _choice(config, "objective.name", objectives.NAMES)
    _positive(config, "objective.sigma")
    _positive(config, "objective.lam", allow_zero=True)
    _positive(config, "objective.kappa")
    _positive(config, "objective.delta")
    _choice(config, "objective.distance", ("",) + objectives.DISTANCES)
    _positive(config, "objective.timesteps")
    _positive(config, "objective.epochs_per_timestep")
    _positive(config, "objective.num_noise")
    _positive(config, "objective.pgd_steps", allow_zero=True)
    _positive(config, "objective.gamma")
    _positive(config, "objective.pgd_lr", allow_zero=True)
    _positive(config, "objective.epsilon")
    if config.objective.name in objectives.DISTILLING and not config.train.init_from:
        raise UserError("train.init_from", f"objective {config.objective.name!r} starts from a pretrained model: "
                        "set train.init_from to the workdir of its training run")
    _choice(config, "optimizer.name", OPTIMIZERS)
    _choice(config, "optimizer.schedule", SCHEDULES)
    _positive(config, "optimizer.learning_rate")
    _positive(config, "optimizer.weight_decay", allow_zero=True)
    _positive(config, "optimizer.decay_every_epochs")
    _positive(config, "optimizer.warmup_epochs", allow_zero=True)
    if not 0.0 <= config.optimizer.momentum < 1.0:
        raise UserError("optimizer.momentum", f"must be in [0, 1), got {config.optimizer.momentum!r}")
    if not 0.0 < config.optimizer.decay_factor <= 1.0:
        raise UserError("optimizer.decay_factor", f"must be in (0, 1], got {config.optimizer.decay_factor!r}")
    _choice(config, "data.augment", ("default",) + tuple(data.AUGMENTATIONS))
    _positive(config, "data.image_size", allow_zero=True)
    _positive(config, "data.workers", allow_zero=True)
    for path in ("train.batch_size", "train.num_epochs", "train.log_every_steps",
                 "train.checkpoint_every_steps", "train.keep_checkpoints", "train.eval_batch_size"):
        _positive(config, path)
    _positive(config, "train.eval_every_epochs", allow_zero=True)
    if num_devices is not None:
        for path in ("train.batch_size", "train.eval_batch_size"):
            value = get(config, path)
            if value % num_devices:
                processes = num_processes if num_processes > 1 else 0
                where = (f"{num_devices} devices in {processes} processes: each process takes an equal share, "
                         f"split over its devices" if processes else f"{num_devices} devices")
                raise UserError(path, f"{value} is not divisible by the number of devices ({where})")


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    return resolve(ml_collections.ConfigDict(json.loads(text)))


def differing_fields(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> list[str]:
    """Dotted fields whose values differ between two resolved configs."""
    la, lb = dict(_leaves(a)), dict(_leaves(b))
    return [p for p in sorted(set(la) | set(lb)) if _norm(la.get(p)) != _norm(lb.get(p))]


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
