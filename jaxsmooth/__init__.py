"""jaxsmooth: certified robustness by Gaussian smoothing, in JAX.

The Python API (`jaxsmooth.api`)::

    jaxsmooth.load(workdir) -> SmoothedModel        # .logits(x), .predict(x, ...), .certify(x, ...)
    jaxsmooth.api.certify(apply_fn, variables, x, sigma=..., ...) -> rows
    jaxsmooth.api.predict(apply_fn, variables, x, sigma=..., ...) -> rows

The command-line programs are ``python -m jaxsmooth.train | certify |
attack | analyze | convert | bench | report``; each module's ``write(...)``
(certify, attack) runs the same job from Python. Nothing here imports JAX
until it is used, so the CLIs report bad arguments at once.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("load", "SmoothedModel", "api"):
        import importlib

        api = importlib.import_module("jaxsmooth.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'jaxsmooth' has no attribute {name!r}")
