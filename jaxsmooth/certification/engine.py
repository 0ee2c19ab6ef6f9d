"""The Monte Carlo sampling engine: class counts of f(x + eta), eta ~ N(0, diag(sigma^2)) or lattice noise.

One jitted computation per (model, batch shape): a ``lax.fori_loop`` over
fixed-size chunks of noise drawn on the device, so memory does not grow with
n. The chunks are spread over every device of the mesh (``shard_map`` over
the ``data`` axis) and the counts summed with ``psum``.

Sample j of the example with global index i uses the noise

    z_ij = normal(fold_in(fold_in(key, i), j))

(``noise="gaussian"``), or the discretised normal on the 1/255 grid drawn
from the bits of that same key (``noise="lattice"``, 8-bit inputs only: see
`jaxsmooth.certification.lattice` for the draw and its certificate). So the
counts depend on the key, the example indices and n only: the same on one
CPU and on a pod, for any chunk size and any number of inputs per call.
Chunk c of the loop holds samples c*chunk .. (c+1)*chunk - 1 of every input;
device d of D runs chunks d, d + D, ...; samples past n are masked.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxsmooth import compilation, parallel
from jaxsmooth.certification import lattice
from jaxsmooth.errors import UserError


class Counts(NamedTuple):
    counts: np.ndarray  # [B, K] int64
    mean_softmax: np.ndarray | None  # [B, K] float64, when asked for


def check_sigma(sigma, input_shape) -> np.ndarray:
    """sigma as a float32 array: a positive scalar, or positive per-pixel values of the input's shape."""
    s = np.asarray(sigma, np.float32)
    if s.ndim and tuple(s.shape) != tuple(input_shape):
        raise UserError("sigma", f"a per-pixel sigma must have the input's shape {tuple(input_shape)}, "
                                 f"got {tuple(s.shape)}")
    if not np.all(np.isfinite(s)) or not np.all(s > 0):
        raise UserError("sigma", f"must be > 0 everywhere, got min {float(np.min(s)) if s.size else s}")
    return s


NOISES = ("gaussian", "lattice")


def _sample_keys(key: jax.Array, index: jax.Array, first: jax.Array, chunk: int) -> jax.Array:
    """[B, chunk] keys fold_in(fold_in(key, index[b]), first + s) of samples first .. first + chunk - 1."""
    samples = first + jnp.arange(chunk, dtype=jnp.int32)
    per_example = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
    return jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(samples))(per_example)


def _noise(noise: str, x: jax.Array, scale: Any, key: jax.Array, index: jax.Array, first: jax.Array,
           chunk: int, shape) -> jax.Array:
    """[B, chunk, *shape] noisy inputs of samples first .. first + chunk - 1 of each example x [B, *shape].

    gaussian: x + sigma z, z ~ N(0, I), `scale` = sigma (scalar or per-pixel);
    lattice: x + m / 255 as an exact integer sum, m the discretised normal
    (`lattice.draw`), `scale` = `lattice.table(sigma).arrays`.
    """
    keys = _sample_keys(key, index, first, chunk)
    if noise == "lattice":
        return lattice.perturb(x, lattice.draw(keys, shape, scale))
    z = jax.vmap(jax.vmap(lambda k: jax.random.normal(k, shape, x.dtype)))(keys)
    return x[:, None] + scale * z


class Sampler:
    """Jitted class counts of a fixed model for `inputs` examples at a time.

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
      noise: "gaussian" (x + sigma z in floating point, Cohen et al.) or
        "lattice" (the discretised normal on the 1/255 grid, exact; 8-bit
        inputs and a scalar sigma only: `jaxsmooth.certification.lattice`).
      compiler_options: XLA:CPU options: "auto" (time each of jaxsmooth's option
        sets, `compilation.CPU_COMPILER_OPTIONS` and `compilation.CPU_ELEMENTWISE_OPTIONS`,
        on one loop step of the first call and keep the fastest), a dict of
        options ({}: XLA's defaults), or None (`compilation.CPU_COMPILER_OPTIONS`).
        Ignored off the CPU.
    """

    def __init__(self, apply: Callable, params: Any, model_state: Any, *, input_shape, num_classes: int,
                 inputs: int = 1, chunk: int = 1000, mesh: jax.sharding.Mesh | None = None,
                 with_softmax: bool = False, compiler_options: str | dict | None = None, noise: str = "gaussian"):
        if noise not in NOISES:
            raise UserError("noise", f"unknown {noise!r}; allowed: {', '.join(NOISES)}")
        if inputs <= 0:
            raise UserError("inputs", f"must be > 0, got {inputs}")
        if chunk <= 0:
            raise UserError("batch", f"must be > 0, got {chunk}")
        self.mesh = parallel.make_mesh() if mesh is None else mesh
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.inputs, self.chunk, self.with_softmax = int(inputs), int(chunk), bool(with_softmax)
        self.noise = noise
        self._scale_shapes = None  # lattice: the table shapes compiled for (they grow with sigma)
        self._variables = parallel.replicate(self.mesh, (params, model_state))
        if not (compiler_options is None or compiler_options == "auto" or isinstance(compiler_options, dict)):
            raise ValueError(f"compiler_options must be None, 'auto' or a dict, got {compiler_options!r}")
        self._compiler_options = compilation.CPU_COMPILER_OPTIONS if compiler_options is None else compiler_options
        self.chosen_options: dict | None = None  # what the executable was compiled with, after the first call
        self._compiled = None
        self._run = jax.jit(self._build(apply))

    @property
    def forward_batch(self) -> int:
        """Noisy samples per forward pass on each device."""
        return self.inputs * self.chunk

    def _build(self, apply: Callable) -> Callable:
        devices = self.mesh.size
        chunk, num_classes, shape, with_softmax = self.chunk, self.num_classes, self.input_shape, self.with_softmax
        noise = self.noise

        def per_device(variables, x, index, sigma, n, key):
            params, model_state = variables
            b = x.shape[0]
            d = jax.lax.axis_index(parallel.DATA_AXIS)
            steps = ((n + chunk - 1) // chunk + devices - 1) // devices

            def body(step, carry):
                counts, probs = carry
                first = (step * devices + d) * chunk
                noisy = _noise(noise, x, sigma, key, index, first, chunk, shape).reshape((b * chunk, *shape))
                logits, _ = apply(params, model_state, noisy, train=False)
                logits = logits.reshape((b, chunk, num_classes))
                valid = (first + jnp.arange(chunk)) < n
                votes = (jnp.argmax(logits, -1)[..., None] == jnp.arange(num_classes)) & valid[None, :, None]
                counts = counts + jnp.sum(votes, axis=1, dtype=jnp.int32)
                if with_softmax:
                    p = jax.nn.softmax(logits.astype(jnp.float32), -1) * valid[None, :, None]
                    probs = probs + jnp.sum(p, axis=1)
                return counts, probs

            init = (jnp.zeros((b, num_classes), jnp.int32), jnp.zeros((b, num_classes) if with_softmax else (),
                                                                      jnp.float32))
            counts, probs = jax.lax.fori_loop(0, steps, body, init)
            return jax.lax.psum(counts, parallel.DATA_AXIS), jax.lax.psum(probs, parallel.DATA_AXIS)

        return jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(), P(), P(), P(), P(), P()),
                             out_specs=(P(), P()), check_vma=False)

    def _compile(self, args) -> None:
        if self._compiler_options == "auto":
            one_step = (*args[:4], *parallel.replicate(self.mesh, (np.int32(self.chunk * self.mesh.size),)), args[5])
            self._compiled, self.chosen_options = compilation.compile_fastest(self._run, *one_step)
        else:
            self._compiled, self.chosen_options = compilation.compile_fastest(self._run, *args,
                                                                           candidates=[self._compiler_options],
                                                                           repeats=0)

    def _scale(self, x: np.ndarray, sigma) -> Any:
        """What the noise draw reads: sigma (gaussian), or the lattice tables of sigma after checking x is 8-bit."""
        if self.noise == "gaussian":
            return check_sigma(sigma, self.input_shape)
        if check_sigma(sigma, self.input_shape).ndim:
            raise UserError("sigma", "lattice noise takes a scalar sigma, not a per-pixel one")
        lattice.check_inputs(x)
        arrays = lattice.table(float(sigma)).arrays
        shapes = jax.tree.map(np.shape, arrays)
        if shapes != self._scale_shapes:  # a sigma with larger tables: compile again
            self._compiled, self._scale_shapes = None, shapes
        return arrays

    def total_variation(self, sigma) -> float:
        """tau: how far (in total variation) one example's drawn noise may be from the ideal; 0 for gaussian.

        Lattice noise: `lattice.total_variation`. The certificates subtract it
        from p_A's lower bound (`bounds.certify`).
        """
        return lattice.total_variation(float(sigma), self.input_shape) if self.noise == "lattice" else 0.0

    def _device_args(self, xs: np.ndarray, idx: np.ndarray, sigma, n: int, key: jax.Array) -> tuple:
        return (self._variables, *parallel.replicate(self.mesh, (xs, idx, self._scale(xs, sigma), np.int32(n))),
                parallel.replicate(self.mesh, key))

    def prepare(self, sigma, n: int, key: jax.Array) -> dict:
        """Compiles now, for calls with this sigma's shape, and returns the XLA options compiled with.

        With "auto" the option sets are timed on zero inputs. The options
        change how XLA rounds the logits in their last bits (a different
        fusion, a different summation order), so an argmax within rounding of
        a tie may go either way: a job that records them and passes them back
        on resume (``compiler_options=``) samples with the same executable.
        """
        if self._compiled is None:
            zeros = np.zeros((self.inputs, *self.input_shape), np.float32)
            self._compile(self._device_args(zeros, np.zeros(self.inputs, np.int32), sigma, n, key))
        return self.chosen_options

    def __call__(self, x: np.ndarray, index: np.ndarray, sigma, n: int, key: jax.Array) -> Counts:
        """Counts of n samples for each of the (at most `inputs`) examples x with global indices `index`.

        Args:
          x: [B, *input_shape] float32 host array, B <= inputs.
          index: [B] global example indices (they pick the noise).
          sigma: scalar or per-pixel array of the input's shape (lattice noise: scalar).
          n: samples per example.
          key: the stream key (selection and estimation use different keys).
        """
        x = np.asarray(x, np.float32)
        b = x.shape[0]
        if b > self.inputs or x.shape[1:] != self.input_shape:
            raise ValueError(f"expected at most {self.inputs} inputs of shape {self.input_shape}, got {x.shape}")
        if n <= 0 or n >= 2**31 - self.chunk * self.mesh.size:
            raise UserError("n", f"must be in [1, 2^31), got {n}")
        pad = self.inputs - b
        xs = np.concatenate([x, np.zeros((pad, *self.input_shape), np.float32)]) if pad else x
        idx = np.concatenate([np.asarray(index, np.int32), np.zeros(pad, np.int32)]) if pad else np.asarray(index, np.int32)
        args = self._device_args(xs, idx, sigma, n, key)
        if self._compiled is None:
            self._compile(args)
        counts, probs = self._compiled(*args)
        counts = np.asarray(counts.addressable_data(0), np.int64)[:b]
        mean = np.asarray(probs.addressable_data(0), np.float64)[:b] / n if self.with_softmax else None
        return Counts(counts, mean)


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
    def run(variables, x):
        logits, _ = apply(*variables, x, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), -1)

    variables = jax.device_put(parallel.host_copy((params, model_state)))  # this process's default device
    return lambda x: np.asarray(run(variables, jnp.asarray(x, jnp.float32)), np.float64)
