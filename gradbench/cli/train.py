"""``gradbench train``: train a named demo or your own stack on a small data set."""

from __future__ import annotations

import dataclasses
import json

from gradbench.cli.common import (
    BACKEND_CHOICES, UsageError, add_parser, add_stack_args, check_json_path, check_plot_path, payload,
    resolve_backend, split, stack_from_args, write_atomic,
)

EPILOG = """\
examples:
  gradbench train --list
  gradbench train --demo deep-sigmoid
  gradbench train --demo deep-sigmoid,shallow-sigmoid --plot loss.png --ratio-plot ratio.png
  gradbench train --demo all --out history.json
  gradbench train --dataset circles --depth 6 --width 16 --activation relu --init he_normal --optimizer adam --lr 0.01
"""


def register(sub) -> None:
    p = add_parser(sub, "train", help="train on a small data set (a named demo or your own stack)", epilog=EPILOG)
    group = add_stack_args(p, depth=None, width=None, loss=None)
    for a in group._group_actions:
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
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    p.add_argument("--out", help="write the training history as JSON")
    p.add_argument("--plot", help="write the loss curves")
    p.add_argument("--ratio-plot", help="write the update-ratio curves")
    p.set_defaults(func=cmd_train)


def train_to_dict(r) -> dict:
    """A training history as JSON-ready data (non-finite numbers as "nan", "inf")."""
    from gradbench.diagnose import _to_jsonable

    return _to_jsonable(dict(
        settings=r.settings, stack=dataclasses.asdict(r.stack), loss=r.loss,
        eval_loss=r.eval_loss, accuracy=r.accuracy, grad_log10=r.grad_log10,
        update_ratio_percent=r.update_ratio, update_ratio_input_percent=r.update_ratio_input,
        update_ratio_head_percent=r.update_ratio_head, diverged_epoch=r.diverged_epoch,
        divergence=r.divergence, seconds=r.seconds,
    ))


def list_demos() -> None:
    from gradbench.train import DEMOS

    print("demos (gradbench train --demo NAME, or --demo all):")
    for name, demo in DEMOS.items():
        t = demo.train
        print(f"  {name:18s} {demo.title}  [{t['optimizer']} lr={t['lr']:g}, batch {t['batch_size']}, "
              f"{t['epochs']} epochs]")


def train_runs(args, backend: str) -> dict:
    """The runs that the options ask for: name -> TrainResult."""
    from gradbench import datasets
    from gradbench.train import DEMOS, run_demo, train

    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "seed", "optimizer")
                 if getattr(args, k) is not None}
    if args.demo:
        names = list(DEMOS) if args.demo == "all" else split(args.demo)
        bad = [n for n in names if n not in DEMOS]
        if bad:
            raise UsageError(f"unknown demo {', '.join(bad)}; choose from {', '.join(DEMOS)} or all")
        return {name: run_demo(name, backend=backend, progress=True, **overrides) for name in names}
    if args.depth is None or args.width is None:
        raise UsageError("give --demo NAME (see --list) or a stack with --depth and --width")
    X, y = datasets.load(args.dataset, args.samples, seed=args.data_seed)
    loss = args.loss or "bce"
    out_dim = args.output_dim if loss != "softmax_ce" else max(args.output_dim, int(y.max()) + 1)
    stack = stack_from_args(args, input_dim=X.shape[1], loss=loss, output_dim=out_dim)
    kw = dict(epochs=100, lr=0.1, batch_size=20, seed=0, optimizer="sgd")
    kw.update(overrides)
    return {"custom": train(stack, X, y, backend=backend, progress=True, name="custom", dataset=args.dataset,
                            momentum=args.momentum, weight_decay=args.weight_decay, **kw)}


def cmd_train(args) -> int:
    from gradbench import plot

    if args.list:
        list_demos()
        return 0
    check_plot_path(args.plot)
    check_plot_path(args.ratio_plot)
    check_json_path(args.out)
    results = train_runs(args, resolve_backend(args.backend))
    for r in results.values():
        print(r.summary())
    if args.out:
        write_atomic(args.out, json.dumps(payload(command="train", runs={
            k: train_to_dict(r) for k, r in results.items()}), allow_nan=False))
        print(f"wrote {args.out}")
    if args.plot:
        plot.loss_curves(results, args.plot)
        print(f"wrote {args.plot}")
    if args.ratio_plot:
        plot.update_ratio_curves(results, args.ratio_plot)
        print(f"wrote {args.ratio_plot}")
    return 0
