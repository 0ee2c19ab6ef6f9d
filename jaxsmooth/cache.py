"""The cache folder: what a process keeps so that the next one need not redo it.

The folder is ``$JAXSMOOTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxsmooth``,
else ``~/.cache/jaxsmooth``; ``JAXSMOOTH_CACHE_DIR=off`` switches it off. It
holds

- ``jax/``: JAX's persistent compilation cache (`compilation.use_persistent_cache`);
- ``xla_options/``: the XLA:CPU option set timed for a program on a machine
  (`compilation.compile_remembered`);
- ``data/``: the digits data set's fixed split (`data.sources`), so that a
  later process does without scikit-learn's import.

Anything in it may be deleted at any time: the next process redoes it.
Processes may share it: every file is written whole (beside its name, then
renamed). No JAX here, so the data layer can ask where the folder is.
"""

from __future__ import annotations

import os
import socket

ENV = "JAXSMOOTH_CACHE_DIR"  # a folder, or OFF
OFF = "off"


def folder() -> str | None:
    """The cache folder (module docstring) as an absolute path; None when ``JAXSMOOTH_CACHE_DIR=off``."""
    given = os.environ.get(ENV, "")
    if given.strip().lower() == OFF:
        return None
    if given:
        return os.path.abspath(os.path.expanduser(given))
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # unset or relative: the XDG default
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxsmooth")


def path(*parts: str) -> str | None:
    """``folder()/parts...``; None when the cache is off."""
    root = folder()
    return None if root is None else os.path.join(root, *parts)


def write_whole(target: str | None, data: bytes) -> None:
    """Writes `data` to `target` whole: beside it, then renamed over it, so that a reader in another process sees
    the old file or the new one. A folder that cannot be written leaves it unwritten (the next process redoes it)."""
    if target is None:
        return
    scratch = f"{target}.{socket.gethostname()}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(scratch, "wb") as f:
            f.write(data)
        os.replace(scratch, target)
    except OSError:
        pass
