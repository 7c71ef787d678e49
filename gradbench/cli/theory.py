"""``gradbench theory``: mean-field and Lyapunov predictions, optionally against a simulation."""

from __future__ import annotations

import math
import time

import numpy as np

from gradbench.cli.common import (
    BACKEND_CHOICES, WEIGHTS, UsageError, add_output_args, add_parser, finite_float, given, nonneg_float, option,
    plan_probe, positive_float, positive_int, refuse_unused, resolve_backend, run_probe, seed_int, stack_from_args,
)
from gradbench.cli.output import PLOTS, check_outputs, metadata, threads, write_json, write_plot
from gradbench import spec
from gradbench.report import index_runs
from gradbench.spec import ACTIVATIONS

EPILOG = """\
Mean field (Poole et al. 2016, Schoenholz et al. 2017) for W ~ N(0, sigma_w^2/N), b ~ N(0, sigma_b^2):
the fixed point q*, chi_1 (the per-layer factor of ||dL/dh||^2), the decades per layer, the depth scale
and the critical sigma_w at this sigma_b; for identity stacks Newman's top Lyapunov exponent at --width.
The length map starts where the stack does: at its first pre-activation's variance
q0 = sigma_w^2 E[x^2] + sigma_b^2 with the standard normal input (E[x^2] = 1). Where that start decides
the result it is printed: zero-bias GELU and swish for 1.414 < sigma_w < 2 (and small sigma_b) have two
attractors, lengths dying out (vanishing) and growing without bound (exploding), and the point between them.
With --depth and --width the prediction is also taken layer by layer, chi_1 at each layer's own length q_l
(it differs where the lengths have not reached q*, or never do: ELU at the He gain, q* = inf), and a
simulated stack is run and its fitted slope compared with that.
In --out, quantities that are infinite or undefined (q* or the depth scale at the critical point) are
written as "inf" and "nan", as in every gradbench file (docs/formats.md).

examples:
  gradbench theory --activation tanh --sigma-w 1.5 --sigma-b 0.1
  gradbench theory --activation sigmoid --sigma-w 1 --depth 2000 --width 128 --plot theory.png
  gradbench theory --activation identity --sigma-w 1 --width 4 --depth 100000
recurrent nets: gradbench theory --cell rnn (options: gradbench theory --cell rnn --help)
"""

SIMULATION_OPTIONS = ("batch", "seed", "backend", "plot")


def register(sub):
    p = add_parser(sub, "theory", help="mean-field and Lyapunov predictions, optionally against a simulation",
                   epilog=EPILOG)
    g = p.add_argument_group("the stack")
    g.add_argument("--activation", default="tanh", metavar="NAME", help=f"one of {', '.join(ACTIVATIONS)}")
    g.add_argument("--activation-param", type=finite_float, default=None, metavar="X",
                   help="leaky-ReLU slope, initial PReLU slope or ELU alpha (default: 0.01, 0.25, 1)")
    g.add_argument("--sigma-w", type=positive_float, default=1.0, metavar="X",
                   help="weight gain (variance sigma_w^2 / N): any finite number > 0; a simulation (--depth) draws "
                        "float64 weights, which hold 1e-290 <= sigma_w <= 1e290")
    g.add_argument("--sigma-b", type=nonneg_float, default=0.0, metavar="X",
                   help="bias standard deviation: any finite number >= 0; a simulation (--depth) draws float64 "
                        "biases, which hold 0 and 1e-290 <= sigma_b <= 1e290")
    s = p.add_argument_group("simulation (with --depth and --width)")
    s.add_argument("--depth", type=positive_int, default=None, help="simulate a stack of this depth (default: none)")
    s.add_argument("--width", type=positive_int, default=None,
                   help="width of the simulated stack, and of Newman's exponent for identity (default: none)")
    s.add_argument("--batch", type=positive_int, default=16, help="batch size of the simulation")
    s.add_argument("--seed", type=seed_int, default=0, help="seed of the simulation")
    s.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="auto picks the fastest available")
    o = p.add_argument_group("output")
    o.add_argument("--plot", metavar="FILE", help="write simulated vs predicted log10 ||dL/dh_l|| (default: none)")
    o.add_argument("--out", metavar="FILE", help="write the predictions (and the fitted slope) as .json (default: none)")
    add_output_args(p)
    p.set_defaults(func=cmd_theory)
    return p


def check_args(args):
    """Every combination refused before any work; returns the simulated stack or None."""
    if args.depth is not None and args.width is None:
        raise UsageError("--depth needs --width to simulate a stack")
    if args.depth is None:
        unused = given(args, *SIMULATION_OPTIONS)
        if unused:
            raise UsageError(f"{', '.join(map(option, unused))} need{'s' if len(unused) == 1 else ''} a simulation: give --depth and --width")
        if args.width is not None and not (args.activation in spec.HOMOGENEOUS and args.sigma_b == 0):
            raise UsageError("--width without --depth is used only by the exact finite-width rates: --activation "
                             "identity (Newman's exponent), relu, leaky_relu or prelu, with --sigma-b 0")
        # the prediction alone draws no weights: any sigma_w > 0 and sigma_b >= 0 (the theory's range)
        stack_from_args(_stack_options(args), gain_capped=False, depth=1, width=1, init="normal", sigma_w=None,
                        sigma_b=0.0)
        return None
    return stack_from_args(_stack_options(args), gain_capped=False, depth=args.depth, width=args.width, init="normal")


def _stack_options(args):
    """The stack fields of a theory command (the rest at the Stack's defaults)."""
    import argparse
    from dataclasses import asdict

    from gradbench.spec import Stack

    fields = asdict(Stack(depth=1, width=1))
    fields.update(activation=args.activation, activation_param=args.activation_param, sigma_w=args.sigma_w,
                  sigma_b=args.sigma_b)
    return argparse.Namespace(**fields)


def _float(value: float, log10: float) -> str:
    """A mean-field number, as 10^x where it under- or overflows a float (sigma_w of 1e-200 or 1e200)."""
    if 0 < value < math.inf or not math.isfinite(log10):
        return f"{value:.6g}"
    return f"10^{log10:.6f}"


def _rate(v: float) -> str:
    """A rate in decades per layer for the terminal: 0 where it is rounding (+2.41e-17 at ReLU's
    critical gain), else 6 significant digits."""
    return "+0 (to rounding)" if abs(v) < 1e-12 else f"{v:+.6g}"


def predictions(args, fitted: np.ndarray | None = None) -> tuple[dict, list[str], float, np.ndarray | None]:
    """Mean field (and Newman for identity stacks): the JSON fields, the lines to print, the
    predicted decades per layer that a simulation is compared with (also in the JSON as
    ``prediction_decades_per_layer``) and, where it is chi_1 along the stack, the predicted
    log10 ||dL/dh_l|| (up to a constant) that a plot draws.

    ``fitted``: the layers the simulation's slope was fitted over (:func:`fitted_layers`), None
    when it has none; chi_1 along the stack is fitted over the same layers, else over
    :func:`fit_window`."""
    from gradbench import theory

    # from the first pre-activation's variance of the stack simulated (and of `gradbench run`, sweeps):
    # sigma_w^2 E[x^2] + sigma_b^2 with the standard normal input, E[x^2] = 1
    mf = theory.mean_field(args.activation, args.sigma_w, args.sigma_b, args.activation_param)
    two = theory.bistability(args.activation, args.sigma_w, args.sigma_b, args.activation_param)
    out = {"activation": args.activation, "activation_param": args.activation_param, "sigma_w": args.sigma_w,
           "sigma_b": args.sigma_b, "q0": mf.q0, "log10_q0": mf.log10_q0, "q_star": mf.q_star, "chi1": mf.chi1,
           "log10_q_star": mf.log10_q_star, "log10_chi1": mf.log10_chi1, "decades_per_layer": mf.decades_per_layer,
           "depth_scale": mf.depth_scale, "phase": mf.phase,
           "q_separatrix": two.q_separatrix if two else None, "bistability": two.explain(mf.q0) if two else None}
    lines = [f"mean field: {args.activation}, sigma_w = {args.sigma_w:g}, sigma_b = {args.sigma_b:g}"]
    if mf.depends_on_q0:
        lines.append(f"  start q0                {_float(mf.q0, mf.log10_q0)} = sigma_w^2 E[x^2] + sigma_b^2, the first "
                     "pre-activation's variance (standard normal input, E[x^2] = 1)")
    if two:
        lines.append(f"  bistable                {two.explain(mf.q0)}")
    unresolved = " (not resolved in float64: the map's ratio q_{l+1} / q_l is 1 to rounding around it)" \
        if math.isnan(mf.log10_q_star) else ""
    lines += [f"  fixed point q*          {_float(mf.q_star, mf.log10_q_star)}{unresolved}",
              f"  chi_1                   {_float(mf.chi1, mf.log10_chi1)}   ({mf.phase}{_limit_only(mf)})",
              f"  ||dL/dh|| per layer     " + (f"{_rate(mf.decades_per_layer)} decades going down the stack"
                                                 if not unresolved else "not predicted (chi_1 is not resolved)"),
              f"  depth scale             " + (f"{mf.depth_scale:.4g} layers (1 / |ln chi_1|)"
                                                 if not unresolved else "not predicted")]
    few = few_open_units(mf.open_fraction, args.width, mf.decades_per_layer)
    if few:
        out["open_fraction"] = mf.open_fraction
        lines.append(few)
    try:
        crit = theory.critical_sigma_w(args.activation, args.sigma_b, args.activation_param)
        out["critical_sigma_w"] = crit
        lines.append(f"  critical sigma_w        {crit:.6g} at sigma_b = {args.sigma_b:g} (sigma_w^2 = {crit * crit:.6g})")
    except ValueError as exc:
        out["critical_sigma_w"] = None
        lines.append(f"  critical sigma_w        none ({exc})")
    prediction, curve = mf.decades_per_layer, None
    if args.depth is not None:
        along = theory.along_stack(args.activation, args.depth, args.sigma_w, args.sigma_b, args.activation_param)
        lo, hi = fit_window(args.depth) if fitted is None else (int(fitted[0]), int(fitted[-1]) + 1)
        rate = along.fitted_rate(lo, hi)
        out["along_stack"] = {"decades_per_layer": rate, "fit_layers": [lo, hi - 1],
                              "log10_q": [float(v) for v in along.log10_q[[0, -1]]]}
        q_lo, q_hi = (round(float(v), 4) + 0.0 for v in along.log10_q[[0, -1]])
        lines.append(f"  {f'along {args.depth} layers':<23} {_rate(rate)} decades per layer going down: chi_1 at each "
                     f"layer's own q_l, fitted over layers {lo}-{hi - 1}"
                     + ("" if fitted is None else " as the simulation" if len(fitted) == hi - lo else
                        " (the span of the simulation's fitted layers; the simulation leaves out those between "
                        "whose signal is not finite and nonzero)")
                     + f" (q from 10^{q_lo:.4g} at layer 0 to 10^{q_hi:.4g} at the top)")
        if math.isfinite(rate):
            prediction, curve = rate, along.signal_log10()
    if args.activation == "identity" and args.width:
        lam = theory.newman_lambda1(args.width, args.sigma_w)
        prediction, curve = lam / math.log(10), None
        out["newman_lambda1"] = lam
        lines.append(f"  Newman lambda_1 (N={args.width})  {lam:+.6g} nats = {prediction:+.6g} decades per layer "
                     f"(finite-width exact for the forward ||h_l|| of linear Gaussian stacks; {BACKWARD_FOLLOWS})")
    elif args.activation in spec.HOMOGENEOUS and args.width and args.sigma_b == 0:
        lam = theory.finite_width_lambda1(args.activation, args.width, args.sigma_w, args.activation_param)
        prediction, curve = lam / math.log(10), None
        out["finite_width_lambda1"], out["finite_width_decades_per_layer"] = lam, prediction
        # relu's drift is taken given a live unit in every layer (theory.finite_width_lambda1):
        # a layer turns every unit off with probability 2^-N, and the chain is 0 from there
        units = "its unit" if args.width == 1 else f"all {args.width} units"
        live = (f", given that no layer turns {units} off for an input (each does with probability "
                f"2^-{args.width} = {2.0 ** -args.width:.3g}, and that input's chain is exactly 0 from there)"
                if args.activation == "relu" and args.width <= 20 else "")
        lines.append(f"  {f'at width {args.width}':<23} {prediction:+.6g} decades per layer going down ({lam:+.6g} nats): "
                     f"exact for the forward ||h_l|| (going up) of zero-bias Gaussian stacks of this width{live}; "
                     f"{BACKWARD_FOLLOWS}; mean field's 0.5 log10 chi_1 is its infinite-width limit")
    out["prediction_decades_per_layer"] = prediction
    return out, lines, prediction, curve


# The finite-width rates are exact for the forward pass; the backward signal runs through the same
# weights, whose rows the forward's signs select, and follows them only as far as they act as
# fresh (mean field's assumption): ReLU at the He gain, width 256, depth 240, batch 1, 150 seeds,
# slopes over layers 24-215: ||h_l|| -0.00242 +- 0.00020 (1.5 SEM from the exact -0.00213) and
# ||dL/dh_l|| -0.00048 +- 0.00017 (9.7 SEM); a batch of 16's norm sits higher still (30 seeds:
# -0.00040 +- 0.00027). At width 32 (60 seeds) ||dL/dh_l|| reads -0.0175 +- 0.0009 against -0.0179.
BACKWARD_FOLLOWS = ("the backward ||dL/dh_l|| (going down) follows it as far as its weights act as independent of "
                    "the forward's, as mean field assumes (they are the same weights)")


# Where fewer than 1 unit in 100 is open, a layer with fewer open units than this (at the width
# given) gets the line of few_open_units: mean field is a poor guide there
# (tanh at sigma_w = 100, width 256: 1.8 open units, +0.714 simulated against +0.864; at sigma_w =
# 1000, width 64: 0.045, -11.6 against +1.36).
FEW_OPEN = 10.0


def few_open_units(p: float, width: int | None, rate: float, where: str = "a layer's", what: str = "a stack's",
                   size: str = "width") -> str:
    """The line that says mean field needs more open units than a layer (``where``: "the
    state's" for a recurrent net, ``what`` "a net's", ``size`` "hidden size") of ``width`` has
    (:func:`gradbench.theory.open_fraction` ``p``), or "" where it has enough. ``rate``: mean
    field's decades per layer, which a narrower stack's falls below (to the other sign only where
    it is positive)."""
    if not p < 1.0 / 100:  # NaN (not tanh or sigmoid) or at least 1 unit in 100 open
        return ""
    need = f"mean field needs a {size} well above 1 / {p:.3g} = {1 / p:.3g}"
    flip = rate > 0
    if width is None:
        return (f"  open units              {p:.3g} of the units at q* (|phi'| at least half its largest): chi_1 is an "
                f"average that its few open units dominate, and {need}; narrower, {what} rate falls below mean "
                f"field's{', to the other sign where few are open' if flip else ''} (--depth and --width simulate one)")
    if width * p >= FEW_OPEN:
        return ""
    return (f"  open units              {width * p:.3g} of {where} {width} at q* (|phi'| at least half its largest: "
            f"probability {p:.3g}): chi_1 is an average that the open units dominate, and {need}; at {size} {width} "
            f"{what} rate falls below mean field's{', even to the other sign' if flip else ''}")


def _limit_only(mf) -> str:
    """Where chi_1 = 1 holds only at q* = inf, which lengths growing without bound never reach."""
    if mf.phase != "critical" or mf.log10_q_star != math.inf:
        return ""
    return "; only in the limit q -> inf, which the lengths approach without bound: --depth gives chi_1 along a stack"


def fit_window(depth: int) -> tuple[int, int]:
    """The layers [lo, hi) a simulation's slope is fitted over: without the first and last
    tenth (at most 50 layers each), where the length map has not converged yet."""
    skip = min(depth // 10, 50)
    return (skip, depth - skip) if depth > 4 * skip + 2 else (0, depth)


MIN_FIT = 3  # layers with a finite, nonzero signal a slope is fitted through (two fix any line)


def fitted_layers(s: np.ndarray, depth: int) -> np.ndarray:
    """The layers a simulation's slope is fitted over: those of :func:`fit_window` whose
    log10 ||dL/dh_l|| ``s`` is finite (exactly 0 or NaN/inf has no place on a log scale); an
    empty array when fewer than :data:`MIN_FIT` are."""
    lo, hi = fit_window(depth)
    used = lo + np.flatnonzero(np.isfinite(s[lo:hi]))
    return used if used.size >= MIN_FIT else used[:0]


def layer_ranges(layers) -> str:
    """'0-21' or '3, 7-9' for sorted layer indices."""
    return ", ".join(index_runs(layers))


def simulate(args, stack):
    """Run the planned stack; returns its Result."""
    backend = resolve_backend(args.backend)
    res, _ = run_probe(plan_probe(stack, args.batch, args.seed, backend))
    return res


def fit_line(args, res, fitted: np.ndarray, prediction: float, out: dict) -> str:
    """Fit the simulation's slope over the layers ``fitted`` (:func:`fitted_layers`) and say it,
    with the layers whose signal is exactly 0 or not finite; the slope and its standard error
    (:func:`gradbench.theory.walk_slope_se`) go into ``out``."""
    from gradbench import theory
    from gradbench.verdict import floored_layers

    s = res.signal_norm.log10()
    zero, nonfinite = np.flatnonzero(s == -math.inf), np.flatnonzero(np.isnan(s) | (s == math.inf))
    # zeros below a layer whose every unit's phi' lies past 2^(-2^62): not 0, beyond any int64 exponent
    floor = np.flatnonzero(floored_layers(args.activation, res.grad_norm.log10(), res.saturation, res.act_std.log10()))
    beyond = (f", though not 0: every unit of layer {floor.max()} is saturated, its {args.activation}' below "
              "2^(-2^62), which no int64 exponent holds" if floor.size else "")
    zero_words = "reads 0" if floor.size else "is exactly 0"
    off = "".join(f"; ||dL/dh_l|| {what} at layers {layer_ranges(ls)}{more}" for what, ls, more in
                  ((zero_words, zero, beyond), ("is not finite (NaN or inf)", nonfinite, "")) if ls.size)
    if not fitted.size:
        # the dead layer that stops the signal, not the lowest dead one: a dead layer l zeroes dL/dh_{l-1}
        # and all below, so the one above the top zero layer m; a dead top layer (output 0) its own signal too
        dead = np.asarray(res.dead) >= 1
        m = int(zero.max()) if zero.size else -1
        cause = [l for l in (m + 1, m) if zero.size and l < len(dead) and dead[l]][:1]
        why = (f": every unit of layer {cause[0]} is dead (z <= 0 for the whole batch), so the signal is exactly 0 "
               f"from layer {m} down" if cause else
               f": the signal {zero_words} from layer {zero.max()} down{beyond}" if zero.size else "")
        first = int(np.flatnonzero(dead)[0]) if dead.any() else None
        with np.errstate(divide="ignore"):
            std = np.asarray(res.act_std.log10(), dtype=np.float64)
        if cause and first is not None and first < cause[0] and np.all(std[first:] == -np.inf):
            # the forward died first: h = 0 from that layer up, so every layer above is dead on it
            why += (f"; the forward pass died first: every unit of layer {first} is dead, so the activations are "
                    f"exactly 0 from layer {first} up and every layer above it is dead too")
        if nonfinite.size:
            why += f"; ||dL/dh_l|| is not finite (NaN or inf) at layers {layer_ranges(nonfinite)}"
            f = res.first_nonfinite_forward
            if f is not None:  # the cause: the forward overflowed first
                why += (f", the forward pass having turned non-finite at layer {f}" +
                        (f" (a {res.stack.activation} stack with biases is not rescaled: its activations overflow "
                         f"as plain {res.stack.dtype}'s do)" if res.stack.sigma_b and not res.forward_rescaled else ""))
        lo, hi = fit_window(args.depth)
        return (f"simulated ({args.depth} layers): too few layers with a finite, nonzero signal to fit a slope{why} "
                f"({MIN_FIT} are needed, of layers {lo}-{hi - 1})")
    slope = -float(np.polyfit(fitted, s[fitted], 1)[0])
    se = theory.walk_slope_se(fitted, s[fitted])
    out["simulated_decades_per_layer"] = slope
    out["simulated_decades_per_layer_se"] = se
    # one seed's slope: a finite-width signal is a random walk, so say how far another seed's lies
    pm = f" +- {se:.2g} (one seed's: the standard error of a random walk's slope)" if math.isfinite(se) else ""
    versus = f"prediction {_rate(prediction)}" if math.isfinite(prediction) else "no prediction: q* is not resolved"
    if "open_fraction" in out:
        versus += "; mean field is the infinite-width limit, and this width has few open units (above)"
    elif "finite_width_lambda1" not in out and "newman_lambda1" not in out:
        versus += f"; mean field is the infinite-width limit: at width {args.width} a stack's rate differs by O(1 / N) a layer"
    return (f"simulated ({args.depth} layers, width {args.width}, batch {args.batch}, {res.backend}): "
            f"{slope:+.6g} decades per layer going down{pm}, fitted over layers {layer_ranges(fitted)} ({versus}){off}")


def cmd_theory(args) -> int:
    t0 = time.perf_counter()
    stack = check_args(args)
    refuse_unused(args, [args.plot], [args.out, args.plot])
    check_outputs([("--out", args.out, (".json",)), ("--plot", args.plot, PLOTS)], mkdir=args.mkdir)
    res = fitted = None
    if stack is not None:
        res = simulate(args, stack)
        fitted = fitted_layers(res.signal_norm.log10(), args.depth)
    out, lines, prediction, curve = predictions(args, fitted if fitted is not None and fitted.size else None)
    if res is not None:
        lines.append(fit_line(args, res, fitted, prediction, out))
    written = []
    if args.out:
        sim = dict(seed=args.seed, batch=args.batch, weights=WEIGHTS, threads=threads(res.backend)) if res else {}
        head = metadata("theory", args, seconds=round(time.perf_counter() - t0, 3), **sim)
        written.append(write_json(args.out, {**head, **out}, mkdir=args.mkdir))
    if args.plot:
        from gradbench import plot

        def draw(path):
            window = (int(fitted[0]), int(fitted[-1]) + 1) if fitted.size else None  # no fit: placed over every layer
            return plot.theory_vs_simulation(res, prediction, path, dpi=args.dpi, curve=curve, window=window)

        written.append(write_plot(args.plot, draw, mkdir=args.mkdir))
    print("\n".join(lines))
    for path in written:
        print(f"wrote {path}")
    return 0
