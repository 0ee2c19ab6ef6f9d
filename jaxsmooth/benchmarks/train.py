"""Train-step throughput: the jaxsmooth step against a PyTorch reference of the same architecture.

Both sides do one Gaussian-noise SGD step (noise, forward, cross-entropy,
backward, momentum + weight-decay update) on random inputs of the model's
shape; JAX's compile time is reported apart from its step time.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsmooth import models, objectives, parallel, trainer
from jaxsmooth.benchmarks.timing import Result, interleave

INPUT_SHAPES = {"cnn": (28, 28, 1), "resnet50": (224, 224, 3)}  # the rest: CIFAR's 32x32x3
SIGMA = 0.25


def input_shape_of(name: str) -> tuple[int, int, int]:
    return INPUT_SHAPES.get(name, (32, 32, 3))


def jax_contender(name: str, batch: int, input_shape, *, dtype: str = "float32", steps: int = 5,
                  num_classes: int = 10, width: int = 0,
                  cpu_options: bool = True) -> tuple[Callable[[], None], int, float]:
    """A warmed-up ``run()`` doing `steps` train steps, the examples it covers, and its compile seconds."""
    c = input_shape[-1]
    module = models.create(name, num_classes=num_classes, input_shape=tuple(input_shape), mean=(0.5,) * c,
                           std=(0.25,) * c, dtype=dtype, width=width, seed=0)
    model = models.split(module)
    cfg = ml_collections.ConfigDict({"objective": {"name": "gaussian", "sigma": SIGMA}})
    loss_fn = objectives.build(cfg, model.apply)
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
    state = trainer.create_train_state(model, tx)
    rng = np.random.default_rng(0)
    data = {"image": jnp.asarray(rng.uniform(size=(batch, *input_shape)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32),
            "index": jnp.arange(batch, dtype=jnp.int32)}
    key = jax.random.key(0)
    t0 = time.perf_counter()
    step = parallel.compile(jax.jit(trainer.make_train_step(loss_fn, tx), donate_argnums=0), state, data, key,
                            cpu_options=cpu_options)
    setup_s = time.perf_counter() - t0
    holder = [step(state, data, key)[0]]
    jax.block_until_ready(holder[0])

    def run():
        s = holder[0]
        for _ in range(steps):
            s, metrics = step(s, data, key)
        jax.block_until_ready((s, metrics))
        holder[0] = s

    return run, steps * batch, setup_s


def torch_contenders(name: str, batch: int, input_shape, *, steps: int = 5, num_classes: int = 10,
                     width: int = 0, hidden: int = 0) -> dict[str, tuple[Callable[[], None], int, float]]:
    """PyTorch reference steps (NCHW, and channels_last), or {} without torch or a reference model."""
    try:
        import torch
        from jaxsmooth.benchmarks import torch_reference
    except ImportError:
        return {}
    out = {}
    h, w, c = input_shape
    for label, channels_last in (("torch f32", False), ("torch f32 channels_last", True)):
        torch.manual_seed(0)
        module = torch_reference.create(name, input_shape, num_classes, width=width, hidden=hidden)
        if module is None:
            return {}
        step = torch_reference.make_train_step(module, sigma=SIGMA, channels_last=channels_last)
        x = torch.rand(batch, c, h, w)
        y = torch.randint(0, num_classes, (batch,))
        t0 = time.perf_counter()
        step(x, y).item()
        setup_s = time.perf_counter() - t0

        def run(step=step, x=x, y=y):
            for _ in range(steps):
                loss = step(x, y)
            loss.item()

        out[label] = (run, steps * batch, setup_s)
    return out


def benchmark(name: str, batch: int, *, input_shape=None, dtypes=("float32",), steps: int = 5, rounds: int = 7,
              with_torch: bool = True, xla_defaults: bool = False,
              on_round: Callable[[int], None] | None = None) -> dict[str, Result]:
    """Interleaved medians of every contender (JAX per dtype, then the PyTorch references).

    ``xla_defaults`` adds the float32 JAX step compiled without `parallel.CPU_COMPILER_OPTIONS`.
    """
    input_shape = tuple(input_shape or input_shape_of(name))
    width, hidden = models.cnn_sizes(0) if name == "cnn" else (0, 0)
    contenders = {f"jax {d}": jax_contender(name, batch, input_shape, dtype=d, steps=steps) for d in dtypes}
    if xla_defaults:
        contenders["jax float32, XLA default options"] = jax_contender(name, batch, input_shape, steps=steps,
                                                                       cpu_options=False)
    if with_torch:
        contenders.update(torch_contenders(name, batch, input_shape, steps=steps, width=width, hidden=hidden))
    return interleave(contenders, rounds, on_round)
