"""Your own model in, your own tools out: ``run --torch MODEL.pt``, ``run --tensorboard DIR`` and
``train --tensorboard DIR``.

The options, their checks and their messages live here; ``run`` and ``train`` call them in a few
lines. Every check raises UsageError with one line (exit status 2) before any work is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from gradbench.cli.process import UsageError

TORCH_HELP = (
    "diagnose a saved PyTorch model (torch.save(model, path)): an nn.Sequential of Linear, BatchNorm1d "
    "(train mode), one kind of activation and gradbench.torch_io.Residual groups, optionally an input "
    "Linear(D, N) and a head Linear(N, O) (give --loss mse, bce or softmax_ce for a head). Loaded with "
    "torch.load(weights_only=True) and only those module classes allowlisted: no code in the file runs, "
    "any other class is refused. Needs torch (pip install 'gradbench[torch]'). The stack options other "
    "than --loss and --dtype (which converts the weights) come from the model"
)


def add_run_args(p: argparse.ArgumentParser, stack_group) -> None:
    """``--torch`` and ``--tensorboard`` on the ``run`` parser (after its stack options, whose
    ``--depth`` and ``--width`` are then needed only without ``--torch``)."""
    p.set_defaults(stack_defaults={a.dest: a.default for a in stack_group._group_actions})
    for a in stack_group._group_actions:
        if a.dest in ("depth", "width"):
            a.help = a.help.replace(" (default: none)", "") + " (needed unless --torch; default: none)"
    g = p.add_argument_group("your own model")
    g.add_argument("--torch", metavar="MODEL.pt", help=TORCH_HELP + " (default: none)")
    g.add_argument("--tensorboard", metavar="DIR",
                   help="write the diagnosis as TensorBoard events, the layer index as the step "
                        "(needs tensorboardX; view with tensorboard --logdir DIR) (default: none)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """``--tensorboard`` on the ``train`` parser."""
    p.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard events every epoch, one run per demo in DIR/NAME (per-layer "
                        "gradient norms, update ratios, loss, gradient histograms; needs tensorboardX) "
                        "(default: none)")


def check_tensorboard_dir(path, mkdir: bool = False, events_here: bool = True) -> None:
    """The directory can be written and the writer is installed: checked before any work. Like
    ``sweep --out``, the directory itself is created; its parent must exist (or ``--mkdir``).
    ``events_here``: the events go into ``path`` itself (``run``), which must not hold any yet;
    ``train`` writes one subdirectory per run (:func:`check_no_events` on each)."""
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--tensorboard {path!r} exists and is not a directory")
    from gradbench.cli.output import check_directory

    target = os.path.abspath(path)
    check_directory("--tensorboard", target if os.path.isdir(target) else os.path.dirname(target), mkdir, of=path)
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise UsageError("--tensorboard needs tensorboardX: pip install tensorboardX "
                         "(or pip install 'gradbench[tensorboard]')") from None
    if events_here:
        check_no_events(path)


def check_no_events(path) -> None:
    """UsageError where the event directory ``path`` already holds events (before any work)."""
    from gradbench.tensorboard_io import refuse_old_events

    try:
        refuse_old_events(path, "--tensorboard ")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_run_args(args) -> None:
    """``--tensorboard``, ``--torch`` and the stack options that ``--torch`` replaces."""
    check_tensorboard_dir(args.tensorboard, args.mkdir)
    if args.torch is None:
        if args.depth is None or args.width is None:
            raise UsageError("give --depth and --width (or --torch MODEL.pt)")
        return
    given = [name for name, default in args.stack_defaults.items()  # typed, even at its default value
             if name not in ("loss", "dtype") and (name in getattr(args, "typed", ()) or getattr(args, name) != default)]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise UsageError(f"--torch takes the stack from the model: drop {flags}")
    if args.stats_only:
        raise UsageError("--stats-only generates the weights; with --torch the model's weights are used: drop it")
    if os.path.isdir(args.torch):
        raise UsageError(f"--torch {args.torch!r} is a directory: give the file torch.save(model, PATH) wrote")
    if not os.path.isfile(args.torch):
        raise UsageError(f"--torch {args.torch!r}: no such file")


def torch_stack(args):
    """(Stack, Params) of the model in ``args.torch`` (:func:`gradbench.torch_io.load`)."""
    import importlib

    try:
        torch_io = importlib.import_module("gradbench.torch_io")
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    try:
        model = torch_io.load(args.torch)
    except ValueError as exc:  # not a model, or a class outside the allowlist: the user's file
        raise UsageError(str(exc)) from None
    loss = args.loss if "loss" in getattr(args, "typed", ()) else None
    # the model's own dtype unless --dtype is typed (float64 too: torch models are float32)
    dtype = args.dtype if "dtype" in getattr(args, "typed", ()) else None
    try:
        stack, params = torch_io.from_torch(model, dtype, loss=loss)
    except ValueError as exc:
        if loss is None and "give loss=" in str(exc):
            raise UsageError(f"{args.torch}: the model ends in a head: give --loss mse, bce or softmax_ce") from None
        # the API's words in the command's: dtype='float64' is --dtype float64
        raise UsageError(f"{args.torch}: " + str(exc).replace("pass dtype='float64' or 'float32'",
                                                              "pass --dtype float64 or --dtype float32")) from None
    # the file's name rather than the model's class: the report and the --out diagnosis say it
    return stack, dataclasses.replace(params, origin=f"the weights of {args.torch}")


def write_tensorboard(args, d) -> list[str]:
    """``--tensorboard DIR``: the diagnosis as events; returns the paths written."""
    if not args.tensorboard:
        return []
    from gradbench.tensorboard_io import write_diagnosis

    return [write_diagnosis(d, args.tensorboard)]


def train_tensorboard_dir(args, name: str):
    """``DIR/NAME`` for run ``name`` of ``gradbench train --tensorboard DIR`` (None without it)."""
    return None if args.tensorboard is None else os.path.join(args.tensorboard, name)


def train_tensorboard_dirs(args, results: dict) -> list[str]:
    """The event directories that ``train --tensorboard DIR`` wrote (one per run), for the
    "wrote" lines that ``run --tensorboard`` prints too."""
    dirs = [train_tensorboard_dir(args, name) for name in results] if args.tensorboard else []
    return [d for d in dirs if os.path.isdir(d)]
