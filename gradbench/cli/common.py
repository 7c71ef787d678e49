"""What every subcommand shares: the parser, option types, stack options and one probe run.

Subcommands live in one module each (:mod:`gradbench.cli.run`, ...) with a ``register(sub)``
that adds their parser; :mod:`gradbench.cli` lists them and dispatches. Output files are
:mod:`gradbench.cli.output`, progress and notices :mod:`gradbench.cli.progress`, exit statuses
and signals :mod:`gradbench.cli.process`.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from gradbench.cli.process import UsageError
from gradbench.histograms import DEFAULT_BINS
from gradbench.spec import ACTIVATIONS, CLIP_MODES, CLIP_TARGETS, DTYPES, INIT_ALIASES, INITS, LOSSES, Stack

__all__ = ["UsageError"]  # and everything below

BACKEND_CHOICES = ("auto", "numpy", "numba", "c")
MAX_GAIN, MAX_GAIN_TEXT = 1e150, "1e150"  # squared weight norms (sigma_w^2 N) must stay finite floats in every report


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs keep their line breaks; every option's help ends with its default.

    Options whose default is None say in their own words what happens without them.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if (text == argparse.SUPPRESS or "default" in text or action.required or action.nargs == 0
                or action.default in (None, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (exit status 2), no abbreviated options (``--activation``
    must not quietly mean ``--activations``), and the required options listed first."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def format_help(self):
        groups = self._action_groups
        self._action_groups = sorted(groups, key=lambda g: (g.title != "required", g is self._optionals))
        try:
            return super().format_help()
        finally:
            self._action_groups = groups


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with options no parser knows reported by the subcommand's
    own parser (``gradbench run: error: ...``, not ``gradbench: ...``) and the closest option it
    has ("did you mean --depth?"). SystemExit as argparse's."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = getattr(parser, "commands", {}).get(getattr(args, "command", None), parser)
        sub.error(f"unrecognized arguments: {' '.join(extras)}{_option_hint(extras, sub)}")
    return args


def _option_hint(extras: list[str], p: argparse.ArgumentParser) -> str:
    import difflib

    typed = [e.split("=", 1)[0] for e in extras if e.startswith("--")]
    if {"--steps", "--hidden", "--cells"} & set(typed) and "--steps" not in p._option_string_actions:
        return "; --steps, --hidden and --cells describe recurrent nets: add --cell rnn, lstm or gru (--cells for compare)"
    known = [s for a in p._actions for s in a.option_strings if s.startswith("--")]
    for name in typed:
        match = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if match:
            return f"; did you mean {match[0]}?"
    return ""


NEGATIVE_VALUE = re.compile(r"^-\.?\d")


def add_parser(sub, name: str, *, help: str, epilog: str, **kw) -> argparse.ArgumentParser:
    """A subcommand parser with ``--debug`` (the traceback of an internal error)."""
    p = sub.add_parser(name, help=help, epilog=epilog, description=help[:1].upper() + help[1:] + ".", **kw)
    # a value starting with "-" and a digit is a value (no option looks like that): argparse's own
    # rule takes "-0.1" but read "--activation-param -0.1,0.2" (a list) as an unknown option
    p._negative_number_matcher = NEGATIVE_VALUE
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback when gradbench fails with an internal error")
    return p


# ------------------------------------------------------------------ option types
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|infinity|nan)",
                    re.ASCII | re.IGNORECASE)


def strict_int(text: str) -> int:
    """An integer as a user types one: ASCII digits with an optional sign. Python's ``int`` also
    takes ``1_000``, surrounding blanks and other scripts' digits ('\u0661' is 1): a typo such
    as ``--depth 1_00`` ran 100 layers."""
    if not _INT.fullmatch(text):
        raise ValueError(f"not an integer: {text!r}")
    return int(text)


def strict_float(text: str) -> float:
    """A number as a user types one (``3``, ``-0.5``, ``1e-3``, ``.5``; ``inf`` and ``nan`` pass
    here for the caller's own finiteness message), not Python's ``1_0.5`` or other scripts' digits."""
    if not _FLOAT.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def _typed(name: str, convert, ok, requirement: str):
    """An argparse ``type`` that converts with ``convert`` and refuses values failing ``ok``."""

    def parse(text: str):
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            odd = "_" in text or not text.isascii() or text != text.strip()
            spelling = " written with the ASCII digits 0-9 (no '_', blanks or other scripts' digits)" if odd else ""
            raise argparse.ArgumentTypeError(f"{requirement}{spelling}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{requirement}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


positive_int = _typed("positive_int", strict_int, lambda v: v >= 1, "must be an integer >= 1")
nonneg_int = _typed("nonneg_int", strict_int, lambda v: v >= 0, "must be an integer >= 0")
seed_int = _typed("seed", strict_int, lambda v: 0 <= v < 2**64, "must be an integer in [0, 2**64)")
finite_float = _typed("finite_float", strict_float, math.isfinite, "must be a finite number")
positive_float = _typed("positive_float", strict_float, lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0")
nonneg_float = _typed("nonneg_float", strict_float, lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0")
gain = _typed("gain", strict_float, lambda v: math.isfinite(v) and 0 < v <= MAX_GAIN,
              f"must be a number in (0, {MAX_GAIN_TEXT}] (the command line's largest gain: squared weight norms must "
              "stay finite in its reports; the dtype sets the smallest, 1e-290 in float64 and 1e-30 in float32)")
unit_interval = _typed("fraction", strict_float, lambda v: 0 <= v < 1, "must be a number in [0, 1)")
dpi_int = _typed("dpi", strict_int, lambda v: 20 <= v <= 1200, "must be an integer in [20, 1200]")


def split(text: str, option: str | None = None) -> list[str]:
    """The names of a comma-separated option; with ``option`` (its flag, for the message) an
    empty or repeated name is refused: 'relu,,tanh' and 'lstm,lstm' were taken in silence."""
    names = [x.strip() for x in text.split(",")]
    if option is None:
        return [x for x in names if x]
    if not all(names):
        raise UsageError(f"{option} {text!r} has an empty name (two commas, or one at an end)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{option} names {', '.join(twice)} more than once")
    return names


def given(args, *dests: str) -> list[str]:
    """The options among ``dests`` (argparse dest names) that were typed on the command line."""
    typed = getattr(args, "typed", frozenset())
    return [d for d in dests if d in typed]


def refuse_unused(args, plots: list[str | None], outputs: list[str | None]) -> None:
    """``--dpi`` without a plot and ``--mkdir`` without an output file would do nothing: refused."""
    if given(args, "dpi") and not any(plots):
        raise UsageError("--dpi sets the resolution of plots, and no plot is asked for")
    if given(args, "mkdir") and not any(outputs):
        raise UsageError("--mkdir creates the directories of output files, and no output file is asked for")


def option(dest: str) -> str:
    """The command-line spelling of an argparse dest: ``sigma_w`` -> ``--sigma-w``."""
    return "--" + dest.replace("_", "-")


def typed_options(parser: argparse.ArgumentParser, argv: list[str]) -> frozenset[str]:
    """Dest names of the options of ``parser`` that appear in ``argv`` (``--x v`` or ``--x=v``)."""
    found = set()
    for action in parser._actions:
        for s in action.option_strings:
            if any(t == s or t.startswith(s + "=") for t in argv):
                found.add(action.dest)
    return frozenset(found)


# ------------------------------------------------------------------ stack options
STACK_FIELDS = ("depth", "width", "activation", "activation_param", "init", "sigma_w", "sigma_b", "batch_norm",
                "bn_eps", "residual", "residual_scale", "clip", "clip_threshold", "clip_on", "loss", "input_dim",
                "output_dim", "dtype")

CLIP_HELP = ("gradient clipping: value (elementwise to [-c, c]) or norm (rescale to norm <= c), applied to "
             "what --clip-on says, by default the backpropagated signal dL/dh at every layer (default: none)")
CLIP_ON_HELP = ("signal: the backpropagated signal dL/dh_l at every layer (norm: the Frobenius norm of the "
                "whole batch's B x N dL/dh_l, so it grows with the batch); layer: each layer's parameter "
                "gradients; global: all parameter gradients together, as torch.nn.utils.clip_grad_norm_ does")


def add_stack_args(p: argparse.ArgumentParser, *, depth=None, width=None, activation: str | None = "tanh",
                   init: str | None = "xavier_normal", loss: str | None = "sum_squares",
                   required: bool = True) -> argparse._ArgumentGroup:
    """The options that describe a :class:`~gradbench.Stack`; returns their group.

    ``depth``/``width`` None: required (unless ``required=False``). ``activation`` None: the
    command picks activations itself; ``--activation`` is then refused with a pointer.
    """
    g = p.add_argument_group("the stack")
    size = p.add_argument_group("required") if required and depth is None else g
    size.add_argument("--depth", type=positive_int, default=depth, required=required and depth is None,
                      help="number of layers L" + ("" if depth is not None or required else " (default: none)"))
    size.add_argument("--width", type=positive_int, default=width, required=required and width is None,
                      help="units per layer N" + ("" if width is not None or required else " (default: none)"))
    if activation is None:
        g.add_argument("--activation", default=None, help=argparse.SUPPRESS)
    else:
        g.add_argument("--activation", default=activation, metavar="NAME", help=f"one of {', '.join(ACTIVATIONS)}")
    g.add_argument("--activation-param", type=finite_float, default=None, metavar="X",
                   help="leaky-ReLU slope, initial PReLU slope or ELU alpha (default: 0.01, 0.25, 1)")
    g.add_argument("--init", default=init, metavar="NAME",
                   help=f"one of {', '.join(INITS)}; the PyTorch/Keras names {', '.join(INIT_ALIASES)} mean "
                        "the same" + (" (default: normal with sigma_w = sqrt(width): N(0, 1) entries; "
                                      "--init normal alone has the init's own sigma_w = 1)" if init is None else ""))
    g.add_argument("--sigma-w", type=gain, default=None, metavar="X",
                   help="weight gain: variance sigma_w^2 / fan_in, xavier sigma_w^2 * 2 / (fan_in + fan_out) "
                        "(default: the init's own, sqrt(2) for he_*, else 1"
                        + ("; sqrt(width) without --init)" if init is None else ")"))
    g.add_argument("--sigma-b", type=nonneg_float, default=0.0, metavar="X", help="standard deviation of the biases")
    g.add_argument("--batch-norm", action="store_true", help="batch normalisation after each linear map")
    g.add_argument("--bn-eps", type=positive_float, default=1e-5, metavar="X",
                   help="the epsilon of batch norm: (z - mean) / sqrt(var + eps) (needs --batch-norm)")
    g.add_argument("--residual", type=nonneg_int, default=0, metavar="K", help="a skip connection every K layers (0: none)")
    g.add_argument("--residual-scale", type=finite_float, default=1.0, metavar="X", help="alpha in h + alpha * phi(z)")
    g.add_argument("--clip", choices=CLIP_MODES, default=None, help=CLIP_HELP)
    g.add_argument("--clip-threshold", type=positive_float, default=1.0, metavar="C", help="clipping threshold c")
    g.add_argument("--clip-on", choices=CLIP_TARGETS, default="signal", help=CLIP_ON_HELP)
    g.add_argument("--loss", default=loss, metavar="NAME",
                   help=f"one of {', '.join(LOSSES)}" + (" (default: bce)" if loss is None else ""))
    g.add_argument("--input-dim", type=positive_int, default=None, metavar="D",
                   help="data dimension D: an input layer D -> N (default: D = N, no input layer)")
    g.add_argument("--output-dim", type=positive_int, default=1, metavar="O", help="outputs of the head (classes for softmax_ce)")
    g.add_argument("--dtype", choices=DTYPES, default="float64", help="floating-point type of the run")
    return g


def add_probe_args(p: argparse.ArgumentParser, batch: int = 16) -> None:
    """Batch, seed, backend and histogram bins of a probe run."""
    g = p.add_argument_group("the run")
    g.add_argument("--batch", type=positive_int, default=batch, help="batch size of the probe input")
    g.add_argument("--seed", type=seed_int, default=0, help="seed of the weights, input and targets")
    g.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="auto picks the fastest available")
    g.add_argument("--bins", type=positive_int, default=DEFAULT_BINS, help="bins of the per-layer histograms")


def add_output_args(p: argparse.ArgumentParser, plots: bool = True) -> None:
    """``--mkdir`` (create missing directories of the output paths) and ``--dpi``."""
    p.add_argument("--mkdir", action="store_true", help="create missing directories of the output paths "
                   "(without it a missing directory is an error: a typo should not make a tree)")
    if plots:
        p.add_argument("--dpi", type=dpi_int, default=120, help="resolution of .png plots (default: %(default)s)")


def field_words(fields) -> re.Pattern:
    """The spec's field names where its messages use them as names (``sigma_w=``, ``sigma_w must``,
    ``... <= sigma_w <= ...``): :func:`in_option_words` puts the option there."""
    return re.compile(r"(?<![\w'\"-])(" + "|".join(sorted(fields, key=len, reverse=True))
                      + r")(?=(=| must| is | needs| takes| [<>]))")


def in_option_words(message: str, fields: re.Pattern) -> str:
    """A spec's message in the command's words: ``sigma_w=1e39 is ...`` -> ``--sigma-w=1e39 is ...``."""
    return fields.sub(lambda m: option(m.group(1)), message)


_FIELD = field_words(STACK_FIELDS)


def stack_from_args(args, *, gain_capped: bool = True, **overrides) -> Stack:
    """The Stack of the options (``overrides`` replace some); a bad value is a UsageError
    naming the option (``--sigma-w must be > 0``). ``gain_capped``: the command reads --sigma-w
    as a :data:`gain` (at most :data:`MAX_GAIN`), which the message then says beside the dtype's
    range (theory reads any finite gain)."""
    kw = {f: getattr(args, f) for f in STACK_FIELDS}
    kw.update(overrides)
    try:
        return Stack(**kw)
    except (ValueError, TypeError) as exc:
        words = in_option_words(str(exc), _FIELD)
        if gain_capped and "<= --sigma-w <= 1e290" in words:  # the dtype's range; the command line stops lower
            words = words.replace("<= --sigma-w <= 1e290", f"<= --sigma-w <= 1e290 (the command line: <= {MAX_GAIN_TEXT})")
        raise UsageError(words) from None


def refuse_unused_stack_options(args, stacks: list[Stack], several: bool = False) -> None:
    """--clip-threshold / --clip-on without clipping, --bn-eps without batch norm, --residual-scale
    without a residual branch and --output-dim without a head would change nothing: refused when
    no stack in ``stacks`` uses them (``several``: the configurations of compare or sweep)."""
    if not any(s.clip for s in stacks):
        for dest in given(args, "clip_threshold", "clip_on"):
            raise UsageError(f"{option(dest)} sets how --clip clips, and "
                             + ("no configuration clips" if several else "there is no --clip")
                             + " (give --clip value or --clip norm)")
    if given(args, "bn_eps") and not any(s.batch_norm for s in stacks):
        raise UsageError("--bn-eps sets the epsilon of batch norm, and "
                         + ("no configuration has batch norm" if several else "there is no --batch-norm")
                         + {"sweep": " (give --batch-norm true)",
                            "compare": " (give --batch-norm, or --configs sigmoid-bn)"}.get(
                             getattr(args, "command", None), " (give --batch-norm)"))
    if given(args, "residual_scale") and not any(s.residual for s in stacks):
        raise UsageError("--residual-scale scales the residual branch, and "
                         + ("no configuration has one" if several else "there is no --residual") + " (give --residual K)")
    if given(args, "output_dim") and not any(s.has_head for s in stacks):
        raise UsageError("--output-dim sizes the head, and "
                         + ("no configuration has one" if several else "the loss is sum_squares, which has none")
                         + " (give --loss mse, bce or softmax_ce)")


def stack_label(stack: Stack, weights: str | None = None) -> str:
    """The stack in words, without its dtype; ``weights``: where the weights came from when its
    init scheme did not draw them (a Diagnosis's ``weights``: "the weights of model.pt"), said in
    place of the scheme (:func:`gradbench.report.describe`)."""
    from gradbench.report import describe

    return describe(asdict(stack), weights).rsplit(", ", 1)[0]


# ------------------------------------------------------------------ one probe run
def resolve_backend(name: str) -> str:
    """The concrete backend that ``--backend name`` means here (UsageError when it is not available)."""
    from gradbench.backends import resolve

    try:
        return resolve(name)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None


WEIGHTS = "gradbench.GeneratedParams(stack, seed)"  # the one weight source of every probe run


@dataclass(frozen=True)
class Probe:
    """One planned run: the stack, its probe batch and how it is done (nothing allocated yet).

    The weights always come from ``GeneratedParams(stack, seed)``, so ``--stats-only`` (weights
    generated per segment, never stored) and a plain run (the same weights, stored) see one
    network for one seed.
    """

    stack: Stack
    batch: int
    seed: int
    backend: str        # concrete
    stats_only: bool
    plan: object        # gradbench.plan.Plan
    limit: float        # bytes: the budget the plan was checked against
    label: str = ""


def plan_probe(stack: Stack, batch: int, seed: int, backend: str, *, stats_only: bool = False,
               checkpoint: str | int | None = "auto", bins: int = DEFAULT_BINS, available: int | None = None,
               label: str = "") -> Probe:
    """Plan one run before anything is drawn; a run that would not fit is refused (UsageError)
    with the command-line options that fit. ``available``: bytes of free memory, measured once
    per command before any allocation (default: now)."""
    from gradbench import plan as planning
    from gradbench.inputs import BN_ONE_SAMPLE

    if stack.batch_norm and batch < 2:  # gb.backprop refuses it too, but only after the weights are drawn
        who = f"configuration {label}" if label else "the stack"
        raise UsageError(f"{who} has batch norm, which needs --batch >= 2, got --batch {batch}: {BN_ONE_SAMPLE}")
    available = planning.available_memory() if available is None else available
    _, limit, budget = planning.memory_limits(None, available)
    # --checkpoint K > depth is one segment, as the planner takes it for any stack; with residual
    # groups it refused K as "not a multiple" of the group size, which depth always is
    segment = min(checkpoint, stack.depth) if isinstance(checkpoint, int) else checkpoint
    try:
        p = planning.plan_run(stack, batch, checkpoint=segment, stats_only=stats_only, generated=stats_only,
                              available=available, diagnose_bins=bins, backend=backend)
    except planning.PlanRefused as exc:
        raise UsageError(_refusal(stack, batch, exc.need, stats_only, checkpoint, bins, limit, budget,
                                  backend)) from None
    except (ValueError, TypeError) as exc:  # a checkpoint that does not suit the stack
        text = str(exc).replace("checkpoint=", "--checkpoint ", 1)
        if "residual group size" in text:
            text += f"; any K >= --depth {stack.depth} is one segment"
        raise UsageError(text) from None
    try:  # the diagnosis's own limit on its histograms, checked before the run, not after it
        diag = planning.diagnose_bytes(stack, stats_only, stats_only, planning.DEFAULT_BINS, bins)
        planning.check_bins(stack, stats_only, planning.DEFAULT_BINS, bins, available, name="--bins",
                            held=p.estimate - diag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return Probe(stack, batch, seed, backend, stats_only, p, limit, label)


def _refusal(stack, batch, need, stats_only, checkpoint, bins, limit, budget, backend) -> str:
    """The planner's refusal in command-line words, with the first options that fit and the
    leanest (estimated for ``backend``, as the run was)."""
    from gradbench.plan import default_segment, memory_estimate, segment_candidates

    k = default_segment(stack)
    ck = None if checkpoint is None else k

    def fitting(so: bool) -> int:  # the longest segment that fits, else the default
        return next((c for c in segment_candidates(stack) if memory_estimate(
            stack, batch, checkpoint=c, stats_only=so, generated=so, diagnose_bins=bins, backend=backend) <= limit), k)

    k1, k2 = fitting(False), fitting(True)
    candidates = [(f"--checkpoint {k1}", False, k1, bins), ("--stats-only", True, ck, bins),
                  (f"--stats-only --checkpoint {k2}", True, k2, bins)]
    if bins > DEFAULT_BINS:
        candidates += [(f"--bins {DEFAULT_BINS}", stats_only, ck, DEFAULT_BINS),
                       (f"--stats-only --checkpoint {k} --bins {DEFAULT_BINS}", True, k, DEFAULT_BINS)]
    fits = []  # the refused run itself never fits, so it is never suggested
    for flags, so, c, b in candidates:
        est = memory_estimate(stack, batch, checkpoint=c, stats_only=so, generated=so, diagnose_bins=b, backend=backend)
        if est <= limit:
            fits.append((flags, est))
    best = sorted({fits[0], min(fits, key=lambda f: f[1])} if fits else [], key=lambda f: -f[1])
    hint = ("; it fits with " + ", or with ".join(f"{flags} (about {est / 2**30:.2f} GiB)" for flags, est in best)
            if fits else "; reduce --depth, --width, --batch or --bins")
    given = [f for f, on in (("--stats-only", stats_only), ("--checkpoint 0", checkpoint is None),
                             (f"--checkpoint {checkpoint}", checkpoint not in (None, "auto")),
                             (f"--bins {bins}", bins != DEFAULT_BINS)) if on]
    return (f"this run (depth {stack.depth}, width {stack.width}, batch {batch}"
            f"{''.join(', ' + g for g in given)}) needs about {need / 2**30:.2f} GiB but the limit is "
            f"{limit / 2**30:.2f} GiB ({budget}){hint}")


def run_probe(probe: Probe, *, quiet: bool = False, params=None):
    """Draw the weights (unless ``params`` are given: a model's), the input and the targets
    from the seed and run the planned backprop.

    Returns ``(result, params)``; ``params`` is None for ``stats_only`` runs (their weights
    are never stored).
    """
    import gradbench as gb
    from gradbench.cli.progress import Progress, numba_notice
    from gradbench.params import random_targets

    stack, plan = probe.stack, probe.plan
    if params is None:
        generated = gb.GeneratedParams(stack, probe.seed)
        params = generated if probe.stats_only else generated.materialize()
    x = gb.gaussian_input(stack, probe.batch, seed=np.random.default_rng([probe.seed, 1]))
    t = random_targets(stack, probe.batch, probe.seed)
    numba_notice(probe.backend, stack.dtype)
    label = f"{probe.label} " if probe.label else ""
    desc = f"backprop {label}(depth {stack.depth}, width {stack.width}, {probe.backend})"
    segments = [min(plan.segment, stack.depth - s) for s in range(0, stack.depth, plan.segment)]
    with Progress(desc, segments if len(segments) > 1 else None, quiet=quiet) as progress:
        res = gb.backprop(stack, params, x, t, backend=probe.backend, checkpoint=plan.checkpoint,
                          stats_only=probe.stats_only, memory_budget=probe.limit, progress=progress.segments_done)
    return res, (None if probe.stats_only else params)
