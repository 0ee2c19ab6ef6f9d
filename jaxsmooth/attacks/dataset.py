"""Attacks on a data set split into a resumable result file: ``python -m jaxsmooth.attack`` as a library.

`open_attack` (the smallest ell_2 adversarial distance per example,
`results.ATTACK`) and `open_accuracy` (accuracy under ell_2 PGD at each
radius, `results.ACCURACY`) take a loaded model (`jaxsmooth.loader`, BatchNorm
not folded: attacks differentiate it), its data set and the settings, open
the file (resumed after its last complete row, its settings checked) and
return a `jaxsmooth.certification.dataset.Job` whose rows the caller writes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxsmooth.errors import UserError


@dataclasses.dataclass(frozen=True)
class Examples:
    """Which examples, and where the rows go: every skip-th of the split below max (-1: all), `batch` at a time.

    names: the data set's name for the settings; seed: the attack's key.
    """

    out: str
    seed: int
    split: str = "test"
    skip: int = 1
    max: int = -1
    batch: int = 100
    names: dict = dataclasses.field(default_factory=dict)


def _common(model, dataset, examples: Examples) -> tuple:
    """(the split, its indices, the settings every attack file records)."""
    import jax

    from jaxsmooth.certification import dataset as dataset_job, records

    if examples.batch <= 0:
        raise UserError("batch", f"must be > 0, got {examples.batch}")
    split = dataset_job.split_of(dataset, examples.split)
    indices = records.example_indices(len(split), examples.skip, examples.max)
    seed = examples.seed
    settings = {"seed": seed, "key": f"fold_in(key({seed}), attack stream)", "dtype": model.dtype,
                "model": model.info["model"], **examples.names, "split": examples.split, "skip": examples.skip,
                "max": examples.max, "batch": examples.batch, **model.settings(), "devices": jax.device_count()}
    return split, indices, settings


def open_attack(model, dataset, settings, examples: Examples):
    """Opens `examples.out` for the minimal-distance attack `settings` (`runner.Settings`) of `model`."""
    from jaxsmooth import jobs, noise, results
    from jaxsmooth.attacks import runner
    from jaxsmooth.certification import dataset as dataset_job

    settings.check()
    if settings.topk >= dataset.num_classes:
        raise UserError("topk", f"must be < the number of classes {dataset.num_classes}, got {settings.topk}")
    split, indices, common = _common(model, dataset, examples)
    pgd, smoothed = settings.attack == "pgd", settings.sigma is not None
    header = {"attack": settings.attack, "smoothed": smoothed, "sigma": settings.sigma,
              "num_noise": settings.num_noise if smoothed else None, "loss": settings.loss, "topk": settings.topk,
              "steps": settings.steps, "max_epsilon": settings.max_epsilon if pgd else None,
              "rounds": settings.rounds if pgd else None,
              "init_epsilon": None if pgd else settings.init_epsilon, **common}
    jobs.lock_output(examples.out)
    writer = results.Writer(examples.out, results.ATTACK, header)
    done = set(writer.done)
    todo = np.asarray([i for i in indices if int(i) not in done], np.int64)
    attack = runner.make_attack(model.apply, settings)
    key = noise.attack_key(noise.root_key(examples.seed))
    rows = runner.attack_rows(attack, model.params, model.model_state, split, todo, key, batch=examples.batch)
    return dataset_job.Job(rows=rows, writer=writer, total=len(indices), done=len(indices) - len(todo),
                           shard=dataset_job.Shard(examples.out, 0, 1, None, True), usage=None)


def open_accuracy(model, dataset, radii, steps: int, test_noise_sigma: float, examples: Examples):
    """Opens `examples.out` for the accuracy of `model` under `steps` of ell_2 PGD at each of `radii`, without and
    with one draw of test-time noise of std `test_noise_sigma` (`runner.make_accuracy`); one row per example and
    radius, so the job's total and done count rows."""
    from jaxsmooth import jobs, noise, results
    from jaxsmooth.attacks import runner
    from jaxsmooth.certification import dataset as dataset_job

    runner.check_accuracy_settings(steps, test_noise_sigma)
    split, indices, common = _common(model, dataset, examples)
    header = {"mode": "accuracy", "attack": "pgd", "radii": list(radii), "steps": steps,
              "step_size": "2 * radius / steps", "loss": "ce", "test_noise_sigma": float(test_noise_sigma),
              "test_noise": "one draw per example, the same at every radius", **common}
    jobs.lock_output(examples.out)
    writer = results.Writer(examples.out, results.ACCURACY, header)
    done = _done_pairs(examples.out)  # the writer has checked the settings and dropped a cut last row
    total = len(indices) * len(radii)
    accuracy = runner.make_accuracy(model.apply, test_noise_sigma=test_noise_sigma, steps=steps)
    key = noise.attack_key(noise.root_key(examples.seed))
    rows = runner.accuracy_rows(accuracy, model.params, model.model_state, split, indices, radii, key,
                                batch=examples.batch, done=done)
    written = sum(1 for i in indices for r in radii if (int(i), r) in done)
    return dataset_job.Job(rows=rows, writer=writer, total=total, done=written,
                           shard=dataset_job.Shard(examples.out, 0, 1, None, True), usage=None)


def _done_pairs(path: str) -> set[tuple[int, float]]:
    """The (idx, radius) pairs of the rows of an accuracy TSV whose cut last row `results.Writer` has dropped."""
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    return {(int(r[0]), float(r[2])) for r in rows[1:] if r and r[0]}
