"""Diagnosis of one forward + backward pass: where and why the gradients vanish or explode.

:func:`diagnose` turns a :class:`~gradbench.Result` into a :class:`Diagnosis` (frozen,
``to_dict`` / ``to_json`` / ``from_dict``, and ``str`` for a terminal). Definitions (L layers,
l = 0 at the input, l = L - 1 at the top; docs/design.md section 6):

- ``grad_log10[l]`` = log10 ||dL/dW_l||_F and ``signal_log10[l]`` = log10 ||dL/dh_l||_F, exact
  (mantissa and int64 exponent), so 10^-60000 is reported as such.
- ``decades_per_layer`` (of ``grad_log10``) and ``signal_decades_per_layer`` (of
  ``signal_log10``): the least-squares change per layer going DOWN the stack, towards the
  input, over the layers with a finite non-zero norm. Negative = vanishing, positive =
  exploding: the one convention of the package (:mod:`gradbench.verdict`, :mod:`gradbench.theory`).
  ``intercept`` is the fitted log10 ||dL/dW_0|| (with residual groups the fit runs through the
  groups' own norms, :func:`gradbench.verdict.grad_rate`: about log10 sqrt(k) above the layers').
- ``verdict``: vanishing, exploding, stable or no gradient, by the rules of
  :mod:`gradbench.verdict` (trends of the signal and of ||dW_l||, exact zeros, and magnitudes
  only where extreme: beyond the float64 range, or an elasticity ||dW_l|| ||W_l|| / loss below
  10^-``tiny`` in every layer; never the loss's own scale), with a plain-language
  ``explanation`` that says which rule decided and what it saw.
- ``float_limits[dtype]``: where plain float64 / float32 would have under- or overflowed the
  gradients (from the top) and the forward activations (from the input), or how many layers
  it would take at the fitted rate (:func:`gradbench.verdict.float_limits`).
- ``lost_samples``: samples of the batch whose backward signal is non-zero at the top and
  exactly zero at the input (the Result's ``extras["lost_samples"]``). Each sample carries its
  own power of two in the backward, so only an exact zero in its own chain cuts it: dead units,
  or units saturated beyond any int64 exponent (phi' < 2^(-2^62)); the explanation names the
  cause. (Diagnoses written before 2026-12-06, when the backward shared one exponent per layer,
  also counted samples flushed more than 2^-1074 below the batch's largest.)
- ``weights``: where the weights came from when they were not drawn for the stack (the params'
  ``origin``, the Result's ``extras["weights"]``: "the weights of Sequential" for
  :func:`gradbench.from_torch`), or None; the report's header says it in place of the init scheme.
- ``dead_below_zero``: whether units with z <= 0 pass no gradient with these weights (ReLU, or
  PReLU whose slopes are all 0: :func:`gradbench.spec.units_die`), so that ``dead`` counts dead
  units rather than units on a negative slope (None in diagnoses read from files without it).
- Histograms of log10 |dW_l| entries with the same bin edges for every layer (default: the
  whole-decade range of all layers in ``bins`` bins; for a ``stats_only`` run, whole streaming
  bins from the lowest occupied one, :func:`gradbench.histograms.rebin_streaming`), computed
  exactly from the mantissas and exponents (:mod:`gradbench.histograms`); exact zeros and
  non-finite entries are counted apart. ``hist_exact``: whether the counts are those of
  ``np.histogram`` of the entries' log10 on ``hist_edges``. They are, except for a
  ``stats_only`` run diagnosed with a ``hist_range`` off its streaming grid: then each entry is
  counted within one streaming bin (1/4 decade by default) of its own.

The terminal report (``str(diagnosis)``) is :func:`gradbench.report.format_report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from gradbench.histograms import (DEFAULT_BINS, HIST_CHUNK, checked_range, entry_blocks, histograms, rebin_is_exact,
                                  rebin_streaming)
from gradbench.params import GeneratedParams, layer_probe, weights_probe
from gradbench.spec import Stack
from gradbench.verdict import (FLOAT_LIMITS, MEASURABLE_DECADES, bn_identical, bn_pair_cancels, classify,  # noqa: F401
                               clip_binds, decades_per_layer, explain, float_limits, floored_layers, grad_rate, judge,
                               dies, float_underflow, float_underflow_inputs, partial_underflow_words, rms_log10,
                               signal_rate, stuck_state, within_walk)

@dataclass(frozen=True, eq=False)
class Diagnosis:
    """The diagnosis of one pass (field definitions in the module docstring).

    Per-layer arrays have length L (l = 0 at the input); histograms are (L, bins) with
    ``hist_edges`` (bins + 1,) in log10 units.
    """

    stack: dict
    backend: str
    loss: float
    loss_log10: float
    grad_log10: np.ndarray
    signal_log10: np.ndarray
    act_mean: np.ndarray
    act_mean_log10: np.ndarray
    act_std: np.ndarray
    act_std_log10: np.ndarray
    saturation: np.ndarray
    dead: np.ndarray
    hist_edges: np.ndarray
    hist_counts: np.ndarray
    hist_zeros: np.ndarray
    hist_nonfinite: np.ndarray
    hist_outside: np.ndarray
    first_nonfinite_forward: int | None
    first_nonfinite_backward: int | None
    decades_per_layer: float
    intercept: float
    signal_decades_per_layer: float
    verdict: str
    explanation: str
    float_limits: dict
    threshold: float
    weight_log10: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    clip_acted: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=bool))
    lost_samples: int = 0
    hist_exact: bool = True
    weights: str | None = None
    dead_below_zero: bool | None = None

    @property
    def depth(self) -> int:
        return len(self.grad_log10)

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """A JSON-ready dict: arrays as lists, non-finite floats as "inf", "-inf", "nan"."""
        return {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self, **kwargs) -> str:
        """Strict JSON (no NaN/Infinity literals); ``kwargs`` go to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    def write_json(self, f, chunk: int = 65536) -> None:
        """Write :meth:`to_json`'s document to the text file ``f`` piece by piece.

        The same JSON as ``to_json()``, but arrays are converted ``chunk`` entries (or rows) at a
        time, so a 10^6-layer diagnosis (10^6 x bins histogram counts) never exists as one
        list of Python numbers or one string.
        """
        f.write("{")
        for i, field in enumerate(dataclasses.fields(self)):
            v = getattr(self, field.name)
            f.write(("" if i == 0 else ", ") + json.dumps(field.name) + ": ")
            if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) > chunk:
                f.write("[")
                for a in range(0, len(v), chunk):
                    part = json.dumps(_to_jsonable(v[a : a + chunk]), allow_nan=False)[1:-1]
                    f.write(("" if a == 0 else ", ") + part)
                f.write("]")
            else:
                f.write(json.dumps(_to_jsonable(v), allow_nan=False))
        f.write("}")

    @classmethod
    def from_dict(cls, d: dict) -> "Diagnosis":
        if "stack" not in d:  # (a KeyError 'stack' said nothing of what the dict is)
            other = ("a recurrent net's diagnosis: read it with "
                     "gradbench.recurrent.diagnose.RecurrentDiagnosis.from_dict" if "rnn" in d else
                     "not a Diagnosis.to_dict() (no field 'stack')")
            raise ValueError(f"the dict is {other}")
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d and f.name in ("weight_log10", "clip_acted", "lost_samples", "hist_exact",
                                              "weights"):  # defaults (older files)
                continue
            if f.name not in d and f.name == "signal_decades_per_layer":  # files of gradbench < 0.2
                kw[f.name] = math.nan
                continue
            v = d[f.name]
            if f.name in _ARRAY_FIELDS:
                dtype = np.int64 if f.name in _INT_ARRAYS else bool if f.name == "clip_acted" else np.float64
                v = np.array(_from_jsonable(v), dtype=dtype)
                if f.name == "hist_counts" and v.ndim == 1:
                    v = v.reshape(0, max(len(d["hist_edges"]) - 1, 0))
            elif f.name in ("loss", "loss_log10", "decades_per_layer", "intercept", "threshold",
                            "signal_decades_per_layer"):
                v = float(_from_jsonable(v))
            kw[f.name] = v
        return cls(**kw)

    @classmethod
    def from_json(cls, s: str) -> "Diagnosis":
        """:meth:`from_dict` of a JSON text (:meth:`to_json`, or the text of a ``gradbench run
        --out x.json`` file); a path is refused, naming how to read it."""
        from gradbench.frames import json_fields

        return cls.from_dict(json_fields(s, "gradbench.Diagnosis"))

    def to_frame(self):
        """One row per layer as a pandas DataFrame (:func:`gradbench.frames.diagnosis_frame`)."""
        from gradbench.frames import diagnosis_frame

        return diagnosis_frame(self)

    @classmethod
    def from_npz(cls, path, name: str | None = None) -> "Diagnosis":
        """Read the ``.npz`` file of :func:`gradbench.frames.write_npz` (``gradbench run --out x.npz``;
        ``name``: one diagnosis of ``gradbench compare --out x.npz``)."""
        from gradbench.frames import npz_fields

        return cls(**npz_fields(path, name))

    # ------------------------------------------------------------ text
    def __str__(self) -> str:
        from gradbench.report import format_report

        return format_report(self)


_ARRAY_FIELDS = {
    "grad_log10", "signal_log10", "act_mean", "act_mean_log10", "act_std", "act_std_log10", "saturation", "dead",
    "hist_edges", "hist_counts", "hist_zeros", "hist_nonfinite", "hist_outside", "weight_log10", "clip_acted",
}
_INT_ARRAYS = {"hist_counts", "hist_zeros", "hist_nonfinite", "hist_outside"}


def _to_jsonable(v):
    if isinstance(v, np.ndarray):
        return _to_jsonable(v.tolist())
    if isinstance(v, (list, tuple)):
        return [_to_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _from_jsonable(v):
    if isinstance(v, list):
        return [_from_jsonable(x) for x in v]
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    return v


def diagnose(res, params=None, *, bins: int = DEFAULT_BINS, hist_range: tuple[float, float] | None = None,
             threshold: float = 2.0, tiny: float = 8.0) -> Diagnosis:
    """Statistics and a verdict from a :class:`~gradbench.Result`.

    Parameters
    ----------
    res : Result
        From :func:`gradbench.backprop`.
    params : Params or GeneratedParams, optional
        The parameters of that pass (of the same stack, and the weights that ran: checked against
        the result's ``extras["weights_probe"]``, so weights drawn from another seed, or changed
        in place after the pass in a layer's first, middle or last row, are refused: a change
        confined to other rows goes unseen; generated weights and stored ones are compared
        through the weights the seed generates). With them the diagnosis also
        records log10 ||W_l|| (``weight_log10``) and the magnitude rule uses them: vanishing
        everywhere when every elasticity ||dW_l|| ||W_l|| / loss is below 10^-``tiny``, even
        without a trend across layers. Without them ||W_l|| is the estimate the result recorded
        from each layer's first, middle and last row of W (``extras["weight_log10_sampled"]``;
        exact where a layer's rows share one norm), or for generated weights the init's
        sqrt(N) sigma_w.
    bins, hist_range
        Bin count and range (log10 units) of the per-layer histograms of log10 |dW_l|.
    threshold : float
        Decades of fitted change over the stack that make the verdict vanishing or exploding.
    tiny : float
        Decades below the loss's own scale that make uniformly small gradients vanishing
        (:mod:`gradbench.verdict`, rule 5).

    Returns
    -------
    Diagnosis
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    bins = int(bins)
    _check_bins_fit(res, bins)
    hist_range = None if hist_range is None else checked_range(hist_range, bins)
    a = assess(res, params, threshold=threshold, tiny=tiny)
    stack: Stack = res.stack
    g, s, rate = a.grad_log10, a.signal_log10, a.decades_per_layer
    with np.errstate(divide="ignore", invalid="ignore"):
        act_mean = res.act_mean.to_float(warn=False)
        act_std = res.act_std.to_float(warn=False)
        act_std_log10 = res.act_std.log10()
        act_mean_log10 = res.act_mean.log10()
    exact = True
    if res.grads is not None:
        edges, counts, zeros, nonfinite, outside = histograms(res.grads.W, bins, hist_range)
    elif getattr(res, "grad_hist", None) is not None:  # a stats_only run: its streaming histograms
        edges, counts, zeros, nonfinite, outside = rebin_streaming(res.grad_hist, bins, hist_range)
        exact = rebin_is_exact(res.grad_hist, bins, hist_range)
    else:
        raise ValueError("the result has neither gradients nor gradient histograms to diagnose (a stats_only "
                         "run with hist_bins=0: gradbench.diagnose.assess gives its rates and verdict)")
    # what a plain chain computes: the derivative, before any parameter-gradient clipping (which
    # bounds the update after it: a float32 chain is inf at 10^48 whatever the clip then does)
    g_plain = _derivative_log10(res, g)
    if a.rule in ("pair", "identical"):  # 0 in exact arithmetic (rounding noise computed): no layer where a plain chain loses it
        g_plain = np.full(len(g), -np.inf)
    rate_plain = rate if g_plain is g else grad_rate(g_plain, stack.residual)[0]
    floored = floored_layers(stack.activation, g_plain, res.saturation, act_std_log10, act_mean_log10)
    flushed_out = float_underflow(stack, res)
    flushed = None
    if flushed_out.size:  # the forward's outputs underflowed: every exact 0 is the truth's tiny value, read 0
        flushed = (g_plain == -np.inf) & ~floored  # by a plain chain of this dtype too (not "fine"); a wider
        floored = floored | flushed  # dtype may hold it (float_limits: not known there)
    act_rms_log10 = rms_log10(act_mean_log10, act_std_log10)
    limits = float_limits(g_plain, rate_plain, act_std_log10, floored,
                          _extrapolates(a, stack, act_std_log10, act_rms_log10, threshold, rate_plain),
                          signal_log10=s, group=stack.residual, loss_log10=a.loss_log10, dtype=stack.dtype,
                          flushed=flushed, flushed_at=int(flushed_out.min()) if flushed_out.size else None,
                          act_mean_log10=act_mean_log10, count=int(np.prod(res.output.shape)),
                          plain_forward=not res.forward_rescaled,
                          bn_sumsq_log10=(res.extras or {}).get("bn_sumsq_log10"))
    if partial_underflow_words(stack, res):  # judged on numbers that are not exact: the sentences say so
        for lim in limits.values():
            lim["inexact"] = True
    explanation = explain(a.verdict, stack, g, rate, a.signal_decades_per_layer, threshold, res, a.elasticity_log10,
                          a.rule, a.loss_log10, tiny, a.weight_log10 if len(a.weight_log10) else _sampled(res, len(g)),
                          weights_sampled=not len(a.weight_log10))
    return Diagnosis(
        stack=dataclasses.asdict(stack),
        backend=res.backend,
        loss=float(res.loss),
        loss_log10=a.loss_log10,
        grad_log10=g,
        signal_log10=s,
        act_mean=np.asarray(act_mean, dtype=np.float64),
        act_mean_log10=np.asarray(act_mean_log10, dtype=np.float64),
        act_std=np.asarray(act_std, dtype=np.float64),
        act_std_log10=np.asarray(act_std_log10, dtype=np.float64),
        saturation=np.asarray(res.saturation, dtype=np.float64),
        dead=np.asarray(res.dead, dtype=np.float64),
        hist_edges=edges,
        hist_counts=counts,
        hist_zeros=zeros,
        hist_nonfinite=nonfinite,
        hist_outside=outside,
        first_nonfinite_forward=res.first_nonfinite_forward,
        lost_samples=int((res.extras or {}).get("lost_samples", 0)),
        hist_exact=exact,
        weights=(res.extras or {}).get("weights"),
        dead_below_zero=dies(stack, res),
        first_nonfinite_backward=res.first_nonfinite_backward,
        decades_per_layer=rate,
        intercept=a.intercept,
        signal_decades_per_layer=a.signal_decades_per_layer,
        verdict=a.verdict,
        explanation=explanation,
        float_limits=limits,
        threshold=float(threshold),
        weight_log10=a.weight_log10,
        clip_acted=(np.asarray(res.signal_clip_acted[:-1], dtype=bool)  # the top's (entry L) has no row
                    if res.signal_clip_acted is not None else np.zeros(0, dtype=bool)),
    )


def _check_bins_fit(res, bins: int) -> None:
    """Refuse ``bins`` whose histograms do not fit in half the available memory, before any work
    (``bins=10**9`` of 8 layers asked for 60 GB and ran out of memory, or on for minutes);
    the command line refuses them in its plan (``--bins``)."""
    from gradbench.plan import check_bins

    hist_bins = res.grad_hist.counts.shape[1] if getattr(res, "grad_hist", None) is not None else 1
    check_bins(res.stack, res.grads is None, hist_bins, bins)


def _derivative_log10(res, g: np.ndarray) -> np.ndarray:
    """log10 ||dL/dW_l|| before any parameter-gradient clipping (``Result.grad_norm_unclipped``),
    or ``g`` itself (the result's ``grad_norm``, log10) where the run clipped none."""
    raw = getattr(res, "grad_norm_unclipped", None)
    if raw is None:
        return g
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(raw.log10(), dtype=np.float64)


def _extrapolates(a: "Assessment", stack: Stack, act_std_log10: np.ndarray, act_rms_log10: np.ndarray,
                  threshold: float, rate: float | None = None) -> bool:
    """Whether ||dW_l||'s rate (``rate``, default the assessment's) within the stack says where
    more layers would take it (the float range's "at this rate ... after ~N layers").

    Not when the forward activations change by ``threshold`` decades or more over the stack (their
    std or their root mean square): then every ||dW_l|| also scales with the depth through h_L (a
    zero-bias ReLU stack at sigma_w = 3 has a flat ||dW_l|| within it, whose level grows 0.62
    decades per layer of depth). Nor when they change per layer by more than half the rate of
    ||dW_l||, however short the stack: ten zero-bias ReLU layers at sigma_w = 1 (chi_1 = 1/2) have
    a flat ||dW_l|| and activations falling 0.15 decades a layer, and said float64 would underflow
    "after ~75449 layers", where 3,000 such layers lose their forward at layer ~1,900. Not against
    the verdict (an exploding stack whose ||dW_l|| rate is slightly negative) and not against the
    backward signal's rate.

    Nor from a fit that is not a trend of the chain: fewer than three
    points (two residual groups: 100 sigmoid layers with residual=50 said float64 "would overflow
    after ~511391 layers" from two branches' norms, 10^1.818 and 10^1.788), a backward signal
    that does not change to rounding (that stack's skip path read the same bits at h_0 and h_50),
    or a signal a clip can hold anywhere (a clipped chain's rate is the clip's there: a tanh stack
    at sigma_w = 2 whose norm clip at 30 binds at 29 of 40 layers said float64 "would overflow
    after ~92388 layers", which the clip forbids). Nor towards overflow under any signal clip,
    bound within the stack or not: more layers take the growing signal to the threshold, where
    the clip holds it (40 tanh layers at sigma_w = 2.5 under a norm clip at 10^6 reach 10^4.6 and
    said "would overflow after ~3420 layers"; 200 of them stay at 10^6)."""
    rate = a.decades_per_layer if rate is None else rate
    L = len(act_std_log10)
    group = stack.residual if stack.residual > 1 and L % stack.residual == 0 else 1
    if L // group < 3 or abs(a.signal_decades_per_layer) * (L - 1) < MEASURABLE_DECADES:
        return False
    if within_walk(a.grad_log10, rate, stack.residual) is not None:
        # a random walk's slope, not a trend (tanh, He init, width 16, 20,000 layers: -1.7e-4 decades
        # a layer, standard error 1.1e-3, said float64 "would underflow after ~2849384 layers")
        return False
    if stack.residual and abs(a.signal_decades_per_layer) * (L - 1) < threshold:
        # the skip path is the chain, and it has no trend: more layers do not take the gradient out of
        # range; ||dW_l||'s trend is its branches' (their saturation), which does not go on in a line
        # (1000 sigmoid layers of width 4 with residual=1 said float64 "would overflow after ~7381
        # layers"; 8000 such layers read 10^4.37 at layer 0)
        return False
    if stack.clip is not None and stack.clip_on == "signal" and (
            rate > 0 or clip_binds(stack.clip_threshold, a.signal_log10, stack.dtype).size):
        return False
    for act in (act_std_log10, act_rms_log10):
        fwd = decades_per_layer(act)[0] * (L - 1)
        if math.isfinite(fwd) and abs(fwd) >= threshold:
            return False
    fwd_rate = decades_per_layer(act_rms_log10)[0]
    if math.isfinite(fwd_rate) and abs(fwd_rate) > 0.5 * abs(rate):
        return False
    chain = a.signal_decades_per_layer
    if math.isfinite(chain) and rate * chain < 0:
        # the backward signal, the chain itself, goes the other way: ||dW_l|| = ||dz_l^T h_l|| of a
        # short stack follows its input's scale (5 tanh layers: ||dW|| +0.16 a layer, the signal
        # -0.07, "would overflow after ~1971 layers" where 2000 layers vanish to 10^-69)
        return False
    return not ((a.verdict == "vanishing" and rate > 0) or (a.verdict == "exploding" and rate < 0))


@dataclass(frozen=True, eq=False)
class Assessment:
    """What a verdict rests on: the part of a :class:`Diagnosis` that needs no histograms.

    The fields of the same names in :class:`Diagnosis`; ``elasticity_log10`` is log10 of
    ||dW_l|| ||W_l|| / loss per layer (NaN where undefined) and ``rule`` the verdict's rule
    (:func:`gradbench.verdict.judge`).
    """

    grad_log10: np.ndarray
    signal_log10: np.ndarray
    decades_per_layer: float
    intercept: float
    signal_decades_per_layer: float
    loss_log10: float
    elasticity_log10: np.ndarray
    weight_log10: np.ndarray
    verdict: str
    rule: str


def assess(res, params=None, *, threshold: float = 2.0, tiny: float = 8.0) -> Assessment:
    """The rates and the verdict of :func:`diagnose`, without its histograms and text.

    For results that carry no gradients and no histograms (``stats_only=True`` with
    ``hist_bins=0``, as a sweep's runs: only these numbers travel back), and for anything else
    that needs the verdict alone. Parameters as in :func:`diagnose`; the numbers are those of
    ``diagnose(res, params, threshold=threshold, tiny=tiny)``, which calls this.
    """
    for name, v in (("threshold", threshold), ("tiny", tiny)):
        if isinstance(v, bool) or not (isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
                                       and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    stack: Stack = res.stack
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.asarray(res.grad_norm.log10(), dtype=np.float64)
        s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
    rate, intercept = grad_rate(g, stack.residual)
    s_rate = signal_rate(s, stack.residual)
    w, generated_probe = (np.zeros(0), None) if params is None else _weight_log10(params, stack, len(g))
    if params is not None:  # after _weight_log10 refused another stack's
        _check_same_weights(res, params, generated_probe)
    w_ref = w if len(w) else _weight_log10_without_params(res, stack, len(g))
    loss_log10 = float(res.loss_exact.log10())
    g_raw = _derivative_log10(res, g)  # clipping bounds the update, not the derivative
    with np.errstate(divide="ignore", invalid="ignore"):
        # log10 e_l = log10 (||dW_l|| ||W_l|| / loss); undefined (nan) for a loss of 0 or out of range
        elasticity = g_raw + w_ref - loss_log10 if math.isfinite(loss_log10) else np.full(len(g), math.nan)
    verdict, rule = judge(g, s, threshold=threshold, elasticity_log10=elasticity, tiny=tiny,
                          nonfinite_backward=res.first_nonfinite_backward is not None, group=stack.residual,
                          pair_cancelled=bn_pair_cancels(stack, res), identical=bn_identical(stack, res),
                          float_zeros=float_underflow_inputs(stack, res), stuck=stuck_state(stack, res))
    if rule in ("pair", "identical"):  # the norms are rounding noise of an exact 0: their rates are none
        rate = intercept = s_rate = math.nan
    return Assessment(grad_log10=g, signal_log10=s, decades_per_layer=rate, intercept=intercept,
                      signal_decades_per_layer=s_rate, loss_log10=loss_log10, elasticity_log10=elasticity,
                      weight_log10=w, verdict=verdict, rule=rule)


def _weight_log10(params, stack: Stack, L: int) -> tuple[np.ndarray, np.ndarray | None]:
    """log10 ||W_l||_F per layer of ``params``, refused with a clear message when they are not
    the parameters of ``stack`` (another depth or width, or a GeneratedParams of another stack);
    and for a GeneratedParams the probe of the weights it generates (:func:`weights_probe`'s
    sums, from the same pass over them), else None."""
    other = getattr(params, "stack", None)
    if other is not None and other != stack:
        raise ValueError(f"params are for another stack ({_stack_difference(other, stack)}) than the result's: "
                         "pass the parameters of the pass that produced the result")
    want = (L, stack.width, stack.width)
    if other is not None and not hasattr(params, "W"):  # GeneratedParams: layer by layer, in chunks
        out, probe = np.empty(L), None
        for a, Wc in _generated_chunks(params, L):
            out[a : a + len(Wc)] = frobenius_log10(Wc)
            part = layer_probe(Wc)
            probe = np.empty((L, part.shape[1])) if probe is None else probe
            probe[a : a + len(Wc)] = part
        return out, probe
    W = getattr(params, "W", None)
    shape = np.shape(W) if W is not None else None
    if shape != want:
        raise ValueError(f"params.W has shape {shape}, but the result's stack (depth {L}, width {stack.width}) "
                         f"needs {want}: pass the parameters of the pass that produced the result")
    return frobenius_log10(np.asarray(W)), None  # float64 chunk by chunk: no float64 copy of a float32 W


def _generated_chunks(params: GeneratedParams, L: int):
    """(first layer, W of a chunk of layers) over the L layers ``params`` generates, ~4 M entries a chunk."""
    step = max(1, (1 << 22) // max(1, params.stack.width ** 2))
    for a in range(0, L, step):
        yield a, params.weights(a, min(L, a + step))


def _stack_difference(given: Stack, ran: Stack) -> str:
    """The settings in which ``given`` differs from ``ran``, e.g. "sigma_w=5.0 (the result's: None)"."""
    diff = [f"{f.name}={getattr(given, f.name)!r} (the result's: {getattr(ran, f.name)!r})"
            for f in dataclasses.fields(Stack) if getattr(given, f.name) != getattr(ran, f.name)]
    return "; ".join(diff) or "another stack"


def _sampled(res, L: int) -> np.ndarray:
    """The estimate of log10 ||W_l|| the result recorded from three rows of each layer's W
    (``extras["weight_log10_sampled"]``, :func:`gradbench.params.sampled_weight_log10`); empty
    where it has none (generated weights: the init's)."""
    sampled = (getattr(res, "extras", None) or {}).get("weight_log10_sampled")
    return np.asarray(sampled, dtype=np.float64) if sampled is not None and np.shape(sampled) == (L,) else np.zeros(0)


def _weight_log10_without_params(res, stack: Stack, L: int) -> np.ndarray:
    """log10 ||W_l|| for the magnitude rule when :func:`diagnose` has no params: the result's
    estimate (:func:`_sampled`), else the init's sqrt(N) sigma_w."""
    sampled = _sampled(res, L)
    return sampled if len(sampled) else np.full(L, math.log10(math.sqrt(stack.width) * stack.gain))


def _check_same_weights(res, params, generated_probe: np.ndarray | None = None) -> None:
    """Refuse ``params`` that are not the weights ``res`` ran with: their probe differs (changed
    in place after the pass, another seed, weights drawn otherwise). ``generated_probe``: the
    probe of ``params`` when they are a GeneratedParams (:func:`_weight_log10`). A result from
    generated weights keeps their seed: another seed is refused at once, and stored weights are
    compared with those the seed generates. A result without a probe is not checked."""
    ran = (getattr(res, "extras", None) or {}).get("weights_probe")
    if ran is None:
        return
    ran_words = ""
    if isinstance(ran, int):
        if isinstance(params, GeneratedParams):
            if params.seed != ran:
                raise ValueError(f"params are generated from seed {params.seed}, but the result ran with seed {ran}: "
                                 "pass the parameters of the pass that produced the result")
            return
        ran_words = f" (generated from seed {ran})"
        seeded = GeneratedParams(res.stack, ran)
        ran = np.concatenate([layer_probe(Wc) for _, Wc in _generated_chunks(seeded, res.stack.depth)])
    now = generated_probe if isinstance(params, GeneratedParams) else weights_probe(params)
    ran = np.asarray(ran)
    differ = (np.flatnonzero((now != ran).reshape(len(ran), -1).any(axis=1)) if now.shape == ran.shape
              else np.zeros(1, dtype=np.intp))  # another shape: another stack, from layer 0
    if differ.size:
        given = f" (generated from seed {params.seed})" if isinstance(params, GeneratedParams) else ""
        raise ValueError(f"params{given} are not the weights the result ran with{ran_words}: layer {int(differ[0])}'s "
                         f"differ{f' (and {differ.size - 1} more)' if differ.size > 1 else ''}, changed in place after "
                         "the pass or drawn from another seed; pass the parameters of the pass that produced the result")


def frobenius_log10(W: np.ndarray, chunk: int = HIST_CHUNK) -> np.ndarray:
    """log10 ||W_l||_F per layer of (n, N, N) (or (n, ...)), without overflow (W of 1e200) or underflow.

    ``chunk`` entries at a time (whole layers, or one layer whose entries are more), each layer's
    sum of squares by one dot product; a layer whose sum is not well inside float64's range is
    summed again scaled by its largest entry. (Over a whole (300, 256, 256) W at once, the
    scaled sum's temporaries cost a CLI run 0.36 s.)"""
    W = np.asarray(W)
    L = W.shape[0]
    flat = W.reshape(L, -1)
    M = flat.shape[1]
    ss = np.zeros(L)
    with np.errstate(over="ignore", invalid="ignore"):  # such layers are summed again below
        for r0, r1, c0, c1 in entry_blocks(L, M, chunk):
            w = flat[r0:r1, c0:c1].astype(np.float64, copy=False)
            ss[r0:r1] += np.einsum("ij,ij->i", w, w)
    out = np.empty(L)
    with np.errstate(divide="ignore", invalid="ignore"):
        fine = (ss > 2.0**-900) & (ss < 2.0**900)  # (NaN: not fine) no square lost to underflow that counts
        out[fine] = 0.5 * np.log10(ss[fine])
        for l in np.flatnonzero(~fine):
            row = flat[l:l + 1]
            parts = [(c0, c1) for _, _, c0, c1 in entry_blocks(1, M, chunk)]
            m = max((float(np.max(np.abs(row[:, c0:c1], dtype=np.float64))) for c0, c1 in parts), default=0.0)
            if not m > 0:  # all zeros, or NaN
                out[l] = -np.inf
                continue
            total = sum(float(np.sum((row[:, c0:c1].astype(np.float64) / m) ** 2)) for c0, c1 in parts)
            out[l] = math.log10(m) + 0.5 * math.log10(total)
    return out
