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
``module.``, converts too. `torch_layout` maps the names onto jaxsmooth's
``resnet20``, ``resnet110`` and ``resnet50``, which are the same
architectures.

A denoiser of denoised smoothing (Salman et al. 2020,
microsoft/denoised-smoothing: ARCH cifar_dncnn, cifar_dncnn_wide or
imagenet_dncnn; ``{"epoch", "arch", "state_dict", "optimizer"}``, names
``dncnn.0.weight``, under ``module.`` for imagenet_dncnn) converts to a
denoiser's workdir (`jaxsmooth.models.dncnn`), which ``certify --denoiser``
reads: model.json (the architecture, input shape and sigma) and its variables,
no config.

A classifier's workdir holds ``config.json`` (a gaussian-objective config of the data
set), ``model.json`` (the checkpoint's own normalisation constants, which for
CIFAR-10 are not the data set's exact statistics, and the source file) and the
variables as an orbax checkpoint of step 0. The sigma is read from the
checkpoint's path (``.../noise_0.25/checkpoint.pth.tar``) or a ``noise_sd``
entry it stores, else from --sigma.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import types
from typing import Any, NamedTuple

import numpy as np

from jaxsmooth import cli, extras, torch_layout
from jaxsmooth.errors import UserError


class DataSet(NamedTuple):
    """A data set as locuslab/smoothing's datasets.py normalises it."""

    data_name: str  # jaxsmooth's data.name
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# _CIFAR10_MEAN/_STDDEV and _IMAGENET_MEAN/_STDDEV of locuslab/smoothing code/datasets.py.
DATASETS = {
    "cifar10": DataSet("cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": DataSet("imagenet2012", (224, 224, 3), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_SIGMA_IN_PATH = re.compile(r"(?<![A-Za-z0-9])(?:noise_sd|noise|sigma)[_=-]?(\d*\.\d+|\d+)(?![\d.])")
_SIGMA_ENTRIES = ("noise_sd", "sigma")


def read_torch(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state dict as float32 host arrays, the checkpoint's other entries) of a PyTorch file.

    Accepts ``{"state_dict": ..., "arch": ...}`` (locuslab/smoothing) and a
    bare state dict (torchvision). Loads with ``weights_only=True``: tensors
    and plain containers only, no code from the file runs.
    """
    if not os.path.isfile(path):
        raise UserError("--torch", f"{path} is not a file")
    torch = extras.require("torch", field="--torch", purpose="reading PyTorch checkpoints")
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


def run_config(model: str, data: DataSet, sigma: float):
    """The config a jaxsmooth run training this model would have: gaussian objective at `sigma`."""
    from jaxsmooth import config as config_lib

    c = config_lib.default()
    c.data.name = data.data_name
    c.data.image_size = data.input_shape[0] if data.data_name.startswith("imagenet") else 0
    c.model.name = model
    c.objective.name = "gaussian"
    c.objective.sigma = float(sigma)
    return c


def _denoisers() -> dict:
    """The paper's DnCNNs (`models.dncnn.ARCHS` of a data set here): Salman et al. 2020's checkpoints."""
    from jaxsmooth.models import dncnn  # imports JAX: only for a name that is not a classifier's

    return {name: arch for name, arch in dncnn.ARCHS.items() if arch.dataset in DATASETS}


def convert(torch_path: str, arch_name: str, workdir: str, *, sigma: float | None = None,
            dataset: str | None = None) -> dict[str, Any]:
    """Converts the PyTorch checkpoint `torch_path` of `arch_name` into a new jaxsmooth `workdir`.

    Args:
      torch_path: a locuslab/smoothing checkpoint (``{"arch", "state_dict"}``), a bare state dict, or a
        denoised-smoothing denoiser's (``{"epoch", "arch", "state_dict", "optimizer"}``).
      arch_name: a key of `torch_layout.ARCHS` (a classifier) or a paper DnCNN (a denoiser, `models.dncnn`);
        must agree with the checkpoint's own ``arch`` entry.
      workdir: a folder that does not exist yet or is empty.
      sigma: the noise level the model was trained at, where its path names none.
      dataset: a key of `DATASETS` (default: the architecture's): whose normalisation constants a classifier
        uses, and a denoiser's input shape.
    Returns:
      the model.json written.
    Raises:
      UserError: naming --torch, --arch, --sigma, --dataset or --workdir.
    """
    arch = torch_layout.ARCHS.get(arch_name) or _denoisers().get(arch_name)
    if arch is None:
        raise UserError("--arch", f"unknown architecture {arch_name!r}; allowed: "
                                  f"{', '.join([*torch_layout.ARCHS, *_denoisers()])}")
    dataset = dataset or arch.dataset
    if dataset not in DATASETS:
        raise UserError("--dataset", f"unknown data set {dataset!r}; allowed: {', '.join(DATASETS)}")
    from jaxsmooth import checkpoint

    checkpoint.check_new_workdir(workdir, "--workdir")  # before reading the PyTorch file
    state, meta = read_torch(torch_path)
    if isinstance(meta.get("arch"), str) and meta["arch"] != arch_name:
        raise UserError("--arch", f"{torch_path} holds a {meta['arch']!r} model, not {arch_name!r}")
    sigma = choose_sigma(named_sigmas(torch_path, meta), sigma, torch_path)
    from jaxsmooth import models  # imports JAX: after the checks of the arguments

    convert_state = _classifier if arch_name in torch_layout.ARCHS else _denoiser
    model, prefix, metadata, config = convert_state(state, arch_name, DATASETS[dataset], sigma, torch_path)
    metadata["source"] = {"torch": os.path.abspath(torch_path), "sha256": _sha256(torch_path), "arch": arch_name,
                          "prefix": prefix, "num_params": models.num_params(model.params)}
    if isinstance(meta.get("epoch"), int):
        metadata["source"]["epoch"] = meta["epoch"]
    checkpoint.write_workdir(workdir, metadata, model.params, model.model_state, config, field="--workdir")
    return metadata


def _classifier(state, arch_name: str, data: DataSet, sigma: float, source: str):
    """(model, prefix, model.json, config) of a classifier's state dict."""
    from jaxsmooth import checkpoint

    model, prefix, normalization = torch_layout.map_state(
        state, arch_name, num_classes=data.num_classes, input_shape=data.input_shape, mean=data.mean, std=data.std,
        source=source)
    data = data._replace(**normalization)
    config = run_config(torch_layout.ARCHS[arch_name].model, data, sigma)
    metadata = checkpoint.model_metadata(config, types.SimpleNamespace(
        input_shape=data.input_shape, num_classes=data.num_classes, mean=data.mean, std=data.std))
    return model, prefix, metadata, config


def _denoiser(state, arch_name: str, data: DataSet, sigma: float, source: str):
    """(model, prefix, model.json, None) of a DnCNN's state dict: a denoiser's workdir has no config."""
    import functools

    from jaxsmooth.models import dncnn

    metadata = dncnn.metadata(data.input_shape, sigma, arch=arch_name)
    model, prefix, _ = torch_layout.map_onto(state, dncnn.build(metadata), functools.partial(
        torch_layout.dncnn_name, depth=metadata["depth"]), f"a {arch_name}", source, data.input_shape[-1])
    return model, prefix, metadata, None


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("convert", __doc__.split("\n\n")[1])
    p.add_argument("--torch", required=True, help="the PyTorch checkpoint, e.g. models/cifar10/resnet110/noise_0.25/"
                                                  "checkpoint.pth.tar")
    p.add_argument("--arch", required=True, help=f"its architecture: {', '.join(torch_layout.ARCHS)} (classifiers); "
                                                 "cifar_dncnn, cifar_dncnn_wide, imagenet_dncnn (denoisers)")
    p.add_argument("--workdir", required=True, help="the jaxsmooth workdir to write (new, or an empty folder)")
    p.add_argument("--sigma", type=float, default=None,
                   help="the training noise level, where the checkpoint's path names none (noise_0.25)")
    p.add_argument("--dataset", default=None,
                   help=f"whose normalisation a classifier uses, and a denoiser's input shape: {', '.join(DATASETS)} "
                        "(default: the architecture's)")
    return p


def command(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    found = convert(args.torch, args.arch, args.workdir, sigma=args.sigma, dataset=args.dataset)
    if "wrapper" in found:  # a denoiser's workdir: no classes, no normalisation
        print(f"wrote {os.path.abspath(args.workdir)}: a denoiser ({args.arch}, depth {found['depth']}, width "
              f"{found['width']}, {found['source']['num_params']:,} parameters), input {tuple(found['input_shape'])}, "
              f"sigma {found['sigma']}")
        return 0
    print(f"wrote {os.path.abspath(args.workdir)}: {found['model']} ({args.arch}, "
          f"{found['source']['num_params']:,} parameters), {found['dataset']}, sigma {found['sigma']}, "
          f"mean {found['mean']}, std {found['std']}")
    return 0


main = cli.main_wrapper(command, parser=_parser)

if __name__ == "__main__":
    sys.exit(main())
