"""jaxsmooth: certified robustness by Gaussian smoothing, in JAX."""

__version__ = "0.1.0"
