"""The result files jaxsmooth writes, each defined once: certify, predict, distributional, attack, attack-accuracy.

A certify or predict row is built here from an `Outcome`, the record of one
example that both certification paths produce (fixed n:
`certification.certify_batch` / `predict_batch`; sequential:
`certification.batching`), as do the replays of ``bench sequential``:
each column's value is the function next to its name. Adding a column is
one `Column` line in `CERTIFY` (name, type, function of the Outcome, the
feature it comes with); every path then writes it and every reader types
it. Distributional, attack and accuracy rows are built by their programs
(`certification.distributional.distributional_rows`, `attacks.runner`); their columns are
defined here all the same. NumPy and the standard library only.
"""

from __future__ import annotations

import dataclasses
import datetime

import numpy as np

from jaxsmooth.errors import UserError
from jaxsmooth.results.schema import (BINARY, CLASS, DISTANCE, FINITE_RADIUS, FLOAT, INT, RADIUS, STR, TIME, Column,
                                      Schema, model_label, one_of)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One example's CERTIFY or PREDICT, from which `CERTIFY.row` / `PREDICT.row` build its TSV row.

    Attributes:
      index: the example's global index (it picks the noise); label: its true class, or None.
      predict: the smoothed classifier's class, -1 where it abstains.
      count_a, count_b: certify: the candidate's estimation count and the largest other one;
        predict: the two largest counts.
      sigma: the noise level, a scalar or per-pixel [H, W, C] array.
      seconds: this example's share of the wall time of the calls it took part in.
      samples: the noisy samples it took (selection included).
      pa_lower, radius: certify: p_A's lower bound and the certified radius (0 on abstain).
      pvalue: predict: the binomial test's p-value.
      mean_softmax: [K] the mean softmax of the estimation samples, or None (no L-bound).
      clean: [K] the softmax of one noise-free forward pass, or None.
      topk_radius: the top-k radius of the true class, or None (no top-k).
      n_used: a sequential run's samples, selection included; None for fixed n.
    """

    index: int
    label: int | None
    predict: int
    count_a: int
    count_b: int
    sigma: float | np.ndarray
    seconds: float
    samples: int
    pa_lower: float | None = None
    radius: float | None = None
    pvalue: float | None = None
    mean_softmax: np.ndarray | None = None
    clean: np.ndarray | None = None
    topk_radius: float | None = None
    n_used: int | None = None

    @property
    def features(self) -> frozenset[str]:
        """The optional parts this outcome has, which decide the columns of its row (`Column.when`)."""
        present = {"label": self.label is not None, "softmax": self.mean_softmax is not None,
                   "clean": self.clean is not None, "topk": self.topk_radius is not None,
                   "anisotropic": np.ndim(self.sigma) > 0, "sequential": self.n_used is not None}
        return frozenset(name for name, there in present.items() if there)


def _bounds():
    # scipy's statistics, imported where a row is built (during certification): analysis never loads them
    from jaxsmooth.certification import bounds

    return bounds


def _lbound(probabilities, sigma) -> float:
    return float(_bounds().l_bound(probabilities, np.asarray(sigma, np.float64)))


def _area(o: Outcome) -> float:
    return _bounds().certified_area(o.pa_lower, np.asarray(o.sigma, np.float64))


ALPHA_NOTE = ("alpha holds per example (each row's certificate fails with probability <= alpha), "
              "not jointly over the rows")
# Settings whose change makes an existing file's rows incomparable with new ones.
CERTIFY_IDENTITY = ("mode", "noise", "sigma", "sigma_file", "sigma_from", "sigma_from_step", "n0", "n", "alpha",
                    "candidate", "topk", "seed", "dtype", "checkpoint_step", "model", "dataset", "split", "skip",
                    "max", "batch", "inputs", "sequential", "radii", "tolerance", "futility", "looks", "look_alphas",
                    "shard", "shards", "wrapper", "wrapper_step", "wrapper_kind")
# What a file written before a field existed used (sequential files before futility was recorded: 0.01 in both modes).
CERTIFY_DEFAULTS = {"noise": "gaussian", "futility": 0.01}

# The columns certify and predict rows share.
IDX = Column("idx", INT, lambda o: o.index, required=True)
LABEL = Column("label", INT, lambda o: o.label, when="label", required=True)
PREDICTION = Column("predict", INT, lambda o: o.predict, required=True, check=CLASS)
CORRECT = Column("correct", INT, lambda o: int(o.predict == o.label), when="label", required=True, check=BINARY)
ELAPSED = Column("time", TIME, lambda o: str(datetime.timedelta(seconds=o.seconds)), required=True)
COUNT_A, COUNT_B = Column("count_A", INT, lambda o: o.count_a), Column("count_B", INT, lambda o: o.count_b)

CERTIFY = Schema(
    kind="certify", program="certify", mode="certify", what="a certify TSV", foreign=True,
    identity=CERTIFY_IDENTITY, defaults=CERTIFY_DEFAULTS, notes=(ALPHA_NOTE,),
    columns=(  # locuslab/smoothing's six first, so that its analysis scripts read our files
        IDX, LABEL, PREDICTION,
        Column("radius", FLOAT, lambda o: o.radius, required=True, check=RADIUS),
        CORRECT, ELAPSED,
        Column("pA_lower", FLOAT, lambda o: o.pa_lower),
        COUNT_A, COUNT_B,
        Column("lbound_mc", FLOAT, lambda o: _lbound(o.mean_softmax, o.sigma), when="softmax"),
        Column("lbound_model", FLOAT, lambda o: _lbound(o.clean, o.sigma), when="clean"),
        Column("topk_radius", FLOAT, lambda o: o.topk_radius, when="topk", check=RADIUS),
        Column("topk_correct", INT, lambda o: int(o.topk_radius > 0), when="topk", check=BINARY),
        Column("area_objective", FLOAT, _area, when="anisotropic"),
        Column("n_used", INT, lambda o: o.n_used, when="sequential"),
    ))

PREDICT = Schema(
    kind="predict", program="certify", mode="predict", what="a predict TSV", foreign=True,
    identity=CERTIFY_IDENTITY, defaults=CERTIFY_DEFAULTS, notes=(ALPHA_NOTE,),
    columns=(
        IDX, LABEL, PREDICTION, CORRECT, ELAPSED, COUNT_A, COUNT_B,
        Column("pvalue", FLOAT, lambda o: o.pvalue),
        Column("clean", INT, lambda o: int(np.argmax(o.clean)), when="clean"),  # one noise-free pass's class
    ))

KINDS = ("certificate", "empirical")  # a distributional row's: the certificate's gammas, then the empirical ones
DISTRIBUTIONAL = Schema(
    kind="distributional", program="certify", mode="distributional", what="a distributional TSV",
    identity=("mode", "gammas", "gamma_adv", "sigma", "num_draws", "ascent_steps", "ascent_lr", "seed", "dtype",
              "checkpoint_step", "model", "dataset", "split", "skip", "max"),
    notes=("phi, cost, loss: means over --num-draws fresh noise draws at the ascent's x_K (independent of "
           "the ascent's draws); certificate(rho) = min over the certificate gammas of gamma rho + mean phi",),
    unique=("idx", "kind", "gamma"),
    rows_per_example=lambda settings: len(settings["gammas"]) + len(settings["gamma_adv"]),
    columns=tuple(Column(name, kind, required=True, check=one_of(KINDS) if name == "kind" else None)
                  for name, kind in (("idx", INT), ("label", INT), ("kind", STR), ("gamma", FLOAT), ("phi", FLOAT),
                                     ("cost", FLOAT), ("loss", FLOAT), ("last_step", FLOAT), ("time", TIME))))

ATTACKS = ("pgd", "ddn")


def _check_attack(path: str, settings: dict, lines, columns: dict) -> None:
    """The settings name an attack; a distance is finite exactly where the attack succeeded."""
    if settings.get("attack") not in ATTACKS:
        raise UserError(f"{path}:1", f"the settings must be a JSON object with \"attack\" one of {', '.join(ATTACKS)}")
    bad = (columns["success"] == 1) != np.isfinite(columns["distance"])
    if np.any(bad):
        i = int(np.argmax(bad))
        raise UserError(f"{path}:{lines[i]}", f"distance {columns['distance'][i]} disagrees with success (inf iff 0)")


ATTACK = Schema(
    kind="attack", program="attack", mode=None, what="an attack TSV", label=model_label, check=_check_attack,
    identity=("attack", "smoothed", "sigma", "num_noise", "loss", "topk", "steps", "max_epsilon", "rounds",
              "init_epsilon", "seed", "dtype", "checkpoint_step", "model", "dataset", "split", "skip", "max"),
    notes=("distance: smallest ell_2 adversarial distance found; 0: adversarial before the attack; inf: the "
           "attack failed",),
    columns=(Column("idx", INT, required=True), Column("label", INT, required=True),
             Column("predict", INT, required=True),  # the clean prediction
             Column("success", INT, required=True, check=BINARY),
             Column("distance", FLOAT, required=True, check=DISTANCE), Column("time", TIME, required=True)))

ACCURACY = Schema(
    kind="attack-accuracy", program="attack-accuracy", mode=None, label=model_label,
    what="an accuracy TSV of python -m jaxsmooth.attack --mode accuracy",
    identity=("mode", "attack", "radii", "steps", "test_noise_sigma", "seed", "dtype", "checkpoint_step", "model",
              "dataset", "split", "skip", "max"),
    notes=("correct: the PGD point is classified correctly; correct_noisy: so is that point plus one "
           "N(0, test_noise_sigma^2 I) draw",),
    unique=("idx", "radius"),
    columns=(Column("idx", INT, required=True), Column("label", INT, required=True),
             Column("radius", FLOAT, required=True, check=FINITE_RADIUS),
             Column("correct", INT, required=True, check=BINARY),
             Column("correct_noisy", INT, required=True, check=BINARY), Column("time", TIME, required=True)))

SCHEMAS = {s.kind: s for s in (CERTIFY, PREDICT, DISTRIBUTIONAL, ATTACK, ACCURACY)}
