"""Config loading, overrides and validation: one error per bad field, naming it."""

import os
import textwrap

import pytest

from jaxsmooth import config as config_lib
from jaxsmooth.errors import UserError

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")


def _error(fn, *args, **kwargs) -> UserError:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    return info.value


def test_every_packaged_config_loads_by_name_and_validates():
    files = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "jaxsmooth", "configs")) if f.endswith(".py"))
    assert config_lib.names() == [f for f in files if f != "__init__"] and "quickstart" in config_lib.names()
    for name in config_lib.names():
        c = config_lib.load(name)
        # imagenet_sigma keeps the paper's batch of 2 (non_uniform appendix B): it runs on 1 or 2 devices
        config_lib.validate(c, num_devices=min(8, c.train.batch_size))
        assert c.is_locked


def test_the_repository_configs_folder_is_the_packaged_one():
    assert os.path.samefile(os.path.join(ROOT, "configs"), config_lib.CONFIGS)
    assert os.path.islink(os.path.join(ROOT, "configs"))  # one source: a link, not a copy


def test_a_config_is_named_or_a_file():
    by_name, by_path = config_lib.load("quickstart"), config_lib.load(QUICKSTART)
    assert by_name.to_dict() == by_path.to_dict()
    assert config_lib.find("quickstart") == os.path.join(config_lib.CONFIGS, "quickstart.py")
    assert config_lib.find(QUICKSTART) == QUICKSTART


def test_an_unknown_config_name_lists_the_names(tmp_path, monkeypatch):
    e = _error(config_lib.load, "quikstart")
    assert str(e) == f"config: no config named 'quikstart'; give a file or one of: {', '.join(config_lib.names())}"
    e = _error(config_lib.load, str(tmp_path / "mine"))  # a path is never read as a name
    assert str(e) == f"config: no such config file {str(tmp_path / 'mine')!r}"
    monkeypatch.chdir(tmp_path)
    assert str(_error(config_lib.load, "quickstart.py")) == (
        "config: no such config file 'quickstart.py' (the packaged one is --config quickstart)")
    (tmp_path / "quickstart").write_text("")  # a bare name is the packaged config, whatever the folder holds
    assert config_lib.find("quickstart") == os.path.join(config_lib.CONFIGS, "quickstart.py")


def test_cohen_cifar10_recipe():
    c = config_lib.load(os.path.join(ROOT, "configs", "cifar10_gaussian.py"))
    assert (c.model.name, c.train.num_epochs, c.train.batch_size) == ("resnet110", 90, 256)
    assert (c.optimizer.learning_rate, c.optimizer.decay_every_epochs, c.optimizer.decay_factor) == (0.1, 30, 0.1)
    assert c.objective.sigma in (0.12, 0.25, 0.5, 1.0)


def test_override_parses_by_field_type():
    c = config_lib.load(QUICKSTART)
    config_lib.apply_overrides(c, ["train.batch_size=32", "objective.sigma=0.5", "optimizer.nesterov=true",
                                   "data.name=npz:/tmp/x.npz", "optimizer.learning_rate=1"])
    assert c.train.batch_size == 32 and isinstance(c.train.batch_size, int)
    assert c.objective.sigma == 0.5
    assert c.optimizer.nesterov is True
    assert c.data.name == "npz:/tmp/x.npz"
    assert c.optimizer.learning_rate == 1.0 and isinstance(c.optimizer.learning_rate, float)


def test_misspelt_override_names_the_field_and_suggests():
    c = config_lib.load(QUICKSTART)
    e = _error(config_lib.apply_overrides, c, ["train.batchsize=32"])
    assert e.field == "train.batchsize"
    assert "did you mean train.batch_size?" in str(e)


def test_wrong_override_type_names_the_field():
    c = config_lib.load(QUICKSTART)
    assert _error(config_lib.apply_overrides, c, ["train.batch_size=abc"]).field == "train.batch_size"
    assert _error(config_lib.apply_overrides, c, ["train.batch_size=2.5"]).field == "train.batch_size"
    assert _error(config_lib.apply_overrides, c, ["optimizer.nesterov=3"]).field == "optimizer.nesterov"


def test_misspelt_field_in_a_config_file(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent("""
        from jaxsmooth.config import default
        def get_config():
            c = default()
            c.objective.sigmaa = 0.5
            return c
    """))
    e = _error(config_lib.load, str(path))
    assert e.field == "objective.sigmaa"
    assert "objective.sigma" in e.message


def test_missing_config_file():
    assert _error(config_lib.load, "/nonexistent/config.py").field == "config"


@pytest.mark.parametrize("override, field", [
    ("objective.sigma=0", "objective.sigma"),
    ("objective.sigma=-0.25", "objective.sigma"),
    ("model.name=resnet21", "model.name"),
    ("objective.name=gausian", "objective.name"),
    ("optimizer.name=lion", "optimizer.name"),
    ("optimizer.schedule=linear", "optimizer.schedule"),
    ("model.activation=gelu", "model.activation"),
    ("model.dtype=float16", "model.dtype"),
    ("optimizer.learning_rate=0", "optimizer.learning_rate"),
    ("optimizer.momentum=1.0", "optimizer.momentum"),
    ("train.batch_size=0", "train.batch_size"),
])
def test_invalid_values_name_their_field(override, field):
    c = config_lib.apply_overrides(config_lib.load(QUICKSTART), [override])
    e = _error(config_lib.validate, c)
    assert e.field == field
    assert "allowed" in e.message or "must be" in e.message


def test_batch_not_divisible_by_devices():
    c = config_lib.apply_overrides(config_lib.load(QUICKSTART), ["train.batch_size=60"])
    e = _error(config_lib.validate, c, num_devices=8)
    assert e.field == "train.batch_size"
    assert "divisible" in e.message and "8" in e.message


def test_json_round_trip_and_differences():
    c = config_lib.load(QUICKSTART)
    back = config_lib.from_json(config_lib.to_json(c))
    assert config_lib.differing_fields(c, back) == []
    config_lib.apply_overrides(back, ["objective.sigma=0.5"])
    assert config_lib.differing_fields(c, back) == ["objective.sigma"]


def test_config_doc_is_generated_from_the_declared_fields():
    """docs/config.md is `config.markdown()`; regenerate with python -m jaxsmooth.config --markdown docs/config.md."""
    with open(os.path.join(ROOT, "docs", "config.md")) as f:
        assert f.read() == config_lib.markdown(), ("docs/config.md is stale: run "
                                                   "python -m jaxsmooth.config --markdown docs/config.md")


def test_every_field_is_documented_once():
    rows = config_lib.describe()
    fields = [r["field"] for r in rows]
    assert sorted(fields) == sorted(path for path, _ in config_lib._leaves(config_lib.default()))
    assert [r["field"] for r in rows if not r["meaning"]] == []
    doc = config_lib.markdown()
    assert all(f"| `{field}` |" in doc for field in fields)


def test_the_config_module_writes_the_doc(tmp_path):
    path = tmp_path / "config.md"
    assert config_lib.main(["--markdown", str(path)]) == 0
    assert path.read_text() == config_lib.markdown()


def test_a_loaded_config_is_locked_and_refuses_a_new_field():
    c = config_lib.load(QUICKSTART)
    with pytest.raises(AttributeError):
        c.train.batchsize = 32
    assert _error(config_lib.apply_overrides, c, ["seed=1.5"]).message == "expected an integer, got '1.5'"
    assert _error(config_lib.apply_overrides, c, ["objective.sigma=big"]).message == "expected a number, got 'big'"
    assert _error(config_lib.apply_overrides, c, ["train.batch_size"]).field == "config"


def test_a_value_of_the_wrong_type_in_a_config_file_is_one_error(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent("""
        from jaxsmooth.config import default
        def get_config():
            c = default()
            c.train.batch_size = "large"
            return c
    """))
    e = _error(config_lib.load, str(path))
    assert e.field == "config" and "batch_size" in e.message and "\n" not in str(e)
