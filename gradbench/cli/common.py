"""What every subcommand shares: the parser, usage errors, stack options, one run, notices, output.

Subcommands live in one module each (:mod:`gradbench.cli.run`, ...) with a ``register(sub)``
that adds their parser; :mod:`gradbench.cli` lists them and dispatches.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

import numpy as np

from gradbench import __version__, _atomic
from gradbench.spec import ACTIVATIONS, CLIP_MODES, CLIP_TARGETS, DTYPES, INITS, LOSSES, Stack

BACKEND_CHOICES = ("auto", "numpy", "numba", "c")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UsageError(ValueError):
    """Bad options that argparse cannot see (combinations, values checked later)."""


def add_parser(sub, name: str, *, help: str, epilog: str, **kw) -> argparse.ArgumentParser:
    """A subcommand parser whose epilog (examples) keeps its line breaks."""
    return sub.add_parser(name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                          **kw)


# ------------------------------------------------------------------ output
def write_atomic(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically (temporary file in the same directory + ``os.replace``)."""
    return _atomic.write_atomic(path, lambda f: f.write(text))


def check_plot_path(path) -> None:
    if path is not None and os.path.splitext(path)[1].lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"plot path {path!r} must end in .png, .svg or .pdf")


def check_json_path(path) -> None:
    if path is not None and not path.lower().endswith(".json"):
        raise UsageError(f"--out {path!r} must end in .json")


def payload(**kw) -> dict:
    """The head of every JSON file the command line writes."""
    return {"gradbench": __version__, **kw}


def split(s: str) -> list[str]:
    """The names of a comma-separated option."""
    return [x.strip() for x in s.split(",") if x.strip()]


# ------------------------------------------------------------------ notices
def resolve_backend(name: str) -> str:
    """The concrete backend; prints "compiling kernels (first run only)" before numba is used.

    Each command resolves its backend once and passes the concrete name on.
    """
    from gradbench.backends import resolve

    try:
        concrete = resolve(name)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    if concrete == "numba":
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
                   init="xavier_normal", loss="sum_squares") -> argparse._ArgumentGroup:
    """The options that describe a :class:`~gradbench.Stack`; returns their group."""
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
    return g


def add_probe_args(p: argparse.ArgumentParser, batch: int = 16) -> None:
    """Batch, seed, backend and histogram bins of a probe run."""
    p.add_argument("--batch", type=int, default=batch, help=f"batch size of the probe input (default {batch})")
    p.add_argument("--seed", type=int, default=0, help="seed of parameters, input and targets")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="auto picks the fastest available")
    p.add_argument("--bins", type=int, default=40, help="bins of the per-layer histograms")


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


def stack_label(stack: Stack) -> str:
    """The stack in words, without its dtype."""
    from dataclasses import asdict

    from gradbench.report import describe

    return describe(asdict(stack)).rsplit(", ", 1)[0]


# ------------------------------------------------------------------ one run
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
              stats_only: bool = False, checkpoint="auto"):
    """Parameters, input and targets from ``seed``; one backprop with a notice if it is slow.

    ``backend`` is a concrete backend (:func:`resolve_backend`). ``stats_only``: weights
    generated per layer (never stored) and per-layer statistics only, for depths whose weights
    or gradients do not fit in memory; a progress bar follows the segments. Returns
    ``(result, params)``.
    """
    import gradbench as gb
    from gradbench.params import GeneratedParams

    if isinstance(batch, bool) or batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    params = GeneratedParams(stack, seed) if stats_only else gb.init_params(stack, seed)
    x = gb.gaussian_input(stack, batch, seed=np.random.default_rng([seed, 1]))
    t = random_targets(stack, batch, seed)
    desc = f"backprop {label + ' ' if label else ''}(depth {stack.depth}, width {stack.width}, {backend})"
    if not stats_only and checkpoint == "auto":
        with Spinner(desc):
            return gb.backprop(stack, params, x, t, backend=backend), params
    from tqdm import tqdm

    with tqdm(total=None, desc=desc + " forward+backward", unit="seg", file=sys.stderr,
              disable=None, mininterval=1.0) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        res = gb.backprop(stack, params, x, t, backend=backend, stats_only=stats_only,
                          checkpoint=checkpoint, progress=progress)
    return res, params
