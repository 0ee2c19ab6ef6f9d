"""Checkpoints and workdir metadata.

A workdir holds::

    config.json     the resolved config of the run
    model.json      model name, input shape, classes, mean/std, sigma, objective
    metrics.jsonl   one JSON object per logged step or evaluation
    checkpoints/    orbax checkpoints, one folder per saved step

`Checkpointer` is the one wrapper around orbax's `CheckpointManager`; every
process calls it together in a multi-host run. The one reader of a workdir
for everything else (certify, attack, the Python API, `train.init_from`):
`checkpoint_steps` / `checkpoint_folder` (which saved steps there are),
`read_model` and `read_variables` (a model's parameters as host arrays, each
process by itself), `write_workdir` (a workdir no training run made), and
`check_model_metadata` (how ``train.init_from`` refuses a model that does not
fit the run). `jaxsmooth.loader.load_model` builds on them: the one loader
of a workdir's model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
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
TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a folder orbax is still writing


class Checkpointer:
    """Saves and restores the train state of one workdir.

    A save writes into a temporary folder (``STEP.orbax-checkpoint-tmp``) that
    orbax renames to ``STEP`` once every file is written: a save cut by a kill
    or a full disk never looks like a checkpoint, and such leftovers are
    removed when the next run opens the folder (which assumes one writer per
    workdir: ``python -m jaxsmooth.train`` holds its lock, `jobs.lock_workdir`). A save that fails for want of
    room raises `jobs.WriteFailed` (exit status 74) naming the last complete step.

    Args:
      workdir: the run's folder; checkpoints go to ``workdir/checkpoints``.
      save_every_steps: steps between saves (`save` with ``force=True`` saves anyway).
      keep: how many checkpoints to keep.
    """

    def __init__(self, workdir: str, *, save_every_steps: int = 1, keep: int = 2):
        self.workdir = workdir
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every_steps, create=True)
        self._failed = False
        if jax.process_index() == 0 and os.path.isdir(self.directory):  # saves cut short: never checkpoints
            for name in os.listdir(self.directory):
                if TMP_MARK in name:
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
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


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of `workdir`'s finished checkpoints, ascending ([] when there are none).

    orbax writes a step into a temporary folder and renames it to the step
    number when complete, so a save cut short by a kill is not listed.
    """
    folder = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit() and os.path.isdir(os.path.join(folder, d)))


def checkpoint_folder(workdir: str, field: str, step: int | None = None) -> tuple[str, int]:
    """(folder, step) of `workdir`'s checkpoint at `step` (default: the latest); a `UserError` naming `field` if
    absent."""
    if not workdir:
        raise UserError(field, "is empty; give the --workdir of a training run")
    if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
        raise UserError(field, f"{workdir} holds no checkpoints (expected {CHECKPOINT_DIR}/)")
    steps = checkpoint_steps(workdir)
    if not steps:
        raise UserError(field, f"{workdir} holds no checkpoints yet")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UserError("step", f"{workdir} holds no checkpoint of step {step} (it has {', '.join(map(str, steps))})")
    return os.path.join(workdir, CHECKPOINT_DIR, str(step)), step


def lookup(like: Any, tree: Any) -> Any:
    """`like`'s structure with each leaf read from the raw saved `tree` (`read_model`) at the same path, as a
    host array. Raises KeyError or TypeError for a path `tree` lacks."""

    def get(path, _):
        node = tree
        for entry in path:
            key = getattr(entry, "key", getattr(entry, "idx", None))
            node = node[key] if key in node else node[str(key)]
        return np.asarray(node)

    return jax.tree_util.tree_map_with_path(get, like)


def read_variables(workdir: str, like: tuple[Any, Any], field: str, step: int | None = None) -> tuple[Any, Any, int]:
    """(params, model_state, step): host arrays of a checkpoint of `workdir`, in the structure of `like`.

    Only the model is read (``params`` and ``model_state`` of the saved
    state), so any objective's or optimizer's checkpoint will do. `like` is
    ``(params, model_state)`` of the model (arrays or `jax.ShapeDtypeStruct`).
    """
    folder, step = checkpoint_folder(workdir, field, step)
    raw = read_model(folder, field)
    try:
        return lookup(like[0], raw["params"]), lookup(like[1], raw["model_state"]), step
    except (KeyError, TypeError) as e:
        raise UserError(field, f"{workdir}'s checkpoint lacks model variable {e}") from None


def check_new_workdir(workdir: str, field: str = "workdir") -> str:
    """The absolute path of `workdir`, which must not exist or be an empty folder (else a `UserError` on `field`)."""
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise UserError(field, f"{workdir} exists and is not an empty folder; give a new one")
    return workdir


def write_workdir(workdir: str, metadata: dict, params: Any, model_state: Any, config=None, field: str = "workdir",
                  step: int = 0) -> None:
    """A workdir of a model that no training run made (a converted checkpoint, a wrapper): model.json
    (`metadata`), config.json (`config`, when given) and the variables as the orbax checkpoint of `step`.

    Everything is written into a hidden sibling folder that is then renamed
    to `workdir`, which must not exist or be empty: a kill leaves either no
    workdir or a whole one. The one loader (`jaxsmooth.loader.load_model`)
    reads it like a training run's.
    """
    workdir = check_new_workdir(workdir, field)
    parent = os.path.dirname(workdir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(field, f"cannot create {parent}: {e.strerror or e}") from None
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(workdir)}.write-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # as os.makedirs would have made it (mkdtemp's is private)
    try:
        saver = Checkpointer(tmp, keep=1)
        # 0-d arrays, not NumPy or Python scalars (the step, a scalar variable): orbax 0.11.22 refuses scalars
        state = {"params": params, "model_state": model_state}
        state = jax.tree.map(lambda v: v if isinstance(v, (np.ndarray, jax.Array)) else np.asarray(v), state)
        saver.save(step, {"step": np.asarray(step, np.int32), **state}, force=True)
        saver.close()
        if config is not None:
            from jaxsmooth import config as config_lib

            with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
                f.write(config_lib.to_json(config) + "\n")
        write_json(os.path.join(tmp, MODEL_FILE), metadata)
        if os.path.isdir(workdir):
            os.rmdir(workdir)  # empty, checked above
        os.rename(tmp, workdir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


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


MODEL_FIELDS = ("model", "activation", "width", "input_shape", "num_classes")  # what makes two models the same


def check_model_metadata(workdir: str, expected: Mapping[str, Any], field: str = "checkpoint",
                         fields: tuple[str, ...] = MODEL_FIELDS) -> dict:
    """Reads ``model.json`` of `workdir` and refuses it, naming `field` and the entry, where `fields` differ."""
    found = read_json(os.path.join(workdir, MODEL_FILE), field)
    refuse_other_model(found, workdir, expected, field, fields)
    return found


def refuse_other_model(found: Mapping[str, Any], workdir: str, expected: Mapping[str, Any], field: str = "checkpoint",
                       fields: tuple[str, ...] = MODEL_FIELDS) -> None:
    """A `UserError` naming `field` and the first entry of `fields` where model.json `found` differs from `expected`."""
    for name in fields:
        if name in expected and found.get(name) != expected[name]:
            raise UserError(field, f"{workdir} holds a model with {name}={found.get(name)!r}, not {expected[name]!r}")
