"""Throughput benchmarks, measured side by side with PyTorch references in one process.

`python -m jaxsmooth.bench` is the command line; this package holds the
measurements (`train`), the PyTorch reference models (`torch_reference`) and
the interleaved timing (`timing`).
"""
