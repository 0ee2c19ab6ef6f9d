"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

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
