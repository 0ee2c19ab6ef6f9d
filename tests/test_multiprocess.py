"""Two JAX processes (launch/local.sh, 4 fake CPU devices each) train what one process with 8 devices trains."""

import os
import socket
import subprocess
import sys

import chex
import jax
import pytest

from jaxsmooth import checkpoint, parallel, trainer

from conftest import ROOT
from helpers import quick_config

OVERRIDES = ["train.num_epochs=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_eight_devices(tmp_path, devices):
    workdir = str(tmp_path / "two")
    env = dict(os.environ, DEVICES_PER_PROCESS="4", LOGDIR=str(tmp_path / "logs"), PORT=str(_free_port()))
    env.pop("XLA_FLAGS", None)
    cmd = [os.path.join(ROOT, "launch", "local.sh"), "2", sys.executable, "-m", "jaxsmooth.train",
           "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--workdir", workdir, "--no-progress",
           "--config.model.width=4", "--config.train.batch_size=64", "--config.train.checkpoint_every_steps=10",
           "--config.train.eval_every_epochs=0", "--config.train.eval_batch_size=120"] + \
          [f"--config.{o}" for o in OVERRIDES]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    config = quick_config(*OVERRIDES)
    one, summary = trainer.train_and_evaluate(config, str(tmp_path / "one"), mesh=parallel.make_mesh(devices))
    restored = checkpoint.Checkpointer(workdir).restore(int(one.step), one)
    chex.assert_trees_all_close(jax.device_get(restored.params), jax.device_get(one.params), atol=2e-5, rtol=2e-5)
    assert f"clean accuracy {summary['test_accuracy']:.4f}" in out.stdout
