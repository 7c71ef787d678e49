"""``gradbench compare``: several activations / remedies of one base stack side by side.

The configuration registry (:func:`variants`) is shared with ``gradbench demo``.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict

import numpy as np

from gradbench.cli.common import (
    WEIGHTS, UsageError, add_output_args, add_parser, add_probe_args, add_stack_args, given, option, plan_probe,
    refuse_unused, refuse_unused_stack_options, resolve_backend, run_probe, split, stack_from_args,
)
from gradbench.cli.output import PLOTS, RESULTS, check_outputs, metadata, threads, write_diagnoses, write_plot
from gradbench.report import BN_EPS_DEFAULT, fmt_rate
from gradbench.spec import ACT_PARAM_DEFAULT, ACTIVATIONS, INIT_ALIASES, Stack, closest_hint, scheme_gain

EPILOG = """\
configurations: any activation name (sigmoid, tanh, relu, ...), sigmoid-xavier, relu-he, sigmoid-bn,
sigmoid-residual, tanh-xavier, tanh-clip, relu-clip. They change the activation or add a remedy to a
base stack whose init is N(0, 1) entries (normal with sigma_w = sqrt(width)) unless --init / --sigma-w say
otherwise (--init normal alone has the init's own sigma_w = 1: N(0, 1/width) entries; the header line says
which), with a bce head on seeded random labels (--loss sum_squares for the plain 0.5 ||h_L||^2 probe).

examples:
  gradbench compare --depth 50 --width 32
  gradbench compare --depth 100 --width 64 --activations sigmoid,tanh,relu,gelu --init xavier_normal
  gradbench compare --depth 40 --width 32 --configs relu,relu-he,relu-clip --plot flow.png --out cmp.json

A named remedy fixes the fields it names: sigmoid-xavier, tanh-xavier and relu-he their --init and
--sigma-w, sigmoid-bn --batch-norm, sigmoid-residual --residual (2, or 1 at an odd --depth, as its
label "sigmoid + residual/1 (odd depth)" says), tanh-clip and relu-clip --clip,
--clip-threshold and --clip-on. tanh-clip clips the backward signal dL/dh_l at every layer (--clip-on
signal), which torch has no counterpart of; relu-clip clips each layer's dL/dW_l (--clip-on layer);
torch's clip_grad_norm_ is --clip norm --clip-on global, which leaves the chain's norms as they are.
Giving one of those options with such a configuration is refused
(exit 2): use the plain activation instead (--configs relu --clip norm --clip-on layer
--clip-threshold 100). Every other stack option applies to every configuration, and the header
line of the table lists them.

Files key the configurations by their --configs name (docs/formats.md).
recurrent nets: gradbench compare --cells rnn,lstm,gru --steps 10000 (options: gradbench compare --cells rnn --help)
"""

# Variants of one base stack: name -> (label, changes). The base init of `compare` and `demo`
# is N(0, 1) entries (sigma_w = sqrt(width)): the naive init that the remedies fix.
# sigmoid-residual skips every 2 layers, or every layer at an odd depth (K must divide the
# depth; its label says so): `demo --depth 21` runs it rather than failing.
def variants(stack: Stack) -> dict[str, tuple[str, dict]]:
    k = 2 if stack.depth % 2 == 0 else 1
    v = {name: (f"{name}, base init", dict(activation=name)) for name in ACTIVATIONS}
    v.update({
        "sigmoid-xavier": ("sigmoid, Xavier init", dict(activation="sigmoid", init="xavier_normal", sigma_w=None)),
        "relu-he": ("relu + He init", dict(activation="relu", init="he_normal", sigma_w=None)),
        "sigmoid-bn": ("sigmoid + batch norm", dict(activation="sigmoid", batch_norm=True)),
        "sigmoid-residual": (f"sigmoid + residual/{k}" + ("" if k == 2 else " (odd depth)"),
                             dict(activation="sigmoid", residual=k)),
        "tanh-xavier": ("tanh + Xavier init", dict(activation="tanh", init="xavier_normal", sigma_w=None)),
        "tanh-clip": ("tanh + signal clip ||dL/dh_l|| <= 1",
                      dict(activation="tanh", clip="norm", clip_threshold=1.0, clip_on="signal")),
        "relu-clip": ("relu + clip ||dW_l|| <= 1",
                      dict(activation="relu", clip="norm", clip_threshold=1.0, clip_on="layer")),
    })
    return v


DEMO_CONFIGS = ("sigmoid", "tanh", "relu", "sigmoid-xavier", "relu-he", "sigmoid-bn", "sigmoid-residual",
                "tanh-xavier", "tanh-clip")


def add_configs_stack_args(p) -> None:
    """The base stack and probe options of the commands that run several configurations
    (compare, demo): depth 50, width 32, a bce head, the activation and init left to each
    configuration."""
    add_stack_args(p, depth=50, width=32, activation=None, init=None, loss="bce")
    add_probe_args(p)


def register(sub):
    p = add_parser(sub, "compare", help="several activations / remedies side by side at one depth", epilog=EPILOG)
    add_configs_stack_args(p)
    g = p.add_argument_group("configurations and output")
    g.add_argument("--configs", metavar="NAMES",
                   help=f"comma-separated configuration names (default: {','.join(DEMO_CONFIGS)})")
    g.add_argument("--activations", metavar="NAMES",
                   help="comma-separated activations under the base init (instead of --configs; default: none)")
    g.add_argument("--out", metavar="FILE", help="write every diagnosis: .json or .npz (default: none)")
    g.add_argument("--plot", metavar="FILE", help="write the gradient-flow plot of all configurations (default: none)")
    add_output_args(p)
    p.set_defaults(func=cmd_compare)
    return p


def config_names(args) -> list[str]:
    """The configurations that --configs or --activations name (the demo's by default)."""
    if args.activation is not None:
        raise UsageError(f"{args.command} takes --activations or --configs (several configurations), "
                         "not --activation")
    if getattr(args, "configs", None) is not None and getattr(args, "activations", None) is not None:
        raise UsageError("give --configs or --activations, not both")
    configs = getattr(args, "configs", None)
    text = configs if configs is not None else getattr(args, "activations", None)
    if text is None:
        return list(DEMO_CONFIGS)
    option = "--configs" if configs is not None else "--activations"
    if not text.replace(",", "").strip():  # "" ran the default set
        raise UsageError(f"{option} {text!r} names no configuration")
    names = split(text, option)
    if option == "--activations":
        bad = [n for n in names if n not in ACTIVATIONS]
        if bad:
            raise UsageError(f"--activations: {', '.join(bad)} is not an activation; choose from {', '.join(ACTIVATIONS)}")
    return names


def compare_table(diags: dict, layers: list[int]) -> str:
    """One row per configuration: verdict, the rates of ||dL/dh_l|| and ||dW_l|| (decades per
    layer going down; either can decide the verdict) and log10 ||dW_l|| at a few layers."""
    from gradbench.report import fmt_pow

    name_w = max(13, max(len(k) for k in diags))
    head = f"{'configuration':<{name_w}}  {'verdict':<9} {'dL/dh rate':>10} {'dW rate':>8}" + "".join(
        f" {'||dW_' + str(l) + '||':>11}" for l in layers) + "  plain float fails"
    lines = [head, "-" * len(head)]
    fails = {label: _float_failures(d) for label, d in diags.items()}
    for label, d in diags.items():
        # one layer has no slope (it read +0.000)
        sig, dw = (fmt_rate(v) if len(d.grad_log10) > 1 and math.isfinite(v) else "-"
                   for v in (d.signal_decades_per_layer, d.decades_per_layer))
        row = f"{label:<{name_w}}  {d.verdict:<9} {sig:>10} {dw:>8}"
        row += "".join(f" {fmt_pow(d.grad_log10[l]):>11}" for l in layers)
        row += "  " + fails[label]
        lines.append(row)
    lines.append("rates: decades per layer going down the stack (negative: shrinking towards the input); the "
                 "verdict follows the one that changes more over the stack")
    if any(f != "-" for f in fails.values()):
        lines.append("plain float fails: where a plain float32 (f32) or float64 (f64) run would fail: its forward "
                     "activations (fwd; over / under <=@l: by layer l at the latest), its loss, its gradient "
                     "||dW_l|| (the highest layer that under- or overflows; not known @l: a float64 gradient this "
                     "float32 run lost to its own flushed outputs or own overflow)")
    return "\n".join(lines)


def _float_failures(d) -> str:
    fails = []
    for name in ("float32", "float64"):
        lim = d.float_limits[name]
        short = name.replace("float", "f")
        # the forward first (a plain run fails there before any gradient), then the loss, then the backward
        if lim.get("forward_overflow_layer") is not None:
            fails.append(f"{short} fwd over <=@{lim['forward_overflow_layer']}")
        if lim.get("forward_underflow_layer") is not None:
            fails.append(f"{short} fwd under <=@{lim['forward_underflow_layer']}")
        if lim.get("loss_overflow"):
            fails.append(f"{short} loss over")
        if lim["underflow_layer"] is not None:
            fails.append(f"{short} under @{lim['underflow_layer']}")
        unknown = (lim.get("underflow_unknown_layers") or []) + (lim.get("overflow_unknown_layers") or [])
        if unknown:
            fails.append(f"{short} not known @{max(unknown)}")
        if lim["overflow_layer"] is not None:
            fails.append(f"{short} over @{lim['overflow_layer']}")
    return ", ".join(fails) if fails else "-"


def sample_layers(L: int, n: int = 5) -> list[int]:
    return sorted(set(np.linspace(0, L - 1, min(n, L)).round().astype(int).tolist()))


def _base_for_compare(args) -> dict:
    """Base init for compare/demo: N(0,1) entries unless --init or --sigma-w was given."""
    over = {}
    if args.init is None:
        over["init"] = "normal"
        if args.sigma_w is None:
            over["sigma_w"] = math.sqrt(args.width) if args.width and args.width > 0 else 1.0
    return over


def _fixed(changes: dict) -> list[str]:
    """The stack fields a configuration sets itself (its activation aside)."""
    return [f for f in changes if f not in ("activation", "activation_param")]


def _refuse_fixed_fields(args, names: list[str], table: dict) -> None:
    """An option that sets a field a named configuration fixes is refused (it would be ignored):
    the message names the option, the configuration and the plain-activation spelling that does
    what was asked."""
    default = getattr(args, "configs", None) is None and getattr(args, "activations", None) is None
    for name in names:
        changes = table[name][1]
        fixed = _fixed(changes)
        clash = given(args, *fixed)
        if not clash:
            continue
        where = " (one of the default configurations)" if default else ""
        typed = " ".join(_spell(f, getattr(args, f)) for f in clash)
        sets = " ".join(_spell(f, changes[f]) for f in fixed)
        wanted = {**{f: changes[f] for f in fixed}, **{f: getattr(args, f) for f in clash}}
        instead = " ".join(_spell(f, v) for f, v in wanted.items() if v is not None and _spell(f, v))
        raise UsageError(f"{typed}: configuration {name}{where} sets {sets} itself and takes no "
                         f"{', '.join(map(option, clash))}; drop {'them' if len(clash) > 1 else 'it'}, "
                         "or name the plain activation: --configs "
                         f"{changes['activation']} {instead}")


def _spell(field: str, value) -> str:
    """A stack field's value as its command-line option ('' for a value that is the default)."""
    if value is None:
        return "(the init's own --sigma-w)" if field == "sigma_w" else ""
    if isinstance(value, bool):
        return option(field) if value else ""
    return f"{option(field)} {value:g}" if isinstance(value, float) else f"{option(field)} {value}"


def configurations(args, names: list[str]) -> dict[str, tuple[str, Stack]]:
    """name -> (label, stack) of every configuration, validated before anything runs."""
    base = stack_from_args(args, activation="sigmoid", activation_param=None, **_base_for_compare(args))
    table = variants(base)
    unknown = [n for n in names if n not in table]
    if unknown:
        hints = closest_hint(unknown[0], table) if len(unknown) == 1 else "".join(
            f"; {n}: {h.removeprefix('; ')}" for n in unknown if (h := closest_hint(n, table)))
        raise UsageError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(table)}{hints}")
    _refuse_fixed_fields(args, names, table)
    out = {}
    for name in names:
        label, changes = table[name]
        if args.activation_param is not None and changes["activation"] in ACT_PARAM_DEFAULT:
            changes = dict(changes, activation_param=args.activation_param)
        out[name] = (label, stack_from_args(args, **{**asdict(base), **changes}))
    if args.activation_param is not None and all(s.activation_param is None for _, s in out.values()):
        raise UsageError(f"--activation-param is used by {', '.join(ACT_PARAM_DEFAULT)}, and none of the "
                         "configurations has one of them")
    refuse_unused_stack_options(args, [s for _, s in out.values()], several=True)
    return out


def compare_stacks(args, names: list[str], backend: str, relative: dict | None = None) -> tuple[dict, dict]:
    """Plan every configuration (all refusals before any run), then run them on ``backend``.

    Returns (name -> Diagnosis, name -> label); ``relative`` (a dict) receives name ->
    :class:`~gradbench.histograms.RelativeHistograms` of each run, for plots.
    """
    from tqdm.auto import tqdm

    from gradbench import plan
    from gradbench.diagnose import diagnose
    from gradbench.histograms import RelativeHistograms

    configs = configurations(args, names)
    available = plan.available_memory()
    probes = {name: plan_probe(stack, args.batch, args.seed, backend, bins=args.bins, available=available, label=name)
              for name, (_, stack) in configs.items()}
    diags = {}
    for name in tqdm(names, desc="configurations", unit="config", leave=False, disable=None):
        res, params = run_probe(probes[name])
        diags[name] = diagnose(res, params, bins=args.bins)
        if relative is not None:
            relative[name] = RelativeHistograms.from_result(res)
    return diags, {name: label for name, (label, _) in configs.items()}


def describe_base(args) -> str:
    """The base stack in words: its size, its init with the sigma_w it uses, and the options that
    every configuration gets. ``--init normal`` alone is the init's own gain (sigma_w = 1,
    N(0, 1/width) entries), not the default base's sqrt(width): the header says which."""
    return (f"depth {args.depth}, width {args.width}, batch {args.batch}, base init {base_init(args)}"
            + "".join(", " + part for part in common_options(args)))


def base_init(args) -> str:
    """The base init and the sigma_w it uses, in words."""
    over = _base_for_compare(args)
    if "sigma_w" in over:
        return f"normal, sigma_w = sqrt({args.width}): N(0, 1) entries"
    init = INIT_ALIASES.get(over.get("init", args.init), over.get("init", args.init))
    if args.sigma_w is not None:
        return f"{init}, sigma_w = {args.sigma_w:g}"
    own = "sqrt(2)" if scheme_gain(init) != 1.0 else "1"
    return f"{init}, sigma_w = {own} (the init's own, not the default base's sqrt({args.width}))"


def common_options(args) -> list[str]:
    """The stack options besides size and init that apply to every configuration (unless it fixes
    them itself, see _refuse_fixed_fields), in words."""
    parts = []
    eps = "" if args.bn_eps == BN_EPS_DEFAULT else f"eps {args.bn_eps:g}"
    if args.batch_norm:
        parts.append("batch norm" + (f" ({eps})" if eps else ""))
    elif eps:  # for the configurations with batch norm of their own (sigmoid-bn)
        parts.append(f"batch norm {eps}")
    if args.residual:
        parts.append(f"residual every {args.residual}"
                     + (f" (scale {args.residual_scale:g})" if args.residual_scale != 1.0 else ""))
    elif given(args, "residual_scale"):
        parts.append(f"residual scale {args.residual_scale:g}")
    if args.clip:
        parts.append(f"clip {args.clip} {args.clip_threshold:g} on {args.clip_on}")
    if args.sigma_b:
        parts.append(f"sigma_b={args.sigma_b:g}")
    if args.activation_param is not None:
        parts.append(f"activation param {args.activation_param:g} (for {', '.join(ACT_PARAM_DEFAULT)} only)")
    if args.input_dim is not None:
        parts.append(f"input dim {args.input_dim}")
    if args.output_dim != 1:
        parts.append(f"output dim {args.output_dim}")
    if args.dtype != "float64":
        parts.append(args.dtype)
    return parts


def print_comparison(args, diags: dict, labels: dict) -> None:
    """The table of gradient norms and each configuration's verdict in words."""
    shown = {labels[k]: d for k, d in diags.items()}
    print(f"gradient norms per layer ({describe_base(args)}; loss {args.loss}, seed {args.seed}; weights from {WEIGHTS})")
    print(compare_table(shown, sample_layers(args.depth)))
    print()
    for label, d in shown.items():
        text = textwrap.fill(d.explanation, 100, initial_indent="    ", subsequent_indent="    ")
        print(f"  {label}: {d.verdict.upper()}\n{text}")


def cmd_compare(args) -> int:
    import time

    t0 = time.perf_counter()
    names = config_names(args)
    refuse_unused(args, [args.plot], [args.out, args.plot])
    check_outputs([("--out", args.out, RESULTS), ("--plot", args.plot, PLOTS)], mkdir=args.mkdir)
    backend = resolve_backend(args.backend)
    diags, labels = compare_stacks(args, names, backend)
    written = []
    if args.out:
        head = metadata("compare", args, seed=args.seed, batch=args.batch, weights=WEIGHTS, threads=threads(backend),
                        seconds=round(time.perf_counter() - t0, 3), labels=labels)
        written.append(write_diagnoses(args.out, head, diags, key="configurations", mkdir=args.mkdir))
    if args.plot:
        from gradbench import plot  # matplotlib only when a plot is asked for

        written.append(write_plot(args.plot, lambda path: plot.gradient_flow(
            {labels[k]: d for k, d in diags.items()}, path,
            title=f"Gradient flow, depth {args.depth}, width {args.width}", dpi=args.dpi), mkdir=args.mkdir))
    print_comparison(args, diags, labels)
    for path in written:
        print(f"wrote {path}")
    return 0
