"""Theory beside simulation for recurrent cells: the per-step rate of ||dL/dh_t|| going back in time.

Rates are in decades per step going back from step T-1 towards step 0 (negative: vanishing), the
convention of :mod:`gradbench.recurrent.diagnose`.

- Linear cells (identity activation): dL/dh_{t-1} = dL/dh_t W_hh, the *same* matrix at every
  step, so the rate is log10 of the spectral radius rho(W_hh), exact for the drawn matrix as
  T -> infinity (the transient decays like 1/T). Orthogonal and identity W_hh at gain 1 give
  exactly 0. For the Gaussian ensemble, rho -> sigma_w as N grows (the circular law).
  Newman's lambda_1 (:func:`gradbench.theory.newman_lambda1`) is the rate of a product of
  *independent* Gaussian matrices (an RNN that redraws W_hh at every step): shown for contrast,
  it is not the rate of a tied recurrent matrix.
- Nonlinear vanilla cells: mean field (:func:`gradbench.theory.mean_field`) with sigma_w the gain
  of W_hh and the input acting as the bias, sigma_b^2 = the variance of x_t W_ih^T + b_ih + b_hh
  per unit (||row of W_ih||^2 + bias^2 for x ~ N(0, 1)), the length map started from
  q0 = sigma_b^2 (h_{-1} = 0: the first step's pre-activation is the input term alone; it decides
  the phase of gelu and swish cells where their map has two attractors): rate 0.5 log10 chi_1.
  It treats the tied W_hh as if it were redrawn (the gradient independence assumption). At N = 64
  it is within ~15 % of the measured rate for tanh at gain 1.5 and seed 0 (tests/test_recurrent_theory.py),
  ~30 % for ReLU, sigmoid at gain 4 and SELU, and closer as N grows (ReLU: 30, 5 and 1.7 % at
  N = 64, 256 and 512); for tanh and sigmoid it needs many open units (``open_fraction``,
  :func:`gradbench.theory.open_fraction`): tanh at gain 1000 reads +1.36 decades per step,
  measured -14.6 at N = 64.
  Mean field assumes a *random* W_hh (Gaussian or orthogonal, :data:`MEAN_FIELD_INITS`): with
  ``recurrent_init="identity"`` (a deterministic W_hh) a nonlinear cell gets no prediction
  (``decades_per_step`` None, the reason in ``method``), not a number that does not apply.
- LSTM and GRU: no closed form here; the measured rate only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradbench import theory
from gradbench.recurrent.spec import Recurrent

_NORMAL_INITS = ("normal", "xavier_normal", "xavier_uniform", "he_normal", "he_uniform", "lecun_normal")
MEAN_FIELD_INITS = _NORMAL_INITS + ("orthogonal",)  # the random W_hh that mean field describes


@dataclass(frozen=True)
class RatePrediction:
    """A predicted per-step rate (decades per step going back; None: no prediction)."""

    rnn: Recurrent
    decades_per_step: float | None
    method: str
    spectral_radius: float | None = None
    newman_untied: float | None = None
    chi1: float | None = None
    input_std: float | None = None
    open_fraction: float | None = None  # gradbench.theory.open_fraction at q*; NaN: not tanh or sigmoid


def input_std(rnn: Recurrent, params=None) -> float:
    """The standard deviation of a unit's input term x_t W_ih^T + b (x ~ N(0, 1)): from the
    parameters when given, else from the init's variances."""
    if params is not None:
        N = rnn.hidden
        W = np.asarray(params.W_ih[:N], dtype=np.float64)
        b = np.asarray(params.b_ih[:N] + params.b_hh[:N], dtype=np.float64)
        return float(math.sqrt(np.mean(np.sum(W * W, axis=1) + b * b)))
    D, N, g = rnn.d_in, rnn.hidden, rnn.input_gain
    var_w = g * g * (2.0 / (D + N) if rnn.init.startswith("xavier") else 1.0 / D)
    if rnn.init == "orthogonal":
        var_w = g * g / max(D, N)
    return math.sqrt(D * var_w + 2 * rnn.sigma_b**2)


def predicted_rate(rnn: Recurrent, params=None) -> RatePrediction:
    """The per-step rate of ||dL/dh_t|| going back (module docstring); ``params`` (the drawn
    parameters) makes the linear prediction exact for that W_hh and the mean field's input
    variance that of those W_ih."""
    if not isinstance(rnn, Recurrent):
        raise TypeError(f"rnn must be a gradbench.Recurrent, got {type(rnn).__name__}")
    if rnn.cell != "rnn":
        return RatePrediction(rnn, None, f"none: no closed form for the {rnn.cell} cell (measured only)")
    N, gain = rnn.hidden, rnn.gain
    newman = theory.newman_lambda1(N, gain) / math.log(10) if rnn.recurrent_init in _NORMAL_INITS else None
    if rnn.act == "identity":
        if params is not None:
            rho = float(np.max(np.abs(np.linalg.eigvals(np.asarray(params.W_hh, dtype=np.float64)))))
            return RatePrediction(rnn, math.log10(rho), "log10 spectral radius of the drawn W_hh (linear cell)",
                                  spectral_radius=rho, newman_untied=newman)
        how = "exact" if rnn.recurrent_init in ("orthogonal", "identity") else "large-N circular law"
        return RatePrediction(rnn, math.log10(gain), f"log10 gain ({how}, linear cell)", spectral_radius=gain,
                              newman_untied=newman)
    if rnn.recurrent_init not in MEAN_FIELD_INITS:
        return RatePrediction(rnn, None, f"none: mean field assumes a random W_hh ({', '.join(MEAN_FIELD_INITS)}); "
                              f"recurrent_init={rnn.recurrent_init!r} with the {rnn.act} activation is not covered "
                              "(measured only)", newman_untied=newman)
    su = input_std(rnn, params)
    # h_{-1} = 0: the first step's pre-activation is the input term alone, variance su^2 (where the
    # length map starts; it decides the phase where the map has two attractors, gelu and swish)
    mf = theory.mean_field(rnn.act, gain, su, rnn.act_param if rnn.activation_param is not None else None, q0=su * su)
    return RatePrediction(rnn, mf.decades_per_layer, "mean field 0.5 log10 chi_1 (sigma_w = gain of W_hh, "
                          "sigma_b = std of the input term)", newman_untied=newman, chi1=mf.chi1, input_std=su,
                          open_fraction=mf.open_fraction)


def measured_rate(res, skip: int | None = None) -> float:
    """The least-squares rate of log10 ||dL/dh_t|| going back, over the steps away from both
    ends (``skip`` steps at each: default T/20, the start-up and the last step's transient)."""
    s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
    T = len(s)
    skip = T // 20 if skip is None else skip
    t = np.arange(T)[skip:T - skip]
    y = s[skip:T - skip]
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return math.nan
    return -float(np.polyfit(t[ok], y[ok], 1)[0])
