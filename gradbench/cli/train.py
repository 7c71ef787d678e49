"""``gradbench train``: train a named demo or your own stack on a small data set."""

from __future__ import annotations

import dataclasses

from gradbench.cli import model
from gradbench.cli.common import (
    BACKEND_CHOICES, STACK_FIELDS, UsageError, _typed, add_output_args, add_parser, add_stack_args, given, option,
    positive_float, positive_int, refuse_unused, refuse_unused_stack_options, resolve_backend, seed_int, split,
    stack_from_args, strict_int, unit_interval, nonneg_float,
)
from gradbench.cli.output import PLOTS, check_outputs, metadata, threads, write_json, write_plot
from gradbench.report import count

EPILOG = """\
examples:
  gradbench train --list
  gradbench train --demo deep-sigmoid
  gradbench train --demo deep-sigmoid,shallow-sigmoid --plot loss.png --ratio-plot ratio.png
  gradbench train --demo deep-sigmoid,layerwise-pretraining,adam --tensorboard runs   (tensorboard --logdir runs)
  gradbench train --demo all --out history.json
  gradbench train --dataset circles --depth 6 --width 16 --activation relu --init he_normal --optimizer adam --lr 0.01

A demo brings its own stack and data (--list shows them); --epochs, --lr, --batch-size, --seed,
--optimizer, --momentum and --weight-decay change its training, --dtype its stack's floating-point
type (the demo's data points cast to it). The recurrent demos (memory-rnn, ...)
take --epochs, --lr, --seed, --steps, --backend, --out, --plot, --mkdir and --dpi only
(gradbench train --demo memory-rnn --help). The weights are gradbench.init_params(stack, seed), as
gradbench.train draws them; layerwise-pretraining's are then pretrained by gradbench.pretrain (its
summary, its --out settings and the --out head say with which settings). File format: docs/formats.md.
"""

_samples = _typed("samples", strict_int, lambda v: v >= 2, "must be an integer >= 2")  # gradbench.datasets' own limit
DATA_OPTIONS = ("dataset", "samples", "data_seed")


def register(sub):
    p = add_parser(sub, "train", help="train on a small data set (a named demo or your own stack)", epilog=EPILOG)
    add_stack_args(p, required=False, loss=None)
    g = p.add_argument_group("what to train")
    g.add_argument("--demo", metavar="NAMES", help="demo name(s), comma-separated, or all (default: your own stack "
                   "from --depth, --width, ...)")
    g.add_argument("--list", action="store_true", help="list the demos and their settings")
    g.add_argument("--dataset", default="moons", choices=("moons", "circles", "xor"), help="the data set of your own stack")
    g.add_argument("--samples", type=_samples, default=200, help="data set size (at least 2)")
    g.add_argument("--data-seed", type=seed_int, default=0, help="seed of the data set")
    t = p.add_argument_group("training (a demo's own settings unless given)")
    t.add_argument("--epochs", type=positive_int, default=None, help="passes over the data (default: 100)")
    t.add_argument("--batch-size", type=positive_int, default=None, help="mini-batch size; one larger than the data set is one batch of all of it, as the summary says (default: 20)")
    t.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), default=None, help="(default: sgd)")
    t.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: 0.1)")
    t.add_argument("--momentum", type=unit_interval, default=None,
                   help="momentum of --optimizer momentum (default: 0.9)")
    t.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="L2 weight decay")
    t.add_argument("--seed", type=seed_int, default=None, help="seed of the weights and the shuffling (default: 0)")
    t.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="auto picks the fastest available")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="FILE", help="write the training history as .json (default: none)")
    o.add_argument("--plot", metavar="FILE", help="write the loss curves (default: none)")
    o.add_argument("--ratio-plot", metavar="FILE", help="write the update-ratio curves (default: none)")
    model.add_train_args(o)
    add_output_args(p)
    p.set_defaults(func=cmd_train)
    return p


def weights_of(results: dict) -> str:
    """The head's ``weights``: where the runs' starting weights came from (each run's
    ``settings["weights"]``): the most common one, then ``; NAMES: ...`` for the runs whose
    weights came otherwise (layerwise-pretraining's gradbench.pretrain)."""
    runs: dict[str, list[str]] = {}
    for name, r in results.items():
        runs.setdefault(r.settings["weights"], []).append(name)
    common = max(runs, key=lambda w: len(runs[w]))  # the first of equals
    return common + "".join(f"; {', '.join(names)}: {w}" for w, names in runs.items() if w != common)


def train_to_dict(r) -> dict:
    """A training history as JSON-ready data (non-finite numbers as "nan", "inf")."""
    from gradbench.cli.output import jsonable

    return jsonable(dict(
        settings=r.settings, stack=dataclasses.asdict(r.stack), loss=r.loss,
        eval_loss=r.eval_loss, accuracy=r.accuracy, grad_log10=r.grad_log10,
        update_ratio_percent=r.update_ratio, update_ratio_input_percent=r.update_ratio_input,
        update_ratio_head_percent=r.update_ratio_head, diverged_epoch=r.diverged_epoch,
        divergence=r.divergence, diverged_steps=r.extras.get("diverged_steps"), stopped=r.extras.get("stopped"),
        clip_acted_steps=r.extras.get("clip_acted_steps"),
        seconds=r.seconds,
    ))


def list_demos() -> None:
    from gradbench.train import DEMOS

    print("demos (gradbench train --demo NAME, or --demo all):")
    width = max(map(len, DEMOS))
    for name, demo in DEMOS.items():
        t = demo.train
        print(f"  {name:{width}s}  {demo.title}  [{t['optimizer']} lr={t['lr']:g}, batch {t['batch_size']}, "
              f"{count(t['epochs'], 'epoch')}]")


def demo_names(args) -> list[str]:
    """The demos of --demo, after refusing the options a demo would ignore."""
    from gradbench.train import DEMOS

    ignored = given(args, *(f for f in STACK_FIELDS if f != "dtype"), *DATA_OPTIONS)  # run_demo takes a dtype
    if ignored:
        raise UsageError(f"--demo brings its own stack and data: {', '.join(map(option, ignored))} would be ignored "
                         "(drop --demo to train your own stack)")
    names = list(DEMOS) if args.demo == "all" else split(args.demo, "--demo")
    bad = [n for n in names if n not in DEMOS]
    if bad or not names:
        raise UsageError(f"unknown demo {', '.join(bad) or repr(args.demo)}; choose from {', '.join(DEMOS)} or all")
    for name in names:
        _check_momentum(args, args.optimizer or DEMOS[name].train["optimizer"])
    return names


def _check_momentum(args, optimizer: str) -> None:
    if args.momentum is not None and optimizer != "momentum":
        raise UsageError(f"--momentum is used by --optimizer momentum only (the optimizer here is {optimizer})")


def _overrides(args) -> dict:
    overrides = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "seed", "optimizer", "momentum")
                 if getattr(args, k) is not None}
    overrides["weight_decay"] = args.weight_decay
    return overrides


def _check_training(stack, X, y, kw: dict, who: str) -> None:
    """gradbench.train's own checks of the data and the batches, before the first epoch, in
    command-line words (``who``: what is trained, for the message)."""
    from gradbench.plan import PlanRefused
    from gradbench.train import check_training

    try:
        check_training(stack, X, y, kw.get("epochs", 100), kw.get("batch_size", 32))
    except PlanRefused as exc:  # a history beyond memory
        raise UsageError(str(exc).replace("epochs=", "--epochs ")) from None
    except ValueError as exc:
        text = str(exc).replace("batch_norm=True", f"{who} has batch norm, which")
        text = text.replace("batch_size=", "--batch-size ").replace("another batch_size", "another --batch-size")
        raise UsageError(text) from None


def custom_stack(args):
    """(stack, X, y) of your own stack: the options, on the data set they name (checked)."""
    from gradbench import datasets

    if args.depth is None or args.width is None:
        raise UsageError("give --demo NAME (see --list) or a stack with --depth and --width")
    X, y = datasets.load(args.dataset, args.samples, seed=args.data_seed)
    dim, classes = X.shape[1], int(y.max()) + 1
    if args.input_dim is not None and args.input_dim != dim:  # the data set fixes it
        raise UsageError(f"--input-dim {args.input_dim} does not match --dataset {args.dataset}, whose points have "
                         f"{dim} features: drop --input-dim (the data set sets D = {dim})")
    loss = args.loss or "bce"
    if loss == "bce" and args.output_dim != 1:
        raise UsageError(f"--loss bce learns the {classes} labels of --dataset {args.dataset} with one output: it "
                         f"needs --output-dim 1, got --output-dim {args.output_dim} (or use --loss softmax_ce or mse)")
    out_dim = args.output_dim
    if loss == "softmax_ce":
        if given(args, "output_dim") and args.output_dim < classes:
            raise UsageError(f"--loss softmax_ce needs --output-dim >= {classes} (the classes of --dataset "
                             f"{args.dataset}), got --output-dim {args.output_dim}")
        out_dim = max(args.output_dim, classes)  # by default one output per class
    stack = stack_from_args(args, input_dim=dim, loss=loss, output_dim=out_dim)
    if not stack.has_head:
        raise UsageError("training needs a head: --loss bce, mse or softmax_ce")
    refuse_unused_stack_options(args, [stack])
    return stack, X.astype(stack.np_dtype, copy=False), y  # --dtype float32 trains on float32 points


CUSTOM_TRAINING = dict(epochs=100, lr=0.1, batch_size=20, seed=0, optimizer="sgd")


def check_runs(args) -> None:
    """Every refusal of the runs that the options ask for, before the first epoch of any."""
    from gradbench.train import DEMOS

    if args.demo:
        for name in demo_names(args):
            demo = DEMOS[name]
            X, y = demo.data()
            _check_training(demo.make_stack(dtype=args.dtype), X.astype(args.dtype), y, {**demo.train, **_overrides(args)},
                            f"demo {name}")
        return
    stack, X, y = custom_stack(args)
    _check_momentum(args, args.optimizer or "sgd")
    _check_training(stack, X, y, {**CUSTOM_TRAINING, **_overrides(args)}, "the stack")


def train_runs(args, backend: str) -> dict:
    """The runs that the options ask for: name -> TrainResult (:func:`check_runs` has refused
    what it refuses)."""
    from gradbench import datasets
    from gradbench.train import run_demo, train

    overrides = _overrides(args)
    if args.demo:
        return {name: run_demo(name, backend=backend, progress=True, tensorboard=model.train_tensorboard_dir(args, name),
                               dtype=args.dtype, **overrides) for name in demo_names(args)}
    stack, X, y = custom_stack(args)
    kw = {**CUSTOM_TRAINING, **overrides}
    r = train(stack, X, y, backend=backend, progress=True, name="custom", dataset=args.dataset,
              tensorboard=model.train_tensorboard_dir(args, "custom"), **kw)
    r.settings["data"] = datasets.recipe(args.dataset, args.samples, args.data_seed)
    return {"custom": r}


def cmd_train(args) -> int:
    import time

    if args.list:
        extra = [d for d in getattr(args, "typed", ()) if d not in ("list", "debug")]
        if extra:
            raise UsageError(f"--list prints the demos and runs nothing: drop {', '.join(map(option, extra))}")
        list_demos()
        from gradbench.recurrent.cli import list_demos as list_recurrent_demos

        list_recurrent_demos()
        return 0
    t0 = time.perf_counter()
    refuse_unused(args, [args.plot, args.ratio_plot], [args.out, args.plot, args.ratio_plot, args.tensorboard])
    check_outputs([("--out", args.out, (".json",)), ("--plot", args.plot, PLOTS),
                   ("--ratio-plot", args.ratio_plot, PLOTS)], mkdir=args.mkdir,
                  directories=[("--tensorboard", args.tensorboard)])
    model.check_tensorboard_dir(args.tensorboard, args.mkdir, events_here=False)
    backend = resolve_backend(args.backend)
    check_runs(args)  # every refusal before the first epoch
    if args.tensorboard:  # each run's own event directory, DIR/NAME
        for name in (demo_names(args) if args.demo else ["custom"]):
            model.check_no_events(model.train_tensorboard_dir(args, name))
    results = train_runs(args, backend)
    written = []
    if args.out:
        head = metadata("train", args, weights=weights_of(results), threads=threads(backend),
                        seconds=round(time.perf_counter() - t0, 3))
        written.append(write_json(args.out, {**head, "runs": {k: train_to_dict(r) for k, r in results.items()}},
                                  mkdir=args.mkdir))
    if args.plot or args.ratio_plot:
        from gradbench import plot  # matplotlib only when a plot is asked for
    if args.plot:
        written.append(write_plot(args.plot, lambda p: plot.loss_curves(results, p, dpi=args.dpi), mkdir=args.mkdir))
    if args.ratio_plot:
        written.append(write_plot(args.ratio_plot, lambda p: plot.update_ratio_curves(results, p, dpi=args.dpi),
                                  mkdir=args.mkdir))
    written += model.train_tensorboard_dirs(args, results)
    for r in results.values():
        print(r.summary())
    for path in written:
        print(f"wrote {path}")
    return 0
