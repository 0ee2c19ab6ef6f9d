"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os
import subprocess
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No cache folder (jaxsmooth.cache) for the suite: every test compiles and times the XLA option sets
# as a first run does, whatever ran before it, and nothing is written to the user's ~/.cache. The child processes
# that tests start inherit this; tests/test_compilation_cache.py points the folder at temporary ones.
os.environ["JAXSMOOTH_CACHE_DIR"] = "off"

import jax  # noqa: E402  (after the flags)
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, "tests expect 8 fake CPU devices from tests/conftest.py"
    return devs



@pytest.fixture(scope="module")
def one_torch_thread():
    """PyTorch on one thread in a module that uses it (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    its idle threads spin, which on a busy 2-core machine costs more than they give."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _files(folder: str) -> dict:
    """{path under `folder`: (size, mtime in ns)} of every file below it."""
    out = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            info = os.stat(os.path.join(parent, name))
            out[os.path.relpath(os.path.join(parent, name), folder)] = (info.st_size, info.st_mtime_ns)
    return out


def _read_only(workdir: str, value=None):
    """Yields `value` (default: `workdir`) to the session's tests, then checks that none of them wrote into
    `workdir`."""
    files = _files(workdir)
    yield workdir if value is None else value
    assert _files(workdir) == files, f"a test wrote into the shared workdir {workdir}; copy it before writing"


def one_device_env() -> dict:
    """The environment of a subprocess that runs on the one real CPU device, as a user's command does (the 8 fake
    devices of this process would take about 5 times as long)."""
    return dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


@pytest.fixture(scope="session")
def quickstart_model(tmp_path_factory):
    """The README's quick start, ``python -m jaxsmooth.train --config configs/quickstart.py``, trained once per session
    in a one-device subprocess: (workdir, its stdout). The suites that start from it (reports' `gaussian` runs)
    copy the workdir into theirs, where they resume it instead of training it again."""
    workdir = str(tmp_path_factory.mktemp("quickstart") / "quickstart")
    out = subprocess.run([sys.executable, "-m", "jaxsmooth.train", "--config", os.path.join(ROOT, "configs",
                          "quickstart.py"), "--workdir", workdir, "--no-progress"], capture_output=True, text=True,
                         env=one_device_env(), cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    yield from _read_only(workdir, (workdir, out.stdout))


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """The quick-start model at width 4, one epoch (helpers.SMALL), trained by the train CLI once per session: its
    workdir, a folder named `run`. Tests only read it; one that writes into a workdir copies it first
    (shutil.copytree). Tests that use it are end to end: marked slow."""
    from helpers import train_small

    yield from _read_only(train_small(tmp_path_factory, "small_model"))


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """helpers.quick_config() trained by `trainer.train_and_evaluate` on all 8 devices (its default mesh), once per
    session: (workdir, final state, summary). Tests read it; one that trains into a workdir copies it first."""
    from helpers import quick_config

    from jaxsmooth import trainer

    workdir = str(tmp_path_factory.mktemp("quick_run") / "run")
    state, summary = trainer.train_and_evaluate(quick_config(), workdir)
    yield from _read_only(workdir, (workdir, state, summary))


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory):
    """helpers.quick_config()'s model (the quick-start model at width 4) with its initial parameters, written as a
    workdir in seconds: for tests whose facts do not depend on the weights (a refused input, the XLA options)."""
    from helpers import quick_config

    from jaxsmooth import checkpoint, trainer

    config = quick_config()
    run = trainer.build_run(config)
    path = str(tmp_path_factory.mktemp("untrained_model") / "run")
    params, model_state = jax.device_get((run.model.params, run.model.model_state))
    checkpoint.write_workdir(path, checkpoint.model_metadata(config, run.dataset), params, model_state, config)
    yield from _read_only(path)
