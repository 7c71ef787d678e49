"""``gradbench compare``: several activations / remedies of one base stack side by side.

The configuration registry (:func:`variants`) is shared with ``gradbench demo``.
"""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np

from gradbench.cli.common import (
    UsageError, add_parser, add_probe_args, add_stack_args, check_json_path, check_plot_path, payload,
    resolve_backend, run_stack, split, stack_from_args, write_atomic,
)
from gradbench.spec import ACTIVATIONS, Stack

EPILOG = """\
configurations: any activation name (sigmoid, tanh, relu, ...), sigmoid-xavier, relu-he, sigmoid-bn,
sigmoid-residual, tanh-xavier, tanh-clip, relu-clip. They change the activation or add a remedy to a
base stack whose init is N(0, 1) entries (sigma_w = sqrt(width)) unless --init / --sigma-w say otherwise,
with a bce head on seeded random labels (--loss sum_squares for the plain 0.5 ||h_L||^2 probe).

examples:
  gradbench compare --depth 50 --width 32
  gradbench compare --depth 100 --width 64 --activations sigmoid,tanh,relu,gelu --init xavier_normal
  gradbench compare --depth 40 --width 32 --configs relu,relu-he,relu-clip --plot flow.png --out cmp.json
"""

# Variants of one base stack: name -> (label, changes). The base init of `compare` and `demo`
# is N(0, 1) entries (sigma_w = sqrt(width)): the naive init that the remedies fix.
def variants(stack: Stack) -> dict[str, tuple[str, dict]]:
    k = 2 if stack.depth % 2 == 0 else 1
    v = {name: (f"{name}, base init", dict(activation=name)) for name in ACTIVATIONS}
    v.update({
        "sigmoid-xavier": ("sigmoid, Xavier init", dict(activation="sigmoid", init="xavier_normal", sigma_w=None)),
        "relu-he": ("relu + He init", dict(activation="relu", init="he_normal", sigma_w=None)),
        "sigmoid-bn": ("sigmoid + batch norm", dict(activation="sigmoid", batch_norm=True)),
        "sigmoid-residual": (f"sigmoid + residual/{k}", dict(activation="sigmoid", residual=k)),
        "tanh-xavier": ("tanh + Xavier init", dict(activation="tanh", init="xavier_normal", sigma_w=None)),
        "tanh-clip": ("tanh + clip ||dh|| <= 1",
                      dict(activation="tanh", clip="norm", clip_threshold=1.0, clip_on="signal")),
        "relu-clip": ("relu + clip ||dW_l|| <= 1",
                      dict(activation="relu", clip="norm", clip_threshold=1.0, clip_on="layer")),
    })
    return v


DEMO_CONFIGS = ("sigmoid", "tanh", "relu", "sigmoid-xavier", "relu-he", "sigmoid-bn", "sigmoid-residual",
                "tanh-xavier", "tanh-clip")


def register(sub) -> None:
    p = add_parser(sub, "compare", help="several activations / remedies side by side at one depth", epilog=EPILOG)
    add_stack_args(p, depth=50, width=32, init=None, loss="bce")
    add_probe_args(p)
    p.add_argument("--configs", help="comma-separated configuration names (default: the demo's)")
    p.add_argument("--activations", help="comma-separated activations under the base init")
    p.add_argument("--out", help="write every diagnosis as JSON")
    p.add_argument("--plot", help="write the gradient-flow plot of all configurations")
    p.set_defaults(func=cmd_compare)


def compare_table(diags: dict, layers: list[int]) -> str:
    """One row per configuration: verdict, slope and log10 ||dW_l|| at a few layers."""
    from gradbench.report import fmt_pow

    name_w = max(13, max(len(k) for k in diags))
    head = f"{'configuration':<{name_w}}  {'verdict':<9} {'dec/layer':>9}" + "".join(
        f" {'||dW_' + str(l) + '||':>11}" for l in layers) + "  plain float fails"
    lines = [head, "-" * len(head)]
    for label, d in diags.items():
        row = f"{label:<{name_w}}  {d.verdict:<9} {d.decades_per_layer:>+9.3f}"
        row += "".join(f" {fmt_pow(d.grad_log10[l]):>11}" for l in layers)
        row += "  " + _float_failures(d)
        lines.append(row)
    return "\n".join(lines)


def _float_failures(d) -> str:
    fails = []
    for name in ("float32", "float64"):
        lim = d.float_limits[name]
        short = name.replace("float", "f")
        if lim["underflow_layer"] is not None:
            fails.append(f"{short} under @{lim['underflow_layer']}")
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


def compare_stacks(args, names: list[str], backend: str) -> dict:
    """Run every configuration ``names`` on the concrete ``backend``; label -> Diagnosis."""
    from tqdm.auto import tqdm

    from gradbench.diagnose import diagnose

    base = stack_from_args(args, activation="sigmoid", **_base_for_compare(args))
    table = variants(base)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UsageError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    diags = {}
    for name in tqdm(names, desc="configurations", unit="config", leave=False, disable=None):
        label, changes = table[name]
        stack = base.replace(**changes)
        res, params = run_stack(stack, args.batch, args.seed, backend, label=name)
        diags[label] = diagnose(res, params, bins=args.bins)
    return diags


def describe_base(args) -> str:
    over = _base_for_compare(args)
    if "sigma_w" in over:
        return (f"depth {args.depth}, width {args.width}, batch {args.batch}, "
                "base init N(0, 1) entries (sigma_w = sqrt(width))")
    init = over.get("init", args.init)
    sw = f", sigma_w={args.sigma_w:g}" if args.sigma_w is not None else ""
    return f"depth {args.depth}, width {args.width}, batch {args.batch}, base init {init}{sw}"


def print_comparison(args, diags: dict) -> None:
    """The table of gradient norms and each configuration's verdict in words."""
    print(f"gradient norms per layer ({describe_base(args)}; loss {args.loss}, seed {args.seed})")
    print(compare_table(diags, sample_layers(args.depth)))
    print()
    for label, d in diags.items():
        text = textwrap.fill(d.explanation, 100, initial_indent="    ", subsequent_indent="    ")
        print(f"  {label}: {d.verdict.upper()}\n{text}")


def cmd_compare(args) -> int:
    from gradbench import plot

    check_plot_path(args.plot)
    check_json_path(args.out)
    names = split(args.configs) if args.configs else (split(args.activations) if args.activations
                                                       else list(DEMO_CONFIGS))
    diags = compare_stacks(args, names, resolve_backend(args.backend))
    print_comparison(args, diags)
    if args.out:
        write_atomic(args.out, json.dumps(payload(command="compare", configurations={
            k: d.to_dict() for k, d in diags.items()}), allow_nan=False))
        print(f"wrote {args.out}")
    if args.plot:
        plot.gradient_flow(diags, args.plot, title=f"Gradient flow, depth {args.depth}, width {args.width}")
        print(f"wrote {args.plot}")
    return 0
