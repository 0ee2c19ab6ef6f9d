"""Throughput benchmarks, measured side by side with PyTorch references in one process, and the paper reports.

`python -m jaxsmooth.bench` is the micro-benchmarks' command line (`train`,
`certify`, `scaling`, `inference`, `pipeline`, with the PyTorch reference
models of `torch_reference` and the interleaved timing of `timing`);
`python -m jaxsmooth.report` the papers' comparisons (`deterministic`,
`nal_report`, `sigma_report`).
"""
