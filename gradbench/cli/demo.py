"""``gradbench demo``: what ``make demo`` runs, the classic demonstrations with plots."""

from __future__ import annotations

import math
import os

import numpy as np

from gradbench.cli.common import (
    WEIGHTS, add_output_args, add_parser, resolve_backend,
)
from gradbench.cli.compare import (
    DEMO_CONFIGS, add_configs_stack_args, compare_stacks, config_names, print_comparison,
)
from gradbench.cli.output import (
    check_directory, check_outputs, make_directory, metadata, threads, write_json, write_plot,
)
from gradbench.cli.train import train_to_dict, weights_of
from gradbench.train import loss_text

DEFAULT_DEMO_DIR = "gradbench-demo"
CELL_STEPS = 1000

EPILOG = f"""\
The same deep stack (bce head on seeded random labels) under sigmoid / tanh / relu (N(0, 1) init) and
the remedies (Xavier, He, batch norm, residual, clipping): a table of gradient norms at a few layers, the verdicts, and plots in
--out-dir ({DEFAULT_DEMO_DIR}/flow.png, histograms.png of the configuration whose gradients span the
most decades, gradients.json); then the training demos on two moons (loss.png, update_ratio.png,
training.json) unless --no-train; then through time (unless --no-cells): a vanilla tanh RNN, an LSTM
and a GRU over {CELL_STEPS} steps, the exact ||dL/dh_t|| against steps back (cells.png, cells.json; the
same as `gradbench compare --cells rnn,lstm,gru --steps {CELL_STEPS}`). File formats: docs/formats.md.

--seed and --dtype apply to all three parts: the stack's weights, input and targets; each training
demo's weights and shuffling (its data set stays the demo's, data seed 0, cast to --dtype); the
cells' parameters and inputs. --batch is the stack's and the cells' probe batch (the training demos
bring their own mini-batches). The other stack options (--depth, --width, ...) shape the stack only.

examples:
  gradbench demo                                   everything, into ./{DEFAULT_DEMO_DIR}/
  gradbench demo --out-dir figures --no-train      the stacks and the cells only
  gradbench demo --depth 100 --width 64 --no-cells     a deeper, wider stack
  gradbench demo --seed 3 --dtype float32          all three parts at seed 3 in float32
"""

FILES = ("flow.png", "histograms.png", "gradients.json")
TRAIN_FILES = ("loss.png", "update_ratio.png", "training.json")
CELL_FILES = ("cells.png", "cells.json")


def register(sub):
    p = add_parser(sub, "demo", help="what `make demo` runs: the classic demonstrations with plots", epilog=EPILOG)
    add_configs_stack_args(p)
    g = p.add_argument_group("output")
    g.add_argument("--out-dir", default=DEFAULT_DEMO_DIR, metavar="DIR",
                   help="where the plots and files go (created if missing)")
    g.add_argument("--no-train", action="store_true", help="skip the training demos")
    g.add_argument("--no-cells", action="store_true", help="skip the recurrent cells through time")
    add_output_args(p)
    p.set_defaults(func=cmd_demo)
    return p


def training_table(results: dict) -> str:
    """Each demo's loss on the whole data set before training and after its last epoch (what
    `gradbench train` and the README's table give; a run that diverged: the non-finite loss that
    stopped it), its accuracy and how fast its first layer moves."""
    head = (f"{'demo':<21} {'loss: before':>12} {'after':>10} {'accuracy':>8}  "
            f"{'first layer moves/epoch':>24}  note")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        ran = r.epochs_run
        ratio = r.first_layer_ratio[:ran]
        med = f"{np.nanmean(ratio):.2g} %" if ran and np.any(np.isfinite(ratio)) else "-"
        acc = f"{r.accuracy[ran]:.2f}" if r.diverged_epoch is None else "-"  # as `gradbench train` prints it
        note = (f"loss non-finite in epoch {r.diverged_epoch + 1}" if r.diverged_epoch is not None
                else ("stuck near ln 2" if abs(r.final_loss - math.log(2)) < 0.02 else "trains"))
        lines.append(f"{name:<21} {loss_text(r.eval_loss[0]):>12} {loss_text(r.final_loss):>10} {acc:>8}  "
                     f"{med:>24}  {note}")
    return "\n".join(lines)


def most_telling(diags: dict) -> str:
    """The configuration whose gradient norms span the most decades (the first of equals)."""
    def span(d):
        g = d.grad_log10[np.isfinite(d.grad_log10)]
        return float(g.max() - g.min()) if g.size else -1.0

    return max(diags, key=lambda k: (span(diags[k]), -list(diags).index(k)))


def _check_out_dir(args) -> list[str]:
    """The files the demo will write, checked before any work (the directory itself is created)."""
    out_dir = args.out_dir
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        from gradbench.cli.process import UsageError

        raise UsageError(f"--out-dir {out_dir!r} is a file, not a directory")
    if not os.path.isdir(out_dir):
        check_directory("--out-dir", os.path.dirname(os.path.abspath(out_dir)), args.mkdir, of=out_dir)
    names = FILES + (() if args.no_train else TRAIN_FILES) + (() if args.no_cells else CELL_FILES)
    files = [os.path.join(out_dir, f) for f in names]
    if os.path.isdir(out_dir):
        check_outputs([("--out-dir", f, (os.path.splitext(f)[1],)) for f in files])
    return files


def _train_demos(args, backend: str) -> dict:
    """Every training demo at --seed (its weights and shuffling) and in --dtype."""
    from gradbench.train import DEMOS, run_demo

    return {name: run_demo(name, backend=backend, progress=True, seed=args.seed, dtype=args.dtype) for name in DEMOS}


def _heads(args, backend: str, seconds: float, results: dict) -> tuple[dict, dict]:
    """The heads of gradients.json (the probe runs: --seed, --batch, generated weights) and of
    training.json (the training demos ``results``, run at --seed and --dtype, which bring their
    own batch size; each run's ``settings`` and ``stack`` record its seed and dtype: the head is
    the one ``train --out`` writes, weights from init_params and, for layerwise-pretraining,
    gradbench.pretrain)."""
    shared = dict(threads=threads(backend), seconds=round(seconds, 3))
    return (metadata("demo", args, seed=args.seed, batch=args.batch, weights=WEIGHTS, **shared),
            metadata("demo", args, weights=weights_of(results) if results else None, **shared))


def _histograms(plot, d, rel, label: str, path, dpi: int):
    """The most telling configuration's dW histograms twice: on one absolute log10 |dW| axis,
    where a vanishing stack's layers stand decades apart, and each layer relative to its own
    norm, where their shapes show (the relative map alone showed every layer in the same band:
    nothing of the vanishing its title named)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16.0, 5.2), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    plot.histogram_heatmap(d, relative=False, ax=ax, title="log10 |dW| per entry: the layers' bands move apart")
    plot.histogram_heatmap(rel, ax=bx, title="relative to each layer's norm: each layer's shape")
    fig.suptitle(f"Gradient histograms per layer: {label} ({d.verdict}; of the demo's configurations, the widest "
                 "span of gradient norms)")
    plot.save(fig, path, dpi)
    return fig


def _write(args, diags, labels, relative, results, heads) -> list[str]:
    """gradients.json, training.json, then the plots; returns the plots written."""
    from gradbench import plot

    out_dir = args.out_dir
    make_directory(out_dir)
    path = os.path.join
    probe_head, train_head = heads
    write_json(path(out_dir, "gradients.json"), {**probe_head, "labels": labels, "configurations": diags})
    if results:
        write_json(path(out_dir, "training.json"),
                   {**train_head, "runs": {k: train_to_dict(r) for k, r in results.items()}})
    shown = {labels[k]: d for k, d in diags.items()}
    telling = most_telling(diags)
    written = [
        write_plot(path(out_dir, "flow.png"), lambda p: plot.gradient_flow(
            shown, p, title=f"Gradient flow through {args.depth} layers: activations and remedies", dpi=args.dpi)),
        write_plot(path(out_dir, "histograms.png"), lambda p: _histograms(
            plot, diags[telling], relative[telling], labels[telling], p, args.dpi)),
    ]
    if results:
        written.append(write_plot(path(out_dir, "loss.png"), lambda p: plot.loss_curves(
            results, p, title="Two moons: deep sigmoid stuck at ln 2, beside the remedies", dpi=args.dpi)))
        written.append(write_plot(path(out_dir, "update_ratio.png"), lambda p: plot.update_ratio_curves(
            {k: results[k] for k in ("deep-sigmoid", "shallow-sigmoid", "relu-he", "batchnorm")}, p, dpi=args.dpi)))
    return written


def _cells(args, backend: str) -> list[str]:
    """`gradbench compare --cells rnn,lstm,gru` at the demo's length, into --out-dir; the plot written."""
    from gradbench.recurrent import cli as recurrent_cli

    plot = os.path.join(args.out_dir, "cells.png")
    argv = ["compare", "--cells", "rnn,lstm,gru", "--steps", str(CELL_STEPS), "--seed", str(args.seed),
            "--dtype", args.dtype, "--batch", str(args.batch),
            "--backend", backend, "--plot", plot, "--out", os.path.join(args.out_dir, "cells.json")]
    recurrent_cli.cmd_compare(recurrent_cli.build_parser().parse_args(argv))
    return [plot]


def cmd_demo(args) -> int:
    import time

    t0 = time.perf_counter()
    config_names(args)  # refuses --activation
    _check_out_dir(args)
    backend = resolve_backend(args.backend)
    relative = {}
    diags, labels = compare_stacks(args, list(DEMO_CONFIGS), backend, relative)
    results = {} if args.no_train else _train_demos(args, backend)
    heads = _heads(args, backend, time.perf_counter() - t0, results)
    written = _write(args, diags, labels, relative, results, heads)
    print(f"gradbench demo: one deep stack, {len(DEMO_CONFIGS)} configurations (backend {backend})\n")
    print_comparison(args, diags, labels)
    if results:
        print(f"\ntraining on two moons (bce; full-data loss; seed {args.seed}, {args.dtype}; `gradbench train --list` "
              "for each demo's optimiser and settings):")
        print(training_table(results))
    if not args.no_cells:
        print(f"\nthrough time: vanilla tanh RNN, LSTM and GRU over {CELL_STEPS} steps (hidden 32, batch {args.batch}, "
              f"seed {args.seed}, {args.dtype}; gate "
              "biases at their defaults, LSTM forget 1 and GRU update 0: the training demos' gated cells start at 5, "
              f"`gradbench compare --cells lstm,gru --steps {CELL_STEPS} --forget-bias 5 --update-bias 5`):")
        written += _cells(args, backend)
    print("\nplots: " + ", ".join(written))
    print(f"gradient-flow plot written to {written[0]}")
    return 0
