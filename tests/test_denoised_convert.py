"""The paper's DnCNN checkpoints (microsoft/denoised-smoothing) -> denoiser workdirs (`jaxsmooth.convert`).

The PyTorch DnCNN (`jaxsmooth.benchmarks.torch_reference.DnCNN`, the layout of
their code/archs/dncnn.py: one ``nn.Sequential`` named ``dncnn``: conv with
bias, ReLU, then conv without bias, BatchNorm2d(eps 1e-4, momentum 0.95), ReLU,
and a last conv without bias; forward x - dncnn(x)) is given random weights and
non-trivial running statistics, saved as their train_denoiser.py saves it
(``epoch``, ``arch``, ``state_dict``, ``optimizer``), converted, and its
output compared with PyTorch's in eval mode.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from jaxsmooth import convert, loader  # noqa: E402
from jaxsmooth.benchmarks.torch_reference import DnCNN as TorchDnCNN  # noqa: E402
from jaxsmooth.models import dncnn  # noqa: E402

from helpers import random_torch_dncnn  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _torch_denoiser(arch: str, seed: int = 0) -> nn.Module:
    spec = dncnn.ARCHS[arch]
    return random_torch_dncnn(spec.depth, spec.width, spec.input_shape[-1], seed)


def _save(model: nn.Module, arch: str, folder, data_parallel: bool = False) -> str:
    """Saved as their train_denoiser.py saves it, under FOLDER/ARCH/noise_0.25/checkpoint.pth.tar."""
    path = folder / arch / "noise_0.25" / "checkpoint.pth.tar"
    path.parent.mkdir(parents=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = (nn.DataParallel(model) if data_parallel else model).state_dict()
    torch.save({"epoch": 90, "arch": arch, "state_dict": state, "optimizer": optimizer.state_dict()}, path)
    return str(path)


def _torch_output(model: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("arch, data_parallel", [("cifar_dncnn", False), ("imagenet_dncnn", True)])
def test_converted_denoiser_outputs_equal_pytorch(arch, data_parallel, tmp_path, capsys):
    """Names under no prefix (CIFAR) and under ``module.`` (ImageNet, DataParallel) convert to the same function:
    the converted denoiser, BatchNorm folded as certification runs it, gives PyTorch's eval-mode output within
    float32 rounding (inputs 16x16: a DnCNN is fully convolutional, so a small image checks every weight)."""
    model = _torch_denoiser(arch)
    path = _save(model, arch, tmp_path / "models", data_parallel)
    workdir = str(tmp_path / "converted")
    assert convert.main(["--torch", path, "--arch", arch, "--workdir", workdir]) == 0
    spec = dncnn.ARCHS[arch]
    found = json.load(open(f"{workdir}/model.json"))
    assert capsys.readouterr().out == (f"wrote {workdir}: a denoiser ({arch}, depth 17, width 64, 558,400 parameters), "
                                       f"input {spec.input_shape}, sigma 0.25\n")
    assert (found["wrapper"], found["arch"], found["depth"], found["width"], found["sigma"]) == (
        "denoiser", arch, spec.depth, spec.width, 0.25)
    assert found["input_shape"] == list(spec.input_shape) and found["source"]["epoch"] == 90
    assert found["source"]["prefix"] == ("module." if data_parallel else "")
    assert found["source"]["num_params"] == sum(p.numel() for p in model.parameters())
    x = np.random.default_rng(0).uniform(-0.3, 1.3, (2, 16, 16, 3)).astype(np.float32)  # images plus noise
    expected = _torch_output(model, x)
    for folded in (True, False):
        loaded = loader.load_model(workdir, fold_batch_norm=folded)
        assert loaded.is_wrapper and loaded.sigma == 0.25 and loaded.input_shape == spec.input_shape
        ours = np.asarray(loaded.apply(loaded.params, loaded.model_state, x, train=False)[0])
        np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-5 * np.abs(expected).max())
    assert np.abs(expected - x).max() > 0.1  # the residual is far from zero: every layer counts


def test_a_mismatched_denoiser_checkpoint_is_one_error_line(tmp_path, capsys):
    """Another arch entry, another width, one layer short, and a name that is not the paper's: one line each,
    nothing written."""
    torch.manual_seed(0)
    paths = {}
    for name, depth, arch in [("dncnn", 17, "cifar_dncnn"), ("bare", 17, None), ("short", 16, None)]:
        path = tmp_path / name / "noise_0.5" / "checkpoint.pth.tar"
        path.parent.mkdir(parents=True)
        state = TorchDnCNN(depth, 64, 3).state_dict()
        torch.save(state if arch is None else {"epoch": 1, "arch": arch, "state_dict": state, "optimizer": {}}, path)
        paths[name] = str(path)
    expected = [
        (paths["dncnn"], "cifar_dncnn_wide", "--arch", "holds a 'cifar_dncnn' model, not 'cifar_dncnn_wide'"),
        (paths["bare"], "cifar_dncnn_wide", "--torch", "does not hold a cifar_dncnn_wide (names under 'no prefix'): "
                                                       "dncnn.0.weight is [64, 3, 3, 3], the architecture has "
                                                       "[128, 3, 3, 3]"),
        (paths["short"], "cifar_dncnn", "--torch", "does not hold a cifar_dncnn (names under 'no prefix'): 5 of its "
                                                   "78 tensors missing, first dncnn.45.weight [64]; dncnn.44.weight is "
                                                   "[3, 64, 3, 3], the architecture has [64, 64, 3, 3]"),
        (paths["dncnn"], "mnist_dncnn", "--arch", "allowed: cifar_resnet20, cifar_resnet110, resnet50, cifar_dncnn, "
                                                  "cifar_dncnn_wide, imagenet_dncnn"),
    ]
    for i, (path, arch, field, words) in enumerate(expected):
        workdir = tmp_path / f"out{i}"
        assert convert.main(["--torch", path, "--arch", arch, "--workdir", str(workdir)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {field}: ") and words in err, err
        assert not workdir.exists()
