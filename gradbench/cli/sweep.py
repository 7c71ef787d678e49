"""``gradbench sweep``: a grid of exact runs on Dask, a table, a phase diagram.

Every :class:`~gradbench.Stack` field is an option (``--sigma-w``, ``--activation``, ...) that
takes one value (fixed for every run), a list ``a,b,c`` or a range ``a:b:n`` (n values from a
to b, ends included); two or more values make it a swept axis. ``--seeds N`` runs seeds
0..N-1 of every configuration. Without ``--scheduler`` a LocalCluster runs for the command
(``--workers`` processes, default one per core). Bad values exit with status 2 and one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
import typing

import numpy as np

from gradbench import _atomic
from gradbench.cli.common import (NEGATIVE_VALUE, STACK_FIELDS, field_words, given, in_option_words, option,
                                  positive_int, refuse_unused_stack_options, strict_float, strict_int)
from gradbench.cli.process import INTERRUPTED, TERMINATED, OutputError, Terminated, UsageError  # one line, exit 1 / 2
from gradbench.report import count
from gradbench.spec import Stack


EPILOG = """\
values: one value (fixed), a list a,b,c or a range a:b:n (n values from a to b, ends included);
two or more values sweep that field. "none" stands for an unset optional field (--clip none,norm).

examples:
  gradbench sweep --activation tanh,relu --sigma-w 0.5:3.0:26 --sigma-b 0,0.05,0.1 --depth 200 --width 256 \\
      --seeds 3 --out sweep/ --plot phase.png
  gradbench sweep --sigma-w 1:2:11 --depth 100 --width 64 --batch 16,64 --scheduler tcp://host:8786
  gradbench sweep --activation relu --init he_normal --residual 0,2 --depth 200 --width 128 --csv table.csv
"""


# The spellings of a bool field's values (case-insensitive), each pair in the same order.
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
BOOL_SPELLINGS = ", ".join(f"{t}/{f}" for t, f in zip(TRUE, FALSE))


def _kinds() -> dict[str, type]:
    """Field -> its scalar type (int, float, str, bool), from Stack's annotations; and batch."""
    hints = typing.get_type_hints(Stack)
    kinds = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        kinds[name] = args[0]
    kinds["batch"] = int
    return kinds


def _optional(name: str) -> bool:
    return name != "batch" and type(None) in typing.get_args(typing.get_type_hints(Stack)[name])


def _number(option: str, text: str, kind: type):
    """One value: an integer literal for an int field (``--depth 1e1`` is refused, as by
    ``gradbench run``), else a number."""
    try:
        return strict_int(text) if kind is int else strict_float(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"{option} {text!r}: expected {what}, a list a,b,c or a range a:b:n") from None


def _range(option: str, text: str, kind: type) -> list:
    """The n values of ``a:b:n``; every message quotes the range as typed."""
    parts = text.split(":")
    if len(parts) != 3:
        raise UsageError(f"{option} {text!r}: a range is a:b:n (n values from a to b), e.g. 0.5:3.0:26")
    ends = []
    for name, part, part_kind in zip("abn", parts, (kind, kind, int)):
        part = part.strip()
        if not part:
            raise UsageError(f"{option} {text!r}: the range a:b:n has no {name}")
        try:
            ends.append(strict_int(part) if part_kind is int else strict_float(part))
        except ValueError:
            what = "an integer" if part_kind is int else "a number"
            raise UsageError(f"{option} {text!r}: {name} = {part!r} of the range a:b:n is not {what}") from None
    a, b, n = ends
    if n < 2:
        raise UsageError(f"{option} {text!r}: a range needs n >= 2 values, got {n}")
    if not all(map(np.isfinite, (a, b))):
        raise UsageError(f"{option} {text!r}: the ends a and b of a range must be finite numbers")
    from gradbench.sweep.grid import check_size

    try:
        check_size(n, f"{option} {text!r}")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    values = np.linspace(a, b, n).tolist()
    # linspace's last bit (0.5:3.0:26 gave 1.2000000000000002: a table that `rows.sigma_w == 1.2`
    # missed) rounded to 15 significant digits, where that keeps the n values apart
    short = [float(f"{v:.15g}") for v in values]
    if len(set(short)) == len(short):
        values = short
    if kind is int:
        if not all(float(v).is_integer() for v in values):
            raise UsageError(f"{option} {text!r}: the range's values are not integers ({values[1]:g}, ...)")
        values = [int(round(v)) for v in values]
    return values


def parse_values(name: str, text: str, kinds: dict | None = None) -> list:
    """The values of option ``--name`` from its text: ``a``, ``a,b,c`` or ``a:b:n``."""
    kind = (kinds or _kinds())[name]
    option = "--" + name.replace("_", "-")
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise UsageError(f"{option} {text!r}: an empty value")
        if item.lower() == "none" and _optional(name):
            out.append(None)
        elif kind is bool:
            if item.lower() not in TRUE + FALSE:
                raise UsageError(f"{option} {text!r}: expected true or false ({BOOL_SPELLINGS})")
            out.append(item.lower() in TRUE)
        elif kind is str:
            out.append(item)
        elif ":" in item:
            if kind not in (int, float):
                raise UsageError(f"{option} {text!r}: ranges a:b:n are for numbers")
            out.extend(_range(option, item, kind))
        else:
            out.append(_number(option, item, kind))
    if name == "sigma_w":  # as `gradbench run` takes it: a row's values run there reproduce its numbers
        from gradbench.cli.common import MAX_GAIN, MAX_GAIN_TEXT

        big = [v for v in out if v is not None and v > MAX_GAIN]
        if big:
            raise UsageError(f"{option} {text!r}: {big[0]:g} is above {MAX_GAIN_TEXT}, the command line's largest gain "
                             "(squared weight norms must stay finite in its reports; `gradbench run` refuses it too)")
    return out


def grid_from_args(args) -> tuple[dict, dict]:
    """(grid, fixed) from the field options: several values sweep a field, one value fixes it."""
    kinds = _kinds()
    grid, fixed = {}, {}
    for name in kinds:
        text = getattr(args, name)
        if text is None:
            continue
        values = parse_values(name, text, kinds)
        if len(values) > 1:
            grid[name] = values
        else:
            fixed[name] = values[0]
    return grid, fixed


def _check_files(args) -> None:
    """--out, --csv and --plot checked before any work, as every command checks its files."""
    from gradbench.cli.output import check_directory, check_outputs

    check_outputs([("--csv", args.csv, (".csv",)), ("--plot", args.plot, (".png", ".svg", ".pdf"))],
                  mkdir=args.mkdir, directories=[("--out", args.out)])
    if args.out is not None:
        out = os.path.abspath(args.out)
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"--out {args.out!r} is a file, not a directory")
        _check_out_name(args.out, out)
        if not os.path.isdir(out):  # the directory itself is created; its parent must exist (or --mkdir)
            check_directory("--out", os.path.dirname(out), args.mkdir, of=args.out)


# Suffixes of a file: what `--out` of the other commands writes (.json, .npz), the sweep's own
# --csv and --plot, its rows' format. `gradbench sweep --out sw.json` made a directory sw.json.
FILE_SUFFIXES = (".json", ".npz", ".csv", ".parquet", ".png", ".svg", ".pdf", ".txt")


def _check_out_name(given: str, out: str) -> None:
    """Refuse an --out named as a file (``sw.json``), unless it is a sweep's directory already
    (one that an earlier gradbench made, to resume): the sweep's --out is a directory."""
    from gradbench.sweep.store import MANIFEST

    suffix = os.path.splitext(out)[1]
    if suffix.lower() not in FILE_SUFFIXES or os.path.isfile(os.path.join(out, MANIFEST)):
        return
    stem = os.path.splitext(given.rstrip("/" + os.sep))[0] or "sweep"
    raise UsageError(f"--out {given!r} is named as a {suffix} file, and the sweep's --out is a directory: it will "
                     f"hold {MANIFEST} and a rows-<hash>.parquet file per finished task; give a directory, e.g. --out "
                     f"{stem}/ (the table as one file: --csv {stem}.csv)")


def _check_plot(args, grid: dict, fixed: dict) -> None:
    """--plot-x, --plot-y and --plot-value checked before any run, as phase_diagram checks them
    after the sweep: two different numeric fields of the sweep; none of them without --plot."""
    if not args.plot:
        for dest in given(args, "plot_x", "plot_y", "plot_value"):
            raise UsageError(f"--{dest.replace('_', '-')} sets an axis or the value of the phase diagram, "
                             "and no --plot is asked for")
        return
    kinds = _kinds()
    numeric = [name for name, kind in kinds.items() if kind is not str]
    typed = given(args, "plot_x", "plot_y")
    for dest, across in (("plot_x", "plot_y"), ("plot_y", "plot_x")):
        flag, axis = "--" + dest.replace("_", "-"), getattr(args, dest)
        if dest not in typed and axis not in grid and axis not in fixed:
            # a default axis that is no field of this sweep: the one other numeric field swept, if
            # there is exactly one (--sigma-w 0.5:2.5:9 --depth 10,50,100 draws sigma_w x depth)
            swept = [n for n in grid if kinds.get(n) in (int, float) and n != getattr(args, across)
                     and any(v is not None for v in grid[n])]
            if len(swept) == 1:
                axis = swept[0]
                setattr(args, dest, axis)
        if axis not in kinds:
            raise UsageError(f"{flag} {axis!r} is not a field; one of {', '.join(numeric)}")
        if kinds[axis] is str:
            raise UsageError(f"{flag} {axis}: the phase diagram's axes are numeric fields, one of {', '.join(numeric)}")
        if axis not in grid and axis not in fixed:
            if dest in typed:
                raise UsageError(f"{flag} {axis}: give --{axis.replace('_', '-')} (the phase diagram's axes "
                                 "must be fields of the sweep)")
            # the default axis is no field here and no single other numeric field stands in: name
            # the candidates (it said "give --sigma-b" of a sweep over depth and residual)
            swept = [n for n in grid if kinds.get(n) in (int, float) and n != getattr(args, across)
                     and any(v is not None for v in grid[n])]
            if swept:
                raise UsageError(f"{flag}: this sweep has {len(swept)} other numeric fields swept "
                                 f"({', '.join(swept)}): choose one with {' or '.join(f'{flag} {n}' for n in swept)}")
            raise UsageError(f"{flag}: a phase diagram needs two numeric fields swept, and this sweep has one besides "
                             f"{getattr(args, across)} (give a second, e.g. --depth 10,50,100 or --sigma-b 0,0.05,0.1; "
                             f"or set {flag} to a fixed numeric field)")
        if all(v is None for v in grid.get(axis, [fixed.get(axis)])):
            raise UsageError(f"{flag} {axis}: --{axis.replace('_', '-')} is none, and the phase diagram's axes "
                             "need numbers")
    if args.plot_x == args.plot_y:
        raise UsageError(f"--plot-x and --plot-y must differ, both are {args.plot_x}")


_FIELD = field_words((*STACK_FIELDS, "batch"))


def cli_words(words: str) -> str:
    """A message of gb.sweep's validation in the command line's words: options for the API's
    names (``grid['init']`` and ``init=`` are ``--init``), ``none``, ``true`` and ``false`` for
    Python's None, True and False (``--clip value,clamp`` said "is not one of 'value', 'norm',
    None"; ``--init he_normal,kaiming_normal`` "grid['init'] names one scheme twice")."""
    words = words.replace("workers=", "--workers ").replace("(client=)", "(--scheduler)")
    words = re.sub(r"grid\['(\w+)'\]", lambda m: option(m.group(1)), words)
    words = re.sub(r"a fixed value \(\w+=\.\.\.\) or a grid axis", "give it one value, or several to sweep it", words)
    words = re.sub(r"(?<=, )None\b|(?<==)None\b", "none", words)
    words = re.sub(r"(?<==)(True|False)\b", lambda m: m.group(1).lower(), words)
    return in_option_words(words, _FIELD)


def cmd_sweep(args) -> int:
    _check_files(args)
    if args.workers is not None and args.scheduler is not None:
        raise UsageError("--workers sizes the LocalCluster run without --scheduler: give one or the other")
    grid, fixed = grid_from_args(args)
    _check_plot(args, grid, fixed)
    import gradbench as gb
    from gradbench.sweep.execute import SchedulerError, check_address, check_options
    from gradbench.sweep.store import OutInUse, UnreadableRows
    from gradbench.sweep.worker import RunFailed
    from gradbench.sweep.grid import plan
    from gradbench.sweep.store import check_out

    try:  # every value, as gb.sweep validates it before it starts: a bad one is the user's (exit 2)
        p = plan(grid, fixed, range(args.seeds), args.backend)
        if args.scheduler is not None:
            check_address(args.scheduler, "--scheduler ")
        if args.out is not None:
            check_out(args.out, p, "--out ")  # another sweep's directory, or not a sweep's
        check_options(args.scheduler, args.workers, args.runs_per_task, True, args.out)
    except (ValueError, TypeError) as exc:
        words, at, point = str(exc).partition(" (at grid point ")  # the point keeps the table's field names
        raise UsageError(cli_words(words) + at + point) from None
    refuse_unused_stack_options(args, [gb.Stack(**run.config) for run in p.runs()[::len(p.seeds)]], several=True)
    t0 = time.perf_counter()
    try:
        table = gb.sweep(grid, seeds=range(args.seeds), out=args.out, client=args.scheduler, workers=args.workers,
                         backend=args.backend, runs_per_task=args.runs_per_task, progress=True, **fixed)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    except OutInUse as exc:
        raise UsageError(f"--out {exc}") from None
    except SchedulerError as exc:
        raise UsageError(f"cannot reach the scheduler {args.scheduler!r}: {exc}") from None
    except UnreadableRows as exc:
        raise OutputError(f"the sweep did not start: {exc}") from None
    except OSError as exc:  # a full disk, a file that cannot be written or read: the run's results are kept
        raise OutputError(f"the sweep stopped: {exc}{_saved(args.out)}") from None
    except KeyboardInterrupt:
        if not args.out:
            raise  # main says "interrupted" (once)
        print(f"interrupted{_saved(args.out)}", file=sys.stderr)
        return INTERRUPTED
    except Terminated:  # SIGTERM: the same words as Ctrl-C (it said only "terminated")
        if not args.out:
            raise
        print(f"terminated{_saved(args.out)}", file=sys.stderr)
        return TERMINATED
    except RunFailed:
        if args.out:
            print(f"a run failed{_saved(args.out)}", file=sys.stderr)
        raise  # main says which run and why ("internal error": a bug)
    wrote = []
    if args.csv:
        text = table.to_csv(index=False)
        wrote.append(_atomic.write_atomic(args.csv, lambda f: f.write(text)))
    if args.plot:
        from gradbench.plot_sweep import phase_diagram

        phase_diagram(table, x=args.plot_x, y=args.plot_y, path=args.plot, value=args.plot_value)
        wrote.append(args.plot)
    print(summary(table, time.perf_counter() - t0, args.out, wrote))
    return 0


def _saved(out) -> str:
    """The words on what a sweep that stopped kept: with --out, its finished runs and how to resume."""
    return f": the finished runs are saved in {out}; run the same command again to resume" if out else ""


def summary(table, seconds: float, out, wrote: list[str]) -> str:
    """The one line printed at the end."""
    info = table.attrs.get("sweep", {})
    configs = len(table) // max(1, table["seed"].nunique())
    verdicts = ", ".join(f"{n} {v}" for v, n in table["verdict"].value_counts().items())
    diff = (table["signal_decades_per_layer"] - table["theory_decades_per_layer"]).abs()
    diff = diff[np.isfinite(diff)]
    parts = [f"sweep: {count(len(table), 'run')} ({count(configs, 'configuration')} x "
             f"{count(table['seed'].nunique(), 'seed')}) in {seconds:.1f} s"]
    if info.get("workers"):
        parts[0] += f" on {info['workers']} worker{'s' if info['workers'] > 1 else ''}"
    if info.get("resumed"):
        parts[0] += f" ({info['resumed']} resumed from {out})"
    parts.append(verdicts)
    if len(diff):
        parts.append(f"||dL/dh|| rate - mean field: median |diff| {float(np.median(diff)):.2g} decades/layer")
    if out:
        wrote = [os.path.join(os.fspath(out), "")] + wrote
    if wrote:
        parts.append("wrote " + ", ".join(wrote))
    return "; ".join(parts)


def register(sub) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to ``sub`` (the subparsers of ``gradbench``)."""
    p = sub.add_parser("sweep", help="a grid of exact runs on Dask: a table and a phase diagram", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p._negative_number_matcher = NEGATIVE_VALUE  # --activation-param -0.1,0.2 is a list, not an option
    g = p.add_argument_group("Stack fields and batch (each: one value, a,b,c or a:b:n)")
    for name in _kinds():
        g.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUES", default=None, help=_help(name))
    p.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                   help="seeds 0..N-1 of every configuration (default 1)")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "c"),
                   help="the backend of every run (default auto: the fastest built here)")
    p.add_argument("--out", metavar="DIR", help="write each finished task's rows there (a directory, created, "
                   "its parent must exist: sweep.json and Parquet files; not a name such as sw.json); rerun the same "
                   "command to resume (default: nothing saved)")
    p.add_argument("--csv", metavar="PATH", help="write the table as CSV (default: none)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786 "
                   "(default: a LocalCluster for this command)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="worker processes of the LocalCluster (default: one per core)")
    p.add_argument("--runs-per-task", type=positive_int, default=None, metavar="K",
                   help="runs batched into one task (default: chosen from the number of runs and workers)")
    p.add_argument("--plot", metavar="PATH", help="write the phase diagram (.png, .svg or .pdf; default: none)")
    p.add_argument("--plot-x", default="sigma_w", metavar="FIELD",
                   help="its x axis (default sigma_w; if the sweep has no sigma_w, its one other numeric field "
                   "swept)")
    p.add_argument("--plot-y", default="sigma_b", metavar="FIELD",
                   help="its y axis (default sigma_b; if the sweep has no sigma_b, its one other numeric field "
                   "swept, e.g. --depth 10,50,100)")
    p.add_argument("--plot-value", default="signal_decades_per_layer",
                   choices=("signal_decades_per_layer", "decades_per_layer"),
                   help="the measured rate shown: of ||dL/dh_l|| (what chi_1 predicts; the default) or of "
                   "||dL/dW_l||")
    p.add_argument("--mkdir", action="store_true", help="create missing parent directories of --out, --csv and "
                   "--plot (without it a missing directory is an error: a typo should not make a tree)")
    p.set_defaults(func=cmd_sweep)
    return p


_HELP = {
    "depth": "layers L (required)", "width": "units N (required)", "batch": "batch size (default 16)",
    "activation": "tanh (default), relu, sigmoid, ...", "init": "xavier_normal (default), normal, he_normal, ...",
    "sigma_w": "weight gain: variance sigma_w^2 / fan_in, xavier sigma_w^2 * 2 / (fan_in + fan_out) (default: the init's own)",
    "sigma_b": "bias standard deviation (default 0)", "batch_norm": f"true or false ({BOOL_SPELLINGS}; default false)",
    "residual": "residual group size K (0: none; default 0)", "clip": "none, value or norm (default none)",
    "input_dim": "as in gradbench run (default: none, the input has the width)",
    "activation_param": "as in gradbench run (default: the activation's own)",
}


def _help(name: str) -> str:
    """The option's help: its own words, or a pointer to gradbench run and Stack's default."""
    if name in _HELP:
        return _HELP[name]
    default = {f.name: f.default for f in dataclasses.fields(Stack)}[name]
    return f"as in gradbench run (default {default})"
