"""Attacking a dataset split batch by batch: the library side of ``python -m jaxsmooth.attack``.

`Settings` names an attack (``"pgd"``: the minimal distance of
`pgd_min_distance`; ``"ddn"``: DDN's distance) and its form (deterministic,
or smoothed with ``sigma``). `make_attack` jits it once, with the model's
parameters as arguments (not compiled constants), for a fixed batch size;
`run` feeds it the selected examples, padding the last batch by repeating
its last example so that the shape, and thus the compiled program, never
changes. It yields one row per example:

    idx label predict success distance time

``predict`` is the model's clean prediction (argmax of its eval-mode
logits). An example already adversarial at the clean input (the attack's own
criterion: misclassified, or the label outside the top k; in the smoothed
form, judged with ``num_noise`` draws) has success 1 and distance 0; one the
attack did not break has success 0 and distance inf.

Keys: the attack of example i uses the key `key` and the index i only (the
attacks fold the index in), so results do not depend on how examples are
batched, and a resumed run redoes an example exactly.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxsmooth.attacks.common import LOSSES, eval_logits, make_loss
from jaxsmooth.attacks.ddn import ddn
from jaxsmooth.attacks.pgd import pgd_min_distance
from jaxsmooth.errors import UserError

ATTACKS = ("pgd", "ddn")
COLUMNS = ["idx", "label", "predict", "success", "distance", "time"]
# Stream tag of the clean-input success check, apart from the attack's own step keys.
_CLEAN_STREAM = 2**31 - 3


@dataclasses.dataclass(frozen=True)
class Settings:
    """One attack configuration.

    attack: ``"pgd"`` (bisection `pgd_min_distance`) or ``"ddn"``.
    sigma: None for the deterministic form; the smoothed form's noise std otherwise.
    num_noise: draws per step in the smoothed form.
    loss: ``"ce"`` or ``"kl"``; topk: success when the label leaves the top k.
    steps: gradient steps (per bisection round for pgd).
    max_epsilon: pgd's search range [0, max_epsilon]; rounds: its bisection rounds.
    init_epsilon: DDN's starting norm.
    """

    attack: str = "pgd"
    sigma: float | None = None
    num_noise: int = 25
    loss: str = "ce"
    topk: int = 1
    steps: int = 20
    max_epsilon: float = 4.0
    rounds: int = 10
    init_epsilon: float = 1.0

    def check(self) -> "Settings":
        """Itself; raises `UserError` naming the first bad field (CLI spelling: num-noise, max-epsilon)."""
        if self.attack not in ATTACKS:
            raise UserError("attack", f"unknown attack {self.attack!r}; allowed: {', '.join(ATTACKS)}")
        if self.loss not in LOSSES:
            raise UserError("loss", f"unknown attack loss {self.loss!r}; allowed: {', '.join(LOSSES)}")
        for name, value in (("steps", self.steps), ("rounds", self.rounds), ("num-noise", self.num_noise),
                            ("topk", self.topk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(name, f"must be a positive integer, got {value!r}")
        for name, value in (("max-epsilon", self.max_epsilon), ("init-epsilon", self.init_epsilon)):
            if not (np.isfinite(value) and value > 0):
                raise UserError(name, f"must be a finite number > 0, got {value!r}")
        if self.sigma is not None and not (np.isfinite(self.sigma) and self.sigma > 0):
            raise UserError("sigma", f"must be > 0, got {self.sigma!r}")
        return self


def make_attack(apply: Callable, settings: Settings) -> Callable:
    """The jitted batch attack ``(params, model_state, images, labels, index, key) -> (predict, success, distance)``.

    images: [B, H, W, C] float32 in [0, 1]; labels, index: [B] int32; all
    three outputs [B] (int32, bool, float32). Compiles once per batch shape.
    """
    settings.check()

    def attack(params, model_state, images, labels, index, key):
        logits_fn = eval_logits(apply, params, model_state)
        loss = make_loss(logits_fn, loss=settings.loss, sigma=settings.sigma, num_noise=settings.num_noise,
                         topk=settings.topk)
        predict = jnp.argmax(logits_fn(images), axis=-1).astype(jnp.int32)
        clean_adversarial = loss.success(images, labels, jax.random.fold_in(key, _CLEAN_STREAM), index)
        if settings.attack == "pgd":
            result = pgd_min_distance(loss, images, labels, key, max_epsilon=settings.max_epsilon,
                                      steps=settings.steps, rounds=settings.rounds, index=index)
        else:
            result = ddn(loss, images, labels, key, steps=settings.steps, init_epsilon=settings.init_epsilon,
                         index=index)
        success = clean_adversarial | result.success
        distance = jnp.where(clean_adversarial, 0.0, result.distance)
        return predict, success, distance

    return jax.jit(attack)


def run(attack: Callable, params, model_state, split, indices: np.ndarray, key: jax.Array, *,
        batch: int) -> Iterator[dict[str, Any]]:
    """Attacks the examples `indices` of `split`, `batch` at a time, yielding rows (module docstring) in order.

    Each row also holds ``seconds``, this example's share of its batch's
    wall time, for progress displays (``time`` is the same as a
    ``datetime.timedelta`` string).
    """
    if batch < 1:
        raise UserError("batch", f"must be > 0, got {batch}")
    for start in range(0, len(indices), batch):
        idx = np.asarray(indices[start:start + batch], np.int64)
        images, labels = split.get(idx)
        count = len(idx)
        pad = batch - count
        x = np.divide(images, 255, dtype=np.float32)
        y = np.asarray(labels, np.int32)
        index = idx.astype(np.int32)
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            y = np.concatenate([y, np.repeat(y[-1:], pad)])
            index = np.concatenate([index, np.repeat(index[-1:], pad)])
        t0 = time.perf_counter()
        predict, success, distance = jax.device_get(attack(params, model_state, x, y, index, key))
        seconds = (time.perf_counter() - t0) / count
        for b in range(count):
            yield {"idx": int(idx[b]), "label": int(y[b]), "predict": int(predict[b]), "success": int(success[b]),
                   "distance": float(distance[b]), "time": str(datetime.timedelta(seconds=seconds)),
                   "seconds": seconds}
