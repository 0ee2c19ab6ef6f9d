"""Adversarial attacks on deterministic and Gaussian-smoothed classifiers (heat §3.4).

ell_2 PGD (`pgd`), its minimal-distance search by bisection on epsilon
(`pgd_min_distance`) and DDN (`ddn`), each a pure, jit-able function of a
batch that returns an `AttackResult` (adversarial points, success, ell_2
distance). The model enters as an `AttackLoss` built by `make_loss`, in its
deterministic form (heat eq. 8) or its smoothed form, whose gradient is
averaged over Gaussian draws (heat eq. 9)::

    loss = make_loss(eval_logits(apply, params, model_state), loss="ce", sigma=0.25, num_noise=25, topk=1)
    result = pgd(loss, images, labels, key, epsilon=0.5, steps=20, step_size=0.0625)
    result = pgd_min_distance(loss, images, labels, key, max_epsilon=4.0, steps=20, rounds=10)
    result = ddn(loss, images, labels, key, steps=20)

Accuracy under ell_2 PGD over a grid of radii, without and with test-time
Gaussian noise (nal §5, Fig. 1): `accuracy_under_pgd` (arrays in memory) and
`make_accuracy` (the jitted batch function of ``python -m jaxsmooth.attack
--mode accuracy``); `runner` documents both.

`common` documents the forms, losses, success criterion and keys.
"""

from jaxsmooth.attacks.common import (LOSSES, AttackLoss, AttackResult, ascent_direction, eval_logits,
                                      is_adversarial, l2_norm, make_loss)
from jaxsmooth.attacks.ddn import cosine_step_sizes, ddn
from jaxsmooth.attacks.pgd import pgd, pgd_min_distance
from jaxsmooth.attacks.runner import accuracy_under_pgd, make_accuracy

__all__ = [
    "LOSSES", "AttackLoss", "AttackResult", "accuracy_under_pgd", "ascent_direction", "cosine_step_sizes", "ddn",
    "eval_logits", "is_adversarial", "l2_norm", "make_accuracy", "make_loss", "pgd", "pgd_min_distance",
]
