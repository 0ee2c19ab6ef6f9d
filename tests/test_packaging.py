"""What the package declares: its dependencies against its imports, the extras of its optional features, and the
one error line that names the extra a missing dependency needs."""

import ast
import importlib.metadata
import os
import re
import sys
import tomllib

import pytest

from jaxsmooth import convert, data, extras, train
from jaxsmooth.analysis import plotting
from jaxsmooth.data import grain_pipeline
from jaxsmooth.errors import UserError

from conftest import ROOT
from helpers import fails_with

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    PROJECT = tomllib.load(f)["project"]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (``orbax-checkpoint>=0.11`` -> ``orbax-checkpoint``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def _imported_modules(folder: str) -> set[str]:
    """The top-level modules that the Python files under `folder` import, anywhere in them."""
    found = set()
    for where, _, files in os.walk(folder):
        for file in (f for f in files if f.endswith(".py")):
            with open(os.path.join(where, file)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


def test_every_third_party_import_of_the_package_is_declared():
    distributions = importlib.metadata.packages_distributions()
    third_party = _imported_modules(os.path.join(ROOT, "jaxsmooth")) - set(sys.stdlib_module_names) - {"jaxsmooth"}
    declared = {_name(r) for r in PROJECT["dependencies"]}
    optional = {_name(distribution) for distribution, _ in extras.EXTRAS.values()}
    for module in sorted(third_party):
        names = {_name(d) for d in distributions[module]}
        if module in extras.EXTRAS:
            assert names & optional and not names & declared, module  # an extra's, not the base install's
        else:
            assert names & declared, f"{module} is imported by jaxsmooth but not declared in pyproject.toml"
    assert "chex" not in declared and "chex" not in third_party  # the tests' assertions only


def test_each_optional_dependency_has_its_extra_and_the_test_extra_installs_them_all():
    groups = PROJECT["optional-dependencies"]
    for distribution, extra in extras.EXTRAS.values():
        assert [_name(r) for r in groups[extra]] == [distribution]
    everything = next(r for r in groups["test"] if r.startswith("jaxsmooth["))
    assert set(everything[len("jaxsmooth["):-1].split(",")) == {extra for _, extra in extras.EXTRAS.values()}
    assert {"chex", "pytest", "ruff"} <= {_name(r) for r in groups["test"]}


def _uninstall(monkeypatch, module: str) -> None:
    """As if `module` were not installed: importing it or any of its modules fails."""
    for loaded in [m for m in sys.modules if m.startswith(f"{module}.")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, module, None)


def test_without_tensorflow_datasets_a_tfds_name_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    _uninstall(monkeypatch, "tensorflow_datasets")
    line = fails_with(train.main, capsys, ["--config", "quickstart", "--workdir", str(tmp_path / "w"),
                                           "--config.data.name=mnist"], "data.name")
    assert line == ("error: data.name: 'mnist' (neither digits, npz:PATH nor idx:DIR, so a tensorflow-datasets "
                    "name) needs tensorflow-datasets, which is not installed: pip install 'jaxsmooth[tfds]'")


def test_without_torch_convert_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    _uninstall(monkeypatch, "torch")
    checkpoint = tmp_path / "model.pth.tar"
    checkpoint.write_bytes(b"")
    line = fails_with(convert.main, capsys, ["--torch", str(checkpoint), "--arch", "cifar_resnet110", "--workdir",
                                             str(tmp_path / "c")], "--torch")
    assert line == ("error: --torch: reading PyTorch checkpoints needs torch, which is not installed: "
                    "pip install 'jaxsmooth[torch]'")


def test_without_matplotlib_or_grain_their_features_name_the_extra(monkeypatch):
    _uninstall(monkeypatch, "matplotlib")
    _uninstall(monkeypatch, "grain")
    with pytest.raises(UserError) as info:
        plotting.figure_class()
    assert str(info.value) == ("plot: drawing a plot needs matplotlib, which is not installed: "
                               "pip install 'jaxsmooth[plot]'")
    split = data.load("digits").train
    with pytest.raises(UserError) as info:
        grain_pipeline.grain_train_batches(split, global_batch_size=8, seed=0, augment="none", worker_count=1)
    assert str(info.value) == ("data.workers: making training batches in worker processes needs grain, which is not "
                               "installed: pip install 'jaxsmooth[grain]'")


def test_a_dependency_of_an_optional_dependency_keeps_its_own_error(monkeypatch):
    def missing_kiwisolver(module):
        raise ModuleNotFoundError("No module named 'kiwisolver'", name="kiwisolver")

    monkeypatch.setattr(extras.importlib, "import_module", missing_kiwisolver)
    with pytest.raises(ModuleNotFoundError, match="kiwisolver"):
        plotting.figure_class()
