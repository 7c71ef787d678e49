"""The verdict of a diagnosis and its sentences: vanishing, exploding, stable or no gradient.

One sign convention everywhere (API, JSON, tables, plots, theory): a rate in *decades per
layer* is the change of log10 of a norm per layer going DOWN the stack, from the top towards
the input. Negative: the gradient shrinks towards the input (vanishing); positive: it grows
(exploding). :func:`decades_per_layer` fits it by least squares.

Rules (:func:`classify`; L layers, ``threshold`` decades, default 2 = a factor 100):

1. ``no gradient``: every ||dL/dW_l|| is exactly zero (an all-zero input, a 100 %-dead ReLU
   stack): nothing reaches any weight.
2. ``exploding`` if the backward pass turned non-finite; else
3. ``vanishing`` if a layer has an exactly zero gradient below a non-zero one;
4. the fitted change over the stack of the backward signal ||dL/dh_l|| and of ||dL/dW_l||
   (rate times L - 1): at most ``-threshold`` for either -> ``vanishing``; at least
   ``+threshold`` -> ``exploding`` (if both fire, the larger change wins). The signal's trend is
   what mean-field theory predicts (chi_1 < 1: vanishing); ||dW_l|| = ||g_{l+1} h_l^T|| can be
   flat while the signal vanishes (zero-bias stacks shrink forward and backward alike);
5. magnitudes, without a trend: ``exploding`` if some ||dW_l|| reaches 10^``big`` or some
   ||dW_l|| / ||W_l|| reaches ``big_ratio``; ``vanishing`` if every ||dW_l|| / ||W_l|| is below
   10^-``tiny`` (an SGD step at lr = 0.1 would move no weight by 10^-(tiny - 1) of itself:
   "vanishing everywhere"). ||W_l|| is the parameters' norm when given, else the init's
   expected sqrt(N) sigma_w;
6. otherwise ``stable``.

Against mean-field theory (tests/test_verdict.py): for stacks whose predicted change over the
stack, |0.5 log10 chi_1| (L - 1), is at least 3 x ``threshold``, the verdict is the phase's
(vanishing when chi_1 < 1, exploding when chi_1 > 1).
"""

from __future__ import annotations

import math

import numpy as np

from gradbench.activations import RESCUE

VERDICTS = ("vanishing", "exploding", "stable", "no gradient")

# log10 of the smallest normal and the largest finite number of each dtype.
FLOAT_LIMITS = {
    name: (float(np.log10(np.finfo(name).tiny)), float(np.log10(np.finfo(name).max)))
    for name in ("float64", "float32")
}


def decades_per_layer(y: np.ndarray) -> tuple[float, float]:
    """Least-squares rate of ``y`` (log10 norms, l = 0 at the input) per layer going DOWN the
    stack, over the finite entries; returns ``(rate, fitted y at layer 0)``.

    A rate of -0.3 means the norm shrinks by a factor 2 per layer towards the input. ``(0.0,
    y)`` with a single point, ``(nan, nan)`` with none.
    """
    y = np.asarray(y, dtype=np.float64)
    l = np.arange(len(y), dtype=np.float64)
    ok = np.isfinite(y)
    if ok.sum() == 0:
        return math.nan, math.nan
    if ok.sum() == 1:
        return 0.0, float(y[ok][0])
    lm, ym = l[ok].mean(), y[ok].mean()
    dl = l[ok] - lm
    slope = float(np.dot(dl, y[ok] - ym) / np.dot(dl, dl))  # per layer going UP
    return (-slope if slope else 0.0), float(ym - slope * lm)


def float_limits(grad_log10: np.ndarray, rate: float, act_log10: np.ndarray | None = None) -> dict:
    """Where plain float64 / float32 would have under- or overflowed, per dtype.

    ``underflow_layer`` / ``overflow_layer``: the first layer from the top whose ||dL/dW_l||
    lies below the smallest normal number (a plain chain loses it to subnormals, then 0) or
    above the largest finite one. ``forward_underflow_layer`` / ``forward_overflow_layer``: the
    first layer from the input whose activations (their standard deviation ``act_log10``) do.
    ``layers_to_underflow`` / ``layers_to_overflow``: when the gradient never gets there, how
    many layers from the top it would take at the fitted ``rate``.
    """
    g = np.asarray(grad_log10, dtype=np.float64)
    a = None if act_log10 is None else np.asarray(act_log10, dtype=np.float64)
    finite = np.isfinite(g)
    top = float(g[finite][-1]) if finite.any() else math.nan
    out = {}
    for name, (lo, hi) in FLOAT_LIMITS.items():
        under = np.flatnonzero(finite & (g < lo))
        over = np.flatnonzero((g > hi) | (g == np.inf))
        entry = {
            "min_log10": lo,
            "max_log10": hi,
            "underflow_layer": int(under.max()) if under.size else None,
            "overflow_layer": int(over.max()) if over.size else None,
            "forward_underflow_layer": None,
            "forward_overflow_layer": None,
            "layers_to_underflow": None,
            "layers_to_overflow": None,
        }
        if a is not None:
            fu = np.flatnonzero(np.isfinite(a) & (a < lo))
            fo = np.flatnonzero((a > hi) | (a == np.inf))
            entry["forward_underflow_layer"] = int(fu.min()) if fu.size else None
            entry["forward_overflow_layer"] = int(fo.min()) if fo.size else None
        if math.isfinite(rate) and math.isfinite(top) and rate != 0:
            if rate < 0 and top > lo:
                entry["layers_to_underflow"] = int(math.ceil((top - lo) / -rate))
            elif rate > 0 and top < hi:
                entry["layers_to_overflow"] = int(math.ceil((hi - top) / rate))
        out[name] = entry
    return out


def classify(grad_log10, signal_log10=None, *, threshold: float = 2.0, big: float = 6.0,
             relative_log10=None, big_ratio: float = 10.0, tiny: float = 8.0,
             nonfinite_backward: bool = False) -> str:
    """The verdict of the rules in the module docstring.

    ``relative_log10``: log10 ||dW_l|| / ||W_l|| per layer (the magnitude rules need it).
    """
    g = np.asarray(grad_log10, dtype=np.float64)
    L = len(g)
    if L and np.all(g == -np.inf):
        return "no gradient"
    if nonfinite_backward or np.any(np.isnan(g) | (g == np.inf)):
        return "exploding"
    nz = np.flatnonzero(g > -np.inf)
    if nz.size and np.any(g[: nz.max()] == -np.inf):
        return "vanishing"
    changes = [decades_per_layer(g)[0] * (L - 1)]
    if signal_log10 is not None:
        changes.append(decades_per_layer(signal_log10)[0] * (L - 1))
    changes = [c for c in changes if math.isfinite(c)]
    trend = max(changes, key=abs) if changes else 0.0
    if abs(trend) >= threshold:
        return "vanishing" if trend < 0 else "exploding"
    rel = None if relative_log10 is None else np.asarray(relative_log10, dtype=np.float64)
    if np.max(g[nz]) >= big or (rel is not None and np.any(np.isfinite(rel) & (rel >= math.log10(big_ratio)))):
        return "exploding"
    if rel is not None and np.all(~np.isfinite(rel) | (rel < -tiny)):
        return "vanishing"
    return "stable"


def _num(v: float) -> str:
    """A decade count without scientific notation (10^-64411.7, not 10^-6.441e+04)."""
    return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"


def explain(verdict: str, stack, g, rate, signal_rate, threshold, res, rel) -> str:
    """The plain-language explanation of a verdict: what happened, where, and why."""
    L = len(g)
    finite = np.isfinite(g) & (g > -np.inf)
    words = []
    if verdict == "no gradient":
        words.append("no gradient at all: every ||dL/dW_l|| is exactly zero (an all-zero input or signal, or every "
                     "unit dead)")
    elif finite.sum() >= 2:
        lo_l, hi_l = int(np.flatnonzero(finite)[0]), int(np.flatnonzero(finite)[-1])
        span = (f"||dW|| from 10^{_num(g[hi_l])} at layer {hi_l} (the top{'' if hi_l == L - 1 else ' non-zero'}) "
                f"to 10^{_num(g[lo_l])} at layer {lo_l}")
        sig = f"the backward signal ||dL/dh_l|| changes by {signal_rate:+.3g} decades per layer going down"
        if verdict == "vanishing":
            if rate * (L - 1) <= -threshold or signal_rate * (L - 1) <= -threshold:
                words.append(f"gradients vanish: {sig}, ||dW_l|| by {rate:+.3g} ({span})")
            else:
                worst = float(np.nanmax(rel)) if rel is not None else float(np.max(g[finite]))
                words.append(f"gradients vanish everywhere: no trend over {L} layers, but ||dW_l|| / ||W_l|| is at "
                             f"most 10^{_num(worst)} ({span}): an SGD step moves no weight")
        elif verdict == "exploding":
            if rate * (L - 1) >= threshold or signal_rate * (L - 1) >= threshold:
                words.append(f"gradients explode: {sig}, ||dW_l|| by {rate:+.3g} ({span})")
            elif rel is not None and np.any(np.isfinite(rel)):
                worst = int(np.nanargmax(np.where(np.isfinite(rel), rel, np.nan)))
                words.append(f"gradients are huge: ||dW_l|| / ||W_l|| reaches 10^{_num(rel[worst])} at layer {worst}: "
                             f"one SGD step at lr = 0.1 would change W_{worst} by 10^{rel[worst] + 1:.1f} % "
                             f"(no trend over {L} layers)")
            else:
                words.append(f"gradients are huge: ||dW|| reaches 10^{_num(np.max(g[finite]))} (an SGD step of that "
                             f"size wrecks the weights; no trend over {L} layers)")
        else:
            words.append(f"gradients are stable: {sig}, ||dW_l|| by {rate:+.3g} (threshold {threshold:g} decades "
                         f"over the stack); {span}")
    elif finite.sum() == 1:
        words.append(f"one layer with a gradient: ||dW|| = 10^{_num(g[finite][0])}; no trend to fit")
    words += _findings(stack, g, res, verdict)
    return "; ".join(words) + "."


def _findings(stack, g, res, verdict) -> list[str]:
    """The facts beside the verdict: non-finite layers, zeros, the forward, saturation, dead units."""
    words = []
    if res.first_nonfinite_forward is not None:
        words.append(f"the forward pass turned non-finite at layer {res.first_nonfinite_forward} (activations "
                     "overflowed): every gradient below is meaningless")
    if res.first_nonfinite_backward is not None:
        words.append(f"the backward signal turned non-finite at layer {res.first_nonfinite_backward}")
    zero = np.flatnonzero(g == -np.inf)
    if zero.size and zero.size < len(g):
        dead_note = " (dead ReLU units block the chain)" if stack.activation == "relu" else ""
        top = int(zero.max())
        if stack.activation in RESCUE and float(res.saturation[top]) == 1.0:
            # phi' > 0 (but at a point) and rescued down to 2^(-2^62): the zero is that floor, not the chain's
            dead_note = (f" (every unit of layer {top} is saturated so far that its {stack.activation}' is below "
                         "2^(-2^62), e.g. tanh at |z| ~ 1e200: the true gradient there is not 0, but beyond any "
                         "int64 exponent)")
        words.append(f"{zero.size} layer(s) have an exactly zero gradient, the highest is layer {zero.max()}{dead_note}")
    lost = int((getattr(res, "extras", None) or {}).get("lost_samples", 0))
    if lost:
        B = res.input_grad.mantissa.shape[0]  # (B, inputs): one row per sample
        why = ("dead units (z <= 0) for those samples in some layer, or " if stack.activation in ("relu", "prelu")
               else "")
        words.append(f"{lost} of {B} samples lose their gradient on the way down (exactly 0 at the input, non-zero "
                     f"at the top): {why}their signal fell more than 2^-1074 below the batch's largest at some layer; "
                     "one exponent per layer cannot carry both, so below that layer the norms follow the other "
                     "samples and can be far too small: run such samples one at a time (batch 1) for their exact chain")
    std = np.asarray(res.act_std.log10(), dtype=np.float64)
    ok = np.isfinite(std)
    if ok.sum() >= 2 and abs(std[ok][-1] - std[ok][0]) >= 3:
        i0, i1 = int(np.flatnonzero(ok)[0]), int(np.flatnonzero(ok)[-1])
        grow = std[i1] - std[i0]
        words.append(f"the forward activations {'grow' if grow > 0 else 'shrink'} by {abs(grow):.3g} decades "
                     f"(std 10^{_num(std[i0])} at layer {i0}, 10^{_num(std[i1])} at layer {i1})")
    if stack.activation in ("sigmoid", "tanh"):
        sat = float(np.mean(res.saturation))
        if sat > 0.1:
            words.append(f"{100 * sat:.0f} % of the units are saturated (phi' < 1% of its maximum)")
        if stack.activation == "sigmoid" and not stack.batch_norm and verdict == "vanishing":
            words.append("sigmoid' <= 0.25 costs at least 0.6 decades per layer times the weight gain")
    if stack.activation in ("relu", "leaky_relu", "prelu"):
        dead = float(np.mean(res.dead))
        if dead > 0.1:
            words.append(f"{100 * dead:.0f} % of the units are dead (z <= 0 for the whole batch)")
    return words
