"""Experiment configuration: defaults, loading, overrides, validation, and the generated field reference.

A config file is a Python module with ``get_config() -> ConfigDict`` that
starts from `default()` and changes what the experiment needs. Every field a
run can read is declared in `default()` (the general sections) or in an
objective's ``defaults()`` (its block, ``config.<objective name>``), each
with a comment; docs/config.md is generated from them (`markdown`, or
``python -m jaxsmooth.config --markdown docs/config.md``).

ml_collections does the rest: a loaded config is a locked ``ConfigDict``
(a misspelt field is an error, not a silently ignored setting), and
``--config.FIELD=VALUE`` overrides are parsed by its ``config_flags`` with the
field's type. Each error becomes one `UserError` naming the dotted field.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import io
import inspect
import json
import math
import os
import re
import sys
import tokenize
from typing import Any, Callable, Iterator, Sequence

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

# The experiment configs that ship with the package; the repository's configs/ is a link to this folder.
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

# Old fields whose empty value meant "the objective's own default" (heat: l2, bootcamp: softmax_l2).
_EMPTY_MEANT_DEFAULT = ("objective.distance",)


def _general() -> ml_collections.ConfigDict:
    """The sections every run reads: seed, data, model, objective, optimizer, train, certify."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # root of all randomness: init, shuffling, noise

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # digits | npz:PATH | idx:DIR | a tensorflow-datasets name
    c.data.data_dir = ""  # tensorflow-datasets data_dir ("" = tfds default)
    c.data.augment = "default"  # default (the dataset's) | none | cifar | imagenet
    c.data.image_size = 0  # model input side for resized datasets (0 = dataset's own)
    c.data.workers = 0  # grain worker processes making training batches (0: a thread pool); the same batches

    c.model = ml_collections.ConfigDict()
    c.model.name = "cnn"  # cnn | resnet20 | resnet56 | resnet110 | resnet18 | resnet34 | resnet50 | vgg16
    c.model.activation = "relu"  # relu | elu
    c.model.dtype = "float32"  # compute dtype (float32 | bfloat16); parameters stay float32
    c.model.width = 0  # cnn only: channels of the first conv (0 = default)

    c.objective = ml_collections.ConfigDict()
    c.objective.name = "gaussian"  # the training objective; its own fields are in the block of that name
    # noise level of training and of the noisy evaluation; the sigma objective: its initial constant sigma
    c.objective.sigma = 0.25

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # sgd | adam
    c.optimizer.learning_rate = 0.1  # peak learning rate, after the warmup
    c.optimizer.momentum = 0.9  # sgd momentum; adam's b1
    c.optimizer.nesterov = False  # sgd: Nesterov momentum
    c.optimizer.weight_decay = 1e-4  # coupled L2, as torch.optim.SGD's weight_decay
    c.optimizer.schedule = "step"  # constant | step | cosine
    c.optimizer.decay_every_epochs = 30  # step schedule: epochs between decays
    c.optimizer.decay_factor = 0.1  # step schedule: the learning rate's factor at each decay
    c.optimizer.warmup_epochs = 0  # linear warmup from 0, before the schedule

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256  # global, over all devices and processes
    c.train.num_epochs = 90  # epochs of the run (heat and bootcamp count their own)
    c.train.log_every_steps = 50  # steps between metrics.jsonl rows (also at each epoch's end)
    c.train.checkpoint_every_steps = 500  # steps between checkpoints (also at the end)
    c.train.keep_checkpoints = 2  # how many of the latest checkpoints stay on disk
    c.train.eval_every_epochs = 1  # 0: evaluate only at the end
    c.train.eval_batch_size = 512  # global batch of the test-split evaluation
    # A training workdir whose latest checkpoint gives the teacher of an objective that has one
    # (heat, bootcamp: also the model trained from; sigma: the frozen classifier); "" = none.
    c.train.init_from = ""

    c.certify = ml_collections.ConfigDict()
    # How `jaxsmooth.certify` spreads work over the processes of a multi-host run:
    #   samples   every device shares the n samples of each input, counts psum-ed (few inputs, large n);
    #   examples  the examples split over processes, each certifying its share on its own devices into
    #             its own TSV shard OUT.shard<p>of<P>.tsv, merged by `analyze` (many inputs).
    c.certify.parallel = "samples"
    return c


def _registry():
    from jaxsmooth import objectives  # local: objectives import jax, which the config module itself does not need

    return objectives.REGISTRY


def default() -> ml_collections.ConfigDict:
    """Every field, with the defaults an experiment config starts from: the general sections and each
    registered objective's block (``config.heat``, ``config.nal``, ...)."""
    c = _general()
    for name, objective in _registry().items():
        if objective.defaults is not None:
            c[name] = objective.defaults()
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


def _unknown_field(path: str, known: Sequence[str], objective_name: str) -> UserError:
    """The error for a field `default()` does not declare: its new name if it was renamed, else a suggestion."""
    renamed = {name: o.renamed[path] for name, o in _registry().items() if path in o.renamed}
    if objective_name in renamed:
        return UserError(path, f"renamed: objective {objective_name} reads {renamed[objective_name]}; "
                               f"set that instead")
    if renamed:
        where = ", ".join(f"{new} ({name})" for name, new in renamed.items())
        return UserError(path, f"no longer a field; each objective has its own: {where}")
    close = difflib.get_close_matches(path, known, n=1)
    hint = f"did you mean {close[0]}?" if close else "see docs/config.md for the fields"
    return UserError(path, f"unknown config field; {hint}")


def _set(c: ml_collections.ConfigDict, path: str, value: Any) -> None:
    """Sets a declared field; ml_collections refuses a value of another type (an int widens to a float)."""
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
        node = node[p]
    old = node[leaf]
    if isinstance(value, bool) and not isinstance(old, bool):  # a bool is an int to Python, not to a config
        raise UserError(path, f"expected {_type_words(old)}, got {value!r}")
    try:
        node[leaf] = value
    except TypeError:
        raise UserError(path, f"expected {_type_words(old)}, got {value!r}") from None


def _type_words(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    return {int: "an integer", float: "a number", str: "a string"}.get(type(value), type(value).__name__)


def resolve(loaded: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Returns `default()` updated with `loaded`, locked; refuses unknown fields, naming renamed ones' new names."""
    base = default()
    known = dict(_leaves(base))
    name = loaded.get("objective", {}).get("name", base.objective.name)
    for path, value in _leaves(loaded):
        if path not in known:
            raise _unknown_field(path, list(known), name)
        _set(base, path, value)
    base.lock()
    return base


def names() -> list[str]:
    """The names of the configs that ship with the package (``jaxsmooth/configs/NAME.py``), sorted."""
    return sorted(f[:-3] for f in os.listdir(CONFIGS) if f.endswith(".py") and not f.startswith("_"))


def packaged(name: str) -> str:
    """The file of the packaged config `name` (e.g. ``quickstart``)."""
    if name not in names():
        raise UserError("config", f"no config named {name!r}; give a file or one of: {', '.join(names())}")
    return os.path.join(CONFIGS, f"{name}.py")


def find(name_or_path: str) -> str:
    """The config file of ``--config``: a bare name (``quickstart``: no folder, no extension) is a packaged
    config, whatever the current folder holds; anything else is a file's path."""
    stem, ext = os.path.splitext(os.path.basename(name_or_path))
    if stem == name_or_path and not ext:
        return packaged(name_or_path)
    if not os.path.isfile(name_or_path):
        hint = f" (the packaged one is --config {stem})" if ext == ".py" and stem in names() else ""
        raise UserError("config", f"no such config file {name_or_path!r}{hint}")
    return name_or_path


def load(name_or_path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config (`find`: a file or a packaged name) with its ``get_config()``, resolves it against the
    defaults and applies `overrides`."""
    path = find(name_or_path)
    spec = importlib.util.spec_from_file_location("_jaxsmooth_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise UserError("config", f"{path} defines no get_config()")
        loaded = module.get_config()
    except (AttributeError, KeyError, TypeError, ValueError, SyntaxError, ImportError) as e:
        if isinstance(e, UserError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError("config", f"{path}: {type(e).__name__}: {first}") from None
    if not isinstance(loaded, ml_collections.ConfigDict):
        raise UserError("config", f"{path}: get_config() returned {type(loaded).__name__}, not a ConfigDict")
    return apply_overrides(resolve(loaded), overrides)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies ``a.b=value`` overrides in place, each parsed by ml_collections' config_flags as its field's type."""
    if not overrides:
        return config
    from absl import flags
    from ml_collections import config_flags

    known = [p for p, _ in _leaves(config)]
    name = config.objective.name
    argv, texts = ["jaxsmooth"], {}
    for item in overrides:
        if "=" not in item:
            raise UserError("config", f"override {item!r} is not of the form field=value")
        path, text = item.split("=", 1)
        if path == "objective.name":
            name = text
        argv.append(f"--config.{path}={text}")
        texts[path] = text
    for path in texts:
        if path not in known:
            raise _unknown_field(path, known, name)
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, sys_argv=argv)
    try:
        flag_values(argv)
    except flags.Error as e:
        match = re.match(r"flag --config\.([\w.]+)=", str(e))
        path = match.group(1) if match and match.group(1) in texts else "config"
        if path == "config":
            raise UserError("config", str(e).splitlines()[0]) from None
        raise UserError(path, f"expected {_type_words(get(config, path))}, got {texts[path]!r}") from None
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

    The objective's block is checked by the objective (`Objective.validate`);
    model and dataset names where they are resolved (`models`, `data`), since
    their lists live there.
    """
    from jaxsmooth import data, models, objectives  # local: they import jax; loading a config must not

    _choice(config, "model.name", models.NAMES)
    _choice(config, "model.activation", models.ACTIVATIONS)
    _choice(config, "model.dtype", models.DTYPES)
    _positive(config, "model.width", allow_zero=True)
    objective = objectives.get(config.objective.name)
    _positive(config, "objective.sigma")
    objective.validate(config)
    if objective.teacher is not None and objective.teacher.from_init and not config.train.init_from:
        raise UserError("train.init_from", f"objective {objective.name!r} starts from a pretrained model: "
                        "set train.init_from to the workdir of its training run")
    _validate_optimizer(config)
    _choice(config, "data.augment", ("default",) + tuple(data.AUGMENTATIONS))
    _positive(config, "data.image_size", allow_zero=True)
    _positive(config, "data.workers", allow_zero=True)
    for path in ("train.batch_size", "train.num_epochs", "train.log_every_steps",
                 "train.checkpoint_every_steps", "train.keep_checkpoints", "train.eval_batch_size"):
        _positive(config, path)
    _positive(config, "train.eval_every_epochs", allow_zero=True)
    if num_devices is not None:
        _check_divisible(config, num_devices, num_processes)


def _validate_optimizer(config) -> None:
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


def _check_divisible(config, num_devices: int, num_processes: int) -> None:
    for path in ("train.batch_size", "train.eval_batch_size"):
        value = get(config, path)
        if value % num_devices:
            processes = num_processes if num_processes > 1 else 0
            where = (f"{num_devices} devices in {processes} processes: each process takes an equal share, "
                     f"split over its devices" if processes else f"{num_devices} devices")
            raise UserError(path, f"{value} is not divisible by the number of devices ({where})")


# --------------------------------------------------------------------------
# config.json of a workdir


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str, field: str = "config") -> ml_collections.ConfigDict:
    """A workdir's config.json, resolved; also one written before objectives had blocks of their own.

    Such a file holds every objective's field under ``objective``
    (``objective.num_noise``, ...): the ones the run's objective read move to
    the field that replaced them (`Objective.renamed`), the others are dropped
    (they did not act on that run).
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(field, f"is not JSON: {e}") from None
    return resolve(ml_collections.ConfigDict(_moved_to_blocks(raw)))


def _moved_to_blocks(raw: dict) -> dict:
    objective = raw.get("objective")
    if not isinstance(objective, dict):
        return raw
    registry = _registry()
    own = registry[objective["name"]].renamed if objective.get("name") in registry else {}
    every_old = {old for o in registry.values() for old in o.renamed}
    for key in [k for k in objective if f"objective.{k}" in every_old]:
        old, value = f"objective.{key}", objective.pop(key)
        if old in own and not (old in _EMPTY_MEANT_DEFAULT and value == ""):
            *parents, leaf = own[old].split(".")
            node = raw
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return raw


def differing_fields(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> list[str]:
    """Dotted fields whose values differ between two resolved configs."""
    la, lb = dict(_leaves(a)), dict(_leaves(b))
    return [p for p in sorted(set(la) | set(lb)) if _norm(la.get(p)) != _norm(lb.get(p))]


def is_read(config: ml_collections.ConfigDict, path: str) -> bool:
    """Whether a run of `config` reads `path`: every field but those of the other objectives' blocks."""
    block = path.split(".", 1)[0]
    return block == config.objective.name or block not in _registry()


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# --------------------------------------------------------------------------
# The field reference (docs/config.md)


def _comments(fn: Callable) -> dict[str, str]:
    """``{field path: comment}`` of the ``c.PATH = value`` lines of `fn`'s source: the comment lines just
    above and the comment at the end of the line."""
    source = inspect.getsource(fn)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = " ".join(token.string.lstrip("#").split())
    found, above = {}, []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("#", 1)[0].strip()
        match = re.match(r"c\.([\w.]+)\s*=(?!=)", code)
        if not code and number in comments:
            above.append(comments[number])
        elif match:
            if "ConfigDict()" not in code:  # a section itself has no row
                found[match.group(1)] = " ".join(above + ([comments[number]] if number in comments else []))
            above = []
        else:
            above = []
    return found


def describe() -> list[dict[str, Any]]:
    """One row per field: ``{"field", "default", "type", "meaning", "block"}`` (block: an objective's name, or "")."""
    blocks = [("", _general)] + [(name, o.defaults) for name, o in _registry().items() if o.defaults is not None]
    rows = []
    for name, make in blocks:
        notes, values = _comments(make), dict(_leaves(make()))
        for path in sorted(values, key=lambda p: list(notes).index(p) if p in notes else len(notes)):
            value = values[path]  # in the order the source declares them
            rows.append({"field": f"{name}.{path}" if name else path, "default": value,
                         "type": type(value).__name__, "meaning": notes.get(path, ""), "block": name})
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/config.md: every field with its default, type and comment, the objectives' blocks, and renamed fields."""
    rows = describe()
    lines = ["# Config fields", "",
             "<!-- Generated by `python -m jaxsmooth.config --markdown docs/config.md` from the comments of "
             "jaxsmooth/config.py and of each objective's `defaults()`; edit those, not this page. -->", "",
             "A config file's `get_config()` starts from `jaxsmooth.config.default()` and sets what its experiment "
             "needs; `--config.FIELD=VALUE` overrides any field on the command line, parsed as the field's type. "
             "A field that is not listed here is an error.", "",
             "## General", "", "| field | default | type | meaning |", "|---|---|---|---|"]
    lines += [f"| `{r['field']}` | `{json.dumps(r['default'])}` | {r['type']} | {_cell(r['meaning'])} |"
              for r in rows if not r["block"]]
    lines += ["", "## Objectives", "",
              "`objective.name` picks the objective; each objective reads `objective.sigma` and the fields of its "
              "own block, named after it. An objective without fields has no block.", ""]
    for name, objective in _registry().items():
        lines += [f"### {name}", "", f"{objective.reference}.", ""]
        block = [r for r in rows if r["block"] == name]
        if block:
            lines += ["| field | default | type | meaning |", "|---|---|---|---|"]
            lines += [f"| `{r['field']}` | `{json.dumps(r['default'])}` | {r['type']} | {_cell(r['meaning'])} |"
                      for r in block]
            lines.append("")
    renamed: dict[str, list[str]] = {}
    for name, objective in _registry().items():
        for old, new in objective.renamed.items():
            renamed.setdefault(old, []).append(f"`{new}` ({name})")
    lines += ["## Renamed fields", "",
              "Fields of earlier versions, each now in the block of every objective that reads it; a config that "
              "sets one is refused with its new name, and a workdir's config.json that holds them still resumes.",
              "", "| earlier field | now |", "|---|---|"]
    lines += [f"| `{old}` | {', '.join(new)} |" for old, new in sorted(renamed.items())]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxsmooth.config",
                                description="Writes the config field reference (docs/config.md).")
    p.add_argument("--markdown", required=True, metavar="FILE", help="where to write it, e.g. docs/config.md")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    with open(args.markdown, "w") as f:
        f.write(markdown())
    return 0


if __name__ == "__main__":
    from jaxsmooth import cli

    sys.exit(cli.main_wrapper(main)())
