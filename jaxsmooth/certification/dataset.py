"""Certification of a data set split into a resumable result file: ``python -m jaxsmooth.certify`` as a library.

`open_certification` takes a loaded model (`jaxsmooth.loader.load_model`),
its data set and a `Request`, and returns a `Job`: the result file opened
(resumed after its last complete row, its settings checked), and an iterator
of the rows still to write. The caller writes them (the CLI under a progress
bar) and closes the writer. Everything a multi-process run must agree on is
decided here:

* the sharding policy, ``certify.parallel`` in the config: ``samples`` (the
  default) spreads the n samples of each input over every device of every
  process and ``psum``s the counts, process 0 writing the file; ``examples``
  gives process p the examples indices[p::P], sampled on its own devices and
  written to its own shard ``OUT.shard<p>of<P>.tsv`` (`Shard`);
* the XLA options: a resumed file is sampled with the options it recorded,
  a new one with the choice remembered in the cache folder for this program
  and machine, else timed (`compilation.compile_remembered`); in samples mode
  every process takes process 0's view (they run the same collective programs);
* the examples still to do: process 0's view of its file, in samples mode.

Both policies give the counts one process gives: the noise of an example
depends on the key and its index only.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, NamedTuple

import numpy as np

from jaxsmooth.errors import UserError

PARALLEL_MODES = ("samples", "examples")


@dataclasses.dataclass(frozen=True)
class Request:
    """What to certify (or predict) and where to write it.

    Attributes:
      out: the result TSV (resumed when it exists).
      mode: "certify" or "predict".
      settings: `certification.make_settings`'s, checked.
      sigma: a float, or a per-pixel [H, W, C] array.
      sigma_fields: how the sigma was given, for the file's settings (``sigma``, ``anisotropic``, ...).
      noise: a registered noise kind (`certification.noises`).
      seed: the noise seed.
      batch: noisy samples per forward pass on each device; inputs: examples sampled together.
      split, skip, max: the examples: every skip-th of the split below max (-1: all).
      parallel: ``certify.parallel`` (module docstring).
      names: the data set's and the config's names for the settings (``dataset``, ``model``).
    """

    out: str
    mode: str
    settings: Any
    sigma: Any
    sigma_fields: dict
    noise: str
    seed: int
    batch: int = 1000
    inputs: int = 1
    split: str = "test"
    skip: int = 1
    max: int = -1
    parallel: str = "samples"
    names: dict = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """Refuses a bad batch, inputs or parallel mode, naming the field."""
        check_batch(self.batch, self.inputs)
        if self.parallel not in PARALLEL_MODES:
            raise UserError("certify.parallel", f"must be one of {', '.join(PARALLEL_MODES)}, got {self.parallel!r}")


def check_batch(batch: int, inputs: int) -> None:
    """batch > 0 noisy samples per forward pass, shared by `inputs` > 0 examples that divide it."""
    if batch <= 0:
        raise UserError("batch", f"must be > 0, got {batch}")
    if inputs <= 0 or batch % inputs:
        raise UserError("inputs", f"must be > 0 and divide batch {batch}, got {inputs}")


class Shard(NamedTuple):
    """How this process takes part in a run (module docstring)."""

    out: str  # the TSV this process writes
    process: int  # this process's share of the examples: indices[process::processes]
    processes: int
    mesh: Any  # the devices that sample this process's examples
    writes: bool  # whether this process writes its TSV


@dataclasses.dataclass
class Job:
    """An opened certification (`open_certification`).

    rows: the rows still to write, each a dict with the file's columns and ``seconds`` / ``samples`` (for
    progress); total, done: examples in all and already in the file; writer: the opened result file;
    usage: a sequential run's slot counts (`batching.Usage`); shard: this process's part.
    """

    rows: Iterator[dict]
    writer: Any
    total: int
    done: int
    shard: Shard
    usage: Any
    note: str | None = None  # a line to show the user before sampling (radii out of reach)
    rows_per_example: int = 1


def shard_paths(out: str, processes: int) -> list[str]:
    """The shard files of `out` for `processes` processes (`jaxsmooth.analysis.tsv.shard_path`)."""
    from jaxsmooth.analysis.tsv import shard_path

    return [shard_path(out, p, processes) for p in range(processes)]


def shard_for(mode: str, out: str, mesh) -> Shard:
    """This process's `Shard` under the parallel `mode` (module docstring)."""
    import jax

    from jaxsmooth import parallel

    if mode not in PARALLEL_MODES:
        raise UserError("certify.parallel", f"must be one of {', '.join(PARALLEL_MODES)}, got {mode!r}")
    if mode == "samples" or jax.process_count() == 1:
        return Shard(out, 0, 1, mesh, parallel.is_main_process())
    p, count = jax.process_index(), jax.process_count()
    return Shard(shard_paths(out, count)[p], p, count, parallel.make_mesh(jax.local_devices()), True)


def recorded_xla_options(shard: Shard) -> str | dict:
    """The XLA options an existing file was sampled with (its settings' ``xla_options``), so that its remaining
    examples are sampled by the same executable (`Sampler.prepare`); "auto" for a new file.

    In samples mode every process takes process 0's view.
    """
    import jax

    from jaxsmooth import compilation
    from jaxsmooth.results import sidecar

    found = sidecar.program_of(shard.out) if os.path.exists(shard.out) else None
    recorded = found[1].get("xla_options") if found else None
    if shard.processes == 1 and jax.process_count() > 1:
        recorded = compilation.agreed_options(recorded, [*compilation.AUTO_CANDIDATES, {}])
    return "auto" if recorded is None else recorded


def pending(done, indices: np.ndarray, shard: Shard) -> np.ndarray:
    """The examples of `indices` not in the file yet (`done`: those that are); in samples mode, process 0's view,
    as every process must sample the same examples and only process 0 read its own file."""
    import jax

    done = set(done)
    todo = np.asarray([int(i) not in done for i in indices])
    if shard.processes == 1 and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        todo = np.asarray(multihost_utils.broadcast_one_to_all(todo), bool)
    return np.asarray(indices[todo], np.int64)


def split_of(dataset, name: str):
    """The split `name` ("test" or "train") of `dataset`."""
    if name not in ("test", "train"):
        raise UserError("split", f"must be test or train, got {name!r}")
    return dataset.test if name == "test" else dataset.train


def open_certification(model, dataset, request: Request) -> Job:
    """Opens `request.out` for certifying (or predicting with) `model` on `dataset`, resuming it if it exists.

    Args:
      model: a `jaxsmooth.loader.LoadedModel` classifier (BatchNorm folded), wrapped or not.
      dataset: its `jaxsmooth.data.Dataset` (8-bit images, scaled to [0, 1] here).
      request: what to do (`Request`).
    Returns:
      the `Job`; its rows are drawn lazily, as the caller iterates.
    """
    from jaxsmooth import certification, jobs, noise, results
    from jaxsmooth.certification import batching, records

    request.check()
    settings = request.settings
    split = split_of(dataset, request.split)
    shard = shard_for(request.parallel, request.out, _mesh())
    indices = records.example_indices(len(split), request.skip, request.max)[shard.process::shard.processes]
    sampler = certification.Sampler(model.apply, model.params, model.model_state, input_shape=model.input_shape,
                                    num_classes=model.num_classes, inputs=request.inputs,
                                    chunk=request.batch // request.inputs, mesh=shard.mesh,
                                    with_softmax=request.mode == "certify",
                                    compiler_options=recorded_xla_options(shard), noise=request.noise)
    if request.mode == "certify":
        settings.check(model.num_classes, sampler.kind)
    key = noise.certify_key(noise.root_key(request.seed))
    options = sampler.prepare(request.sigma, settings.n, key, batching.CUTS if settings.sequential else 0)
    header, note = _header(model, request, shard, options, sampler)
    cols = records.columns(request.mode, settings, anisotropic=np.ndim(request.sigma) > 0, model_lbound=True,
                           gaussian=sampler.kind.gaussian_certificate)
    jobs.lock_output(shard.out, take=shard.writes)
    writer = results.Writer(shard.out, results.SCHEMAS[request.mode], header, cols, enabled=shard.writes)
    todo = pending(writer.done, indices, shard)
    usage = batching.Usage() if settings.sequential else None
    clean = certification.make_clean_probabilities(model.apply, model.params, model.model_state)
    rows = records.certification_rows(sampler, records.split_examples(split), todo, request.sigma, settings, key,
                                      mode=request.mode,
                       clean_probabilities=clean, usage=usage)
    return Job(rows=rows, writer=writer, total=len(indices), done=len(indices) - len(todo), shard=shard,
               usage=usage, note=note)


def _mesh():
    from jaxsmooth import parallel

    return parallel.make_mesh()


def _header(model, request: Request, shard: Shard, xla_options, sampler) -> tuple[dict, str | None]:
    """The file's settings, and the line saying which listed radii are out of reach (None: all reachable)."""
    settings, seed = request.settings, request.seed
    header = {"mode": request.mode, "noise": request.noise, **request.sigma_fields, "n0": settings.n0,
              "n": settings.n, "alpha": settings.alpha, "candidate": settings.candidate, "topk": settings.topk,
              "seed": seed, "key": f"fold_in(key({seed}), certify stream)", "dtype": model.dtype,
              "model": model.info.get("model"), **request.names, "split": request.split, "skip": request.skip,
              "max": request.max, "batch": request.batch, "inputs": request.inputs, **model.settings(),
              "devices": sampler.mesh.size, "parallel": request.parallel, "xla_options": xla_options}
    if shard.processes > 1:
        header.update(shard=shard.process, shards=shard.processes)
    note = None
    if settings.sequential:
        fields, note = settings.sequential_header(sampler.radius_rule(request.sigma))
        header.update(fields)
    return header, note
