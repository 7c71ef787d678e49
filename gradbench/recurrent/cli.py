"""The command line for recurrent nets: ``gradbench run --cell ...``, ``gradbench compare --cells
...``, ``gradbench theory --cell rnn`` and ``gradbench train --demo memory-lstm`` (the recurrent
demos).

``gradbench.cli.main`` hands a command line over when :func:`claims` says it is a recurrent one
(``--cell``/``--cells``, or demo names that are not all feed-forward ones); this module has its
own parsers with the same conventions, and reuses the feed-forward command line's option types
(:mod:`gradbench.cli.common`) and output files (:mod:`gradbench.cli.output`: paths checked before
any work, ``--mkdir``, the shared head, atomic writes): one-line errors with exit status 2, a
progress bar, a notice when the Numba kernels compile. ``gradbench.cli`` imports this module only
inside its dispatch, so importing those modules here is not circular.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

from gradbench.cli.common import (
    add_output_args, add_parser, field_words, finite_float, gain, given, in_option_words, nonneg_float, nonneg_int,
    option, parse, positive_float, positive_int, refuse_unused, seed_int, split, typed_options,
)
from gradbench.cli.output import PLOTS, RESULTS, check_outputs, metadata, threads, write_file, write_json, write_plot
from gradbench.cli.theory import few_open_units
from gradbench.report import count, fmt_pow, fmt_rate
from gradbench.recurrent.spec import CELLS, CLIP_TARGETS, LOSS_ON, RECURRENT_INITS, RNN_ACTIVATIONS
from gradbench.spec import CLIP_MODES, DTYPES, INITS, LOSSES, check_choice

_COMMANDS = ("run", "compare", "theory")
# theory: the difference is also given relative to the prediction from this size of it on
# (decades per step; 10^-3 = one decade per 1000 steps): near 0 a percentage means nothing.
RELATIVE_FROM = 1e-3


def _flag(argv, name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in argv)


def claims(argv: list[str]) -> bool:
    """Is this command line for a recurrent net?"""
    if not argv:
        return False
    if argv[0] in _COMMANDS:
        return _flag(argv, "--cell") or _flag(argv, "--cells")
    if argv[0] == "train":
        from gradbench.train import DEMOS

        value = _demo_value(argv)
        # recurrent names, and unknown ones (their error lists both kinds); `all` is feed-forward
        return value is not None and value != "all" and any(n not in DEMOS for n in split(value))
    return False


def _demo_value(argv) -> str | None:
    """The value of ``--demo`` in a ``train`` command line (None without one)."""
    for i, a in enumerate(argv):
        if a.startswith("--demo="):
            return a.split("=", 1)[1]
        if a == "--demo" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def list_demos(out=None) -> None:
    """The recurrent demos, for ``gradbench train --list``."""
    from gradbench.recurrent.train import RECURRENT_DEMOS

    out = out or sys.stdout
    print("recurrent demos (gradbench train --demo NAME[,NAME...]):", file=out)
    for name, d in RECURRENT_DEMOS.items():
        t = d.train
        print(f"  {name:22s} {d.title}  [{t['optimizer']} lr={t['lr']:g}, batch {t['batch_size']}, "
              f"{count(t['epochs'], 'epoch')}]", file=out)


class _Parser(argparse.ArgumentParser):
    """As gradbench.cli.common.Parser: no abbreviated options (``compare --cell`` quietly meant
    ``--cells``, ``--step`` ``--steps``), a one-line error with exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UsageError(ValueError):
    pass


def _check_outputs(args, results=(".json",)) -> None:
    """``--out``, ``--plot`` (and ``run``'s ``--tensorboard``) checked before any work, as for the
    feed-forward commands: the suffix (``results``: .json, and .npz for run and compare), a
    directory that exists (or ``--mkdir``) and takes files, two different files, tensorboardX
    installed; ``--mkdir`` without an output is refused."""
    board = getattr(args, "tensorboard", None)
    refuse_unused(args, [args.plot], [args.out, args.plot, board])
    check_outputs([("--out", args.out, results), ("--plot", args.plot, PLOTS)], mkdir=args.mkdir,
                  directories=[("--tensorboard", board)])
    if board is not None:
        from gradbench.cli.model import check_tensorboard_dir

        check_tensorboard_dir(board, args.mkdir)


def _check_clip(args) -> None:
    """``--clip-threshold`` / ``--clip-on`` do nothing without ``--clip``: refused, not ignored."""
    unused = [option(d) for d in given(args, "clip_threshold", "clip_on")]
    if unused and args.clip is None:
        raise UsageError(f"{' and '.join(unused)} {'apply' if len(unused) > 1 else 'applies'} only with --clip "
                         f"({' or '.join(CLIP_MODES)}): without --clip nothing is clipped")
    if args.clip is not None and args.clip_on != "signal":
        # The parameter-gradient clip bounds a training update only: the diagnosis reads ||dL/dh_t|| and each
        # step's part of dL/dW_hh, which it leaves alone, so the report and --out/--plot/--tensorboard were the
        # unclipped run's with "clip ... on global" in the header. (The stack run differs: its ||dW_l|| are the
        # parameter gradients themselves, shown after the clip with the unclipped range in words.)
        command = "compare --cells" if args.command == "compare" else f"{args.command} --cell"
        raise UsageError(f"--clip-on {args.clip_on} clips the parameter gradients, which {command} does not show: "
                         "its diagnosis reads the derivatives (||dL/dh_t|| and each step's part of dL/dW_hh), so it "
                         "would be the unclipped run's; use --clip-on signal to clip the backpropagated signal, which "
                         "the diagnosis shows (a parameter-gradient clip bounds a training update: "
                         f"gradbench.Recurrent(clip_on={args.clip_on!r}) in Python, or train --demo "
                         "exploding-rnn-clipped)")


def _refuse_theory_clip(args) -> None:
    """theory compares the measured rate with mean field, which describes the unclipped chain: a
    clip option is refused (a norm clip at 1e-6 gave "measured -0.000161 ... difference 100.14%
    of the prediction", unclipped +0.0356 against +0.1162)."""
    typed = [option(d) for d in given(args, "clip", "clip_threshold", "clip_on")]
    if typed:
        raise UsageError(f"{', '.join(typed)}: theory --cell takes no clipping: mean field predicts the rate of the "
                         "unclipped chain, so a clipped measurement would be set against a prediction of another "
                         "chain (clipped runs: run --cell or compare --cells with --clip ... --clip-on signal)")


def _check_head(args) -> None:
    """--output-dim without a head would change nothing: refused, as for the stacks (--loss and
    --loss-on are checked by the spec, in :func:`_net`)."""
    if given(args, "output_dim") and args.loss == "sum_squares":
        raise UsageError("--output-dim sizes the head, and the loss is sum_squares, which has none "
                         "(give --loss mse, bce or softmax_ce)")


def probe_targets(rnn, batch: int, seed: int):
    """The targets of the probe of ``run --cell`` and ``compare --cells`` with a head, drawn as
    :func:`gradbench.params.random_targets` draws a stack probe's, from
    ``numpy.random.default_rng([seed, 2])``: class labels (softmax_ce), labels in {0, 1} (bce) or
    standard normal values (mse); shape (B, O) (labels (B,)) with ``loss_on="last"`` (exactly
    ``random_targets(rnn, batch, seed)``), (T, B, O) (labels (T, B)) with ``"every"``. None
    without a head."""
    from gradbench.params import random_targets

    if not rnn.has_head or rnn.loss_on == "last":
        return random_targets(rnn, batch, seed)
    rng, lead = np.random.default_rng([seed, 2]), (rnn.steps, batch)
    if rnn.loss == "softmax_ce":
        return rng.integers(0, rnn.output_dim, size=lead).astype(np.int64)
    if rnn.loss == "bce":
        return rng.integers(0, 2, size=lead + (rnn.output_dim,)).astype(rnn.np_dtype)
    return rng.standard_normal(lead + (rnn.output_dim,)).astype(rnn.np_dtype)


def target_bytes(rnn, batch: int) -> int:
    """Bytes of :func:`probe_targets` (held for the whole run; the planner counts the rest)."""
    if not rnn.has_head:
        return 0
    lead = batch * (rnn.steps if rnn.loss_on == "every" else 1)
    return lead * 8 if rnn.loss == "softmax_ce" else lead * rnn.output_dim * rnn.np_dtype.itemsize


def targets_words(rnn) -> str | None:
    """How the targets were drawn, for the head of --out (None without a head)."""
    if not rnn.has_head:
        return None
    if rnn.loss_on == "last":
        return "gradbench.params.random_targets(rnn, batch, seed)"
    return ("numpy.random.default_rng([seed, 2]) drawn as gradbench.params.random_targets does, "
            "shape (steps, batch" + (")" if rnn.loss == "softmax_ce" else ", output_dim)"))


WEIGHTS = "gradbench.init_params(rnn, seed)"  # the parameters of every probe run; input: GeneratedSequence


def _write_out(args, command: str, t0: float, backend: str | None, body: dict, npz=None, **fields) -> str:
    """The result file, written atomically: JSON, the head shared with the feed-forward files
    (gradbench.cli.output) then ``body``; or (``--out x.npz``) ``npz``, a diagnosis or a dict
    of them, with the head, as the stacks' (gradbench.frames.save_npz; docs/formats.md)."""
    head = metadata(command, args, **fields, threads=threads(backend), seconds=round(time.perf_counter() - t0, 3))
    if args.out.lower().endswith(".npz"):
        from gradbench.frames import save_npz

        path = write_file(args.out, lambda f: save_npz(f, npz, head), binary=True, mkdir=args.mkdir)
    else:
        path = write_json(args.out, {**head, **body}, mkdir=args.mkdir)
    return path


def _write_plot(args, draw) -> str:
    return write_plot(args.plot, draw, mkdir=args.mkdir)


def _wrote(paths) -> None:
    """The "wrote PATH" lines, after the report: the files were written before it (a Ctrl-C
    while it prints loses nothing), as the feed-forward commands do."""
    for path in paths:
        print(f"wrote {path}")


def _backend(name: str) -> str:
    from gradbench.recurrent.backends import resolve

    try:
        concrete = resolve(name)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    if concrete == "numba":
        print("compiling recurrent kernels (first run only) ...", file=sys.stderr, flush=True)
    return concrete


def _cell(text: str) -> str:
    """--cell's value, refused as it is read (so before argparse's "--hidden is required" of a
    command that also misspelt the cell: that message hid the misspelling)."""
    try:
        check_choice("--cell", text, CELLS)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--cell=")) from None  # argparse names it
    return text


def _add_net_args(p, *, cell: bool = True, steps=None, hidden=None, recurrent_init="orthogonal", head: bool = True,
                  theory: bool = False):
    """The options of the net. ``head``: --loss, --loss-on, --output-dim (run and compare: the
    probe's targets are drawn from the seed, :func:`probe_targets`). ``theory``: the clip options
    are parsed (to refuse them with a reason, :func:`_refuse_theory_clip`) but not listed."""
    g = p.add_argument_group("the recurrent net")
    if cell:
        g.add_argument("--cell", required=True, metavar="CELL", type=_cell, help=f"one of {', '.join(CELLS)}")
    g.add_argument("--steps", type=positive_int, default=steps, required=steps is None,
                   help="sequence length T" + ("" if steps is None else f" (default {steps})"))
    g.add_argument("--hidden", type=positive_int, default=hidden, required=hidden is None,
                   help="hidden units N" + ("" if hidden is None else f" (default {hidden})"))
    g.add_argument("--input-dim", type=positive_int, default=None, help="input features D (default: hidden)")
    g.add_argument("--activation", default=None, metavar="NAME",
                   help=f"rnn cell only: one of {', '.join(RNN_ACTIVATIONS)} (default tanh)")
    g.add_argument("--activation-param", type=finite_float, default=None,
                   help="rnn cell only: leaky-ReLU slope or ELU alpha (default 0.01, 1)")
    g.add_argument("--init", default="xavier_normal", metavar="NAME",
                   help=f"W_ih: one of {', '.join(INITS)} (default xavier_normal)")
    g.add_argument("--recurrent-init", default=recurrent_init, metavar="NAME",
                   help=f"W_hh: one of {', '.join(RECURRENT_INITS)} (default {recurrent_init})")
    g.add_argument("--sigma-w", type=gain, default=None,
                   help="gain of W_hh (default: the recurrent init's own, sqrt(2) for he_*, else 1)")
    g.add_argument("--sigma-b", type=nonneg_float, default=0.0, help="std of the biases (default 0)")
    g.add_argument("--forget-bias", type=finite_float, default=None, help="lstm only (default 1)")
    g.add_argument("--update-bias", type=finite_float, default=None,
                   help="gru only: added to the update gate's bias; large keeps the state (default 0)")
    if head:
        g.add_argument("--loss", default="sum_squares", metavar="NAME",
                       help=f"one of {', '.join(LOSSES)}: sum_squares is 0.5 ||h_(T-1)||^2, the others a linear head "
                            "whose targets are drawn from --seed (default sum_squares)")
        g.add_argument("--loss-on", choices=LOSS_ON, default="last",
                       help="the head reads the last step, or every step (then the verdict reads the gradient carried "
                            "back from the last step's loss) (default last)")
        g.add_argument("--output-dim", type=positive_int, default=1, metavar="O",
                       help="outputs of the head (classes for softmax_ce) (default 1)")
    hide = {"help": argparse.SUPPRESS} if theory else {}
    g.add_argument("--clip", choices=CLIP_MODES, default=None,
                   **hide or {"help": "clipping of the backpropagated signal: value (elementwise to [-c, c]) or norm "
                                      "(default: none)"})
    g.add_argument("--clip-threshold", type=positive_float, default=1.0, **hide or {"help": "with --clip (default 1)"})
    g.add_argument("--clip-on", choices=CLIP_TARGETS, default="signal",
                   **hide or {"help": "with --clip: signal only here (matrix and global clip the parameter gradients, "
                                      "which the diagnosis does not read) (default signal)"})
    g.add_argument("--dtype", choices=DTYPES, default="float64", help="floating-point type (default float64)")


def _net(args, cell: str | None = None):
    import gradbench as gb

    if args.init in RECURRENT_INITS and args.init not in INITS:  # identity: "did you mean 'xavier_uniform'?"
        raise UsageError(f"--init {args.init}: --init draws W_ih (the input weights), one of {', '.join(INITS)}; "
                         f"{args.init} is an init of W_hh: --recurrent-init {args.init}")
    # compare: --activation (and its parameter) applies to its rnn line only, --forget-bias to its
    # lstm line only and --update-bias to its gru line only (_compare_notes says so); run/theory: the
    # spec refuses them on another cell
    vanilla = cell is None or cell == "rnn"
    try:
        return gb.Recurrent(cell=cell or args.cell, steps=args.steps, hidden=args.hidden, input_dim=args.input_dim,
                            activation=args.activation if vanilla else None,
                            activation_param=args.activation_param if vanilla else None, init=args.init,
                            recurrent_init=args.recurrent_init, sigma_w=args.sigma_w, sigma_b=args.sigma_b,
                            forget_bias=args.forget_bias if cell is None or cell == "lstm" else None,
                            update_bias=args.update_bias if cell is None or cell == "gru" else None,
                            loss=getattr(args, "loss", "sum_squares"), loss_on=getattr(args, "loss_on", "last"),
                            output_dim=getattr(args, "output_dim", 1),
                            clip=args.clip, clip_threshold=args.clip_threshold, clip_on=args.clip_on, dtype=args.dtype)
    except (ValueError, TypeError) as exc:  # the spec's words in the command's: sigma_w -> --sigma-w
        raise UsageError(in_option_words(str(exc), _NET_FIELD)) from None


# the Recurrent fields that are options, named in the spec's messages ("sigma_w=1e-50 is beyond ...")
_NET_FIELD = field_words(("sigma_w", "sigma_b", "forget_bias", "update_bias", "recurrent_init", "activation_param",
                          "clip_threshold", "clip_on", "input_dim", "hidden", "steps", "dtype", "activation", "cell",
                          "init", "loss", "loss_on", "output_dim"))


def _common(p, batch=16):
    p.add_argument("--batch", type=positive_int, default=batch, help=f"sequences in the probe batch (default {batch})")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the parameters and the inputs (default 0)")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "c"),
                   help="auto picks the fastest available (default auto)")
    p.add_argument("--checkpoint", type=nonneg_int, default=None, metavar="K",
                   help="steps per recomputed segment; 0: never, every step kept, as for stacks (default: about "
                        "sqrt(steps) from 10^4 steps on, else only when the plain run would not fit)")


@dataclass(frozen=True)
class Probe:
    """One planned run: the net, the concrete backend and the plan's checkpoint (None: plain)."""

    rnn: object
    backend: str
    checkpoint: int | None
    label: str = ""


def available() -> int:
    """Bytes a run may count on, measured once per command before anything is drawn (as
    :func:`gradbench.cli.common.plan_probe` does for the stacks)."""
    from gradbench.buffers import held
    from gradbench.plan import available_memory

    return available_memory() + held()


def plan_one(rnn, args, backend: str, *, label: str = "", avail: int | None = None) -> Probe:
    """Plan one run before anything is drawn (the weights' QR takes seconds at hidden 2048): a
    run that would not fit is refused here, in command-line words, naming a ``--checkpoint K``
    that fits when one does."""
    from gradbench.plan import LIMIT_FRACTION, PlanRefused, size_text
    from gradbench.recurrent.engine import plan_run

    if args.checkpoint == 0:  # never: every step kept (a run that would not fit is refused, naming what fits)
        stats_only, ck = False, None
    elif args.checkpoint is not None:
        stats_only, ck = False, args.checkpoint
    else:  # segmented from 10^4 steps on, else only when the plain run would not fit
        stats_only, ck = rnn.steps >= 10_000, "auto"
    avail = available() if avail is None else avail
    held = target_bytes(rnn, args.batch)  # every-step targets (T, B, O) are held whole: the plan gets the rest
    if held > LIMIT_FRACTION * avail:
        raise UsageError(f"--loss-on every holds the targets of every step ({rnn.steps} x {args.batch}"
                         f"{'' if rnn.loss == 'softmax_ce' else f' x {rnn.output_dim}'}): about {size_text(held)}, "
                         f"beyond the limit of {size_text(LIMIT_FRACTION * avail)} ({LIMIT_FRACTION:.0%} of the "
                         "available RAM): reduce --steps or --batch, or use --loss-on last")
    try:
        plan = plan_run(rnn, args.batch, checkpoint=ck, stats_only=stats_only, generated=True,
                        available=avail - held)
    except PlanRefused as exc:
        raise UsageError(_refusal(rnn, args, exc)
                         + (f" (the limit is what is left after the every-step targets' {size_text(held)})"
                            if held else "")) from None
    return Probe(rnn, backend, plan.checkpoint, label)


def _refusal(rnn, args, exc) -> str:
    """The planner's refusal in command-line words: the options given, what the run needs, and
    a --checkpoint K that fits, or what to reduce."""
    from gradbench.plan import size_text
    from gradbench.recurrent.engine import memory_estimate

    given = {None: "", 0: ", --checkpoint 0"}.get(args.checkpoint, f", --checkpoint {args.checkpoint}")
    auto = f" (checkpointed every {count(exc.checkpoint, 'step')})" if args.checkpoint is None and exc.checkpoint else ""
    if exc.fits is not None:
        est = memory_estimate(rnn, args.batch, checkpoint=exc.fits, generated=True)
        hint = f"; it fits with --checkpoint {exc.fits} (about {size_text(est)})"
    else:
        hint = "; no --checkpoint K fits: reduce --steps, --hidden or --batch"
    return (f"this run ({rnn.cell}, --steps {rnn.steps}, --hidden {rnn.hidden}, --batch {args.batch}{given}) needs "
            f"about {size_text(exc.need)}{auto} but the limit is {size_text(exc.limit)} ({exc.budget}){hint}")


def run_one(probe: Probe, args, params=None):
    """Parameters (unless given), a generated input sequence, one backprop of the planned run
    with a progress bar; (result, params)."""
    import gradbench as gb
    from gradbench.cli.progress import Progress

    rnn, label = probe.rnn, probe.label
    if params is None:
        params = gb.init_params(rnn, args.seed)
    xs = gb.GeneratedSequence(rnn, args.batch, args.seed)
    targets = probe_targets(rnn, args.batch, args.seed)
    desc = f"backprop {label + ' ' if label else ''}({rnn.cell}, {count(rnn.steps, 'step')}, hidden {rnn.hidden}, {probe.backend})"
    try:
        with Progress(desc, unit="segments (forward + backward)") as bar:
            res = gb.backprop(rnn, params, xs, targets, backend=probe.backend, checkpoint=probe.checkpoint,
                              progress=bar.count)
    except MemoryError as exc:  # the memory went away since the plan: in command-line words
        raise UsageError(str(exc).replace("checkpoint=None", "--checkpoint 0").replace("checkpoint=", "--checkpoint ")
                         ) from None
    return res, params


# ------------------------------------------------------------------ run
def cmd_run(args) -> int:
    from gradbench.recurrent.diagnose import diagnose, format_report

    t0 = time.perf_counter()
    _check_outputs(args, RESULTS)
    _check_clip(args)
    _check_head(args)
    rnn = _net(args)
    res, _ = run_one(plan_one(rnn, args, _backend(args.backend)), args)
    d = diagnose(res)
    written = []
    if args.out:
        written.append(_write_out(args, "run", t0, res.backend, {"diagnosis": d.to_dict()}, npz=d, seed=args.seed,
                                  batch=args.batch, weights=WEIGHTS, targets=targets_words(rnn)))
    if args.plot:
        from gradbench.recurrent import plot  # matplotlib only when a plot is asked for

        written.append(_write_plot(args, lambda path: plot.run_figure(d, path, dpi=args.dpi)))
    if args.tensorboard:
        from gradbench.tensorboard_io import write_diagnosis

        written.append(write_diagnosis(d, args.tensorboard))
    print(format_report(d, rows=args.rows))
    print(f"  ({time.perf_counter() - t0:.1f} s, batch {args.batch}, seed {args.seed}, "
          f"{res.extras['segments']} segment{'s' if res.extras['segments'] != 1 else ''})")
    _wrote(written)
    return 0


# ------------------------------------------------------------------ compare
def cmd_compare(args) -> int:
    from gradbench.recurrent.diagnose import diagnose, verdict_signal

    t0 = time.perf_counter()
    _check_outputs(args, RESULTS)
    _check_clip(args)
    _check_head(args)
    cells = split(args.cells, "--cells")
    bad = [c for c in cells if c not in CELLS]
    if bad or not cells:
        raise UsageError(f"--cells {args.cells!r}: choose from {', '.join(CELLS)} (comma-separated)")
    for dest, only in (("activation", "rnn"), ("activation_param", "rnn"), ("forget_bias", "lstm"),
                       ("update_bias", "gru")):
        if getattr(args, dest) is not None and only not in cells:
            raise UsageError(f"{option(dest)} applies to the {only} cell only, and --cells {args.cells!r} has none")
    nets = {cell: _net(args, cell) for cell in cells}  # every refusal before the first run
    backend, avail = _backend(args.backend), available()
    probes = [plan_one(rnn, args, backend, label=cell, avail=avail) for cell, rnn in nets.items()]
    diags, results, shown = {}, {}, {}
    for probe in probes:
        res, _ = run_one(probe, args)
        diags[probe.label] = diagnose(res)
        results[probe.label] = res  # an LSTM's carried ||dL_{T-1}/dc_t|| (loss at every step) is the result's only
        # what the table and the plot show: the curve the verdict and rate read (an LSTM's state pair)
        shown[probe.label] = verdict_signal(diags[probe.label], res)
    T = args.steps
    written = []
    if args.out:
        written.append(_write_out(args, "compare", t0, res.backend,
                                  {"diagnoses": {k: d.to_dict() for k, d in diags.items()}},
                                  npz=diags, seed=args.seed, batch=args.batch, weights=WEIGHTS,
                                  targets=targets_words(next(iter(nets.values())))))
    if args.plot:
        from gradbench.recurrent import plot  # matplotlib only when a plot is asked for

        # the result where only it holds the verdict's curve (an LSTM's carried dL_{T-1}/dc_t): the figure diagnoses it
        drawn = {k: d if verdict_signal(d)[2] else results[k] for k, d in diags.items()}
        written.append(_write_plot(args, lambda path: plot.signal_vs_steps_back(
            drawn, path, title=f"{'Last step loss gradient' if args.loss_on == 'every' else 'Gradient'} through "
                               f"{count(T, 'step')}, hidden {args.hidden}", dpi=args.dpi)))
    for note in _compare_notes(args, nets):
        print(note)
    backs = sorted({b for b in (0, 1, 10, 100, 1000, 10_000, 100_000, T - 1) if b < T})
    head = f"{'cell':<6} {'verdict':<10} {'dec/step':>9}" + "".join(f" {'back ' + str(b):>12}" for b in backs) + "  reach"
    print(head)
    print("-" * len(head))
    no_slope = []
    for cell, d in diags.items():
        rate = f"{fmt_rate(d.decades_per_step, 4):>9}" if math.isfinite(d.decades_per_step) else f"{'-':>9}"
        if not math.isfinite(d.decades_per_step):  # it printed "+nan", where run says why
            no_slope.append(cell)
        row = f"{cell:<6} {d.verdict:<10} {rate}"
        # the columns are what the verdict and rate read (verdict_signal): with a loss at every step the last
        # step's loss carried back (the whole loss's ||dL/dh_t|| is mostly each step's own term: flat); for the
        # LSTM its state pair (its ||dL/dh_t|| read 10^-3.07 one step back beside "stable, -0.0049")
        values = shown[cell][0]
        row += "".join(f" {fmt_pow(values[T - 1 - b]):>12}" for b in backs)
        print(row + f"  {d.reach}")
    every = args.loss_on == "every"
    h = "||dL_{T-1}/dh_t||" if every else "||dL/dh_t||"
    lstm = "lstm" in diags
    norm = f"log10 {h}" + (" (lstm: log10 " + ("||(dL_{T-1}/dh_t, dL_{T-1}/dc_t)||" if every else
                                             "||(dL/dh_t, dL/dc_t)||")
                           + ", its backward state's norm sqrt(" + h + "^2 + " + h.replace("dh_t", "dc_t")
                           + "^2), which its verdict and rate read)" if lstm else "")
    if every:
        print(f"({norm}, the gradient of the last step's loss alone, at that many steps back from the "
              "last step, exact; reach: consecutive steps around the largest contribution to dL_{T-1}/dW_hh whose "
              "contributions stay within 8 decades of it; with a loss at every step ||dL/dh_t|| is mostly each "
              "step's own term: run --cell shows both)")
    else:
        print(f"({norm} at that many steps back from the last step, exact; reach: consecutive steps "
              "around the largest contribution to dL/dW_hh whose contributions stay within 8 decades of it)")
    if no_slope:
        print("(dec/step -: no slope to fit over one step)" if T < 2 else
              f"(dec/step - ({', '.join(no_slope)}): no least-squares slope, fewer than two steps with a finite "
              "gradient)")
    _wrote(written)
    return 0


def _compare_notes(args, nets) -> list[str]:
    """The options of ``compare`` that apply to one cell's line only, said above the table (the
    gated cells keep their fixed sigmoid gates and tanh, the rnn and gru have no forget gate)."""
    notes = []
    given = [f"{option(d)} {getattr(args, d)}" for d in ("activation", "activation_param")
             if getattr(args, d) is not None]
    if given:
        gated = [c for c in nets if c != "rnn"]
        notes.append(f"{' '.join(given)}: the rnn line only"
                     + (f" ({', '.join(gated)}: fixed sigmoid gates and tanh)" if gated else ""))
    if args.forget_bias is not None:
        notes.append(f"--forget-bias {args.forget_bias:g}: the lstm line only")
    if args.update_bias is not None:
        notes.append(f"--update-bias {args.update_bias:g}: the gru line only")
    return notes


# ------------------------------------------------------------------ theory
def cmd_theory(args) -> int:
    from gradbench.recurrent.theory import measured_rate, predicted_rate

    t0 = time.perf_counter()
    _check_outputs(args)
    _refuse_theory_clip(args)
    if args.steps < 2:  # measured_rate is nan with one step: "measured +nan" was printed with no reason
        raise UsageError(f"--steps {args.steps}: the measured rate is the least-squares slope of log10 ||dL/dh_t|| "
                         "over the steps, which needs --steps >= 2")
    rnn = _net(args)
    probe = plan_one(rnn, args, _backend(args.backend))
    import gradbench as gb

    params = gb.init_params(rnn, args.seed)
    pred = predicted_rate(rnn, params)
    ens = predicted_rate(rnn)
    print(f"theory: {rnn.cell}" + (f" {rnn.act}" if rnn.cell == "rnn" else "") + f", hidden {rnn.hidden}, "
          f"W_hh {rnn.recurrent_init} gain {rnn.gain:g}, {rnn.dtype}")
    out = {"cell": rnn.cell, "method": pred.method}
    if pred.decades_per_step is None:
        print("  prediction: " + re.sub(r"recurrent_init='(\w+)'", r"--recurrent-init \1", pred.method))
    else:
        print(f"  predicted   {pred.decades_per_step:+.6f} decades per step going back ({pred.method})")
        out["predicted_decades_per_step"] = pred.decades_per_step
        if ens.decades_per_step is not None and ens.method != pred.method:
            print(f"  ensemble    {ens.decades_per_step:+.6f} ({ens.method})")
            out["ensemble_decades_per_step"] = ens.decades_per_step
        if pred.chi1 is not None:
            print(f"  chi_1 = {pred.chi1:.6g} at input std {pred.input_std:.4g} (mean field, the input as the bias)")
            few = few_open_units(pred.open_fraction, rnn.hidden, pred.decades_per_step, "the state's", "a net's",
                                 "hidden size")
            if few:
                print(few)
                out["open_fraction"] = pred.open_fraction
        if pred.newman_untied is not None:
            print(f"  Newman lambda_1 (independent W_hh at every step, for contrast): {pred.newman_untied:+.6f} "
                  "decades per step")
            out["newman_untied_decades_per_step"] = pred.newman_untied
    res, _ = run_one(probe, args, params)
    got = measured_rate(res)
    out["measured_decades_per_step"] = got
    written = _theory_files(args, t0, res, out, pred, got, rnn)
    if math.isfinite(got):
        print(f"  measured    {got:+.6f} decades per step going back ({count(rnn.steps, 'step')}, batch {args.batch}, "
              f"{res.backend}, least squares away from both ends)")
    else:  # it printed "measured +nan" with no reason
        print(f"  measured    none ({count(rnn.steps, 'step')}, batch {args.batch}, {res.backend}): {_no_measurement(res)}")
    if pred.decades_per_step is not None and math.isfinite(got):
        diff = got - pred.decades_per_step
        rel = (f" ({abs(diff) / abs(pred.decades_per_step):.2%} of the prediction)"
               if abs(pred.decades_per_step) >= RELATIVE_FROM else "")
        width = ("" if pred.chi1 is None else "; mean field is the infinite-width limit, and this state has few open "
                 "units (above)" if "open_fraction" in out else f"; mean field is the infinite-width limit: at hidden "
                 f"{rnn.hidden} a net's rate differs by O(1 / N) a step")
        print(f"  difference  {diff:+.2e} decades per step{rel}{width}")
    _wrote(written)
    return 0


def _theory_files(args, t0, res, out, pred, got, rnn) -> list[str]:
    """theory's --out and --plot, written before its measured lines are printed."""
    written = []
    if args.out:
        written.append(_write_out(args, "theory", t0, res.backend, out, seed=args.seed, batch=args.batch,
                                  weights=WEIGHTS))
    if args.plot:
        from gradbench.recurrent import plot
        from gradbench.recurrent.diagnose import diagnose

        d = diagnose(res)
        # no prediction: said so, not "vs predicted none dec/step"
        predicted = (f"no prediction for the {rnn.cell} cell" if pred.decades_per_step is None
                     else f"predicted {pred.decades_per_step:+.4g} dec/step")
        T = rnn.steps
        skip = T // 20  # measured_rate's window: away from both ends

        def draw(path):
            # the line's own legend rate is the diagnosis's, over every step: "simulated", so that the figure
            # does not call two different numbers "measured" (the title's is fitted over the window)
            fig = plot.signal_vs_steps_back(
                {"simulated": d}, None, dpi=args.dpi,
                title=f"{rnn.cell}: measured {f'{got:+.4g} dec/step' if math.isfinite(got) else 'none'} (steps back "
                      f"{skip}-{T - 1 - skip}) vs {predicted}")
            if pred.decades_per_step is not None:
                _prediction_line(fig.axes[0], res, pred.decades_per_step, skip)
            return plot.save(fig, path, args.dpi)

        written.append(_write_plot(args, draw))
    return written


def _prediction_line(ax, res, rate: float, skip: int) -> None:
    """The predicted rate as a dashed line against steps back, placed at the simulated norms' mean
    height over the steps measured_rate fits (steps back skip .. T-1-skip): it was only in the title."""
    s = np.asarray(res.signal_norm.log10(), dtype=np.float64)[::-1]  # against steps back
    back = np.arange(len(s))
    window = np.zeros(len(s), dtype=bool)
    window[skip:len(s) - skip] = True
    used = window & np.isfinite(s)
    if not used.any():
        return
    anchor = float(np.mean(s[used] - rate * back[used]))
    ax.plot(back, anchor + rate * back, ls="--", color="k", lw=1.2,
            label=f"mean field: {rate:+.4g} dec/step going back (placed over the fitted steps)")
    ax.legend(loc="best", fontsize=8)


def _no_measurement(res) -> str:
    """Why :func:`~gradbench.recurrent.theory.measured_rate` has no slope: fewer than two steps
    of its window with a finite, non-zero ||dL/dh_t||."""
    s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
    skip = len(s) // 20
    window = s[skip:len(s) - skip]
    from gradbench.recurrent.diagnose import nonfinite_words

    why = nonfinite_words(res)
    zero = int(np.sum(window == -math.inf))
    if zero:
        why.append(f"||dL/dh_t|| is exactly 0 at {zero} of them")
    return (f"fewer than two of the {len(window)} steps fitted have a finite, non-zero ||dL/dh_t||"
            + (f" ({'; '.join(why)})" if why else ""))


# ------------------------------------------------------------------ train (the recurrent demos)
def cmd_train(args) -> int:
    from gradbench.recurrent.train import run_recurrent_demo

    t0 = time.perf_counter()
    _check_outputs(args)
    names = split(args.demo)  # checked by main (check_demo_names) before the options were parsed
    over = {k: getattr(args, k) for k in ("epochs", "lr", "seed", "steps") if getattr(args, k) is not None}
    concrete = _backend(args.backend)
    if "epochs" in over:  # a history beyond memory, refused before the first demo trains
        from gradbench.plan import PlanRefused, check_history
        from gradbench.recurrent.train import HISTORY_BYTES

        try:
            check_history(over["epochs"], HISTORY_BYTES, "the training history")
        except PlanRefused as exc:
            raise UsageError(str(exc).replace("epochs=", "--epochs ")) from None
    results = {n: run_recurrent_demo(n, backend=concrete, progress=True, **over) for n in names}
    written = []
    if args.out:
        runs = {n: dict(rnn=dataclasses.asdict(r.rnn), settings=r.settings, loss=_jl(r.loss), eval_loss=_jl(r.eval_loss), accuracy=_jl(r.accuracy),
                        signal_start=_jl(r.signal_start), signal_end=_jl(r.signal_end), diverged_epoch=r.diverged_epoch,
                        divergence=r.divergence, seconds=r.seconds) for n, r in results.items()}
        written.append(_write_out(args, "train", t0, concrete, {"runs": runs}, weights=WEIGHTS))
    if args.plot:
        from gradbench.recurrent import plot  # matplotlib only when a plot is asked for

        written.append(_write_plot(args, lambda path: plot.training_figure(results, path, dpi=args.dpi)))
    for r in results.values():
        print(r.summary())
    _wrote(written)
    return 0


def _jl(a):
    return [None if not math.isfinite(float(v)) else float(v) for v in np.asarray(a, dtype=np.float64)]


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradbench", description="gradbench for recurrent nets (vanilla RNN, LSTM, GRU)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parser.commands = sub.choices
    raw = argparse.RawDescriptionHelpFormatter
    p = add_parser(sub, "run", help="one recurrent net: forward, exact backward through time, diagnosis",
                       formatter_class=raw, epilog="""\
examples:
  gradbench run --cell lstm --steps 100000 --hidden 32
  gradbench run --cell rnn --steps 1000 --hidden 64 --recurrent-init normal --plot rnn.png --out rnn.json
  gradbench run --cell gru --steps 1000000 --hidden 64 --batch 64      (checkpointed, about 0.6 GiB)
  gradbench run --cell lstm --steps 500 --hidden 32 --tensorboard runs/lstm --mkdir   (tensorboard --logdir runs)
  gradbench run --cell rnn --steps 200 --hidden 16 --recurrent-init normal --sigma-w 0.5 --loss mse --loss-on every
""")
    _add_net_args(p)
    _common(p)
    p.add_argument("--rows", type=positive_int, default=12, help="steps shown in the table (default 12)")
    p.add_argument("--out", metavar="FILE", help="write the diagnosis: .json, or .npz for long runs (docs/formats.md) (default: none)")
    p.add_argument("--plot", help="write ||dL/dh_t|| and the step contributions against t (.png/.svg/.pdf) "
                                                   "(default: none)")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="write the diagnosis as TensorBoard events, the time step as the step (needs tensorboardX; "
                        "view with tensorboard --logdir DIR) (default: none)")
    add_output_args(p)  # --mkdir, --dpi
    p.set_defaults(func=cmd_run)
    p = add_parser(sub, "compare", help="several cells side by side through time", formatter_class=raw, epilog="""\
examples:
  gradbench compare --cells rnn,lstm,gru --steps 10000 --plot cells.png
""")
    p.add_argument("--cells", required=True, help=f"comma-separated cells: {', '.join(CELLS)}")
    _add_net_args(p, cell=False, steps=None, hidden=32)
    _common(p)
    p.add_argument("--out", metavar="FILE", help="write every diagnosis: .json or .npz (docs/formats.md) (default: none)")
    p.add_argument("--plot", help="write log10 ||dL/dh_t|| against steps back, one line per cell (default: none)")
    add_output_args(p)  # --mkdir, --dpi
    p.set_defaults(func=cmd_compare)
    p = add_parser(sub, "theory", help="predicted vs measured per-step rate through time", formatter_class=raw,
                       epilog="""\
linear cells: log10 of the spectral radius of the drawn W_hh (exact as T grows; orthogonal and identity
give 0); tanh and the other activations: mean field chi_1 with sigma_w the gain of W_hh and the input as
the bias (a random W_hh: with --recurrent-init identity they are measured only); Newman's lambda_1
(independent matrices) for contrast. LSTM/GRU: measured only. The difference is also given as a
percentage of the prediction when the prediction is at least 1e-3 decades per step.

examples:
  gradbench theory --cell rnn
  gradbench theory --cell rnn --activation identity --recurrent-init normal --hidden 16
  gradbench theory --cell rnn --activation tanh --recurrent-init normal --sigma-w 1.5 --hidden 64 --plot t.png
""")
    # a random W_hh: what mean field describes; no head (the rate is the chain's, read from ||dL/dh_t||)
    _add_net_args(p, steps=10_000, hidden=64, recurrent_init="normal", head=False, theory=True)
    _common(p, batch=4)
    p.add_argument("--out", help="write the predictions and the measured rate as JSON (default: none)")
    p.add_argument("--plot", help="write the measured log10 ||dL/dh_t|| against steps back (default: none)")
    add_output_args(p)  # --mkdir, --dpi
    p.set_defaults(func=cmd_theory)
    p = add_parser(sub, "train", help="the recurrent demonstrations", formatter_class=raw, epilog="""\
examples:
  gradbench train --demo memory-rnn,memory-lstm,memory-gru --plot memory.png
  gradbench train --demo exploding-rnn,exploding-rnn-clipped
""")
    p.add_argument("--demo", required=True, help="comma-separated recurrent demonstrations (gradbench train --list)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: the demo's)")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the demo's)")
    p.add_argument("--seed", type=seed_int, default=None, help="seed of the data and the weights (default: the demo's)")
    p.add_argument("--steps", type=positive_int, default=None, help="sequence length (default: the demo's)")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "c"),
                   help="auto picks the fastest available (default auto)")
    p.add_argument("--out", help="write each run's losses, accuracy and gradient curves as JSON (default: none)")
    p.add_argument("--plot", help="held-out loss per epoch and the gradient curves at the start (default: none)")
    add_output_args(p)  # --mkdir, --dpi
    p.set_defaults(func=cmd_train)
    return parser


def _refuse_feedforward_train_options(parser, argv: list[str], feedforward: set[str]) -> None:
    """``gradbench train --help`` lists the feed-forward demos' options (--optimizer,
    --weight-decay, ...; ``feedforward``, from :func:`gradbench.cli.main`, which imports this
    module): given with a recurrent demo, say which options the recurrent demos take rather than
    'unrecognized arguments' (SystemExit 2, one line)."""
    _, extras = parser.parse_known_args(argv)
    typed = [e.split("=", 1)[0] for e in extras if e.startswith("--")]
    ours = parser.commands["train"]
    theirs = [t for t in dict.fromkeys(typed) if t in feedforward]
    if theirs:
        takes = [s for a in ours._actions for s in a.option_strings
                 if s.startswith("--") and s not in ("--help", "--debug")]
        demos = _demo_value(argv)
        ours.exit(2, f"{ours.prog}: error: {', '.join(theirs)}: the recurrent demos ({demos}) take {', '.join(takes)} "
                     f"only; {'it is' if len(theirs) == 1 else 'they are'} for the feed-forward demos and your own "
                     f"stack (see gradbench train --demo {demos} --help)\n")


def main(argv: list[str], feedforward_train_options: set[str] = frozenset()) -> int:
    """The recurrent commands; ``feedforward_train_options``: the option strings of the
    feed-forward ``gradbench train`` (named in a refusal when given with a recurrent demo)."""
    parser = build_parser()
    if argv and argv[0] == "train" and _demo_value(argv) is not None:
        from gradbench.recurrent.train import check_demo_names

        try:  # unknown or mixed demo names: said before the parser complains about their options
            check_demo_names(split(_demo_value(argv)))
        except ValueError as exc:
            print(f"gradbench train: error: {exc}", file=sys.stderr)
            return 2
    try:
        if argv and argv[0] == "train":
            _refuse_feedforward_train_options(parser, argv, feedforward_train_options)
        args = parse(parser, argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    args.argv = list(argv)
    args.typed = typed_options(parser.commands[args.command], argv)
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return int(args.func(args) or 0)
    except (ValueError, TypeError, MemoryError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"gradbench {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
