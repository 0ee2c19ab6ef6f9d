"""The benchmark's PyTorch references are the same architectures as the jaxsmooth models."""

import numpy as np
import pytest

from jaxsmooth import models

from jaxsmooth.benchmarks import timing


@pytest.mark.parametrize("name, shape", [("cnn", (28, 28, 1)), ("cnn", (8, 8, 1)), ("resnet20", (32, 32, 3)),
                                         ("resnet110", (32, 32, 3))])
def test_reference_has_the_same_parameter_count(name, shape):
    pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[torch]')")
    from jaxsmooth.benchmarks import torch_reference

    width, hidden = models.cnn_sizes(0)
    reference = torch_reference.create(name, shape, 10, width=width, hidden=hidden)
    ours = models.split(models.create(name, num_classes=10, input_shape=shape, mean=(0.5,) * shape[-1],
                                      std=(0.25,) * shape[-1]))
    assert sum(p.numel() for p in reference.parameters()) == models.num_params(ours.params)


def test_interleave_reports_medians_of_rounds():
    calls = []
    results = timing.interleave({"a": (lambda: calls.append("a"), 10, 0.0), "b": (lambda: calls.append("b"), 20, 1.0)},
                                rounds=3, warmup_rounds=1, pause_s=0.0)
    assert calls == ["a", "b"] * 4  # one warm-up round, then alternating rounds
    assert len(results["a"].seconds) == 3 and results["b"].setup_s == 1.0
    assert results["b"].rate == pytest.approx(20 / np.median(results["b"].seconds))
