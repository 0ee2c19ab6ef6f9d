"""``python -m jaxsmooth.convert --torch CKPT --arch ARCH --workdir W [--sigma S] [--dataset NAME]``

Turns a PyTorch checkpoint of the smoothed models published with Cohen et
al. 2019 (locuslab/smoothing), Salman et al. 2019 (SmoothAdv) or Jeong &
Shin 2020 (consistency) into a jaxsmooth workdir that certify, attack and
`jaxsmooth.load` read like a training run's. ARCH is one of cifar_resnet20,
cifar_resnet110 (CIFAR-10) and resnet50 (ImageNet).

Their checkpoints are ``{"arch": ..., "state_dict": ...}`` of
``Sequential(NormalizeLayer, model)``, so tensor names read
``1.conv1.weight`` (CIFAR) or ``1.module.conv1.weight`` (ResNet-50 under
``DataParallel``); a bare torchvision ResNet-50 state dict, with or without
``module.``, converts too. The architectures are jaxsmooth's own: He et al.'s
CIFAR ResNet of bearpaw/pytorch-classification (3x3 stem, 1x1 conv + BN
projection shortcuts where the shape changes, stride 2 on the first 3x3 conv
of stages 2 and 3, 8x8 average pool = global pool at 32x32) is ``resnet20`` /
``resnet110``; torchvision's ResNet-50 v1.5 is ``resnet50``. Convolutions go
from PyTorch's [out, in, h, w] to [h, w, in, out], linear weights transpose,
BatchNorm weight / bias / running mean / running variance become scale / bias
/ mean / var.

The workdir holds ``config.json`` (a gaussian-objective config of the data
set), ``model.json`` (the checkpoint's own normalisation constants, which for
CIFAR-10 are not the data set's exact statistics, and the source file) and the
variables as an orbax checkpoint of step 0. The sigma is read from the
checkpoint's path (``.../noise_0.25/checkpoint.pth.tar``) or a ``noise_sd``
entry it stores, else from --sigma.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import shutil
import sys
import tempfile
import types
from typing import Any, NamedTuple

import numpy as np

from jaxsmooth import cli
from jaxsmooth.errors import UserError


class Arch(NamedTuple):
    model: str  # the jaxsmooth.models name
    dataset: str  # key of DATASETS: the data set locuslab/smoothing builds the architecture for
    blocks_per_stage: tuple[int, ...]


class DataSet(NamedTuple):
    """A data set as locuslab/smoothing's datasets.py normalises it."""

    data_name: str  # jaxsmooth's data.name
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


ARCHS = {
    "cifar_resnet20": Arch("resnet20", "cifar10", (3, 3, 3)),
    "cifar_resnet110": Arch("resnet110", "cifar10", (18, 18, 18)),
    "resnet50": Arch("resnet50", "imagenet", (3, 4, 6, 3)),
}
# _CIFAR10_MEAN/_STDDEV and _IMAGENET_MEAN/_STDDEV of locuslab/smoothing code/datasets.py.
DATASETS = {
    "cifar10": DataSet("cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": DataSet("imagenet2012", (224, 224, 3), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# Where the network's tensors sit: under Sequential index 1, under DataParallel, both or neither.
PREFIXES = ("1.module.", "1.", "module.", "")
_NORMALIZE_NAMES = {"means": "mean", "mean": "mean", "sds": "std", "std": "std"}  # a NormalizeLayer with buffers
_SIGMA_IN_PATH = re.compile(r"(?<![A-Za-z0-9])(?:noise_sd|noise|sigma)[_=-]?(\d*\.\d+|\d+)(?![\d.])")
_SIGMA_ENTRIES = ("noise_sd", "sigma")

_TOP = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_SHORTCUT = {"conv": "downsample.0", "bn": "downsample.1"}
_TORCH_RANK = {"conv1": 0, "bn1": 1, "conv2": 2, "bn2": 3, "conv3": 4, "bn3": 5, "downsample": 6, "fc": 99,
               "weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


# --------------------------------------------------------------------------
# The mapping


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


def torch_order(name: str) -> tuple[int, ...]:
    """Sort key putting state-dict names (without prefix) in the order PyTorch's ``state_dict()`` lists them."""
    return tuple(_TORCH_RANK[p] if p in _TORCH_RANK else 10 + int(p[5:]) if p.startswith("layer") else int(p)
                 for p in name.split("."))


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
    CPU for ResNet-110); the result is read-only, so every conversion and
    load of the same model shares it.
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


def map_state(state: dict[str, np.ndarray], arch_name: str, data: DataSet, *, source: str = "checkpoint"):
    """The jaxsmooth model holding the variables of a PyTorch state dict of `arch_name`.

    Args:
      state: tensor name -> float32 array, as `read_torch` returns it.
      arch_name: a key of `ARCHS`.
      data: the data set: number of classes, and the mean/std the model's
        `apply` normalises by.
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
    import jax

    from jaxsmooth import models

    arch = ARCHS[arch_name]
    abstract = abstract_model(arch.model, data.num_classes, tuple(data.input_shape), tuple(data.mean),
                              tuple(data.std), "relu", 0, "float32")
    trees = {"params": abstract.params, "model_state": abstract.model_state}
    names = {c: [torch_name(tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path), arch.blocks_per_stage)
                 for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]] for c, tree in trees.items()}
    prefix = _pick_prefix(state, names["params"] + names["model_state"])
    expected = {prefix + n: torch_shape(leaf.shape) for c, tree in trees.items()
                for n, leaf in zip(names[c], jax.tree.leaves(tree))}
    expected = dict(sorted(expected.items(), key=lambda item: torch_order(item[0][len(prefix):])))
    normalization, unexpected = _normalize_layer(state, prefix, data.input_shape[-1])
    unexpected += [k for k in state if k not in expected and not k.endswith(".num_batches_tracked")
                   and not (prefix.startswith("1.") and k.startswith("0."))]
    problems = _mismatches(state, expected, unexpected)
    if problems:
        raise UserError("--torch", f"{source} does not hold a {arch_name} with {data.num_classes} classes "
                                   f"(names under {prefix or 'no prefix'!r}): " + "; ".join(problems))
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


# --------------------------------------------------------------------------
# Reading and writing


def read_torch(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state dict as float32 host arrays, the checkpoint's other entries) of a PyTorch file.

    Accepts ``{"state_dict": ..., "arch": ...}`` (locuslab/smoothing) and a
    bare state dict (torchvision). Loads with ``weights_only=True``: tensors
    and plain containers only, no code from the file runs.
    """
    if not os.path.isfile(path):
        raise UserError("--torch", f"{path} is not a file")
    try:
        import torch
    except ImportError:
        raise UserError("--torch", "reading PyTorch checkpoints needs torch: pip install 'jaxsmooth[torch]'") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports a non-checkpoint file with many types
        raise UserError("--torch", _load_failure(path, str(e) or type(e).__name__)) from None
    if not isinstance(loaded, dict):
        raise UserError("--torch", f"{path} holds a {type(loaded).__name__}, not a checkpoint dict or state dict")
    meta = {k: v for k, v in loaded.items() if k != "state_dict"} if "state_dict" in loaded else {}
    state = loaded.get("state_dict", loaded)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise UserError("--torch", f"{path} holds no tensors (entries: {', '.join(map(str, list(loaded)[:8]))})")
    return {k: v.detach().to(torch.float32).numpy() for k, v in tensors.items()}, meta


def _load_failure(path: str, message: str) -> str:
    """One line saying why ``torch.load(path, weights_only=True)`` failed with `message`."""
    pickled = re.search(r"GLOBAL (\S+)", message)
    if pickled:
        return (f"{path} holds Python objects besides tensors ({pickled.group(1)}), which are not loaded: loading "
                "them runs code from the file; save its {'arch', 'state_dict'} alone with torch.save and convert that")
    reason = message.split("WeightsUnpickler error:")[-1].strip() or message
    return f"cannot read {path} as a PyTorch checkpoint: {reason.splitlines()[0][:300]}"


def named_sigmas(path: str, meta: dict[str, Any]) -> set[float]:
    """Noise levels that the checkpoint's path (``noise_0.25``, ``sigma_0.5``) or its stored entries name."""
    found = {float(m) for part in os.path.abspath(path).split(os.sep) for m in _SIGMA_IN_PATH.findall(part)}
    stored = [meta, meta["args"]] if isinstance(meta.get("args"), dict) else [meta]
    for entries in stored:
        for key in _SIGMA_ENTRIES:
            value = entries.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.add(float(value))
    return found


def choose_sigma(named: set[float], flag: float | None, path: str) -> float:
    """--sigma where given (it must agree with what the checkpoint names), else the one sigma it names."""
    if flag is not None:
        if not (np.isfinite(flag) and flag > 0):
            raise UserError("--sigma", f"must be > 0, got {flag}")
        if named and flag not in named:
            raise UserError("--sigma", f"{path} names noise level {', '.join(map(str, sorted(named)))}, not {flag}; "
                                       "leave --sigma out or give that value")
        return float(flag)
    if not named:
        raise UserError("--sigma", f"required: {path} names no noise level (a path part such as noise_0.25, or "
                                   "a stored noise_sd entry)")
    if len(named) > 1:
        levels = ", ".join(map(str, sorted(named)))
        raise UserError("--sigma", f"required: {path} names several noise levels ({levels})")
    return named.pop()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _empty_workdir(workdir: str) -> str:
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise UserError("--workdir", f"{workdir} exists and is not an empty folder; give a new one")
    parent = os.path.dirname(workdir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError("--workdir", f"cannot create {parent}: {e.strerror or e}") from None
    return workdir


def _write(workdir: str, config, metadata: dict, model) -> None:
    """config.json, model.json and checkpoints/0 into a hidden sibling folder, then renamed to `workdir`.

    A kill leaves either no `workdir` or a whole one.
    """
    from jaxsmooth import checkpoint, config as config_lib

    tmp = tempfile.mkdtemp(dir=os.path.dirname(workdir), prefix=f".{os.path.basename(workdir)}.convert-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # as os.makedirs would have made it (mkdtemp's is private)
    try:
        saver = checkpoint.Checkpointer(tmp, keep=1)
        saver.save(0, {"step": np.int32(0), "params": model.params, "model_state": model.model_state}, force=True)
        saver.close()
        with open(os.path.join(tmp, checkpoint.CONFIG_FILE), "w") as f:
            f.write(config_lib.to_json(config) + "\n")
        checkpoint.write_json(os.path.join(tmp, checkpoint.MODEL_FILE), metadata)
        if os.path.isdir(workdir):
            os.rmdir(workdir)  # empty, checked by `_empty_workdir`
        os.rename(tmp, workdir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def load_model(workdir: str, *, dtype: str = "float32", field: str = "--workdir"):
    """(`models.Model` of `workdir`'s latest checkpoint, its model.json), built from model.json alone.

    The model normalises by model.json's mean/std (a converted model's own
    constants); `dtype` is its compute dtype.
    """
    import jax

    from jaxsmooth import checkpoint, models

    found = checkpoint.read_json(os.path.join(workdir, checkpoint.MODEL_FILE), field)
    folder = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
    steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []
    if not steps:
        raise UserError(field, f"{workdir} holds no checkpoints")
    raw = checkpoint.read_model(os.path.join(folder, str(steps[-1])), field)
    abstract = abstract_model(found["model"], int(found["num_classes"]), tuple(found["input_shape"]),
                              tuple(found["mean"]), tuple(found["std"]), found.get("activation", "relu"),
                              int(found.get("width", 0)), dtype)

    def lookup(collection):
        def get(path, _):
            node = raw[collection]
            for entry in path:
                key = getattr(entry, "key", getattr(entry, "idx", None))
                node = node[key] if key in node else node[str(key)]
            return np.asarray(node)
        return jax.tree_util.tree_map_with_path(get, getattr(abstract, collection))

    try:
        return models.Model(abstract.apply, lookup("params"), lookup("model_state")), found
    except (KeyError, TypeError) as e:
        raise UserError(field, f"{workdir}'s checkpoint lacks model variable {e}") from None


def run_config(arch: Arch, data: DataSet, sigma: float):
    """The config a jaxsmooth run training this model would have: gaussian objective at `sigma`."""
    from jaxsmooth import config as config_lib

    c = config_lib.default()
    c.data.name = data.data_name
    c.data.image_size = data.input_shape[0] if data.data_name.startswith("imagenet") else 0
    c.model.name = arch.model
    c.objective.name = "gaussian"
    c.objective.sigma = float(sigma)
    return c


def convert(torch_path: str, arch_name: str, workdir: str, *, sigma: float | None = None,
            dataset: str | None = None) -> dict[str, Any]:
    """Converts the PyTorch checkpoint `torch_path` of `arch_name` into a new jaxsmooth `workdir`.

    Args:
      torch_path: a locuslab/smoothing checkpoint (``{"arch", "state_dict"}``) or a bare state dict.
      arch_name: a key of `ARCHS`; must agree with the checkpoint's own ``arch`` entry.
      workdir: a folder that does not exist yet or is empty.
      sigma: the noise level the model was trained at, where its path names none.
      dataset: a key of `DATASETS` (default: the architecture's): whose normalisation constants the model uses.
    Returns:
      the model.json written.
    Raises:
      UserError: naming --torch, --arch, --sigma, --dataset or --workdir.
    """
    from jaxsmooth import checkpoint, models

    if arch_name not in ARCHS:
        raise UserError("--arch", f"unknown architecture {arch_name!r}; allowed: {', '.join(ARCHS)}")
    arch = ARCHS[arch_name]
    dataset = dataset or arch.dataset
    if dataset not in DATASETS:
        raise UserError("--dataset", f"unknown data set {dataset!r}; allowed: {', '.join(DATASETS)}")
    workdir = _empty_workdir(workdir)
    state, meta = read_torch(torch_path)
    if isinstance(meta.get("arch"), str) and meta["arch"] != arch_name:
        raise UserError("--arch", f"{torch_path} holds a {meta['arch']!r} model, not {arch_name!r}")
    sigma = choose_sigma(named_sigmas(torch_path, meta), sigma, torch_path)
    data = DATASETS[dataset]
    model, prefix, normalization = map_state(state, arch_name, data, source=torch_path)
    data = data._replace(**normalization)
    config = run_config(arch, data, sigma)
    metadata = checkpoint.model_metadata(config, types.SimpleNamespace(
        input_shape=data.input_shape, num_classes=data.num_classes, mean=data.mean, std=data.std))
    metadata["source"] = {"torch": os.path.abspath(torch_path), "sha256": _sha256(torch_path), "arch": arch_name,
                          "prefix": prefix, "num_params": models.num_params(model.params)}
    if isinstance(meta.get("epoch"), int):
        metadata["source"]["epoch"] = meta["epoch"]
    _write(workdir, config, metadata, model)
    return metadata


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxsmooth.convert", description=__doc__.split("\n\n")[1])
    p.add_argument("--torch", required=True, help="the PyTorch checkpoint, e.g. models/cifar10/resnet110/noise_0.25/"
                                                  "checkpoint.pth.tar")
    p.add_argument("--arch", required=True, help=f"its architecture: {', '.join(ARCHS)}")
    p.add_argument("--workdir", required=True, help="the jaxsmooth workdir to write (new, or an empty folder)")
    p.add_argument("--sigma", type=float, default=None,
                   help="the training noise level, where the checkpoint's path names none (noise_0.25)")
    p.add_argument("--dataset", default=None,
                   help=f"whose normalisation the model uses: {', '.join(DATASETS)} (default: the architecture's)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    found = convert(args.torch, args.arch, args.workdir, sigma=args.sigma, dataset=args.dataset)
    print(f"wrote {os.path.abspath(args.workdir)}: {found['model']} ({args.arch}, "
          f"{found['source']['num_params']:,} parameters), {found['dataset']}, sigma {found['sigma']}, "
          f"mean {found['mean']}, std {found['std']}")
    return 0


run = cli.main_wrapper(main)

if __name__ == "__main__":
    sys.exit(run())
