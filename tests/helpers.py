"""Small shared pieces of the tests."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp

from jaxsmooth import config as config_lib

from conftest import ROOT


QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")
SMALL = ["--config.model.width=4", "--config.train.num_epochs=1", "--config.train.eval_every_epochs=0"]


def train_small(tmp_path_factory, name: str) -> str:
    """The quick-start model at width 4, one epoch, trained by the train CLI in a fresh folder; its workdir."""
    from jaxsmooth import train

    path = str(tmp_path_factory.mktemp(name) / "run")
    assert train.main(["--config", QUICKSTART, "--workdir", path, "--no-progress"] + SMALL) == 0
    return path


def fails_with(run, capsys, argv, field: str) -> str:
    """Runs a CLI's `run(argv)`, which must exit 2 with one stderr line ``error: FIELD: ...``; that line."""
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {field}: "), err[0]
    return err[0]


def sidecar_settings(path, program):
    """The settings a jaxsmooth TSV's sidecar (``FILE.tsv.json``) holds, after checking its program."""
    with open(f"{path}.json") as f:
        record = json.load(f)
    assert record["program"] == program
    return record["settings"]


def copy_sidecar(src, dst):
    """Gives the TSV `dst` (a copy of `src`'s table, cut as a killed job leaves it) `src`'s sidecar."""
    with open(f"{src}.json") as f, open(f"{dst}.json", "w") as g:
        g.write(f.read())


def tsv_rows(path):
    """(header, rows) of a TSV, comment lines left out, each row a list of fields."""
    with open(path) as f:
        lines = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    return lines[0], lines[1:]


def quick_config(*overrides: str):
    """The quick-start config shrunk to a few fast steps on 8 devices."""
    c = config_lib.load(os.path.join(ROOT, "configs", "quickstart.py"))
    base = ["model.width=4", "train.batch_size=64", "train.num_epochs=1", "train.log_every_steps=5",
            "train.checkpoint_every_steps=10", "train.eval_every_epochs=0", "train.eval_batch_size=120"]
    return config_lib.apply_overrides(c, base + list(overrides))


def saved_params(workdir: str, step: int):
    """The parameters saved in a workdir's checkpoint at `step`, as host arrays (no target tree)."""
    path = os.path.join(workdir, "checkpoints", str(step), "default")
    return ocp.StandardCheckpointer().restore(os.path.abspath(path))["params"]


def counts_across_layouts(make_sampler, x, index, sigma, n, key, layouts):
    """Counts of n samples of each input under every (devices, inputs per call, chunk) layout, asserted equal to
    each other (the stream depends on the key, the indices and n only); the counts."""
    reference = None
    for n_devices, inputs, chunk in layouts:
        sampler = make_sampler(n_devices, inputs, chunk)
        counts = np.concatenate([sampler(x[i:i + inputs], index[i:i + inputs], sigma, n, key).counts
                                 for i in range(0, len(x), inputs)])
        assert counts.sum(1).tolist() == [n] * len(x)
        if reference is None:
            reference = counts
        np.testing.assert_array_equal(counts, reference)
    return reference


def spy_compile_fastest(monkeypatch) -> list:
    """Records the candidates of every `compilation.compile_fastest` call from now on (None: it timed
    `compilation.AUTO_CANDIDATES`) in the list it returns."""
    from jaxsmooth import compilation

    calls = []
    original = compilation.compile_fastest

    def spy(jitted, *args, candidates=None, repeats=3):
        calls.append(None if candidates is None else [dict(c) for c in candidates])
        return original(jitted, *args, candidates=candidates, repeats=repeats)

    monkeypatch.setattr(compilation, "compile_fastest", spy)
    return calls


def random_torch_dncnn(depth: int, width: int, channels: int, seed: int = 0):
    """A PyTorch DnCNN (`torch_reference.DnCNN`) in eval mode with random weights: random kernels (the last one too,
    which the paper's init zeroes), random BatchNorm weights, and running statistics of two train-mode batches
    times a random factor."""
    import torch
    from torch import nn

    from jaxsmooth.benchmarks.torch_reference import DnCNN

    torch.manual_seed(seed)
    model = DnCNN(depth, width, channels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, (2.0 / (9 * m.in_channels)) ** 0.5, generator=g)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
        model.train()
        for _ in range(2):
            model(torch.rand(4, channels, 16, 16, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean += 0.1 * torch.randn(m.running_mean.shape, generator=g)
                m.running_var *= torch.empty(m.running_var.shape).uniform_(0.7, 1.4, generator=g)
    return model.eval()


def denoiser_workdir(path, sigma=0.25, input_shape=(8, 8, 1), depth=3, width=4, seed=0) -> str:
    """A DnCNN with random weights, its last kernel too (their init zeroes it: the identity), as a workdir."""
    import jax

    from jaxsmooth import checkpoint, models
    from jaxsmooth.models import dncnn

    info = dncnn.metadata(input_shape, sigma, depth=depth, width=width)
    model = models.split(dncnn.create(info, seed=seed))
    params, state = jax.device_get((model.params, model.model_state))
    params["last"]["kernel"] = np.random.default_rng(seed).normal(0, 0.2, params["last"]["kernel"].shape)
    params["last"]["kernel"] = params["last"]["kernel"].astype(np.float32)
    checkpoint.write_workdir(str(path), info, params, state)
    return str(path)
