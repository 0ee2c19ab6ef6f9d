"""Inference time per image: a deterministic smoothed model against stochastic PREDICT and CERTIFY.

Boot camp Table 2 and heat App. E compare the time to classify (and to
certify) one image with a deterministic Gaussian-averaged model (`heat`,
`bootcamp`: one forward pass; its certificate the L-bound of that pass's
softmax) with the stochastic smoothed classifier of Cohen et al. (PREDICT:
n noisy forward passes and a binomial test; CERTIFY: n0 selection and n
estimation samples). Images are handled one at a time, as a deployed
classifier sees them, each timing ending when the answer is on the host:

    deterministic classify: forward pass of one image, argmax
    deterministic certify:  the same pass, softmax, L-bound
    stochastic classify:    PREDICT, `n_predict` samples (Cohen et al.: 100)
    stochastic certify:     CERTIFY, `n0` + `n_certify` samples (100 + 100,000)

The sampling engine (`certification.Sampler`) draws batches of `batch`
samples; the stochastic timings are its full cost, samples and statistics.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsmooth import certification, models
from jaxsmooth.benchmarks.certify import SIGMA, _module, random_inputs

ROWS = ("deterministic classify", "deterministic certify", "stochastic classify", "stochastic certify")


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median seconds per image of each `ROWS` entry over rounds, and what produced them."""

    seconds: dict[str, float]
    samples: dict[str, int]  # forward samples per image
    images: dict[str, int]  # images timed per round


def _per_image(fn, images: np.ndarray, rounds: int) -> float:
    """Median over rounds of the mean seconds per image of ``fn(x)`` over `images`."""
    fn(images[:1])  # compile
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(len(images)):
            fn(images[i:i + 1])
        times.append((time.perf_counter() - t0) / len(images))
    return statistics.median(times)


def benchmark(name: str, input_shape, *, num_classes: int = 10, width: int = 0, images: int = 20,
              certify_images: int = 3, n_predict: int = 100, n0: int = 100, n_certify: int = 100_000,
              batch: int = 1000, rounds: int = 3, alpha: float = 0.001) -> Timing:
    """Times the four ways of answering for one image of a `name` model (random weights: time does not depend on them).

    Args:
      images: images per round for the three fast rows.
      certify_images: images per round for stochastic CERTIFY (seconds each on a CPU).
    """
    model = models.fold_batch_norm(models.split(_module(name, tuple(input_shape), num_classes, "float32", width)))
    x = random_inputs(max(images, certify_images), tuple(input_shape))

    @jax.jit
    def probs(variables, batch_x):
        logits, _ = model.apply(*variables, batch_x, train=False)
        return jax.nn.softmax(logits, -1)

    variables = jax.device_put((model.params, model.model_state))
    classify = lambda b: int(np.argmax(np.asarray(probs(variables, jnp.asarray(b)))))
    certify_det = lambda b: certification.l_bound(np.asarray(probs(variables, jnp.asarray(b)))[0], SIGMA)
    sampler = lambda chunk: certification.Sampler(model.apply, model.params, model.model_state,
                                                  input_shape=tuple(input_shape), num_classes=num_classes, inputs=1,
                                                  chunk=chunk, compiler_options="auto")
    predict_sampler, sampler = sampler(min(batch, n_predict)), sampler(batch)  # PREDICT: one pass of n samples
    key, index = jax.random.key(0), np.zeros(1, np.int64)
    settings = certification.Settings(n0=n0, n=n_certify, alpha=alpha)
    predict = lambda b: certification.predict_batch(predict_sampler, b, index, SIGMA, n_predict, alpha, key)
    certify = lambda b: certification.certify_batch(sampler, b, index, SIGMA, settings, key)
    seconds = {
        "deterministic classify": _per_image(classify, x[:images], rounds),
        "deterministic certify": _per_image(certify_det, x[:images], rounds),
        "stochastic classify": _per_image(predict, x[:images], rounds),
        "stochastic certify": _per_image(certify, x[:certify_images], rounds),
    }
    samples = dict(zip(ROWS, (1, 1, n_predict, n0 + n_certify)))
    counts = dict(zip(ROWS, (images, images, images, certify_images)))
    return Timing(seconds, samples, counts)


def markdown(timing: Timing, device: str) -> str:
    """Two rows (classify, certify), deterministic and stochastic seconds per image, and their ratio."""
    s = timing.seconds
    lines = [f"| {device} | deterministic (1 forward pass) s/image | stochastic s/image | stochastic / deterministic |",
             "|---|---:|---:|---:|"]
    for what, n in (("classify", timing.samples["stochastic classify"]),
                    ("certify", timing.samples["stochastic certify"])):
        det, sto = s[f"deterministic {what}"], s[f"stochastic {what}"]
        label = "classify (PREDICT, n = {:,})".format(n) if what == "classify" else f"certify (CERTIFY, n0 + n = {n:,})"
        lines.append(f"| {label} | {det:.6f} | {sto:.6f} | {sto / det:,.0f}x |")
    return "\n".join(lines) + "\n"
