"""Attacking a dataset split batch by batch: the library side of ``python -m jaxsmooth.attack``.

`Settings` names an attack (``"pgd"``: the minimal distance of
`pgd_min_distance`; ``"ddn"``: DDN's distance) and its form (deterministic,
or smoothed with ``sigma``). `make_attack` jits it once, with the model's
parameters as arguments (not compiled constants), for a fixed batch size;
`attack_rows` feeds it the selected examples, padding the last batch by repeating
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

Accuracy under ell_2 PGD over a grid of radii (nal §5, Fig. 1):
`make_accuracy` jits, once per batch shape, the deterministic PGD of
`jaxsmooth.attacks.pgd` with the radius eps a traced argument (one program
for every radius), ``steps`` iterations (nal: K_attack = 20) of step size
2 eps / steps, the cross-entropy loss, from the clean point, on the base
classifier. Per example it returns whether the attacked point x_adv is
still classified correctly (argmax of the eval-mode logits == label), and
whether x_adv + z is, z ~ N(0, sigma^2 I) the "test-time noise" of nal
Fig. 1: one draw per example (the paper adds noise to the test input once;
it does not take a majority vote), ``sigma * normal(fold_in(fold_in(key,
TEST_NOISE_STREAM), idx))``, the same draw at every radius, not clipped
to [0, 1] (noise lives in pixel space, as in certification). The attack
itself never sees the noise. At radius 0 PGD does not move: the two
columns are the clean and the noisy accuracy. `accuracy_rows` yields one
row per example and radius:

    idx label radius correct correct_noisy time
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxsmooth import noise, values
from jaxsmooth.attacks.common import LOSSES, eval_logits, make_loss
from jaxsmooth.attacks.ddn import ddn
from jaxsmooth.attacks.pgd import pgd, pgd_min_distance
from jaxsmooth.errors import UserError

ATTACKS = ("pgd", "ddn")
# Stream tag of the clean-input success check, apart from the attack's own step keys.
_CLEAN_STREAM = 2**31 - 3
# Stream tag of the test-time noise of `make_accuracy`, apart from the attack's step keys.
TEST_NOISE_STREAM = 2**31 - 4


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


def _padded_batch(split, idx: np.ndarray, batch: int):
    """(images in [0, 1], labels, int32 indices) of `idx`, padded to `batch` by repeating the last example,
    so that the jitted attack sees one shape."""
    images, labels = split.get(idx)
    pad = batch - len(idx)
    x = np.divide(images, 255, dtype=np.float32)
    y = np.asarray(labels, np.int32)
    index = idx.astype(np.int32)
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        y = np.concatenate([y, np.repeat(y[-1:], pad)])
        index = np.concatenate([index, np.repeat(index[-1:], pad)])
    return x, y, index


def attack_rows(attack: Callable, params, model_state, split, indices: np.ndarray, key: jax.Array, *,
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
        count = len(idx)
        x, y, index = _padded_batch(split, idx, batch)
        t0 = time.perf_counter()
        predict, success, distance = jax.device_get(attack(params, model_state, x, y, index, key))
        seconds = (time.perf_counter() - t0) / count
        for b in range(count):
            yield {"idx": int(idx[b]), "label": int(y[b]), "predict": int(predict[b]), "success": int(success[b]),
                   "distance": float(distance[b]), "time": str(datetime.timedelta(seconds=seconds)),
                   "seconds": seconds}


def check_accuracy_settings(steps, test_noise_sigma) -> None:
    """Raises `UserError` ("steps", "test-noise-sigma") unless steps >= 1 is an int and sigma a finite number > 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError("steps", f"must be a positive integer, got {steps!r}")
    if isinstance(test_noise_sigma, bool) or not isinstance(test_noise_sigma, (int, float)) or not (
            np.isfinite(test_noise_sigma) and test_noise_sigma > 0):
        raise UserError("test-noise-sigma", f"must be a finite number > 0, got {test_noise_sigma!r}")


def make_accuracy(apply: Callable, *, test_noise_sigma, steps: int = 20) -> Callable:
    """The jitted ``(params, model_state, images, labels, index, radius, key) -> (correct, correct_noisy)``.

    Deterministic ell_2 PGD at radius `radius` (a traced float32 scalar >= 0:
    one compilation for every radius) with `steps` steps of size 2 radius /
    steps and the cross-entropy loss (nal §5), then the two checks of the
    module docstring. images: [B, H, W, C] float32 in [0, 1]; labels, index:
    [B] int32; outputs [B] bool each. Compiles once per batch shape.

    Args:
      test_noise_sigma: sigma of the test-time noise, > 0.
      steps: PGD iterations, K_attack, >= 1.
    """
    check_accuracy_settings(steps, test_noise_sigma)
    sigma = float(test_noise_sigma)

    def accuracy(params, model_state, images, labels, index, radius, key):
        logits_fn = eval_logits(apply, params, model_state)
        radius = jnp.asarray(radius, jnp.float32)
        result = pgd(make_loss(logits_fn, loss="ce"), images, labels, key, epsilon=radius, steps=steps,
                     step_size=2.0 * radius / steps, index=index)
        x = result.adversarial
        correct = jnp.argmax(logits_fn(x), axis=-1) == labels
        z = noise.isotropic(jax.random.fold_in(key, TEST_NOISE_STREAM), index, x.shape[1:], sigma, x.dtype)
        correct_noisy = jnp.argmax(logits_fn(x + z), axis=-1) == labels
        return correct, correct_noisy

    return jax.jit(accuracy)


def accuracy_under_pgd(apply: Callable, params, model_state, images, labels, radii, key: jax.Array, *,
                       test_noise_sigma, steps: int = 20, index=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-example correctness under ell_2 PGD at each radius, without and with test-time noise (nal §5).

    A convenience over `make_accuracy` for arrays in memory (one batch).

    Args:
      apply: the model's pure apply function.
      images: [B, H, W, C] float32 in [0, 1]; labels: [B] int; index: [B] global indices (default arange(B)).
      radii: the grid, numbers >= 0.
      key: the attack key (the CLI: ``noise.attack_key(noise.root_key(seed))``).
    Returns:
      (correct, correct_noisy), each [R, B] bool numpy arrays, row r for radii[r].
    """
    radii = values.radii(radii)
    fn = make_accuracy(apply, test_noise_sigma=test_noise_sigma, steps=steps)
    images = jnp.asarray(images, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    index = jnp.arange(images.shape[0], dtype=jnp.int32) if index is None else jnp.asarray(index, jnp.int32)
    out = [jax.device_get(fn(params, model_state, images, labels, index, np.float32(r), key)) for r in radii]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def accuracy_rows(accuracy: Callable, params, model_state, split, indices: np.ndarray, radii, key: jax.Array, *,
                 batch: int, done=frozenset()) -> Iterator[dict[str, Any]]:
    """Evaluates `accuracy` (from `make_accuracy`) on the examples `indices` of `split` at each radius.

    Batches of `batch` examples (the last padded by repeating its last
    example, so the program never recompiles); within a batch, the rows of
    the first radius, then the next. Pairs ``(idx, radius)`` in `done` are
    skipped (a resumed run); a batch's radius whose pairs are all done is not
    computed. Rows hold the columns of `results.ACCURACY` and ``seconds``, this row's
    share of its batch's wall time.
    """
    if batch < 1:
        raise UserError("batch", f"must be > 0, got {batch}")
    radii = values.radii(radii)
    done = set(done)
    indices = np.asarray([i for i in indices if any((int(i), r) not in done for r in radii)], np.int64)
    for start in range(0, len(indices), batch):
        idx = np.asarray(indices[start:start + batch], np.int64)
        count = len(idx)
        x, y, index = _padded_batch(split, idx, batch)
        for radius in radii:
            todo = [b for b in range(count) if (int(idx[b]), radius) not in done]
            if not todo:
                continue
            t0 = time.perf_counter()
            correct, correct_noisy = jax.device_get(
                accuracy(params, model_state, x, y, index, np.float32(radius), key))
            seconds = (time.perf_counter() - t0) / count
            for b in todo:
                yield {"idx": int(idx[b]), "label": int(y[b]), "radius": radius, "correct": int(correct[b]),
                       "correct_noisy": int(correct_noisy[b]), "time": str(datetime.timedelta(seconds=seconds)),
                       "seconds": seconds}
