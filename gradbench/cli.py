"""The ``gradbench`` command line: run, compare, train, demo, theory, bench.

Every subcommand validates its options through :class:`~gradbench.Stack` and exits with
status 2 and a one-line message on bad input. Results are written atomically (temporary file
+ ``os.replace``), so an interrupted run never leaves half a JSON file behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import threading
import time

import numpy as np

from gradbench import __version__, _atomic, cli_io
from gradbench.spec import ACTIVATIONS, CLIP_MODES, CLIP_TARGETS, DTYPES, INITS, LOSSES, Stack

DEFAULT_DEMO_DIR = "gradbench-demo"

EPILOG_MAIN = """\
examples:
  gradbench demo                                   the classic demonstrations, plots in ./gradbench-demo/
  gradbench run --depth 200 --width 32 --activation sigmoid --plot flow.png
  gradbench run --depth 100000 --width 16 --activation sigmoid   exact at 10^-60000
  gradbench compare --depth 50 --width 32 --configs sigmoid,relu,relu-he,sigmoid-bn
  gradbench train --demo deep-sigmoid --plot loss.png
  gradbench train --list
  gradbench theory --activation tanh --sigma-w 1.5 --sigma-b 0.1 --depth 200 --width 256 --plot theory.png
  gradbench bench --help                          (when the benchmark report is installed)
"""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UsageError(ValueError):
    """Bad options that argparse cannot see (combinations, values checked later)."""


# ------------------------------------------------------------------ helpers
def write_atomic(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically (temporary file in the same directory + ``os.replace``)."""
    return _atomic.write_atomic(path, lambda f: f.write(text))


def _check_plot_path(path):
    if path is not None and os.path.splitext(path)[1].lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"plot path {path!r} must end in .png, .svg or .pdf")


def _check_json_path(path):
    if path is not None and not path.lower().endswith(".json"):
        raise UsageError(f"--out {path!r} must end in .json")


class _Notice:
    """Per-process memory of one-time notices (the numba compilation notice)."""

    numba_shown = False


def resolve_backend(name: str) -> str:
    """The concrete backend; prints "compiling kernels (first run only)" before numba's first use."""
    from gradbench.backends import resolve

    try:
        concrete = resolve(name)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    if concrete == "numba" and not _Notice.numba_shown:
        _Notice.numba_shown = True
        print("compiling kernels (first run only) ...", file=sys.stderr, flush=True)
    return concrete


class Spinner:
    """A progress notice for one long call that cannot report per-layer progress.

    After ``delay`` seconds it shows a tqdm line with the elapsed time (on a terminal), or a
    single notice line (otherwise), until the block ends.
    """

    def __init__(self, desc: str, delay: float = 1.0, stream=None):
        self.desc, self.delay = desc, delay
        self.stream = stream if stream is not None else sys.stderr
        self._done = threading.Event()
        self._thread = None

    def _run(self):
        if self._done.wait(self.delay):
            return
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        if not tty:
            print(f"{self.desc} (this can take a while) ...", file=self.stream, flush=True)
            return
        from tqdm.auto import tqdm

        with tqdm(total=None, desc=self.desc, bar_format="{desc}: {elapsed} elapsed", file=self.stream,
                  leave=False) as bar:
            while not self._done.wait(0.25):
                bar.refresh()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        return False


# ------------------------------------------------------------------ stack options
def add_stack_args(p: argparse.ArgumentParser, *, depth=None, width=None, activation="tanh",
                   init="xavier_normal", loss="sum_squares") -> None:
    g = p.add_argument_group("the stack")
    g.add_argument("--depth", type=int, default=depth, required=depth is None, help="number of layers L")
    g.add_argument("--width", type=int, default=width, required=width is None, help="units per layer N")
    g.add_argument("--activation", default=activation, metavar="NAME",
                   help=f"one of {', '.join(ACTIVATIONS)} (default {activation})")
    g.add_argument("--activation-param", type=float, default=None,
                   help="leaky-ReLU slope, initial PReLU slope or ELU alpha")
    g.add_argument("--init", default=init, metavar="NAME", help=f"one of {', '.join(INITS)} (default {init})")
    g.add_argument("--sigma-w", type=float, default=None, help="weight gain: variance sigma_w^2 / fan_in")
    g.add_argument("--sigma-b", type=float, default=0.0, help="standard deviation of the biases (default 0)")
    g.add_argument("--batch-norm", action="store_true", help="batch normalisation after each linear map")
    g.add_argument("--residual", type=int, default=0, metavar="K", help="residual connection every K layers")
    g.add_argument("--residual-scale", type=float, default=1.0, help="alpha in h + alpha * phi(z)")
    g.add_argument("--clip", choices=CLIP_MODES, default=None, help="gradient clipping mode")
    g.add_argument("--clip-threshold", type=float, default=1.0, help="clipping threshold c (default 1)")
    g.add_argument("--clip-on", choices=CLIP_TARGETS, default="signal",
                   help="clip the backpropagated signal, each layer's or all parameter gradients")
    g.add_argument("--loss", default=loss, metavar="NAME", help=f"one of {', '.join(LOSSES)} (default {loss})")
    g.add_argument("--input-dim", type=int, default=None, help="data dimension D (an input layer D -> N)")
    g.add_argument("--output-dim", type=int, default=1, help="outputs of the head (classes for softmax_ce)")
    g.add_argument("--dtype", choices=DTYPES, default="float64")


def stack_from_args(args, **overrides) -> Stack:
    kw = dict(
        depth=args.depth, width=args.width, activation=args.activation,
        activation_param=args.activation_param, init=args.init, sigma_w=args.sigma_w,
        sigma_b=args.sigma_b, batch_norm=args.batch_norm, residual=args.residual,
        residual_scale=args.residual_scale, clip=args.clip, clip_threshold=args.clip_threshold,
        clip_on=args.clip_on, loss=args.loss, input_dim=args.input_dim, output_dim=args.output_dim,
        dtype=args.dtype,
    )
    kw.update(overrides)
    return Stack(**kw)


def random_targets(stack: Stack, batch: int, seed: int):
    """Seeded targets for a stack with a head (none for sum_squares)."""
    if not stack.has_head:
        return None
    rng = np.random.default_rng([seed, 2])
    if stack.loss == "softmax_ce":
        return rng.integers(0, stack.output_dim, size=batch).astype(np.int64)
    if stack.loss == "bce":
        return rng.integers(0, 2, size=(batch, stack.output_dim)).astype(stack.np_dtype)
    return rng.standard_normal((batch, stack.output_dim)).astype(stack.np_dtype)


def run_stack(stack: Stack, batch: int, seed: int, backend: str, label: str = "", *,
              stats_only: bool = False, checkpoint="auto", params=None):
    """Parameters, input and targets from ``seed``; one backprop with a notice if it is slow.

    ``stats_only``: weights generated per layer (never stored) and per-layer statistics only,
    for depths whose weights or gradients do not fit in memory; a progress bar follows the
    segments. Returns ``(result, params)``.
    """
    import gradbench as gb
    from gradbench.params import GeneratedParams

    if isinstance(batch, bool) or batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    concrete = resolve_backend(backend)
    if params is None:  # given: a model from --torch
        params = GeneratedParams(stack, seed) if stats_only else gb.init_params(stack, seed)
    x = gb.gaussian_input(stack, batch, seed=np.random.default_rng([seed, 1]))
    t = random_targets(stack, batch, seed)
    desc = f"backprop {label + ' ' if label else ''}(depth {stack.depth}, width {stack.width}, {concrete})"
    if not stats_only and checkpoint == "auto":
        with Spinner(desc):
            return gb.backprop(stack, params, x, t, backend=concrete), params
    from tqdm import tqdm

    with tqdm(total=None, desc=desc + " forward+backward", unit="seg", file=sys.stderr,
              disable=None, mininterval=1.0) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        res = gb.backprop(stack, params, x, t, backend=concrete, stats_only=stats_only,
                          checkpoint=checkpoint, progress=progress)
    return res, params


def _payload(**kw) -> dict:
    return {"gradbench": __version__, **kw}


# ------------------------------------------------------------------ run
def cmd_run(args) -> int:
    from gradbench import plot
    from gradbench.diagnose import diagnose
    from gradbench.report import format_report

    _check_plot_path(args.plot)
    _check_plot_path(args.hist)
    cli_io.check_run_args(args)  # --out .json/.npz, --tensorboard, --torch
    stack, given = cli_io.torch_stack(args) if args.torch else (stack_from_args(args), None)
    t0 = time.perf_counter()
    checkpoint = "auto" if args.checkpoint is None else (None if args.checkpoint == 0 else args.checkpoint)
    res, params = run_stack(stack, args.batch, args.seed, args.backend, stats_only=args.stats_only,
                            checkpoint=checkpoint, params=given)
    with Spinner("diagnosing"):
        d = diagnose(res, None if args.stats_only else params, bins=args.bins)
    print(format_report(d, rows=args.rows))
    print(f"  ({time.perf_counter() - t0:.1f} s, batch {args.batch}, seed {args.seed})")
    for path in cli_io.write_run_outputs(args, d):  # --out x.npz, --tensorboard DIR
        print(f"wrote {path}")
    if args.out and args.out.lower().endswith(".json"):
        head = json.dumps(_payload(command="run"))[:-1]  # the diagnosis streams in: 10^6 layers fit

        def write(f):
            f.write(head + ', "diagnosis": ')
            d.write_json(f)
            f.write("}")

        _atomic.write_atomic(args.out, write)
        print(f"wrote {args.out}")
    if args.plot:
        plot.gradient_flow({_label(stack): d}, args.plot, title=f"Gradient flow, depth {stack.depth}")
        print(f"wrote {args.plot}")
    if args.hist:
        plot.histogram_heatmap(d, args.hist)
        print(f"wrote {args.hist}")
    return 0


def _label(stack: Stack) -> str:
    from gradbench.report import describe as _describe
    from dataclasses import asdict

    return _describe(asdict(stack)).rsplit(", ", 1)[0]


# ------------------------------------------------------------------ compare
# Variants of one base stack: name -> (label, changes). The base init of `compare` and `demo`
# is N(0, 1) entries (sigma_w = sqrt(width)): the naive init that the remedies fix.
def variants(stack: Stack) -> dict[str, tuple[str, dict]]:
    k = 2 if stack.depth % 2 == 0 else 1
    v = {name: (f"{name}, base init", dict(activation=name)) for name in ACTIVATIONS}
    v.update({
        "sigmoid-xavier": ("sigmoid, Xavier init", dict(activation="sigmoid", init="xavier_normal", sigma_w=None)),
        "relu-he": ("relu + He init", dict(activation="relu", init="he_normal", sigma_w=None)),
        "sigmoid-bn": ("sigmoid + batch norm", dict(activation="sigmoid", batch_norm=True)),
        "sigmoid-residual": (f"sigmoid + residual/{k}", dict(activation="sigmoid", residual=k)),
        "tanh-xavier": ("tanh + Xavier init", dict(activation="tanh", init="xavier_normal", sigma_w=None)),
        "tanh-clip": ("tanh + clip ||dh|| <= 1",
                      dict(activation="tanh", clip="norm", clip_threshold=1.0, clip_on="signal")),
        "relu-clip": ("relu + clip ||dW_l|| <= 1",
                      dict(activation="relu", clip="norm", clip_threshold=1.0, clip_on="layer")),
    })
    return v


DEMO_CONFIGS = ("sigmoid", "tanh", "relu", "sigmoid-xavier", "relu-he", "sigmoid-bn", "sigmoid-residual",
                "tanh-xavier", "tanh-clip")


def compare_table(diags: dict, layers: list[int]) -> str:
    """One row per configuration: verdict, slope and log10 ||dW_l|| at a few layers."""
    from gradbench.report import fmt_pow as _fmt_pow

    name_w = max(13, max(len(k) for k in diags))
    head = f"{'configuration':<{name_w}}  {'verdict':<9} {'dec/layer':>9}" + "".join(
        f" {'||dW_' + str(l) + '||':>11}" for l in layers) + "  plain float fails"
    lines = [head, "-" * len(head)]
    for label, d in diags.items():
        row = f"{label:<{name_w}}  {d.verdict:<9} {d.decades_per_layer:>+9.3f}"
        row += "".join(f" {_fmt_pow(d.grad_log10[l]):>11}" for l in layers)
        fails = []
        for name in ("float32", "float64"):
            lim = d.float_limits[name]
            short = name.replace("float", "f")
            if lim["underflow_layer"] is not None:
                fails.append(f"{short} under @{lim['underflow_layer']}")
            if lim["overflow_layer"] is not None:
                fails.append(f"{short} over @{lim['overflow_layer']}")
        row += "  " + (", ".join(fails) if fails else "-")
        lines.append(row)
    return "\n".join(lines)


def sample_layers(L: int, n: int = 5) -> list[int]:
    return sorted(set(np.linspace(0, L - 1, min(n, L)).round().astype(int).tolist()))


def _base_for_compare(args) -> dict:
    """Base init for compare/demo: N(0,1) entries unless --init or --sigma-w was given."""
    over = {}
    if args.init is None:
        over["init"] = "normal"
        if args.sigma_w is None:
            over["sigma_w"] = math.sqrt(args.width) if args.width and args.width > 0 else 1.0
    return over


def compare_stacks(args, names: list[str]) -> dict:
    from gradbench.diagnose import diagnose
    from tqdm.auto import tqdm

    base = stack_from_args(args, activation="sigmoid", **_base_for_compare(args))
    table = variants(base)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UsageError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    diags = {}
    for name in tqdm(names, desc="configurations", unit="config", leave=False, disable=None):
        label, changes = table[name]
        stack = base.replace(**changes)
        res, params = run_stack(stack, args.batch, args.seed, args.backend, label=name)
        diags[label] = diagnose(res, params, bins=args.bins)
    return diags


def _describe_base(args) -> str:
    over = _base_for_compare(args)
    if "sigma_w" in over:
        return f"depth {args.depth}, width {args.width}, batch {args.batch}, base init N(0, 1) entries (sigma_w = sqrt(width))"
    init = over.get("init", args.init)
    sw = f", sigma_w={args.sigma_w:g}" if args.sigma_w is not None else ""
    return f"depth {args.depth}, width {args.width}, batch {args.batch}, base init {init}{sw}"


def cmd_compare(args) -> int:
    from gradbench import plot

    _check_plot_path(args.plot)
    _check_json_path(args.out)
    names = _split(args.configs) if args.configs else (_split(args.activations) if args.activations else list(DEMO_CONFIGS))
    diags = compare_stacks(args, names)
    print(f"gradient norms per layer ({_describe_base(args)}; loss {args.loss}, seed {args.seed})")
    print(compare_table(diags, sample_layers(args.depth)))
    _print_verdicts(diags)
    if args.out:
        write_atomic(args.out, json.dumps(_payload(command="compare", configurations={
            k: d.to_dict() for k, d in diags.items()}), allow_nan=False))
        print(f"wrote {args.out}")
    if args.plot:
        plot.gradient_flow(diags, args.plot, title=f"Gradient flow, depth {args.depth}, width {args.width}")
        print(f"wrote {args.plot}")
    return 0


def _print_verdicts(diags: dict) -> None:
    import textwrap

    print()
    for label, d in diags.items():
        text = textwrap.fill(d.explanation, 100, initial_indent="    ", subsequent_indent="    ")
        print(f"  {label}: {d.verdict.upper()}\n{text}")


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


# ------------------------------------------------------------------ train
def train_to_dict(r) -> dict:
    from gradbench.diagnose import _to_jsonable

    return _to_jsonable(dict(
        settings=r.settings, stack=__import__("dataclasses").asdict(r.stack), loss=r.loss,
        eval_loss=r.eval_loss, accuracy=r.accuracy, grad_log10=r.grad_log10,
        update_ratio_percent=r.update_ratio, update_ratio_input_percent=r.update_ratio_input,
        update_ratio_head_percent=r.update_ratio_head, diverged_epoch=r.diverged_epoch,
        divergence=r.divergence, seconds=r.seconds,
    ))


def cmd_train(args) -> int:
    from gradbench import datasets, plot
    from gradbench.train import DEMOS, run_demo, train

    if args.list:
        print("demos (gradbench train --demo NAME, or --demo all):")
        for name, demo in DEMOS.items():
            t = demo.train
            print(f"  {name:18s} {demo.title}  [{t['optimizer']} lr={t['lr']:g}, batch {t['batch_size']}, "
                  f"{t['epochs']} epochs]")
        return 0
    _check_plot_path(args.plot)
    _check_plot_path(args.ratio_plot)
    _check_json_path(args.out)
    cli_io.check_tensorboard_dir(args.tensorboard)
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "seed", "optimizer")
                 if getattr(args, k) is not None}
    concrete = resolve_backend(args.backend)
    results = {}
    if args.demo:
        names = list(DEMOS) if args.demo == "all" else _split(args.demo)
        bad = [n for n in names if n not in DEMOS]
        if bad:
            raise UsageError(f"unknown demo {', '.join(bad)}; choose from {', '.join(DEMOS)} or all")
        for name in names:
            results[name] = run_demo(name, backend=concrete, progress=True,
                                     tensorboard=cli_io.train_tensorboard_dir(args, name), **overrides)
    else:
        if args.depth is None or args.width is None:
            raise UsageError("give --demo NAME (see --list) or a stack with --depth and --width")
        X, y = datasets.load(args.dataset, args.samples, seed=args.data_seed)
        loss = args.loss or "bce"
        out_dim = args.output_dim if loss != "softmax_ce" else max(args.output_dim, int(y.max()) + 1)
        stack = stack_from_args(args, input_dim=X.shape[1], loss=loss, output_dim=out_dim)
        kw = dict(epochs=100, lr=0.1, batch_size=20, seed=0, optimizer="sgd")
        kw.update(overrides)
        results["custom"] = train(stack, X, y, backend=concrete, progress=True, name="custom",
                                  dataset=args.dataset, momentum=args.momentum,
                                  weight_decay=args.weight_decay,
                                  tensorboard=cli_io.train_tensorboard_dir(args, "custom"), **kw)
    for r in results.values():
        print(r.summary())
    if args.out:
        write_atomic(args.out, json.dumps(_payload(command="train", runs={
            k: train_to_dict(r) for k, r in results.items()}), allow_nan=False))
        print(f"wrote {args.out}")
    if args.plot:
        plot.loss_curves(results, args.plot)
        print(f"wrote {args.plot}")
    if args.ratio_plot:
        plot.update_ratio_curves(results, args.ratio_plot)
        print(f"wrote {args.ratio_plot}")
    return 0


# ------------------------------------------------------------------ demo
def cmd_demo(args) -> int:
    from gradbench import plot
    from gradbench.train import DEMOS, run_demo

    out_dir = args.out_dir
    print(f"gradbench demo: one deep stack, {len(DEMO_CONFIGS)} configurations "
          f"(backend {resolve_backend(args.backend)})\n")
    diags = compare_stacks(args, list(DEMO_CONFIGS))
    print(f"gradient norms per layer ({_describe_base(args)}; loss {args.loss}, seed {args.seed})")
    print(compare_table(diags, sample_layers(args.depth)))
    _print_verdicts(diags)
    flow = os.path.join(out_dir, "flow.png")
    plot.gradient_flow(diags, flow, title=f"Gradient flow through {args.depth} layers: activations and remedies")
    hist = os.path.join(out_dir, "histograms.png")
    first = next(iter(diags))
    plot.histogram_heatmap(diags[first], hist, title=f"log10 |dL/dW_l| per layer: {first}")
    written = [flow, hist]
    if not args.no_train:
        print("\ntraining on two moons (bce, plain SGD; `gradbench train --list` for the settings):")
        results = {name: run_demo(name, backend=args.backend, progress=True) for name in DEMOS}
        print(training_table(results))
        loss_png = os.path.join(out_dir, "loss.png")
        ratio_png = os.path.join(out_dir, "update_ratio.png")
        plot.loss_curves(results, loss_png, title="Two moons: deep sigmoid stuck at ln 2, the remedies train")
        plot.update_ratio_curves({k: results[k] for k in ("deep-sigmoid", "shallow-sigmoid", "relu-he", "batchnorm")},
                                 ratio_png)
        written += [loss_png, ratio_png]
        write_atomic(os.path.join(out_dir, "training.json"), json.dumps(_payload(command="demo", runs={
            k: train_to_dict(r) for k, r in results.items()}), allow_nan=False))
    write_atomic(os.path.join(out_dir, "gradients.json"), json.dumps(_payload(command="demo", configurations={
        k: d.to_dict() for k, d in diags.items()}), allow_nan=False))
    print("\nplots: " + ", ".join(written))
    print(f"gradient-flow plot written to {flow}")
    return 0


def training_table(results: dict) -> str:
    head = (f"{'demo':<18} {'loss: epoch 1':>13} {'last':>8} {'accuracy':>8}  "
            f"{'first layer moves/epoch':>24}  note")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        ran = r.epochs_run
        last = r.loss[ran - 1] if ran else math.nan
        ratio = r.first_layer_ratio[:ran]
        med = f"{np.nanmean(ratio):.2g} %" if ran and np.any(np.isfinite(ratio)) else "-"
        acc = r.accuracy[ran] if r.diverged_epoch is None else math.nan
        note = (f"loss non-finite in epoch {r.diverged_epoch + 1}" if r.diverged_epoch is not None
                else ("stuck near ln 2" if abs(last - math.log(2)) < 0.02 else "trains"))
        lines.append(f"{name:<18} {r.loss[0]:>13.4f} {last:>8.4f} {acc:>8.2f}  {med:>24}  {note}")
    return "\n".join(lines)


# ------------------------------------------------------------------ bench
def cmd_bench(argv: list[str]) -> int:
    if importlib.util.find_spec("gradbench.benchreport") is None:
        print("gradbench bench: error: the benchmark report (gradbench.benchreport) is not installed "
              "in this version; run the benchmarks with `make bench`", file=sys.stderr)
        return 2
    from gradbench import benchreport

    rc = benchreport.main(argv)
    return int(rc or 0)


# ------------------------------------------------------------------ parser
# ------------------------------------------------------------------ theory
def cmd_theory(args) -> int:
    from gradbench import theory

    _check_plot_path(args.plot)
    _check_json_path(args.out)
    if (args.depth is None) != (args.width is None) and args.depth is not None:
        raise UsageError("--depth needs --width (and the other way round) to simulate a stack")
    if args.plot and args.depth is None:
        raise UsageError("--plot needs a simulation: give --depth and --width")
    mf = theory.mean_field(args.activation, args.sigma_w, args.sigma_b, args.activation_param)
    out = {"activation": args.activation, "sigma_w": args.sigma_w, "sigma_b": args.sigma_b,
           "q_star": mf.q_star, "chi1": mf.chi1, "decades_per_layer": mf.decades_per_layer,
           "depth_scale": mf.depth_scale, "phase": mf.phase}
    print(f"mean field: {args.activation}, sigma_w = {args.sigma_w:g}, sigma_b = {args.sigma_b:g}")
    print(f"  fixed point q*          {mf.q_star:.6g}")
    print(f"  chi_1                   {mf.chi1:.6g}   ({mf.phase})")
    print(f"  ||dL/dh|| per layer     {mf.decades_per_layer:+.6g} decades going down the stack")
    print(f"  depth scale             {mf.depth_scale:.4g} layers (1 / |ln chi_1|)")
    try:
        crit = theory.critical_sigma_w(args.activation, args.sigma_b, args.activation_param)
        out["critical_sigma_w"] = crit
        print(f"  critical sigma_w        {crit:.6g} at sigma_b = {args.sigma_b:g} (sigma_w^2 = {crit * crit:.6g})")
    except ValueError as exc:
        print(f"  critical sigma_w        none ({exc})")
    prediction = mf.decades_per_layer
    if args.activation == "identity" and args.width:
        lam = theory.newman_lambda1(args.width, args.sigma_w)
        prediction = lam / math.log(10)
        out["newman_lambda1"] = lam
        print(f"  Newman lambda_1 (N={args.width})  {lam:+.6g} nats = {prediction:+.6g} decades per layer "
              "(finite-width exact for linear Gaussian stacks)")
    if args.depth is not None:
        stack = Stack(depth=args.depth, width=args.width, activation=args.activation,
                      activation_param=args.activation_param, init="normal", sigma_w=args.sigma_w,
                      sigma_b=args.sigma_b)
        res, _ = run_stack(stack, args.batch, args.seed, args.backend)
        s = res.signal_norm.log10()
        skip = min(args.depth // 10, 50)  # the length map converges first
        part = s[skip : args.depth - skip] if args.depth > 4 * skip + 2 else s
        ok = np.isfinite(part)
        if ok.sum() >= 2:
            slope = -float(np.polyfit(np.flatnonzero(ok), part[ok], 1)[0])
            out["simulated_decades_per_layer"] = slope
            print(f"simulated ({args.depth} layers, width {args.width}, batch {args.batch}, {res.backend}): "
                  f"{slope:+.6g} decades per layer going down (prediction {prediction:+.6g})")
        if args.plot:
            from gradbench import plot

            plot.theory_vs_simulation(res, prediction, args.plot)
            print(f"wrote {args.plot}")
    if args.out:
        write_atomic(args.out, json.dumps(_payload(command="theory", **out), allow_nan=False))
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradbench", description=(
        "The exact gradient chain through very deep stacks: where and why gradients vanish or explode."),
        epilog=EPILOG_MAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gradbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def common(p, batch=16):
        p.add_argument("--batch", type=int, default=batch, help=f"batch size of the probe input (default {batch})")
        p.add_argument("--seed", type=int, default=0, help="seed of parameters, input and targets")
        p.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "c"),
                       help="auto picks the fastest available")
        p.add_argument("--bins", type=int, default=40, help="bins of the per-layer histograms")

    p = sub.add_parser("run", help="one stack: forward, exact backward, diagnosis", epilog="""\
examples:
  gradbench run --depth 50 --width 64 --activation sigmoid
  gradbench run --depth 100000 --width 16 --activation sigmoid --out deep.json
  gradbench run --depth 30 --width 32 --activation relu --init he_normal --plot flow.png --hist hist.png
  gradbench run --torch model.pt --loss bce --tensorboard runs/model   a saved nn.Sequential (needs torch)
  gradbench run --depth 100000 --width 16 --activation sigmoid --stats-only --out deep.npz
  gradbench run --depth 20 --width 16 --activation tanh --sigma-w 3 --clip norm --clip-on signal
  gradbench run --depth 1000000 --width 64 --batch 64 --activation tanh --init he_normal --stats-only --plot flow.png
""", formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stack_args(p)
    cli_io.add_run_args(p)
    common(p)
    p.add_argument("--out", help="write the diagnosis as JSON (result.json) or, for large runs, as NumPy "
                                 ".npz (result.npz; docs/formats.md)")
    p.add_argument("--plot", help="write the gradient-flow plot (.png, .svg or .pdf)")
    p.add_argument("--hist", help="write the per-layer histogram heat map")
    p.add_argument("--rows", type=int, default=12, help="layers shown in the table (default 12)")
    p.add_argument("--stats-only", action="store_true",
                   help="generated weights (never stored) and per-layer statistics only: "
                        "for 10^5-10^6 layers, memory O(sqrt(L) B N)")
    p.add_argument("--checkpoint", type=int, default=None, metavar="K",
                   help="store every K-th activation and recompute the rest (0: never; "
                        "default: only when the plain run would not fit)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="several activations / remedies side by side at one depth", epilog="""\
configurations: any activation name (sigmoid, tanh, relu, ...), sigmoid-xavier, relu-he, sigmoid-bn,
sigmoid-residual, tanh-xavier, tanh-clip, relu-clip. They change the activation or add a remedy to a
base stack whose init is N(0, 1) entries (sigma_w = sqrt(width)) unless --init / --sigma-w say otherwise,
with a bce head on seeded random labels (--loss sum_squares for the plain 0.5 ||h_L||^2 probe).

examples:
  gradbench compare --depth 50 --width 32
  gradbench compare --depth 100 --width 64 --activations sigmoid,tanh,relu,gelu --init xavier_normal
  gradbench compare --depth 40 --width 32 --configs relu,relu-he,relu-clip --plot flow.png --out cmp.json
""", formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stack_args(p, depth=50, width=32, init=None, loss="bce")
    common(p)
    p.add_argument("--configs", help="comma-separated configuration names (default: the demo's)")
    p.add_argument("--activations", help="comma-separated activations under the base init")
    p.add_argument("--out", help="write every diagnosis as JSON")
    p.add_argument("--plot", help="write the gradient-flow plot of all configurations")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("train", help="train on a small data set (a named demo or your own stack)", epilog="""\
examples:
  gradbench train --list
  gradbench train --demo deep-sigmoid
  gradbench train --demo deep-sigmoid,shallow-sigmoid --plot loss.png --ratio-plot ratio.png
  gradbench train --demo deep-sigmoid,layerwise-pretraining,adam --tensorboard runs   (tensorboard --logdir runs)
  gradbench train --demo all --out history.json
  gradbench train --dataset circles --depth 6 --width 16 --activation relu --init he_normal --optimizer adam --lr 0.01
""", formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stack_args(p, depth=None, width=None, loss=None)
    for a in p._action_groups[-1]._group_actions:
        if a.dest in ("depth", "width"):
            a.required = False
    p.add_argument("--demo", help="demo name(s), comma-separated, or all")
    p.add_argument("--list", action="store_true", help="list the demos and their settings")
    p.add_argument("--dataset", default="moons", choices=("moons", "circles", "xor"))
    p.add_argument("--samples", type=int, default=200, help="data set size (default 200)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "c"))
    p.add_argument("--out", help="write the training history as JSON")
    cli_io.add_train_args(p)
    p.add_argument("--plot", help="write the loss curves")
    p.add_argument("--ratio-plot", help="write the update-ratio curves")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="what `make demo` runs: the classic demonstrations with plots", epilog=f"""\
The same deep stack (bce head on seeded random labels) under sigmoid / tanh / relu (N(0, 1) init) and
the remedies (Xavier, He, batch norm, residual, clipping): a table of gradient norms at a few layers, the verdicts, and plots in
--out-dir ({DEFAULT_DEMO_DIR}/flow.png, histograms.png); then the training demos on two moons
(loss.png, update_ratio.png) unless --no-train.
""", formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stack_args(p, depth=50, width=32, init=None, loss="bce")
    common(p)
    p.add_argument("--out-dir", default=DEFAULT_DEMO_DIR, help=f"where the plots go (default ./{DEFAULT_DEMO_DIR})")
    p.add_argument("--no-train", action="store_true", help="skip the training demos")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("theory", help="mean-field and Lyapunov predictions, optionally against a simulation",
                       epilog="""\
Mean field (Poole et al. 2016, Schoenholz et al. 2017) for W ~ N(0, sigma_w^2/N), b ~ N(0, sigma_b^2):
the fixed point q*, chi_1 (the per-layer factor of ||dL/dh||^2), the decades per layer, the depth scale
and the critical sigma_w at this sigma_b; for identity stacks Newman's top Lyapunov exponent at --width.
With --depth and --width a simulated stack is run and its fitted slope compared with the prediction.

examples:
  gradbench theory --activation tanh --sigma-w 1.5 --sigma-b 0.1
  gradbench theory --activation sigmoid --sigma-w 1 --depth 2000 --width 128 --plot theory.png
  gradbench theory --activation identity --sigma-w 1 --width 4 --depth 100000
""", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activation", default="tanh", metavar="NAME", help=f"one of {', '.join(ACTIVATIONS)}")
    p.add_argument("--activation-param", type=float, default=None)
    p.add_argument("--sigma-w", type=float, default=1.0, help="weight gain (variance sigma_w^2 / N)")
    p.add_argument("--sigma-b", type=float, default=0.0, help="bias standard deviation")
    p.add_argument("--depth", type=int, default=None, help="simulate a stack of this depth")
    p.add_argument("--width", type=int, default=None, help="width of the simulated stack")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "c"))
    p.add_argument("--plot", help="write simulated vs predicted log10 ||dL/dh_l|| (.png, .svg, .pdf)")
    p.add_argument("--out", help="write the predictions (and the fitted slope) as JSON")
    p.set_defaults(func=cmd_theory)

    sub.add_parser("bench", help="benchmark report (gradbench.benchreport; arguments are passed on)",
                   add_help=False)
    from gradbench import cli_sweep  # `gradbench sweep` (its own module: gradbench/cli_sweep.py)
    cli_sweep.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradbench`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and bad options (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"gradbench {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"gradbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
