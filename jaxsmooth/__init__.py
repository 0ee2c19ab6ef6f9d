"""jaxsmooth: certified robustness by Gaussian smoothing, in JAX.

The Python API (`jaxsmooth.api`)::

    jaxsmooth.load(workdir) -> SmoothedModel        # .logits(x), .predict(x, ...), .certify(x, ...)
    jaxsmooth.certify(apply_fn, variables, x, sigma=..., ...) -> rows
    jaxsmooth.predict(apply_fn, variables, x, sigma=..., ...) -> rows

The command-line programs are ``python -m jaxsmooth.train | certify |
attack | analyze | convert | bench``. ``jaxsmooth.certify`` is both: the CLI's
module, and called as a function, `jaxsmooth.api.certify`. Nothing here
imports JAX until it is used, so the CLIs report bad arguments at once.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("load", "predict", "SmoothedModel"):
        from jaxsmooth import api

        return getattr(api, name)
    if name == "certify":
        import importlib

        return importlib.import_module("jaxsmooth.certify")  # a callable module: jaxsmooth.api.certify
    raise AttributeError(f"module 'jaxsmooth' has no attribute {name!r}")
