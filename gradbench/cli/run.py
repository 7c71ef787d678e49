"""``gradbench run``: one stack, forward and exact backward, the diagnosis, files and plots."""

from __future__ import annotations

import time

from gradbench import buffers
from gradbench.cli import model
from gradbench.cli.common import (
    WEIGHTS, UsageError, add_output_args, add_parser, add_probe_args, add_stack_args, nonneg_int, plan_probe,
    positive_int, refuse_unused, refuse_unused_stack_options, resolve_backend, run_probe, stack_from_args, stack_label,
)
from gradbench.cli.output import PLOTS, RESULTS, check_outputs, metadata, threads, write_diagnoses, write_plot

EPILOG = """\
examples:
  gradbench run --depth 50 --width 64 --activation sigmoid
  gradbench run --depth 100000 --width 16 --activation sigmoid --out deep.json
  gradbench run --depth 30 --width 32 --activation relu --init he_normal --plot flow.png --hist hist.png
  gradbench run --depth 20 --width 16 --activation tanh --sigma-w 3 --clip norm --clip-on signal
  gradbench run --depth 1000000 --width 64 --batch 64 --activation tanh --init he_normal --stats-only --out deep.npz
  gradbench run --torch model.pt --loss bce --tensorboard runs/model --mkdir   a saved nn.Sequential (needs torch)

The weights come from the seed through gradbench.GeneratedParams, with or without --stats-only:
one seed, one network (with --torch: the model's). File formats: docs/formats.md.
recurrent nets: gradbench run --cell lstm --steps 100000 --hidden 32 (options: gradbench run --cell lstm --help)
"""


def register(sub):
    p = add_parser(sub, "run", help="one stack: forward, exact backward, diagnosis", epilog=EPILOG)
    stack_group = add_stack_args(p, required=False)  # --depth/--width: needed unless --torch
    model.add_run_args(p, stack_group)
    add_probe_args(p)
    g = p.add_argument_group("what is kept and written")
    g.add_argument("--stats-only", action="store_true",
                   help="per-layer statistics only, weights generated per segment and never stored: "
                        "for 10^5-10^6 layers, memory O(sqrt(L) B N)")
    g.add_argument("--checkpoint", type=nonneg_int, default=None, metavar="K",
                   help="store every K-th activation and recompute the rest; 0: never (default: only when "
                        "the plain run would not fit)")
    g.add_argument("--out", metavar="FILE", help="write the diagnosis: .json, or .npz for large runs (default: none)")
    g.add_argument("--plot", metavar="FILE", help="write the gradient-flow plot: .png, .svg or .pdf (default: none)")
    g.add_argument("--hist", metavar="FILE",
                   help="write the per-layer histograms of log10 |dW| relative to each layer's norm (default: none)")
    g.add_argument("--rows", type=positive_int, default=12, help="layers shown in the table")
    add_output_args(p)
    p.set_defaults(func=cmd_run)
    return p


def cmd_run(args) -> int:
    from gradbench.cli.progress import Progress
    from gradbench.diagnose import diagnose

    t0 = time.perf_counter()
    refuse_unused(args, [args.plot, args.hist], [args.out, args.plot, args.hist, args.tensorboard])
    model.check_run_args(args)
    check_outputs([("--out", args.out, RESULTS), ("--plot", args.plot, PLOTS), ("--hist", args.hist, PLOTS)],
                  mkdir=args.mkdir, directories=[("--tensorboard", args.tensorboard)])
    stack, given = model.torch_stack(args) if args.torch else (stack_from_args(args), None)
    refuse_unused_stack_options(args, [stack])
    if args.stats_only and stack.clip == "norm" and stack.clip_on == "global":
        raise UsageError("--stats-only cannot apply --clip norm --clip-on global (one factor for every layer, known "
                         "only at the end): use --clip-on layer, or drop --stats-only")
    checkpoint = "auto" if args.checkpoint is None else (None if args.checkpoint == 0 else args.checkpoint)
    probe = plan_probe(stack, args.batch, args.seed, resolve_backend(args.backend), stats_only=args.stats_only,
                       checkpoint=checkpoint, bins=args.bins)
    res, params = run_probe(probe, params=given)
    # the engine keeps its internal arrays for a next call of the same shapes; this command makes
    # none, and the diagnosis's (L, bins) counts come next: the README's 10^6-layer run peaked at
    # 1.04 GiB with them kept
    buffers.release()
    with Progress("diagnosing"):
        d = diagnose(res, params, bins=args.bins)
    seconds = time.perf_counter() - t0
    weights = f"the model in {args.torch}" if args.torch else WEIGHTS
    # a 10^6-layer --out JSON took 41 s, with no line on the terminal: the files done, the one being written
    files = [f for f in (args.out, args.plot, args.hist, args.tensorboard) if f]
    with Progress("writing", total=len(files), unit="files") as progress:
        written = _write(args, stack, res, d, metadata("run", args, seed=args.seed, batch=args.batch, weights=weights,
                                                       threads=threads(res.backend), seconds=round(seconds, 3)),
                         progress)
        progress.count(len(written), note=args.tensorboard)
        written += model.write_tensorboard(args, d)
    from gradbench.report import format_report

    print(format_report(d, rows=args.rows))  # with --torch the header names the file: the params' origin
    print(f"  ({seconds:.1f} s, batch {args.batch}, seed {args.seed}; weights from {weights}"
          + ("" if args.torch else ", the same with or without --stats-only") + ")")
    for path in written:
        print(f"wrote {path}")
    return 0


def _write(args, stack, res, d, head: dict, progress) -> list[str]:
    """The result file first, then the plots; returns what was written (``progress`` counts them)."""
    written = []
    if args.out:
        progress.count(0, note=args.out)
        written.append(write_diagnoses(args.out, head, {"": d}, mkdir=args.mkdir))
    if args.plot or args.hist:
        from gradbench import plot  # matplotlib only when a plot is asked for (~0.19 s to import)
    if args.plot:
        progress.count(len(written), note=args.plot)
        written.append(write_plot(args.plot, lambda path: plot.gradient_flow(
            {stack_label(stack): d}, path, title=f"Gradient flow, depth {stack.depth}", dpi=args.dpi), mkdir=args.mkdir))
    if args.hist:
        progress.count(len(written), note=args.hist)
        written.append(write_plot(args.hist, lambda path: plot.histogram_heatmap(
            res, path, verdict=d.verdict, dpi=args.dpi), mkdir=args.mkdir))
    return written
