"""``gradbench theory``: mean-field and Lyapunov predictions, optionally against a simulation."""

from __future__ import annotations

import json
import math

import numpy as np

from gradbench.cli.common import (
    BACKEND_CHOICES, UsageError, add_parser, check_json_path, check_plot_path, payload, resolve_backend,
    run_stack, write_atomic,
)
from gradbench.spec import ACTIVATIONS, Stack

EPILOG = """\
Mean field (Poole et al. 2016, Schoenholz et al. 2017) for W ~ N(0, sigma_w^2/N), b ~ N(0, sigma_b^2):
the fixed point q*, chi_1 (the per-layer factor of ||dL/dh||^2), the decades per layer, the depth scale
and the critical sigma_w at this sigma_b; for identity stacks Newman's top Lyapunov exponent at --width.
With --depth and --width a simulated stack is run and its fitted slope compared with the prediction.

examples:
  gradbench theory --activation tanh --sigma-w 1.5 --sigma-b 0.1
  gradbench theory --activation sigmoid --sigma-w 1 --depth 2000 --width 128 --plot theory.png
  gradbench theory --activation identity --sigma-w 1 --width 4 --depth 100000
"""


def register(sub) -> None:
    p = add_parser(sub, "theory", help="mean-field and Lyapunov predictions, optionally against a simulation",
                   epilog=EPILOG)
    p.add_argument("--activation", default="tanh", metavar="NAME", help=f"one of {', '.join(ACTIVATIONS)}")
    p.add_argument("--activation-param", type=float, default=None)
    p.add_argument("--sigma-w", type=float, default=1.0, help="weight gain (variance sigma_w^2 / N)")
    p.add_argument("--sigma-b", type=float, default=0.0, help="bias standard deviation")
    p.add_argument("--depth", type=int, default=None, help="simulate a stack of this depth")
    p.add_argument("--width", type=int, default=None, help="width of the simulated stack")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    p.add_argument("--plot", help="write simulated vs predicted log10 ||dL/dh_l|| (.png, .svg, .pdf)")
    p.add_argument("--out", help="write the predictions (and the fitted slope) as JSON")
    p.set_defaults(func=cmd_theory)


def predictions(args) -> tuple[dict, float]:
    """Mean field (and Newman for identity stacks), printed; returns the JSON fields and the
    predicted decades per layer that a simulation is compared with."""
    from gradbench import theory

    mf = theory.mean_field(args.activation, args.sigma_w, args.sigma_b, args.activation_param)
    out = {"activation": args.activation, "sigma_w": args.sigma_w, "sigma_b": args.sigma_b,
           "q_star": mf.q_star, "chi1": mf.chi1, "decades_per_layer": mf.decades_per_layer,
           "depth_scale": mf.depth_scale, "phase": mf.phase}
    print(f"mean field: {args.activation}, sigma_w = {args.sigma_w:g}, sigma_b = {args.sigma_b:g}")
    print(f"  fixed point q*          {mf.q_star:.6g}")
    print(f"  chi_1                   {mf.chi1:.6g}   ({mf.phase})")
    print(f"  ||dL/dh|| per layer     {mf.decades_per_layer:+.6g} decades going down the stack")
    print(f"  depth scale             {mf.depth_scale:.4g} layers (1 / |ln chi_1|)")
    try:
        crit = theory.critical_sigma_w(args.activation, args.sigma_b, args.activation_param)
        out["critical_sigma_w"] = crit
        print(f"  critical sigma_w        {crit:.6g} at sigma_b = {args.sigma_b:g} (sigma_w^2 = {crit * crit:.6g})")
    except ValueError as exc:
        print(f"  critical sigma_w        none ({exc})")
    prediction = mf.decades_per_layer
    if args.activation == "identity" and args.width:
        lam = theory.newman_lambda1(args.width, args.sigma_w)
        prediction = lam / math.log(10)
        out["newman_lambda1"] = lam
        print(f"  Newman lambda_1 (N={args.width})  {lam:+.6g} nats = {prediction:+.6g} decades per layer "
              "(finite-width exact for linear Gaussian stacks)")
    return out, prediction


def simulate(args, prediction: float, out: dict):
    """Run the stack of --depth and --width and fit its slope; returns the Result."""
    stack = Stack(depth=args.depth, width=args.width, activation=args.activation,
                  activation_param=args.activation_param, init="normal", sigma_w=args.sigma_w,
                  sigma_b=args.sigma_b)
    res, _ = run_stack(stack, args.batch, args.seed, resolve_backend(args.backend))
    s = res.signal_norm.log10()
    skip = min(args.depth // 10, 50)  # the length map converges first
    part = s[skip : args.depth - skip] if args.depth > 4 * skip + 2 else s
    ok = np.isfinite(part)
    if ok.sum() >= 2:
        slope = -float(np.polyfit(np.flatnonzero(ok), part[ok], 1)[0])
        out["simulated_decades_per_layer"] = slope
        print(f"simulated ({args.depth} layers, width {args.width}, batch {args.batch}, {res.backend}): "
              f"{slope:+.6g} decades per layer going down (prediction {prediction:+.6g})")
    return res


def cmd_theory(args) -> int:
    check_plot_path(args.plot)
    check_json_path(args.out)
    if (args.depth is None) != (args.width is None) and args.depth is not None:
        raise UsageError("--depth needs --width (and the other way round) to simulate a stack")
    if args.plot and args.depth is None:
        raise UsageError("--plot needs a simulation: give --depth and --width")
    out, prediction = predictions(args)
    if args.depth is not None:
        res = simulate(args, prediction, out)
        if args.plot:
            from gradbench import plot

            plot.theory_vs_simulation(res, prediction, args.plot)
            print(f"wrote {args.plot}")
    if args.out:
        write_atomic(args.out, json.dumps(payload(command="theory", **out), allow_nan=False))
        print(f"wrote {args.out}")
    return 0
