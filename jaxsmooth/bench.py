"""``python -m jaxsmooth.bench train --model M --batch B`` / ``python -m jaxsmooth.bench certify --model M --n N``

Throughput of jaxsmooth against PyTorch references, measured alternately in
one process (medians over rounds, ratios). Prints a markdown table; add
``--json FILE`` to keep the raw per-round timings.

``certify`` times certification sampling (noisy forward passes per second)
and reports it as a fraction of the machine's matmul peak; ``certify
--memory`` instead compares the engine's peak resident memory at n = 10,000
and n = 1,000,000, each in a fresh process; ``certify --denoiser D`` times
the pair classifier(D(x + noise)) of denoised smoothing, and the classifier
alone beside it. ``scaling``, ``inference`` and
``pipeline`` time certification over devices, one image's inference, and
the input pipeline; ``startup`` a certify process with an empty and with a
filled cache folder. The papers' comparisons are `jaxsmooth.report`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from jaxsmooth import benchmarks, cli
from jaxsmooth.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("bench", __doc__.split("\n\n")[1])
    sub = cli.add_subcommands(p, dest="what", required=True)
    t = sub.add_parser("train", help="train-step examples/s")
    t.add_argument("--model", required=True)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--input", default="", help="H,W,C (default: the model's usual input)")
    t.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16")
    t.add_argument("--steps", type=int, default=5, help="train steps per timed round")
    t.add_argument("--rounds", type=int, default=7, help="rounds; medians are over rounds")
    t.add_argument("--objective", default="gaussian",
                   help="gaussian (default), standard, heat, bootcamp, nal, wrm, smoothadv or sigma; all but the first "
                        "two also time a standard step and report the step-time ratio next to the one implied by their "
                        "extra passes")
    t.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    t.add_argument("--torch-compile", default="", metavar="MODE",
                   help="also the channels_last PyTorch step under torch.compile(mode=MODE), e.g. max-autotune "
                        "(bfloat16 autocast too when --dtype has bfloat16)")
    t.add_argument("--xla-defaults", action="store_true",
                   help="also time the JAX step compiled without jaxsmooth's XLA:CPU options")
    t.add_argument("--json", default="", help="write per-round timings here")
    c = sub.add_parser("certify", help="certification sampling samples/s")
    c.add_argument("--model", default="", help="the architecture (required unless --workdir names it)")
    c.add_argument("--workdir", default="",
                   help="also time this workdir's model (a training run's, or a converted PyTorch checkpoint's) "
                        "beside the random-weight model of its architecture")
    c.add_argument("--n", type=int, default=10_000, help="samples per input")
    c.add_argument("--batch", type=int, default=1000, help="samples per forward pass (inputs x chunk)")
    c.add_argument("--inputs", type=int, default=1, help="inputs sampled together in each forward pass")
    c.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16")
    c.add_argument("--rounds", type=int, default=5, help="rounds; medians are over rounds")
    c.add_argument("--no-torch", action="store_true", help="skip the PyTorch references")
    c.add_argument("--torch-compile", default="", metavar="MODE",
                   help="also the tuned PyTorch samplers under torch.compile(mode=MODE), e.g. max-autotune")
    c.add_argument("--torch-batch", type=int, default=0, help="the canonical PyTorch loop's batch (default: --batch)")
    c.add_argument("--tuned-batch", type=int, default=250, help="the tuned PyTorch samplers' batch")
    c.add_argument("--xla-options", default="auto",
                   help="comma-separated XLA:CPU option sets for the engine: auto (the faster of dot and eltwise, "
                        "timed on the first call), dot, eltwise, default (XLA's own); one contender each")
    c.add_argument("--noise", default=None,
                   help="comma-separated noise kinds of the engine (jaxsmooth.certification.noises), one contender "
                        "each; e.g. gaussian,lattice (default: gaussian)")
    c.add_argument("--denoiser", default="",
                   help="time the pair classifier(denoiser(x + noise)) of denoised smoothing: a DnCNN's name "
                        "(mnist_dncnn, cifar_dncnn, cifar_dncnn_wide, imagenet_dncnn; random weights) or a denoiser's "
                        "workdir; the PyTorch references sample the same pair, and the classifier alone is timed too")
    c.add_argument("--memory", action="store_true",
                   help="instead: the engine's peak RSS at n = 10,000 and 1,000,000, each in a fresh process")
    c.add_argument("--json", default="", help="write per-round timings here")
    g = sub.add_parser("scaling", help="certification sampling of one input spread over 1, 2, ..., D devices")
    g.add_argument("--model", default="cnn")
    g.add_argument("--devices", default="1,2,4,8",
                   help="comma-separated device counts; on the CPU that many fake devices are made")
    g.add_argument("--n", type=int, default=10_000, help="samples per input")
    g.add_argument("--chunk", type=int, default=1000, help="samples per device per loop step")
    g.add_argument("--rounds", type=int, default=5, help="rounds; medians are over rounds")
    g.add_argument("--per-device-rate", type=float, default=0.0,
                   help="also estimate a pod from this per-device samples/s (e.g. a GPU's, from bench certify)")
    g.add_argument("--pod-devices", default="8,64,256", help="device counts of the pod estimate")
    g.add_argument("--pod-n", type=int, default=100_000, help="CERTIFY's n in the pod estimate")
    i = sub.add_parser("inference", help="seconds per image: one forward pass vs PREDICT / CERTIFY")
    i.add_argument("--model", required=True)
    i.add_argument("--input", default="", help="H,W,C (default: the model's usual input)")
    i.add_argument("--width", type=int, default=0, help="cnn only: channels of the first convolution (0: default)")
    i.add_argument("--images", type=int, default=20, help="images per round (classification, L-bound, PREDICT)")
    i.add_argument("--certify-images", type=int, default=3, help="images per round for CERTIFY")
    i.add_argument("--n", type=int, default=100_000, help="CERTIFY's estimation samples")
    i.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    i.add_argument("--rounds", type=int, default=3, help="rounds; medians are over rounds")
    from jaxsmooth.benchmarks import faults, pipeline as pipeline_bench  # stdlib + numpy at import: cheap
    from jaxsmooth.benchmarks import sequential as sequential_bench, startup

    pipeline_bench.add_parser(sub)
    sequential_bench.add_parser(sub)
    faults.add_parser(sub)
    startup.add_parser(sub)
    return p


def _table(results, unit: str) -> str:  # the train table
    """One row per contender; "vs best torch" against the fastest PyTorch step of the same objective."""
    group = lambda label: next((o for o in ("standard", "heat", "bootcamp") if f" {o} " in label), "")
    best_torch = {}
    for n, r in results.items():
        if n.startswith("torch"):
            best_torch[group(n)] = max(best_torch.get(group(n), 0.0), r.rate)
    best_torch["bootcamp"] = best_torch.get("heat")  # boot camp's step has heat's passes; its reference is heat's
    lines = [f"| contender | {unit} (median) | spread | setup s | vs best torch |", "|---|---|---|---|---|"]
    for name, r in results.items():
        best = best_torch.get(group(name))
        ratio = f"{r.rate / best:.2f}x" if best else "-"
        lines.append(f"| {name} | {r.rate:,.0f} | {r.spread:.0%} | {r.setup_s:.1f} | {ratio} |")
    return "\n".join(lines)


def _check_common(args) -> tuple[str, ...]:
    """Validates --model, --batch and --dtype; returns the dtypes."""
    from jaxsmooth import models

    if args.model not in models.NAMES:
        raise UserError("--model", f"unknown model {args.model!r}; allowed: {', '.join(models.NAMES)}")
    if args.batch <= 0:
        raise UserError("--batch", f"must be > 0, got {args.batch}")
    dtypes = tuple(args.dtype.split(","))
    for d in dtypes:
        if d not in ("float32", "bfloat16"):
            raise UserError("--dtype", f"unknown dtype {d!r}; allowed: float32, bfloat16")
    return dtypes


def _train(args) -> int:
    from jaxsmooth.benchmarks import train as train_bench

    dtypes = _check_common(args)
    if args.objective not in train_bench.OBJECTIVES:
        raise UserError("--objective", f"unknown objective {args.objective!r}; "
                                       f"allowed: {', '.join(train_bench.OBJECTIVES)}")
    shape = _input_shape(args.input)

    from tqdm import tqdm

    with tqdm(total=args.rounds, desc=f"bench train {args.model}", file=sys.stderr, leave=False) as bar:
        results = train_bench.benchmark(args.model, args.batch, input_shape=shape, dtypes=dtypes, steps=args.steps,
                                        rounds=args.rounds, with_torch=not args.no_torch,
                                        xla_defaults=args.xla_defaults, objective=args.objective,
                                        torch_compile=args.torch_compile, on_round=lambda r: bar.update(1))
    shape = shape or train_bench.input_shape_of(args.model)
    print(f"train step ({args.objective}), {args.model}, batch {args.batch}, input {'x'.join(map(str, shape))}, "
          f"{args.rounds} rounds x {args.steps} steps, {benchmarks.machine()}")
    print(_table(results, "examples/s"))
    if args.objective in train_bench.PAIRED:
        print(_distill_report(args, shape, results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({n: {"seconds": r.seconds, "items_per_round": r.items_per_round, "setup_s": r.setup_s}
                       for n, r in results.items()}, f, indent=2)
    return 0


def _distill_report(args, shape, results) -> str:
    """The step-time ratios of a distilling objective over `standard`, against the pass-implied and FLOP ratios."""
    from jaxsmooth.benchmarks import train as train_bench

    flops = {o: train_bench.step_flops(args.model, args.batch, shape, o) for o in ("standard", args.objective)}
    implied = train_bench.implied_ratio(objective=args.objective)
    lines = ["", f"| {args.objective} step / standard step | time ratio (medians) | pass-implied ratio | FLOP ratio |",
             "|---|---|---|---|"]
    for side, ratio in train_bench.distill_ratios(results, args.objective).items():
        lines.append(f"| {side} | {ratio:.2f} | {implied:.2f} | {flops[args.objective] / flops['standard']:.2f} |")
    formula = train_bench.STEPS[args.objective].formula
    lines.append(f"\npass-implied ratio: {formula}; FLOPs per step: "
                 f"standard {flops['standard'] / 1e9:.3g} G, {args.objective} {flops[args.objective] / 1e9:.3g} G")
    return "\n".join(lines)


def _certify_table(report) -> str:
    """One row per contender; the ratios to PyTorch only for contenders of the model PyTorch samples."""
    results = report.results
    torch_rates = [r.rate for n, r in results.items() if n.startswith("torch")]
    best_torch = max(torch_rates) if torch_rates else None
    canonical = results.get("torch canonical")
    lines = ["| contender | model | samples/s (median) | spread | setup s | vs torch canonical | vs best torch "
             "| GFLOP/s | of matmul peak |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        same = report.sampled[name] == report.model
        vs_canonical = f"{r.rate / canonical.rate:.2f}x" if canonical and same else "-"
        vs_best = f"{r.rate / best_torch:.2f}x" if best_torch and same else "-"
        fraction = report.fraction_of_peak(name)
        lines.append(f"| {name} | {report.sampled[name]} | {r.rate:,.0f} | {r.spread:.0%} | {r.setup_s:.1f} "
                     f"| {vs_canonical} | {vs_best} | {report.gflops(name):,.1f} "
                     f"| {'-' if fraction is None else f'{fraction:.1%}'} |")
    return "\n".join(lines)


def _workdir_model(args) -> dict:
    """model.json of --workdir (empty without one), after filling in or checking --model against it."""
    if not args.workdir:
        if not args.model:
            raise UserError("--model", "required (or --workdir, whose model.json names it)")
        return {}
    from jaxsmooth import checkpoint

    found = checkpoint.read_json(os.path.join(args.workdir, checkpoint.MODEL_FILE), "--workdir")
    if args.model and args.model != found.get("model"):
        raise UserError("--model", f"{args.workdir} holds a {found.get('model')!r} model, not {args.model!r}")
    args.model = found.get("model", "")
    return found


def _noise_ratios(results, dtypes, xla_options, noises) -> list[str]:
    """One line per dtype, option set and noise after the first: its samples/s over the first noise's."""
    lines = []
    for d in dtypes:
        for o in xla_options:
            suffix = f" ({o} options)" if len(xla_options) > 1 else ""
            first = results.get(f"jax {d} {noises[0]}{suffix}")
            for noise in noises[1:]:
                other = results.get(f"jax {d} {noise}{suffix}")
                if first and other:
                    per_round = statistics.median(f / g for g, f in zip(other.seconds, first.seconds))
                    lines.append(f"jax {d}{suffix}: {noise} / {noises[0]} samples/s {other.rate / first.rate:.3f} "
                                 f"(ratio of medians), {per_round:.3f} (median of the rounds' ratios)")
    return lines


def _check_certify(args) -> tuple:
    """Validates bench certify's flags (a --denoiser that does not fit the model included); returns the dtypes,
    XLA option sets, noise kinds, input shape and classes."""
    found = _workdir_model(args)
    dtypes = _check_common(args)
    if args.n <= 0:
        raise UserError("--n", f"must be > 0, got {args.n}")
    if args.inputs <= 0 or args.batch % args.inputs:
        raise UserError("--inputs", f"must be > 0 and divide --batch {args.batch}, got {args.inputs}")
    if args.rounds <= 0:
        raise UserError("--rounds", f"must be > 0, got {args.rounds}")
    if args.torch_batch < 0:
        raise UserError("--torch-batch", f"must be > 0 (0: the same as --batch), got {args.torch_batch}")
    if args.tuned_batch <= 0:
        raise UserError("--tuned-batch", f"must be > 0, got {args.tuned_batch}")
    xla_options = tuple(args.xla_options.split(","))
    for o in xla_options:
        if o not in ("auto", "dot", "eltwise", "default"):
            raise UserError("--xla-options", f"unknown {o!r}; allowed: auto, dot, eltwise, default")
    from jaxsmooth.benchmarks import certify as certify_bench
    from jaxsmooth.certification import noises as noise_kinds

    noises = certify_bench.DEFAULT_NOISES if args.noise is None else tuple(args.noise.split(","))
    if any(noise not in noise_kinds.REGISTRY or noises.count(noise) > 1 for noise in noises):
        raise UserError("--noise", f"{args.noise!r}: allowed {', '.join(noise_kinds.names())}, each once, "
                                   "comma-separated")
    shape = tuple(found.get("input_shape", ())) or certify_bench.input_shape_of(args.model)
    num_classes = int(found.get("num_classes", 0)) or certify_bench.num_classes_of(args.model)
    if args.denoiser and args.memory:
        raise UserError("--denoiser", "--memory measures the classifier alone; leave one of them out")
    if args.denoiser:
        certify_bench.denoiser_of(args.denoiser, shape)
    return dtypes, xla_options, noises, shape, num_classes


def _certify(args) -> int:
    dtypes, xla_options, noises, shape, num_classes = _check_certify(args)
    from jaxsmooth.benchmarks import certify as certify_bench

    settings = lambda model: (f"{model}, input {'x'.join(map(str, shape))}, {num_classes} "  # noqa: E731
                              f"classes, sigma {certify_bench.SIGMA}, batch {args.batch} ({args.inputs} input(s) x "
                              f"{args.batch // args.inputs} samples)")
    if args.memory:
        return _certify_memory(args, dtypes, settings(args.model))

    from tqdm import tqdm

    torch_batch = args.torch_batch or args.batch
    with tqdm(total=args.rounds, desc=f"bench certify {args.model}", file=sys.stderr, leave=False) as bar:
        report = certify_bench.benchmark(args.model, args.n, batch=args.batch, inputs=args.inputs, dtypes=dtypes,
                                         rounds=args.rounds, with_torch=not args.no_torch, torch_batch=torch_batch,
                                         tuned_batch=args.tuned_batch, xla_options=xla_options,
                                         torch_compile=args.torch_compile, on_round=lambda r: bar.update(1),
                                         workdir=args.workdir, input_shape=shape, num_classes=num_classes,
                                         noises=noises, denoiser=args.denoiser)
    torch_settings = ""
    if any(name.startswith("torch") for name in report.results):
        import torch

        torch_settings = (f"; torch batch {torch_batch} canonical, {args.tuned_batch} tuned, torch "
                          f"{torch.__version__} ({torch.get_num_threads()} threads)")
    elif not args.no_torch:
        torch_settings = f"; no PyTorch reference (torch not installed, or none for {args.model})"
    print(f"certify sampling, {settings(report.model)}, n {args.n:,} per input, "
          f"{args.rounds} rounds; {benchmarks.machine()}{torch_settings}")
    print(_certify_table(report))
    for line in _noise_ratios(report.results, dtypes, xla_options, noises) + certify_bench.alone_ratios(report):
        print(line)
    _certify_footer(args, report, dtypes, noises)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": {**vars(args), "torch_batch": torch_batch},
                       "flops_per_sample": report.flops_per_sample, "flops_per_sample_of": report.flops,
                       "matmul_peak_gflops": {d: p[0] for d, p in report.peaks.items()},
                       "peak_rss_bytes": report.peak_rss_bytes,
                       "contenders": {n: {"seconds": r.seconds, "items_per_round": r.items_per_round,
                                          "setup_s": r.setup_s, "compute_dtype": report.compute_dtype[n],
                                          "model": report.sampled[n]}
                                      for n, r in report.results.items()}}, f, indent=2)
    return 0


def _certify_footer(args, report, dtypes, noises) -> None:
    """The lines after bench certify's table: the workdirs timed, the XLA options, the FLOPs and the peaks."""
    if os.path.isdir(args.denoiser):
        print(f"denoiser: {os.path.abspath(args.denoiser)}")
    elif args.denoiser:
        print(f"denoiser: {args.denoiser}, initialised as the paper does (orthogonal kernels, the last one zero) "
              "for the engine and as PyTorch does for the references")
    if args.workdir:
        rates = {name: r.rate for name, r in report.results.items()}
        engine = lambda d: rates.get(f"jax {d}", rates.get(f"jax {d} {noises[0]}"))  # noqa: E731
        print(f"workdir: {os.path.abspath(args.workdir)}" + "".join(
            f"; jax {d} workdir / jax {d}: {rates[f'jax {d} workdir'] / engine(d):.3f}"
            for d in dtypes if f"jax {d} workdir" in rates))
    for name, options in report.options.items():
        kinds = options.get("xla_cpu_experimental_ynn_fusion_type", "").replace("LIBRARY_FUSION_TYPE_", "")
        print(f"{name}: XLA options {'YNN fusion ' + kinds.replace(',', '+') if kinds else 'XLA defaults'}")
    peaks = "; ".join(f"{d} {gflops:,.0f} GFLOP/s ({how})" for d, (gflops, how) in report.peaks.items())
    per_model = ", ".join(f"{model} {f / 1e6:,.2f}" for model, f in report.flops.items())
    print(f"forward pass {per_model} MFLOP per sample "
          "(2 per multiply-add of its convolutions and matrix products); "
          f"matmul peak: {peaks}; peak RSS of this process {report.peak_rss_bytes / 2**20:,.0f} MiB")


def _pipeline(args) -> int:
    from jaxsmooth.benchmarks import pipeline as pipeline_bench

    return pipeline_bench.main(args)


def _counts(text: str, flag: str) -> list[int]:
    try:
        counts = [int(k) for k in text.split(",")]
    except ValueError:
        raise UserError(flag, f"must be comma-separated integers, got {text!r}") from None
    if min(counts) < 1:
        raise UserError(flag, f"must hold counts >= 1, got {text!r}")
    return counts


def _scaling(args) -> int:
    counts, pods = _counts(args.devices, "--devices"), _counts(args.pod_devices, "--pod-devices")
    if counts[0] != 1:
        raise UserError("--devices", f"must start with 1 and hold counts >= 1, got {args.devices!r}")
    for flag, value in (("--n", args.n), ("--chunk", args.chunk), ("--rounds", args.rounds),
                        ("--pod-n", args.pod_n)):
        if value <= 0:
            raise UserError(flag, f"must be > 0, got {value}")
    if "jax" not in sys.modules:  # fake CPU devices: only before JAX starts
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={max(counts)}".strip()
    import jax

    if jax.device_count() < max(counts):
        raise UserError("--devices", f"this process has {jax.device_count()} {jax.devices()[0].platform} "
                                     f"device(s), fewer than {max(counts)}")
    from tqdm import tqdm

    from jaxsmooth.benchmarks import scaling

    with tqdm(total=args.rounds, desc="bench scaling", file=sys.stderr, leave=False) as bar:
        rows = scaling.benchmark(args.model, counts, n=args.n, chunk=args.chunk, rounds=args.rounds,
                                 on_round=lambda r: bar.update(1))
    kind = "fake CPU devices sharing the cores" if jax.devices()[0].platform == "cpu" else "devices"
    print(f"certify sampling of one input over k {kind}, {args.model}, n {args.n:,}, chunk {args.chunk}, "
          f"{args.rounds} rounds; {benchmarks.machine()}")
    print(scaling.markdown(rows), end="")
    if args.per_device_rate > 0:
        cost = scaling.spreading_cost(rows, rows[-1])
        print(f"\npod estimate at {args.per_device_rate:,.0f} samples/s per device, CERTIFY n0 = 100, n = "
              f"{args.pod_n:,}, spreading cost {cost * 1e3:.2f} ms per call (measured above at {rows[-1].devices} "
              "devices):\n")
        print("| devices | samples mode: s per input | samples mode: inputs/s | examples mode: inputs/s |\n"
              "|---:|---:|---:|---:|")
        for d in pods:
            e = scaling.pod_estimate(args.per_device_rate, d, args.pod_n, cost)
            print(f"| {d} | {e['seconds_per_input_samples_mode']:.4f} | {e['inputs_per_s_samples_mode']:,.1f} | "
                  f"{e['inputs_per_s_examples_mode']:,.1f} |")
    return 0


def _certify_memory(args, dtypes, settings: str) -> int:
    from jaxsmooth.benchmarks import certify as certify_bench

    print(f"certify sampling memory, {settings}, engine alone, one fresh process per n; {benchmarks.machine()}")
    print("| dtype | n | peak RSS MiB | peak after setup MiB | samples/s | ratio to first n |\n"
          "|---|---|---|---|---|---|")
    rows = {}
    for d in dtypes:
        rows[d] = certify_bench.memory(args.model, batch=args.batch, inputs=args.inputs, dtype=d)
        first = rows[d][0]["peak_rss_bytes"]
        for row in rows[d]:
            print(f"| {d} | {row['n']:,} | {row['peak_rss_bytes'] / 2**20:,.0f} "
                  f"| {row['peak_rss_bytes_before'] / 2**20:,.0f} | {row['samples'] / row['seconds']:,.0f} "
                  f"| {row['peak_rss_bytes'] / first:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "memory": rows}, f, indent=2)
    return 0


def command(argv: list[str]) -> int:
    rest, overrides = cli.split_overrides(argv)
    args = _parser().parse_args(rest)
    if overrides and args.what not in ("sequential", "faults"):  # suites over trained models, like the paper reports
        raise UserError("config", "--config.FIELD=VALUE overrides apply to bench sequential, bench faults and the "
                                  "paper reports (python -m jaxsmooth.report), not to micro-benchmarks; "
                                  f"got {overrides[0]}")
    if args.what == "sequential":
        from jaxsmooth.benchmarks import sequential as sequential_bench

        return sequential_bench.main(args, overrides)
    return {"certify": _certify, "train": _train, "inference": _inference, "scaling": _scaling,
            "pipeline": _pipeline, "faults": lambda a: _faults(a, overrides, list(argv)),
            "startup": _startup}[args.what](args)


def _startup(args) -> int:
    from jaxsmooth.benchmarks import startup

    return startup.main(args)


def _faults(args, overrides, argv) -> int:
    from jaxsmooth.benchmarks import faults

    return faults.main(args, overrides, argv)


def _inference(args) -> int:
    from jaxsmooth import models
    from jaxsmooth.benchmarks import inference, train as train_bench

    if args.model not in models.NAMES:
        raise UserError("--model", f"unknown model {args.model!r}; allowed: {', '.join(models.NAMES)}")
    for flag in ("images", "certify_images", "n", "batch", "rounds"):
        if getattr(args, flag) <= 0:
            raise UserError("--" + flag.replace("_", "-"), f"must be > 0, got {getattr(args, flag)}")
    shape = _input_shape(args.input) or train_bench.input_shape_of(args.model)
    timing = inference.benchmark(args.model, shape, width=args.width, images=args.images,
                                 certify_images=args.certify_images, n_certify=args.n, batch=args.batch,
                                 rounds=args.rounds)
    import jax

    print(f"inference per image, {args.model}, input {'x'.join(map(str, shape))}, {args.rounds} rounds, "
          f"{benchmarks.machine()}")
    print(inference.markdown(timing, jax.devices()[0].device_kind), end="")
    return 0


def _input_shape(text: str) -> tuple[int, int, int] | None:
    if not text:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
        assert len(shape) == 3 and min(shape) > 0
    except (ValueError, AssertionError):
        raise UserError("--input", f"expected H,W,C such as 32,32,3, got {text!r}") from None
    return shape


main = cli.main_wrapper(command, parser=_parser)

if __name__ == "__main__":
    sys.exit(main())
