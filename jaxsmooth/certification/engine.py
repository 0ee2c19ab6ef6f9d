"""The Monte Carlo sampling engine: class counts of f(x + eta), eta ~ N(0, diag(sigma^2)) or lattice noise.

One jitted computation per (model, batch shape): a ``lax.fori_loop`` over
fixed-size chunks of noise drawn on the device, so memory does not grow with
n. The chunks are spread over every device of the mesh (``shard_map`` over
the ``data`` axis) and the counts summed with ``psum``.

Sample j of the example with global index i uses the noise

    z_ij = normal(fold_in(fold_in(key, i), j))

(``noise="gaussian"``), or the discretised normal on the 1/255 grid drawn
from the bits of that same key (``noise="lattice"``, 8-bit inputs only: see
`jaxsmooth.certification.lattice` for the draw and its certificate),
so the counts depend on the key, the example indices and the sample
positions only: the same on one CPU and on a pod, for any chunk size and any
number of inputs per call. A call counts, for each input slot b, the samples
[start_b, start_b + m_b) of that slot's example: chunk c of the loop holds
samples start_b + c*chunk .. start_b + (c+1)*chunk - 1; device d of D runs
chunks d, d + D, ...; samples past m_b are masked. So counts continue a
stream where an earlier call left it: the counts of [0, N) equal the sum of
the counts of [0, N1) and [N1, N), and a sequential run's first N samples
are a fixed-n run's N samples. Each slot may also split its samples at cut
positions (`Sampler.segments`), so a call that crosses several looks of a
sequential test returns the counts at each of them.

start, m, cuts and the example indices are device arguments: one compiled
executable serves every call with the same number of slots and cuts, which
is what lets a sequential driver refill a slot with the next input without
recompiling (continuous batching).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxsmooth import compilation, parallel
from jaxsmooth.certification import bounds, noises
from jaxsmooth.errors import UserError


class Counts(NamedTuple):
    counts: np.ndarray  # [B, K] int64
    mean_softmax: np.ndarray | None  # [B, K] float64, when asked for


class Segments(NamedTuple):
    """Counts of consecutive pieces of each slot's samples (`Sampler.segments`)."""

    counts: np.ndarray  # [B, P + 1, K] int64
    softmax_sums: np.ndarray | None  # [B, P + 1, K] float64 sums of the samples' softmax, when asked for


def check_sigma(sigma, input_shape) -> np.ndarray:
    """sigma as a float32 array: a positive scalar, or positive per-pixel values of the input's shape."""
    s = np.asarray(sigma, np.float32)
    if s.ndim and tuple(s.shape) != tuple(input_shape):
        raise UserError("sigma", f"a per-pixel sigma must have the input's shape {tuple(input_shape)}, "
                                 f"got {tuple(s.shape)}")
    if not np.all(np.isfinite(s)) or not np.all(s > 0):
        raise UserError("sigma", f"must be > 0 everywhere, got min {float(np.min(s)) if s.size else s}")
    return s


def _sample_keys(key: jax.Array, index: jax.Array, first: jax.Array, chunk: int) -> jax.Array:
    """[B, chunk] keys fold_in(fold_in(key, index[b]), first[b] + s) of samples first[b] .. first[b] + chunk - 1
    (first: [B], or a scalar for all)."""
    samples = jnp.broadcast_to(first, index.shape)[:, None] + jnp.arange(chunk, dtype=jnp.int32)
    per_example = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    return jax.vmap(lambda k, js: jax.vmap(lambda j: jax.random.fold_in(k, j))(js))(per_example, samples)


def noisy_inputs(kind: noises.NoiseKind, x: jax.Array, scale: Any, key: jax.Array, index: jax.Array,
                 first: jax.Array, chunk: int) -> jax.Array:
    """[B, chunk, *S] noisy inputs of samples first[b] .. first[b] + chunk - 1 of each example x [B, *S]: the noise
    kind's draw from the samples' keys (`_sample_keys`); scale: what the draw reads (`NoiseKind.scale`)."""
    return kind.perturb(x, _sample_keys(key, index, first, chunk), scale)


class Sampler:
    """Jitted class counts of a fixed model for `inputs` examples (slots) at a time.

    Args:
      apply: ``apply(params, model_state, x, train=False) -> (logits, _)``.
      params, model_state: the model's variables (host or device arrays).
      input_shape: one example's shape, e.g. (32, 32, 3).
      num_classes: K.
      inputs: examples per call (smaller calls are padded).
      chunk: samples of each example per device per loop step; each device
        runs forward batches of ``inputs * chunk``.
      mesh: devices to spread the chunks over (default: all).
      with_softmax: also return the mean softmax vector of the samples.
      noise: the name of a registered noise kind (`jaxsmooth.certification.noises`):
        "gaussian" (x + sigma z in floating point, Cohen et al.), "lattice"
        (the discretised normal on the 1/255 grid, exact; 8-bit inputs and a
        scalar sigma only), or one registered by the caller.
      compiler_options: XLA:CPU options: "auto" (time each of jaxsmooth's option
        sets, `compilation.CPU_COMPILER_OPTIONS` and `compilation.CPU_ELEMENTWISE_OPTIONS`,
        on one loop step of the first call and keep the fastest; the choice is
        remembered in the cache folder and taken untimed by the next sampler of
        the same program on the same machine: `compilation.compile_remembered`),
        a dict of options ({}: XLA's defaults), or None
        (`compilation.CPU_COMPILER_OPTIONS`). Ignored off the CPU.
    """

    def __init__(self, apply: Callable, params: Any, model_state: Any, *, input_shape, num_classes: int,
                 inputs: int = 1, chunk: int = 1000, mesh: jax.sharding.Mesh | None = None,
                 with_softmax: bool = False, compiler_options: str | dict | None = None, noise: str = "gaussian"):
        self.kind = noises.get(noise)
        if inputs <= 0:
            raise UserError("inputs", f"must be > 0, got {inputs}")
        if chunk <= 0:
            raise UserError("chunk", f"must be > 0, got {chunk}")
        self.mesh = parallel.make_mesh() if mesh is None else mesh
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.inputs, self.chunk, self.with_softmax = int(inputs), int(chunk), bool(with_softmax)
        self.noise = noise
        self._scale_shapes = None  # the shapes of what the draw reads, compiled for (lattice tables grow with sigma)
        self._variables = parallel.replicate(self.mesh, (params, model_state))
        if not (compiler_options is None or compiler_options == "auto" or isinstance(compiler_options, dict)):
            raise ValueError(f"compiler_options must be None, 'auto' or a dict, got {compiler_options!r}")
        self._compiler_options = compilation.CPU_COMPILER_OPTIONS if compiler_options is None else compiler_options
        self.chosen_options: dict | None = None  # what the executables are compiled with, after the first call
        self._compiled: dict[int, Any] = {}  # number of cuts per slot -> executable
        self._run = jax.jit(self._build(apply))

    @property
    def forward_batch(self) -> int:
        """Noisy samples per forward pass on each device."""
        return self.inputs * self.chunk

    @property
    def step_samples(self) -> int:
        """Samples of each slot per loop step over the whole mesh: chunk x devices."""
        return self.chunk * self.mesh.size

    def _build(self, apply: Callable) -> Callable:
        devices = self.mesh.size
        chunk, num_classes, shape, with_softmax = self.chunk, self.num_classes, self.input_shape, self.with_softmax
        kind = self.kind

        def per_device(variables, x, index, start, m, cuts, sigma, key):
            params, model_state = variables
            b, pieces = x.shape[0], cuts.shape[1] + 1
            d = jax.lax.axis_index(parallel.DATA_AXIS)
            steps = ((jnp.max(m) + chunk - 1) // chunk + devices - 1) // devices

            def body(step, carry):
                counts, probs = carry
                offset = (step * devices + d) * chunk  # of these samples within [start_b, start_b + m_b)
                noisy = noisy_inputs(kind, x, sigma, key, index, start + offset, chunk).reshape((b * chunk, *shape))
                logits, _ = apply(params, model_state, noisy, train=False)
                logits = logits.reshape((b, chunk, num_classes))
                position = offset + jnp.arange(chunk)
                valid = position[None, :] < m[:, None]  # [B, chunk]
                # which piece each sample falls in: the number of cuts at or before its position
                piece = jnp.sum((start[:, None] + position)[..., None] >= cuts[:, None, :], -1)
                votes = jnp.argmax(logits, -1)[..., None] == jnp.arange(num_classes)
                p = jax.nn.softmax(logits.astype(jnp.float32), -1) if with_softmax else None
                for s in range(pieces):  # a handful: the cuts of one call
                    mask = (valid & (piece == s))[..., None]
                    counts = counts.at[:, s].add(jnp.sum(votes & mask, axis=1, dtype=jnp.int32))
                    if with_softmax:
                        probs = probs.at[:, s].add(jnp.sum(p * mask, axis=1))
                return counts, probs

            init = (jnp.zeros((b, pieces, num_classes), jnp.int32),
                    jnp.zeros((b, pieces, num_classes) if with_softmax else (), jnp.float32))
            counts, probs = jax.lax.fori_loop(0, steps, body, init)
            return jax.lax.psum(counts, parallel.DATA_AXIS), jax.lax.psum(probs, parallel.DATA_AXIS)

        return jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(),) * 8, out_specs=(P(), P()),
                             check_vma=False)

    def _compile(self, args) -> Any:
        """An executable for these arguments' shapes; the XLA options are chosen by the first (`prepare`)."""
        if self._compiler_options == "auto" and self.chosen_options is None:
            one_step = list(args)  # time the option sets on one loop step of every slot
            one_step[4] = parallel.replicate(self.mesh, np.full(self.inputs, self.step_samples, np.int32))
            processes = {d.process_index for d in self.mesh.devices.flat}
            compiled, self.chosen_options = compilation.compile_remembered(self._run, *one_step,
                                                                           across_processes=len(processes) > 1)
            return compiled
        options = self.chosen_options if self.chosen_options is not None else self._compiler_options
        compiled, self.chosen_options = compilation.compile_fastest(self._run, *args, candidates=[options], repeats=0)
        return compiled

    def _scale(self, x: np.ndarray, sigma) -> Any:
        """What the noise draw reads (`NoiseKind.scale`), after checking sigma and the inputs; compiles again when
        its shapes change."""
        self.kind.check_inputs(x)
        scale = self.kind.scale(check_sigma(sigma, self.input_shape), self.input_shape)
        shapes = jax.tree.map(np.shape, scale)
        if shapes != self._scale_shapes:
            self._compiled, self._scale_shapes = {}, shapes
        return scale

    def total_variation(self, sigma) -> float:
        """tau: how far (in total variation) one example's drawn noise may be from the smoothing distribution
        certified (`NoiseKind.total_variation`; 0 for gaussian). The certificates subtract it from p_A's lower
        bound (`bounds.certificate`)."""
        return self.kind.total_variation(sigma, self.input_shape)

    def radius_rule(self, sigma) -> bounds.RadiusRule:
        """The noise kind's radius rule at sigma (`NoiseKind.rule`)."""
        return self.kind.rule(sigma)

    def _device_args(self, x, index, start, m, cuts, sigma, key: jax.Array) -> tuple:
        """The executable's arguments, every slot padded to `inputs` (a padded slot counts no sample: m = 0)."""
        pad = self.inputs - x.shape[0]

        def padded(a, dtype):
            return np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]).astype(dtype)

        xs = padded(np.asarray(x, np.float32), np.float32)
        return (self._variables, *parallel.replicate(self.mesh, (
            xs, padded(np.asarray(index), np.int32), padded(start, np.int32), padded(m, np.int32),
            padded(np.clip(cuts, 0, 2**31 - 1), np.int32), self._scale(xs, sigma))), parallel.replicate(self.mesh, key))

    def prepare(self, sigma, n: int, key: jax.Array, cuts: int = 0) -> dict:
        """Compiles now, for calls with this sigma's shape and `cuts` cut positions per slot, and returns the XLA
        options compiled with.

        With "auto" the option sets are timed on zero inputs. The options
        change how XLA rounds the logits in their last bits (a different
        fusion, a different summation order), so an argmax within rounding of
        a tie may go either way: a job that records them and passes them back
        on resume (``compiler_options=``) samples with the same executable.
        Executables compiled later (other numbers of cuts) use the same options.
        """
        if cuts not in self._compiled:
            b = self.inputs
            zeros = np.zeros((b, *self.input_shape), np.float32)
            self._compiled[cuts] = self._compile(self._device_args(
                zeros, np.zeros(b, np.int64), np.zeros(b, np.int64), np.full(b, n, np.int64),
                np.full((b, cuts), 2**31 - 1), sigma, key))
        return self.chosen_options

    def segments(self, x: np.ndarray, index, sigma, start, m, key: jax.Array, cuts=None) -> Segments:
        """Counts of the samples [start_b, start_b + m_b) of each slot's example, split at the positions `cuts`.

        Args:
          x: [B, *input_shape] float32 host array, B <= inputs.
          index: [B] global example indices (they pick the noise).
          sigma: scalar or per-pixel array of the input's shape (lattice noise: scalar).
          start: [B] (or a scalar for all) first sample position of each slot, >= 0.
          m: [B] (or a scalar) samples of each slot, >= 0 (0: the slot idles).
          key: the stream key (selection and estimation use different keys).
          cuts: [B, P] absolute sample positions, non-decreasing along P (or None: P = 0);
            piece s of slot b holds its samples j with cuts[b, s-1] <= j < cuts[b, s].
        Returns:
          counts [B, P + 1, K]: each piece's class counts (their sum over P: the counts of all m_b samples).
        """
        b = len(x)
        if b > self.inputs or tuple(np.shape(x)[1:]) != self.input_shape:
            raise ValueError(f"expected at most {self.inputs} inputs of shape {self.input_shape}, got {np.shape(x)}")
        start = np.broadcast_to(np.asarray(start, np.int64), (b,))
        m = np.broadcast_to(np.asarray(m, np.int64), (b,))
        cuts = np.zeros((b, 0), np.int64) if cuts is None else np.asarray(cuts, np.int64).reshape(b, -1)
        if np.any(start < 0) or np.any(m < 0) or np.any(start + m >= 2**31 - self.step_samples):
            raise UserError("n", f"sample positions must be in [0, 2^31), got start {start.tolist()}, m {m.tolist()}")
        args = self._device_args(x, index, start, m, cuts, sigma, key)
        pieces = cuts.shape[1]
        if pieces not in self._compiled:
            self._compiled[pieces] = self._compile(args)
        counts, probs = self._compiled[pieces](*args)
        counts = np.asarray(counts.addressable_data(0), np.int64)[:b]
        sums = np.asarray(probs.addressable_data(0), np.float64)[:b] if self.with_softmax else None
        return Segments(counts, sums)

    def __call__(self, x: np.ndarray, index: np.ndarray, sigma, n, key: jax.Array, *, start=0) -> Counts:
        """Counts of n samples for each of the (at most `inputs`) examples x with global indices `index`.

        Args:
          x: [B, *input_shape] float32 host array, B <= inputs.
          index: [B] global example indices (they pick the noise).
          sigma: scalar or per-pixel array of the input's shape (lattice noise: scalar).
          n: samples per example (an int, or [B] per example), >= 1.
          key: the stream key (selection and estimation use different keys).
          start: the first sample's position in each example's stream (an int or [B]): the
            counts of samples [start, start + n), continuing a stream an earlier call began.
        """
        n_arr = np.asarray(n, np.int64)
        if np.any(n_arr <= 0) or np.any(np.asarray(start) + n_arr >= 2**31 - self.step_samples):
            raise UserError("n", f"must be in [1, 2^31), got {n}")
        out = self.segments(x, index, sigma, start, n_arr, key)
        mean = out.softmax_sums[:, 0] / np.broadcast_to(n_arr, (len(out.counts),))[:, None] \
            if self.with_softmax else None
        return Counts(out.counts[:, 0], mean)


def sample_counts(apply: Callable, variables: tuple[Any, Any], x, sigma, n: int, chunk: int, key: jax.Array, *,
                  num_classes: int, index=None, mesh: jax.sharding.Mesh | None = None,
                  with_softmax: bool = False, noise: str = "gaussian") -> Counts:
    """One-off form of `Sampler`: counts of n noisy samples for every example of x.

    Args:
      variables: (params, model_state).
      x: [B, *input_shape]; index: their global indices (default 0 .. B-1).
      chunk: samples of each example per device per loop step.
    """
    x = np.asarray(x, np.float32)
    index = np.arange(x.shape[0]) if index is None else np.asarray(index)
    sampler = Sampler(apply, *variables, input_shape=x.shape[1:], num_classes=num_classes, inputs=x.shape[0],
                      chunk=chunk, mesh=mesh, with_softmax=with_softmax, noise=noise)
    return sampler(x, index, sigma, n, key)


def make_clean_probabilities(apply: Callable, params: Any, model_state: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``probs(x) -> [B, K]`` softmax of one clean forward pass (the deterministic candidate, the model's L-bound)."""

    @jax.jit
    def softmax(variables, x):
        logits, _ = apply(*variables, x, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), -1)

    variables = jax.device_put(parallel.host_copy((params, model_state)))  # this process's default device
    return lambda x: np.asarray(softmax(variables, jnp.asarray(x, jnp.float32)), np.float64)
