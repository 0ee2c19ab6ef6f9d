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

import contextlib
import json
import os
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxsmooth import jobs
from jaxsmooth.errors import UserError, quiet_absl

CONFIG_FILE = "config.json"
MODEL_FILE = "model.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
    """Saves and restores the train state of one workdir.

    A save writes into a temporary folder (``STEP.orbax-checkpoint-tmp``) that
    orbax renames to ``STEP`` once every file is written: a save cut by a kill
    or a full disk never looks like a checkpoint, and such leftovers are
    removed when the next run opens the folder. A save that fails for want of
    room raises `jobs.WriteFailed` (exit status 74) naming the last complete step.

    Args:
      workdir: the run's folder; checkpoints go to ``workdir/checkpoints``.
      save_every_steps: steps between saves (`save` with ``force=True`` saves anyway).
      keep: how many checkpoints to keep.
    """

    def __init__(self, workdir: str, *, save_every_steps: int = 1, keep: int = 2):
        self.workdir = workdir
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_every_steps, create=True, cleanup_tmp_directories=True)
        self._failed = False
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except Exception as e:  # orbax reports unreadable folders with many types
            self._raise_write_failed(e)
            raise UserError("checkpoint", f"cannot open {self.directory}: {e}") from None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves `state` at `step` (asynchronously) if the interval says so or `force`."""
        try:
            return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
        except Exception as e:  # an earlier asynchronous save may fail here
            self._raise_write_failed(e)
            raise

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

    def restore_latest(self, like: Any, on_unreadable: Callable[[int, str], None] | None = None) -> tuple[int, Any]:
        """(step, state) of the newest checkpoint that reads, or (0, `like`) when there is none.

        A newest checkpoint that does not read (a file cut by a crashed host)
        while an older one does is moved to ``WORKDIR/unreadable_checkpoints/``
        and `on_unreadable(step, folder)` is told; the run redoes its steps. When
        no checkpoint reads, the newest one's `UserError` is raised and nothing moves.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        first_error = None
        for i, step in enumerate(steps):
            try:
                state = self.restore(step, like)
            except UserError as e:
                first_error = first_error or e
                continue
            for bad in steps[:i]:
                folder = self._move_aside(bad)
                if on_unreadable is not None:
                    on_unreadable(bad, folder)
            if i:
                self._manager.reload()
            return step, state
        if first_error is not None:
            raise first_error
        return 0, like

    def _move_aside(self, step: int) -> str:
        folder = os.path.join(self.workdir, "unreadable_checkpoints", f"{step}-{int(time.time())}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(folder), exist_ok=True)
            os.replace(os.path.join(self.directory, str(step)), folder)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jaxsmooth: checkpoint {step} moved aside")
        return folder

    def wait(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._raise_write_failed(e)
            raise

    def close(self) -> None:
        """Waits for the save in flight and closes; after a failed save, quietly (its error is already raised)."""
        try:
            self.wait()
        except Exception:
            if not self._failed:
                raise
        finally:
            with contextlib.suppress(Exception):
                self._manager.close()

    def _raise_write_failed(self, e: BaseException) -> None:
        reason = jobs.write_error(e)
        if reason is None:
            return
        self._failed = True
        latest = self._manager.latest_step() if hasattr(self, "_manager") else None
        raise jobs.WriteFailed("checkpoint", f"cannot write to {self.directory}: {reason}; the last complete "
                               f"checkpoint is step {latest or 0}: free space and rerun the same command to resume "
                               "from it") from None


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


def write_json(path: str, obj: Any, field: str = "workdir") -> None:
    """Writes JSON atomically: a reader never sees a half-written file (`jobs.write_atomic`)."""
    jobs.write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", field)


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
