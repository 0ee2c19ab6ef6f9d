"""The PyTorch tensor names of jaxsmooth's ResNets and DnCNN, and a PyTorch state dict mapped onto them.

Names are those of locuslab/smoothing's CIFAR ResNet (code/archs/cifar_resnet.py,
He et al.'s CIFAR ResNet as bearpaw/pytorch-classification writes it) and of
torchvision's ResNet-50: ``conv1``, ``bn1``, ``layer{s}.{i}.conv{k}`` /
``bn{k}`` / ``downsample.0`` (1x1 conv) / ``downsample.1`` (its BatchNorm),
``fc``; optionally under ``1.`` (``Sequential(NormalizeLayer, network)``) and
``module.`` (``DataParallel``). Their architectures equal `resnet.ResNet`'s:

- CIFAR ResNet = ``resnet20`` / ``resnet110``: 3x3 stem conv (16, padding 1,
  no bias), BN, ReLU; stages of (depth - 2) / 6 basic blocks of 16, 32, 64
  channels, stride 2 on the first 3x3 conv of stages 2 and 3; 1x1 conv + BN
  shortcuts where stride or width change; 8x8 average pool (the global pool at
  32x32), linear.
- torchvision ResNet-50 (v1.5: the stride on the bottleneck's 3x3 conv) =
  ``resnet50``: 7x7/2 stem conv, 3x3/2 max-pool with -inf padding,
  bottlenecks [3, 4, 6, 3], adaptive average pool, linear.

DnCNN (microsoft/denoised-smoothing, code/archs/dncnn.py) is one
``nn.Sequential`` named ``dncnn``: ``dncnn.0`` the first conv (with bias),
``dncnn.1`` its ReLU, then per middle layer i (from 0) ``dncnn.{3i+2}`` a conv
(no bias), ``dncnn.{3i+3}`` its BatchNorm, ``dncnn.{3i+4}`` a ReLU, and the
last conv (no bias) at ``dncnn.{3(depth-2)+2}``; ``module.`` in front for
``imagenet_dncnn`` (``DataParallel``). Its BatchNorm eps is 1e-4 on both sides.

Convolution kernels go from PyTorch's [out, in, h, w] to [h, w, in, out],
linear weights [out, in] to [in, out]; BatchNorm weight / bias / running_mean
/ running_var become scale / bias / mean / var (eps 1e-5 on both sides);
``num_batches_tracked`` is dropped.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from jaxsmooth.errors import UserError


class Arch(NamedTuple):
    model: str  # the jaxsmooth.models name
    dataset: str  # the data set locuslab/smoothing builds it for, a key of jaxsmooth.convert.DATASETS
    blocks_per_stage: tuple[int, ...]


ARCHS = {
    "cifar_resnet20": Arch("resnet20", "cifar10", (3, 3, 3)),
    "cifar_resnet110": Arch("resnet110", "cifar10", (18, 18, 18)),
    "resnet50": Arch("resnet50", "imagenet", (3, 4, 6, 3)),
}
# Where the network's tensors sit: under Sequential index 1, under DataParallel, both or neither.
PREFIXES = ("1.module.", "1.", "module.", "")
_NORMALIZE_NAMES = {"means": "mean", "mean": "mean", "sds": "std", "std": "std"}  # a NormalizeLayer with buffers

_TOP = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_SHORTCUT = {"conv": "downsample.0", "bn": "downsample.1"}
_TORCH_RANK = {"conv1": 0, "bn1": 1, "conv2": 2, "bn2": 3, "conv3": 4, "bn3": 5, "downsample": 6, "fc": 99,
               "weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


def torch_name(path: tuple, blocks_per_stage: tuple[int, ...]) -> str:
    """The PyTorch state-dict name (without prefix) of the jaxsmooth ResNet variable at `path`.

    path: keys of a leaf of `models.Model.params` or `.model_state`, e.g.
    ("blocks", 19, "shortcut", "bn", "mean") -> "layer2.1.downsample.1.running_mean"
    with (18, 18, 18) blocks per stage.
    """
    *modules, leaf = path
    if modules[0] != "blocks":
        return f"{_TOP[modules[0]]}.{_LEAF[leaf]}"
    block = int(modules[1])
    stage = int(np.searchsorted(np.cumsum(blocks_per_stage), block, side="right"))
    first = int(np.sum(blocks_per_stage[:stage]))
    layer = _SHORTCUT[modules[3]] if modules[2] == "shortcut" else modules[2]
    return f"layer{stage + 1}.{block - first}.{layer}.{_LEAF[leaf]}"


def dncnn_name(path: tuple, depth: int) -> str:
    """The PyTorch state-dict name (without prefix) of the `models.dncnn.DnCNN` variable at `path`, e.g.
    ("norms", 0, "mean") -> "dncnn.3.running_mean"; ("last", "kernel") -> "dncnn.47.weight" at depth 17."""
    *modules, leaf = path
    index = {"first": 0, "last": 3 * (depth - 2) + 2}.get(modules[0])
    if index is None:
        index = 3 * int(modules[1]) + (2 if modules[0] == "convs" else 3)
    return f"dncnn.{index}.{_LEAF[leaf]}"


def torch_order(name: str) -> tuple[int, ...]:
    """Sort key putting state-dict names (without prefix) in the order PyTorch's ``state_dict()`` lists them."""
    return tuple(_TORCH_RANK[p] if p in _TORCH_RANK else 10 + int(p[5:]) if p.startswith("layer") else
                 int(p) if p.isdigit() else 0 for p in name.split("."))


def to_jax(array: np.ndarray) -> np.ndarray:
    """A tensor in jaxsmooth's layout: conv [out, in, h, w] -> [h, w, in, out]; linear [out, in] -> [in, out]."""
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if array.ndim == 2:
        return np.ascontiguousarray(array.T)
    return array


def torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of a jaxsmooth variable of `shape` (the inverse of `to_jax`)."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape)) if len(shape) == 2 else tuple(shape)


@functools.lru_cache(maxsize=8)
def abstract_model(name: str, num_classes: int, input_shape: tuple[int, ...], mean: tuple[float, ...],
                   std: tuple[float, ...], activation: str = "relu", width: int = 0, dtype: str = "float32"):
    """`models.split` of `models.create(...)` with `jax.ShapeDtypeStruct` leaves, built once per process.

    Tracing the module's construction is quadratic in its depth (1.7 s of
    CPU for ResNet-110); the result is read-only, so conversions of the same
    architecture share it.
    """
    from flax import nnx

    from jaxsmooth import models

    return models.split(nnx.eval_shape(lambda: models.create(
        name, num_classes=num_classes, input_shape=input_shape, mean=mean, std=std, activation=activation,
        width=width, dtype=dtype)))


def _pick_prefix(state: dict[str, np.ndarray], names: list[str]) -> str:
    """The prefix of `PREFIXES` under which most of `names` are found (the first on a tie)."""
    found = [sum(p + n in state for n in names) for p in PREFIXES]
    return PREFIXES[int(np.argmax(found))]


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _mismatches(state: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], unexpected: list[str]) -> list[str]:
    """What keeps `state` from being the tensors `expected` (name -> PyTorch shape, in PyTorch's order)."""
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of its {len(expected)} tensors missing, first {missing[0]} "
                        f"{_dims(expected[missing[0]])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, first {unexpected[0]} {_dims(state[unexpected[0]].shape)}")
    if wrong:
        problems.append(f"{wrong[0]} is {_dims(state[wrong[0]].shape)}, "
                        f"the architecture has {_dims(expected[wrong[0]])}")
    return problems


def map_state(state: dict[str, np.ndarray], arch_name: str, *, num_classes: int, input_shape: tuple[int, ...],
              mean: tuple[float, ...], std: tuple[float, ...], source: str = "checkpoint"):
    """The jaxsmooth model holding the variables of a PyTorch state dict of `arch_name`.

    Args:
      state: tensor name -> float32 host array, as `jaxsmooth.convert.read_torch` returns it.
      arch_name: a key of `ARCHS`.
      num_classes, input_shape: the model's logits and (H, W, C) input.
      mean, std: what the model's `apply` normalises by.
      source: how error messages name the state dict's file.
    Returns:
      (model, prefix, normalization): the `models.Model` (params and
      model_state in jaxsmooth's layout, `to_jax`), the prefix of `PREFIXES`
      its names carry, and {"mean", "std"} from a NormalizeLayer that stores
      them as tensors (else {}).
    Raises:
      UserError("--torch"): tensors missing, unexpected or of another shape,
      naming the first one (in PyTorch's order) and the shapes.
    """
    arch = ARCHS[arch_name]
    abstract = abstract_model(arch.model, num_classes, tuple(input_shape), tuple(mean), tuple(std), "relu", 0,
                              "float32")
    return map_onto(state, abstract, functools.partial(torch_name, blocks_per_stage=arch.blocks_per_stage),
                    f"a {arch_name} with {num_classes} classes", source, input_shape[-1])


def map_onto(state: dict[str, np.ndarray], abstract, name_of, what: str, source: str, channels: int):
    """`map_state` for any architecture: the state dict's tensors in the `models.Model` `abstract` (leaves
    `jax.ShapeDtypeStruct`), ``name_of(path)`` giving the PyTorch name (without prefix) of the leaf at `path`.

    Returns (model, prefix, normalization) as `map_state`; a `UserError` on ``--torch`` saying that `source` does
    not hold `what` when a tensor is missing, unexpected or of another shape.
    """
    import jax

    from jaxsmooth import models

    trees = {"params": abstract.params, "model_state": abstract.model_state}
    names = {c: [name_of(tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path))
                 for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]] for c, tree in trees.items()}
    prefix = _pick_prefix(state, names["params"] + names["model_state"])
    expected = {prefix + n: torch_shape(leaf.shape) for c, tree in trees.items()
                for n, leaf in zip(names[c], jax.tree.leaves(tree))}
    expected = dict(sorted(expected.items(), key=lambda item: torch_order(item[0][len(prefix):])))
    normalization, unexpected = _normalize_layer(state, prefix, channels)
    unexpected += [k for k in state if k not in expected and not k.endswith(".num_batches_tracked")
                   and not (prefix.startswith("1.") and k.startswith("0."))]
    problems = _mismatches(state, expected, unexpected)
    if problems:
        raise UserError("--torch", f"{source} does not hold {what} (names under {prefix or 'no prefix'!r}): "
                        + "; ".join(problems))
    filled = {c: jax.tree.unflatten(jax.tree.structure(tree), [to_jax(state[prefix + n]) for n in names[c]])
              for c, tree in trees.items()}
    return models.Model(abstract.apply, filled["params"], filled["model_state"]), prefix, normalization


def _normalize_layer(state: dict[str, np.ndarray], prefix: str, channels: int) -> tuple[dict, list[str]]:
    """The mean/std a NormalizeLayer (Sequential index 0) stores as tensors, and its tensors of no known use."""
    if not prefix.startswith("1."):
        return {}, []
    found, unknown = {}, []
    for key in (k for k in state if k.startswith("0.")):
        name = _NORMALIZE_NAMES.get(key[2:])
        if name is None or state[key].size != channels:
            unknown.append(key)
        else:
            found[name] = tuple(float(v) for v in np.ravel(state[key]))
    return found, unknown
