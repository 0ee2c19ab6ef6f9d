"""Optional dependencies: each serves one feature and comes with one extra of ``pip install 'jaxsmooth[EXTRA]'``.

The quick start (train and certify on the bundled digits) needs none of
them; ``pip install -e '.[test]'`` installs them all. A feature whose
dependency is missing raises one `UserError` that names the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from jaxsmooth.errors import UserError

# top-level module -> (its distribution on PyPI, the extra of pyproject.toml that installs it)
EXTRAS = {
    "tensorflow_datasets": ("tensorflow-datasets", "tfds"),
    "grain": ("grain", "grain"),
    "matplotlib": ("matplotlib", "plot"),
    "torch": ("torch", "torch"),
}


def require(module: str, *, field: str, purpose: str) -> ModuleType:
    """`module` (e.g. ``matplotlib.figure``) imported; if its package is not installed, a `UserError`.

    Args:
      module: a module of one of the `EXTRAS` packages.
      field, purpose: the error's field and what needed the package, e.g.
        ``("data.name", "the tensorflow-datasets source 'mnist'")``.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != top:  # a dependency of the package is missing: its own error says which
            raise
        distribution, extra = EXTRAS[top]
        raise UserError(field, f"{purpose} needs {distribution}, which is not installed: "
                               f"pip install 'jaxsmooth[{extra}]'") from None

