"""Certification sampling on 1, 2, ..., D devices of one process: throughput and the cost of spreading one input.

For each device count k the engine (`certification.Sampler`, the mesh of the
first k devices) counts n noisy samples of one input of the model's shape
(random weights), with the n samples split over the k devices and the counts
``psum``-ed (``certify.parallel = samples``). Two timings per k, interleaved
over rounds:

- ``full``: n samples, one call; samples/s and the ratio to 1 device;
- ``one sample``: one sample per device (a sampler with chunk 1, n = k), a
  call that touches every device and computes almost nothing: its time,
  against the 1-device one, is the price of the spreading (the launch on k
  devices, the ``psum`` of the [inputs, K] counts, the transfer back), paid
  once per call in ``samples`` mode and never in ``examples`` mode.

On the CPU the "devices" are XLA's fake host devices
(``--xla_force_host_platform_device_count``) sharing the same cores, so
``full`` shows overhead, not speed-up; on accelerators each device is a chip.
`pod_estimate` turns a per-device rate and the spreading cost into what D
devices would do in either mode.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import numpy as np

from jaxsmooth import certification, models, parallel
from jaxsmooth.benchmarks.certify import SIGMA, _module, num_classes_of, random_inputs
from jaxsmooth.benchmarks.timing import Result, interleave
from jaxsmooth.benchmarks.train import input_shape_of


@dataclasses.dataclass(frozen=True)
class Row:
    devices: int
    full: Result  # n samples of one input
    one_sample: Result  # one sample per device


def benchmark(name: str, devices: Sequence[int], *, n: int = 10_000, chunk: int = 1000, rounds: int = 5,
              on_round: Callable[[int], None] | None = None) -> list[Row]:
    """One `Row` per device count (each at most ``jax.device_count()``)."""
    available = jax.devices()
    input_shape = tuple(input_shape_of(name))
    num_classes = num_classes_of(name)
    model = models.fold_batch_norm(models.split(_module(name, input_shape, num_classes)))
    x, index, key = random_inputs(1, input_shape), np.arange(1), jax.random.key(0)
    contenders = {}
    for k in devices:
        mesh = parallel.make_mesh(available[:k])
        sampler, tiny = (certification.Sampler(model.apply, model.params, model.model_state, input_shape=input_shape,
                                               num_classes=num_classes, inputs=1, chunk=c, mesh=mesh,
                                               compiler_options=None) for c in (chunk, 1))
        t0 = time.perf_counter()
        sampler(x, index, SIGMA, 1, key)
        setup = time.perf_counter() - t0
        tiny(x, index, SIGMA, k, key)
        contenders[f"full {k}"] = (lambda s=sampler: s(x, index, SIGMA, n, key), n, setup)
        contenders[f"one {k}"] = (lambda s=tiny, m=k: s(x, index, SIGMA, m, key), k, 0.0)
    results = interleave(contenders, rounds, on_round)
    return [Row(k, results[f"full {k}"], results[f"one {k}"]) for k in devices]


def markdown(rows: Sequence[Row]) -> str:
    first = rows[0]
    lines = ["| devices | samples/s (n per input) | vs 1 device | call of one sample per device, ms | "
             "spreading cost vs 1 device, ms | spread of rates |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.devices} | {r.full.rate:,.0f} | {r.full.rate / first.full.rate:.2f} | "
                     f"{r.one_sample.median_s * 1e3:.3f} | {spreading_cost(rows, r) * 1e3:+.3f} | "
                     f"{r.full.spread:.2f} |")
    return "\n".join(lines) + "\n"


def spreading_cost(rows: Sequence[Row], row: Row) -> float:
    """Seconds a call on `row.devices` devices costs beyond one on 1 device, computing nothing (>= 0)."""
    return max(row.one_sample.median_s - rows[0].one_sample.median_s, 0.0)


def pod_estimate(per_device_rate: float, devices: int, n: int, spread_cost_s: float, n0: int = 100) -> dict:
    """What `devices` chips at `per_device_rate` samples/s each would do on CERTIFY with n (+ n0) samples.

    ``samples`` mode: one input at a time over all chips, each input paying
    `spread_cost_s` (launch, psum, transfer) once per call (two calls: selection
    and estimation); ``examples`` mode: each chip certifies its own inputs at
    the one-chip rate, no collective at all.
    """
    per_input_one_chip = (n + n0) / per_device_rate
    samples_mode = per_input_one_chip / devices + 2 * spread_cost_s
    return {"seconds_per_input_samples_mode": samples_mode,
            "inputs_per_s_samples_mode": 1 / samples_mode,
            "inputs_per_s_examples_mode": devices / per_input_one_chip,
            "seconds_per_input_one_chip": per_input_one_chip}
