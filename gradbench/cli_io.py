"""Command-line options of issue 17: ``run --torch/--tensorboard/--out x.npz``, ``train --tensorboard``.

Kept apart from :mod:`gradbench.cli` (which calls these in a few lines) so that the options,
their checks and their messages live in one place; every check raises ``ValueError`` with one
line, which the CLI turns into exit status 2, before any work is done.
"""

from __future__ import annotations

import argparse
import os

OUT_SUFFIXES = (".json", ".npz")

TORCH_HELP = (
    "diagnose a saved PyTorch model (torch.save(model, path)): an nn.Sequential of Linear, BatchNorm1d "
    "(train mode), one kind of activation and gradbench.torch_io.Residual groups, optionally an input "
    "Linear(D, N) and a head Linear(N, O) (give --loss mse, bce or softmax_ce for a head). Loaded with "
    "torch.load(weights_only=True) and only those module classes allowlisted: no code in the file runs, "
    "any other class is refused. Needs torch (pip install 'gradbench[torch]'). The stack options other "
    "than --loss and --dtype (which converts the weights) come from the model"
)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """``--torch`` and ``--tensorboard`` on the ``run`` parser (after its stack options)."""
    group = next(g for g in p._action_groups if g.title == "the stack")
    p.set_defaults(stack_defaults={a.dest: a.default for a in group._group_actions})
    for a in group._group_actions:
        if a.dest in ("depth", "width"):
            a.required = False  # checked in check_run_args: not needed with --torch
    p.add_argument("--torch", metavar="MODEL.pt", help=TORCH_HELP)
    p.add_argument("--tensorboard", metavar="DIR",
                   help="write the diagnosis as TensorBoard events, the layer index as the step "
                        "(needs tensorboardX; view with tensorboard --logdir DIR)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """``--tensorboard`` on the ``train`` parser."""
    p.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard events every epoch, one run per demo in DIR/NAME (per-layer "
                        "gradient norms, update ratios, loss, gradient histograms; needs tensorboardX)")


def check_out_path(path) -> None:
    if path is not None and not path.lower().endswith(OUT_SUFFIXES):
        raise ValueError(f"--out {path!r} must end in .json or .npz (for large runs; docs/formats.md)")


def check_tensorboard_dir(path) -> None:
    """The directory can be written and the writer is installed: checked before any work."""
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--tensorboard {path!r} exists and is not a directory")
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ValueError("--tensorboard needs tensorboardX: pip install tensorboardX "
                         "(or pip install 'gradbench[tensorboard]')") from None


def check_run_args(args) -> None:
    """Every ``run`` option of this issue, and the stack options that ``--torch`` replaces."""
    check_out_path(args.out)
    check_tensorboard_dir(args.tensorboard)
    if args.torch is None:
        if args.depth is None or args.width is None:
            raise ValueError("give --depth and --width (or --torch MODEL.pt)")
        return
    given = [name for name, default in args.stack_defaults.items()
             if name not in ("loss", "dtype") and getattr(args, name) != default]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise ValueError(f"--torch takes the stack from the model: drop {flags}")
    if args.stats_only:
        raise ValueError("--stats-only generates the weights; with --torch the model's weights are used: drop it")
    if not os.path.isfile(args.torch):
        raise ValueError(f"--torch {args.torch!r}: no such file")


def torch_stack(args):
    """(Stack, Params) of the model in ``args.torch`` (:func:`gradbench.torch_io.load`)."""
    import importlib

    try:
        torch_io = importlib.import_module("gradbench.torch_io")
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    model = torch_io.load(args.torch)
    loss = None if args.loss == args.stack_defaults["loss"] else args.loss
    dtype = None if args.dtype == args.stack_defaults["dtype"] else args.dtype
    try:
        return torch_io.from_torch(model, dtype, loss=loss)
    except ValueError as exc:
        if loss is None and "give loss=" in str(exc):
            raise ValueError(f"{args.torch}: the model ends in a head: give --loss mse, bce or softmax_ce") from None
        raise ValueError(f"{args.torch}: {exc}") from None


def write_run_outputs(args, d) -> list[str]:
    """``--out x.npz`` (JSON stays with the CLI) and ``--tensorboard``; returns the paths written."""
    written = []
    if args.out and args.out.lower().endswith(".npz"):
        from gradbench.frames import write_npz

        written.append(write_npz(d, args.out))
    if args.tensorboard:
        from gradbench.tensorboard_io import write_diagnosis

        written.append(write_diagnosis(d, args.tensorboard))
    return written


def train_tensorboard_dir(args, name: str):
    """``DIR/NAME`` for run ``name`` of ``gradbench train --tensorboard DIR`` (None without it)."""
    return None if args.tensorboard is None else os.path.join(args.tensorboard, name)
