"""Checkpoints and workdir metadata.

A workdir holds::

    config.json     the resolved config of the run
    model.json      model name, input shape, classes, mean/std, sigma, objective
    metrics.jsonl   one JSON object per logged step or evaluation
    checkpoints/    orbax checkpoints, one folder per saved step

`Checkpointer` is the one wrapper around orbax's `CheckpointManager`; every
process calls it together in a multi-host run. `check_model_metadata` is how
certify/attack refuse a checkpoint that does not fit their config.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxsmooth.errors import UserError, quiet_absl

CONFIG_FILE = "config.json"
MODEL_FILE = "model.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
    """Saves and restores the train state of one workdir.

    Args:
      workdir: the run's folder; checkpoints go to ``workdir/checkpoints``.
      save_every_steps: steps between saves (`save` with ``force=True`` saves anyway).
      keep: how many checkpoints to keep.
    """

    def __init__(self, workdir: str, *, save_every_steps: int = 1, keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_every_steps, create=True)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except Exception as e:  # orbax reports unreadable folders with many types
            raise UserError("checkpoint", f"cannot open {self.directory}: {e}") from None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves `state` at `step` (asynchronously) if the interval says so or `force`."""
        return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, step: int, like: Any) -> Any:
        """Restores the state saved at `step` with the structure, shapes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:
            where = os.path.join(self.directory, str(step))
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError("checkpoint", f"cannot read {where}: {first[:300]}; "
                            "delete that folder to resume from an earlier checkpoint") from None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def read_model(step_dir: str, field: str) -> dict:
    """The raw saved train state of one checkpoint folder (``checkpoints/STEP``), without a target structure.

    Sequence indices come back as string keys; callers look leaves up by path.
    """
    path = os.path.abspath(os.path.join(step_dir, "default"))
    try:
        # Host arrays, no target sharding: every process of a multi-host run reads the file by itself
        # (a default restore would place arrays on a mesh it guesses and fail without addressable shards).
        reader = ocp.PyTreeCheckpointer()
        with quiet_absl():  # "Metadata file does not exist": StandardSave writes none, nothing is missing
            tree = reader.metadata(path).item_metadata
        tree = getattr(tree, "tree", tree)
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree,
                                is_leaf=lambda x: not isinstance(x, (dict, list, tuple)))
        return reader.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(field, f"cannot read {path}: {first[:300]}") from None


def write_json(path: str, obj: Any) -> None:
    """Writes JSON atomically: a reader never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str, field: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(field, f"{path} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(field, f"cannot read {path}: {e}") from None


def model_metadata(config, dataset) -> dict[str, Any]:
    """What a checkpoint is: enough to rebuild the model and refuse a mismatched use."""
    return {
        "model": config.model.name,
        "activation": config.model.activation,
        "width": config.model.width,
        "input_shape": list(dataset.input_shape),
        "num_classes": int(dataset.num_classes),
        "mean": [float(m) for m in dataset.mean],
        "std": [float(s) for s in dataset.std],
        "dataset": config.data.name,
        "sigma": float(config.objective.sigma),
        "objective": config.objective.name,
    }


def check_model_metadata(workdir: str, expected: Mapping[str, Any], field: str = "checkpoint",
                         fields: tuple[str, ...] = ("model", "activation", "width", "input_shape", "num_classes")) -> dict:
    """Reads ``model.json`` of `workdir` and refuses it, naming `field` and the entry, where `fields` differ."""
    found = read_json(os.path.join(workdir, MODEL_FILE), field)
    for name in fields:
        if name in expected and found.get(name) != expected[name]:
            raise UserError(field, f"{workdir} holds a model with {name}={found.get(name)!r}, not {expected[name]!r}")
    return found
