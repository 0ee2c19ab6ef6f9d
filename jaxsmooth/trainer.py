"""The one training loop, for every objective.

Reads top to bottom: `create_optimizer`, `initial_state`, `make_train_step`,
`make_eval_step`, `evaluate`, `train_and_evaluate`. Steps are pure functions
of (state, batch, key), jitted once with the state replicated and the batch
sharded over the mesh's ``data`` axis. The loop syncs with the device only
when it logs, checkpoints or evaluates. Everything particular to an
objective comes from its record (`objectives.base.Objective`): the loop
names none.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsmooth import checkpoint, compilation, config as config_lib, data, jobs, models, noise, objectives, parallel
from jaxsmooth.data import grain_pipeline
from jaxsmooth.errors import UserError

Callback = Callable[[dict], None]


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the message names the first such step."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimizer steps taken
    params: Any
    model_state: Any  # BatchNorm statistics
    opt_state: Any


@flax.struct.dataclass
class DistillState(TrainState):
    """The train state of an objective with a teacher (`objectives.Teacher`): plus the frozen teacher.

    For an objective that trains variables of its own (`Objective.initial_variables`),
    `params` is that pytree and the teacher the frozen classifier.
    """

    teacher: Any = None  # (params, model_state) of the model


def num_epochs(config) -> int:
    """Epochs of a run: ``train.num_epochs``, or the objective's own count (`Objective.num_epochs`)."""
    objective = objectives.get(config.objective.name)
    return int(objective.num_epochs(config)) if objective.num_epochs else config.train.num_epochs


# --------------------------------------------------------------------------
# Optimizer


def learning_rate_schedule(opt, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """``constant``, ``step`` (x decay_factor every decay_every_epochs) or ``cosine``, after a linear warmup."""
    lr = opt.learning_rate
    warmup = int(opt.warmup_epochs * steps_per_epoch)
    if opt.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif opt.schedule == "step":
        every = int(opt.decay_every_epochs * steps_per_epoch)
        main = optax.piecewise_constant_schedule(
            lr, {b: opt.decay_factor for b in range(every, max(total_steps, every) + 1, every)})
    else:
        main = optax.cosine_decay_schedule(lr, decay_steps=max(total_steps - warmup, 1))
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def create_optimizer(config, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD with momentum or Adam, with coupled weight decay as in ``torch.optim``."""
    opt = config.optimizer
    schedule = learning_rate_schedule(opt, steps_per_epoch, num_epochs(config) * steps_per_epoch)
    if opt.name == "sgd":
        base = optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov)
    else:
        base = optax.adam(schedule, b1=opt.momentum)
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay), base) if opt.weight_decay else base
    return tx, schedule


# --------------------------------------------------------------------------
# Steps


def create_train_state(model: models.Model, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=model.params,
                      model_state=model.model_state, opt_state=tx.init(model.params))


def initial_state(objective: objectives.Objective, config, params, model_state, input_shape,
                  tx: optax.GradientTransformation, teacher=None) -> TrainState:
    """Step 0 of `objective`: the variables it trains, made from the model's, and their optimizer state.

    Args:
      params, model_state: the model's variables (with a teacher: the teacher's).
      input_shape: (H, W, C) of one example.
      teacher: ``(params, model_state)`` of the frozen teacher, for an
        objective with a teacher policy; the state is then a `DistillState`.
    """
    params, model_state = objective.initial_variables(config, params, model_state, tuple(input_shape))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                       opt_state=tx.init(params))
    if objective.teacher is None:
        return state
    return DistillState(step=state.step, params=state.params, model_state=state.model_state,
                        opt_state=state.opt_state, teacher=teacher)


def objective_loss(objective: objectives.Objective, config, apply: Callable) -> Callable:
    """`objective`'s loss, or for an objective with a teacher ``teacher -> loss`` (`make_train_step`'s form)."""
    if objective.teacher is not None:
        return lambda teacher: objective.make_loss(config, apply, teacher)
    return objective.make_loss(config, apply, None)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, *, with_teacher: bool = False) -> Callable:
    """``train_step(state, batch, root_key) -> (state, metrics)``, one optimizer step.

    The step key is ``fold_in(root_key, state.step)``; the objective folds in
    each example's global index. With `with_teacher`, `loss_fn` builds the
    loss from the state's frozen teacher, ``loss_fn(state.teacher) -> loss``,
    inside the trace: the teacher is an argument of the compiled step, so a
    new teacher (`Teacher.every_epochs`) needs no recompilation.
    """

    def train_step(state: TrainState, batch: dict, root_key: jax.Array):
        key = noise.step_key(root_key, state.step)
        loss = loss_fn(state.teacher) if with_teacher else loss_fn
        grad_fn = jax.value_and_grad(loss, has_aux=True)
        (loss, aux), grads = grad_fn(state.params, state.model_state, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(aux["metrics"], loss=loss)
        new_state = state.replace(step=state.step + 1, params=params,
                                  model_state=aux["model_state"], opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(apply: Callable, extra: Callable | None = None) -> Callable:
    """``eval_step(params, model_state, batch, key, sigma) -> counts``: clean and noisy correct counts.

    With `extra` (an objective's `Evaluation.make`), also its sums, from a key
    of their own.

    Args:
      batch: {"image": [B, H, W, C], "label": [B], "index": [B], "mask": [B] bool}.
      key: the evaluation stream key; example b draws ``fold_in(key, index[b])``.
      sigma: scalar, or per-pixel [H, W, C] (a learned one).
    Returns:
      {"count", "correct", "noisy_correct"}: int32 sums over unmasked examples.
    """

    def eval_step(params, model_state, batch, key, sigma):
        x, y, mask = batch["image"], batch["label"], batch["mask"]
        logits, _ = apply(params, model_state, x, train=False)
        eta = noise.isotropic(key, batch["index"], x.shape[1:], sigma, x.dtype)
        noisy_logits, _ = apply(params, model_state, x + eta, train=False)
        hit = lambda z: jnp.sum((jnp.argmax(z, -1) == y) & mask, dtype=jnp.int32)
        counts = {"count": jnp.sum(mask, dtype=jnp.int32), "correct": hit(logits), "noisy_correct": hit(noisy_logits)}
        if extra is not None:
            counts.update(extra(params, model_state, batch, jax.random.fold_in(key, 1), sigma))
        return counts

    return eval_step


# --------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class TrainingRun:
    """Everything a training run builds before its first step."""

    config: Any
    objective: objectives.Objective
    mesh: jax.sharding.Mesh
    dataset: data.Dataset
    model: models.Model
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    steps_per_epoch: int
    total_steps: int
    root_key: jax.Array


def build_run(config, mesh: jax.sharding.Mesh | None = None) -> TrainingRun:
    """Validates the config and builds data, model and optimizer (no compilation yet)."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    config_lib.validate(config, num_devices=mesh.size, num_processes=jax.process_count())
    dataset = data.load(config.data.name, data_dir=config.data.data_dir, image_size=config.data.image_size)
    objective = objectives.get(config.objective.name)
    if objective.build_model is not None:
        model = objective.build_model(config, dataset)
    else:
        model = _build_model(config, dataset, dataset.mean, dataset.std)
    steps_per_epoch = data.steps_per_epoch(len(dataset.train), config.train.batch_size)
    tx, schedule = create_optimizer(config, steps_per_epoch)
    return TrainingRun(config=config, objective=objective, mesh=mesh, dataset=dataset,
               model=model, tx=tx, schedule=schedule, steps_per_epoch=steps_per_epoch,
               total_steps=num_epochs(config) * steps_per_epoch, root_key=noise.root_key(config.seed))


def _build_model(config, dataset: data.Dataset, mean, std) -> models.Model:
    module = models.create(
        config.model.name, num_classes=dataset.num_classes, input_shape=tuple(dataset.input_shape),
        mean=tuple(mean), std=tuple(std), activation=config.model.activation,
        dtype=config.model.dtype, width=config.model.width, seed=noise.init_seed(config.seed))
    return models.split(module)


def evaluate(run: TrainingRun, eval_step: Callable, params, model_state, sigma=None) -> dict[str, float]:
    """Clean accuracy and accuracy under N(0, diag(sigma^2)) noise on the test split (default: objective.sigma)."""
    sigma = run.config.objective.sigma if sigma is None else sigma
    totals = None
    key = noise.eval_key(run.root_key)
    for local in data.eval_batches(run.dataset.test, global_batch_size=run.config.train.eval_batch_size,
                                   process_index=jax.process_index(), process_count=jax.process_count()):
        counts = eval_step(params, model_state, parallel.shard_batch(run.mesh, local), key, sigma)
        totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    result = {"test_accuracy": int(totals["correct"]) / count,
              "test_noisy_accuracy": int(totals["noisy_correct"]) / count,
              "test_examples": count}
    if run.objective.evaluation is not None:
        result.update(run.objective.evaluation.summarize(totals, count))
    return result


def _prepare_workdir(workdir: str, run: TrainingRun) -> None:
    """Writes config.json and model.json, or refuses a workdir made by a different config."""
    config_path = os.path.join(workdir, checkpoint.CONFIG_FILE)
    if os.path.exists(config_path):
        with open(config_path) as f:
            previous = config_lib.from_json(f.read(), field=config_path)
        changed = [p for p in config_lib.differing_fields(previous, run.config)
                   if p not in config_lib.RESUME_MUTABLE and (config_lib.is_read(previous, p)
                                                              or config_lib.is_read(run.config, p))]
        changed.sort(key=lambda p: p != "objective.name")  # another objective: say that, not its block's fields
        if changed:
            field = changed[0]
            raise UserError(field, f"{workdir} holds a run with {field}={config_lib.get(previous, field)!r}, "
                            f"not {config_lib.get(run.config, field)!r}; use a new --workdir to change it")
    if parallel.is_main_process():
        jobs.write_atomic(config_path, config_lib.to_json(run.config) + "\n", "workdir")
        checkpoint.write_json(os.path.join(workdir, checkpoint.MODEL_FILE), model_metadata(run))


def model_metadata(run: TrainingRun) -> dict:
    """The model.json of `run`'s workdir: its objective's (`Objective.metadata`), else a classifier's."""
    if run.objective.metadata is not None:
        return run.objective.metadata(run.config, run.dataset)
    return checkpoint.model_metadata(run.config, run.dataset)


class MetricsWriter:
    """Appends JSON lines to ``metrics.jsonl`` (main process only).

    On resume, drops the lines of the steps to be redone: those after
    `resume_step`, and when the run is over (`resume_step` == `total_steps`)
    its final evaluation, which is redone.
    """

    def __init__(self, workdir: str, resume_step: int, total_steps: int | None = None):
        self.path = os.path.join(workdir, checkpoint.METRICS_FILE)
        self.enabled = parallel.is_main_process()
        if self.enabled and os.path.exists(self.path):
            self._truncate_after(resume_step, resume_step == total_steps)

    def _truncate_after(self, step: int, finished: bool) -> None:
        # The dropped lines are the file's tail, so one truncate drops them: a kill part way leaves the file as
        # it was or as it should be.
        with open(self.path, "rb") as f:
            lines = f.readlines()
        end = 0
        for line in lines:
            try:
                row = json.loads(line) if line.strip() else {}
                if row.get("step", 0) > step or (finished and row.get("step") == step and "test_accuracy" in row):
                    break
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything before it stays
            end += len(line)
        os.truncate(self.path, end)

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                jobs.append_line(f, json.dumps(row, sort_keys=True) + "\n", "metrics")


def _mean_metrics(window: list[dict], first_step: int) -> dict[str, float]:
    """Host means of a window of per-step metrics; raises on the first non-finite loss."""
    stacked = jax.device_get({k: jnp.stack([m[k] for m in window]) for k in window[0]})
    losses = np.asarray(stacked["loss"], np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = first_step + int(bad[0]) + 1
        raise NonFiniteLossError("loss", f"not finite ({losses[bad[0]]}) at step {step}; the workdir keeps the "
                                 "last finite checkpoint; lower optimizer.learning_rate or check the data")
    return {k: float(np.mean(v)) for k, v in stacked.items()}


def _start_state(run: TrainingRun, ckpt: checkpoint.Checkpointer, callback: Callback) -> tuple[TrainState, int]:
    """(state, step): the workdir's newest readable checkpoint, else step 0, from ``train.init_from``'s model
    with a teacher. A newest checkpoint that does not read is moved aside and reported to `callback`."""
    policy = run.objective.teacher
    has_teacher = policy is not None

    def fresh(params, model_state):
        teacher = None
        if has_teacher:
            teacher = (params, model_state) if policy.from_init else policy.from_model(params, model_state)
        # replicate() copies every leaf: the teacher does not alias the trained variables, which steps donate
        return parallel.replicate(run.mesh, initial_state(run.objective, run.config, params, model_state,
                                                          run.dataset.input_shape, run.tx, teacher))

    start, state = ckpt.restore_latest(fresh(run.model.params, run.model.model_state), on_unreadable=lambda step,
                                       folder: callback({"event": "unreadable_checkpoint", "step": step,
                                                         "moved_to": folder}))
    if has_teacher and policy.from_init and not start:
        params, model_state, _ = restore_model(run.config.train.init_from, run, "train.init_from")
        state = fresh(params, model_state)
    return state, start


def _compiled_steps(run: TrainingRun) -> tuple[Callable, Callable]:
    """(train_step, eval_step) jitted with the mesh's shardings; the train step donates its state."""
    replicated, batch_sharding = parallel.replicated(run.mesh), parallel.data_sharded(run.mesh)
    objective, config, apply = run.objective, run.config, run.model.apply
    train_step = jax.jit(make_train_step(objective_loss(objective, config, apply), run.tx,
                                         with_teacher=objective.teacher is not None),
                         in_shardings=(replicated, batch_sharding, replicated),
                         out_shardings=(replicated, replicated), donate_argnums=0)
    extra = objective.evaluation.make(config, apply) if objective.evaluation is not None else None
    eval_step = compilation.compile_on_first_call(jax.jit(
        make_eval_step(apply, extra),
        in_shardings=(replicated, replicated, batch_sharding, replicated, replicated), out_shardings=replicated))
    return train_step, eval_step


def _reteach_every_steps(run: TrainingRun) -> int:
    """Steps between teacher refreshes (`Teacher.every_epochs`); 0: the teacher never changes."""
    teacher = run.objective.teacher
    if teacher is None or teacher.every_epochs is None:
        return 0
    return int(teacher.every_epochs(run.config)) * run.steps_per_epoch


def train_and_evaluate(config, workdir: str, *, mesh: jax.sharding.Mesh | None = None,
                       callback: Callback | None = None) -> tuple[TrainState, dict[str, float]]:
    """Trains from scratch or resumes from the workdir's latest checkpoint, then evaluates.

    Args:
      config: a resolved config (`jaxsmooth.config.load`).
      workdir: where config.json, model.json, metrics.jsonl and checkpoints live.
      mesh: the device mesh (default: all devices).
      callback: receives event dicts: ``{"event": "start", ...}``,
        ``{"event": "train", "step", "loss", "examples_per_s", ...}``,
        ``{"event": "eval", "step", "test_accuracy", "test_noisy_accuracy", ...}``.
    Returns:
      (final state, final evaluation summary).
    """
    callback = callback or (lambda event: None)
    run = build_run(config, mesh)
    teacher = run.objective.teacher
    if teacher is not None and teacher.from_init and not os.path.isdir(os.path.join(workdir,
                                                                                    checkpoint.CHECKPOINT_DIR)):
        # refuse a missing or mismatched teacher before writing anything
        checkpoint.checkpoint_folder(config.train.init_from, "train.init_from")
        checkpoint.check_model_metadata(config.train.init_from, checkpoint.model_metadata(run.config, run.dataset),
                                        "train.init_from")
    _prepare_workdir(workdir, run)
    tcfg = config.train
    ckpt = checkpoint.Checkpointer(workdir, save_every_steps=tcfg.checkpoint_every_steps, keep=tcfg.keep_checkpoints)
    closers: list = []
    try:
        state, start = _start_state(run, ckpt, callback)
        writer = MetricsWriter(workdir, start, run.total_steps)
        train_step, eval_step = _compiled_steps(run)
        reteach_every = _reteach_every_steps(run)
        root_key = parallel.replicate(run.mesh, run.root_key)
        host_batches = _train_batches(run, start)
        closers.append(getattr(host_batches, "close", lambda: None))
        batches = grain_pipeline.prefetch_to_device(host_batches, run.mesh, size=2)  # transfers overlap steps

        t0 = time.perf_counter()
        first = next(batches) if start < run.total_steps else None
        if first is not None:
            train_step = compilation.compile(train_step, state, first, root_key)
        callback({"event": "start", "start_step": start, "total_steps": run.total_steps,
                  "steps_per_epoch": run.steps_per_epoch, "compile_s": time.perf_counter() - t0})

        window: list[dict] = []
        window_start, t_window = start, time.perf_counter()
        for step in range(start, run.total_steps):
            batch = first if step == start else next(batches)
            state, metrics = train_step(state, batch, root_key)
            window.append(metrics)
            done = step + 1
            if reteach_every and done % reteach_every == 0 and done < run.total_steps:
                state = state.replace(teacher=_frozen(state.params, state.model_state))  # f^{k+1} = v
            end_of_epoch = done % run.steps_per_epoch == 0
            stop = jobs.stop_requested(done)  # SIGTERM: the same step on every process
            if done % tcfg.log_every_steps == 0 or done % tcfg.checkpoint_every_steps == 0 \
                    or end_of_epoch or done == run.total_steps or stop:
                _log_train(run, window, window_start, t_window, done, writer, callback)
                window, window_start, t_window = [], done, time.perf_counter()
            ckpt.save(done, state, force=done == run.total_steps or stop)
            if stop and done < run.total_steps:
                raise jobs.Stopped(f"stopped {jobs.stop_reason()} at step {done} of {run.total_steps}; its "
                                   f"checkpoint is {ckpt.directory}/{done}: rerun the same command to resume")
            epoch = done // run.steps_per_epoch
            if end_of_epoch and tcfg.eval_every_epochs and epoch % tcfg.eval_every_epochs == 0 \
                    and done != run.total_steps:
                _log_eval(run, eval_step, state, done, writer, callback)
                t_window = time.perf_counter()
        summary = _log_eval(run, eval_step, state, run.total_steps, writer, callback)
    finally:
        for close in closers:  # grain's worker processes
            close()
        ckpt.close()
    return state, summary


def _log_train(run: TrainingRun, window: list[dict], window_start: int, t_window: float, done: int,
               writer: MetricsWriter, callback: Callback) -> None:
    """Logs the means of a window of steps ending at step `done` (syncs; raises before a bad state is saved)."""
    means = _mean_metrics(window, window_start)
    elapsed = time.perf_counter() - t_window
    row = {"step": done, "epoch": done / run.steps_per_epoch, "learning_rate": float(run.schedule(done - 1)),
           "examples_per_s": len(window) * run.config.train.batch_size / max(elapsed, 1e-9), **means}
    writer.write(row)
    callback({"event": "train", "total_steps": run.total_steps, **row})


def _log_eval(run: TrainingRun, eval_step, state: TrainState, step: int, writer: MetricsWriter,
              callback: Callback) -> dict:
    params, model_state, sigma = run.objective.smoothed(run.config, state.params, state.model_state,
                                                        getattr(state, "teacher", None))
    sigma = np.asarray(jax.device_get(sigma), np.float32)
    result = evaluate(run, eval_step, params, model_state, parallel.replicate(run.mesh, sigma))
    row = {"step": step, "epoch": step / run.steps_per_epoch, "sigma": float(sigma.mean()), **result}
    writer.write(row)
    callback({"event": "eval", **row})
    return row


def _train_batches(run: TrainingRun, start: int):
    """This process's host batches from global step `start`: a thread pool, or ``data.workers`` grain processes."""
    config = run.config
    kwargs = dict(global_batch_size=config.train.batch_size, seed=config.seed, start_step=start,
                  augment=_augmentation(config, run.dataset), process_index=jax.process_index(),
                  process_count=jax.process_count())
    if config.data.workers:
        return grain_pipeline.grain_train_batches(run.dataset.train, worker_count=int(config.data.workers), **kwargs)
    return data.train_batches(run.dataset.train, **kwargs)


def _augmentation(config, dataset: data.Dataset) -> str:
    return dataset.augment_default if config.data.augment == "default" else config.data.augment


def _frozen(params, model_state):
    """A copy of the model's variables to serve as a teacher (the originals are donated to the next step)."""
    return jax.tree.map(jnp.copy, (params, model_state))


def restore_model(workdir: str, run: TrainingRun, field: str, step: int | None = None) -> tuple[Any, Any, int]:
    """(params, model_state, step) of a checkpoint of another run's `workdir` (default: the latest), replicated.

    Only the model is read (`checkpoint.read_variables`), so the other run may
    have used another optimizer or objective; its model.json must describe the
    same model and input as `run`, else the error names `field` and the entry.
    """
    checkpoint.check_model_metadata(workdir, checkpoint.model_metadata(run.config, run.dataset), field)
    params, model_state, step = checkpoint.read_variables(workdir, (run.model.params, run.model.model_state), field,
                                                          step)
    return (*parallel.replicate(run.mesh, (params, model_state)), step)
