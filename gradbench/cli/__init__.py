"""The ``gradbench`` command line: run, compare, train, demo, theory, bench.

One module per subcommand (:mod:`gradbench.cli.run`, ...), each with ``register(sub)`` adding
its parser (and ``set_defaults(func=cmd)``); a module may instead take its arguments raw with
``run_raw(argv)`` (``bench``). Adding a subcommand is one module and one name in
:data:`COMMANDS`. What they share is in :mod:`gradbench.cli.common`.

Every subcommand validates its options through :class:`~gradbench.Stack` and exits with
status 2 and a one-line message on bad input. Results are written atomically (temporary file
+ ``os.replace``), so an interrupted run never leaves half a JSON file behind.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import numpy as np

from gradbench import __version__
from gradbench.cli.common import Parser

# The subcommands, in the order of the help: modules of this package.
COMMANDS = ("run", "compare", "train", "demo", "theory", "bench")

EPILOG_MAIN = """\
examples:
  gradbench demo                                   the classic demonstrations, plots in ./gradbench-demo/
  gradbench run --depth 200 --width 32 --activation sigmoid --plot flow.png
  gradbench run --depth 100000 --width 16 --activation sigmoid   exact at 10^-60000
  gradbench compare --depth 50 --width 32 --configs sigmoid,relu,relu-he,sigmoid-bn
  gradbench train --demo deep-sigmoid --plot loss.png
  gradbench train --list
  gradbench theory --activation tanh --sigma-w 1.5 --sigma-b 0.1 --depth 200 --width 256 --plot theory.png
  gradbench bench --help
"""


def _module(name: str):
    return importlib.import_module(f"gradbench.cli.{name}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, each registered by its module."""
    parser = Parser(prog="gradbench", description=(
        "The exact gradient chain through very deep stacks: where and why gradients vanish or explode."),
        epilog=EPILOG_MAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gradbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        _module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradbench`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS and hasattr(_module(argv[0]), "run_raw"):
        return _module(argv[0]).run_raw(argv[1:])
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
