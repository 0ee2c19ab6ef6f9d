"""Small shared pieces of the tests."""

import os

import orbax.checkpoint as ocp

from jaxsmooth import config as config_lib

from conftest import ROOT


def quick_config(*overrides: str):
    """The quick-start config shrunk to a few fast steps on 8 devices."""
    c = config_lib.load(os.path.join(ROOT, "configs", "quickstart.py"))
    base = ["model.width=4", "train.batch_size=64", "train.num_epochs=1", "train.log_every_steps=5",
            "train.checkpoint_every_steps=10", "train.eval_every_epochs=0", "train.eval_batch_size=120"]
    return config_lib.apply_overrides(c, base + list(overrides))


def saved_params(workdir: str, step: int):
    """The parameters saved in a workdir's checkpoint at `step`, as host arrays (no target tree)."""
    path = os.path.join(workdir, "checkpoints", str(step), "default")
    return ocp.StandardCheckpointer().restore(os.path.abspath(path))["params"]
