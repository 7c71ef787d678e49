"""The terminal report of a :class:`~gradbench.Diagnosis`: a verdict, sentences and a table."""

from __future__ import annotations

import dataclasses
import math
import textwrap

import numpy as np

from gradbench.spec import ACT_PARAM_DEFAULT, RELU_FAMILY, SATURATING, Stack, dead_below_zero


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun, plural unless n is 1: "1 seed", "3 seeds"; ``plural`` where adding
    an s is wrong: ``count(2, "branch", "branches")`` (a suffix rule would say "epoches")."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def decades(v: float, spec: str = ".3g") -> str:
    """``v`` formatted by ``spec`` and "decade", plural unless the number reads 1: "1 decade"
    (0.999 at .2g), "0.45 decades", "+1 decade"."""
    text = f"{v:{spec}}"
    return f"{text} decade{'' if text.lstrip('+-') == '1' else 's'}"


def fmt_pow(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if v == -math.inf:
        return "0"
    if v == math.inf:
        return "inf"
    return f"10^{v:.2f}" if abs(v) < 1e4 else f"10^{v:.1f}"


def fmt_percent(v: float, width: int, digits: int = 1) -> str:
    """A fraction as a percentage in ``width`` characters; ``nan`` where it is not a number (a
    layer of NaN pre-activations, whose units cannot be counted), not "nan%"."""
    return f"{'nan':>{width}}" if math.isnan(v) else f"{100 * v:{width - 1}.{digits}f}%"


def _fmt_float(v: float, log10_abs: float) -> str:
    """A float, or its exact power of ten when the float cannot hold it (forward-rescaled stacks)."""
    if (v != 0 and math.isfinite(v)) or log10_abs == -math.inf or math.isnan(log10_abs):
        return f"{v:.4g}"
    return ("-" if math.copysign(1.0, v) < 0 else "") + fmt_pow(log10_abs)


def table_layers(L: int, rows: int = 12) -> list[int]:
    """A readable selection of layers: all when few, else both ends and evenly spaced middle."""
    if L <= rows:
        return list(range(L))
    ends = min(3, rows // 2)
    middle = np.linspace(ends, L - 1 - ends, rows - 2 * ends).round().astype(int).tolist()
    return sorted(set(range(ends)) | set(middle) | set(range(L - ends, L)))


# The name of each activation's own parameter, as the header says it when it is not the default.
ACT_PARAM_NAMES = {"leaky_relu": "slope", "prelu": "initial slope", "elu": "alpha"}
STACK_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Stack) if f.default is not dataclasses.MISSING}
BN_EPS_DEFAULT = STACK_DEFAULTS["bn_eps"]


# A rate below this (decades per layer or step) is rounding's, e.g. an orthogonal identity chain's
# 1e-16: :func:`fmt_rate` reads it as 0. Above it, a rate too small for the decimals is given in
# two significant digits (tanh at width 8 over 3,000 layers: -0.00042, 1.3 decades, read +0.000).
VISIBLE_RATE = 1e-6


def fmt_rate(v: float, decimals: int = 3) -> str:
    """A rate to ``decimals`` decimals, signed, as the compare table and the plots' legends give
    it (3 for a stack's decades per layer, 4 for a recurrent net's per step); one that rounds to 0
    there reads +0.000 (not -0.000) below :data:`VISIBLE_RATE`, else in two significant digits
    (-4.2e-04)."""
    text = f"{v:+.{decimals}f}"
    if float(text) != 0:
        return text
    return f"{v:+.1e}" if abs(v) >= VISIBLE_RATE else "+" + text[1:]


def index_runs(indices) -> list[str]:
    """Sorted indices as runs of consecutive ones: [0, 1, 2, 5, 7, 8] -> ["0-2", "5", "7-8"]."""
    idx = [int(v) for v in indices]
    runs, start = [], 0
    for k in range(1, len(idx) + 1):
        if k == len(idx) or idx[k] != idx[k - 1] + 1:
            runs.append(f"{idx[start]}" if start == k - 1 else f"{idx[start]}-{idx[k - 1]}")
            start = k
    return runs


def describe(stack: dict, weights: str | None = None, *, dtype: bool = True) -> str:
    """The stack in words; ``weights``: where the weights came from, in place of the init scheme
    (a model's own weights, ``run --torch``). Every field that changes the network is said
    when it differs from its default: the activation's parameter, batch norm's epsilon, the
    residual scale."""
    parts = [f"depth {stack['depth']}", f"width {stack['width']}", activation_words(stack, weights),
             weights or stack["init"]]
    if stack.get("sigma_w") is not None and weights is None:
        parts.append(f"sigma_w={stack['sigma_w']:g}")
    if stack.get("sigma_b") and weights is None:  # biases: the forward is not homogeneous
        parts.append(f"sigma_b={stack['sigma_b']:g}")
    if stack.get("input_dim") is not None and stack["input_dim"] != stack["width"]:
        parts.append(f"input dim {stack['input_dim']}")
    if stack.get("batch_norm"):
        eps = stack.get("bn_eps", BN_EPS_DEFAULT)
        parts.append("batch norm" + (f" (eps {eps:g})" if eps != BN_EPS_DEFAULT else ""))
    if stack.get("residual"):
        scale = stack.get("residual_scale", 1.0)
        parts.append(f"residual every {stack['residual']}" + (f" (scale {scale:g})" if scale != 1.0 else ""))
    if stack.get("clip"):
        parts.append(f"clip {stack['clip']} {stack['clip_threshold']:g} on {stack['clip_on']}")
    if stack.get("loss", "sum_squares") != "sum_squares":
        outputs = stack.get("output_dim", 1)
        parts.append(f"loss {stack['loss']}" + (f" ({outputs} outputs)" if outputs != 1 else ""))
    inactive = _inactive(stack)
    if inactive:  # kept by the Stack for replace(), doing nothing: said, not silently left out
        parts.append(f"no effect: {', '.join(inactive)}")
    if dtype:  # (a training summary says its stack without it)
        parts.append(stack.get("dtype", "float64"))
    return ", ".join(parts)


def _inactive(stack: dict) -> list[str]:
    """The stack's settings given without the one that makes them act (the Stack keeps them, so that
    ``replace(batch_norm=False)`` and back keeps bn_eps; the command line refuses them): a header
    that left out ``residual_scale=5.0`` of a stack without residual read as if it had been taken."""
    return inactive_settings(stack, STACK_DEFAULTS, (
        ("bn_eps", not stack.get("batch_norm"), "without batch norm"),
        ("residual_scale", not stack.get("residual"), "without residual"),
        ("clip_threshold", not stack.get("clip"), "without clip"),
        ("clip_on", not stack.get("clip"), "without clip"),
        ("output_dim", stack.get("loss", STACK_DEFAULTS["loss"]) == "sum_squares", "without a head")))


def inactive_settings(settings: dict, defaults: dict, switches) -> list[str]:
    """"NAME VALUE WHY" for each ``(name, off, why)`` of ``switches`` that is off while the setting
    differs from its default (a stack's or a recurrent net's header, "no effect: ...")."""
    return [f"{name} {_setting(settings[name])} {why}" for name, off, why in switches
            if off and settings.get(name, defaults[name]) != defaults[name]]


def _setting(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def activation_words(stack: dict, weights: str | None = None) -> str:
    """The activation, with its parameter when that is not the default (``leaky_relu (slope
    0.3)``). A PReLU's slopes are parameters: with a model's own ``weights`` its initial slope
    means nothing and is left out."""
    act, param = stack["activation"], stack.get("activation_param")
    if param is None or act not in ACT_PARAM_NAMES or param == ACT_PARAM_DEFAULT[act] or (weights and act == "prelu"):
        return act
    return f"{act} ({ACT_PARAM_NAMES[act]} {param:g})"


def format_report(d, rows: int = 12, weights: str | None = None) -> str:
    """The terminal text of a diagnosis (``weights``: see :func:`describe`; default: the
    diagnosis's own ``weights``, the params' origin)."""
    L = d.depth
    weights = weights or getattr(d, "weights", None)
    out = [f"gradbench diagnosis: {describe(d.stack, weights)} (backend {d.backend})"]
    out.append(f"  verdict: {d.verdict.upper()}")
    for sentence in _wrap(d.explanation, 92):
        out.append("    " + sentence)
    if len(d.grad_log10) == 1:  # one layer: no slope ("rate: +0 decades per layer" beside "no trend to fit")
        out.append("  rate: none (one layer: no slope to fit)")
    elif math.isfinite(d.decades_per_layer) or math.isfinite(d.signal_decades_per_layer):
        # one finite ||dW_l|| has no slope (a dead ReLU stack's top layer alone): said so, the signal's kept
        if math.isfinite(d.decades_per_layer):
            grad = f"{d.decades_per_layer:+.4g} decades per layer"
        else:
            finite = int(np.count_nonzero(np.isfinite(np.asarray(d.grad_log10, dtype=np.float64))))
            grad = f"no slope ({count(finite, 'layer')} with a non-zero gradient)"

        sig = f"{d.signal_decades_per_layer:+.4g}" if math.isfinite(d.signal_decades_per_layer) else "no slope"
        out.append(f"  rate: {grad} for ||dW_l||, {sig} for ||dL/dh_l||")
        out.append("        (least-squares change per layer going down towards the input; negative: vanishing)")
    out.append(f"  loss: {fmt_pow(d.loss_log10) if not math.isfinite(d.loss) or abs(d.loss_log10) > 300 else f'{d.loss:.6g}'}")
    for name, lim in d.float_limits.items():
        out.append("  " + _limit_sentence(name, lim, int(d.stack.get("residual", 0) or 0)))
    if d.first_nonfinite_forward is not None:
        out.append(f"  first non-finite layer (forward): {d.first_nonfinite_forward}")
    if d.first_nonfinite_backward is not None:
        out.append(f"  first non-finite layer (backward): {d.first_nonfinite_backward}")
    act = d.stack["activation"]
    show_sat = act in SATURATING
    show_dead = act in RELU_FAMILY
    # units with z <= 0 for the whole batch: dead at slope 0 (relu); leaky_relu and prelu still
    # pass a gradient there, on the negative side
    dies = getattr(d, "dead_below_zero", None)  # the weights' own slopes (None: a diagnosis read from older JSON)
    if dies is None:
        dies = dead_below_zero(act, d.stack.get("activation_param"))
    dead_head = "dead" if dies else "neg side"
    dead_w = max(6, len(dead_head))
    clip = getattr(d, "clip_acted", None)
    show_clip = clip is not None and len(clip) == L  # signal clipping: where it changed dL/dh_l
    head = f"  {'layer':>7} {'||dL/dW_l||':>14} {'||dL/dh_l||':>14} {'act mean':>11} {'act std':>11}"
    if show_sat:
        head += f" {'saturated':>9}"
    if show_dead:
        head += f" {dead_head:>{dead_w}}"
    if show_clip:
        head += f" {'clipped':>7}"
    out.append("")
    out.append(head)
    prev = -1
    for l in table_layers(L, rows):
        if l != prev + 1:
            out.append(f"  {'...':>7}")
        prev = l
        line = (f"  {l:>7} {fmt_pow(d.grad_log10[l]):>14} {fmt_pow(d.signal_log10[l]):>14} "
                f"{_fmt_float(d.act_mean[l], d.act_mean_log10[l]):>11} "
                f"{_fmt_float(d.act_std[l], d.act_std_log10[l]):>11}")
        if show_sat:
            line += " " + fmt_percent(d.saturation[l], 9)
        if show_dead:
            line += " " + fmt_percent(d.dead[l], dead_w)
        if show_clip:
            line += f" {'yes' if clip[l] else '-':>7}"
        out.append(line)
    return "\n".join(out)


def _limit_sentence(name: str, lim: dict, residual: int = 0) -> str:
    parts = []
    below = ("the signal on the skip path ||dL/dh|| < " if residual >= 1 else "||dW|| < ")
    if lim.get("forward_underflow_layer") is not None:
        parts.append(_forward_underflow_words(name, lim))
    if lim.get("forward_overflow_layer") is not None:
        parts.append(_forward_overflow_words(name, lim))
    if lim.get("bn_overflow_layer") is not None:
        parts.append(f"plain {name} would overflow batch norm's variance at layer {lim['bn_overflow_layer']} (a unit's "
                     f"squared deviations from the batch mean sum beyond 10^{lim['max_log10']:.2f}: inf, and its "
                     "normalised outputs 0)")
    if lim["underflow_layer"] is not None:
        parts.append(
            f"plain {name} would underflow the gradient at layer {lim['underflow_layer']} "
            f"({below}10^{lim['min_log10']:.2f}; that layer and every one below would read 0 or subnormal)"
        )
    if lim.get("branch_underflow_layers"):
        n = lim["branch_underflow_layers"]
        parts.append(f"plain {name} would read 0 or subnormal for the gradients of {n} branch layer{'s' if n > 1 else ''}"
                     f"{'' if lim['underflow_layer'] is None else ' above it'} (||dW|| < 10^{lim['min_log10']:.2f}; "
                     "the skip path carries the signal past them)")
    if lim["overflow_layer"] is not None:
        parts.append(
            f"plain {name} would overflow the gradient at layer {lim['overflow_layer']} "
            f"(||dW|| > 10^{lim['max_log10']:.2f}: inf)"
        )
    if lim.get("loss_overflow"):
        parts.append(f"plain {name} would overflow the loss (> 10^{lim['max_log10']:.2f}: inf)")
    if lim.get("forward_unknown_layer") is not None:
        parts.append(f"plain {name}: not known from layer {lim['forward_unknown_layer']} up (this run's own forward "
                     f"overflowed there, below {name}'s range; run it in {name} to see)")
    for key, why in (("underflow_unknown_layers", "this run reads 0 there because its own forward underflowed to 0 "
                                                  f"at the outputs of layer {lim.get('forward_flushed_layer')}"),
                     ("overflow_unknown_layers", "this run's own ||dW|| is inf there, an overflow of its own arithmetic")):
        if lim.get(key):
            layers = lim[key]
            parts.append(f"plain {name}: not known for the gradient at layer{'s' if len(layers) > 1 else ''} "
                         f"{', '.join(index_runs(layers))} ({why}, which {name} may hold; run it in {name} to see)")
    if not parts:
        if lim["layers_to_underflow"] is not None:
            parts.append(f"plain {name} is fine here; at this rate its gradient would underflow after "
                         f"~{lim['layers_to_underflow']} layers")
        elif lim["layers_to_overflow"] is not None:
            parts.append(f"plain {name} is fine here; at this rate its gradient would overflow after "
                         f"~{lim['layers_to_overflow']} layers")
        else:
            parts.append(f"plain {name} is fine here")
    if lim.get("inexact"):
        parts.append("judged on this run's numbers, which are not exact here (see the verdict)")
    return "; ".join(parts)


def _forward_overflow_words(name: str, lim: dict) -> str:
    """Where the forward activations pass the largest finite number (verdict.float_limits): by the
    layer where their root mean square does at the latest, and not before the layer where the
    bound on their largest entry does (equal: that layer)."""
    at, earliest, hi = lim["forward_overflow_layer"], lim.get("forward_overflow_earliest"), lim["max_log10"]
    if lim.get("forward_judged_on", "spread") == "spread":  # no bound (a diagnosis written before 2026-12-06)
        return (f"plain {name} would overflow the forward activations by layer {at} at the latest (their spread "
                f"passes 10^{hi:.2f} there; the largest entries may do so earlier)")
    if earliest is None or earliest >= at:
        return f"plain {name} would overflow the forward activations at layer {at} (an entry passes 10^{hi:.2f}: inf)"
    return (f"plain {name} would overflow the forward activations at a layer from {earliest} to {at} (the first "
            f"entry above 10^{hi:.2f} turns inf: their root mean square passes that at layer {at}, and no entry can "
            f"before layer {earliest}, where the bound on the largest entry from their mean, spread and count first does)")


def _forward_underflow_words(name: str, lim: dict) -> str:
    """Where the forward activations fall below the smallest normal number (verdict.float_limits):
    more than half the entries by the layer named, every entry by the bound's layer."""
    at, lo = lim["forward_underflow_layer"], lim["min_log10"]
    if lim.get("forward_judged_on", "spread") == "spread":  # no bound (a diagnosis written before 2026-12-06)
        return (f"plain {name} would lose the forward activations from about layer {at} (their spread falls below "
                f"10^{lo:.2f}, the smallest normal, there; how many entries are 0 or subnormal is not known)")
    every = lim.get("forward_underflow_all_layer")
    up = " from there up" if lim.get("forward_underflow_stays") else ""
    return (f"plain {name} would lose the forward activations by layer {at} at the latest (their root mean square "
            f"falls below 10^{lo - 0.5 * math.log10(2.0):.2f}, the smallest normal over sqrt(2), there: most entries 0 "
            f"or subnormal{up}; single entries can go earlier"
            + (f", every entry by layer {every} at the latest)" if every is not None else ")"))


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width) or [""]
