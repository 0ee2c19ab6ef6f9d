"""PyTorch checkpoints of locuslab/smoothing's layout -> jaxsmooth workdirs (`jaxsmooth.convert`).

The PyTorch models below are written here with the tensor names of
locuslab/smoothing (code/archs/cifar_resnet.py, itself bearpaw's CIFAR
ResNet) and torchvision's ResNet-50, randomly initialised, with BatchNorm
weights and running statistics made non-trivial. Each is saved as their
training script saves it, converted, and its converted logits and PREDICT
counts compared with PyTorch's on the same inputs and the same noise.
"""

import argparse
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import jaxsmooth  # noqa: E402
from jaxsmooth import certification, checkpoint, convert, models, noise, torch_layout  # noqa: E402

from conftest import ROOT  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # locuslab/smoothing datasets.py
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class NormalizeLayer(nn.Module):
    """(x - mean) / std with constants that are not tensors of the state dict, as theirs."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def forward(self, x):
        return (x - self.mean) / self.std


def _downsample(cin, cout, stride):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """torchvision's (v1.5): the stride on the 3x3 convolution."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.downsample = _downsample(cin, 4 * planes, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(out)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


def _stage(block, cin, planes, n, stride, expansion):
    blocks = [block(cin, planes, stride)] + [block(planes * expansion, planes, 1) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class CifarResNet(nn.Module):
    """3x3 stem (16), three stages of (depth - 2) / 6 basic blocks, 8x8 average pool, fc."""

    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(BasicBlock, 16, 16, n, 1, 1)
        self.layer2 = _stage(BasicBlock, 16, 32, n, 2, 1)
        self.layer3 = _stage(BasicBlock, 32, 64, n, 2, 1)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(self.avgpool(x).flatten(1))


class ResNet50(nn.Module):
    """torchvision's: 7x7/2 stem, 3x3/2 max-pool, bottlenecks [3, 4, 6, 3], adaptive average pool, fc."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(Bottleneck, 64, 64, 3, 1, 4)
        self.layer2 = _stage(Bottleneck, 256, 128, 4, 2, 4)
        self.layer3 = _stage(Bottleneck, 512, 256, 6, 2, 4)
        self.layer4 = _stage(Bottleneck, 1024, 512, 3, 2, 4)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


# arch -> (network, normalisation, input side of the test, wrapped in DataParallel as their ImageNet model)
CASES = {
    "cifar_resnet20": (lambda: CifarResNet(20), (CIFAR_MEAN, CIFAR_STD), 32, False),
    "cifar_resnet110": (lambda: CifarResNet(110), (CIFAR_MEAN, CIFAR_STD), 32, False),
    "resnet50": (lambda: ResNet50(), (IMAGENET_MEAN, IMAGENET_STD), 64, True),
}


def _randomize_batch_norm(model: nn.Module, side: int, seed: int) -> None:
    """Random affine BatchNorm weights, and running statistics of two train-mode batches plus a random shift."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0.0, 0.2, generator=g)
            m.momentum = None  # running statistics: the cumulative average of the batches below
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 3, side, side, generator=g))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean += 0.1 * torch.randn(m.running_mean.shape, generator=g)
            m.running_var *= torch.empty(m.running_var.shape).uniform_(0.7, 1.4, generator=g)
    model.eval()


def _center_head(model: nn.Module, noisy_nhwc: np.ndarray) -> None:
    """Shifts the fc bias so that each logit averages 0 over `noisy_nhwc`: the noisy samples then spread over classes.

    A random network gives almost every input the same class; with the
    shift, the PREDICT counts compared below hold several classes.
    """
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        fc.bias -= torch.from_numpy(_torch_logits(model, noisy_nhwc).mean(0))


def _torch_model(arch: str, seed: int = 0) -> nn.Module:
    """Sequential(NormalizeLayer, network) in eval mode, as locuslab/smoothing's get_architecture builds it."""
    build, (mean, std), side, data_parallel = CASES[arch]
    torch.manual_seed(seed)
    net = build()
    _randomize_batch_norm(net, side, seed)
    model = nn.Sequential(NormalizeLayer(mean, std), nn.DataParallel(net) if data_parallel else net).eval()
    _center_head(model, _noisy_inputs(side)[1])
    return model


def _save_checkpoint(model: nn.Module, arch: str, folder) -> str:
    """The model saved as their train.py saves it, under FOLDER/ARCH/noise_0.25/checkpoint.pth.tar."""
    path = folder / arch / "noise_0.25" / "checkpoint.pth.tar"
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 90, "arch": arch, "state_dict": model.state_dict(), "optimizer": {"state": {}}}, path)
    return str(path)


def _torch_logits(model: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def _documented_noise(key, index: int, n: int, shape) -> np.ndarray:
    """[n, *shape] the engine's noise of example `index`: z_j = normal(fold_in(fold_in(key, index), j))."""
    k = jax.random.fold_in(key, index)
    return np.asarray(jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(k, j), shape))(np.arange(n)))


SEED, INDEX, N, SIGMA = 7, 3, 64, 0.5  # the PREDICT comparisons: n = 64 samples of example 3 at sigma 0.5


def _noisy_inputs(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(x [4, side, side, 3] uniform in [0, 1], x[0] + SIGMA * z [N, side, side, 3]).

    z is the noise PREDICT draws for example INDEX with seed SEED: the
    certify stream of the seed's root key, its predict key (`noise.py`,
    `certification.stream_keys`), then the engine's per-sample keys.
    """
    x = np.random.default_rng(1).uniform(size=(4, side, side, 3)).astype(np.float32)
    key = certification.stream_keys(noise.certify_key(noise.root_key(SEED)))["predict"]
    return x, x[0] + np.float32(SIGMA) * _documented_noise(key, INDEX, N, x.shape[1:])


def _variables(workdir: str):
    """(params, model_state) of the workdir's checkpoint as the one workdir reader reads them (BatchNorm unfolded)."""
    info = json.load(open(os.path.join(workdir, "model.json")))
    abstract = torch_layout.abstract_model(info["model"], info["num_classes"], tuple(info["input_shape"]),
                                      tuple(info["mean"]), tuple(info["std"]), "relu", 0, "float32")
    params, model_state, _ = checkpoint.read_variables(workdir, (abstract.params, abstract.model_state), "workdir")
    return models.Model(abstract.apply, params, model_state)


@pytest.fixture(scope="module")
def conversions(tmp_path_factory):
    """arch -> (arch, torch model, workdir): the model converted by the CLI, once per architecture."""
    done = {}

    def get(arch):
        if arch not in done:
            folder = tmp_path_factory.mktemp(arch)
            model = _torch_model(arch)
            ckpt = _save_checkpoint(model, arch, folder / "models")
            workdir = str(folder / "converted")
            assert convert.main(["--torch", ckpt, "--arch", arch, "--workdir", workdir]) == 0
            done[arch] = arch, model, workdir
        return done[arch]

    return get


@pytest.fixture(params=["cifar_resnet20", "cifar_resnet110", pytest.param("resnet50", marks=pytest.mark.slow)])
def converted(request, conversions):
    return conversions(request.param)


def test_workdir_describes_the_checkpoint(converted):
    """model.json: the model name, the checkpoint's normalisation (not the data set's), sigma from the path."""
    arch, _, workdir = converted
    found = json.load(open(os.path.join(workdir, "model.json")))
    config = json.load(open(os.path.join(workdir, "config.json")))
    (mean, std), cifar = CASES[arch][1], arch.startswith("cifar")
    assert found["model"] == torch_layout.ARCHS[arch].model == config["model"]["name"]
    assert (found["mean"], found["std"]) == (list(mean), list(std))
    assert found["dataset"] == config["data"]["name"] == ("cifar10" if cifar else "imagenet2012")
    assert (found["num_classes"], found["input_shape"]) == ((10, [32, 32, 3]) if cifar else (1000, [224, 224, 3]))
    assert found["sigma"] == config["objective"]["sigma"] == 0.25
    assert (found["objective"], config["objective"]["name"]) == ("gaussian", "gaussian")
    assert found["source"]["arch"] == arch and found["source"]["epoch"] == 90
    assert found["source"]["prefix"] == ("1." if cifar else "1.module.")


def test_every_prefix_maps_to_the_same_variables(converted):
    """The network's bare state dict (torchvision's names), under ``module.`` or ``1.module.``: the same variables."""
    arch, model, workdir = converted
    loaded = _variables(workdir)
    net = model[1].module if isinstance(model[1], nn.DataParallel) else model[1]
    bare = {k: v.numpy() for k, v in net.state_dict().items()}
    data = convert.DATASETS[torch_layout.ARCHS[arch].dataset]
    for prefix in ("", "module.", "1.module.", "1."):
        mapped, found, _ = torch_layout.map_state({prefix + k: v for k, v in bare.items()}, arch,
                                                  num_classes=data.num_classes, input_shape=data.input_shape,
                                                  mean=data.mean, std=data.std)
        assert found == prefix
        chex.assert_trees_all_equal((mapped.params, mapped.model_state), (loaded.params, loaded.model_state))


def _counts_within_rounding(counts: np.ndarray, logits: np.ndarray) -> None:
    """`counts` equal the PyTorch `logits`' class counts, but for samples whose top two logits tie within rounding.

    Such a sample may go either way: the counts differ by at most two per tie.
    """
    expected = np.bincount(logits.argmax(-1), minlength=logits.shape[-1])
    top2 = np.sort(logits, -1)[:, -2:]
    near_ties = int(np.sum(top2[:, 1] - top2[:, 0] <= 1e-4 * np.abs(logits).max()))
    assert counts.sum() == len(logits)
    assert np.abs(counts - expected).sum() <= 2 * near_ties
    if near_ties == 0:
        assert certification.prediction(counts, 0.001) == certification.prediction(expected, 0.001)


def test_logits_and_predict_counts_equal_pytorch(converted):
    """The workdir's model as checkpoint.py reads it, and as `jaxsmooth.load` gives it (BatchNorm folded).

    Logits on random inputs in [0, 1] equal PyTorch's to 1e-4 of the largest
    |logit| (float32); so do PREDICT's class counts of x + sigma * z_j,
    j < 64, with the same noise array z given to both. The model runs op by
    op (no jit): compiling ResNet-110 and ResNet-50 costs more than running
    them here.
    """
    arch, model, workdir = converted
    x, noisy = _noisy_inputs(CASES[arch][2])
    expected, expected_noisy = _torch_logits(model, x), _torch_logits(model, noisy)
    assert len(np.unique(expected_noisy.argmax(-1))) > 1  # the counts compared are not one class's n
    loaded = jaxsmooth.load(workdir)
    assert loaded.sigma == 0.25 and loaded.num_classes == expected.shape[-1]
    for variant in (_variables(workdir), models.Model(loaded.apply, loaded.params, loaded.model_state)):
        logits = np.asarray(variant.apply(variant.params, variant.model_state, np.concatenate([x, noisy]),
                                          train=False)[0])
        np.testing.assert_allclose(logits[:4], expected, rtol=0, atol=1e-4 * np.abs(expected).max())
        _counts_within_rounding(np.bincount(logits[4:].argmax(-1), minlength=logits.shape[-1]), expected_noisy)


def test_comparison_catches_the_usual_conversion_mistakes(conversions):
    """Spatially flipped kernels (convolution for cross-correlation), or BatchNorm left on its initial statistics,
    give logits outside the tolerance the tests above hold the conversion to."""
    _, model, workdir = conversions("cifar_resnet20")
    x, _ = _noisy_inputs(32)
    expected = _torch_logits(model, x)
    right = _variables(workdir)
    flipped = jax.tree.map(lambda a: a[::-1, ::-1] if np.ndim(a) == 4 else a, right.params)
    initial = jax.tree_util.tree_map_with_path(
        lambda path, a: np.zeros_like(a) if path[-1].key == "mean" else np.ones_like(a), right.model_state)
    errors = [np.abs(np.asarray(right.apply(params, model_state, x, train=False)[0]) - expected).max()
              for params, model_state in ((right.params, right.model_state), (flipped, right.model_state),
                                          (right.params, initial))]
    tolerance = 1e-4 * np.abs(expected).max()
    assert errors[0] <= tolerance < min(errors[1:])


def test_loaded_model_predicts_what_pytorch_counts(conversions):
    """`jaxsmooth.load(W).logits` and `.predict` on a converted ResNet-20 against PyTorch on the same noise.

    `.predict` samples example INDEX with the sampling engine (8 devices);
    PyTorch classifies x + sigma * z_j for the noise array that PREDICT
    draws. Its row (class, top two counts, p-value) equals PREDICT on
    PyTorch's counts. ResNet-20 only: the engine's noise and counting do not
    depend on the architecture, and it compiles the model (tens of seconds
    for the others on two cores).
    """
    _, model, workdir = conversions("cifar_resnet20")
    x, noisy = _noisy_inputs(32)
    loaded = jaxsmooth.load(workdir)
    expected = _torch_logits(model, x)
    np.testing.assert_allclose(loaded.logits(x), expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    logits = _torch_logits(model, noisy)
    top2 = np.sort(logits, -1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 1e-4 * np.abs(logits).max())  # no sample within rounding of a tie
    counts = np.bincount(logits.argmax(-1), minlength=10)
    assert np.count_nonzero(counts) > 1
    row, = loaded.predict(x[:1], n=N, sigma=SIGMA, seed=SEED, index=[INDEX], batch=8, compiler_options=None)
    p = certification.prediction(counts, 0.001)
    assert (row["predict"], row["count_A"], row["count_B"]) == (p.label, p.count_a, p.count_b)
    assert row["pvalue"] == pytest.approx(p.pvalue, rel=1e-12)


@pytest.mark.parametrize("path, stored, expected", [
    ("models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar", {}, {0.25}),
    ("models/imagenet/resnet50/noise_1.00/checkpoint.pth.tar", {}, {1.0}),
    ("pretrained/cifar10/eps_64/cifar10/resnet110/noise_0.12/checkpoint.pth.tar", {}, {0.12}),
    ("runs/sigma_0.5/model.pth", {}, {0.5}),
    ("runs/mine/checkpoint.pth.tar", {"noise_sd": 0.25}, {0.25}),
    ("runs/mine/checkpoint.pth.tar", {"args": {"noise_sd": 0.5}}, {0.5}),
    ("runs/resnet110/checkpoint.pth.tar", {"epoch": 90}, set()),
])
def test_named_sigmas(path, stored, expected):
    """The noise level of locuslab/smoothing's paths (noise_S) and of a stored noise_sd entry; none elsewhere."""
    assert convert.named_sigmas(path, stored) == expected


@pytest.fixture(scope="module")
def small_checkpoints(tmp_path_factory):
    """A ResNet-20 model and its checkpoint (noise_0.25 in the path), and a folder for bad inputs."""
    folder = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    model = nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), CifarResNet(20)).eval()
    return model, _save_checkpoint(model, "cifar_resnet20", folder / "models"), folder


def _bad_inputs(model, good, folder):
    """(arguments without --workdir, the field and words of the one error line) of each kind of bad input."""
    state = model.state_dict()
    text = folder / "notes.txt"
    text.write_text("not a checkpoint\n")
    bare = folder / "bare.pth"
    torch.save(state, bare)
    extra = folder / "noise_0.25" / "extra.pth"
    extra.parent.mkdir(exist_ok=True)
    torch.save({**state, "1.extra.weight": torch.zeros(3)}, extra)
    wide = folder / "noise_0.25" / "wide.pth"
    torch.save({**state, "1.fc.weight": torch.zeros(100, 64), "1.fc.bias": torch.zeros(100)}, wide)
    objects = folder / "noise_0.25" / "objects.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(noise_sd=0.25)}, objects)
    return [
        (["--torch", str(folder / "missing.pth"), "--arch", "cifar_resnet20"], "--torch", "is not a file"),
        (["--torch", str(text), "--arch", "cifar_resnet20"], "--torch", "as a PyTorch checkpoint"),
        (["--torch", str(objects), "--arch", "cifar_resnet20"], "--torch", "Python objects besides tensors"),
        (["--torch", good, "--arch", "resnet18"], "--arch", "allowed: cifar_resnet20, cifar_resnet110, resnet50"),
        (["--torch", good, "--arch", "cifar_resnet110"], "--arch", "holds a 'cifar_resnet20' model"),
        (["--torch", good, "--arch", "cifar_resnet20", "--dataset", "mnist"], "--dataset",
         "allowed: cifar10, imagenet"),
        (["--torch", str(bare), "--arch", "cifar_resnet110", "--sigma", "0.25"], "--torch",
         "450 of its 557 tensors missing, first 1.layer1.3.conv1.weight [16, 16, 3, 3]"),
        (["--torch", str(extra), "--arch", "cifar_resnet20"], "--torch", "1 unexpected, first 1.extra.weight [3]"),
        (["--torch", str(wide), "--arch", "cifar_resnet20"], "--torch",
         "1.fc.weight is [100, 64], the architecture has [10, 64]"),
        (["--torch", str(bare), "--arch", "cifar_resnet20"], "--sigma", "names no noise level"),
        (["--torch", good, "--arch", "cifar_resnet20", "--sigma", "0.5"], "--sigma", "names noise level 0.25, not 0.5"),
        (["--torch", good, "--arch", "cifar_resnet20", "--sigma", "-1"], "--sigma", "must be > 0"),
    ]


def test_bad_input_is_one_error_line(small_checkpoints, capsys):
    """Each bad input: one line ``error: FIELD: ...`` naming what is wrong, exit status 2, no workdir written."""
    model, good, folder = small_checkpoints
    for i, (args, field, words) in enumerate(_bad_inputs(model, good, folder)):
        workdir = folder / f"out{i}"
        assert convert.main(args + ["--workdir", str(workdir)]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {field}: ") and words in err, (args, err)
        assert not workdir.exists()
    assert not [p for p in os.listdir(folder) if p.startswith(".")]  # no half-written folder left behind


def test_unusable_workdir_is_refused(small_checkpoints, capsys):
    """A workdir with files in it, or under a regular file, is one error line, and what is there stays as it was."""
    _, good, folder = small_checkpoints
    workdir = folder / "taken"
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")
    assert convert.main(["--torch", good, "--arch", "cifar_resnet20", "--workdir", str(workdir)]) == 2
    assert capsys.readouterr().err.startswith("error: --workdir: ")
    assert os.listdir(workdir) == ["config.json"] and (workdir / "config.json").read_text() == "{}"
    under_file = workdir / "config.json" / "run" / "w"
    assert convert.main(["--torch", good, "--arch", "cifar_resnet20", "--workdir", str(under_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --workdir: cannot create ")
    assert os.listdir(workdir) == ["config.json"] and (workdir / "config.json").read_text() == "{}"


def test_normalize_layer_buffers_give_the_normalisation(small_checkpoints):
    """A NormalizeLayer that stores means/sds as tensors (0.means, 0.sds): model.json takes its constants.

    Written into a folder that exists and is empty.
    """
    model, _, folder = small_checkpoints
    state = {**model.state_dict(), "0.means": torch.tensor([0.5, 0.4, 0.3]), "0.sds": torch.tensor([0.2, 0.25, 0.3])}
    path = folder / "buffers" / "checkpoint.pth.tar"
    path.parent.mkdir()
    torch.save({"arch": "cifar_resnet20", "state_dict": state}, path)
    (folder / "buffers_out").mkdir()  # an empty folder is a new workdir
    found = convert.convert(str(path), "cifar_resnet20", str(folder / "buffers_out"), sigma=0.5)
    assert json.load(open(folder / "buffers_out" / "model.json")) == found
    np.testing.assert_allclose(found["mean"], [0.5, 0.4, 0.3], rtol=1e-6)
    np.testing.assert_allclose(found["std"], [0.2, 0.25, 0.3], rtol=1e-6)
    assert found["sigma"] == 0.5


def test_cli_runs_as_a_module(small_checkpoints, tmp_path):
    """``python -m jaxsmooth.convert`` exists and reports its error in one line."""
    done = subprocess.run([sys.executable, "-m", "jaxsmooth.convert", "--torch", str(tmp_path / "none.pth"),
                           "--arch", "cifar_resnet20", "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: --torch: ")


def test_bench_certify_times_the_workdir_beside_the_native_model(conversions, capsys):
    """``bench certify --workdir W``: W's model and the random-weight model of its architecture, in one run.

    Both contenders draw the same n samples per round; a --model other than
    W's is one error line.
    """
    from jaxsmooth import bench
    from jaxsmooth.benchmarks import certify as certify_bench

    _, _, workdir = conversions("cifar_resnet20")
    report = certify_bench.benchmark("resnet20", 8, batch=8, rounds=1, with_torch=False, matmul_size=64,
                                     xla_options=("dot",), workdir=workdir)
    assert list(report.results) == ["jax float32", "jax float32 workdir"]
    assert {r.items_per_round for r in report.results.values()} == {8}
    assert bench.main(["certify", "--workdir", workdir, "--model", "resnet110"]) == 2
    assert capsys.readouterr().err == f"error: --model: {workdir} holds a 'resnet20' model, not 'resnet110'\n"
