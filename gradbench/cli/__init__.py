"""The ``gradbench`` command line: run, compare, train, demo, theory, bench.

One module per subcommand (:mod:`gradbench.cli.run`, ..., :mod:`gradbench.cli.sweep`,
:mod:`gradbench.cli.model` for --torch and --tensorboard), each with ``register(sub)`` adding its parser
(``set_defaults(func=cmd)``); a module may instead take its arguments raw with
``run_raw(argv)`` (``bench``). Adding a subcommand is one module and one line in
:data:`COMMANDS`. Shared parts: :mod:`~gradbench.cli.common` (parser, option types,
stack options, one probe run), :mod:`~gradbench.cli.output` (checked, atomic, documented
files), :mod:`~gradbench.cli.progress` (progress lines, the compilation notice) and
:mod:`~gradbench.cli.process` (exit statuses, signals, streams).

Every option is validated before any work: bad input exits with status 2 and one line; output
paths are checked first; results are written before the report is printed, atomically.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import numpy as np

from gradbench import __version__
from gradbench.cli.common import Parser, parse, typed_options
from gradbench.cli.process import run_guarded

# The subcommands, in the order of the help: name -> the module that registers it.
COMMANDS = {
    "run": "gradbench.cli.run",
    "compare": "gradbench.cli.compare",
    "train": "gradbench.cli.train",
    "demo": "gradbench.cli.demo",
    "theory": "gradbench.cli.theory",
    "sweep": "gradbench.cli.sweep",
    "bench": "gradbench.cli.bench",
}

EPILOG_MAIN = """\
examples:
  gradbench demo                                   the classic demonstrations, plots in ./gradbench-demo/
  gradbench run --depth 200 --width 32 --activation sigmoid --plot flow.png
  gradbench run --depth 100000 --width 16 --activation sigmoid   exact at 10^-64351.7
  gradbench compare --depth 50 --width 32 --configs sigmoid,relu,relu-he,sigmoid-bn
  gradbench train --demo deep-sigmoid --plot loss.png
  gradbench train --list
  gradbench theory --activation tanh --sigma-w 1.5 --sigma-b 0.1 --depth 200 --width 256 --plot theory.png
  gradbench bench benchmarks/results/bench-quick.json   (written by `make bench-quick`)
recurrent nets (vanilla RNN, LSTM, GRU; gradbench.recurrent.cli), the same commands with --cell / --cells:
  gradbench run --cell lstm --steps 100000 --hidden 32
  gradbench compare --cells rnn,lstm,gru --steps 10000 --plot cells.png
  gradbench theory --cell rnn
  gradbench train --demo memory-rnn,memory-lstm,memory-gru

exit status: 0 done; 1 a file could not be written, out of memory, or an internal error (--debug
shows its traceback); 2 a bad option, or a run refused before it started; 130 interrupted;
143 terminated (SIGTERM); 141 standard output closed early (| head).
"""


def _module(name: str):
    return importlib.import_module(COMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, each registered by its module (``parser.commands``:
    name -> subcommand parser)."""
    parser = Parser(prog="gradbench", description=(
        "The exact gradient chain through very deep stacks: where and why gradients vanish or explode."),
        epilog=EPILOG_MAIN)
    parser.add_argument("--version", action="version", version=f"gradbench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        _module(name).register(sub)
    parser.commands = {name: sub.choices[name] for name in COMMANDS}
    return parser


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS and hasattr(_module(argv[0]), "run_raw"):
        return _module(argv[0]).run_raw(argv[1:])
    from gradbench.recurrent import cli as recurrent_cli  # run/compare/theory --cell(s), recurrent demos

    if recurrent_cli.claims(argv):
        feedforward = set(build_parser().commands["train"]._option_string_actions) if argv[0] == "train" else set()
        return recurrent_cli.main(argv, feedforward)
    parser = build_parser()
    try:
        args = parse(parser, argv)
    except SystemExit as exc:  # --help (0) and bad options (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    args.argv = argv
    args.typed = typed_options(parser.commands[args.command], argv)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradbench`` console script; returns the exit status
    (``gradbench --help`` lists them)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), "")
    return run_guarded(command, lambda: _dispatch(argv), debug="--debug" in argv)
