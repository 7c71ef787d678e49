"""``gradbench run``: one stack, forward and exact backward, the diagnosis, files and plots."""

from __future__ import annotations

import json
import time

from gradbench import _atomic
from gradbench.cli.common import (
    Spinner, add_parser, add_probe_args, add_stack_args, check_json_path, check_plot_path, payload,
    resolve_backend, run_stack, stack_from_args, stack_label,
)

EPILOG = """\
examples:
  gradbench run --depth 50 --width 64 --activation sigmoid
  gradbench run --depth 100000 --width 16 --activation sigmoid --out deep.json
  gradbench run --depth 30 --width 32 --activation relu --init he_normal --plot flow.png --hist hist.png
  gradbench run --depth 20 --width 16 --activation tanh --sigma-w 3 --clip norm --clip-on signal
  gradbench run --depth 1000000 --width 64 --batch 64 --activation tanh --init he_normal --stats-only --plot flow.png
"""


def register(sub) -> None:
    p = add_parser(sub, "run", help="one stack: forward, exact backward, diagnosis", epilog=EPILOG)
    add_stack_args(p)
    add_probe_args(p)
    p.add_argument("--out", help="write the diagnosis as JSON (e.g. result.json)")
    p.add_argument("--plot", help="write the gradient-flow plot (.png, .svg or .pdf)")
    p.add_argument("--hist", help="write the per-layer histogram heat map")
    p.add_argument("--rows", type=int, default=12, help="layers shown in the table (default 12)")
    p.add_argument("--stats-only", action="store_true",
                   help="generated weights (never stored) and per-layer statistics only: "
                        "for 10^5-10^6 layers, memory O(sqrt(L) B N)")
    p.add_argument("--checkpoint", type=int, default=None, metavar="K",
                   help="store every K-th activation and recompute the rest (0: never; "
                        "default: only when the plain run would not fit)")
    p.set_defaults(func=cmd_run)


def write_diagnosis_json(path: str, d) -> None:
    """The run's JSON: the payload head, then the diagnosis streamed in (10^6 layers fit)."""
    head = json.dumps(payload(command="run"))[:-1]

    def write(f):
        f.write(head + ', "diagnosis": ')
        d.write_json(f)
        f.write("}")

    _atomic.write_atomic(path, write)


def cmd_run(args) -> int:
    from gradbench import plot
    from gradbench.diagnose import diagnose
    from gradbench.report import format_report

    check_plot_path(args.plot)
    check_plot_path(args.hist)
    check_json_path(args.out)
    stack = stack_from_args(args)
    t0 = time.perf_counter()
    checkpoint = "auto" if args.checkpoint is None else (None if args.checkpoint == 0 else args.checkpoint)
    res, params = run_stack(stack, args.batch, args.seed, resolve_backend(args.backend),
                            stats_only=args.stats_only, checkpoint=checkpoint)
    with Spinner("diagnosing"):
        d = diagnose(res, None if args.stats_only else params, bins=args.bins)
    print(format_report(d, rows=args.rows))
    print(f"  ({time.perf_counter() - t0:.1f} s, batch {args.batch}, seed {args.seed})")
    if args.out:
        write_diagnosis_json(args.out, d)
        print(f"wrote {args.out}")
    if args.plot:
        plot.gradient_flow({stack_label(stack): d}, args.plot, title=f"Gradient flow, depth {stack.depth}")
        print(f"wrote {args.plot}")
    if args.hist:
        plot.histogram_heatmap(d, args.hist)
        print(f"wrote {args.hist}")
    return 0
