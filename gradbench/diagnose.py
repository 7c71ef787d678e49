"""Diagnosis of one forward + backward pass: where and why the gradients vanish or explode.

:func:`diagnose` turns a :class:`~gradbench.Result` into a :class:`Diagnosis` (frozen,
``to_dict`` / ``to_json`` / ``from_dict``, and ``str`` for a terminal). Definitions (L layers,
l = 0 at the input, l = L - 1 at the top; docs/design.md section 6):

- ``grad_log10[l]`` = log10 ||dL/dW_l||_F and ``signal_log10[l]`` = log10 ||dL/dh_l||_F, exact
  (mantissa and int64 exponent), so 10^-60000 is reported as such.
- ``decades_per_layer`` = least-squares slope of ``grad_log10`` against l over the layers with
  a finite non-zero gradient. The backward pass runs from l = L - 1 down to 0, so a positive
  slope means the gradient *shrinks* towards the input (vanishing), a negative one that it
  grows (exploding).
- ``verdict``: ``vanishing`` if the fitted change over the stack, ``decades_per_layer * (L - 1)``,
  is at least ``threshold`` decades (default 2: a factor 100 between top and bottom) or a layer
  has an exactly zero gradient below a non-zero one; ``exploding`` if it is at most
  ``-threshold`` or the backward pass turned non-finite; otherwise ``stable``.
- ``float_limits[dtype]``: the first layer, in backward order (from the top down), whose
  ||dL/dW_l|| lies below the smallest normal number of the dtype (``underflow_layer``: a plain
  chain loses it to subnormals, then to 0) or above the largest finite one
  (``overflow_layer``: inf); and, when the stack never gets there, how many layers from the
  top it would take at the fitted rate (``layers_to_underflow`` / ``layers_to_overflow``).
- Histograms of log10 |dW_l| entries with the same bin edges for every layer (default: the
  whole-decade range of all layers in ``bins`` bins), computed exactly from the mantissas and
  exponents (:mod:`gradbench.histograms`); exact zeros and non-finite entries are counted apart.

The terminal report (``str(diagnosis)``) is :func:`gradbench.report.format_report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from gradbench.histograms import DEFAULT_BINS, histograms, rebin_streaming
from gradbench.spec import Stack

# log10 of the smallest normal and the largest finite number of each dtype.
FLOAT_LIMITS = {
    name: (float(np.log10(np.finfo(name).tiny)), float(np.log10(np.finfo(name).max)))
    for name in ("float64", "float32")
}


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
    verdict: str
    explanation: str
    float_limits: dict
    threshold: float
    weight_log10: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

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
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d and f.name == "weight_log10":
                continue
            v = d[f.name]
            if f.name in _ARRAY_FIELDS:
                dtype = np.int64 if f.name in _INT_ARRAYS else np.float64
                v = np.array(_from_jsonable(v), dtype=dtype)
                if f.name == "hist_counts" and v.ndim == 1:
                    v = v.reshape(0, max(len(d["hist_edges"]) - 1, 0))
            elif f.name in ("loss", "loss_log10", "decades_per_layer", "intercept", "threshold"):
                v = float(_from_jsonable(v))
            kw[f.name] = v
        return cls(**kw)

    @classmethod
    def from_json(cls, s: str) -> "Diagnosis":
        return cls.from_dict(json.loads(s))

    # ------------------------------------------------------------ text
    def __str__(self) -> str:
        from gradbench.report import format_report

        return format_report(self)


_ARRAY_FIELDS = {
    "grad_log10", "signal_log10", "act_mean", "act_mean_log10", "act_std", "act_std_log10", "saturation", "dead",
    "hist_edges", "hist_counts", "hist_zeros", "hist_nonfinite", "hist_outside", "weight_log10",
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


# ------------------------------------------------------------------ the computations
def slope_fit(y: np.ndarray) -> tuple[float, float]:
    """Least-squares line ``y ~ intercept + slope * l`` over the finite entries of ``y``.

    Returns ``(slope, intercept)``; ``(0.0, y)`` with a single point, ``(nan, nan)`` with none.
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
    slope = float(np.dot(dl, y[ok] - ym) / np.dot(dl, dl))
    return slope, float(ym - slope * lm)


def float_limits(grad_log10: np.ndarray, slope: float) -> dict:
    """Where plain float64 / float32 would under- or overflow ||dL/dW_l|| (module docstring)."""
    L = len(grad_log10)
    g = np.asarray(grad_log10, dtype=np.float64)
    out = {}
    finite = np.isfinite(g)
    top = float(g[finite][-1]) if finite.any() else math.nan
    for name, (lo, hi) in FLOAT_LIMITS.items():
        under = np.flatnonzero(finite & (g < lo))
        over = np.flatnonzero((g > hi) | (g == np.inf))
        entry = {
            "min_log10": lo,
            "max_log10": hi,
            "underflow_layer": int(under.max()) if under.size else None,
            "overflow_layer": int(over.max()) if over.size else None,
            "layers_to_underflow": None,
            "layers_to_overflow": None,
        }
        if math.isfinite(slope) and math.isfinite(top) and slope != 0:
            # Going down from the top the log changes by -slope per layer.
            if slope > 0 and top > lo:
                entry["layers_to_underflow"] = int(math.ceil((top - lo) / slope))
            elif slope < 0 and top < hi:
                entry["layers_to_overflow"] = int(math.ceil((hi - top) / -slope))
        out[name] = entry
    del L
    return out


def diagnose(res, params=None, *, bins: int = DEFAULT_BINS, hist_range: tuple[float, float] | None = None,
             threshold: float = 2.0, big_ratio: float = 10.0) -> Diagnosis:
    """Statistics and a verdict from a :class:`~gradbench.Result`.

    Parameters
    ----------
    res : Result
        From :func:`gradbench.backprop`.
    params : Params, optional
        The parameters of that pass. With them the diagnosis also records log10 ||W_l||
        (``weight_log10``) and calls the gradients exploding when some ||dW_l|| / ||W_l||
        reaches ``big_ratio`` (one SGD step at lr = 0.1 would then move W_l by >= 100 %), even
        without a trend across layers (a ReLU stack with a large init has flat, huge gradients).
    bins, hist_range
        Bin count and range (log10 units) of the per-layer histograms of log10 |dW_l|.
    threshold : float
        Decades of fitted change over the stack that make the verdict vanishing or exploding.

    Returns
    -------
    Diagnosis
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if not big_ratio > 0:
        raise ValueError(f"big_ratio must be > 0, got {big_ratio}")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    stack: Stack = res.stack
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.asarray(res.grad_norm.log10(), dtype=np.float64)
        s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
        act_mean = res.act_mean.to_float(warn=False)
        act_std = res.act_std.to_float(warn=False)
        act_std_log10 = res.act_std.log10()
        act_mean_log10 = res.act_mean.log10()
    fit = np.where(np.isfinite(g), g, np.nan)
    slope, intercept = slope_fit(fit)
    if res.grads is not None:
        edges, counts, zeros, nonfinite, outside = histograms(res.grads.W, bins, hist_range)
    elif getattr(res, "grad_hist", None) is not None:  # a stats_only run: its streaming histograms
        edges, counts, zeros, nonfinite, outside = rebin_streaming(res.grad_hist, bins, hist_range)
    else:
        raise ValueError("the result has neither gradients nor gradient histograms to diagnose")
    limits = float_limits(g, slope)
    w = np.zeros(0)
    if params is not None:
        W = np.asarray(params.W, dtype=np.float64).reshape(len(g), -1)
        if W.shape[0] != len(g):
            raise ValueError(f"params.W has {W.shape[0]} layers, the result {len(g)}: mismatched params")
        with np.errstate(divide="ignore"):
            w = np.log10(np.sqrt(np.sum(W * W, axis=1)))
    verdict, explanation = _verdict(stack, g, slope, threshold, res, limits, w, math.log10(big_ratio))
    loss_log10 = float(res.loss_exact.log10())
    return Diagnosis(
        stack=dataclasses.asdict(stack),
        backend=res.backend,
        loss=float(res.loss),
        loss_log10=loss_log10,
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
        first_nonfinite_backward=res.first_nonfinite_backward,
        decades_per_layer=slope,
        intercept=intercept,
        verdict=verdict,
        explanation=explanation,
        float_limits=limits,
        threshold=float(threshold),
        weight_log10=w,
    )


def classify(grad_log10: np.ndarray, threshold: float = 2.0, big: float = 6.0,
             relative_log10: np.ndarray | None = None, big_relative: float = 1.0) -> str:
    """The verdict from log10 grad norms (see the module docstring).

    ``exploding`` also when some ||dW_l|| reaches 10^big, or some ||dW_l|| / ||W_l|| reaches
    10^big_relative (``relative_log10`` given), even without a trend: a ReLU stack with a large
    init has flat but enormous gradients.
    """
    g = np.asarray(grad_log10, dtype=np.float64)
    if relative_log10 is not None and len(relative_log10):
        rel = np.asarray(relative_log10, dtype=np.float64)
        if np.any(np.isfinite(rel) & (rel >= big_relative)):
            return "exploding" if classify(g, threshold, big) != "vanishing" else "vanishing"
    if np.any(np.isnan(g) | (g == np.inf)):
        return "exploding"
    slope, _ = slope_fit(np.where(np.isfinite(g), g, np.nan))
    nz = np.flatnonzero(g > -np.inf)
    if nz.size and np.any(g[: nz.max()] == -np.inf):
        return "vanishing"
    change = slope * (len(g) - 1) if math.isfinite(slope) else 0.0
    if change >= threshold:
        return "vanishing"
    if change <= -threshold or (nz.size and np.max(g[nz]) >= big):
        return "exploding"
    return "stable"


def _num(v: float) -> str:
    """A decade count without scientific notation (10^-64411.7, not 10^-6.441e+04)."""
    return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"


def _verdict(stack, g, slope, threshold, res, limits, w, big_relative) -> tuple[str, str]:
    L = len(g)
    rel = g - w if len(w) else None
    verdict = classify(g, threshold, relative_log10=rel, big_relative=big_relative)
    words = []
    finite = np.isfinite(g)
    if res.first_nonfinite_forward is not None:
        words.append(
            f"the forward pass turned non-finite at layer {res.first_nonfinite_forward} "
            "(activations overflowed): every gradient below is meaningless"
        )
    if res.first_nonfinite_backward is not None:
        words.append(f"the backward signal turned non-finite at layer {res.first_nonfinite_backward}")
    zero = np.flatnonzero(g == -np.inf)
    if zero.size:
        dead_note = " (dead ReLU units block the chain)" if stack.activation in ("relu",) else ""
        words.append(f"{zero.size} layer(s) have an exactly zero gradient, the highest is layer {zero.max()}{dead_note}")
    if finite.sum() >= 2:
        top, bottom = g[finite][-1], g[finite][0]
        change = slope * (L - 1)
        if verdict == "vanishing":
            words.insert(0, (
                f"gradients vanish: they shrink by {slope:.3g} decades per layer going down, "
                f"a factor 10^{_num(change)} over {L} layers "
                f"(||dW|| from 10^{_num(top)} at the top to 10^{_num(bottom)} at layer 0)"
            ))
        elif verdict == "exploding" and change > -threshold:
            if rel is not None and np.any(np.isfinite(rel)):
                worst = int(np.nanargmax(np.where(np.isfinite(rel), rel, np.nan)))
                size = (f"||dW_l|| / ||W_l|| reaches 10^{_num(rel[worst])} at layer {worst}: one SGD step "
                        f"at lr = 0.1 would change W_{worst} by 10^{rel[worst] + 1:.1f} %")
            else:
                size = f"||dW|| reaches 10^{_num(np.max(g[finite]))} (an SGD step of that size wrecks the weights)"
            words.insert(0, (
                f"gradients are huge: {size}, although the trend over {L} layers is only {_num(-change)} decades"
            ))
        elif verdict == "exploding":
            words.insert(0, (
                f"gradients explode: they grow by {-slope:.3g} decades per layer going down, "
                f"a factor 10^{_num(-change)} over {L} layers "
                f"(||dW|| from 10^{_num(top)} at the top to 10^{_num(bottom)} at layer 0)"
            ))
        else:
            words.insert(0, (
                f"gradients are stable: {abs(change):.3g} decades of fitted change over {L} layers "
                f"(threshold {threshold:g}); ||dW|| from 10^{_num(top)} at the top to 10^{_num(bottom)} at layer 0"
            ))
    elif finite.sum() == 1:
        words.insert(0, f"one layer: ||dW|| = 10^{_num(g[finite][0])}; no trend to fit")
    std = np.asarray(res.act_std.log10(), dtype=np.float64)
    ok = np.isfinite(std)
    if ok.sum() >= 2 and abs(std[ok][-1] - std[ok][0]) >= 3:
        grow = std[ok][-1] - std[ok][0]
        words.append(
            f"the forward activations {'grow' if grow > 0 else 'shrink'} by {abs(grow):.3g} decades "
            f"(std 10^{_num(std[ok][0])} at layer 0, 10^{_num(std[ok][-1])} at the top)"
        )
    if stack.activation in ("sigmoid", "tanh"):
        sat = float(np.mean(res.saturation))
        if sat > 0.1:
            words.append(f"{100 * sat:.0f} % of the units are saturated (phi' < 1% of its maximum)")
        if stack.activation == "sigmoid" and verdict == "vanishing" and not stack.batch_norm:
            words.append("sigmoid' <= 0.25 costs at least 0.6 decades per layer times the weight gain")
    if stack.activation in ("relu", "leaky_relu", "prelu"):
        dead = float(np.mean(res.dead))
        if dead > 0.1:
            words.append(f"{100 * dead:.0f} % of the units are dead (z <= 0 for the whole batch)")
    return verdict, "; ".join(words) + "."
