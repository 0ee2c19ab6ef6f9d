"""The trainer's distilling objectives (heat, bootcamp): start from another run, the teacher schedule, exact resume."""

import chex
import jax
import numpy as np
import pytest

from jaxsmooth import checkpoint, trainer
from jaxsmooth.errors import UserError

from helpers import quick_config

HEAT = ["objective.name=heat", "heat.timesteps=2", "heat.epochs_per_timestep=1", "heat.kappa=2",
        "optimizer.learning_rate=0.001"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pretrained") / "standard")
    state, _ = trainer.train_and_evaluate(quick_config("objective.name=standard"), path)
    return path, jax.device_get(state.params)


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_heat_starts_from_the_pretrained_model_and_refreshes_its_teacher(pretrained, tmp_path):
    path, params = pretrained
    config = quick_config(*HEAT, f"train.init_from={path}", "optimizer.learning_rate=1e-30",
                          "optimizer.weight_decay=0")
    state, _ = trainer.train_and_evaluate(config, str(tmp_path / "heat"))
    steps = int(state.step)
    assert steps == 2 * (1437 // 64)  # two timesteps of one epoch
    # a vanishing learning rate: v stays the pretrained model, and so does the teacher it was frozen from
    chex.assert_trees_all_close(jax.device_get(state.params), params, atol=1e-6)
    chex.assert_trees_all_close(jax.device_get(state.teacher[0]), params, atol=1e-6)


@pytest.mark.slow
def test_teacher_is_v_at_the_last_timestep_boundary_and_resume_is_exact(pretrained, tmp_path):
    path, params = pretrained
    config = quick_config(*HEAT, f"train.init_from={path}")
    full, _ = trainer.train_and_evaluate(config, str(tmp_path / "full"))
    boundary = 1437 // 64  # the end of timestep 1: checkpointed state there holds v, then v becomes the teacher
    assert not np.allclose(jax.device_get(full.teacher[0])["fc2"]["kernel"], params["fc2"]["kernel"])
    assert not np.allclose(jax.device_get(full.teacher[0])["fc2"]["kernel"],
                           jax.device_get(full.params)["fc2"]["kernel"])

    def crash_after_the_boundary(event):
        if event["event"] == "train" and event["step"] >= boundary + 12:
            raise _Crash()

    crashed = str(tmp_path / "crashed")
    with pytest.raises(_Crash):
        trainer.train_and_evaluate(config, crashed, callback=crash_after_the_boundary)
    assert boundary < checkpoint.Checkpointer(crashed).latest_step() < 2 * boundary
    resumed, _ = trainer.train_and_evaluate(config, crashed)
    chex.assert_trees_all_close(jax.device_get(resumed.params), jax.device_get(full.params), atol=0, rtol=0)
    chex.assert_trees_all_close(jax.device_get(resumed.teacher), jax.device_get(full.teacher), atol=0, rtol=0)


@pytest.mark.slow
def test_bad_init_from_names_the_field(pretrained, tmp_path):
    path, _ = pretrained
    for value, needle in [(str(tmp_path / "nothing"), "holds no checkpoints"),
                          (path, "width=4")]:
        overrides = [f"train.init_from={value}"] + (["model.width=8"] if value == path else [])
        with pytest.raises(UserError) as e:
            trainer.train_and_evaluate(quick_config(*HEAT, *overrides), str(tmp_path / "w"))
        assert e.value.field == "train.init_from" and needle in str(e.value), str(e.value)
        assert not (tmp_path / "w").exists()  # refused before the workdir is written: a corrected rerun starts clean
