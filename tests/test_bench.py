"""The benchmark's PyTorch references are the same architectures and count the same samples as jaxsmooth."""

import jax
import numpy as np
import pytest

from jaxsmooth import models

from jaxsmooth.benchmarks import timing

from helpers import denoiser_workdir


@pytest.mark.parametrize("name, shape", [("cnn", (28, 28, 1)), ("cnn", (8, 8, 1)), ("resnet20", (32, 32, 3)),
                                         ("resnet110", (32, 32, 3))])
def test_reference_has_the_same_parameter_count(name, shape):
    pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[torch]')")
    from jaxsmooth.benchmarks import torch_reference

    width, hidden = models.cnn_sizes(0)
    reference = torch_reference.create(name, shape, 10, width=width, hidden=hidden)
    ours = models.split(models.create(name, num_classes=10, input_shape=shape, mean=(0.5,) * shape[-1],
                                      std=(0.25,) * shape[-1]))
    assert sum(p.numel() for p in reference.parameters()) == models.num_params(ours.params)


def test_interleave_reports_medians_of_rounds():
    calls = []
    results = timing.interleave({"a": (lambda: calls.append("a"), 10, 0.0), "b": (lambda: calls.append("b"), 20, 1.0)},
                                rounds=3, warmup_rounds=1, pause_s=0.0)
    assert calls == ["a", "b"] * 4  # one warm-up round, then alternating rounds
    assert len(results["a"].seconds) == 3 and results["b"].setup_s == 1.0
    assert results["b"].rate == pytest.approx(20 / np.median(results["b"].seconds))


@pytest.mark.parametrize("name, shape", [("resnet18", (32, 32, 3)), ("resnet50", (224, 224, 3))])
def test_imagenet_style_references_have_the_same_parameter_count(name, shape):
    pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[torch]')")
    from flax import nnx
    from jaxsmooth.benchmarks import torch_reference

    reference = torch_reference.create(name, shape, 1000)
    ours = models.split(nnx.eval_shape(lambda: models.create(name, num_classes=1000, input_shape=shape,
                                                             mean=(0.5,) * 3, std=(0.25,) * 3)))
    assert sum(p.numel() for p in reference.parameters()) == models.num_params(ours.params)


SHAPE, WIDTH, K = (8, 8, 1), 4, 10


def _lenet_pair(scale: float = 100.0):
    """A tiny jaxsmooth `cnn` and a PyTorch reference holding the same weights.

    The output layer is scaled by `scale`, which widens every margin between
    the top two logits, so that small noise cannot change the predicted class.
    """
    import torch
    from jaxsmooth.benchmarks import torch_reference

    ours = models.split(models.create("cnn", num_classes=K, input_shape=SHAPE, mean=(0.5,), std=(0.25,), width=WIDTH))
    p = jax.tree.map(np.asarray, ours.params)
    p["fc2"]["kernel"] = p["fc2"]["kernel"] * scale
    p["fc2"]["bias"] = p["fc2"]["bias"] * scale
    width, hidden = models.cnn_sizes(WIDTH)
    reference = torch_reference.create("cnn", SHAPE, K, width=width, hidden=hidden)
    h4, w4 = SHAPE[0] // 4, SHAPE[1] // 4
    weights = {  # HWIO -> OIHW; dense [in, out] -> [out, in], flattened HWC (ours) -> CHW (torch)
        "conv1.weight": p["conv1"]["kernel"].transpose(3, 2, 0, 1), "conv1.bias": p["conv1"]["bias"],
        "conv2.weight": p["conv2"]["kernel"].transpose(3, 2, 0, 1), "conv2.bias": p["conv2"]["bias"],
        "fc1.weight": p["fc1"]["kernel"].reshape(h4, w4, 2 * width, hidden).transpose(3, 2, 0, 1).reshape(hidden, -1),
        "fc1.bias": p["fc1"]["bias"], "fc2.weight": p["fc2"]["kernel"].T, "fc2.bias": p["fc2"]["bias"],
    }
    reference.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
                              strict=False)  # the normalisation buffers are already the same
    return ours._replace(params=p), reference.eval()


def _inputs():
    return np.random.default_rng(1).uniform(size=(3, *SHAPE)).astype(np.float32)


def test_torch_references_count_exactly_n_predictions():
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[torch]')")
    from jaxsmooth.benchmarks import torch_reference

    _, reference = _lenet_pair(scale=1.0)
    x = torch.from_numpy(_inputs()).permute(0, 3, 1, 2).contiguous()
    n = 1234  # not a multiple of either batch: the last batch is short
    counts = torch_reference.sample_counts_canonical(reference, x[0], 0.25, n, 100, K)
    assert counts.shape == (K,) and counts.sum() == n
    for bf16 in (False, True):
        counts = torch_reference.make_tuned_sampler(reference, batch=250, bf16=bf16)(x, 0.25, n, K)
        assert counts.dtype == torch.int64 and counts.shape == (3, K)
        np.testing.assert_array_equal(counts.sum(1).numpy(), [n] * 3)


def test_torch_references_agree_with_the_engine_where_noise_cannot_change_the_class():
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[torch]')")
    from jaxsmooth import certification
    from jaxsmooth.benchmarks import torch_reference

    ours, reference = _lenet_pair()
    x = _inputs()
    x_nchw = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    logits = np.asarray(ours.apply(ours.params, ours.model_state, x, train=False)[0])
    with torch.no_grad():
        np.testing.assert_allclose(reference(x_nchw).numpy(), logits, rtol=1e-4, atol=1e-3)  # the same network
    n, sigma = 300, 1e-3
    expected = n * np.eye(K, dtype=np.int64)[logits.argmax(-1)]
    engine = certification.sample_counts(ours.apply, (ours.params, ours.model_state), x, sigma, n, 50,
                                         jax.random.key(0), num_classes=K).counts
    np.testing.assert_array_equal(engine, expected)
    canonical = [torch_reference.sample_counts_canonical(reference, x_nchw[i], sigma, n, 128, K) for i in range(3)]
    np.testing.assert_array_equal(np.stack(canonical), expected)
    for bf16 in (False, True):
        tuned = torch_reference.make_tuned_sampler(reference, batch=128, bf16=bf16)(x_nchw, sigma, n, K)
        np.testing.assert_array_equal(tuned.numpy(), expected)


def test_forward_flops_are_the_hand_counts():
    from jaxsmooth.benchmarks import certify as certify_bench

    # cnn at 8x8x1, width 4: a 5x5 'same' convolution 1 -> 4 (8x8), then 4 -> 8 on 4x4 images after a pool, which
    # runs as one (4*4*4) x (4*4*8) product (layers.conv2d), then fc 32 -> 128 -> 10
    macs = 8 * 8 * 25 * 1 * 4 + (4 * 4 * 4) * (4 * 4 * 8) + 32 * 128 + 128 * 10
    assert certify_bench.forward_flops("cnn", SHAPE, K, width=WIDTH) == 2 * macs
    # ResNet-110 at 32x32: stem 3 -> 16, 54 blocks of two 3x3 convs over three stages, two 1x1 projections, dense
    stage = lambda hw, cin, c, blocks: hw * hw * 9 * (cin * c + c * c + (blocks - 1) * 2 * c * c)
    macs = (32 * 32 * 9 * 3 * 16 + stage(32, 16, 16, 18) + stage(16, 16, 32, 18) + stage(8, 32, 64, 18)
            + 16 * 16 * 16 * 32 + 8 * 8 * 32 * 64 + 64 * 10)
    assert certify_bench.forward_flops("resnet110", (32, 32, 3), 10) == 2 * macs


@pytest.mark.parametrize("args, field", [
    ([], "--model"),
    (["--model", "resnet21"], "--model"),
    (["--workdir", "/nonexistent/run"], "--workdir"),
    (["--model", "cnn", "--n", "0"], "--n"),
    (["--model", "cnn", "--n", "-5"], "--n"),
    (["--model", "cnn", "--batch", "0"], "--batch"),
    (["--model", "cnn", "--batch", "1000", "--inputs", "3"], "--inputs"),
    (["--model", "cnn", "--inputs", "0"], "--inputs"),
    (["--model", "cnn", "--dtype", "float32,float16"], "--dtype"),
    (["--model", "cnn", "--noise", "gaussian,uniform"], "--noise"),
    (["--model", "cnn", "--noise", "lattice,lattice"], "--noise"),
    (["--model", "cnn", "--denoiser", "mnist_dncnn9"], "--denoiser"),
    (["--model", "resnet20", "--denoiser", "mnist_dncnn"], "--denoiser"),  # 28x28x1 images, not 32x32x3
    (["--model", "cnn", "--denoiser", "mnist_dncnn", "--memory"], "--denoiser"),
])
def test_bench_certify_rejects_bad_input_with_one_error_line(capsys, args, field):
    from jaxsmooth import bench

    assert bench.main(["certify", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {field}: "), err[0]


@pytest.mark.slow
def test_bench_certify_refuses_a_denoiser_that_does_not_fit_the_model(tmp_path, capsys):
    """A DnCNN by name or a denoiser's workdir for other images than the model's: one line, exit 2, nothing timed."""
    from jaxsmooth import bench

    small = denoiser_workdir(tmp_path / "dncnn8")
    for model, denoiser, words in [
            ("resnet20", "mnist_dncnn", "mnist_dncnn takes inputs of shape (28, 28, 1), the classifier (32, 32, 3)"),
            ("cnn", small, f"{small} takes inputs of shape (8, 8, 1), the classifier (28, 28, 1)")]:
        assert bench.main(["certify", "--model", model, "--denoiser", denoiser]) == 2
        assert capsys.readouterr().err == f"error: --denoiser: {words}\n"


@pytest.mark.slow
def test_bench_samples_the_pair_as_the_composition_by_hand(tmp_path):
    """The bench's engine contender of --denoiser DIR counts what classifier(denoiser(x + noise)) gives, composed by
    hand from the classifier and the denoiser read from DIR; its classifier-alone contender, the classifier's."""
    from jaxsmooth import certification
    from jaxsmooth.benchmarks import certify as certify_bench

    workdir = denoiser_workdir(tmp_path / "dncnn8")
    n, batch, inputs = 200, 100, 2
    contenders, _, sampled, alone = certify_bench.engine_contenders(
        "cnn", n, batch=batch, inputs=inputs, input_shape=SHAPE, num_classes=K, dtypes=("float32",),
        xla_options=("dot",), noises=("gaussian",), denoiser=workdir, workdir="")
    assert sampled == {"jax float32": "dncnn8 + cnn", "jax float32 cnn alone": "cnn"}
    assert alone == {"jax float32 cnn alone": "jax float32"}
    classifier = certify_bench.engine_model("cnn", SHAPE, K)
    front = certify_bench.denoiser_of(workdir, SHAPE)

    def by_hand(params, model_state, x, *, train):
        y = front.apply(params["d"], model_state["d"], x, train=train)[0]
        return classifier.apply(params["c"], model_state["c"], y, train=train)

    x = certify_bench.random_inputs(inputs, SHAPE)
    assert np.abs(np.asarray(front.apply(front.params, front.model_state, x, train=False)[0]) - x).max() > 0.1
    for label, apply, variables in [
            ("jax float32", by_hand, ({"d": front.params, "c": classifier.params},
                                      {"d": front.model_state, "c": classifier.model_state})),
            ("jax float32 cnn alone", classifier.apply, (classifier.params, classifier.model_state))]:
        expected = certification.sample_counts(apply, variables, x, certify_bench.SIGMA, n, batch // inputs,
                                               jax.random.key(0), num_classes=K).counts
        np.testing.assert_array_equal(contenders[label][0]().counts, expected)
        assert contenders[label][1] == n * inputs


@pytest.mark.slow
def test_the_pytorch_pair_computes_the_jaxsmooth_pair(tmp_path):
    """`torch_reference.Denoised` (a random DnCNN with non-trivial BatchNorm statistics, then LeNet) and the bench's
    jaxsmooth pair holding the same weights (the DnCNN's converted as `jaxsmooth.convert` converts them, then read
    from its workdir as --denoiser DIR reads it) give the same logits within float32 rounding."""
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[torch]')")
    import functools

    from jaxsmooth import checkpoint, torch_layout
    from jaxsmooth.benchmarks import certify as certify_bench, torch_reference
    from jaxsmooth.models import dncnn

    from helpers import random_torch_dncnn

    depth, width = 4, 8
    torch_denoiser = random_torch_dncnn(depth, width, SHAPE[-1])
    info = dncnn.metadata(SHAPE, 0.25, depth=depth, width=width)
    state = {k: v.numpy() for k, v in torch_denoiser.state_dict().items()}
    converted, _, _ = torch_layout.map_onto(state, dncnn.build(info), functools.partial(
        torch_layout.dncnn_name, depth=depth), "a DnCNN", "the test's", SHAPE[-1])
    checkpoint.write_workdir(str(tmp_path / "dncnn"), info, converted.params, converted.model_state)
    classifier, torch_classifier = _lenet_pair(scale=1.0)
    pair = certify_bench.denoised(classifier, certify_bench.denoiser_of(str(tmp_path / "dncnn"), SHAPE), SHAPE)
    torch_pair = torch_reference.Denoised(torch_denoiser, torch_classifier).eval()

    x = (_inputs() + np.random.default_rng(2).normal(0, 0.25, (3, *SHAPE))).astype(np.float32)  # noisy images
    ours = np.asarray(pair.apply(pair.params, pair.model_state, x, train=False)[0])
    with torch.inference_mode():
        theirs = torch_pair(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())
    alone = np.asarray(classifier.apply(classifier.params, classifier.model_state, x, train=False)[0])
    assert np.abs(alone - ours).max() > 0.1 * np.abs(ours).max()  # the denoiser counts


def test_the_pytorch_pair_has_the_jaxsmooth_pairs_parameters():
    """mnist_dncnn + cnn: PyTorch's `Denoised` holds as many parameters as the DnCNN and the cnn of jaxsmooth."""
    pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[torch]')")
    from flax import nnx
    from jaxsmooth.benchmarks import torch_reference
    from jaxsmooth.models import dncnn

    shape, arch = (28, 28, 1), dncnn.ARCHS["mnist_dncnn"]
    width, hidden = models.cnn_sizes(0)
    reference = torch_reference.create("cnn", shape, K, width=width, hidden=hidden, denoiser=(arch.depth, arch.width))
    denoiser = dncnn.build(dncnn.metadata(shape, 0.25, arch="mnist_dncnn"))
    classifier = models.split(nnx.eval_shape(lambda: models.create("cnn", num_classes=K, input_shape=shape,
                                                                   mean=(0.5,), std=(0.25,))))
    assert sum(p.numel() for p in reference.parameters()) == (models.num_params(denoiser.params)
                                                              + models.num_params(classifier.params))


def test_the_pairs_flops_are_the_classifiers_plus_the_dncnns_hand_count():
    """mnist_dncnn at 28x28x1: 3x3 'same' convolutions 1 -> 32, six 32 -> 32, 32 -> 1 (padding taps count)."""
    from jaxsmooth.benchmarks import certify as certify_bench

    shape = (28, 28, 1)
    flops = certify_bench.sampled_flops("cnn", shape, K, "mnist_dncnn")
    macs = 28 * 28 * 9 * (1 * 32 + 6 * 32 * 32 + 32 * 1)
    assert list(flops) == ["mnist_dncnn + cnn", "cnn"]
    assert flops["cnn"] == certify_bench.forward_flops("cnn", shape, K)
    assert flops["mnist_dncnn + cnn"] == flops["cnn"] + 2 * macs


def test_the_pair_table_compares_only_the_pair_with_pytorch():
    """The classifier-alone row gets no ratio to PyTorch (which samples the pair); the pair over alone line is the
    ratio of time per sample."""
    from jaxsmooth import bench
    from jaxsmooth.benchmarks import certify as certify_bench

    r = lambda s: timing.Result("x", (s, s, s), 1000, 0.0)  # noqa: E731
    results = {"jax float32": r(2.0), "jax float32 cnn alone": r(0.5), "torch canonical": r(4.0)}
    pair = "mnist_dncnn + cnn"
    report = certify_bench.Report(results=results, compute_dtype=dict.fromkeys(results, "float32"),
                                  flops={pair: 2e6, "cnn": 1e6}, peaks={}, peak_rss_bytes=0, options={},
                                  sampled={"jax float32": pair, "jax float32 cnn alone": "cnn",
                                           "torch canonical": pair},
                                  alone={"jax float32 cnn alone": "jax float32"})
    rows = bench._certify_table(report).splitlines()[2:]
    assert rows == ["| jax float32 | mnist_dncnn + cnn | 500 | 0% | 0.0 | 2.00x | 2.00x | 1.0 | - |",
                    "| jax float32 cnn alone | cnn | 2,000 | 0% | 0.0 | - | - | 2.0 | - |",
                    "| torch canonical | mnist_dncnn + cnn | 250 | 0% | 0.0 | 1.00x | 1.00x | 0.5 | - |"]
    assert certify_bench.alone_ratios(report) == [
        "mnist_dncnn + cnn / cnn alone, time per sample, jax float32: 4.00 (ratio of medians), 4.00 (median of the "
        "rounds' ratios)"]


@pytest.mark.slow
def test_bench_certify_times_the_pair_and_the_classifier_alone(capsys):
    """``bench certify --model cnn --denoiser mnist_dncnn``: the header and every PyTorch row name the pair."""
    pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[torch]')")
    from jaxsmooth import bench

    assert bench.main(["certify", "--model", "cnn", "--denoiser", "mnist_dncnn", "--n", "100", "--batch", "100",
                       "--tuned-batch", "100", "--rounds", "1", "--xla-options", "dot"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("certify sampling, mnist_dncnn + cnn, input 28x28x1, 10 classes")
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in out if line.startswith("| jax")
            or line.startswith("| torch")}
    assert rows == {"jax float32": "mnist_dncnn + cnn", "jax float32 cnn alone": "cnn",
                    "torch canonical": "mnist_dncnn + cnn", "torch tuned f32": "mnist_dncnn + cnn",
                    "torch tuned bf16": "mnist_dncnn + cnn"}
    assert any(line.startswith("mnist_dncnn + cnn / cnn alone, time per sample, jax float32: ") for line in out)


def test_heat_step_does_no_more_work_than_its_passes_imply():
    from jaxsmooth.benchmarks import train as train_bench

    assert train_bench.implied_ratio(10) == 18.0  # (4 + 5 kappa) / 3
    standard, heat = (train_bench.step_flops("cnn", 4, SHAPE, o, width=WIDTH) for o in ("standard", "heat"))
    # kappa = 10 extra forward and backward passes at least, and no more than the pass count allows
    assert 1 + train_bench.KAPPA < heat / standard <= train_bench.implied_ratio()


def test_distill_ratios_pair_each_side_with_its_standard_step():
    from jaxsmooth.benchmarks import train as train_bench

    r = lambda s: timing.Result("x", (s, s), 10, 0.0)
    results = {"jax standard float32": r(1.0), "jax heat float32": r(12.0), "torch standard f32": r(2.0),
               "torch heat f32": r(30.0), "torch heat f32 channels_last": r(9.0)}
    assert train_bench.distill_ratios(results, "heat") == {"jax float32": 12.0, "torch f32": 15.0}


@pytest.mark.parametrize("args, field", [
    (["--model", "cnn", "--objective", "nal2"], "--objective"),
    (["--model", "cnn", "--batch", "0"], "--batch"),
])
def test_bench_train_rejects_bad_input_with_one_error_line(capsys, args, field):
    from jaxsmooth import bench

    assert bench.main(["train", *args, "--no-torch", "--rounds", "1", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {field}: "), err[0]


def test_inference_table_rows_and_ratios():
    from jaxsmooth.benchmarks import inference

    timing = inference.Timing({"deterministic classify": 0.001, "deterministic certify": 0.002,
                               "stochastic classify": 0.01, "stochastic certify": 3.0},
                              dict(zip(inference.ROWS, (1, 1, 100, 100_100))),
                              dict(zip(inference.ROWS, (20, 20, 20, 3))))
    assert inference.markdown(timing, "cpu").splitlines()[2:] == [
        "| classify (PREDICT, n = 100) | 0.001000 | 0.010000 | 10x |",
        "| certify (CERTIFY, n0 + n = 100,100) | 0.002000 | 3.000000 | 1,500x |"]


@pytest.mark.parametrize("args, field", [
    (["--model", "cnn9"], "--model"),
    (["--model", "cnn", "--n", "0"], "--n"),
    (["--model", "cnn", "--input", "8,8"], "--input"),
])
def test_bench_inference_rejects_bad_input_with_one_error_line(capsys, args, field):
    from jaxsmooth import bench

    assert bench.main(["inference", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err


@pytest.mark.parametrize("objective", ["nal", "wrm", "smoothadv", "sigma"])
def test_adversarial_steps_do_no_more_work_than_their_passes_imply(objective):
    from jaxsmooth.benchmarks import train as train_bench

    standard, step = (train_bench.step_flops("cnn", 4, SHAPE, o, width=WIDTH) for o in ("standard", objective))
    # (K + 1) r forward-backward passes at most; the K ascent passes need no weight gradients
    assert 1 < step / standard <= train_bench.implied_ratio(objective=objective)
    assert train_bench.implied_ratio(objective="nal") == 20 and train_bench.implied_ratio(objective="wrm") == 5
    assert train_bench.implied_ratio(objective="sigma") == 4  # n0 draws, one pass each


def test_pod_estimate_is_the_per_device_rate_times_devices_plus_the_spreading_cost():
    from jaxsmooth.benchmarks import scaling

    e = scaling.pod_estimate(per_device_rate=50_000.0, devices=64, n=100_000, spread_cost_s=0.002, n0=100)
    one = 100_100 / 50_000.0
    assert e["seconds_per_input_one_chip"] == pytest.approx(one)
    assert e["seconds_per_input_samples_mode"] == pytest.approx(one / 64 + 2 * 0.002)
    assert e["inputs_per_s_examples_mode"] == pytest.approx(64 / one)
    # sharing one input's samples never beats giving each chip its own inputs
    assert e["inputs_per_s_samples_mode"] <= e["inputs_per_s_examples_mode"]


@pytest.mark.parametrize("args, field", [
    (["--devices", "2,4"], "--devices"),
    (["--devices", "1,x"], "--devices"),
    (["--devices", "1,64"], "--devices"),  # more than this process's 8 devices
    (["--pod-devices", "8,x"], "--pod-devices"),
    (["--pod-devices", "0"], "--pod-devices"),
    (["--n", "0"], "--n"),
    (["--chunk", "0"], "--chunk"),
])
def test_bench_scaling_rejects_bad_input_with_one_error_line(capsys, args, field):
    from jaxsmooth import bench

    assert bench.main(["scaling", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err
