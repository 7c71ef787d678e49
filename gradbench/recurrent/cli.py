"""The command line for recurrent nets: ``gradbench run --cell ...``, ``gradbench compare --cells
...``, ``gradbench theory --cell rnn`` and ``gradbench train --demo memory-lstm`` (the recurrent
demos).

``gradbench.cli.main`` hands a command line over when :func:`claims` says it is a recurrent one
(``--cell``/``--cells``, or recurrent demo names); this module has its own parsers with the same
conventions: one-line errors with exit status 2, atomic result files, a progress bar, a notice
when the Numba kernels compile. It does not import ``gradbench.cli`` (which imports it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

import numpy as np

from gradbench import __version__, _atomic
from gradbench.report import fmt_pow
from gradbench.recurrent.spec import CELLS, CLIP_TARGETS, RECURRENT_INITS, RNN_ACTIVATIONS
from gradbench.spec import CLIP_MODES, DTYPES, INITS

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
    if argv[0] == "train" and _flag(argv, "--demo"):
        from gradbench.recurrent.train import RECURRENT_DEMOS

        for i, a in enumerate(argv):
            value = a.split("=", 1)[1] if a.startswith("--demo=") else (argv[i + 1] if a == "--demo" and i + 1 < len(argv) else None)
            if value is not None:
                names = _names(value)
                return bool(names) and all(n in RECURRENT_DEMOS for n in names)
    return False


def list_demos(out=None) -> None:
    """The recurrent demos, for ``gradbench train --list``."""
    from gradbench.recurrent.train import RECURRENT_DEMOS

    out = out or sys.stdout
    print("recurrent demos (gradbench train --demo NAME[,NAME...]):", file=out)
    for name, d in RECURRENT_DEMOS.items():
        t = d.train
        print(f"  {name:22s} {d.title}  [{t['optimizer']} lr={t['lr']:g}, batch {t['batch_size']}, "
              f"{t['epochs']} epochs]", file=out)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UsageError(ValueError):
    pass


def _check_path(path, suffixes, what):
    if path is not None and os.path.splitext(path)[1].lower() not in suffixes:
        raise UsageError(f"{what} {path!r} must end in {', '.join(suffixes)}")


_PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _check_outputs(args) -> None:
    """``--plot`` and then ``--out`` checked before any work."""
    _check_path(args.plot, _PLOT_SUFFIXES, "--plot")
    _check_path(args.out, (".json",), "--out")


def _names(value: str) -> list[str]:
    """The non-empty names of a comma-separated option value."""
    return [n for n in value.split(",") if n]


def _write_out(path, **payload) -> None:
    """Write the JSON result file ``path`` atomically and say so."""
    _atomic.write_atomic(path, lambda f: f.write(_payload(**payload)))
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


def _add_net_args(p, *, cell: bool = True, steps=None, hidden=None):
    g = p.add_argument_group("the recurrent net")
    if cell:
        g.add_argument("--cell", required=True, metavar="CELL", help=f"one of {', '.join(CELLS)}")
    g.add_argument("--steps", type=int, default=steps, required=steps is None, help="sequence length T")
    g.add_argument("--hidden", type=int, default=hidden, required=hidden is None, help="hidden units N")
    g.add_argument("--input-dim", type=int, default=None, help="input features D (default: hidden)")
    g.add_argument("--activation", default=None, metavar="NAME",
                   help=f"rnn cell only: one of {', '.join(RNN_ACTIVATIONS)} (default tanh)")
    g.add_argument("--activation-param", type=float, default=None)
    g.add_argument("--init", default="xavier_normal", metavar="NAME", help=f"W_ih: one of {', '.join(INITS)}")
    g.add_argument("--recurrent-init", default="orthogonal", metavar="NAME",
                   help=f"W_hh: one of {', '.join(RECURRENT_INITS)} (default orthogonal)")
    g.add_argument("--sigma-w", type=float, default=None, help="gain of W_hh")
    g.add_argument("--sigma-b", type=float, default=0.0, help="std of the biases")
    g.add_argument("--forget-bias", type=float, default=None, help="lstm only (default 1)")
    g.add_argument("--clip", choices=CLIP_MODES, default=None)
    g.add_argument("--clip-threshold", type=float, default=1.0)
    g.add_argument("--clip-on", choices=CLIP_TARGETS, default="signal")
    g.add_argument("--dtype", choices=DTYPES, default="float64")


def _net(args, cell: str | None = None):
    import gradbench as gb

    return gb.Recurrent(cell=cell or args.cell, steps=args.steps, hidden=args.hidden, input_dim=args.input_dim,
                        activation=args.activation, activation_param=args.activation_param, init=args.init,
                        recurrent_init=args.recurrent_init, sigma_w=args.sigma_w, sigma_b=args.sigma_b,
                        # compare: the forget bias applies to its lstm only; run/theory: the spec refuses it elsewhere
                        forget_bias=args.forget_bias if cell is None or cell == "lstm" else None,
                        clip=args.clip, clip_threshold=args.clip_threshold, clip_on=args.clip_on, dtype=args.dtype)


def _common(p, batch=16):
    p.add_argument("--batch", type=int, default=batch, help=f"sequences in the probe batch (default {batch})")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameters and the inputs")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "c"))
    p.add_argument("--checkpoint", type=int, default=None, metavar="K",
                   help="steps per recomputed segment (default: about sqrt(steps) from 10^4 steps on, else none)")


def run_one(rnn, args, label: str = ""):
    """Parameters, a generated input sequence, one backprop with a progress bar; (result, params)."""
    import gradbench as gb
    from tqdm import tqdm

    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    concrete = _backend(args.backend)
    params = gb.init_params(rnn, args.seed)
    xs = gb.GeneratedSequence(rnn, args.batch, args.seed)
    long = rnn.steps >= 10_000
    ck = args.checkpoint if args.checkpoint is not None else ("auto" if not long else None)
    desc = f"backprop {label + ' ' if label else ''}({rnn.cell}, {rnn.steps} steps, hidden {rnn.hidden}, {concrete})"
    with tqdm(total=None, desc=desc, unit="seg", file=sys.stderr, disable=None, mininterval=0.5) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        res = gb.backprop(rnn, params, xs, backend=concrete, stats_only=long and ck is None,
                          checkpoint="auto" if ck is None else ck, progress=progress)
    return res, params


def _payload(**kw) -> str:
    return json.dumps({"gradbench": __version__, **kw}, allow_nan=False)


# ------------------------------------------------------------------ run
def cmd_run(args) -> int:
    from gradbench.recurrent import plot
    from gradbench.recurrent.diagnose import diagnose, format_report

    _check_outputs(args)
    rnn = _net(args)
    t0 = time.perf_counter()
    res, _ = run_one(rnn, args)
    d = diagnose(res)
    print(format_report(d, rows=args.rows))
    print(f"  ({time.perf_counter() - t0:.1f} s, batch {args.batch}, seed {args.seed}, "
          f"{res.extras['segments']} segment{'s' if res.extras['segments'] != 1 else ''})")
    if args.out:
        _write_out(args.out, command="run", diagnosis=d.to_dict())
    if args.plot:
        plot.run_figure(d, args.plot)
        print(f"wrote {args.plot}")
    return 0


# ------------------------------------------------------------------ compare
def cmd_compare(args) -> int:
    from gradbench.recurrent import plot
    from gradbench.recurrent.diagnose import diagnose

    _check_outputs(args)
    cells = _names(args.cells)
    bad = [c for c in cells if c not in CELLS]
    if bad or not cells:
        raise UsageError(f"--cells {args.cells!r}: choose from {', '.join(CELLS)} (comma-separated)")
    diags = {}
    for cell in cells:
        res, _ = run_one(_net(args, cell), args, label=cell)
        diags[cell] = diagnose(res)
    T = args.steps
    backs = sorted({b for b in (0, 1, 10, 100, 1000, 10_000, 100_000, T - 1) if b < T})
    head = f"{'cell':<6} {'verdict':<10} {'dec/step':>9}" + "".join(f" {'back ' + str(b):>12}" for b in backs) + "  reach"
    print(head)
    print("-" * len(head))
    for cell, d in diags.items():
        row = f"{cell:<6} {d.verdict:<10} {d.decades_per_step:>+9.4f}"
        row += "".join(f" {fmt_pow(d.signal_log10[T - 1 - b]):>12}" for b in backs)
        print(row + f"  {d.reach}")
    print("(log10 ||dL/dh_t|| at that many steps back from the last step, exact; reach: steps back over which "
          "the contributions to dL/dW_hh stay within 8 decades of the largest)")
    if args.out:
        _write_out(args.out, command="compare", diagnoses={k: d.to_dict() for k, d in diags.items()})
    if args.plot:
        plot.signal_vs_steps_back(diags, args.plot, title=f"||dL/dh_t|| through {T} steps, hidden {args.hidden}")
        print(f"wrote {args.plot}")
    return 0


# ------------------------------------------------------------------ theory
def cmd_theory(args) -> int:
    from gradbench.recurrent.theory import measured_rate, predicted_rate

    _check_path(args.out, (".json",), "--out")
    _check_path(args.plot, _PLOT_SUFFIXES, "--plot")
    rnn = _net(args)
    import gradbench as gb

    params = gb.init_params(rnn, args.seed)
    pred = predicted_rate(rnn, params)
    ens = predicted_rate(rnn)
    print(f"theory: {rnn.cell}" + (f" {rnn.act}" if rnn.cell == "rnn" else "") + f", hidden {rnn.hidden}, "
          f"W_hh {rnn.recurrent_init} gain {rnn.gain:g}")
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
        if pred.newman_untied is not None:
            print(f"  Newman lambda_1 (independent W_hh at every step, for contrast): {pred.newman_untied:+.6f}")
            out["newman_untied_decades_per_step"] = pred.newman_untied
    res, _ = run_one(rnn, args)
    got = measured_rate(res)
    out["measured_decades_per_step"] = got
    print(f"  measured    {got:+.6f} decades per step going back ({rnn.steps} steps, batch {args.batch}, "
          f"{res.backend}, least squares away from both ends)")
    if pred.decades_per_step is not None and math.isfinite(got):
        diff = got - pred.decades_per_step
        rel = (f" ({abs(diff) / abs(pred.decades_per_step):.2%} of the prediction)"
               if abs(pred.decades_per_step) >= RELATIVE_FROM else "")
        print(f"  difference  {diff:+.2e} decades per step{rel}")
    if args.out:
        _write_out(args.out, command="theory", **out)
    if args.plot:
        from gradbench.recurrent import plot
        from gradbench.recurrent.diagnose import diagnose

        plot.signal_vs_steps_back({"measured": diagnose(res)}, args.plot,
                                  title=f"{rnn.cell}: measured {got:+.4g} vs predicted "
                                        f"{pred.decades_per_step if pred.decades_per_step is not None else float('nan'):+.4g} dec/step")
        print(f"wrote {args.plot}")
    return 0


# ------------------------------------------------------------------ train (the recurrent demos)
def cmd_train(args) -> int:
    from gradbench.recurrent import plot
    from gradbench.recurrent.train import RECURRENT_DEMOS, run_recurrent_demo

    _check_outputs(args)
    names = _names(args.demo)
    bad = [n for n in names if n not in RECURRENT_DEMOS]
    if bad:
        raise UsageError(f"unknown recurrent demo {', '.join(bad)}; choose from {', '.join(RECURRENT_DEMOS)}")
    over = {k: getattr(args, k) for k in ("epochs", "lr", "seed", "steps") if getattr(args, k) is not None}
    concrete = _backend(args.backend)
    results = {n: run_recurrent_demo(n, backend=concrete, progress=True, **over) for n in names}
    for r in results.values():
        print(r.summary())
    if args.out:
        runs = {n: dict(settings=r.settings, loss=_jl(r.loss), eval_loss=_jl(r.eval_loss), accuracy=_jl(r.accuracy),
                        signal_start=_jl(r.signal_start), signal_end=_jl(r.signal_end), diverged_epoch=r.diverged_epoch,
                        divergence=r.divergence, seconds=r.seconds) for n, r in results.items()}
        _write_out(args.out, command="train", runs=runs)
    if args.plot:
        plot.training_figure(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _jl(a):
    return [None if not math.isfinite(float(v)) else float(v) for v in np.asarray(a, dtype=np.float64)]


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradbench", description="gradbench for recurrent nets (vanilla RNN, LSTM, GRU)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("run", help="one recurrent net: forward, exact backward through time, diagnosis",
                       formatter_class=raw, epilog="""\
examples:
  gradbench run --cell lstm --steps 100000 --hidden 32
  gradbench run --cell rnn --steps 1000 --hidden 64 --recurrent-init normal --plot rnn.png --out rnn.json
  gradbench run --cell gru --steps 1000000 --hidden 64 --batch 64      (checkpointed, about 0.6 GiB)
""")
    _add_net_args(p)
    _common(p)
    p.add_argument("--rows", type=int, default=12, help="steps shown in the table")
    p.add_argument("--out", help="write the diagnosis as JSON")
    p.add_argument("--plot", help="write ||dL/dh_t|| and the step contributions against t (.png/.svg/.pdf)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("compare", help="several cells side by side through time", formatter_class=raw, epilog="""\
examples:
  gradbench compare --cells rnn,lstm,gru --steps 10000 --plot cells.png
""")
    p.add_argument("--cells", required=True, help=f"comma-separated cells: {', '.join(CELLS)}")
    _add_net_args(p, cell=False, steps=None, hidden=32)
    _common(p)
    p.add_argument("--out", help="write every diagnosis as JSON")
    p.add_argument("--plot", help="write log10 ||dL/dh_t|| against steps back, one line per cell")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("theory", help="predicted vs measured per-step rate through time", formatter_class=raw,
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
    _add_net_args(p, steps=10_000, hidden=64)
    p.set_defaults(recurrent_init="normal")
    _common(p, batch=4)
    p.add_argument("--out", help="write the predictions and the measured rate as JSON")
    p.add_argument("--plot", help="write the measured log10 ||dL/dh_t|| against steps back")
    p.set_defaults(func=cmd_theory)
    p = sub.add_parser("train", help="the recurrent demonstrations", formatter_class=raw, epilog="""\
examples:
  gradbench train --demo memory-rnn,memory-lstm,memory-gru --plot memory.png
  gradbench train --demo exploding-rnn,exploding-rnn-clipped
""")
    p.add_argument("--demo", required=True)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="sequence length (default: the demo's)")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "numba", "c"))
    p.add_argument("--out")
    p.add_argument("--plot", help="held-out loss per epoch and the gradient curves at the start")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
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
