"""The verdict of a diagnosis and its sentences: vanishing, exploding, stable or no gradient.

One sign convention everywhere (API, JSON, tables, plots, theory): a rate in *decades per
layer* is the change of log10 of a norm per layer going DOWN the stack, from the top towards
the input. Negative: the gradient shrinks towards the input (vanishing); positive: it grows
(exploding). :func:`decades_per_layer` fits it by least squares.

Rules (:func:`classify`; L layers, ``threshold`` decades, default 2 = a factor 100):

1. ``no gradient``: every ||dL/dW_l|| is exactly zero (an all-zero input, a 100 %-dead ReLU
   stack, units saturated beyond any int64 exponent: phi' < 2^(-2^62), or a bce/softmax_ce head
   right by a margin beyond ~3e18 for every sample: loss and dL/dy below 2^(-2^62)): nothing
   reaches any weight. Also where every ||dL/dW_l|| is 0 in exact arithmetic and the computed
   norms are rounding noise (``pair_cancelled``, :func:`bn_pair_cancels`): batch norm over a
   batch of 2 passes only the difference of the two samples' gradients, and in a plain stack
   whose top layer gets the same gradient from both (a value clip that sets dL/dh_L to the
   threshold, under sigmoid's even derivative) no gradient reaches any weight; the rates of that
   noise are not rates (NaN).
2. ``exploding`` if the backward pass turned non-finite; else
3. ``vanishing`` if a layer has an exactly zero gradient below a non-zero one and the backward
   signal died on the way (some ||dL/dh_l|| at or below the top non-zero layer is exactly zero:
   a dead ReLU layer; without ``signal_log10`` every such zero counts; with residual groups the
   signal at the groups' inputs, the skip path, which a dead branch does not stop). Zero
   gradients under a live signal come from exactly zero activations in the forward pass
   (dW_l = dz_l^T h_l with h_l = 0) or from a dead branch: there the trend of rule 4 decides
   first, and ``vanishing`` (no update reaches those layers) only without one;
4. the fitted change over the stack of the backward signal ||dL/dh_l|| and of ||dL/dW_l||
   (rate times L - 1): at most ``-threshold`` for either -> ``vanishing``; at least
   ``+threshold`` -> ``exploding`` (if both fire, the larger change wins). The signal's trend is
   what mean-field theory predicts (chi_1 < 1: vanishing); ||dW_l|| = ||g_{l+1} h_l^T|| can be
   flat while the signal vanishes (zero-bias stacks shrink forward and backward alike). With
   residual groups of k layers the rates compare like places: the signal at the groups' inputs
   (the skip path), ||dW|| as each group's norm (:func:`signal_rate`, :func:`grad_rate`). The
   ||dW|| fit leaves out isolated points, far from their neighbours (:func:`isolated`: a dead
   branch at 10^-1e17 among groups at 10^30 is not a trend, and the explanation names them), and
   with residual=1 the :func:`lagging` layers too (saturated one-layer branches). An
   exploding trend among gradients none of which can move the loss (every elasticity of rule 5
   below 10^-``tiny``) is ``vanishing``. With residual groups (k >= 1) a trend of ||dW_l|| under a
   skip path without one is the branches' own: where most units of the quarter of the stack at its
   low end are saturated or dead (:func:`stuck_end`), ``vanishing`` in those branches (rule
   "saturated"), whichever way the fit points, and no extrapolation to more layers. In a plain
   stack whose ||dW_l|| and signal fits both lie within two standard errors of their layers'
   random walk (:func:`walk_rate_se`: random layers at a finite width), one run does not settle
   the fits' sizes or signs (nor does it show that there is no trend: Xavier tanh at depth 200,
   width 32 ended lower in 16 of 16 seeds): the run's ends decide, layer 0 against the top (rule "walk", :func:`walk_ends`;
   within the threshold, stable). When the signal has no trend and the activations change
   the other way by at least half as much (:func:`forward_cause`: a clipped signal under an exploding
   forward pass), the trend of ||dW_l|| is the forward pass's, and the explanation leads with it;
   without a trend along the skip path, ``vanishing`` (``exploding``) where ||dW_l|| falls (grows)
   by at least ``threshold`` decades inside the residual branches, from each branch's top layer
   to its bottom one (the median over the branches, :func:`branch_change`): 100 sigmoid layers in
   branches of 10 lose ~5 decades inside every branch, so no single learning rate suits a
   branch's layers, though the skip path carries the signal past them (rule "branch", taken
   after the float-range magnitudes of rule 5: a stack beyond float64's range is called by them);
5. magnitudes without a trend, only where they are extreme, never the loss's own scale:
   ``exploding`` if some ||dW_l|| lies above the largest float64 (10^308.25: a plain float64
   chain reads inf, whatever the learning rate); ``vanishing`` if every non-zero ||dW_l|| lies
   below float64's smallest normal (10^-307.65: plain float64 reads 0 or subnormal everywhere),
   or if every layer's elasticity e_l = ||dW_l|| ||W_l|| / loss is below 10^-``tiny``
   (default 8): changing any W_l by 100 % of itself would change the loss by less than
   10^-``tiny`` of itself, to first order ("vanishing everywhere", e.g. ||dW_l|| at 10^-119
   for a loss of order 1, or units saturated at depth 1). ||W_l|| is the parameters' norm when
   given, else estimated from each layer's first, middle and last row as the run sampled them
   (``Result.extras["weight_log10_sampled"]``); for generated weights the init's
   expected sqrt(N) sigma_w; ||dW_l|| is the derivative, before any
   parameter-gradient clipping (``Result.grad_norm_unclipped``: clipping bounds the update).
   With mse, residuals more than 3 decades above the stack's outputs (targets of 1e12 for
   outputs of order 1) make every e_l small as well (each scales as 1 / the residual): the
   explanation names that as the cause, the targets' scale and not depth;
6. otherwise ``stable``.

Why rule 5 divides by the loss. Vanishing and exploding are statements about depth: the
gradient shrinks or grows as it goes down the stack (rules 3 and 4), so that no single learning
rate suits every layer. A magnitude common to every layer is not: multiplying the loss by c
multiplies every ||dW_l|| by c, and so do the input scale and the weight scale of a homogeneous
stack (identity, ReLU: with the probe loss 0.5 ||h_L||^2, ||dW_l|| grows with batch x width
and with sigma_w^(2L - 1)); one learning rate absorbs it. e_l is invariant under all three
rescalings and is of order 1 to sqrt(N) for a layer that passes its gradient on (for a linear
stack with the probe loss, <dW_l, W_l> = 2 loss exactly), so only a tiny e_l, and not a large
||dW_l|| / ||W_l||, says that the weights cannot move the loss. There is no large-e_l rule: near
an exact fit (loss -> 0 with mse or bce) e_l grows without any gradient problem; a large
magnitude without a trend is called exploding only where a plain chain cannot hold it. A loss
of 0 (or one that does not fit a LogScaled) leaves e_l undefined: then only the float range
counts.

Against mean-field theory (tests/test_verdict.py): for stacks whose predicted change over the
stack, |0.5 log10 chi_1| (L - 1), is at least 3 x ``threshold``, the verdict is the phase's
(vanishing when chi_1 < 1, exploding when chi_1 > 1). At chi_1 = 1 with no trend (identity with
orthogonal weights) it is stable at every depth, batch and width, whatever the loss's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradbench.activations import RESCUE, SATURATED_AT
from gradbench.report import count, decades
from gradbench.spec import RELU_FAMILY, SATURATING

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
    y)`` for a stack of one layer, ``(nan, y)`` for one finite point among more (no slope: a
    ReLU stack whose ||dW_l|| is exactly 0 below its top layer read "+0 decades per layer", and a
    sweep averaged that 0 into its phase diagram), ``(nan, nan)`` with none.
    """
    y = np.asarray(y, dtype=np.float64)
    l = np.arange(len(y), dtype=np.float64)
    ok = np.isfinite(y)
    if ok.sum() == 0:
        return math.nan, math.nan
    if ok.sum() == 1:
        return (0.0 if len(y) == 1 else math.nan), float(y[ok][0])
    lm, ym = l[ok].mean(), y[ok].mean()
    dl = l[ok] - lm
    slope = float(np.dot(dl, y[ok] - ym) / np.dot(dl, dl))  # per layer going UP
    return (-slope if slope else 0.0), float(ym - slope * lm)


# The smallest change of log10 ||dW_l|| over a stack that float_limits extrapolates: 1e-9 decades
# is a relative change of 2.3e-9, far above float64 rounding over any depth it runs.
MEASURABLE_DECADES = 1e-9


def float_limits(grad_log10: np.ndarray, rate: float, act_log10: np.ndarray | None = None,
                 floored: np.ndarray | None = None, extrapolate: bool = True, *,
                 signal_log10: np.ndarray | None = None, group: int = 0, loss_log10: float | None = None,
                 dtype: str | None = None, flushed: np.ndarray | None = None, flushed_at: int | None = None,
                 act_mean_log10: np.ndarray | None = None, count: int | None = None,
                 plain_forward: bool = False, bn_sumsq_log10: np.ndarray | None = None) -> dict:
    """Where plain float64 / float32 would have under- or overflowed, per dtype.

    ``underflow_layer`` / ``overflow_layer``: the first layer from the top whose ||dL/dW_l||
    lies below the smallest normal number (a plain chain loses it to subnormals, then 0) or
    above the largest finite one. ``floored`` (bool per layer): layers whose exact zero stands
    for a non-zero gradient beyond any int64 exponent (phi' < 2^(-2^62), :func:`floored_layers`);
    they count as below every dtype's range (plain float reads 0 there too), other exact zeros
    do not. The forward activations h_{l+1} (layer l's outputs, from the input) are judged on
    what their statistics prove of their entries (``forward_judged_on``): their root mean square
    r (from ``act_mean_log10`` and the standard deviation ``act_log10``, biased) is at most the
    largest |entry|, and with ``count`` entries (B N) that entry is at most
    min(sqrt(count) r, |mean| + sqrt(count - 1) std) (:func:`largest_entry_bound`).
    ``forward_overflow_layer``: the first layer whose r passes the largest finite number, where
    an entry has by then; ``forward_overflow_earliest``: the first whose bound does, before which
    no entry can (a NaN or infinite statistic is an overflow of the run's own ``dtype``, and so of
    any narrower one; where that dtype is this one and ``plain_forward``, a forward without
    exponents, every entry below that layer was a finite number of it: the layer itself). A ReLU
    stack of width 16 at sigma_w = 2, batch 4, float32: r passes 10^38.53 at layer 322, the bound
    at 309, and a float64 forward on the same weights has its first entry beyond float32's
    largest at 313 (the std-based "a layer or two earlier" said before was 9 layers short).
    ``forward_underflow_layer``: the first layer whose r falls below the smallest normal over
    sqrt(2), where more than half the entries are 0 or subnormal (at most count r^2 / tiny^2 of
    them are not); ``forward_underflow_stays``: whether every later layer's r stays there; ``forward_underflow_all_layer``: the first whose bound falls below the
    smallest normal, where every entry is 0 or subnormal (single entries go earlier: a float32
    tanh stack at sigma_w = 0.5, width 32, batch 16 has its first subnormal at layer 112, more
    than half at 123, all at 127; these limits say 125 and 129). Without ``act_mean_log10`` and
    ``count``, the standard deviation alone (``forward_judged_on`` "spread": the layers where it
    passes the limits, no bound). With residual groups of ``group`` layers the underflows follow
    the skip path, the only way every layer below depends on: the gradient's at the highest group
    input whose ``signal_log10`` ||dL/dh_l|| is below the range, the forward's at group outputs (a
    branch's own zeros stop nothing).
    ``loss_overflow``: whether the loss (its exact ``loss_log10``) lies above the largest finite
    number: a plain run prints an infinite loss (0.5 ||h_L||^2 overflows long before h_L does).
    ``forward_unknown_layer``: for a dtype wider than the run's own ``dtype``, the first layer
    whose activations the run could not compute (their std NaN or inf: the run's forward
    overflowed there); whether that dtype overflows there or above is not known (a float32 ReLU stack at
    sigma_w = 3 overflows at layer 123 where float64 stays below 10^92), so it is not said.
    ``flushed`` (bool per layer, among the ``floored`` ones): layers whose ||dW_l|| reads 0 only
    because the run's own ``dtype`` flushed a layer's outputs to 0 (the first: ``flushed_at``,
    :func:`float_underflow`: sigmoid outputs below z ~ -104 in float32). They count as lost for
    that dtype and any narrower one; for a wider one they are ``underflow_unknown_layers``, with
    ``forward_flushed_layer`` = ``flushed_at``: the wider dtype may hold those outputs (a float32
    sigmoid stack whose run read ||dW_2|| = 0 said "plain float64 would underflow the gradient at
    layer 2", where mpmath gives 10^-53.97 on the same weights), so nothing is said of them.
    ``overflow_unknown_layers``: the same for a wider dtype where the run's own ||dW_l|| is inf,
    its own arithmetic's overflow (a float32 ReLU stack with biases, h_167 up to 1.9e38: dW_167
    read inf, torch float64 10^78), not a gradient beyond that dtype's range.
    ``layers_to_underflow`` / ``layers_to_overflow``: when the gradient never gets there, how
    many layers from the top it would take at the fitted ``rate`` (only with ``extrapolate``:
    the caller says whether the rate within the stack is one that more layers would continue,
    see :func:`gradbench.diagnose.diagnose`).
    ``bn_overflow_layer``: under batch norm, the first layer (from the input) where some unit's
    sum of squared deviations from the batch mean (``bn_sumsq_log10``, log10 of each layer's
    largest, :func:`gradbench.engine.bn_sumsq_log10`) passes the largest finite number: a plain
    batch norm's sum is inf there and the unit's normalised output 0 (float32 tanh at sigma_w =
    1e20: ~10^41 from layer 0), however fine its gradients' range.
    """
    g = np.asarray(grad_log10, dtype=np.float64)
    a = None if act_log10 is None else np.asarray(act_log10, dtype=np.float64)
    fl = np.zeros(len(g), dtype=bool) if floored is None else np.asarray(floored, dtype=bool)
    fz = np.zeros(len(g), dtype=bool) if flushed is None else np.asarray(flushed, dtype=bool)
    rms = big = None
    if a is not None and act_mean_log10 is not None and count is not None:
        m = np.asarray(act_mean_log10, dtype=np.float64)
        rms, big = rms_log10(m, a), largest_entry_bound(m, a, count)
    finite = np.isfinite(g)
    top = float(g[finite][-1]) if finite.any() else math.nan
    out = {}
    skip = group >= 1 and len(g) % group == 0 and signal_log10 is not None
    if skip:
        s = np.asarray(signal_log10, dtype=np.float64)
        on_skip = np.arange(len(g)) % group == 0  # group inputs h_0, h_k, ...
        out_skip = np.arange(len(g)) % group == group - 1  # group outputs (act_log10[l]: h_{l+1})
    for name, (lo, hi) in FLOAT_LIMITS.items():
        # wider than the run's own dtype: its zeros and infinities need not be this dtype's
        wider = dtype is not None and hi > FLOAT_LIMITS[dtype][1]
        unknown = fz if wider else np.zeros(len(g), dtype=bool)
        own = np.flatnonzero((finite & (g < lo)) | (fl & ~unknown))  # layers whose own ||dW|| a plain chain loses
        under = np.flatnonzero(on_skip & (s < lo)) if skip else own
        # the run's own ||dW|| = inf (its mantissa arithmetic overflowed: a float32 ReLU stack's h of
        # 1.9e38 times dz summed over the batch, where torch float64 has 10^78): not known for a wider one
        inf_own = (g == np.inf) & wider
        over = np.flatnonzero((g > hi) & ~inf_own)
        entry = {
            "min_log10": lo,
            "max_log10": hi,
            "underflow_layer": int(under.max()) if under.size else None,
            "overflow_layer": int(over.max()) if over.size else None,
            "forward_underflow_layer": None,
            "forward_overflow_layer": None,
            "forward_unknown_layer": None,
            "underflow_unknown_layers": np.flatnonzero(unknown).tolist(),
            "overflow_unknown_layers": np.flatnonzero(inf_own).tolist(),
            "forward_flushed_layer": flushed_at if unknown.any() else None,
            "layers_to_underflow": None,
            "layers_to_overflow": None,
            # residual groups: layers above underflow_layer whose own gradient is lost (a branch)
            "branch_underflow_layers": int(np.count_nonzero(own > (under.max() if under.size else -1)))
            if skip else 0,
            "loss_overflow": bool(loss_log10 is not None and math.isfinite(loss_log10) and loss_log10 > hi),
            "bn_overflow_layer": None,
        }
        if bn_sumsq_log10 is not None:
            bn_over = np.flatnonzero(np.asarray(bn_sumsq_log10, dtype=np.float64) > hi)
            entry["bn_overflow_layer"] = int(bn_over[0]) if bn_over.size else None
        if a is not None:
            entry.update(_forward_limits(a, rms, big, lo, hi, wider, out_skip if skip else None,
                                         plain_forward and dtype == name))
        # a change over the stack below MEASURABLE_DECADES is rounding (an orthogonal identity stack's
        # 1e-19 a layer said "underflow after ~2.4e21 layers"), not a rate to extrapolate
        if (extrapolate and math.isfinite(rate) and math.isfinite(top)
                and abs(rate) * max(len(g) - 1, 1) >= MEASURABLE_DECADES):
            # only where the stack never gets there (a 600-layer sigmoid stack underflowing at layer 121
            # also said it would "after 480 layers")
            if rate < 0 and top > lo and entry["underflow_layer"] is None and not unknown.any():
                entry["layers_to_underflow"] = int(math.ceil((top - lo) / -rate))
            elif rate > 0 and top < hi and entry["overflow_layer"] is None and not inf_own.any():
                entry["layers_to_overflow"] = int(math.ceil((hi - top) / rate))
        out[name] = entry
    return out


def largest_entry_bound(mean_log10, std_log10, count: int) -> np.ndarray:
    """log10 of a bound on each layer's largest |entry| from the logs of its |mean| and (biased)
    standard deviation over ``count`` entries: min(sqrt(count) rms, |mean| + sqrt(count - 1) std)
    (the sum of squares is count rms^2; no entry lies further than sqrt(count - 1) std from the
    mean). NaN where a statistic is NaN."""
    m, sd = np.asarray(mean_log10, dtype=np.float64), np.asarray(std_log10, dtype=np.float64)
    ln10 = math.log(10.0)
    with np.errstate(invalid="ignore"):
        spread = sd + 0.5 * math.log10(count - 1) if count > 1 else np.full(len(sd), -np.inf)
        sum_bound = np.logaddexp(m * ln10, spread * ln10) / ln10
        out = np.fmin(rms_log10(m, sd) + 0.5 * math.log10(max(count, 1)), sum_bound)
    return np.where(np.isnan(m) | np.isnan(sd), np.nan, out)


def _forward_limits(std, rms, big, lo: float, hi: float, wider: bool, sel, held: bool = False) -> dict:
    """The forward keys of one dtype's :func:`float_limits` entry (``rms``, ``big``: None without
    the mean and count: then the standard deviation alone; ``sel``: the layers the underflow
    counts, None for all; ``held``: the run held its activations in this dtype, plainly)."""
    sel = np.ones(len(std), dtype=bool) if sel is None else sel
    judged = "spread" if rms is None else "root mean square"
    r = std if rms is None else rms
    # NaN or inf: an entry overflowed to inf in the run's own dtype, which says so for a dtype no wider
    bad = np.isnan(std) | (std == np.inf)
    nan = np.flatnonzero(bad)
    lost = bad & (not wider)
    first = (lambda c: int(np.flatnonzero(c)[0]) if c.any() else None)
    with np.errstate(invalid="ignore"):
        over = first((r > hi) | lost)
        half = lo - 0.5 * math.log10(2.0)  # r below it: fewer than half the entries reach the smallest normal
        under = first(sel & np.isfinite(r) & (r < (lo if rms is None else half)))
        out = {"forward_judged_on": judged, "forward_overflow_layer": over, "forward_overflow_earliest": None,
               "forward_underflow_layer": under, "forward_underflow_all_layer": None,
               "forward_underflow_stays": None, "forward_unknown_layer": None}
        if big is not None:
            # a run that held its activations in this dtype overflowed where it did: no entry before
            out["forward_overflow_earliest"] = over if held and over is not None and lost[over] else \
                first((big > hi) | lost)
            out["forward_underflow_all_layer"] = first(sel & np.isfinite(big) & (big < lo))
            if under is not None:
                later = sel & (np.arange(len(r)) > under) & ~np.isnan(r)
                out["forward_underflow_stays"] = bool(np.all(r[later] < half))
    if wider and nan.size and (over is None or nan.min() < over):
        out["forward_unknown_layer"] = int(nan.min())
        if out["forward_overflow_earliest"] is not None and out["forward_overflow_earliest"] >= nan.min():
            out["forward_overflow_earliest"] = None
    return out


def floored_layers(activation: str, g: np.ndarray, saturation: np.ndarray, act_log10=None,
                   act_mean_log10=None) -> np.ndarray:
    """Layers whose exactly zero ||dW_l|| is the rescue's floor, not a true zero: an activation
    whose phi' vanishes only in a limit (:data:`~gradbench.activations.RESCUE`) and every unit of
    the layer saturated (|phi'| < 1 % of its largest value), so |phi'| fell below 2^(-2^62), beyond any int64 exponent (or the signal from such a
    layer above it was 0). ``act_log10`` (log10 of each layer's output std): not where the
    layer's input, or the stack's output, is exactly 0 (the zero then comes from the forward:
    :func:`forward_zeros`). ``act_mean_log10`` (log10 |mean| of each layer's output): with it, an
    output is exactly 0 only where its mean is 0 too; a std of 0 alone is also every unit saturated
    to one value (tanh's -1 at batch 1), which is not a zero output."""
    g = np.asarray(g, dtype=np.float64)
    if activation not in RESCUE:
        return np.zeros(len(g), dtype=bool)
    out = (g == -np.inf) & (np.asarray(saturation, dtype=np.float64) == 1.0)
    if act_log10 is not None:
        zero = np.asarray(act_log10, dtype=np.float64) == -np.inf
        if act_mean_log10 is not None:
            zero &= np.asarray(act_mean_log10, dtype=np.float64) == -np.inf
        if len(zero) and zero[-1]:
            return np.zeros(len(g), dtype=bool)
        out[1:] &= ~zero[:-1]
    return out


# where phi(z) itself is beyond even the forward's rescue (ln|phi| below -2^62 ln 2, beyond any
# int64 exponent; reference.rescue_forward)
PHI_UNDERFLOW = {"gelu": "GELU below z ~ -2.5e9", "swish": "swish below z ~ -3.2e18"}


def bias_floor_zeros(res, zero: np.ndarray) -> np.ndarray:
    """Of the layers ``zero`` whose ||dW_l|| is exactly 0, those whose input h_l is not 0 and whose
    signal dL/dh_l is not 0 either, in a forward with exponents: dW_l = dz_l^T h_l can then read 0
    only where every row of h_l lay so far below the layer's bias that, brought up to the bias's
    floor (gradbench.reference.raise_rows), its entries fell below the dtype's smallest subnormal."""
    if not getattr(res, "forward_rescaled", False) or not zero.size:
        return np.zeros(0, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.asarray(res.act_std.log10(), dtype=np.float64)
        s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
    z = zero[zero >= 1]
    return z[np.isfinite(h[z - 1]) & np.isfinite(s[z])]


def forward_zeros(activation: str, act_log10) -> np.ndarray:
    """Layers whose every output activation is exactly 0 though no unit is dead: GELU and swish
    units whose phi(z) lies beyond any int64 exponent (:data:`PHI_UNDERFLOW`), or z = 0."""
    a = np.asarray(act_log10, dtype=np.float64)
    if activation not in PHI_UNDERFLOW:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(a == -np.inf)


# z below which phi(z) rounds to 0 in each dtype (|phi(z)| below half the smallest subnormal; float32
# stacks evaluate phi in float64 and round once), for the activations whose outputs reach 0 only so
FLUSH_Z = {"sigmoid": {"float64": "-745", "float32": "-104"},
           "gelu": {"float64": "-38.6", "float32": "-14.4"},
           "swish": {"float64": "-752", "float32": "-109"}}


def float_underflow(stack, res) -> np.ndarray:
    """Layers whose outputs h_{l+1} are all exactly 0 though phi(z) is not 0 in exact arithmetic:
    sigmoid (> 0 for every z), and GELU and swish (0 only at z = 0) in a stack whose forward
    carries no exponent (batch norm, or a forward taken again without them;
    ``res.forward_rescaled`` False; a rescaled forward's zeros are :func:`forward_zeros`). Every
    unit saturated and mean and std exactly 0 (a std of 0 alone is a layer of equal outputs, all 1
    in a saturated sigmoid layer): the dtype's underflow, every unit's z below :data:`FLUSH_Z`,
    and the loss and gradients that depend on those outputs read 0 where the exact ones are tiny
    but not 0. Not with ``residual_scale`` 0, where a zero skip path is a true zero."""
    act = stack.activation
    if act not in FLUSH_Z or (act != "sigmoid" and getattr(res, "forward_rescaled", True)) or \
            (stack.residual and stack.residual_scale == 0):
        return np.zeros(0, dtype=np.int64)
    with np.errstate(divide="ignore"):
        mean = np.asarray(res.act_mean.log10(), dtype=np.float64)
        std = np.asarray(res.act_std.log10(), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        sat = np.asarray(res.saturation, dtype=np.float64) == 1.0
    return np.flatnonzero((mean == -np.inf) & (std == -np.inf) & sat)


# where sigmoid(z) = e^z / (1 + e^z) falls below the smallest normal number (ln of it)
SUBNORMAL_Z = {"float64": "-708", "float32": "-87"}


def partial_underflow_words(stack, res) -> list[str]:
    """Sigmoid outputs that underflowed in layers where others did not (``res.extras
    ["flushed_outputs"]``, :func:`gradbench.engine.flushed_outputs`; whole layers are
    :func:`float_underflow`'s). One exponent per sample cannot hold an output of 10^-1132 beside
    one near 1, and the smaller can carry the larger term of dW: its sigmoid' is e^z, the unit near
    1's e^-z far smaller (sigma_w = 1e4, depth 1, width 2: ||dW_0|| read 10^-3428.81 where mpmath
    gives 10^-2265.16). The numbers that read such outputs are not the exact ones: the dW of the
    layer above, and every gradient when the top layer's outputs are among them (dL/dh_L = h_L)."""
    n = np.asarray((getattr(res, "extras", None) or {}).get("flushed_outputs", []), dtype=np.int64)
    whole = set(float_underflow(stack, res).tolist())
    layers = [int(l) for l in np.flatnonzero(n) if l not in whole]
    if not layers:
        return []
    L = len(n)
    above = [l + 1 for l in layers if l + 1 < L]
    total = int(n[layers].sum())
    if L - 1 in layers:
        reach = "every gradient (the top layer's outputs are among them, and the loss's dL/dh_L is h_L)"
    else:
        reach = (f"the ||dW|| of layer{'s' if len(above) > 1 else ''} {_layers(above)}, which take"
                 f"{'' if len(above) > 1 else 's'} them in,")
    many = len(layers) > 1
    return [f"not exact here: {total} sigmoid output{'s' if total > 1 else ''} of layer{'s' if many else ''} "
            f"{_layers(layers)} underflowed in {stack.dtype} (z below about {SUBNORMAL_Z[stack.dtype]}: subnormal, "
            f"0 below {FLUSH_Z['sigmoid'][stack.dtype]}, and a sigmoid forward carries no exponent) beside outputs "
            "that did not; "
            "their true values are tiny, not 0, and can carry the larger share of a gradient (their sigmoid' is "
            f"larger than a saturated unit's near 1), so {reach} may be far from the exact values "
            "(a smaller sigma_w keeps z within range)"]


def float_underflow_inputs(stack, res) -> np.ndarray:
    """(L,) bools: layers whose input h_l is a layer's underflowed outputs (:func:`float_underflow`),
    so that dW_l = dz_l^T h_l reads 0 where the truth is not 0."""
    L = len(res.act_std.log10())
    out = np.zeros(L, dtype=bool)
    under = float_underflow(stack, res)
    out[under[under + 1 < L] + 1] = True
    return out


def float_underflow_words(stack, layers) -> str:
    """Why such exactly zero outputs and gradients are not the truth (:func:`float_underflow`)."""
    many = len(layers) > 1
    act = stack.activation
    why = "for sigmoid" if act == "sigmoid" else "in a stack with nonzero biases or batch norm"
    return (f"the {act} outputs of layer{'s' if many else ''} {_layers(layers)} are exactly 0 in {stack.dtype}: "
            f"every unit's z lies below about {FLUSH_Z[act][stack.dtype]}, where {act}(z) underflows, and the "
            f"forward pass carries no exponent {why}; the true outputs are tiny, not 0, and so are the loss "
            "and the gradients that read 0 because of them")


# A point this many decades from the median of its six nearest neighbours (or 20 typical steps
# between neighbours, if more), neighbours that agree among themselves to a quarter of that, is
# left out of a rate's fit: a dead branch of a residual stack
# (every unit saturated: 10^-1.4e17 between groups at 10^30 made the rate +5e12 decades per
# layer), not a trend. A steep trend passes: the limit grows with its step.
ISOLATED_DECADES = 100.0


def isolated(y) -> np.ndarray:
    """Which finite points of ``y`` (log10 norms) lie far from their neighbours (:data:`ISOLATED_DECADES`)."""
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    out = np.zeros(len(y), dtype=bool)
    if ok.sum() < 3:
        return out
    v = y[ok]
    limit = max(ISOLATED_DECADES, 20 * float(np.median(np.abs(np.diff(v)))))
    # the six nearest neighbours, not the point itself (the ends repeat the end point)
    window = np.delete(np.lib.stride_tricks.sliding_window_view(np.pad(v, 3, mode="edge"), 7), 3, axis=1)
    near = np.median(window, axis=1)
    spread = np.median(np.abs(window - near[:, None]), axis=1)
    # far from neighbours that agree among themselves; among scattered ones (a saturated region
    # where every other layer is 10^-1500) no point is isolated: that region is the stack's
    out[np.flatnonzero(ok)[(np.abs(v - near) > limit) & (spread < limit / 4)]] = True
    return out


# A layer whose ||dW_l|| lies LAGGING_DECADES or more below the median of the LAGGING_WINDOW layers
# above it and of those below it (both sides: a trend lowers one side only) gets updates far
# smaller than its neighbours': a saturated branch layer of a residual stack at 10^-22..10^-8
# between layers at 10^-2.6 read STABLE, unsaid (under ISOLATED_DECADES). Narrow or batch-norm
# stacks over 2 samples scatter by a few decades from layer to layer: 3 decades is above that
# scatter in most of them (a survey of 300 random stacks: 30 with such layers, 20 of them over
# a batch of 2 or a width of 4).
LAGGING_DECADES = 3.0
LAGGING_WINDOW = 5


def lagging(y) -> tuple[np.ndarray, np.ndarray]:
    """The layers whose finite log10 norm ``y`` lies :data:`LAGGING_DECADES` or more below both
    the median of the finite norms of the :data:`LAGGING_WINDOW` layers above it and that of
    the ones below it, and by how many decades (the smaller of the two gaps). The ends, with no
    layer on one side, are not judged."""
    y = np.asarray(y, dtype=np.float64)
    L, w = len(y), LAGGING_WINDOW
    if L < 3:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    v = np.where(np.isfinite(y), y, np.nan)
    pad = np.pad(v, w, constant_values=np.nan)
    win = np.lib.stride_tricks.sliding_window_view(pad, 2 * w + 1)  # row l: layers l - w .. l + w
    below, above = _finite_median(win[:, :w]), _finite_median(win[:, w + 1:])
    with np.errstate(invalid="ignore"):
        gap = np.fmin(below, above) - v
        hit = np.flatnonzero((gap >= LAGGING_DECADES) & ~np.isnan(below) & ~np.isnan(above))
    return hit, gap[hit]


def _finite_median(rows: np.ndarray) -> np.ndarray:
    """The median of each row's non-NaN entries (NaN where none): np.nanmedian's, by one sort
    (NaN last), 7x faster over 10^6 rows of 5."""
    s = np.sort(rows, axis=1)
    k = np.count_nonzero(~np.isnan(s), axis=1)
    lo = np.take_along_axis(s, np.maximum((k - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(s, np.minimum(k // 2, s.shape[1] - 1)[:, None], axis=1)[:, 0]
    return np.where(k > 0, 0.5 * (lo + hi), np.nan)


def _group_norms(g: np.ndarray, group: int) -> np.ndarray:
    """log10 of each residual group's root sum of squares of its layers' ||dW_l|| (nan: none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        blocks = g.reshape(-1, group)
        top = np.max(blocks, axis=1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        norms = top[:, 0] + 0.5 * np.log10(np.sum(10.0 ** (2 * (blocks - top)), axis=1))
    return np.where(np.isfinite(norms), norms, np.nan)


def rate_outliers(grad_log10, group: int = 0) -> np.ndarray:
    """The layers :func:`grad_rate` leaves out of its fit (:func:`isolated`; with residual groups,
    every layer of an isolated group)."""
    g = np.asarray(grad_log10, dtype=np.float64)
    if not (group > 1 and len(g) % group == 0):
        return np.flatnonzero(isolated(np.where(g > -np.inf, g, np.nan)))
    far = np.flatnonzero(isolated(_group_norms(g, group)))
    return (far[:, None] * group + np.arange(group)[None, :]).ravel()


def rate_points(grad_log10, group: int = 0) -> tuple[np.ndarray, int]:
    """The points :func:`grad_rate` fits, NaN where it leaves one out (not finite, or
    :func:`isolated`; with ``group`` 1, residual=1, also :func:`lagging`: a saturated branch of one
    layer dips below its neighbours while the skip path carries the signal past it, where a
    group's norm hides such a layer), and how many layers one point spans: every layer's log10
    ||dL/dW_l|| and 1, or with residual groups of ``group`` layers the groups' own norms and ``group``."""
    g = np.asarray(grad_log10, dtype=np.float64)
    if not (group > 1 and len(g) % group == 0):
        y = np.where(np.isfinite(g), g, np.nan)
        out = isolated(y)
        if group == 1:  # residual=1: the skip path carries the signal past a branch's dip
            out[lagging(y)[0]] = True
        return np.where(out, np.nan, y), 1
    norms = _group_norms(g, group)
    return np.where(isolated(norms), np.nan, norms), group


def grad_rate(grad_log10, group: int = 0) -> tuple[float, float]:
    """The rate (decades per layer going down) of ||dL/dW_l|| and its fit at layer 0: over every
    layer, or with residual groups of ``group`` layers over the groups' own norms (log10 of the
    root of the sum of their layers' squares, placed at each group's middle). The layers of a
    group sit at different places of the branch (a saturated branch: 10^-192 at one, 10^-1834
    at the next), and a fit through them measured that, not a trend; with one group there is no
    trend to fit (rate 0). The points: :func:`rate_points`."""
    y, span = rate_points(grad_log10, group)
    rate, y0 = decades_per_layer(y)
    if span == 1 or not math.isfinite(rate):
        return rate, y0
    centre = (span - 1) / 2  # group 0's middle; y(layer x) = y0 - (rate / group) (x - centre)
    return rate / span, y0 + rate / span * centre


def walk_rate_se(grad_log10, group: int = 0) -> float:
    """The standard error (decades per layer) of :func:`grad_rate`'s fit from the random walk in
    log10 ||dW_l||: a chain of random layers multiplies random matrices, so the log of its norm
    takes random steps (variance s^2 a layer) besides each layer's own scatter (variance v). The
    steps' variance at lag k is k s^2 + 2 v; lags 1 and K = n / 16 give s^2, and a least-squares
    slope over n points of such a walk has a variance of about 6 s^2 / (5 n). NaN with fewer
    than 64 points (a walk's statistics need many steps). He-initialised tanh at width 16 over 20,000 layers: a fit of -1.7e-4 decades
    per layer against a standard error of 1.1e-3 (the ends 14 decades apart; another seed's fit
    +4.7e-5 with the ends 19.5 decades apart the other way)."""
    y, span = rate_points(grad_log10, group)
    y = y[np.isfinite(y)]
    n = y.size
    if n < 64:
        return math.nan
    K = n // 16
    v1, vk = np.var(np.diff(y), ddof=1), np.var(y[K:] - y[:-K], ddof=1)
    s2 = max(0.0, float(vk - v1) / (K - 1))
    return math.sqrt(s2 * 6 / (5 * n)) / span


def within_walk(grad_log10, rate: float, group: int = 0) -> float | None:
    """The walk's standard error (:func:`walk_rate_se`) where the fitted ``rate`` lies within two
    of them (its size and sign are the seed's, not the stack's), else None."""
    se = walk_rate_se(grad_log10, group)
    return se if math.isfinite(se) and math.isfinite(rate) and abs(rate) < 2 * se else None


def walk_ends(grad_log10, signal_log10=None, group: int = 0) -> float | None:
    """For a plain stack (``group`` 0) whose ||dW_l|| and ||dL/dh_l|| fits both lie within the
    random walk of their layers (:func:`within_walk`): the change going down between the ends,
    layer 0 against the top (of ||dW_l|| or of the signal, whichever is larger), else None. He
    tanh at width 16 over 20,000 layers: a fit of +6.4 decades over the stack read EXPLODING with
    layer 0's ||dW|| 14 decades below the top's; the ends are what this run's layers get."""
    if group:
        return None
    ends = []
    for y in (grad_log10, signal_log10):
        if y is None:
            continue
        y = np.asarray(y, dtype=np.float64)
        ok = np.flatnonzero(np.isfinite(y))
        rate = decades_per_layer(np.where(np.isfinite(y), y, np.nan))[0]
        if ok.size < 2 or within_walk(y, rate) is None:
            return None
        ends.append(float(y[ok[0]] - y[ok[-1]]))
    return max(ends, key=abs) if ends else None


def signal_rate(signal_log10, group: int = 0) -> float:
    """The rate (decades per layer going down) of ||dL/dh_l||, l = 0..L-1 (h_l: layer l's
    input): over every layer, or with residual groups of ``group`` layers over the groups'
    inputs h_0, h_k, ..., h_{L-k} only (the skip path, where the signal of every group arrives). Inside a group the branch's own signal
    can lie thousands of decades below the skip's (saturated units), and a fit through both
    kinds of point measured that alternation, not a trend."""
    s = np.asarray(signal_log10, dtype=np.float64)
    s = np.where(np.isfinite(s) & (s > -np.inf), s, np.nan)
    if group > 1 and len(s) % group == 0:
        return decades_per_layer(s[::group])[0] / group
    return decades_per_layer(s)[0]


# With residual groups (k >= 1) the skip path is the chain. Where its signal has no trend and
# ||dW_l|| has one, the trend is the branches' own; where the layers at its low end (the quarter of
# the stack where the fit lies lower) have more than this share of their units saturated or dead,
# it is those branches' gradients vanishing through their units, not a chain exploding the other
# way: sigmoid-residual at 401 layers (N(0, 1) weights) ran 10^-31.7 at the top to 10^0.28 at
# layer 0 with the skip path flat and the top's units saturated, and read EXPLODING; tanh branches
# at sigma_w = 1e4, all saturated at random depths, read EXPLODING or VANISHING by the seed.
STUCK_SHARE = 0.5


def dies(stack, res) -> bool:
    """Whether units with z <= 0 pass no gradient in the run ``res`` (:func:`gradbench.spec.units_die`
    of the weights it ran with, ``extras["dead_below_zero"]``; the stack's own for a result without it)."""
    return bool((getattr(res, "extras", None) or {}).get("dead_below_zero", stack.dead_below_zero))


def stuck_state(stack, res) -> np.ndarray | None:
    """Per layer, the share of units that pass (next to) no gradient: saturated for a saturating
    activation, dead for the ReLU family (leaky and PReLU's negative side is not dead); None for
    the others."""
    if stack.activation in SATURATING:
        return np.asarray(res.saturation, dtype=np.float64)
    if dies(stack, res):
        return np.asarray(res.dead, dtype=np.float64)
    return None


def stuck_words(stack) -> str:
    """What :func:`stuck_state` counts, in the diagnosis's words."""
    return ("saturated (|phi'| < 1 % of its largest value)" if stack.activation in SATURATING else
            "dead (z <= 0 for the whole batch)")


def stuck_end(L: int, change: float, stuck) -> tuple[int, int, float] | None:
    """The low end of a ||dW_l|| trend (``change`` over the stack, going down: > 0 is the top)
    as ``(first layer, last layer, share of its units stuck)`` (:func:`stuck_state`): the quarter
    of the stack there (at least one layer); None without states."""
    if stuck is None or not L:
        return None
    n = max(1, L // 4)
    i0, i1 = (L - n, L - 1) if change > 0 else (0, n - 1)
    part = np.asarray(stuck, dtype=np.float64)[i0 : i1 + 1]
    share = float(np.nanmean(part)) if np.isfinite(part).any() else math.nan
    return i0, i1, share


def judge(grad_log10, signal_log10=None, *, threshold: float = 2.0, elasticity_log10=None,
          tiny: float = 8.0, nonfinite_backward: bool = False, group: int = 0,
          pair_cancelled: bool = False, identical: bool = False, float_zeros=None,
          stuck=None) -> tuple[str, str]:
    """``(verdict, rule)`` by the rules of the module docstring. ``rule`` names the one that
    decided: "no gradient", "pair" (no gradient: batch norm over 2 samples, ``pair_cancelled``),
    "identical" (no gradient: batch norm over a batch of one input repeated, ``identical``),
    "non-finite", "zeros", "walk" (this run's ends, where the fits lie within the layers' random
    walk, :func:`walk_ends`), "trend", "saturated" (residual: a flat skip path, and the trend's low
    end stuck, :data:`STUCK_SHARE`), "branch", "overflow", "underflow", "insensitive" (every
    e_l < 10^-tiny) or "none" (stable). ``stuck``: :func:`stuck_state` per layer (or None).

    ``elasticity_log10``: log10 e_l = log10 (||dW_l|| ||W_l|| / loss) per layer (nan where
    unknown); without it the elasticity rule is not applied. ``group``: the residual group size
    (the signal's trend over the groups' ends, :func:`signal_rate`). ``pair_cancelled``: every
    ||dL/dW_l|| is 0 in exact arithmetic (:func:`bn_pair_cancels`), whatever the norms read;
    ``identical``: so is it because batch norm sees one input repeated (:func:`bn_identical`).
    ``float_zeros``: (L,) bools, layers whose exact 0 is the float forward's underflow, not the
    chain's (:func:`float_underflow`: their true ||dW_l|| is tiny, not 0); the "zeros" rule
    does not count them.
    """
    g = np.asarray(grad_log10, dtype=np.float64)
    L = len(g)
    if (pair_cancelled or identical) and not (nonfinite_backward or np.any(np.isnan(g) | (g == np.inf))):
        # (before the exact zeros: the rounding can leave 0 too, and this is why)
        return "no gradient", "identical" if identical else "pair"
    if L and np.all(g == -np.inf):
        return "no gradient", "no gradient"
    if nonfinite_backward or np.any(np.isnan(g) | (g == np.inf)):
        return "exploding", "non-finite"
    nz = np.flatnonzero(g > -np.inf)
    true_zero = g == -np.inf
    if float_zeros is not None:
        true_zero &= ~np.asarray(float_zeros, dtype=bool)
    zeros = bool(nz.size and np.any(true_zero[: nz.max()]))  # exact zeros below a non-zero layer
    if zeros:
        s = None if signal_log10 is None else np.asarray(signal_log10, dtype=np.float64)
        if s is not None and group > 1 and L % group == 0:  # residual: the chain is the skip path
            s = np.where(np.arange(L) % group == 0, s, 0.0)  # (a branch's own signal may die under it)
        if s is None or np.any(s[: nz.max() + 1] == -np.inf):  # the chain died there
            return "vanishing", "zeros"
    grad_change = grad_rate(g, group)[0] * (L - 1)
    signal_change = math.nan if signal_log10 is None else signal_rate(signal_log10, group) * (L - 1)
    changes = [c for c in (grad_change, signal_change) if math.isfinite(c)]
    trend = max(changes, key=abs) if changes else 0.0
    walk = walk_ends(g, signal_log10, group)
    if walk is not None and not zeros:  # a random walk: this run's ends, not a fit whose sign is the seed's
        if abs(walk) >= threshold:
            return ("vanishing" if walk < 0 else "exploding"), "walk"
        trend = 0.0  # neither fit is a trend: the stable words say why
    insensitive = False
    if elasticity_log10 is not None:
        e = np.asarray(elasticity_log10, dtype=np.float64)
        known = ~np.isnan(e)
        insensitive = bool(np.any(known & (e > -np.inf)) and np.all(e[known] < -tiny))
    if abs(trend) >= threshold:
        if trend > 0 and insensitive:  # growth among gradients none of which can move the loss
            return "vanishing", "insensitive"
        if group >= 1 and L % group == 0 and abs(signal_change) < threshold and trend == grad_change:
            end = stuck_end(L, grad_change, stuck)  # the skip path is flat: the branches' own trend
            if end is not None and end[2] > STUCK_SHARE:
                return "vanishing", "saturated"
        return ("vanishing" if trend < 0 else "exploding"), "trend"
    if zeros:  # under a live signal, and no trend
        return "vanishing", "zeros"
    if not nz.size:
        return "stable", "none"
    lo, hi = FLOAT_LIMITS["float64"]
    if np.max(g[nz]) > hi:
        return "exploding", "overflow"
    if np.max(g[nz]) < lo:
        return "vanishing", "underflow"
    inside = branch_change(g, group)
    if abs(inside) >= threshold and not (inside > 0 and insensitive):  # nan: no branches
        return ("vanishing" if inside < 0 else "exploding"), "branch"
    if insensitive:
        return "vanishing", "insensitive"
    return "stable", "none"


def classify(grad_log10, signal_log10=None, *, threshold: float = 2.0, elasticity_log10=None,
             tiny: float = 8.0, nonfinite_backward: bool = False) -> str:
    """The verdict of the rules in the module docstring (:func:`judge` without the rule)."""
    return judge(grad_log10, signal_log10, threshold=threshold, elasticity_log10=elasticity_log10, tiny=tiny,
                 nonfinite_backward=nonfinite_backward)[0]


def _num(v: float) -> str:
    """A decade count without scientific notation (10^-64411.7, not 10^-6.441e+04; 10^-0.0000047,
    not 10^-4.724e-06). Below 1e-12 decades (a relative 2.3e-12: a norm of 1 after rounding, a
    norm clip's threshold) it is 0 (it printed 10^-0.00000000000000005551)."""
    if abs(v) >= 1000:
        return f"{v:.1f}"
    if abs(v) < 1e-12:
        return "0"
    if abs(v) >= 1e-4 or not math.isfinite(v):
        return f"{v:.4g}"
    return f"{v:.{3 - math.floor(math.log10(abs(v)))}f}"


def _layers(idx) -> str:
    """"25, 27 and 37" (at most five named, then "... (12 in all)")."""
    idx = [int(i) for i in idx]
    shown = ", ".join(map(str, idx[:5]))
    if len(idx) > 5:
        return f"{shown}, ... ({len(idx)} in all)"
    return shown if len(idx) == 1 else f"{', '.join(map(str, idx[:-1]))} and {idx[-1]}"


def forward_span(act_log10) -> tuple[int, int, float] | None:
    """The forward activations' change: ``(first layer, last layer, change in decades)`` between the
    first and the last layer whose output std ``act_log10`` is a finite log10, or None with fewer than two."""
    a = np.asarray(act_log10, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(a))
    if ok.size < 2:
        return None
    i0, i1 = int(ok[0]), int(ok[-1])
    return i0, i1, float(a[i1] - a[i0])


def _forward_excursions(act_log10, i0: int, i1: int, decades: float = 3.0) -> str:
    """Where the forward std between layers ``i0`` and ``i1`` goes ``decades`` or more beyond both
    ends (an ELU stack ending 4.8 decades above its start peaked 17 decades higher at layer 260):
    the words that say so, else ""."""
    a = np.asarray(act_log10, dtype=np.float64)[i0 : i1 + 1]
    ok = np.isfinite(a)
    parts = []
    for pick, beyond, word in ((np.argmax, a[[0, -1]].max(), "up to"), (np.argmin, a[[0, -1]].min(), "down to")):
        k = int(pick(np.where(ok, a, -np.inf if word == "up to" else np.inf)))
        if abs(a[k] - beyond) >= decades and (a[k] > beyond) == (word == "up to"):
            parts.append(f"{word} 10^{_num(a[k])} at layer {i0 + k}")
    return f", on the way {' and '.join(parts)}" if parts else ""


def forward_cause(rate: float, signal_rate: float, L: int, threshold: float, act_log10) -> bool:
    """Whether the ||dW_l|| trend is the forward pass's, not the backward signal's.

    dW_l = dz_l^T h_l: log10 ||dW_l|| moves with the signal and with the activations h_l. When the
    signal has no trend (its change over the stack below ``threshold``) and the activations change
    by at least ``threshold`` decades and at least half the change of ||dW_l||, the other way round
    (activations growing up the stack make ||dW_l|| shrink going down), the trend is theirs. A
    clipped signal is the usual case: ReLU with unscaled skips explodes forward by 34 decades over
    300 layers, value clipping holds the signal flat, and ||dW_l|| shrinks by 35 decades towards the
    input: "vanishing" by rule 4, and what decides it is the exploding forward pass.
    """
    span = forward_span(act_log10)
    if span is None or not (math.isfinite(rate) and math.isfinite(signal_rate)):
        return False
    change, forward = rate * (L - 1), span[2]
    return (abs(signal_rate) * (L - 1) < threshold and abs(forward) >= threshold
            and abs(forward) >= 0.5 * abs(change) and forward * change < 0)


def _flat_weights_words(verdict: str, g, rate: float, signal_rate: float, L: int, threshold: float, act_log10) -> str:
    """Where the signal's trend decided and ||dW_l|| has none: the words that say the symptom by
    which training shows a vanishing (exploding) gradient, the first layers learning slower (faster)
    than the top's, is absent, and why (else ""). A zero-bias tanh stack of 1000 layers at width 64
    loses 2.4 decades of signal while ||dW_l|| runs from 10^-6.64 at the top to 10^-6.18 at layer 0:
    the activations h_l in dW_l = dz_l^T h_l shrink up the stack as the signal shrinks down it."""
    change, signal = rate * (L - 1), signal_rate * (L - 1)
    if not (math.isfinite(change) and math.isfinite(signal)) or abs(change) >= threshold or abs(signal) < threshold:
        return ""
    if (signal < 0) != (verdict == "vanishing"):
        return ""
    ok = np.flatnonzero(np.isfinite(g) & (g > -np.inf))
    lo, hi = int(ok[0]), int(ok[-1])
    slower = "slower" if verdict == "vanishing" else "faster"
    text = (f"||dW_l|| has no trend, though: the first layers' weights get gradients within "
            f"{decades(abs(g[lo] - g[hi]), '.2g')} of the top's (10^{_num(g[lo])} at layer {lo}, 10^{_num(g[hi])} at "
            f"layer {hi}), so under one learning rate they do not learn {slower} than the top's, the symptom by which "
            f"{verdict} gradients are usually seen in training")
    fwd = forward_span(act_log10)
    if fwd is not None and fwd[2] * signal > 0 and abs(fwd[2]) >= 0.5 * abs(signal):
        size = "" if abs(fwd[2]) >= 3 else f" ({decades(abs(fwd[2]))})"  # from 3 the forward's own sentence says it
        text += (f"; in dW_l = dz_l^T h_l the activations h_l {'shrink' if fwd[2] < 0 else 'grow'} up the stack{size} "
                 f"as the signal {'shrinks' if signal < 0 else 'grows'} down it")
    return text


# A mean-square residual this many decades above the stack's outputs is the targets' scale.
OUT_OF_REACH_DECADES = 3.0


def _out_of_reach(stack, res, loss_log10: float) -> str:
    """For mse, where the residuals dwarf the stack's outputs h_L and the unit scale of standardised
    targets: the words that say the small elasticities are the targets' scale (each scales as
    1 / the residual), not depth (else ""). Residuals of rms ~1 above tiny outputs (one tanh
    layer at sigma_w = 1e-5 on standard-normal targets) are the stack's own smallness, not the
    targets'."""
    if stack.loss != "mse" or not math.isfinite(loss_log10):
        return ""
    m = np.asarray(res.output.mantissa, dtype=np.float64)
    if not m.size or not np.all(np.isfinite(m)) or not np.any(m):
        return ""
    e = np.broadcast_to(np.asarray(res.output.exponent, dtype=np.int64), m.shape[:1])  # one per sample
    top = int(np.max(e))
    with np.errstate(divide="ignore", under="ignore"):
        m = np.ldexp(m, np.maximum(e - top, -2000)[:, None].astype(np.int32))  # the samples at the largest's exponent
        out = 0.5 * math.log10(float(np.mean(np.square(m)))) + top * math.log10(2)
    residual = 0.5 * loss_log10  # the loss is the mean of (y - t)^2
    if residual - out < OUT_OF_REACH_DECADES or residual < OUT_OF_REACH_DECADES:
        return ""
    return (f"; the loss is a mean square residual of rms 10^{_num(residual)}, {_num(residual - out)} decades above "
            f"the stack's outputs h_L (rms 10^{_num(out)}): targets that far from anything it outputs make every "
            "elasticity small (each scales as 1 / the residual), which is the targets' scale, not depth; "
            "standardised targets (zero mean, unit variance) remove it")


def _branch_changes(g, group: int) -> np.ndarray:
    """Each residual branch's change of log10 ||dW_l|| from its top layer to its bottom one
    (going down, like the rate; the finite ones), empty without branches of 2 layers or more."""
    g = np.asarray(g, dtype=np.float64)
    if group < 2 or not len(g) or len(g) % group:
        return np.zeros(0)
    blocks = g.reshape(-1, group)
    with np.errstate(invalid="ignore"):  # inf - inf: a branch without a finite change
        inside = blocks[:, 0] - blocks[:, -1]
    return inside[np.isfinite(inside)]


def branch_change(g, group: int) -> float:
    """The median over the residual branches of :func:`_branch_changes` (nan without any)."""
    inside = _branch_changes(g, group)
    return float(np.median(inside)) if inside.size else math.nan


def branch_words(g, group: int, threshold: float) -> str:
    """Where ||dW_l|| changes by ``threshold`` decades or more inside the residual branches, from
    each branch's top layer to its bottom one (the median over the branches): the sentence that
    says so (else ""). The verdict reads the skip path and the groups' norms, which the branches'
    top layers dominate; a branch that loses 5.5 decades over its 10 layers does not show there."""
    inside = _branch_changes(g, group)
    if not inside.size or abs(float(np.median(inside))) < threshold:
        return ""
    typical = float(np.median(inside))
    over = ("" if inside.size == 1 else f" (the median over {count(inside.size, 'branch', 'branches')}, "
            f"{float(np.min(inside)):+.3g} to {float(np.max(inside)):+.3g})")
    return (f"inside {'the' if inside.size == 1 else 'each'} residual branch of {group} layers ||dW_l|| changes by "
            f"{typical:+.3g} decades from its top layer to its bottom one{over}: within a branch its bottom layers get "
            f"far {'smaller' if typical < 0 else 'larger'} updates than its top, so no single learning rate suits every "
            "layer, while the skip path carries the signal past the branches")


def _walk_words(g, rate: float, group: int, L: int, threshold: float = 0.0) -> list[str]:
    """Where the fitted rate lies within the random walk of the layers' norms (:func:`within_walk`)
    and the walk spans ``threshold`` decades or more over the stack: the words that say so.

    Within two standard errors one run does not settle the rate; that is not the absence of a
    trend. The sign is called the seed's only within one standard error (He tanh at width 16 over
    2,000 layers: fits of both signs): SELU at lecun_normal, depth 300, width 32, read "+0.00813,
    its size and even its sign are the seed's" (1.8 standard errors of 0.0045) where ||dW_l||
    grew towards the input in 12 of 12 seeds, by +1.4 to +5.3 decades (mean field's chi_1 =
    1.0716: +0.0150 decades a layer). Mean field is not asked here: its first use imports SciPy,
    some 23 MB that the plan's memory estimate of a diagnosis does not hold."""
    se = within_walk(g, rate, group)
    if se is None or se * (L - 1) < max(threshold, 0.5):
        return []
    t = abs(rate) / se
    settled = ("so its size and even its sign are the seed's" if t < 1 else
               f"so one run does not settle its size, nor surely its sign ({t:.2g} standard errors from 0, short of "
               "two): that is not the absence of a trend")
    return [f"the layers' ||dW_l|| wander like a random walk, as a product of random layers at a finite width does: "
            f"the fit's standard error is {se:.2g} decades per layer ({se * (L - 1):.2g} over the stack), more than "
            f"half its rate, {settled}"]


# A stable stack whose fitted rate is at least SHALLOW_RATE decades per layer and adds up to at
# least SHALLOW_SHARE of the threshold over the stack is stable by its depth: the words say so.
SHALLOW_RATE = 0.1
SHALLOW_SHARE = 0.5


def threshold_length(rate: float, n: int, threshold: float) -> float | None:
    """The length (layers, or steps through time) at which ``rate`` decades a layer or step changes
    by ``threshold`` decades, where a stable verdict over ``n`` holds by that length, not by the
    rate (the rate at least :data:`SHALLOW_RATE` and adding up to at least :data:`SHALLOW_SHARE`
    of the threshold over ``n``); else None. The stacks' and the recurrent nets' verdicts say it."""
    if not math.isfinite(rate) or abs(rate) < SHALLOW_RATE or abs(rate) * (n - 1) < SHALLOW_SHARE * threshold:
        return None
    return threshold / abs(rate) + 1


def _shallow_words(g, rate: float, signal_rate: float, L: int, threshold: float, group: int) -> list[str]:
    """Where a stable verdict holds by the stack's depth, not by its rate: the words that say at
    which depth the rate reaches the threshold (else []). "gradients are stable" for 3 sigmoid
    layers at -0.81 decades per layer, the rate that 50 such layers are judged vanishing by, read
    as if the rate were harmless; a rate within the layers' random walk (:func:`within_walk`) is
    the seed's, and not extrapolated."""
    name, r = max((("||dW_l||", rate), ("||dL/dh_l||", signal_rate)),
                  key=lambda p: abs(p[1]) if math.isfinite(p[1]) else -1.0)
    depth = threshold_length(r, L, threshold)
    if depth is None or within_walk(g, rate, group) is not None:
        return []
    kind = "vanishing" if r < 0 else "exploding"
    return [f"stable by its depth, not by its rate: at {r:+.3g} decades per layer {name} would change by the "
            f"threshold's {threshold:g} decades in a stack of {depth:.1f} layers, so a deeper stack "
            f"of this kind would be {kind} (few layers are the remedy here: reduced depth)"]


def _ends_without_trend(g, rate: float, threshold: float, group: int) -> str:
    """Where the two ends of ||dW_l|| differ by ``threshold`` or more under a change of the fit
    below it: the words that say so (else ""). The layers scatter around the fitted line (a
    narrow or clipped stack, a top layer apart from the rest), and the ends are two such points;
    or the fit is just below the threshold (ends +2.21, fit +1.73: not "the layers between do not
    follow it", which it said of such a stack)."""
    finite = np.flatnonzero(np.isfinite(g) & (g > -np.inf))
    ends = float(g[finite[0]] - g[finite[-1]])  # going down, like the rate
    if abs(ends) < threshold or not math.isfinite(rate):
        return ""
    _, y0 = grad_rate(g, group)
    scatter = float(np.max(np.abs(g[finite] - (y0 - rate * finite))))
    return (f": the ends differ by {ends:+.3g} decades, but the trend does not (the fit over the stack changes by "
            f"{rate * (len(g) - 1):+.3g} decades, below the threshold of {threshold:g}; single layers lie up to "
            f"{scatter:.3g} decades from the fitted line)")


def explain(verdict: str, stack, g, rate, signal_rate, threshold, res, elasticity=None, rule: str | None = None,
            loss_log10: float = math.nan, tiny: float = 8.0, weight_log10=None, weights_sampled: bool = False) -> str:
    """The plain-language explanation of a verdict: what the rule that decided saw, where, and why.

    ``elasticity``: log10 e_l per layer (rule 5); ``rule``: :func:`judge`'s second value;
    ``weight_log10``: log10 ||W_l|| per layer of the parameters that ran (empty or None: unknown,
    then the stack's sigma_w stands for the weights' gain); ``weights_sampled``: those are the
    result's estimates from three rows of each layer (the words say so).
    """
    g = np.asarray(g, dtype=np.float64)
    L = len(g)
    finite = np.isfinite(g) & (g > -np.inf)
    lo, hi = FLOAT_LIMITS["float64"]
    sat = np.asarray(getattr(res, "saturation", np.zeros(L)), dtype=np.float64)
    std = np.asarray(res.act_std.log10(), dtype=np.float64)
    words = []
    branch = branch_words(g, stack.residual, threshold)
    forward_said = False  # the forward's change is in the verdict's own sentence
    span = sig = None
    if finite.sum() >= 2:
        lo_l, hi_l = int(np.flatnonzero(finite)[0]), int(np.flatnonzero(finite)[-1])
        span = (f"||dW|| from 10^{_num(g[hi_l])} at layer {hi_l} (the top{'' if hi_l == L - 1 else ' non-zero'}) "
                f"to 10^{_num(g[lo_l])} at layer {lo_l}")
        sig = f"the backward signal ||dL/dh_l|| changes by {signal_rate:+.3g} decades per layer going down"
    trends = f"{sig}, ||dW_l|| by {rate:+.3g} ({span})" if span else None
    no_trend = (f"no trend over {L} layers (change over the stack {rate * (L - 1):+.3g} decades for ||dW_l||, "
                f"{signal_rate * (L - 1):+.3g} for the signal, threshold {threshold:g})" if span else
                "one layer with a gradient, no trend to fit")
    clip_said = False  # the signal clip is in the verdict's own sentence
    if rule == "pair":
        text, clip_said = _pair_words(stack, res, g)
        words.append(text)
    elif rule == "identical":
        words.append(_identical_words(res, g))
    elif verdict == "no gradient":
        floor = floored_layers(stack.activation, g, sat, res.act_std.log10(), res.act_mean.log10())
        if L and floor[-1]:
            words.append(f"no gradient at all: every ||dL/dW_l|| is exactly zero because the derivative of the "
                         f"saturated units underflowed beyond even the exponent range: every unit of layer {L - 1} "
                         f"(the top) has {stack.activation}' below 2^(-2^62) (as {stack.activation}' does at "
                         f"{SATURATED_AT.get(stack.activation, 'its limit')}), which no "
                         "int64 exponent holds; the true gradient is not 0, and every layer below inherits the zero")
        elif stack.residual and stack.residual_scale == 0:
            words.append("no gradient at all: every ||dL/dW_l|| is exactly zero because residual_scale is 0: every "
                         f"layer sits in a residual group whose branch is multiplied by 0 (h + 0 {stack.activation}(z) "
                         "at the end of each group), so the loss does not depend on any weight; the skip path "
                         "carries the signal ||dL/dh_l|| past them")
        elif stack.loss in ("bce", "softmax_ce") and loss_log10 == -math.inf:  # their loss is > 0 at finite logits
            words.append("no gradient at all: every ||dL/dW_l|| is exactly zero because the loss and its gradient "
                         f"at the head underflowed beyond even the exponent range: the {stack.loss} head is right "
                         "with a margin beyond ~3e18 for every sample, so its loss and dL/dy = exp(-margin) lie "
                         "below 2^(-2^62), which no int64 exponent holds; the true gradient is not 0, and every "
                         "layer below inherits the zero")
        elif (under := float_underflow(stack, res)).size:
            words.append("no gradient in the float computation: every ||dL/dW_l|| reads exactly zero because "
                         + float_underflow_words(stack, under))
        else:
            zeros = (", or forward activations beyond any int64 exponent: below"
                     if forward_zeros(stack.activation, res.act_std.log10()).size else "")
            words.append("no gradient at all: every ||dL/dW_l|| is exactly zero (an all-zero input or signal, or "
                         f"every unit dead{zeros})")
    elif rule == "zeros":
        top_nz = int(np.flatnonzero(g > -np.inf).max())
        below = np.flatnonzero(g[:top_nz] == -np.inf)[::-1]
        words.append(f"gradients vanish at some layers: layer{'s' if below.size > 1 else ''} {_layers(below)} "
                     f"below layer {top_nz} (which has a gradient) get{'' if below.size > 1 else 's'} an exactly zero "
                     "||dL/dW_l||: no update reaches them")
        if trends:
            words.append(f"elsewhere {trends}")
    elif rule == "trend" and forward_cause(rate, signal_rate, L, threshold, std):
        i0, i1, grow = forward_span(std)
        clipped = (f", clipped ({stack.clip} at {stack.clip_threshold:g}) at every layer,"
                   if stack.clip is not None and stack.clip_on == "signal" else "")
        words.append(f"gradients {'vanish' if verdict == 'vanishing' else 'explode'} towards the input because the "
                     f"forward pass {'explodes' if grow > 0 else 'vanishes'}: ||dW_l|| changes by "
                     f"{rate * (L - 1):+.3g} decades going down ({span}) while the backward signal ||dL/dh_l||"
                     f"{clipped} has no trend ({signal_rate * (L - 1):+.3g} decades over the stack); dW_l = dz_l^T "
                     f"h_l, and the forward activations h_l {'grow' if grow > 0 else 'shrink'} by {abs(grow):.3g} "
                     f"decades up the stack (std 10^{_num(std[i0])} at layer {i0}, 10^{_num(std[i1])} at layer {i1})"
                     + ("; clipping the backward signal does not bound the forward pass" if clipped else ""))
        forward_said = True
    elif rule == "walk":
        s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
        ends = walk_ends(g, s, stack.residual)
        # the ends quoted are those of the curve whose change decided (float32 tanh, depth 200: "||dW|| from
        # 10^-2.041 ... to 10^-2.123 ..., -2.18 decades going down", the -2.18 being the signal's)
        ok = np.flatnonzero(np.isfinite(s))
        by_signal = ok.size >= 2 and ends == float(s[ok[0]] - s[ok[-1]])
        ends_span = (f"||dL/dh_l|| from 10^{_num(s[ok[-1]])} at layer {ok[-1]} to 10^{_num(s[ok[0]])} at layer "
                     f"{ok[0]}, {ends:+.3g} decades going down (the signal's ends; ||dW_l||'s, {span}, change "
                     "less)" if by_signal else f"{span}, {ends:+.3g} decades going down (||dW_l||'s ends; the "
                     "signal's change less)")
        # (one run's fits within two standard errors do not tell a walk from a trend: Xavier tanh, depth 200,
        # width 32, said "another seed can end the other way" where the signal ended lower in 16 of 16 seeds)
        words.append(f"gradients {'vanish' if verdict == 'vanishing' else 'explode'} in this run, by its ends, not "
                     f"by a fitted trend: {ends_span}, while the fitted rates ({rate:+.3g} for ||dW_l||, "
                     f"{signal_rate:+.3g} for the signal, decades per layer) lie within two standard errors of the "
                     "random walk that a product of random layers at a finite width takes: one run does not tell the "
                     "stack's trend from this seed's walk, so whether another seed ends the same way, or more layers continue it in a line, is not known "
                     "from it")
    elif rule == "trend":
        words.append(f"gradients {'vanish' if verdict == 'vanishing' else 'explode'}: {trends}")
        flat = _flat_weights_words(verdict, g, rate, signal_rate, L, threshold, std)
        if flat:
            words.append(flat)
        words += _walk_words(g, rate, stack.residual, L)
    elif rule == "saturated":
        i0, i1, share = stuck_end(L, rate * (L - 1), stuck_state(stack, res))
        where = "top" if rate > 0 else "bottom"
        what = stuck_words(stack)
        words.append(f"gradients vanish in the residual branches at the {where} of the stack, where the units are "
                     f"{what.split(' (')[0]}, while the skip path carries the signal with no trend: ||dL/dh_l|| "
                     f"changes by {signal_rate * (L - 1):+.3g} decades over the stack (threshold {threshold:g}), "
                     f"||dW_l|| by {rate * (L - 1):+.3g} going down ({span}); {100 * share:.0f} % of the units of "
                     f"layers {i0}-{i1} are {what}, so those branches learn next to nothing"
                     + (" (the forward activations grow along the skip path, which no normalisation holds)"
                        if where == "top" and not stack.batch_norm else ""))
    elif rule == "branch" and L // stack.residual == 1:
        words.append(f"gradients {'vanish' if verdict == 'vanishing' else 'explode'} inside the residual branch: "
                     f"the stack is one branch of {L} layers around one skip, so the skip path has no trend to "
                     f"measure; {span}")
    elif rule == "branch":
        words.append(f"gradients {'vanish' if verdict == 'vanishing' else 'explode'} inside the residual branches, "
                     f"while the skip path has no trend: the backward signal at the groups' inputs changes by "
                     f"{signal_rate * (L - 1):+.3g} decades over the stack, the groups' ||dW|| by "
                     f"{rate * (L - 1):+.3g} (threshold {threshold:g}); {span}")
    elif rule == "non-finite":
        words.append("gradients explode: the backward pass turned non-finite")
    elif rule == "overflow":
        top = int(np.nanargmax(np.where(finite, g, np.nan)))
        words.append(f"gradients are huge in magnitude, not by a trend: ||dW_l|| reaches 10^{_num(g[top])} at layer "
                     f"{top}, beyond float64's largest 10^{hi:.2f} (a plain float64 chain reads inf); {no_trend}")
    elif rule == "underflow":
        top = int(np.nanargmax(np.where(finite, g, np.nan)))
        words.append(f"gradients are tiny in magnitude, not by a trend: every ||dW_l|| lies below float64's smallest "
                     f"normal 10^{lo:.2f} (at most 10^{_num(g[top])}, at layer {top}): plain float64 reads 0 or "
                     f"subnormal everywhere; {no_trend}")
    elif rule == "insensitive":
        e = np.asarray(elasticity, dtype=np.float64)
        top = int(np.nanargmax(np.where(np.isfinite(e), e, np.nan)))
        words.append(f"gradients vanish everywhere in magnitude, not by a trend: every elasticity "
                     f"||dW_l|| ||W_l|| / loss is below 10^-{tiny:g} (at most 10^{_num(e[top])}, at layer {top}; "
                     f"loss 10^{_num(loss_log10)}): changing any W_l by 100 % of itself would change the loss by at "
                     f"most 10^{_num(e[top] + 2)} % of itself, to first order; "
                     + (no_trend if max(abs(rate), abs(signal_rate)) * (L - 1) < threshold else
                        f"whatever their trend over the layers ({trends}), none of them can move the loss")
                     + _out_of_reach(stack, res, loss_log10))
    elif span:
        words.append(f"gradients are stable: {sig}, ||dW_l|| by {rate:+.3g} (threshold {threshold:g} decades "
                     f"over the stack); {span}" + ("" if branch else _ends_without_trend(g, rate, threshold, stack.residual)))
        words += _walk_words(g, rate, stack.residual, L, threshold)
        words += _shallow_words(g, rate, signal_rate, L, threshold, stack.residual)
    elif finite.sum() == 1:
        words.append(f"one layer with a gradient: ||dW|| = 10^{_num(g[finite][0])}; no trend to fit")
    if branch:
        words.append(branch)
    bn = small_batch_norm(stack, res, verdict)
    words += bn or batch_norm_explodes(stack, res, verdict, signal_rate)
    if rule != "identical":  # (its sentence says why)
        words += batch_norm_without_spread(stack, res)
    words += _findings(stack, g, res, verdict, forward_said, weight_log10, weights_sampled, clip_said)
    words += partial_underflow_words(stack, res)
    return "; ".join(words) + "."


# The two samples' gradients into the top layer's batch norm over a batch of 2 are the same when
# they differ by at most this many units of the dtype's rounding (Result.extras["bn_pair_difference"],
# relative): the kernels' dy and batch norm's backward round at that level, so what passes is noise.
BN_PAIR_ROUNDING = 4


def bn_pair_cancels(stack, res) -> bool:
    """Whether every ||dL/dW_l|| of a plain stack with batch norm over a batch of 2 is 0 in exact
    arithmetic: batch norm's backward over two samples is dz_1 = -dz_2 = gamma (dy_1 - dy_2) / 2
    eps / (d^2 + eps)^(3/2), and at the top layer the two samples' dy agree to the dtype's rounding
    (``res.extras["bn_pair_difference"]`` at most :data:`BN_PAIR_ROUNDING` times its epsilon). Then
    dW_{L-1} = dz^T h_{L-1} = 0 and dL/dh_{L-1} = dz W = 0, and every layer below inherits the
    zero; the kernels' norms are what is left of rounding errors (mpmath's plain chain gives 10^-52
    at 50 digits and 10^-102 to 10^-108 at 100: tests/test_small_batch_norm.py). A reviewer's case:
    2 sigmoid layers of width 2, a value clip at 0.05 that sets every entry of dL/dh_L to 0.05 for
    both samples, and sigmoid' the same at +-xhat (beta = 0): VANISHING by 2 to 4 decades a layer
    at 10^-17 to 10^-21, each backend's rounding another. Not with residual groups (the skip
    carries dL/dh_L past the top layer)."""
    pair = (getattr(res, "extras", None) or {}).get("bn_pair_difference")
    if not stack.batch_norm or stack.residual or pair is None or res.input_grad.mantissa.shape[0] != 2:
        return False
    return bool(pair <= BN_PAIR_ROUNDING * float(np.finfo(stack.dtype).eps))  # NaN: no


def bn_identical(stack, res) -> bool:
    """Whether a stack with batch norm ran on a batch of one input repeated (every row of x the
    same bits, ``res.extras["identical_samples"]``): batch norm maps identical samples to beta
    whatever the weights (z - mean = 0), so the loss depends on no W_l and every ||dL/dW_l|| is 0
    in exact arithmetic; what the kernels compute there is rounding noise amplified by
    1 / sqrt(eps) (a batch of 8 copies read VANISHING at ~10^-527, the backends a decade apart)."""
    return bool(stack.batch_norm and (getattr(res, "extras", None) or {}).get("identical_samples"))


def _noise_span(g) -> str:
    """Where the norms computed run, in words, for a gradient that is 0 in exact arithmetic."""
    finite = np.flatnonzero(np.isfinite(g) & (g > -np.inf))
    if finite.size > 1:
        return (f", and the norms computed (||dW_l|| 10^{_num(g[finite[-1]])} at layer {finite[-1]} to "
                f"10^{_num(g[finite[0]])} at layer {finite[0]}) are rounding noise, not a trend over depth")
    if finite.size:
        return f", and the norm computed (||dW_{finite[0]}|| = 10^{_num(g[finite[0]])}) is rounding noise"
    return " (and reads 0 here)"


def _identical_words(res, g) -> str:
    """The explanation of the "identical" rule (:func:`bn_identical`)."""
    B = res.input_grad.mantissa.shape[0]
    return (f"no gradient at all: every ||dL/dW_l|| is 0 in exact arithmetic{_noise_span(g)}: the {B} samples of "
            "the batch are one input repeated, and batch norm maps identical samples to beta whatever the weights "
            "(z - mean = 0 in every unit), so the loss depends on no W_l; give the batch distinct samples")


def _pair_words(stack, res, g) -> tuple[str, bool]:
    """The explanation of the "pair" rule (:func:`bn_pair_cancels`), and whether it names the
    signal clip (then the clip's own sentence, :func:`_clip_words`, is left out)."""
    L = len(g)
    noise = _noise_span(g)
    acted = getattr(res, "signal_clip_acted", None)
    why, remedy = "", ""
    clipped = stack.clip == "value" and stack.clip_on == "signal" and acted is not None and bool(acted[L])
    if clipped:
        c, act = stack.clip_threshold, stack.activation
        even = (f" ({act}' is even: with beta = 0 it is the same at xhat_2 = -xhat_1)" if act in EVEN_DERIVATIVE
                else "")
        why = (f": the value clip at {c:g} set the entries of dL/dh_L beyond it to +-{c:g}, alike for both samples, "
               f"and so is dy = dL/dh_L {act}'(gamma xhat + beta){even}")
        remedy = (" or a clip that keeps the two samples' top gradients apart (a norm clip, a threshold above "
                  "|dL/dh_L|, or clip_on or --clip-on \"layer\" or \"global\", which leave the derivative)")
    pair = float(res.extras["bn_pair_difference"])
    zero, apart = (("0 in exact arithmetic", "exactly") if pair == 0 else
                   (f"0 in exact arithmetic or below what {stack.dtype} resolves",
                    f"to {pair:.2g} of themselves, {stack.dtype}'s rounding"))
    return (f"no gradient at all: every ||dL/dW_l|| is {zero}{noise}: batch norm over a batch of 2 passes only the "
            "difference of its two samples' gradients (dz_1 = -dz_2 = gamma (dy_1 - dy_2) / 2 eps / (d^2 + "
            f"eps)^(3/2), d half the difference of their z), and at the top layer ({L - 1}) the two samples' dy agree "
            f"{apart}{why}; so dL/dW_{L - 1} = dz^T h_{L - 1} and dL/dh_{L - 1} = dz W_{L - 1} are 0, and every layer "
            "below inherits the zero; use a larger batch (over B samples batch norm takes out only the batch mean of "
            "the samples' gradients and passes the rest in full in B - 2 of the B - 1 directions it leaves: over 2 "
            f"only the difference is left){remedy}"), clipped


# activations whose phi' is even: phi'(-z) = phi'(z)
EVEN_DERIVATIVE = ("identity", "sigmoid", "tanh")


# Batch norm over a batch of 2 is named as what decides a vanishing or exploding gradient when a
# layer's median unit lets through at most this share eps / (var_B + eps) of its gradient (median
# over the layers): a decade or more a layer, and every such unit's output within about 5 % of +-1.
BN_NAMED_SHARE = 0.1


def small_batch_norm(stack, res, verdict: str) -> list[str]:
    """What batch norm over a batch of 2 does to the gradient, and where the dtype cannot resolve it.

    Over two samples a unit's normalised output is xhat = +-d / sqrt(d^2 + eps), d half the
    difference of the two samples' z: a step of width sqrt(eps) in d, nearly +-1 whatever the
    input once d^2 >> eps. Its backward is dz = +-gamma (dy_1 - dy_2) / 2 eps / (d^2 + eps)^(3/2):
    batch norm's scale 1 / sqrt(d^2 + eps) times the share s = eps / (d^2 + eps)
    (``res.bn_share``: its median and its largest over each layer's units). Over B samples the
    backward passes a unit's gradient in full in the B - 2 directions orthogonal to the batch mean
    and to xhat, and only s of it along xhat; over 2 there is nothing but that. So a vanishing
    (narrow layers: every share small) or exploding (wide layers: a few units with d^2 <~ eps pass
    it at up to 1 / sqrt(eps)) verdict is named as batch norm's when the median unit's share is at
    most :data:`BN_NAMED_SHARE`, and the remedy is a larger batch.

    The kernels take s as 1 - xhat^2 (dy - mean(dy) - xhat mean(dy xhat)), a difference of numbers
    near 1 resolved to the dtype's epsilon u: a relative error of about u / s per layer (0.2-1 times
    it where measured against the closed form). From the highest layer where the sum of u / s over the
    most open unit of it and every layer above reaches 1, the norms are rounding noise, and the
    sentence says so whatever the verdict (tests/test_small_batch_norm.py: below that layer every
    backend is off by at least the norm's own size).
    """
    share = getattr(res, "bn_share", None)
    if not stack.batch_norm or share is None or res.input_grad.mantissa.shape[0] != 2:
        return []
    share = np.asarray(share, dtype=np.float64)
    words = []
    with np.errstate(divide="ignore"):
        typical, most = np.median(np.log10(share), axis=0)
    if verdict in ("vanishing", "exploding") and typical <= math.log10(BN_NAMED_SHARE):
        what = "removes the gradient" if verdict == "vanishing" else "makes the gradient grow"
        text = (f"batch norm over a batch of 2 {what}: it maps each unit to +-d / sqrt(d^2 + eps) (d: half the "
                "difference of the two samples' z), nearly +-1 whatever the input, and the gradient through it is "
                f"only what eps = {stack.bn_eps:g} leaves: its derivative eps / (d^2 + eps)^(3/2) is 1 / sqrt(d^2 + "
                f"eps) times the share eps / (d^2 + eps), 10^{_num(typical)} for a layer's median unit and "
                f"10^{_num(most)} for its most open one (medians over the layers)")
        if verdict == "exploding":
            text += (f"; where the two samples nearly coincide (d^2 <~ eps) the share is near 1 and the derivative "
                     f"up to 1 / sqrt(eps) = {stack.bn_eps ** -0.5:.3g}, and the gradient grows through those few units")
        words.append(text + "; use a larger batch (over B samples batch norm passes a unit's gradient in full in B - 2 "
                            "of the B - 1 directions that the batch mean leaves, and by the share only in the last, "
                            "along xhat: over 2 that one is all there is)")
    u = float(np.finfo(stack.dtype).eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.cumsum((u / share[:, 1])[::-1])[::-1]  # from the top down to each layer
    noise = np.flatnonzero(error >= 1)
    if noise.size:
        top = int(noise.max())
        words.append(f"in {stack.dtype} ||dW_l|| and ||dL/dh_l|| from layer {top} down are rounding noise, not the "
                     "exact gradient: batch norm's backward takes each unit's share eps / (d^2 + eps) as 1 - xhat^2, "
                     f"a difference of numbers near 1 resolved to {u:.2g}, and the relative errors {u:.2g} / share "
                     f"of the most open unit of layer {top} and of every layer above add up to 1 or more"
                     + ("; float64 resolves 2.2e-16" if stack.dtype == "float32" else ""))
    return words


def batch_norm_without_spread(stack, res) -> list[str]:
    """The lowest batch-norm layer whose median unit's batch variance lies below eps times the
    dtype's resolution (``res.bn_share``, eps / (var_B + eps), is 1 to rounding): the samples of the
    batch are the same there, or nearly. Batch norm then divides z - mean by sqrt(eps) instead of
    normalising, and for identical samples z - mean is rounding noise, and so is everything after
    it: a batch of 8 copies of one input read VANISHING, ||dW|| ~ 10^-527 and the backends 1.5
    decades apart, where the true gradient is 0 (every layer's output is phi(beta), whatever W),
    until batch norm's mean took a unit whose samples are all equal exactly (now it reads 0)."""
    share = getattr(res, "bn_share", None)
    if not stack.batch_norm or share is None:
        return []
    u = float(np.finfo(stack.dtype).eps)
    flat = np.flatnonzero(np.asarray(share, dtype=np.float64)[:, 0] >= 1 - u)
    if not flat.size:
        return []
    return [f"batch norm finds no spread in the batch at layer {flat[0]}: most of its units have a batch variance "
            f"below eps times {stack.dtype}'s resolution (eps / (var_B + eps) is 1 to rounding), as when the "
            f"samples are the same there; it then divides z - mean by sqrt(eps) = {math.sqrt(stack.bn_eps):.3g} "
            "instead of normalising, and for identical samples z - mean is rounding noise, and so is everything "
            "above and every gradient: their true gradient is 0 (batch norm maps identical samples to beta)"]


# A plain ReLU stack with batch norm at large batches: ||dL/dh||^2 grows by pi / (pi - 1) a layer
# at initialisation (Yang et al. 2019, "A mean field theory of batch normalization").
BN_RELU_DECADES = 0.5 * math.log10(math.pi / (math.pi - 1))


def batch_norm_explodes(stack, res, verdict: str, signal_rate: float) -> list[str]:
    """Batch norm named as a cause of an exploding signal in a plain stack (no residual), over a
    batch of 3 or more (2: :func:`small_batch_norm`): at initialisation batch norm makes the
    gradient grow by itself, the faster the smaller the batch (tests/test_verdict.py measures
    ReLU's large-batch rate against :data:`BN_RELU_DECADES`)."""
    if not stack.batch_norm or stack.residual or verdict != "exploding" or not signal_rate > 0:
        return []
    batch = int(res.input_grad.mantissa.shape[0])
    return [f"batch norm itself makes gradients explode at initialisation, the faster the smaller the batch (Yang et "
            f"al. 2019: a plain ReLU stack over large batches by sqrt(pi / (pi - 1)) a layer, {BN_RELU_DECADES:.3f} "
            f"decades); here the signal grows by {signal_rate:+.3g} decades a layer over a batch of {batch}: residual "
            "connections (residual=k) or fewer layers tame it; rescaling the weights does not (batch norm undoes any scale)"]


def countable_mean(fraction, unit: str = "layers") -> tuple[float, str]:
    """The mean of a per-layer (per-step) fraction such as saturation over the layers where it
    is a number, and words saying which those are when some are not (NaN pre-activations: the
    forward overflowed); NaN when none is."""
    f = np.asarray(fraction, dtype=np.float64)
    ok = ~np.isnan(f)
    if ok.all() or not ok.any():
        return float(np.mean(f)), ""
    return float(np.mean(f[ok])), f" of the {int(ok.sum())} {unit} whose pre-activations are numbers"


def weight_gain(stack, weight_log10=None) -> tuple[float, bool]:
    """The weights' gain sigma_w and whether it was measured: ||W_l||_F / sqrt(N) (entries of
    variance sigma_w^2 / N), the median over the layers, when their norms ``weight_log10`` are
    known; else the stack's own (a model imported from PyTorch has none: its Stack's sigma_w is
    the init's default, not the model's)."""
    w = np.asarray([] if weight_log10 is None else weight_log10, dtype=np.float64)
    w = w[np.isfinite(w)]
    if not w.size:
        return stack.gain, False
    return float(10.0 ** (np.median(w) - 0.5 * math.log10(stack.width))), True


def _sigmoid_rate(gain: float, sigma_b: float) -> float:
    """Mean field's rate of ||dL/dh_l|| (decades per layer, going down) of a sigmoid stack at
    weight gain ``gain`` and bias spread ``sigma_b``; NaN where it has none."""
    from gradbench import theory  # the verdict needs it for sigmoid stacks only

    try:
        return float(theory.mean_field("sigmoid", gain, sigma_b).decades_per_layer)
    except (ValueError, ArithmeticError):
        return math.nan


def clip_binds(threshold: float, signal_log10, dtype: str = "float64") -> np.ndarray:
    """The layers l whose backward signal a signal clip at ``threshold`` can have changed:
    ||dL/dh_l|| (after the clip; log10 in ``signal_log10``) at the threshold or above, to the
    rounding of ``dtype`` (a float32 norm clipped to 1 reads 1 - 6e-8: a tolerance of 1e-12
    decades missed 15 of 20 clipped layers). Below it no entry was clipped (a value clip sets one
    to c, so the norm is at least c; a norm clip sets the norm to c); the top gradient dL/dh_L,
    clipped first, is not among them."""
    tol = max(1e-12, 64 * float(np.finfo(dtype).eps) / math.log(10))
    return np.flatnonzero(np.asarray(signal_log10, dtype=np.float64) >= math.log10(threshold) - tol)


def clip_span_words(binds: np.ndarray, n: int, unit: str, lower: str, upper: str, top: str, chain: str) -> str:
    """The clause after the list of where a signal clip can bind (``binds``, sorted, 0 < size < n,
    of a chain that runs from ``n - 1`` down to 0): the ends where it cannot, whose rates are the
    loss derivative's. ``unit`` "layer", ``lower``/``upper`` "below"/"above" ("step",
    "before"/"after" through time); ``top`` the start of the chain ("from the top down to");
    ``chain`` what the clip holds ("signal")."""
    lo, hi = int(binds.min()), int(binds.max())
    parts = []
    if hi < n - 1:  # the chain grows going down (the clip binds at the bottom) or binds inside only
        parts.append(f"at none {upper} {unit} {hi}, so {top} {unit} {hi + 1} the rates are the loss derivative's")
    if lo > 0:
        parts.append(f"at none {lower} {unit} {lo}, so {lower} it the rates are the loss derivative's chain on the "
                     f"clipped {chain}")
    return "".join(f", and {p}" for p in parts)


def top_clip_words(mode: str) -> str:
    """What a clip of the chain's first gradient alone does: a norm clip scales it by one factor,
    which leaves the rates going back alone; a value clip sets its entries beyond the threshold
    to it, which can turn the direction the chain starts in (tanh, gain 3, T = 60: the carried
    ratio 10^-95.08 became 10^-95.45)."""
    if mode == "norm":
        return "which changes only where the chain starts (by one factor: its rates are the loss derivative's)"
    return ("which sets its entries beyond the threshold to it and so can turn the direction the chain starts in: "
            "the rates and the ratio going back can then differ somewhat from the unclipped loss derivative's")


CLIP_ELSEWHERE = ("(clip_on or --clip-on \"layer\" or \"global\" clips the parameter gradients instead and leaves "
                  "the derivative)")


@dataclass(frozen=True)
class ClipChain:
    """How the clip sentence (:func:`clip_record_words`) names a backward chain: ``subject`` "the
    backward signal", ``noun`` what one place holds ("signal"), ``unit`` "layer", ``norm`` the norm
    said at the peak ("||dL/dh_l||"), ``before`` where nothing but the first gradient was changed
    ("below the top"), ``first`` that gradient ("the top gradient dL/dh_L"), ``lower``, ``upper``,
    ``top`` and ``chain`` those of :func:`clip_span_words`, ``other`` the pointer to the parameter
    clips."""

    subject: str = "the backward signal"
    noun: str = "signal"
    unit: str = "layer"
    norm: str = "||dL/dh_l||"
    before: str = "below the top"
    first: str = "the top gradient dL/dh_L"
    lower: str = "below"
    upper: str = "above"
    top: str = "from the top down to"
    chain: str = "signal"
    other: str = CLIP_ELSEWHERE


def acted_list(acted) -> str:
    """"47 of the 50 layers"'s parenthesis: the places where a clip record is True, or those where
    it is not ("all but 6, 7 and 29"), whichever list is shorter."""
    acted = np.asarray(acted, dtype=bool)
    on, free = np.flatnonzero(acted), np.flatnonzero(~acted)
    return _layers(on) if on.size <= free.size else f"all but {_layers(free)}"


def clip_record_words(mode: str, threshold: float, acted, s, only_first: bool, words: ClipChain = ClipChain()) -> str:
    """The sentence on a clipped backward chain from the kernels' record of where the clip changed
    it (``acted``: one bool a place, n - 1 the one nearest the loss), and what that means.
    ``only_first``: the clip changed the gradient the chain starts from and nothing else (then
    the rates going back are the loss derivative's, :func:`top_clip_words`). ``s``: log10 of the
    places' norms, whose largest among the unchanged places is named when the clip changed
    (almost) nothing. (From the norms alone a sentence could only say where the clip *may* have
    acted: a value clip changes entries beyond the threshold, which a norm cannot show.)"""
    acted = np.asarray(acted, dtype=bool)
    n, on, w = len(acted), np.flatnonzero(acted), words
    clip = f"{mode} at {threshold:g}"
    if not on.size or only_first:
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(acted | ~np.isfinite(np.asarray(s, dtype=np.float64)), np.nan, s)
        peak = int(np.nanargmax(s)) if not np.all(np.isnan(s)) else None
        where = f" ({w.norm} at most 10^{_num(s[peak])}, at {w.unit} {peak})" if peak is not None else ""
        if not only_first:
            return (f"{w.subject} is clipped ({clip}), but the clip changed no {w.noun}{where}: these are the norms "
                    "of the loss's derivative")
        return (f"{w.subject} is clipped ({clip}), but {w.before} the clip changed nothing{where}: it clipped only "
                f"{w.first}, " + top_clip_words(mode))
    if on.size == n:
        return (f"{w.subject} is clipped ({clip}) and the clip changed it at every {w.unit}, so these are the norms "
                f"of the clipped chain, not of the loss's derivative: clipping the signal can hold an exploding chain "
                f"flat {w.other}")
    span = clip_span_words(on, n, w.unit, w.lower, w.upper, w.top, w.chain)
    return (f"{w.subject} is clipped ({clip}); the clip changed it at {on.size} of the {n} {w.unit}s "
            f"({acted_list(acted)}){span}; where it acts, clipping the signal can hold an exploding chain flat "
            f"{w.other}")


def _clip_words(stack, res) -> str:
    """The sentence on a clipped backward signal: where the clip acted, from the kernels' own
    record (``Result.signal_clip_acted``: entries 0 .. L - 1 below the top, L the top gradient),
    and what that means (:func:`clip_record_words`)."""
    acted = np.asarray(res.signal_clip_acted, dtype=bool)
    L = stack.depth
    with np.errstate(divide="ignore"):
        s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
    return clip_record_words(stack.clip, stack.clip_threshold, acted[:L], s, bool(acted[L]) and not acted[:L].any())


def _lagging_words(stack, g, res, verdict: str, far) -> list[str]:
    """The sentence naming the layers of :func:`lagging` (not those left out of the fit as
    isolated, said apart), with their units' saturation or death where most of them are."""
    idx, gap = lagging(g)
    keep = ~np.isin(idx, far)
    idx, gap = idx[keep], gap[keep]
    if not idx.size:
        return []
    many = idx.size > 1
    size = f"{gap.min():.2g} to {gap.max():.2g} decades" if many and f"{gap.min():.2g}" != f"{gap.max():.2g}" \
        else f"{gap.max():.2g} decades"
    why = ""
    state = stuck_state(stack, res)
    if state is not None:
        f = state[idx]
        part = float(np.nanmean(f)) if np.isfinite(f).any() else math.nan
        if part > 0.5:
            why = f"; {100 * part:.0f} % of their units are {stuck_words(stack)}"
    though = f", though the stack as a whole reads {verdict}" if verdict == "stable" else ""
    # residual=1: each is a branch of its own, past which the skip path carries the signal; the
    # rate's fit leaves them out (:func:`rate_points`), as a group's norm hides a saturated layer
    skip = ("; each is a residual branch the skip path carries the signal past, and the rate's fit leaves "
            f"{'them' if many else 'it'} out" if stack.residual == 1 else "")
    return [f"layer{'s' if many else ''} {_layers(idx)} {'get' if many else 'gets'} updates {size} smaller than the "
            f"layers on both sides (||dW_l|| below the median of the {LAGGING_WINDOW} layers above and of the "
            f"{LAGGING_WINDOW} below){why}: at a learning rate that suits their neighbours "
            f"{'they learn' if many else 'it learns'} next to nothing{though}{skip}"]


# A forward pass whose own rounding moves the loss by this share or more (log10) is called chaotic
# in the diagnosis. The gradients move about 10^3 times more than the loss (a survey of 272 random
# stacks without a signal clip, float64 and float32: relative change of ||dW_l|| ~ 10^(share + 3),
# 10-90 % of runs +1.8 to +3.9, correlation 0.92; every run from -4 on moved by 0.05 decades or
# more, none below -12 by more than 1e-3). Calibration by one weight's last bit (float64, C):
# tanh with batch norm, depth 300, width 64 (-2.8): the loss by 0.2 %, ||dW_l|| by up to 0.12
# decades; sigmoid with batch norm, depth 1500, width 6, batch 3 (+0.7): 2.7 % and 3.5 decades;
# tanh at sigma_w = 1.5, depth 400, width 256 (-6.5): 1.6e-6 and 3e-4 decades; ReLU at
# sigma_w = 2 (exploding, not chaotic), He ReLU, Xavier tanh: -15 to -17, nothing moved.
# Not seen by it: a signal clip (the clipped ||dL/dh_l|| is not the loss's derivative), and
# float32 batch norm over 2-4 samples, whose backward is a cancellation the loss does not show.
CHAOTIC_LOG10 = -4.0


def rms_log10(mean_log10, std_log10) -> np.ndarray:
    """log10 of each layer's root mean square sqrt(mean^2 + std^2) from the logs of |mean| and std."""
    m, sd = np.asarray(mean_log10, dtype=np.float64), np.asarray(std_log10, dtype=np.float64)
    top = np.maximum(m, sd)
    with np.errstate(invalid="ignore", over="ignore"):
        out = top + 0.5 * np.log10(1.0 + 10.0 ** (2 * (np.minimum(m, sd) - top)))
    return np.where(np.isinf(top), top, out)  # both -inf: 0; both inf: inf (inf - inf read NaN)


def rounding_share(signal_log10, mean_log10, std_log10, loss_log10: float, dtype: str) -> tuple[float, int] | None:
    """The largest over states i of log10(u ||dL/dh_i||_F rms(h_i) / |L|) and that i: ``signal_log10``
    log10 ||dL/dh_i||, ``mean_log10`` and ``std_log10`` those of h_i's entries (aligned), u the
    dtype's unit roundoff (float64 2^-53, float32 2^-24). A first-order estimate: every entry of
    h_i moved by a relative u of random sign moves L by about that share of itself
    (sqrt(sum_j (dL/dh_j h_j u)^2)); above 0 the change saturates (the trajectory itself is
    another one). None where it cannot be formed (a zero or non-finite loss, no state)."""
    if not math.isfinite(loss_log10) or not len(signal_log10):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.asarray(signal_log10, dtype=np.float64) + rms_log10(mean_log10, std_log10) - loss_log10
    k[~np.isfinite(k)] = -np.inf
    if not np.any(np.isfinite(k)):
        return None
    at = int(np.argmax(k))
    return float(k[at] + math.log10(float(np.finfo(dtype).eps) / 2)), at


def rounding_sensitivity(res) -> tuple[float, int] | None:
    """How far a stack run's own rounding moves its loss (:func:`rounding_share`) and at which h_l
    (the output of layer l - 1; ||dL/dh_l|| is ``signal_norm[l]``, h_l's statistics
    ``act_mean[l - 1]``, ``act_std[l - 1]``); None with one layer."""
    if len(res.signal_norm.log10()) < 2:
        return None
    with np.errstate(divide="ignore"):
        share = rounding_share(res.signal_norm.log10()[1:], res.act_mean.log10()[:-1], res.act_std.log10()[:-1],
                               float(res.loss_exact.log10()), res.stack.dtype)
    return None if share is None else (share[0], share[1] + 1)


def chaos_words(share: tuple[float, int] | None, dtype: str, where: str) -> list[str]:
    """The sentence for a chaotic forward pass (``share`` from :func:`rounding_share`, at or above
    :data:`CHAOTIC_LOG10`); ``where`` names the state, as "h_34" or "h_t at step 12"."""
    if share is None or share[0] < CHAOTIC_LOG10:
        return []
    share = share[0]
    moved = ("by more than itself (a first-order estimate of 10^" + _num(share) + ": the trajectory is another one)"
             if share >= 0 else f"by ~10^{_num(share)} of itself")
    return [f"the forward pass is chaotic: {dtype}'s rounding of {where} (one part in "
            f"10^{-math.log10(np.finfo(dtype).eps / 2):.0f}) moves the loss {moved}, and the gradients "
            f"{'by decades' if share >= 0 else 'some 1000 times more'}, so "
            f"beyond their {'first digits' if share < -1 else 'direction and rough rate'} the printed norms are this "
            "run's rounding, not the weights': another backend, framework or machine reads them "
            f"{'decades' if share >= -1 else 'digits'} apart, as it amplifies the gradient (exact as the chain is, it "
            "is the chain of the rounded forward)"]


def slope_gain_words(stack, verdict: str, weight_log10=None, res=None) -> list[str]:
    """For a plain leaky-ReLU stack that vanishes or explodes (not PReLU: its slopes are parameters,
    which the result does not hold, trained or not): its chi_1 = sigma_w^2
    (1 + a^2) / 2 (any bias: phi'^2 averages (1 + a^2) / 2 over a symmetric z) and the gain of the
    edge of chaos, sqrt(2 / (1 + a^2)), He et al. (2015)'s for slope a; he_normal's sqrt 2 is
    ReLU's (torch's kaiming_normal_ with a = 0), so a slope of 0.2 reads chi_1 = 1.04, exploding
    by 0.0085 decades a layer: at depth 300, width 256 the signal grew by +0.0090 a layer, and at
    the gain named +0.0005 (stable)."""
    if (stack.activation != "leaky_relu" or verdict not in ("vanishing", "exploding")
            or stack.batch_norm or stack.residual or stack.clip is not None
            or (res is not None and (res.first_nonfinite_forward is not None or res.first_nonfinite_backward is not None))):
        return []  # (a non-finite run's trouble is its overflow)
    a = stack.act_param
    gain, _ = weight_gain(stack, weight_log10)
    chi = gain * gain * (1 + a * a) / 2
    if not math.isfinite(chi) or abs(chi - 1) < 0.01 or (chi > 1) != (verdict == "exploding"):
        return []
    critical = math.sqrt(2 / (1 + a * a))
    he = (f"; {stack.init}'s sqrt 2 is ReLU's, as torch's kaiming_normal_ with a = 0" if stack.init.startswith("he_")
          and stack.sigma_w is None else "")
    return [f"with slope {a:g} the weights' gain {gain:.4g} gives chi_1 = sigma_w^2 (1 + a^2) / 2 = {chi:.4g} "
            f"(mean field: {math.log10(chi) / 2:+.3g} decades a layer for ||dL/dh_l||); the edge of chaos is at "
            f"sigma_w = sqrt(2 / (1 + a^2)) = {critical:.4g}, He et al. (2015)'s gain for this slope{he}"]


def _findings(stack, g, res, verdict, forward_said: bool = False, weight_log10=None,
              weights_sampled: bool = False, clip_said: bool = False) -> list[str]:
    """The facts beside the verdict: non-finite layers, zeros, the forward, saturation, dead units
    (``clip_said``: the verdict's sentence named the signal clip)."""
    words = []
    raw = getattr(res, "grad_norm_unclipped", None)
    if raw is not None and len(g):
        with np.errstate(divide="ignore"):
            r = np.asarray(raw.log10(), dtype=np.float64)
        how = f"clip {stack.clip} {stack.clip_threshold:g} on {'each layer' if stack.clip_on == 'layer' else 'all of them'}"
        words.append(f"||dW_l|| is after the parameter-gradient clipping ({how}), which bounds the updates, not the "
                     f"derivative: before it ||dW_l|| runs from 10^{_num(r[-1])} at layer {len(r) - 1} to "
                     f"10^{_num(r[0])} at layer 0")
    if stack.clip is not None and stack.clip_on == "signal" and not (forward_said or clip_said):
        words.append(_clip_words(stack, res))
    if res.first_nonfinite_forward is not None:
        words.append(f"the forward pass turned non-finite at layer {res.first_nonfinite_forward} (activations "
                     "overflowed): every gradient below is meaningless")
    if res.first_nonfinite_backward is not None:
        at = res.first_nonfinite_backward
        words.append("the backward signal was non-finite from the top (dL/dh_L, the loss's gradient)" if at == len(g)
                     else f"the backward signal turned non-finite at layer {at}")
    zero = np.flatnonzero(g == -np.inf)
    if zero.size and zero.size < len(g):
        dead_note = " (dead units block the chain: z <= 0 passes no gradient)" if dies(stack, res) else ""
        top = int(zero.max())
        if floored_layers(stack.activation, g, res.saturation, res.act_std.log10(), res.act_mean.log10())[top]:
            # phi' > 0 (but at a point) and rescued down to 2^(-2^62): the zero is that floor, not the chain's
            dead_note = (f" (every unit of layer {top} is saturated so far that its {stack.activation}' is below "
                         f"2^(-2^62), as {stack.activation}' does at {SATURATED_AT.get(stack.activation, 'its limit')}: "
                         "the true gradient there is not 0, but beyond any "
                         "int64 exponent)")
        under = float_underflow(stack, res)
        if under.size and np.isin(zero - 1, under).any():
            # dW_l = dz_l^T h_l with h_l the underflowed outputs of layer l - 1
            dead_note = f" ({float_underflow_words(stack, under)})"
        floor = bias_floor_zeros(res, zero)
        if floor.size and top in floor:
            far = 2094 if stack.dtype == "float64" else 273  # the floor's 2^1020 (2^124) and the subnormals'
            how = (f"a {stack.activation} row deep in its negative tail" if stack.activation in PHI_UNDERFLOW
                   else "inputs that small")
            dead_note = (f" (h_{top}, the input of layer {top}, is not 0 (std 10^{_num(res.act_std.log10()[top - 1])}) "
                         f"nor is dL/dh there: every row lies more than 2^{far} below the layer's bias ({how}), so "
                         "that carried at the bias's floor its entries read 0, as plain arithmetic reads them beside "
                         "the bias; the exact gradient is tiny but not 0)")
        words.append(f"{zero.size} layer(s) have an exactly zero gradient, the highest is layer {zero.max()}{dead_note}")
    far = rate_outliers(g, stack.residual)
    if far.size:
        what = "branches of their residual groups" if stack.residual >= 1 else "layers"
        words.append(f"layer{'s' if far.size > 1 else ''} {_layers(far)} lie far from their neighbours' ||dW_l|| "
                     f"(more than {ISOLATED_DECADES:g} decades) and are left out of the rate's fit: isolated {what}, "
                     "not a trend")
    if verdict != "no gradient":  # (nor rounding noise of an exact 0: rules "pair" and "identical")
        words += _lagging_words(stack, g, res, verdict, far)
    lost = int((getattr(res, "extras", None) or {}).get("lost_samples", 0))
    B = res.input_grad.mantissa.shape[0] if lost else 0  # (B, inputs): one row per sample
    if lost and not (lost == B and verdict == "no gradient"):  # then the verdict's sentence says it all
        # each sample carries its own exponent in the backward: what cuts a sample's chain is an
        # exact zero in it, never the batch's larger samples
        why = ("dead units (z <= 0) in some layer" if dies(stack, res) else
               "units saturated beyond any int64 exponent (phi' < 2^(-2^62)) in some layer"
               if stack.activation in RESCUE else "an exact zero in the chain")
        if B == 1:
            words.append(f"the sample's gradient is non-zero at the top and exactly 0 at the input: {why}")
        else:
            which = f"all {B} samples" if lost == B else f"{lost} of {B} samples"
            words.append(f"{which} lose their gradient on the way down (exactly 0 at the input, non-zero at the "
                         f"top): {why} (each sample carries its own power of two, so the batch's other samples "
                         "do not flush it)")
    words += slope_gain_words(stack, verdict, weight_log10, res)
    if verdict != "no gradient":
        sens = rounding_sensitivity(res)
        words += chaos_words(sens, stack.dtype, f"h_{sens[1]}" if sens else "")
    std = np.asarray(res.act_std.log10(), dtype=np.float64)
    # (a forward without exponents underflows long before 2^(-2^62): float_underflow says that)
    zf = forward_zeros(stack.activation, std) if getattr(res, "forward_rescaled", True) else np.zeros(0, dtype=np.int64)
    flat = int((getattr(res, "extras", None) or {}).get("forward_lost_samples") or 0)
    if flat and not zf.size:  # (a layer of zeros says it below)
        B = res.input_grad.mantissa.shape[0]
        why = (f"every unit's {stack.activation}(z) of such a sample is 0 or lies below 2^(-2^62) at some layer "
               f"({PHI_UNDERFLOW[stack.activation]}), beyond any int64 exponent" if stack.activation in PHI_UNDERFLOW
               else "its activations are exactly 0 at some layer")
        words.append(f"{flat} of {B} samples {'reaches' if flat == 1 else 'reach'} the top with activations exactly 0 "
                     f"though the input is not 0: {why} (each sample carries its own power of two, so the batch's other "
                     "samples do not flush it); the loss and every gradient then come from the other samples, and the "
                     "exact ones of such a sample may be tiny but not 0")
    if zf.size:
        words.append(f"the forward activations of layer{'s' if zf.size > 1 else ''} {_layers(zf)} are exactly 0: "
                     f"every unit's {stack.activation}(z) is 0 or lies below 2^(-2^62) "
                     f"({PHI_UNDERFLOW[stack.activation]}), beyond any int64 exponent, for every sample; "
                     "the gradients that depend on them read 0 where the exact ones may be tiny but not 0")
    fwd = forward_span(std)
    if fwd is not None and not forward_said:
        i0, i1, grow = fwd
        ends = f"std 10^{_num(std[i0])} at layer {i0}, 10^{_num(std[i1])} at layer {i1}"
        away = _forward_excursions(std, i0, i1)
        if abs(grow) >= 3:
            words.append(f"the forward activations {'grow' if grow > 0 else 'shrink'} by {decades(abs(grow))} "
                         f"({ends}){away}")
        elif away:
            words.append(f"the forward activations end within {decades(abs(grow))} of where they start ({ends})"
                         f"{away}")
    if stack.activation in SATURATING:
        sat, where = countable_mean(res.saturation)
        if sat > 0.1:
            words.append(f"{100 * sat:.0f} % of the units{where} are saturated (|phi'| < 1 % of its largest value)")
    if stack.activation in ("sigmoid", "tanh"):
        gain, measured = weight_gain(stack, weight_log10)
        rate = _sigmoid_rate(gain, stack.sigma_b) if stack.activation == "sigmoid" and gain < 4 else math.nan
        if not stack.batch_norm and verdict == "vanishing" and rate < 0:
            # sigmoid' <= 1/4, at z = 0: log10(4 / sigma_w) a layer counted that alone and said 0.012 beside
            # a measured 0.215 at sigma_w = 3.9 (0.12 against 0.285 at 3): the larger the gain, the further
            # the units saturate. Mean field's rate at the gain is the typical one (narrow stacks lose
            # less: a width-8 stack lost 0.56 decades a layer beside its 0.63)
            words.append(f"sigmoid' <= 0.25 costs about {-rate:.2g} decades per layer "
                         f"at this weight gain (sigma_w = {gain:.3g}"
                         + ((" from three rows of each layer's weights, ||W_l|| / sqrt(N) estimated, the median "
                             "over the layers" if weights_sampled else
                             " from the weights, ||W_l|| / sqrt(N), the median over the layers") if measured else "")
                         + ": mean field's rate at that gain, sigmoid' at the units' spread of z, a typical "
                         "rate, not a bound)")
    if stack.activation in RELU_FAMILY:
        dead, where = countable_mean(res.dead)
        if dead > 0.1 and dies(stack, res):
            words.append(f"{100 * dead:.0f} % of the units{where} are dead (z <= 0 for the whole batch)")
        elif dead > 0.1:  # a slope of their own on the negative side: not dead (a PReLU's is a parameter)
            lo, hi = (getattr(res, "extras", None) or {}).get("prelu_slopes", (stack.act_param,) * 2)
            slope = ((f" (a parameter: {lo:g} in every layer)" if lo == hi else
                      f" (a parameter: {lo:g} to {hi:g} over the layers)") if stack.activation == "prelu"
                     else f" {stack.act_param:g}")
            words.append(f"{100 * dead:.0f} % of the units{where} are on the negative side for the whole batch "
                         f"(z <= 0: {stack.activation}'s negative slope{slope} carries their gradient)")
    return words
