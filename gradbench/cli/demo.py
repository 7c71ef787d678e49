"""``gradbench demo``: what ``make demo`` runs, the classic demonstrations with plots."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from gradbench.cli.common import (
    add_parser, add_probe_args, add_stack_args, payload, resolve_backend, write_atomic,
)
from gradbench.cli.compare import DEMO_CONFIGS, compare_stacks, print_comparison
from gradbench.cli.train import train_to_dict

DEFAULT_DEMO_DIR = "gradbench-demo"

EPILOG = f"""\
The same deep stack (bce head on seeded random labels) under sigmoid / tanh / relu (N(0, 1) init) and
the remedies (Xavier, He, batch norm, residual, clipping): a table of gradient norms at a few layers, the verdicts, and plots in
--out-dir ({DEFAULT_DEMO_DIR}/flow.png, histograms.png); then the training demos on two moons
(loss.png, update_ratio.png) unless --no-train.
"""


def register(sub) -> None:
    p = add_parser(sub, "demo", help="what `make demo` runs: the classic demonstrations with plots", epilog=EPILOG)
    add_stack_args(p, depth=50, width=32, init=None, loss="bce")
    add_probe_args(p)
    p.add_argument("--out-dir", default=DEFAULT_DEMO_DIR, help=f"where the plots go (default ./{DEFAULT_DEMO_DIR})")
    p.add_argument("--no-train", action="store_true", help="skip the training demos")
    p.set_defaults(func=cmd_demo)


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


def _train_demos(args, out_dir: str) -> list[str]:
    """The training demos on two moons: a table, two plots and training.json."""
    from gradbench import plot
    from gradbench.train import DEMOS, run_demo

    print("\ntraining on two moons (bce, plain SGD; `gradbench train --list` for the settings):")
    results = {name: run_demo(name, backend=args.backend, progress=True) for name in DEMOS}
    print(training_table(results))
    loss_png = os.path.join(out_dir, "loss.png")
    ratio_png = os.path.join(out_dir, "update_ratio.png")
    plot.loss_curves(results, loss_png, title="Two moons: deep sigmoid stuck at ln 2, the remedies train")
    plot.update_ratio_curves({k: results[k] for k in ("deep-sigmoid", "shallow-sigmoid", "relu-he", "batchnorm")},
                             ratio_png)
    write_atomic(os.path.join(out_dir, "training.json"), json.dumps(payload(command="demo", runs={
        k: train_to_dict(r) for k, r in results.items()}), allow_nan=False))
    return [loss_png, ratio_png]


def cmd_demo(args) -> int:
    from gradbench import plot

    out_dir = args.out_dir
    backend = resolve_backend(args.backend)
    print(f"gradbench demo: one deep stack, {len(DEMO_CONFIGS)} configurations (backend {backend})\n")
    diags = compare_stacks(args, list(DEMO_CONFIGS), backend)
    print_comparison(args, diags)
    flow = os.path.join(out_dir, "flow.png")
    plot.gradient_flow(diags, flow, title=f"Gradient flow through {args.depth} layers: activations and remedies")
    hist = os.path.join(out_dir, "histograms.png")
    first = next(iter(diags))
    plot.histogram_heatmap(diags[first], hist, title=f"log10 |dL/dW_l| per layer: {first}")
    written = [flow, hist]
    if not args.no_train:
        written += _train_demos(args, out_dir)
    write_atomic(os.path.join(out_dir, "gradients.json"), json.dumps(payload(command="demo", configurations={
        k: d.to_dict() for k, d in diags.items()}), allow_nan=False))
    print("\nplots: " + ", ".join(written))
    print(f"gradient-flow plot written to {flow}")
    return 0
