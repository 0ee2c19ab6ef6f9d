"""Configs and workdirs of the version before objectives had config blocks of their own.

tests/data/legacy_config/*.json are config.json files written by that version
(``config.to_json`` of the config file and overrides that `SAME_RUN` gives in
today's names), with every objective's fields under ``objective``
(``objective.num_noise``, ...); tests/data/legacy_quickstart_run is a workdir
it wrote.
"""

import json
import os
import shutil
import textwrap

import pytest

from jaxsmooth import checkpoint, config as config_lib, jobs, train, trainer
from jaxsmooth.errors import UserError

from conftest import ROOT
from helpers import fails_with, quick_config

LEGACY = os.path.join(ROOT, "tests", "data", "legacy_config")

# legacy file -> (config file, overrides in today's names) that describe the same run
SAME_RUN = {
    "digits_heat": ("digits_heat.py", []),
    "digits_bootcamp": ("digits_bootcamp.py", []),
    "digits_sigma": ("digits_sigma.py", []),
    "mnist_nal": ("mnist_nal.py", []),
    "mnist_nal_as_wrm": ("mnist_nal.py", ["objective.name=wrm", "model.activation=elu", "wrm.gamma=0.25"]),
    "digits_nal_as_smoothadv": ("digits_nal.py", ["objective.name=smoothadv", "smoothadv.epsilon=0.75",
                                                  "smoothadv.clip=true"]),
}


def _legacy(name: str) -> str:
    with open(os.path.join(LEGACY, name + ".json")) as f:
        return f.read()


def _differences(a, b) -> list[str]:
    return [p for p in config_lib.differing_fields(a, b) if config_lib.is_read(a, p) or config_lib.is_read(b, p)]


@pytest.mark.parametrize("name", sorted(SAME_RUN))
def test_a_legacy_config_json_reads_as_the_run_it_was(name):
    file, overrides = SAME_RUN[name]
    today = config_lib.load(os.path.join(ROOT, "configs", file), overrides)
    assert _differences(config_lib.from_json(_legacy(name)), today) == []


def test_the_legacy_fields_land_in_the_run_objectives_block():
    heat = config_lib.from_json(_legacy("digits_heat"))
    assert (heat.heat.lam, heat.heat.distance, heat.heat.epochs_per_timestep) == (5.0, "l2", 4)
    bootcamp = config_lib.from_json(_legacy("digits_bootcamp"))
    assert (bootcamp.bootcamp.num_epochs, bootcamp.bootcamp.distance) == (20, "kl")
    assert config_lib.from_json(_legacy("mnist_nal_as_wrm")).wrm.gamma == 0.25
    # an empty legacy distance meant the objective's own: bootcamp's is softmax_l2, not heat's l2
    raw = json.loads(_legacy("digits_bootcamp"))
    raw["objective"]["distance"] = ""
    assert config_lib.from_json(json.dumps(raw)).bootcamp.distance == "softmax_l2"
    # and the difference check sees a changed field
    raw["objective"]["kappa"] = 3
    assert _differences(config_lib.from_json(json.dumps(raw)), bootcamp) == ["bootcamp.distance", "bootcamp.kappa"]


@pytest.mark.parametrize("old, objective, new", [
    ("objective.num_noise", "sigma", "sigma.num_noise"),
    ("objective.num_noise", "nal", "nal.num_noise"),
    ("objective.pgd_steps", "nal", "nal.ascent_steps"),
    ("objective.epochs_per_timestep", "bootcamp", "bootcamp.num_epochs"),
])
def test_an_old_field_in_a_config_file_or_an_override_names_the_new_one(tmp_path, old, objective, new):
    path = tmp_path / "old.py"
    path.write_text(textwrap.dedent(f"""
        from jaxsmooth.config import default
        def get_config():
            c = default()
            c.objective.name = "{objective}"
            c.{old} = 8
            return c
    """))
    with pytest.raises(UserError) as info:
        config_lib.load(str(path))
    assert info.value.field == old and new in info.value.message
    with pytest.raises(UserError) as info:
        config_lib.load(os.path.join(ROOT, "configs", "quickstart.py"), [f"objective.name={objective}", f"{old}=8"])
    assert info.value.field == old and new in info.value.message


def test_an_old_field_on_the_command_line_is_one_line(tmp_path, capsys):
    line = fails_with(train.main, capsys, ["--config", os.path.join(ROOT, "configs", "mnist_nal.py"), "--workdir",
                                          str(tmp_path / "w"), "--config.objective.gamma=0.5"], "objective.gamma")
    assert "nal.gamma" in line and not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_quickstart_run_of_the_earlier_version_resumes(tmp_path):
    """tests/data/legacy_quickstart_run: the earlier version's quick start (helpers.quick_config), killed after
    logging step 15, its latest checkpoint step 10. Today's trainer resumes it from step 10 to the end, trains
    steps 11-15 exactly as the earlier version did (the same logged loss), and rewrites config.json in today's form."""
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(ROOT, "tests", "data", "legacy_quickstart_run"), workdir)
    with open(os.path.join(workdir, checkpoint.METRICS_FILE)) as f:
        before = {row["step"]: row for row in map(json.loads, f)}
    events = []
    state, _ = trainer.train_and_evaluate(quick_config(), workdir, callback=events.append)
    assert events[0]["event"] == "start" and events[0]["start_step"] == 10
    assert int(state.step) == events[0]["total_steps"] == 1437 // 64
    after = {e["step"]: e for e in events if e["event"] == "train"}
    assert after[15]["loss"] == before[15]["loss"] and after[15]["accuracy"] == before[15]["accuracy"]
    with open(os.path.join(workdir, checkpoint.CONFIG_FILE)) as f:
        rewritten = json.load(f)
    assert "num_noise" not in rewritten["objective"] and rewritten["nal"]["num_noise"] == 4


def test_a_legacy_run_with_another_setting_is_refused_in_one_line(tmp_path, capsys):
    """The earlier version's NAL run with r = 8 in config.json: today's config with nal.num_noise = 4 is refused."""
    workdir = tmp_path / "nal"
    workdir.mkdir()
    with open(os.path.join(ROOT, "tests", "data", "legacy_quickstart_run", checkpoint.CONFIG_FILE)) as f:
        raw = json.load(f)
    raw["objective"].update(name="nal", num_noise=8)
    (workdir / checkpoint.CONFIG_FILE).write_text(json.dumps(raw))
    small = ["--config.model.width=4", "--config.train.batch_size=64", "--config.train.num_epochs=1",
             "--config.train.log_every_steps=5", "--config.train.checkpoint_every_steps=10",
             "--config.train.eval_every_epochs=0", "--config.train.eval_batch_size=120"]
    line = fails_with(train.main, capsys, ["--config", os.path.join(ROOT, "configs", "quickstart.py"), "--workdir",
                                          str(workdir), "--no-progress", "--config.objective.name=nal"] + small,
                      "nal.num_noise")
    assert "holds a run with nal.num_noise=8, not 4" in line
    assert sorted(set(os.listdir(workdir)) - {jobs.LOCK_FILE}) == [checkpoint.CONFIG_FILE]  # the lock: empty, kept
