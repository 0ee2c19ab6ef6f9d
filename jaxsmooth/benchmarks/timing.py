"""Interleaved timing: every contender runs once per round, rounds repeat, medians are compared.

On a shared machine a slow spell hits all contenders of a round alike, so the
ratio of medians is steadier than any absolute figure.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Mapping


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    seconds: tuple[float, ...]  # one entry per round
    items_per_round: int  # examples (or samples) processed per round
    setup_s: float  # compile / warm-up time, excluded from `seconds`

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Items per second at the median round."""
        return self.items_per_round / self.median_s

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-round rates, a noise indicator."""
        rates = [self.items_per_round / s for s in self.seconds]
        return (max(rates) - min(rates)) / (self.items_per_round / self.median_s)


def interleave(contenders: Mapping[str, tuple[Callable[[], None], int, float]], rounds: int,
               on_round: Callable[[int], None] | None = None, warmup_rounds: int = 1,
               pause_s: float = 0.2) -> dict[str, Result]:
    """Times each contender's `run()` once per round, alternating, for `rounds` rounds.

    Args:
      contenders: name -> (run, items_per_round, setup_s); `run` must block until
        its work is done (``block_until_ready`` / ``torch`` sync) and be warmed up.
      rounds: number of rounds (the median is taken over them).
      on_round: called after each round with its number (progress bars).
      warmup_rounds: untimed rounds first (library caches, allocator, CPU frequency).
      pause_s: idle time before each timed run. Thread pools (PyTorch's OpenMP,
        XLA's Eigen) spin for a while after their work ends; on a machine with
        few cores that spinning would be charged to whichever contender runs next.
    """
    for _ in range(warmup_rounds):
        for run, _, _ in contenders.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        for name, (run, _, _) in contenders.items():
            time.sleep(pause_s)  # let the previous contender's worker threads stop spinning
            t0 = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - t0)
        if on_round is not None:
            on_round(r)
    return {name: Result(name, tuple(seconds[name]), items, setup)
            for name, (_, items, setup) in contenders.items()}
