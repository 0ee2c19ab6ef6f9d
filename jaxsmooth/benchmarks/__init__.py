"""Throughput benchmarks, measured side by side with PyTorch references in one process, and the paper reports.

`python -m jaxsmooth.bench` is the micro-benchmarks' command line (`train`,
`certify`, `scaling`, `inference`, `pipeline`, with the PyTorch reference
models of `torch_reference` and the interleaved timing of `timing`);
`python -m jaxsmooth.report` the papers' comparisons (`deterministic`,
`nal_report`, `sigma_report`).
"""


def machine() -> str:
    """The machine a figure was measured on, as the benchmarks print it: the first device's kind (a GPU's name as
    nvidia-smi gives it, or cpu), the CPU's model name as lscpu gives it, the CPU count and jax's version.

    Imports jax when called, so that a benchmark may set its XLA flags first.
    """
    import os

    import jax

    from jaxsmooth import compilation

    return f"{jax.devices()[0].device_kind}, {compilation.host_cpu()} x {os.cpu_count()} CPUs, jax {jax.__version__}"
