"""An objective is one file plus one registry line: a toy one, from a temporary module, trains one step."""

import importlib.util
import os

import chex
import jax
import numpy as np
import optax
import pytest

from jaxsmooth import config as config_lib, data, objectives, parallel, trainer
from jaxsmooth.errors import UserError

from helpers import quick_config

TOY = '''
"""``toy``: the cross-entropy times a constant (a plug-in objective in one file)."""

import jax.numpy as jnp
import ml_collections
import optax

from jaxsmooth.objectives.base import Evaluation, Objective, check_positive


def defaults():
    c = ml_collections.ConfigDict()
    c.scale = 1.0  # the loss is scale times the cross-entropy
    return c


def validate(config):
    check_positive(config.toy.scale, "toy.scale")


def make(config, apply, teacher=None):
    validate(config)
    scale = float(config.toy.scale)

    def loss(params, model_state, batch, key):
        logits, new_state = apply(params, model_state, batch["image"], train=True)
        value = scale * optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return value, {"model_state": new_state, "metrics": {"loss": value}}

    return loss


def _label_zero(config, apply):
    def sums(params, model_state, batch, key, sigma):
        return {"label_zero": jnp.sum((batch["label"] == 0) & batch["mask"], dtype=jnp.int32)}
    return sums


OBJECTIVE = Objective(name="toy", reference="a test", make_loss=make, defaults=defaults, validate=validate,
                      evaluation=Evaluation(make=_label_zero, summarize=lambda totals, count: {
                          "test_label_zero": int(totals["label_zero"]) / count}))
'''


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_objective.py"
    path.write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_objective", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    objectives.register(module.OBJECTIVE)  # the registry line
    yield module
    objectives.REGISTRY.pop("toy")


def _tiny_npz(path, rng) -> str:
    """64 training examples (one batch of the quick start) and 16 test examples of 8x8x1, 10 classes."""
    np.savez(path, x_train=rng.integers(0, 256, (64, 8, 8, 1), np.uint8), y_train=np.arange(64) % 10,
             x_test=rng.integers(0, 256, (16, 8, 8, 1), np.uint8), y_test=np.arange(16) % 10)
    return f"npz:{path}"


@pytest.mark.slow
def test_a_toy_objective_from_one_file_trains_one_step(toy, tmp_path):
    config = quick_config("objective.name=toy", "toy.scale=2.5", "optimizer.weight_decay=0",
                          f"data.name={_tiny_npz(tmp_path / 'tiny.npz', np.random.default_rng(0))}")
    assert [r["meaning"] for r in config_lib.describe() if r["field"] == "toy.scale"] == [
        "the loss is scale times the cross-entropy"]
    with pytest.raises(UserError) as info:
        config_lib.validate(quick_config("objective.name=toy", "toy.scale=0"))
    assert info.value.field == "toy.scale"

    mesh = parallel.make_mesh(jax.devices()[:1])
    run = trainer.build_run(config, mesh)
    params0, state0 = jax.device_get((run.model.params, run.model.model_state))
    batch = data.train_batch(run.dataset.train, global_batch_size=64, seed=config.seed, step=0)

    def scaled_cross_entropy(params):
        logits, _ = run.model.apply(params, state0, batch["image"], train=True)
        return 2.5 * optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    loss, grads = jax.jit(jax.value_and_grad(scaled_cross_entropy))(params0)
    events = []
    state, summary = trainer.train_and_evaluate(config, str(tmp_path / "run"), mesh=mesh, callback=events.append)
    assert int(state.step) == 1 == run.total_steps
    train_rows = [e for e in events if e["event"] == "train"]
    np.testing.assert_allclose(train_rows[0]["loss"], float(loss), rtol=1e-5)
    # one SGD step of the toy's loss: params0 - lr * gradient (the first momentum step is the gradient)
    expected = jax.tree.map(lambda p, g: p - float(run.schedule(0)) * g, params0, grads)
    chex.assert_trees_all_close(jax.device_get(state.params), expected, rtol=1e-4, atol=1e-6)
    assert summary["test_label_zero"] == 2 / 16  # the toy's own evaluation figure, labels 0 and 10 % 10
    assert os.path.exists(tmp_path / "run" / "checkpoints" / "1")


def test_an_objective_cannot_take_a_section_name():
    record = objectives.Objective(name="train", reference="", make_loss=lambda *a: None)
    with pytest.raises(ValueError):
        objectives.register(record)
    assert "train" not in objectives.REGISTRY
