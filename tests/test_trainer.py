"""The training loop: device-count invariance, exact resume, errors, tracing, workdir contents."""

import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest

from jaxsmooth import checkpoint, data, objectives, parallel, trainer
from jaxsmooth.errors import UserError

from helpers import quick_config


@pytest.mark.slow
def test_eight_devices_train_the_same_parameters_as_one(quick_run, tmp_path, devices):
    _, eight, _ = quick_run  # trained on parallel.make_mesh(devices), the default mesh
    one, _ = trainer.train_and_evaluate(quick_config(), str(tmp_path / "one"), mesh=parallel.make_mesh(devices[:1]))
    assert int(one.step) == int(eight.step) == 1437 // 64
    chex.assert_trees_all_close(jax.device_get(one.params), jax.device_get(eight.params), atol=2e-5, rtol=2e-5)


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_resume_after_a_crash_ends_with_the_same_parameters(quick_run, tmp_path):
    config = quick_config()
    _, full, _ = quick_run

    def crash_at_13(event):
        if event["event"] == "train" and event["step"] >= 13:
            raise _Crash()

    crashed = str(tmp_path / "crashed")
    with pytest.raises(_Crash):
        trainer.train_and_evaluate(config, crashed, callback=crash_at_13)
    assert checkpoint.Checkpointer(crashed).latest_step() == 10
    events = []
    resumed, _ = trainer.train_and_evaluate(config, crashed, callback=events.append)
    assert events[0]["event"] == "start" and events[0]["start_step"] == 10
    chex.assert_trees_all_close(jax.device_get(resumed.params), jax.device_get(full.params), atol=0, rtol=0)
    steps = [json.loads(line)["step"] for line in open(os.path.join(crashed, "metrics.jsonl"))
             if "loss" in json.loads(line)]
    assert steps == sorted(set(steps)), "a resumed run logs each step once"


@pytest.mark.slow
def test_grain_workers_feed_the_same_batches_and_a_run_resumes_with_threads(quick_run, tmp_path):
    """data.workers = 2 (grain worker processes) trains what the thread pipeline trains, and may change on resume."""
    _, full, _ = quick_run  # the thread pipeline's run

    def crash_at_13(event):
        if event["event"] == "train" and event["step"] >= 13:
            raise _Crash()

    run = str(tmp_path / "grain")
    with pytest.raises(_Crash):
        trainer.train_and_evaluate(quick_config("data.workers=2"), run, callback=crash_at_13)
    resumed, _ = trainer.train_and_evaluate(quick_config(), run)
    chex.assert_trees_all_close(jax.device_get(resumed.params), jax.device_get(full.params), atol=0, rtol=0)


@pytest.mark.slow
def test_workdir_holds_config_metrics_model_and_checkpoint(quick_run):
    workdir, _, summary = quick_run
    assert set(os.listdir(workdir)) >= {"config.json", "model.json", "metrics.jsonl", "checkpoints"}
    assert checkpoint.Checkpointer(workdir).latest_step() == 1437 // 64
    meta = json.load(open(os.path.join(workdir, "model.json")))
    assert meta["input_shape"] == [8, 8, 1] and meta["num_classes"] == 10 and meta["sigma"] == 0.25
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert rows[-1]["test_examples"] == 360 == summary["test_examples"]
    assert 0.0 <= summary["test_noisy_accuracy"] <= 1.0


@pytest.mark.slow
def test_changed_config_on_an_existing_workdir_is_refused(quick_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(quick_run[0], workdir)
    with pytest.raises(UserError) as info:
        trainer.train_and_evaluate(quick_config("objective.sigma=0.5"), workdir)
    assert info.value.field == "objective.sigma"


def test_non_finite_loss_names_the_step(tmp_path):
    with pytest.raises(trainer.NonFiniteLossError) as info:
        trainer.train_and_evaluate(quick_config("optimizer.learning_rate=1e30"), str(tmp_path / "nan"))
    assert info.value.field == "loss"
    assert "at step " in info.value.message


@pytest.mark.slow
def test_unreadable_checkpoint(quick_run, tmp_path):
    """No checkpoint reads: one error, and nothing is moved aside (an older readable one would be resumed from)."""
    workdir = str(tmp_path / "run")
    shutil.copytree(quick_run[0], workdir)
    for folder, _, files in os.walk(os.path.join(workdir, "checkpoints")):
        for name in files:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"\x00garbage")
    with pytest.raises(UserError) as info:
        trainer.train_and_evaluate(quick_config(), workdir)
    assert info.value.field == "checkpoint"
    assert "cannot read" in info.value.message
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", str(1437 // 64)]


def test_train_step_compiles_once_and_updates_state():
    config = quick_config()
    run = trainer.build_run(config)
    loss_fn = objectives.build(config, run.model.apply)
    step_fn = jax.jit(chex.assert_max_traces(trainer.make_train_step(loss_fn, run.tx), n=1))
    state = parallel.replicate(run.mesh, trainer.create_train_state(run.model, run.tx))
    batches = data.train_batches(run.dataset.train, global_batch_size=64, seed=0)
    for _ in range(3):
        state, metrics = step_fn(state, parallel.shard_batch(run.mesh, next(batches)), run.root_key)
    assert int(state.step) == 3
    chex.assert_shape(metrics["loss"], ())
    assert np.isfinite(float(metrics["loss"]))


def test_sgd_schedule_step_decay():
    config = quick_config("optimizer.schedule=step", "optimizer.decay_every_epochs=2",
                          "optimizer.decay_factor=0.1", "optimizer.learning_rate=0.1", "train.num_epochs=6")
    _, schedule = trainer.create_optimizer(config, steps_per_epoch=10)
    np.testing.assert_allclose([schedule(s) for s in (0, 19, 20, 39, 40, 59)],
                               [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
