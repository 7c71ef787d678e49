"""Diagnosis of one pass through time: how far back the gradient reaches, and why.

:func:`diagnose` turns a :class:`~gradbench.recurrent.RecurrentResult` into a
:class:`RecurrentDiagnosis` (frozen; ``to_dict`` / ``to_json``; ``str`` for a terminal).
Definitions (steps t = 0 .. T-1, h_t the state written by step t):

- ``signal_log10[t]`` = log10 ||dL/dh_t|| and ``grad_log10[t]`` = log10 of the norm of step t's
  contribution to dL/dW_hh, exact (mantissa and int64 exponent); ``cell_log10`` the LSTM's
  log10 ||dL/dc_t|| (the total: through h_t and through c_{t+1}).
- ``decades_per_step``: the least-squares slope of ``signal_log10`` going *back* in time, from
  step T-1 towards step 0: the change per step, negative = vanishing (the stacks' convention,
  "going down towards the input"). For the LSTM this, ``ratio_log10`` and the verdict read its
  backward state's norm sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2) (:func:`state_log10`) in place of
  ||dL/dh_t||: the pair is what the backward carries, and dL/dc_t reaches step t's gates whatever
  dL/dh_t does; ``signal_log10`` and ``cell_log10`` stay the two norms.
- ``ratio_log10`` = log10(||dL/dh_0|| / ||dL/dh_{T-1}||): "the gradient reaching step 0 is
  10^ratio of the one at the last step".
- ``reach``: the number of consecutive steps around the largest step contribution to dL/dW_hh,
  going back from it and forward from it, whose contributions all stay within ``reach_decades``
  (8) decades of it (:func:`reach_window`): the steps that learning draws on. In a vanishing net
  the largest term lies at or near the last step and the window runs back from it: how far back
  learning reaches. In an exploding net it lies at the start of the sequence (step 1 when
  h_{-1} = 0, whose step-0 term is exactly 0) and the window runs forward from it: learning is
  dominated by the most distant steps.
- ``verdict`` (:func:`classify`), with the threshold of the stacks' verdict
  (gradbench/verdict.py: ``threshold`` = 2 decades, a factor 100):

  1. ``exploding`` if the forward or the backward turned non-finite; ``no gradient`` if
     ||dL/dh_t|| is exactly 0 at every step;
  2. ``vanishing`` if no gradient reaches some step before a step that has one (exactly 0);
  3. the changes of log10 ||dL/dh_t|| going back from step T-1: the fitted one (slope times
     T - 1), the total one (``ratio_log10``), the drop to the minimum and the rise to the
     maximum (both relative to step T-1). At most ``-threshold`` for any -> ``vanishing``, at
     least ``+threshold`` -> ``exploding``; if both fire, the larger change wins (as for the
     stacks). A collapse in a few steps followed by a flat stretch has a small fitted slope but
     a large drop: it vanishes;
  4. otherwise ``stable`` (a rate that would reach the threshold over a sequence not much longer
     is said to be held by the sequence's length, with that length: :func:`_short_words`).
- ``float_limits[dtype]``: the first step, going back, at which a plain float32 / float64 chain
  would have lost ||dL/dh_t|| to underflow (below the smallest normal) or overflow; the
  explanation names every dtype whose range is exceeded and the steps it would have lost
  (:func:`_limit_words`): an overflow from that step down (a plain chain's inf never turns finite
  again); an underflow "from step t down" only when every step below t is lost too, else "at steps
  1-3 and 7" (an LSTM's dL/dc_t carries the gradient past an underflowed dL/dh_t), but for the rnn
  and the GRU every step below one whose ||dL/dh_t|| lies below half the smallest subnormal (a
  state of zeros stays zero).
- exact zeros inside the chain (||dL/dh_t|| = 0 while an earlier step's is not, rule 2) are named;
  in the LSTM they are not true zeros: a sample's dL/dh_t and dL/dc_t share one exponent per step
  (:func:`gradbench.recurrent.reference.finish_state`), and a dL/dh_t beyond the dtype's range
  below dL/dc_t reads 0. A gated cell's step term of dL/dW_hh that reads 0 beside non-zero ones is
  named too (its saturated gates' derivatives have no log-form rescue). "Falls to" names the lowest
  finite point only when no step reads exactly 0 ("its lowest non-zero value" otherwise).
- gate statistics per step: the saturated fraction of the activation entries, the mean forget
  gate (LSTM) or update gate (GRU) and the fraction of them below 0.1.
- a loss at every step (``loss_on="every"``, with the result's ``carried_signal_norm``):
  ||dL/dh_t|| is then mostly step t's own loss term and stays flat however fast the gradient
  carried through the recurrence vanishes. ``carried_log10`` holds log10 ||dL_{T-1}/dh_t||, the
  gradient of the last step's loss alone, and ``carried_grad_log10`` the norms of that loss's
  step terms of dL_{T-1}/dW_hh; ``decades_per_step``, ``ratio_log10``, the verdict and
  ``float_limits`` are read from the first, ``reach`` from the second; ``signal_log10`` and
  ``grad_log10`` stay the whole loss's. A result without that pass (``backprop(..., carried=False)``)
  is refused: its ||dL/dh_t|| says nothing of what the recurrence carries (it read STABLE where the
  carried gradient vanished at 0.535 decades a step).
- signal clipping (``clip_on="signal"``): where the clip changed the backward state is read from
  the kernels' record (``RecurrentResult.signal_clip_acted``, the carried pass's
  ``carried_signal_clip_acted``), never guessed from the norms: "the clip changed it at 5 of the
  14 steps (0, 1, 2, 3 and 9)", "changed no state: these are the norms of the loss's derivative"
  (:func:`gradbench.verdict.clip_record_words`, the stacks' sentence). With a loss at every step
  the sentence is the carried pass's, and a second one says where the clip changed the every-step
  loss's own state, whose gradients training uses.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from gradbench.activations import RESCUE, SATURATED_AT
from gradbench.diagnose import _from_jsonable as _from_json_value
from gradbench.diagnose import frobenius_log10
from gradbench.recurrent.results import RecurrentResult
from gradbench.recurrent.spec import Recurrent
from gradbench.report import activation_words, count, fmt_percent, fmt_pow, index_runs, inactive_settings
from gradbench.verdict import (MEASURABLE_DECADES, ClipChain, acted_list, chaos_words, clip_record_words, countable_mean,
                               rms_log10, rounding_share)

FLOAT_LIMITS = {
    name: (float(np.log10(np.finfo(name).tiny)), float(np.log10(np.finfo(name).max)))
    for name in ("float64", "float32")
}


@dataclass(frozen=True, eq=False)
class RecurrentDiagnosis:
    """The diagnosis of one pass through time (definitions in the module docstring)."""

    rnn: dict
    backend: str
    loss: float
    loss_log10: float
    signal_log10: np.ndarray
    cell_log10: np.ndarray
    grad_log10: np.ndarray
    act_std_log10: np.ndarray
    saturation: np.ndarray
    gate_mean: np.ndarray
    gate_low: np.ndarray
    first_nonfinite_forward: int | None
    first_nonfinite_backward: int | None
    decades_per_step: float
    ratio_log10: float
    reach: int
    verdict: str
    explanation: str
    float_limits: dict
    threshold: float
    carried_log10: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    carried_grad_log10: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    clip_acted: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=bool))
    carried_clip_acted: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=bool))
    weights: str | None = None  # the params' origin (Result.extras["weights"]): the header says it

    @property
    def steps(self) -> int:
        return len(self.signal_log10)

    def to_dict(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> "RecurrentDiagnosis":
        """The diagnosis :meth:`to_dict` wrote (``run --cell CELL --out x.json``'s ``"diagnosis"``):
        arrays back as arrays (bool where they were), "nan"/"inf" back as floats; a field an older
        file lacks takes its default."""
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ValueError(f"the diagnosis has no field {f.name!r}: not a RecurrentDiagnosis.to_dict()")
                continue
            v = _from_jsonable(d[f.name])
            if f.name == "rnn":
                v = dict(d[f.name])
            if isinstance(v, list):
                v = np.array(v, dtype=bool if f.name.endswith("clip_acted") else np.float64)
            elif f.name in ("loss", "loss_log10", "decades_per_step", "ratio_log10", "threshold"):
                v = float(v)
            kw[f.name] = v
        return cls(**kw)

    @classmethod
    def from_json(cls, s: str) -> "RecurrentDiagnosis":
        """:meth:`from_dict` of a JSON text (:meth:`to_json`, or the text of a ``gradbench run
        --cell ... --out x.json`` file); a path is refused, naming how to read it."""
        from gradbench.frames import json_fields

        return cls.from_dict(json_fields(s, "gradbench.recurrent.diagnose.RecurrentDiagnosis"))

    def to_frame(self):
        """One row per time step as a pandas DataFrame (:func:`gradbench.frames.diagnosis_frame`):
        ``step`` and the per-step arrays; the other fields in ``df.attrs``."""
        from gradbench.frames import diagnosis_frame

        return diagnosis_frame(self)

    @classmethod
    def from_npz(cls, path, name: str | None = None) -> "RecurrentDiagnosis":
        """Read the ``.npz`` file of :func:`gradbench.frames.write_npz` (``gradbench run --cell ...
        --out x.npz``; ``name``: one cell of ``gradbench compare --cells ... --out x.npz``)."""
        from gradbench.frames import RECURRENT, npz_fields

        return cls(**npz_fields(path, name, kind=RECURRENT))

    def __str__(self) -> str:
        return format_report(self)


def _from_jsonable(v):
    """A value :func:`_jsonable` wrote, back: "nan"/"inf"/"-inf" as floats, in lists and dicts."""
    if isinstance(v, dict):
        return {k: _from_jsonable(x) for k, x in v.items()}
    return _from_json_value(v)


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else ("-inf" if v == -math.inf else v))
    return v


def _fit(y: np.ndarray) -> float:
    """Least-squares slope of y against the step over its finite entries (nan without two)."""
    t = np.arange(len(y), dtype=np.float64)
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return math.nan
    tm, ym = t[ok].mean(), y[ok].mean()
    dt = t[ok] - tm
    return float(np.dot(dt, y[ok] - ym) / np.dot(dt, dt))


def _num(v: float) -> str:
    """A decade count: 10^-64411.7 beyond a thousand, else 4 digits; rounding noise (10^1.11e-16 of
    a norm of 1) is 0."""
    if abs(v) < 1e-9:
        return "0"
    return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"


def float_limits(signal_log10: np.ndarray) -> dict:
    """The first step, going back from T-1, whose ||dL/dh_t|| a plain chain of each dtype would
    have lost (below the smallest normal: underflow; above the largest finite: overflow)."""
    out = {}
    s = np.asarray(signal_log10, dtype=np.float64)
    for name, (lo, hi) in FLOAT_LIMITS.items():
        under = np.flatnonzero(np.isfinite(s) & (s < lo))
        over = np.flatnonzero(s > hi)
        out[name] = {"min_log10": lo, "max_log10": hi,
                     "underflow_step": int(under.max()) if under.size else None,
                     "overflow_step": int(over.max()) if over.size else None}
    return out


def _changes(s: np.ndarray, per_step: float) -> dict:
    """The changes of log10 ||dL/dh_t|| going back from step T-1 (rule 3 of the module docstring):
    ``fitted``, ``total``, ``minimum`` and ``maximum``; the non-finite ones left out."""
    last = s[-1] if len(s) else math.nan
    fin = s[np.isfinite(s)]
    if not math.isfinite(last) or not fin.size:
        return {}
    out = {"fitted": per_step * (len(s) - 1), "total": s[0] - last,
           "minimum": float(fin.min()) - last, "maximum": float(fin.max()) - last}
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}


def lost_words(rnn, res) -> list[str]:
    """The samples whose backward state reached the initial state as exactly 0 though it was not
    at the last step (``extras["lost_samples"]``), and what cuts their chains: each sample carries
    its own power of two back through time, so never the batch's other samples."""
    lost = int((getattr(res, "extras", None) or {}).get("lost_samples") or 0)
    if not lost:
        return []
    B = res.h0_grad.mantissa.shape[0]
    cut = ("dead units (z <= 0) at some step" if rnn.cell == "rnn" and rnn.act in ("relu", "leaky_relu") else
           "an exact zero in the chain (a derivative beyond any int64 exponent, or an exact 0 of the cell)")
    every = rnn.has_head and rnn.loss_on == "every"
    alone = ", the last step's loss alone" if every else ""
    if B == 1:
        return [f"the sample's gradient is non-zero at the last step and exactly 0 at the initial state{alone}: {cut}"]
    which = f"all {B} samples" if lost == B else f"{lost} of {B} samples"
    what = "the last step's loss's gradient" if every else "their gradient"
    return [f"{which} lose {what} on the way back (non-zero at the last step, exactly 0 at the initial state"
            f"{', carried back alone' if every else ''}): {cut} (each sample carries its own power of two, so the "
            "batch's other samples do not flush it)"]


def nonfinite_words(res) -> list[str]:
    """Where the forward state and the backward signal first turned non-finite, in words; step
    -1 of the backward is the initial state's gradient dL/dh_{-1} (``h0_grad``: the last product,
    dz_0 W_hh), which no row of the table shows."""
    words = []
    if res.first_nonfinite_forward is not None:
        words.append(f"the forward state turned non-finite at step {res.first_nonfinite_forward}")
    at = res.first_nonfinite_backward
    if at == -1:
        words.append("the backward signal turned non-finite only at the initial state: dL/dh_{-1} (h0_grad), "
                     "dz_0 W_hh, overflowed")
    elif at is not None:
        words.append(f"the backward signal turned non-finite at step {at}")
    return words


def state_log10(h_log10, c_log10) -> np.ndarray:
    """log10 of the LSTM's backward state norm sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2) per step, from
    the two norms' log10 (-inf: 0; NaN stays NaN). The state the backward carries is the pair:
    dL/dc_t reaches step t's gates (the input gate and the candidate) whatever dL/dh_t does. A
    forget gate near 1 under a small W_hh keeps dL/dc_t flat over 300 steps while dL/dh_t drops
    two decades in the first step back (it reaches the loss only through W_hh): that read
    VANISHING, and "no gradient reaches step 0" with W_hh = 0, where dL/dc_0 was 10^-3."""
    return rms_log10(h_log10, c_log10)  # log10 sqrt(10^2a + 10^2b), the stacks' root mean square's


def state_norm_log10(res) -> np.ndarray:
    """log10 of the backward state's norm per step of a result: ||dL/dh_t||, the LSTM's pair
    sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2) (:func:`state_log10`), as its verdict reads it."""
    with np.errstate(divide="ignore"):
        h = np.asarray(res.signal_norm.log10(), dtype=np.float64)
        if res.cell_signal_norm is None:
            return h
        return state_log10(h, np.asarray(res.cell_signal_norm.log10(), dtype=np.float64))


def verdict_signal(d, res=None) -> tuple[np.ndarray, str, bool]:
    """(log10 per step, its name, whether the verdict and rate read it): the curve a diagnosis's
    verdict and ``decades_per_step`` are read from, for the compare table's columns (``gradbench compare --cells``),
    :func:`gradbench.recurrent.plot.signal_vs_steps_back`'s lines and the TensorBoard events.

    ``||dL/dh_t||``, or with a loss at every step ``||dL_{T-1}/dh_t||`` (``carried_log10``). For the
    LSTM the verdict reads the backward state's norm sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2)
    (:func:`state_log10`), named ``||(dL/dh_t, dL/dc_t)||``: drawing
    ||dL/dh_t|| beside the pair's verdict and rate showed a curve falling 3.6 decades in one step
    (a least-squares slope of -0.0300 dec/step) labelled "stable, -0.0057 dec/step". A diagnosis
    with a loss at every step keeps no carried ||dL_{T-1}/dc_t||: without ``res`` (its result) an
    LSTM's carried ||dL_{T-1}/dh_t|| is returned with False (the verdict's curve is not drawn)."""
    carried = len(d.carried_log10) > 0
    h = np.asarray(d.carried_log10 if carried else d.signal_log10, dtype=np.float64)
    name = "||dL_{T-1}/dh_t||" if carried else "||dL/dh_t||"
    if d.rnn.get("cell") != "lstm":
        return h, name, True
    c = np.asarray(d.cell_log10, dtype=np.float64)
    if carried:
        zc = None if res is None else (getattr(res, "extras", None) or {}).get("carried_cell_signal_norm")
        if zc is None:
            return h, name, False
        with np.errstate(divide="ignore"):
            c = np.asarray(zc.log10(), dtype=np.float64)
    if len(c) != len(h):
        return h, name, False
    pair = "||(dL_{T-1}/dh_t, dL_{T-1}/dc_t)||" if carried else "||(dL/dh_t, dL/dc_t)||"
    return state_log10(h, c), pair, True


def classify(signal_log10, decades_per_step: float, *, threshold: float = 2.0, nonfinite: bool = False) -> str:
    """The verdict of the rules in the module docstring, from log10 ||dL/dh_t|| (t = 0 .. T-1)
    and its fitted rate going back."""
    s = np.asarray(signal_log10, dtype=np.float64)
    if nonfinite or np.any(np.isnan(s) | (s == math.inf)):
        return "exploding"
    if s.size and np.all(s == -math.inf):  # nothing reaches any step (it read "stable")
        return "no gradient"
    some = np.flatnonzero(s > -math.inf)
    if some.size and np.any(s[: some.max()] == -math.inf):
        return "vanishing"
    changes = _changes(s, decades_per_step).values()
    low, high = min(changes, default=0.0), max(changes, default=0.0)
    if low <= -threshold or high >= threshold:
        return "vanishing" if -low >= high else "exploding"
    return "stable"


def _short_words(per_step: float, T: int, threshold: float) -> list[str]:
    """A stable verdict that holds by the sequence's length, not by its rate (the stacks'
    gradbench.verdict._shallow_words): "STABLE" for 3 steps at 0.884 decades lost a step, where 4
    steps of the same net read VANISHING, said nothing of it."""
    from gradbench.verdict import threshold_length

    steps = threshold_length(per_step, T, threshold)
    if steps is None:
        return []
    kind = "vanishing" if per_step < 0 else "exploding"
    return [f"stable by the sequence's length, not by its rate: at {per_step:+.3g} decades per step the gradient "
            f"would change by the threshold's {threshold:g} decades over a sequence of {steps:.1f} steps, so a "
            f"longer sequence through this net would be {kind}"]


def _extremes(s: np.ndarray, threshold: float) -> list[str]:
    """Sentences for a minimum or maximum beyond the threshold that lies inside the sequence
    (step 0 is already said by the overall ratio)."""
    words = []
    fin = np.flatnonzero(np.isfinite(s))
    if not fin.size or not math.isfinite(s[-1]):
        return words
    zero = bool(np.any(s == -math.inf))  # an exact 0 lies lower than any finite point
    for pick, verb in ((np.argmin, "falls"), (np.argmax, "rises")):
        t = int(fin[pick(s[fin])])
        change = float(s[t] - s[-1])
        if 0 < t < len(s) - 1 and abs(change) >= threshold:
            if verb == "falls" and zero:
                words.append(f"going back its lowest non-zero value is 10^{_num(change)} of the last step's, at step "
                             f"{t} ({_back(len(s) - 1 - t)})")
            else:
                words.append(f"going back it {verb} to 10^{_num(change)} of the last step's at step {t} "
                             f"({_back(len(s) - 1 - t)})")
    return words


def _runs(steps) -> str:
    """Steps as runs: "1", "1-3 and 7", "1, 4-5 and 9"."""
    runs = index_runs(sorted(int(t) for t in steps))
    return runs[0] if len(runs) == 1 else ", ".join(runs[:-1]) + " and " + runs[-1]


def _steps_words(steps, T: int) -> str:
    """Where in the sequence ``steps`` lie: "from step 5 down (3 steps back)" for a run down to
    step 0, else "at step 1 (4 steps back)" or "at steps 1-3 and 7"."""
    steps = np.asarray(sorted(steps))
    top = int(steps[-1])
    if steps.size == top + 1:  # 0 .. top, every one
        return f"from step {top} down ({_back(T - 1 - top)})"
    if steps.size == 1:
        return f"at step {top} ({_back(T - 1 - top)})"
    return f"at steps {_runs(steps.tolist())}"


# log10 of half the smallest subnormal: an entry below it rounds to 0, so a state whose norm lies
# below it is all 0 in a plain chain of that dtype
FLUSH_LOG10 = {"float64": -1075 * math.log10(2), "float32": -150 * math.log10(2)}


def _value_limit_words(loss_log10: float, w_log10: float | None) -> list[str]:
    """Which dtypes a plain run would overflow or underflow the loss or dL/dW_hh in (exact here):
    an identity cell on inputs of 1e200 has a loss of 10^399.4, and the words named only float32's
    ||dL/dh_t||, where a plain float64 run reads inf for both."""
    words = []
    for what, v in (("the loss", loss_log10), ("dL/dW_hh", w_log10)):
        if v is None or not math.isfinite(v):
            continue
        over = [n for n in ("float32", "float64") if v > FLOAT_LIMITS[n][1]]
        under = [n for n in ("float32", "float64") if v < FLOAT_LIMITS[n][0]]
        if over:
            words.append(f"plain {' and '.join(over)} would overflow {what} (10^{_num(v)}: inf)")
        if under:
            words.append(f"plain {' and '.join(under)} would lose {what} to underflow (10^{_num(v)}: 0 or subnormal)")
    return words


def _limit_words(s: np.ndarray, T: int, signal: str = "||dL/dh_t||", cell: str | None = None) -> list[str]:
    """One sentence per kind (underflow, overflow) naming every dtype whose range ``signal``
    (log10 in ``s``) leaves and the steps a plain chain of it would have lost.

    Overflow: from the highest step above the largest finite down, for every cell. A plain
    chain's state, once an entry is inf, is inf or NaN at every earlier step (inf times a
    derivative, inf - inf, inf times 0). Its first inf lies within a step or so of the norm's
    crossing: the largest entry can lie a little below the norm, and a product inside dz_t W_hh
    can overflow where the sum would not (a linear rnn whose exact norm is above float32's range
    at steps 0-33, 35-36 and 39: torch's float32 chain is inf from step 38 down). A tanh RNN at
    gain 3 over 1000 steps read "at steps 0-594 and 599-601", as if the chain came back in range
    at 595-598.

    Underflow: the steps below the smallest normal (subnormal or 0), "from step t down" only when
    every step below is lost too. ``cell`` "rnn" or "gru" (a single backward state, dL/dh_t, fed by
    one loss: the last step's, or the carried pass's): where ||.|| lies below half the smallest
    subnormal (:data:`FLUSH_LOG10`) every entry is 0, and 0 stays 0, so every step below is lost
    even where the exact gradient grows back into range. Not so for the LSTM, whose dL/dc_t can
    carry the gradient past a dL/dh_t that underflows (one at step 1 below float32's range is back
    at 10^-6.6 at step 0), nor for an every-step loss's total, which each step's own loss term
    refills (``cell`` None)."""
    words = []
    s = np.asarray(s, dtype=np.float64)
    for kind, what in (("underflow", f"lost {signal} to underflow"), ("overflow", f"overflowed {signal}")):
        hit = []
        for name in ("float32", "float64"):
            lo, hi = FLOAT_LIMITS[name]
            if kind == "underflow":
                steps = np.flatnonzero(np.isfinite(s) & (s < lo))
                flushed = np.flatnonzero(np.isfinite(s) & (s < FLUSH_LOG10[name]))
                if cell in ("rnn", "gru") and flushed.size:  # all 0 there, and 0 times anything stays 0
                    steps = np.union1d(steps, np.arange(int(flushed.max()) + 1))
            else:
                over = np.flatnonzero(s > hi)
                steps = np.arange(int(over.max()) + 1) if over.size else over
            if steps.size:
                hit.append((name, _steps_words(steps, T)))
        if not hit:
            continue
        names = " and ".join(n for n, _ in hit)
        if len({w for _, w in hit}) == 1:
            where = hit[0][1]
        else:  # "from step 5 down (3 steps back, float32) and from step 2 down (6 steps back, float64)"
            where = " and ".join(f"{w[:-1]}, {n})" if w.endswith(")") else f"{w} ({n})" for n, w in hit)
        words.append(f"plain {names} would have {what} {where}")
    return words


# the recurrent nets' parameter clips (the stacks' CLIP_ELSEWHERE names the stacks' "layer")
_PARAM_CLIPS = ("(clip_on=\"matrix\" or \"global\", in Python, clips the parameter gradients of a training update "
                "instead and leaves the derivative)")


def _clip_chain(rnn, loss: str = "L") -> ClipChain:
    """How the clip sentence names the backward state of the loss ``loss`` ("L_{T-1}": the carried
    pass's), which the LSTM clips together with the part of dL/dc_t carried back."""
    subject = "the backward state" if loss == "L" else "the carried backward state"
    if rnn.cell == "lstm":
        subject += f" (d{loss}/dh_t with the part of d{loss}/dc_t carried back, clipped together)"
    return ClipChain(subject=subject, noun="state", unit="step", norm=f"||d{loss}/dh_t||", before="before the last step",
                     first=f"the last step's gradient d{loss}/dh_{{T-1}}", lower="before", upper="after",
                     top="from the last step back to", chain="state", other=_PARAM_CLIPS)


def _clip_words(rnn, acted, s: np.ndarray, loss: str = "L") -> str:
    """The sentence on a clipped backward state (:func:`gradbench.verdict.clip_record_words`) from
    the kernels' record of the pass the verdict reads: ``acted`` one bool a step (a result's
    ``signal_clip_acted[1:]``; entry 0, the initial state's dL/dh_{-1}, has no step), ``s`` that
    pass's log10 ||dL/dh_t||, of the loss ``loss`` (``"L_{T-1}"``: the carried pass)."""
    acted = np.asarray(acted, dtype=bool)
    only_last = bool(acted[-1]) and not acted[:-1].any()
    return clip_record_words(rnn.clip, rnn.clip_threshold, acted, s, only_last, _clip_chain(rnn, loss))


def _every_clip_words(acted) -> str:
    """Where the clip changed the every-step loss's own backward state (``acted``: one bool a
    step, the full pass's record), whose gradients training uses."""
    acted = np.asarray(acted, dtype=bool)
    k, T = int(acted.sum()), len(acted)
    if not k:
        return (f"with every step's loss the clip changed the state at none of the {T} steps: the gradients that "
                "training uses are the loss's derivative")
    if k == T:
        return ("with every step's loss the clip changed the state at every step: the gradients that training uses "
                "are the clipped chain's")
    return (f"with every step's loss the clip changed the state at {k} of the {T} steps ({acted_list(acted)}), where "
            "it changes the gradients that training uses")


def _signal_clip_words(rnn, res, s, carried: bool) -> list[str]:
    """:func:`_clip_words` of the pass the verdict reads (``s``: its log10 ||dL/dh_t||); with a
    loss at every step that is the carried pass, and :func:`_every_clip_words` says where the clip
    changed the every-step loss's own state."""
    if not carried:
        return [_clip_words(rnn, res.signal_clip_acted[1:], s)]
    return [_clip_words(rnn, res.carried_signal_clip_acted[1:], s, "L_{T-1}"),
            _every_clip_words(res.signal_clip_acted[1:])]


def _back(n: int) -> str:
    return "the last step" if n == 0 else f"{n} step{'s' if n != 1 else ''} back"


def _saturated_zero(rnn, s: np.ndarray, saturation) -> str:
    """Why the signal reads 0 below some step, when it is the vanilla cell's saturation: every
    unit's phi'(z) lies below 2^(-2^62) there (tanh at |z| ~ 1.6e18, sigmoid at 3.2e18: the
    cell's own activation is named, :data:`gradbench.activations.SATURATED_AT`), beyond the int64 exponent of the
    step's log-form rescue: the true gradient is tiny, not 0."""
    zero = np.flatnonzero(s == -math.inf)
    sat = np.asarray(saturation, dtype=np.float64)
    t = int(zero.max()) + 1 if zero.size else -1
    if rnn.cell != "rnn" or rnn.act not in RESCUE or not (0 < t < len(sat)) or sat[t] < 1.0:
        return ""
    at = SATURATED_AT[rnn.act]
    return (f": every unit of step {t} is saturated so far that its {rnn.act}'(z) lies below 2^(-2^62) (as "
            f"{rnn.act}' does at {at}), which no int64 exponent holds: the true gradient below is tiny, not 0")


def _zeros_inside(rnn, s: np.ndarray, cell: np.ndarray, g: np.ndarray, saturation, verdict: str,
                  loss: str = "L") -> list[str]:
    """Sentences for exact zeros inside the chain: steps whose ||dL/dh_t|| is exactly 0 while an
    earlier step's is not (rule 2 of the verdict), and, for the gated cells, steps t >= 1 whose
    contribution to dL/dW_hh is exactly 0 while others are not. Neither is a true 0 in the LSTM:
    it keeps a sample's dL/dh_t and dL/dc_t with one exponent per step (:func:`reference.finish_state`), so a
    dL/dh_t more than the dtype's range below dL/dc_t reads 0 although dL/dc_t carries the gradient
    on to the earlier steps; and the gated cells compute a step's term in the dtype below that
    exponent, with no log-form rescue of their gates' derivatives (an LSTM at gain 1000 in float32:
    ||dL/dh_1|| reads 0, exactly 10^-65.9, and step 2's term reads 0, exactly 10^-68.6)."""
    words = []
    nonzero = np.flatnonzero(s > -math.inf)
    zeros = np.flatnonzero(s == -math.inf)
    zero = zeros[zeros > nonzero.min()] if nonzero.size else zeros[:0]
    T = len(s)
    # how far below dL/dc_t the shared exponent reaches: the dtype's subnormals
    reach = -(FLOAT_LIMITS[rnn.dtype][0] - (16 if rnn.dtype == "float64" else 7))

    def cell_values(steps) -> str:  # dL/dc_t at the first three of ``steps``
        return ", ".join(f"10^{_num(float(cell[t]))}" for t in steps[:3]) + (", ..." if steps.size > 3 else "")
    if zero.size:
        where = (f"step {int(zero[0])} ({_back(T - 1 - int(zero[0]))})" if zero.size == 1
                 else f"steps {_runs(zero.tolist())}")
        first = int(nonzero[nonzero < zero.max()].max())
        why = ""
        if rnn.cell == "lstm" and len(cell) == T and np.all(np.isfinite(cell[zero])):
            why = (f": the LSTM keeps a sample's d{loss}/dh_t and d{loss}/dc_t with one exponent per step, and d{loss}/dc_t there "
                   f"({cell_values(zero)}) "
                   f"carries the gradient on to step {first}, so ||d{loss}/dh_t|| read 0 because it lay more than "
                   f"about {reach:.0f} decades below it, beyond {rnn.dtype}'s subnormals: the exact value is tiny, not 0")
        words.append(f"||d{loss}/dh_t|| is exactly 0 at {where} although step {first}, earlier, has a gradient "
                     f"(10^{_num(float(s[first]))}){why}"
                     + ("; an exact 0 inside the chain makes the verdict vanishing" if verdict == "vanishing" else ""))
    # zeros from step 0 on beside a non-zero dL/dc_t: the table showed 0 at steps 0-4 beside
    # ||dL/dc_t|| = 10^-4.61 and the words said nothing (W_hh of gain 1e-290; mpmath: 10^-409.8
    # there). Unlike zeros inside the chain these can be exact: W_hh = 0 passes nothing back
    # through h, and the result does not hold W_hh to tell the two apart
    lead = zeros[zeros < nonzero.min()] if nonzero.size else zeros[:0]
    if rnn.cell == "lstm" and lead.size and len(cell) == T and np.all(np.isfinite(cell[lead])):
        where = "step 0" if lead.size == 1 else f"steps {_runs(lead.tolist())}"
        words.append(f"||d{loss}/dh_t|| reads 0 at {where} while d{loss}/dc_t there ({cell_values(lead)}) "
                     f"does not: either it is exactly 0 (W_hh = 0 passes nothing back through h_t) or, as the LSTM "
                     f"keeps a sample's d{loss}/dh_t and d{loss}/dc_t with one exponent per step, it lay more than "
                     f"about {reach:.0f} decades below d{loss}/dc_t, beyond {rnn.dtype}'s subnormals, and its exact value "
                     "is tiny, not 0")
    if rnn.cell != "rnn" and T > 1 and np.any(np.isfinite(g)):
        gz = np.flatnonzero(g[1:] == -math.inf) + 1  # step 0's term is exactly 0 when h_{-1} = 0
        gz = gz[s[gz] > -math.inf] if rnn.cell != "lstm" else gz
        if gz.size:
            where = f"step {int(gz[0])}'s" if gz.size == 1 else f"steps {_runs(gz.tolist())}'"
            sat = float(np.min(np.asarray(saturation, dtype=np.float64)[gz]))
            why = (f": the gates' derivatives there ({'' if gz.size == 1 else 'at least '}{100 * sat:.0f} % of the "
                   f"activation entries saturated) took it below {rnn.dtype}'s range (the gated cells have no "
                   "log-form rescue), so the true contribution is tiny, not 0" if sat >= 0.5 else "")
            words.append(f"{where} contribution{'s' if gz.size > 1 else ''} to d{loss}/dW_hh "
                         f"read{'s' if gz.size == 1 else ''} exactly 0{why}")
    return words


def reach_window(g: np.ndarray, top: int, decades: float) -> tuple[int, int]:
    """The first and the last step of the run of consecutive steps around ``top`` (the largest
    contribution to dL/dW_hh, log10 in ``g``) whose contributions all lie within ``decades`` of
    it, going back from it and forward from it (an exact 0 or a NaN ends the run)."""
    within = g >= g[top] - decades
    below = np.flatnonzero(~within[:top])
    above = np.flatnonzero(~within[top + 1:])
    return (int(below.max()) + 1 if below.size else 0), (top + int(above.min()) if above.size else len(g) - 1)


def _reach_words(g: np.ndarray, top: int, first: int, last: int, decades: float, dw: str = "dL/dW_hh") -> str:
    """The sentence on where learning reaches (the window of :func:`reach_window`); ``dw`` names
    the gradient whose step contributions ``g`` holds."""
    T, n, big = len(g), last - first + 1, f"10^{_num(float(g[top]))}"
    if last == T - 1 and (first == 0 or (first == 1 and g[0] == -math.inf)):  # step 0's term is 0 when h_{-1} = 0
        return (f"learning reaches over the whole sequence: every step's contribution to {dw} lies within "
                f"{decades:g} decades of the largest ({big}, at step {top})")
    if n == 1:  # "over 1 step, from step 3, ..., down to step 3" said one step three ways
        return (f"learning reaches only step {top}, the largest contribution to {dw} ({big}): the steps next to it "
                f"are not within {decades:g} decades of it")
    steps = f"learning reaches over {n} steps"
    there = f"the contributions stay within {decades:g} decades of it there"
    if last == top:
        return f"{steps}, from step {top}, the largest contribution to {dw} ({big}), down to step {first}: {there}"
    if first == top:
        return (f"{steps}, from step {top}, the largest contribution to {dw} ({big}), up to step {last}: {there}"
                + (", and the later steps' contributions lie further below" if last < T - 1 else ""))
    return (f"{steps}, from step {first} up to step {last}, around the largest contribution to {dw} ({big}, at "
            f"step {top}): {there}")


def diagnose(res: RecurrentResult, *, threshold: float = 2.0, reach_decades: float = 8.0) -> RecurrentDiagnosis:
    """Statistics and a verdict in words from a :class:`RecurrentResult` (module docstring)."""
    if not isinstance(res, RecurrentResult):
        raise TypeError(f"res must be a RecurrentResult (from gb.backprop on a gb.Recurrent), got {type(res).__name__}")
    for name, v, what in (("threshold", threshold, "decades of change that make a verdict; default 2"),
                          ("reach_decades", reach_decades, "decades below the largest step contribution to "
                                                           "dL/dW_hh; default 8")):
        if (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v)
                or not v > 0):
            raise ValueError(f"{name} must be a finite number > 0 ({what}), got {v!r}")
    rnn = res.rnn
    T = rnn.steps
    if rnn.has_head and rnn.loss_on == "every" and res.carried_signal_norm is None:
        raise ValueError(
            "this result has a loss at every step (loss_on='every') but no carried pass: it came from "
            "gb.backprop(..., carried=False). With a loss at every step ||dL/dh_t|| sums step t's own loss term and "
            "every later step's carried back, and stays flat however fast the carried gradient vanishes, so no "
            "verdict, rate or reach can be read from it (the README's every-step example, vanishing at -0.535 "
            "decades a step, read STABLE from it). Run gb.backprop with carried=True (the default for "
            "loss_on='every') to diagnose it; this result's signal_norm and grad_norm, the whole loss's, are "
            "still there to read")
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
        g = np.asarray(res.grad_norm.log10(), dtype=np.float64)
        c = np.asarray(res.cell_signal_norm.log10(), dtype=np.float64) if res.cell_signal_norm is not None else np.zeros(0)
        std = np.asarray(res.act_std.log10(), dtype=np.float64)
    total, total_g = s, g
    carried = res.carried_signal_norm is not None
    with np.errstate(divide="ignore", invalid="ignore"):
        if carried:  # every-step loss: what the recurrence carries back from the last step's loss decides
            s = np.asarray(res.carried_signal_norm.log10(), dtype=np.float64)
            g = np.asarray(res.carried_grad_norm.log10(), dtype=np.float64)
    zc = c
    if carried:  # the carried pass's own ||dL_{T-1}/dc_t||, when the result has it
        zc = res.extras.get("carried_cell_signal_norm")
        with np.errstate(divide="ignore"):
            zc = np.asarray(zc.log10(), dtype=np.float64) if zc is not None else np.zeros(0)
    h_signal = s
    if rnn.cell == "lstm" and len(zc) == len(s):
        s = state_log10(s, zc)  # the LSTM's backward state is the pair: the verdict reads both
    slope = _fit(np.where(np.isfinite(s), s, np.nan))
    per_step = -slope if math.isfinite(slope) else math.nan
    ratio = float(s[0] - s[-1]) if (math.isfinite(s[0]) or s[0] == -math.inf) and math.isfinite(s[-1]) else math.nan
    fin = np.flatnonzero(np.isfinite(g))
    reach = 0
    if fin.size:
        top = int(fin[np.argmax(g[fin])])
        first, last = reach_window(g, top, reach_decades)
        reach = last - first + 1
    nonfinite = res.first_nonfinite_backward is not None or res.first_nonfinite_forward is not None
    verdict = classify(s, per_step, threshold=threshold, nonfinite=nonfinite)
    words = []
    # with a loss at every step: whether a signal clip changed the every-step loss's own state (the full pass's record)
    held = res.signal_clip_acted is not None and bool(np.any(res.signal_clip_acted[1:]))
    if carried:
        words.append(_every_step_words(total, T, verdict, (rnn.clip, rnn.clip_threshold) if held else None))
    if math.isfinite(ratio):
        gradient = "the gradient of the last step's loss" if carried else "the gradient"
        if s is not h_signal:
            gradient += " (the state's: dL/dh_t and dL/dc_t together)"
        if abs(ratio) < MEASURABLE_DECADES:  # rounding: 10^5.551e-17 read as a change
            words.append(f"{gradient} reaching step 0 is the one at step {T - 1}, unchanged to rounding")
        else:
            words.append(f"{gradient} reaching step 0 is 10^{_num(ratio)} of the one at step {T - 1}"
                         + (f" ({abs(ratio) / (T - 1):.3g} decades {'lost' if ratio < 0 else 'gained'} per step on "
                            "average)" if T > 1 else ""))
    elif s[0] == -math.inf and math.isfinite(s[-1]):
        none = int(np.sum(s == -math.inf))
        words.append(f"no gradient reaches step 0 (exactly zero; {count(none, 'step')} {'has' if none == 1 else 'have'} "
                     "none)"
                     + _saturated_zero(rnn, s, res.saturation))
    elif verdict == "no gradient":
        loss_zero = rnn.loss in ("bce", "softmax_ce") and float(res.loss_exact.log10()) == -math.inf
        words.append("no gradient at all: ||dL/dh_t|| is exactly zero at every step"
                     + (": the head is right by a margin so large that its loss and dL/dy lie below 2^(-2^62), "
                        "which no int64 exponent holds (the true gradient is not 0)" if loss_zero else
                        " (the forward state underflowed to 0 on the way: see below)" if _underflowed_steps(rnn, res).size else
                        " (an all-zero loss gradient, or every path from the loss cut)"))
    if verdict == "stable":
        words += _short_words(per_step, T, threshold)
    words += _zeros_inside(rnn, h_signal, zc, g, res.saturation, verdict, "L_{T-1}" if carried else "L")
    words += _extremes(s, threshold)
    if fin.size:
        words.append(_reach_words(g, top, first, last, reach_decades, "dL_{T-1}/dW_hh" if carried else "dL/dW_hh"))
    total_w = None if carried else _norm_log10(getattr(getattr(res, "grads", None), "W_hh", None))
    if not fin.size and T > 1 and np.any(np.isfinite(s)) and total_w is not None and total_w > -math.inf:
        # the terms' norms lost them, not the terms: their sum is not 0 (a GRU whose other sample's
        # state was far above blamed underflowed gates for terms of 10^-12.8)
        words.append(f"every step's term of dL/dW_hh reads 0 while their sum, dL/dW_hh, is 10^{_num(total_w)}: "
                     "the step norms take every sample at the batch's largest exponent of h_{t-1}, so a sample more "
                     f"than ~10^{STEP_NORM_REACH[rnn.dtype]} below the largest adds nothing to them; the terms are "
                     "not 0")
    elif not fin.size and T > 1 and np.any(np.isfinite(s)):
        words.append("every step's contribution to dL/dW_hh is exactly 0"
                     + (f": the gates' derivatives underflowed {rnn.dtype} (saturated gates; the gated cells have no "
                        "log-form rescue), so the true contributions are tiny, not 0"
                        if rnn.cell != "rnn" and float(np.max(res.saturation)) >= 0.5 else ""))
    if rnn.cell == "lstm" and len(c) and np.isfinite(c[0]) and np.isfinite(c[-1]):
        words.append(f"||dL/dc|| at step 0 is 10^{_num(float(c[0]))}")
    gate = {"lstm": "forget", "gru": "update"}.get(rnn.cell)
    if gate is not None:
        low = float(np.nanmean(res.gate_low))
        words.append(f"{100 * low:.0f} % of {gate} gates below 0.1 (mean {gate} gate {float(np.nanmean(res.gate_mean)):.3g})")
    if rnn.clip is not None and rnn.clip_on == "signal":
        # the sentence names ||dL/dh_t||: the LSTM's pair norm (s) read 0.83 above a 0.8 clip that rightly
        # changed nothing, its ||dL/dh_29|| being 0.756
        words += _signal_clip_words(rnn, res, h_signal, carried)
    sat, where = countable_mean(res.saturation, "steps")
    if sat > 0.1:
        words.append(f"{100 * sat:.0f} % of the activation entries{where} are saturated (|phi'| < 1 % of its largest value)")
    words += _state_underflow_words(rnn, res) + _partial_state_words(rnn, res)
    words += nonfinite_words(res) + lost_words(rnn, res)
    if verdict != "no gradient":
        with np.errstate(divide="ignore"):
            share = rounding_share(res.signal_norm.log10(), res.act_mean.log10(), res.act_std.log10(),
                                   float(res.loss_exact.log10()), rnn.dtype)
        words += chaos_words(share, rnn.dtype, f"h_t at step {share[1]}" if share else "")
    limits = float_limits(h_signal)
    words += _limit_words(h_signal, T, "dL_{T-1}/dh_t" if carried else "||dL/dh_t||", rnn.cell)
    words += _value_limit_words(float(res.loss_exact.log10()),
                                _norm_log10(getattr(getattr(res, "grads", None), "W_hh", None)))
    return RecurrentDiagnosis(
        rnn=dataclasses.asdict(rnn), backend=res.backend, loss=float(res.loss),
        loss_log10=float(res.loss_exact.log10()), signal_log10=total, cell_log10=c, grad_log10=total_g, act_std_log10=std,
        saturation=np.asarray(res.saturation, dtype=np.float64), gate_mean=np.asarray(res.gate_mean, dtype=np.float64),
        gate_low=np.asarray(res.gate_low, dtype=np.float64), first_nonfinite_forward=res.first_nonfinite_forward,
        first_nonfinite_backward=res.first_nonfinite_backward, decades_per_step=per_step, ratio_log10=ratio,
        reach=int(reach), verdict=verdict, explanation="; ".join(words) + ".", float_limits=limits,
        threshold=float(threshold), carried_log10=h_signal if carried else np.zeros(0),
        carried_grad_log10=g if carried else np.zeros(0), clip_acted=_steps_acted(res.signal_clip_acted),
        carried_clip_acted=_steps_acted(res.carried_signal_clip_acted if carried else None),
        weights=(getattr(res, "extras", None) or {}).get("weights"))


def _steps_acted(record) -> np.ndarray:
    """Where a signal clip changed step t's state, t = 0 .. T-1 (a record's entries 1..T; entry 0
    is the initial state's gradient), or empty without a record."""
    return np.zeros(0, dtype=bool) if record is None else np.asarray(record[1:], dtype=bool)


# cells whose state is 0 in every unit only by underflow (but for a step whose inputs and state
# are all exactly 0), and what underflowed
UNDERFLOW_CAUSE = {"sigmoid": "sigmoid(z) underflowed {dt} (a z far below 0)",
                   "gelu": "gelu(z) underflowed {dt} (a z far below 0)",
                   "swish": "swish(z) underflowed {dt} (a z far below 0)",
                   "lstm": "the output gate sigmoid(z) or the cell state c_t underflowed {dt} (a z far below 0)",
                   "gru": "the update gate's 1 - z_t or the candidate state underflowed {dt} (an update gate "
                          "within the dtype's range of 1, or a candidate far below 0)"}


# How far below the batch's largest h_{t-1} a sample's share of a step norm reaches: its row
# scaled to that exponent must stay above the dtype's smallest normal number (C forms the scaled
# copies in the dtype)
STEP_NORM_REACH = {"float64": 307, "float32": 37}


def _norm_log10(W) -> float | None:
    """log10 of the Frobenius norm of a LogScaled with one exponent (None: no such array; -inf for
    zeros or NaN), its mantissa's by :func:`gradbench.diagnose.frobenius_log10`."""
    if W is None:
        return None
    return float(frobenius_log10(W.mantissa[None])[0]) + int(np.max(W.exponent)) * math.log10(2.0)


def _underflowed_steps(rnn, res) -> np.ndarray:
    """The steps whose forward state h_t is 0 in every unit (its mean and its spread exactly 0)
    where that is an underflow, not an exact 0: a sigmoid cell's h_t = sigmoid(z) > 0; a GELU or
    swish cell's phi(z) is 0 only at z = 0; an LSTM's h_t = o_t tanh(c_t) with o_t = sigmoid(z) > 0
    and a GRU's h_t = (1 - z_t) n_t + z_t h_{t-1} are 0 only through underflow too, but for a step
    whose inputs and state are all exactly 0. None carries an exponent in the forward pass."""
    if _cause_key(rnn) not in UNDERFLOW_CAUSE:
        return np.zeros(0, dtype=int)
    with np.errstate(divide="ignore"):
        mean = np.asarray(res.act_mean.log10(), dtype=np.float64)
        std = np.asarray(res.act_std.log10(), dtype=np.float64)
    return np.flatnonzero((mean == -math.inf) & (std == -math.inf))


def _cause_key(rnn) -> str:
    return rnn.act if rnn.cell == "rnn" else rnn.cell


def _state_underflow_words(rnn, res) -> list[str]:
    """A cell's state read 0 at some steps (:func:`_underflowed_steps`): the loss and the
    gradients through them are the dtype's, not exact (a sigmoid cell with biases of -400 in
    float32: loss 0 and no gradient, where float64 gives h_t ~ 10^-173; an LSTM at sigma_w 1e4,
    whose output gate underflowed float64 at step 5: "no gradient at all", blaming the loss, where
    the exact h_5 is 10^-669; a GELU cell at gain 100: loss 0 where mpmath gives 10^-13768.5, a GRU
    with update-gate bias 800: 10^-694.7)."""
    zero = _underflowed_steps(rnn, res)
    if not zero.size:
        return []
    cause = UNDERFLOW_CAUSE[_cause_key(rnn)].format(dt=rnn.dtype)
    wider = (" (float64 holds it much further: run it with dtype float64)" if rnn.dtype == "float32" else "")
    where = "at every step" if zero.size == rnn.steps else _steps_words(zero, rnn.steps)
    cell = {"rnn": f"a {rnn.act} cell's state", "lstm": "an LSTM's forward state",
            "gru": "a GRU's forward state"}[rnn.cell]
    return [f"the forward state h_t is exactly 0 in every unit {where}: {cause}, and {cell} carries no "
            f"exponent, so the loss and the gradients through {'that step' if zero.size == 1 else 'those steps'} "
            f"are {rnn.dtype}'s, not exact{wider}"]


def _partial_state_words(rnn, res) -> list[str]:
    """A sigmoid cell's state entries that underflowed beside entries that did not
    (``extras["flushed_states"]``, :func:`gradbench.engine.underflowed_entries`; whole states
    are :func:`_state_underflow_words`'): their true values are tiny and can carry the larger share
    of a gradient, as in the stacks (:func:`gradbench.verdict.partial_underflow_words`): a sigmoid
    cell at gain 1e4 read ||dL/dh_1|| = 10^-5522.57 where mpmath gives 10^-1995.82."""
    n = np.asarray((getattr(res, "extras", None) or {}).get("flushed_states", []), dtype=np.int64)
    whole = set(_underflowed_steps(rnn, res).tolist())
    steps = [int(t) for t in np.flatnonzero(n) if t not in whole]
    if not steps:
        return []
    T, total = len(n), int(n[steps].sum())
    if T - 1 in steps:
        reach = "every gradient (the last state's entries are among them, and the loss reads h_{T-1})"
    else:
        later = [t + 1 for t in steps]
        reach = (f"the terms of dL/dW_hh at step{'s' if len(later) > 1 else ''} {_runs(later)}, which read "
                 f"{'them' if len(later) > 1 else 'it'}, and so dL/dW_hh,")
    many = len(steps) > 1
    return [f"not exact here: {total} entr{'ies' if total > 1 else 'y'} of the state h_t at step{'s' if many else ''} "
            f"{_runs(steps)} underflowed {rnn.dtype} (sigmoid(z) below the smallest normal number, and a sigmoid "
            "cell's forward carries no exponent) beside entries that did not; their true values are tiny, not 0, and "
            "can carry the larger share of a gradient (their sigmoid' is larger than a saturated unit's near 1), so "
            f"{reach} may be far from the exact values"]


def _every_step_words(total: np.ndarray, T: int, verdict: str, held: tuple | None = None) -> str:
    """What ||dL/dh_t|| of an every-step loss says, and what the verdict reads instead. It sums
    the terms of step t's loss and every later one's carried back: where the carried chain
    vanishes, step t's own and its near successors' dominate; where it explodes, the far later
    steps' (a tanh RNN at gain 3: 10^1.43 at step 0, whose own term is 10^-1.29). ``held``: (mode,
    threshold) of a signal clip that changed it at some step (the full pass's record,
    ``signal_clip_acted``; a norm clip at 0.01 made the range "10^-2 to 10^-2" without a word of it)."""
    if T == 1:  # no later step: the loss is step 0's alone
        fin = total[np.isfinite(total)]
        return ("with a loss at every step over a single step, the loss is step 0's alone: ||dL/dh_0||"
                + (f" (10^{_num(float(fin[0]))})" if fin.size else "") + " is its own loss term, with no later "
                "step's carried back" + (f" (the {held[0]} clip caps {'it' if held[0] == 'norm' else 'its entries'} at "
                                          f"{held[1]:g})" if held else ""))
    fin = total[np.isfinite(total)]
    span = (f" (10^{_num(float(fin.min()))} to 10^{_num(float(fin.max()))} over {count(T, 'step')}"
            + (f"; the {held[0]} clip caps {'it' if held[0] == 'norm' else 'its entries'} at {held[1]:g}" if held else "")
            + ")" if fin.size else "")
    what = {"vanishing": "mostly step t's own loss term and its near successors' (the later ones vanish on the way "
                         "back)",
            "exploding": "mostly the later steps' loss terms, grown on the way back"}.get(
        verdict, "the sum of step t's own loss term and every later step's carried back")
    return (f"with a loss at every step, ||dL/dh_t|| is {what}{span}, which does not say how far back credit "
            "reaches; the verdict, rate and reach are those of the gradient that the recurrence carries back from "
            "the last step's loss alone, dL_{T-1}/dh_t")


RECURRENT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Recurrent) if f.default is not dataclasses.MISSING}


def describe(rnn: dict, weights: str | None = None) -> str:
    """The net in words, every field that changes it, as :func:`gradbench.report.describe` says a
    stack (a float32 report's header was the float64 one's): cell, steps, hidden, the rnn's
    activation (with its parameter when not the default), the input dim when not hidden, W_ih's
    init, W_hh's init and gain, sigma_b when not 0, the LSTM's forget bias, the clip, the loss
    and the dtype; ``weights`` (the params' origin, as trained weights): said in place of the
    inits, the gain and sigma_b, which no longer describe them."""
    parts = [rnn["cell"], count(rnn["steps"], "step"), f"hidden {rnn['hidden']}"]
    if rnn["cell"] == "rnn":
        parts.append(activation_words({"activation": rnn.get("activation") or "tanh",
                                       "activation_param": rnn.get("activation_param")}))
    if rnn.get("input_dim") is not None and rnn["input_dim"] != rnn["hidden"]:
        parts.append(f"input dim {rnn['input_dim']}")
    if weights:
        parts.append(weights)
    else:
        parts.append(f"W_ih {rnn['init']}")
        parts.append(f"W_hh {rnn['recurrent_init']}" + (f" (gain {rnn['sigma_w']:g})" if rnn.get("sigma_w") else ""))
        if rnn.get("sigma_b"):
            parts.append(f"sigma_b={rnn['sigma_b']:g}")
    if rnn.get("forget_bias") is not None:
        parts.append(f"forget bias {rnn['forget_bias']:g}")
    if rnn.get("update_bias") is not None:
        parts.append(f"update-gate bias {rnn['update_bias']:g}")
    if rnn.get("clip"):
        parts.append(f"clip {rnn['clip']} {rnn['clip_threshold']:g} on {rnn['clip_on']}")
    if rnn.get("loss", "sum_squares") != "sum_squares":
        outputs = rnn.get("output_dim", 1)
        parts.append(f"loss {rnn['loss']} on {'every step' if rnn.get('loss_on') == 'every' else 'the last step'}"
                     + (f" ({outputs} outputs)" if outputs != 1 else ""))
    inactive = inactive_settings(rnn, RECURRENT_DEFAULTS, (
        ("clip_threshold", not rnn.get("clip"), "without clip"),
        ("clip_on", not rnn.get("clip"), "without clip"),
        ("output_dim", rnn.get("loss", RECURRENT_DEFAULTS["loss"]) == "sum_squares", "without a head")))
    if inactive:  # kept by Recurrent for replace(), doing nothing: said, as a stack's header says them
        parts.append(f"no effect: {', '.join(inactive)}")
    parts.append(rnn.get("dtype", "float64"))
    return ", ".join(parts)


def format_report(d: RecurrentDiagnosis, rows: int = 12) -> str:
    """The terminal report: the verdict, the sentences, and a table of a few steps."""
    import textwrap

    T = d.steps
    lines = [f"{describe(d.rnn, d.weights)} ({d.backend}): {d.verdict.upper()}"]
    lines += textwrap.wrap(d.explanation, 100, initial_indent="  ", subsequent_indent="  ")
    if T < 2:
        slope = "no slope to fit over one step"
    elif math.isfinite(d.decades_per_step):
        rate = d.decades_per_step if abs(d.decades_per_step) * (T - 1) >= MEASURABLE_DECADES else 0.0
        slope = (f"least-squares slope {rate + 0.0:+.4g}{' (to rounding)' if rate != d.decades_per_step else ''} "
                 "decades per step going back (negative: shrinking)")
    else:
        slope = "no least-squares slope (fewer than two steps with a finite gradient)"
    lines.append(f"  loss {fmt_pow(d.loss_log10)}; {slope}")
    if T <= rows:
        steps = list(range(T))
    else:
        steps = sorted(set(np.linspace(0, T - 1, rows).round().astype(int).tolist()))
    lstm = len(d.cell_log10) > 0
    carried = len(d.carried_log10) > 0
    unknown = _term_not_a_number(d)
    clip = d.carried_clip_acted if carried else d.clip_acted  # the verdict's pass: where the clip changed it
    show_clip = len(clip) == T
    head = (f"  {'step':>8} {'||dL/dh_t||':>12}" + (f" {'carried':>12}" if carried else "")
            + (f" {'||dL/dc_t||':>12}" if lstm else "") + f" {'||dW_hh term||':>14}"
            + (f" {'carried term':>13}" if carried else "") + f" {'saturated':>9}"
            + (f" {'gate':>6} {'<0.1':>5}" if d.rnn["cell"] != "rnn" else "") + (f" {'clipped':>7}" if show_clip else ""))
    lines += ["", head, "  " + "-" * (len(head) - 2)]
    for t in steps[::-1]:
        row = f"  {t:>8} {fmt_pow(d.signal_log10[t]):>12}" + (f" {fmt_pow(d.carried_log10[t]):>12}" if carried else "")
        row += f" {fmt_pow(d.cell_log10[t]):>12}" if lstm else ""
        row += f" {fmt_pow(math.nan if unknown[t] else d.grad_log10[t]):>14}"
        row += f" {fmt_pow(d.carried_grad_log10[t]):>13}" if carried else ""
        row += f" {fmt_percent(d.saturation[t], 9)}"
        if d.rnn["cell"] != "rnn":
            row += f" {d.gate_mean[t]:>6.3f} {fmt_percent(d.gate_low[t], 5, 0)}"
        if show_clip:
            row += f" {'yes' if clip[t] else '-':>7}"
        lines.append(row)
    if any(unknown[t] for t in steps):
        lines.append("  (||dW_hh term|| nan: that step's dL/dh_t or h_{t-1} is not finite, so its term is not a number)")
    if carried:  # the reach above is the carried column's: the whole loss's terms stay flat like ||dL/dh_t||
        lines += ["  (carried: of the last step's loss alone, dL_{T-1}/dh_t and step t's term of dL_{T-1}/dW_hh, which",
                  "  the verdict and reach read; ||dL/dh_t|| and ||dW_hh term||: of the loss at every step)"]
    if show_clip and carried:
        lines.append("  (clipped: where the clip changed the carried state, of the last step's loss alone, which the "
                     "verdict reads; the whole loss's: the diagnosis' clip_acted)")
    return "\n".join(lines)


def _term_not_a_number(d: RecurrentDiagnosis) -> np.ndarray:
    """Steps whose contribution to dL/dW_hh, dz_t h_{t-1}^T, cannot be a number: dL/dh_t is NaN
    or inf, or h_{t-1} is at or after the first non-finite forward step. The table shows nan
    there rather than the recorded norm: the C backend's Gram-matrix norm (hidden >= 64 at batch
    16) turned the NaN into 0, which the table showed as an exact 0."""
    s = np.asarray(d.signal_log10, dtype=np.float64)
    bad = np.isnan(s) | (s == math.inf)
    if d.first_nonfinite_forward is not None:
        bad |= np.arange(len(s)) > d.first_nonfinite_forward
    return bad & ~np.isnan(np.asarray(d.grad_log10, dtype=np.float64))
