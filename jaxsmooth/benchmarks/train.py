"""Train-step throughput: the jaxsmooth step against a PyTorch reference of the same architecture.

Both sides do one Gaussian-noise SGD step (noise, forward, cross-entropy,
backward, momentum + weight-decay update) on random inputs of the model's
shape; JAX's compile time is reported apart from its step time.

With ``objective="heat"`` (or ``"bootcamp"``) the contenders are that
objective's step and a ``standard`` step (clean cross-entropy) of the same
model and batch, in JAX and in PyTorch (the PyTorch heat step loops over the
kappa projections as HeatSmoothing's Algorithm 1 does), and `step_flops`
counts the FLOPs of both traced steps. A heat step costs, in forward-pass
units with a backward pass counted as two forwards:

    standard: 1 forward + 1 backward                                   = 3
    heat:     teacher forward (1) + v(x) forward and backward (3)
              + kappa input-gradient backward passes for the directions (2 kappa)
              + kappa shifted forward and backward passes (3 kappa)     = 4 + 5 kappa

so the pass-implied ratio (`implied_ratio`) is (4 + 5 kappa) / 3, 18 for
kappa = 10. `nal` (and `wrm`, `smoothadv`) are timed against a `standard`
step the same way; their steps run (K + 1) forward-backward passes over r
noisy copies of the batch (K ascent steps, then the parameter step), so the
implied ratio is (K + 1) * r (`wrm`: r = 1; `smoothadv`: r = m draws), 20 for
the defaults K = r = 4. A `sigma` step runs the frozen model forward and
backward (to its input) once per draw: n0 passes at most.

What the benchmark knows of each objective's step (its labels, its pass
count, its PyTorch reference) is its `StepBench` entry in `STEPS`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsmooth import config as config_lib
from jaxsmooth import compilation, models, objectives, trainer
from jaxsmooth.benchmarks import flops
from jaxsmooth.benchmarks.timing import Result, interleave
from jaxsmooth.errors import UserError

INPUT_SHAPES = {"cnn": (28, 28, 1), "resnet50": (224, 224, 3)}  # the rest: CIFAR's 32x32x3
SIGMA = 0.25


def input_shape_of(name: str) -> tuple[int, int, int]:
    return INPUT_SHAPES.get(name, (32, 32, 3))


KAPPA = 10  # heat's and boot camp's JL projections (heat App. C, its CIFAR-10 setting)
STANDARD = "standard"  # the step a paired objective is timed against


def _torch_cohen_step(sigma: float):
    """Cohen et al.'s PyTorch step with noise `sigma` (0: a clean step); it takes torch.compile and bf16."""
    def make(module, *, channels_last: bool, bf16: bool, compile_mode: str):
        from jaxsmooth.benchmarks import torch_reference

        return torch_reference.make_train_step(module, sigma=sigma, channels_last=channels_last, bf16=bf16,
                                               compile_mode=compile_mode)
    return make


def _torch_heat_step(module, *, channels_last: bool, bf16: bool, compile_mode: str):
    """heat Alg. 1 in PyTorch (a Python loop over the kappa projections), eager and in float32 only."""
    del bf16, compile_mode
    from jaxsmooth.benchmarks import torch_reference

    return torch_reference.make_heat_step(module, sigma=SIGMA, kappa=KAPPA, channels_last=channels_last)


@dataclasses.dataclass(frozen=True)
class StepBench:
    """What the train benchmark knows of one objective's step.

    Attributes:
      labelled: its name is in its contenders' labels ("jax heat float32", "torch heat f32"); False: the
        headline step, labelled by side and dtype alone ("jax float32", "torch f32").
      implied_ratio: ``(config) -> passes``: its step's cost over a standard step's, counted in passes
        (module docstring) with the config's K, r, kappa; None: not timed against a standard step.
      formula: how `implied_ratio` counts, as `jaxsmooth.bench` prints it.
      torch_step: ``(module, *, channels_last, bf16, compile_mode) -> step(x, y) -> loss``, its PyTorch
        reference step; None: it has none.
      torch_compiles: its PyTorch step is also timed under torch.compile (and bf16 autocast).
    """

    labelled: bool = True
    implied_ratio: Callable[[ml_collections.ConfigDict], float] | None = None
    formula: str = ""
    torch_step: Callable | None = None
    torch_compiles: bool = False


_DISTILLING = f"(4 + 5 kappa) / 3 with kappa = {KAPPA}"
STEPS = {
    "gaussian": StepBench(labelled=False, torch_step=_torch_cohen_step(SIGMA), torch_compiles=True),
    STANDARD: StepBench(torch_step=_torch_cohen_step(0.0), torch_compiles=True),
    "heat": StepBench(implied_ratio=lambda c: (4 + 5 * c.heat.kappa) / 3, formula=_DISTILLING,
                      torch_step=_torch_heat_step),
    "bootcamp": StepBench(implied_ratio=lambda c: (4 + 5 * c.bootcamp.kappa) / 3, formula=_DISTILLING),
    "nal": StepBench(implied_ratio=lambda c: (c.nal.ascent_steps + 1) * c.nal.num_noise,
                     formula="(K + 1) * r with the default nal.ascent_steps K and num_noise r"),
    "wrm": StepBench(implied_ratio=lambda c: c.wrm.ascent_steps + 1,
                     formula="K + 1 with the default wrm.ascent_steps K"),
    "smoothadv": StepBench(implied_ratio=lambda c: (c.smoothadv.pgd_steps + 1) * c.smoothadv.num_noise,
                           formula="(K + 1) * m with the default smoothadv.pgd_steps K and num_noise m"),
    "sigma": StepBench(implied_ratio=lambda c: c.sigma.num_noise, formula="n0 = the default sigma.num_noise"),
}
OBJECTIVES = tuple(STEPS)
PAIRED = tuple(o for o, s in STEPS.items() if s.implied_ratio is not None)  # timed against a standard step


def implied_ratio(kappa: int = KAPPA, objective: str = "heat") -> float:
    """A paired `objective` step's cost over a standard step's, counted in passes (module docstring).

    heat, bootcamp: (4 + 5 kappa) / 3; nal, smoothadv: (K + 1) r with the default
    config's K and r; wrm: K + 1; sigma: n0 (one forward-backward pass of the
    frozen model per draw, no weight gradients).
    """
    _check_objective(objective)
    if objective not in PAIRED:
        raise UserError("--objective", f"objective {objective!r} is not timed against a standard step; "
                                       f"paired: {', '.join(PAIRED)}")
    return STEPS[objective].implied_ratio(_objective_config(objective, kappa))


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise UserError("--objective", f"unknown objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")


def _label(side: str, objective: str, rest: str) -> str:
    """A contender's label: "jax heat float32", "torch heat f32 channels_last"; the headline step's without its
    name ("jax float32")."""
    return " ".join([side] + ([objective] if STEPS[objective].labelled else []) + [rest])


def _objective_config(objective: str, kappa: int = KAPPA) -> ml_collections.ConfigDict:
    cfg = config_lib.default()
    cfg.objective.name = objective
    cfg.objective.sigma = SIGMA
    cfg.heat.kappa = cfg.bootcamp.kappa = kappa
    return cfg


def _step_and_inputs(name: str, batch: int, input_shape, objective: str, dtype: str, num_classes: int,
                     width: int):
    """(jitted train step, state, batch, key) of `objective` on random inputs."""
    _check_objective(objective)
    c = input_shape[-1]
    module = models.create(name, num_classes=num_classes, input_shape=tuple(input_shape), mean=(0.5,) * c,
                           std=(0.25,) * c, dtype=dtype, width=width, seed=0)
    model = models.split(module)
    cfg = _objective_config(objective)
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
    record = objectives.get(objective)
    # the teacher: a copy of the starting model, as train.init_from gives
    teacher = jax.tree.map(jnp.copy, (model.params, model.model_state)) if record.teacher is not None else None
    state = trainer.initial_state(record, cfg, model.params, model.model_state, input_shape, tx, teacher)
    step = trainer.make_train_step(trainer.objective_loss(record, cfg, model.apply), tx,
                                   with_teacher=record.teacher is not None)
    rng = np.random.default_rng(0)
    data = {"image": jnp.asarray(rng.uniform(size=(batch, *input_shape)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32),
            "index": jnp.arange(batch, dtype=jnp.int32)}
    return step, state, data, jax.random.key(0)


def step_flops(name: str, batch: int, input_shape, objective: str, *, num_classes: int = 10,
               width: int = 0) -> float:
    """FLOPs of one train step of `objective` (convolutions and matrix products of the traced step, backward
    included)."""
    step, state, data, key = _step_and_inputs(name, batch, tuple(input_shape), objective, "float32", num_classes,
                                              width)
    return flops.jaxpr_flops(jax.make_jaxpr(step)(state, data, key).jaxpr)


def jax_contender(name: str, batch: int, input_shape, *, dtype: str = "float32", steps: int = 5,
                  num_classes: int = 10, width: int = 0, objective: str = "gaussian",
                  cpu_options: bool = True) -> tuple[Callable[[], None], int, float]:
    """A warmed-up ``run()`` doing `steps` train steps, the examples it covers, and its compile seconds."""
    train_step, state, data, key = _step_and_inputs(name, batch, tuple(input_shape), objective, dtype, num_classes,
                                                    width)
    t0 = time.perf_counter()
    step = compilation.compile(jax.jit(train_step, donate_argnums=0), state, data, key, cpu_options=cpu_options)
    setup_s = time.perf_counter() - t0
    holder = [step(state, data, key)[0]]
    jax.block_until_ready(holder[0])

    def one_round():
        s = holder[0]
        for _ in range(steps):
            s, metrics = step(s, data, key)
        jax.block_until_ready((s, metrics))
        holder[0] = s

    return one_round, steps * batch, setup_s


def torch_contenders(name: str, batch: int, input_shape, *, steps: int = 5, num_classes: int = 10,
                     width: int = 0, hidden: int = 0, objective: str = "gaussian", compile_mode: str = "",
                     bf16: bool = False) -> dict[str, tuple[Callable[[], None], int, float]]:
    """PyTorch reference steps (NCHW, and channels_last), or {} without torch, a reference model or a reference
    step of `objective` (`StepBench.torch_step`: ``gaussian``, Cohen et al.'s step; ``standard``, without noise;
    ``heat``, heat Alg. 1).

    With `compile_mode` (the steps that take it, `StepBench.torch_compiles`), also the channels_last step with the
    model under ``torch.compile(mode=compile_mode)`` (``... compiled``), and with `bf16` its bfloat16-autocast form.
    """
    _check_objective(objective)
    reference = STEPS[objective]
    try:
        import torch
        from jaxsmooth.benchmarks import torch_reference
    except ImportError:
        return {}
    if reference.torch_step is None:
        return {}
    out = {}
    h, w, c = input_shape
    variants = [(_label("torch", objective, "f32"), False, False, ""),
                (_label("torch", objective, "f32 channels_last"), True, False, "")]
    if compile_mode and reference.torch_compiles:
        variants.append((_label("torch", objective, "f32 channels_last compiled"), True, False, compile_mode))
        if bf16:
            variants.append((_label("torch", objective, "bf16 channels_last compiled"), True, True, compile_mode))
    for label, channels_last, autocast, mode in variants:
        torch.manual_seed(0)
        module = torch_reference.create(name, input_shape, num_classes, width=width, hidden=hidden)
        if module is None:
            return {}
        device = "cuda" if torch.cuda.is_available() else "cpu"  # the machine's accelerator, as JAX's default
        module = module.to(device)
        step = reference.torch_step(module, channels_last=channels_last, bf16=autocast, compile_mode=mode)
        x = torch.rand(batch, c, h, w, device=device)
        y = torch.randint(0, num_classes, (batch,), device=device)
        t0 = time.perf_counter()
        step(x, y).item()
        setup_s = time.perf_counter() - t0

        def one_round(step=step, x=x, y=y):
            for _ in range(steps):
                loss = step(x, y)
            loss.item()

        out[label] = (one_round, steps * batch, setup_s)
    return out


def benchmark(name: str, batch: int, *, input_shape=None, dtypes=("float32",), steps: int = 5, rounds: int = 7,
              with_torch: bool = True, xla_defaults: bool = False, objective: str = "gaussian",
              torch_compile: str = "", on_round: Callable[[int], None] | None = None) -> dict[str, Result]:
    """Interleaved medians of every contender (JAX per dtype, then the PyTorch references).

    ``xla_defaults`` adds the float32 JAX step compiled without `compilation.CPU_COMPILER_OPTIONS`.
    A paired `objective` (`PAIRED`: heat, bootcamp, nal, ...) adds a ``standard`` step of the same model and
    batch for each side ("jax standard float32", "jax heat float32", ...; `distill_ratios`).
    """
    _check_objective(objective)
    input_shape = tuple(input_shape or input_shape_of(name))
    width, hidden = models.cnn_sizes(0) if name == "cnn" else (0, 0)
    runs = (STANDARD, objective) if objective in PAIRED else (objective,)
    contenders = {}
    for d in dtypes:
        for o in runs:
            contenders[_label("jax", o, d)] = jax_contender(name, batch, input_shape, dtype=d, steps=steps,
                                                            objective=o)
    if xla_defaults:
        contenders["jax float32, XLA default options"] = jax_contender(name, batch, input_shape, steps=steps,
                                                                       objective=objective, cpu_options=False)
    if with_torch:
        for o in runs:  # the PyTorch references there are: Cohen et al.'s step (and a clean one), heat's Alg. 1
            contenders.update(torch_contenders(name, batch, input_shape, steps=steps, width=width,
                                                   hidden=hidden, objective=o, compile_mode=torch_compile,
                                                   bf16="bfloat16" in dtypes))
    return interleave(contenders, rounds, on_round)


def distill_ratios(results: dict[str, Result], objective: str) -> dict[str, float]:
    """Step time of `objective` over the ``standard`` step's, per side ("jax float32", "torch f32", ...)."""
    out = {}
    for label, r in results.items():
        side, _, rest = label.partition(f" {objective} ")
        if rest and f"{side} standard {rest}" in results:
            out[f"{side} {rest}"] = r.median_s / results[f"{side} standard {rest}"].median_s
    return out
