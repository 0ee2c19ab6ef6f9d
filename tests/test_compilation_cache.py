"""The cache folder: where it is, how it is switched off, and what a second process finds there.

`jaxsmooth.cache.folder` is ``$JAXSMOOTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxsmooth``,
else ``~/.cache/jaxsmooth``, and ``off`` switches it off. It holds JAX's persistent
compilation cache (`compilation.use_persistent_cache`, called by the CLIs and the
API), the XLA option set that ``compiler_options="auto"`` timed for a program on
this machine (`compilation.compile_remembered`) and the digits split. The suite runs
with the folder off (tests/conftest.py); these tests point it at their own
temporary folders.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsmooth import cache, certify, compilation, noise
from jaxsmooth.certification import engine
from jaxsmooth.data import sources
from jaxsmooth.errors import UserError

from conftest import ROOT
from helpers import fails_with, sidecar_settings, spy_compile_fastest, tsv_rows

SHAPE, K = (4, 4, 1), 3
SMALL = ["--config.model.width=4", "--config.train.batch_size=64", "--config.train.eval_batch_size=120"]
CERTIFY = ["--n0", "20", "--n", "400", "--max", "4", "--batch", "200", "--no-progress"] + SMALL


def _apply(params, model_state, x, *, train=False):
    """A linear classifier of [B, 4, 4, 1] inputs: [B, 3] logits."""
    return x.reshape(x.shape[0], -1) @ params["w"], model_state


PARAMS = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(16, K)), jnp.float32)}


def _prepared(chunk: int = 50, inputs: int = 2, noise_kind: str = "gaussian") -> dict:
    """The options a new "auto" Sampler of the linear classifier compiles with (`Sampler.prepare`)."""
    sampler = engine.Sampler(_apply, PARAMS, {}, input_shape=SHAPE, num_classes=K, inputs=inputs, chunk=chunk,
                             compiler_options="auto", noise=noise_kind)
    return sampler.prepare(0.25, 100, noise.certify_key(noise.root_key(0)))


@pytest.fixture
def timings(monkeypatch):
    """The candidates of every `compilation.compile_fastest` call: None when it times `AUTO_CANDIDATES`."""
    return spy_compile_fastest(monkeypatch)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A fresh cache folder, named by JAXSMOOTH_CACHE_DIR."""
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(path))
    return path


def _remembered(folder) -> list:
    """The option sets remembered in `folder`, one per program."""
    found = folder / "xla_options"
    return [json.load(open(found / f))["options"] for f in sorted(os.listdir(found))] if found.exists() else []


def test_the_cache_folder_is_the_variable_else_xdg_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(cache.ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.folder() == str(tmp_path / "home" / ".cache" / "jaxsmooth")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # not absolute: ignored, as the XDG spec says
    assert cache.folder() == str(tmp_path / "home" / ".cache" / "jaxsmooth")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.folder() == str(tmp_path / "xdg" / "jaxsmooth")
    monkeypatch.setenv(cache.ENV, str(tmp_path / "mine"))
    assert cache.folder() == str(tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(cache.ENV, "here")
    assert cache.folder() == str(tmp_path / "here")
    for off in ("off", "OFF", " off "):
        monkeypatch.setenv(cache.ENV, off)
        assert cache.folder() is None


def _jax_cache_settings(env: dict) -> dict:
    """What `use_persistent_cache` returns and leaves in JAX's config, in a fresh process with `env`."""
    code = ("import json, jax; from jaxsmooth import compilation; path = compilation.use_persistent_cache(); "
            "print(json.dumps([path, jax.config.jax_compilation_cache_dir, "
            "jax.config.jax_persistent_cache_min_compile_time_secs]))")
    env = {k: v for k, v in os.environ.items()
           if k != cache.ENV and not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))} | env
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(zip(("returned", "jax_dir", "min_compile_s"), json.loads(done.stdout.splitlines()[-1])))


def test_use_persistent_cache_points_jax_at_the_folder_unless_off_or_jax_has_one(tmp_path):
    mine = str(tmp_path / "mine")
    on = _jax_cache_settings({cache.ENV: mine})
    assert on == {"returned": os.path.join(mine, "jax"), "jax_dir": os.path.join(mine, "jax"), "min_compile_s": 0.0}
    assert os.path.isdir(os.path.join(mine, "jax"))
    off = _jax_cache_settings({cache.ENV: "off", "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert off == {"returned": None, "jax_dir": None, "min_compile_s": 1.0}  # JAX's defaults, untouched
    assert not os.path.exists(tmp_path / "xdg")
    theirs = _jax_cache_settings({cache.ENV: mine, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")})
    assert theirs == {"returned": None, "jax_dir": str(tmp_path / "jax"), "min_compile_s": 1.0}


def test_a_cache_folder_that_cannot_be_made_is_one_error_naming_the_variable(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(cache.ENV, str(tmp_path / "file" / "cache"))
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)  # as in a new process (JAX's own folder would win)
    try:
        with pytest.raises(UserError, match=f"^{cache.ENV}: cannot make the cache folder"):
            compilation.use_persistent_cache()
        assert jax.config.jax_compilation_cache_dir is None  # refused before anything was set
        fails_with(certify.main, capsys, ["--checkpoint", str(tmp_path), "--out", str(tmp_path / "c.tsv")],
                   cache.ENV)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_a_second_sampler_of_the_same_program_takes_the_remembered_choice_untimed(folder, timings):
    chosen = _prepared()
    assert timings == [None]  # timed
    assert _remembered(folder) == [chosen]
    assert _prepared() == chosen
    assert timings == [None, [chosen]]  # compiled with the remembered set only


def test_another_program_is_timed_and_remembered_apart(folder, timings):
    _prepared()
    _prepared(chunk=40)  # other shapes
    _prepared(noise_kind="lattice")  # another draw
    assert timings == [None, None, None]
    assert len(_remembered(folder)) == 3


def test_the_remembered_choice_is_read_from_the_folder(folder, timings):
    chosen = _prepared()
    other = next(dict(o) for o in compilation.AUTO_CANDIDATES if dict(o) != chosen)
    (path,) = (folder / "xla_options").iterdir()
    path.write_text(json.dumps({"options": other}))  # as if another process had timed the other set faster
    assert _prepared() == other
    path.write_text(json.dumps({"options": {"xla_unknown_option": "1"}}))  # no candidate: timed again, rewritten
    timings.clear()
    assert _prepared() in [dict(o) for o in compilation.AUTO_CANDIDATES]
    assert timings == [None] and len(_remembered(folder)) == 1


def test_switched_off_every_sampler_times_and_nothing_is_written(tmp_path, monkeypatch, timings):
    monkeypatch.setenv(cache.ENV, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _prepared()
    _prepared()
    assert timings == [None, None]
    assert not os.listdir(tmp_path)


def _digits_in_a_new_process(folder, out) -> bool:
    """Loads the digits in a fresh process with the cache folder `folder`, saving its four arrays to `out`; whether
    that process imported scikit-learn."""
    code = ("import sys, numpy as np; from jaxsmooth.data import sources; "
            "np.savez(sys.argv[1], *sources._digits_arrays()); print('sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(out)], env=dict(os.environ, **{cache.ENV: str(folder)}),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {"True": True, "False": False}[done.stdout.split()[-1]]


def test_the_digits_split_is_kept_in_the_folder_and_read_back_without_scikit_learn(folder, tmp_path):
    split = sources._split_digits()
    assert _digits_in_a_new_process(folder, tmp_path / "first.npz")  # split, and kept
    (kept,) = (folder / "data").iterdir()
    assert not _digits_in_a_new_process(folder, tmp_path / "second.npz")
    for run in ("first", "second"):
        with np.load(tmp_path / f"{run}.npz") as f:
            arrays = [f[f"arr_{i}"] for i in range(4)]
        assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(arrays, split))
    kept.write_bytes(b"cut short")  # unreadable: split again, and kept again
    assert _digits_in_a_new_process(folder, tmp_path / "third.npz")
    assert not _digits_in_a_new_process(folder, tmp_path / "fourth.npz")


def test_bench_startup_refuses_bad_counts_and_a_failing_certify_in_one_line(tmp_path, capsys):
    from jaxsmooth import bench

    fails_with(bench.main, capsys, ["startup", "--workdir", str(tmp_path), "--rounds", "0"], "--rounds")
    line = fails_with(bench.main, capsys, ["startup", "--workdir", str(tmp_path), "--checkpoint",
                                           str(tmp_path / "nope")], "startup")
    assert f"--checkpoint {tmp_path / 'nope'} " in line
    assert " exited 2: error: --checkpoint: " in line  # the certify's own error line, passed on


def _certify(workdir, out, folder, *extra):
    """python -m jaxsmooth.certify in a fresh process with JAXSMOOTH_CACHE_DIR=folder; its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    env[cache.ENV] = str(folder)
    done = subprocess.run([sys.executable, "-m", "jaxsmooth.certify", "--config",
                           os.path.join(ROOT, "configs", "quickstart.py"), "--checkpoint", workdir, "--out", str(out)]
                          + CERTIFY + list(extra), env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _files(folder) -> dict:
    """{path: (size, mtime)} of every file under `folder`."""
    return {os.path.join(d, f): (os.stat(os.path.join(d, f)).st_size, os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.slow
def test_a_second_certify_process_compiles_and_times_nothing_and_writes_the_same_rows(untrained_model, tmp_path):
    folder = tmp_path / "cache"
    _certify(untrained_model, tmp_path / "first.tsv", folder)
    filled = _files(folder)
    assert any("/jax/" in f for f in filled) and len(_remembered(folder)) == 1
    _certify(untrained_model, tmp_path / "second.tsv", folder)
    assert _files(folder) == filled  # every executable read from JAX's cache, the option set from ours
    header, first = tsv_rows(tmp_path / "first.tsv")
    _, second = tsv_rows(tmp_path / "second.tsv")
    keep = [j for j, name in enumerate(header) if name != "time"]
    assert [[r[j] for j in keep] for r in second] == [[r[j] for j in keep] for r in first] and len(first) == 4
    options = [sidecar_settings(tmp_path / f"{run}.tsv", "certify")["xla_options"] for run in ("first", "second")]
    assert options[0] == options[1] == _remembered(folder)[0]


@pytest.mark.slow
def test_processes_take_process_0s_remembered_choice(untrained_model, tmp_path, monkeypatch):
    """Process 0 remembers a choice, process 1 (its own folder) none: neither times, both sample with process 0's."""
    from test_multiprocess import _launch

    runner = ("import os, sys; from jaxsmooth import certify; "
              "p = int(sys.argv[sys.argv.index('--process-id') + 1]); "
              f"os.environ['{cache.ENV}'] = os.environ['CACHES'].split(',')[p]; "
              "sys.exit(certify.main(sys.argv[1:]))")

    def launch(out, caches):
        monkeypatch.setenv("CACHES", ",".join(str(c) for c in caches))
        _launch(tmp_path, out, ["-c", runner, "--config", os.path.join(ROOT, "configs", "quickstart.py"),
                                "--checkpoint", untrained_model, "--out", str(tmp_path / f"{out}.tsv"),
                                "--config.certify.parallel=samples"] + CERTIFY)

    shared = tmp_path / "shared"
    launch("timed", [shared, shared])
    (path,) = (shared / "xla_options").iterdir()  # both processes remembered process 0's choice, under one key
    timed = json.loads(path.read_text())["options"]
    other = next(dict(o) for o in compilation.AUTO_CANDIDATES if dict(o) != timed)
    path.write_text(json.dumps({"options": other}))
    launch("remembered", [shared, tmp_path / "empty"])
    assert sidecar_settings(tmp_path / "remembered.tsv", "certify")["xla_options"] == other
    assert not (tmp_path / "empty" / "xla_options").exists()  # process 1 timed nothing, so remembered nothing
    header, timed_rows = tsv_rows(tmp_path / "timed.tsv")
    _, remembered_rows = tsv_rows(tmp_path / "remembered.tsv")
    counts = [header.index(c) for c in ("idx", "predict", "count_A", "count_B")]
    assert [[r[j] for j in counts] for r in remembered_rows] == [[r[j] for j in counts] for r in timed_rows]
