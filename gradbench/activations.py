"""The activations, written once in NumPy: ``phi`` and its derivative ``dphi`` (the reference).

One name per concept in every language: ``phi``/``dphi`` here (NumPy), ``phi``/``dphi`` in
``kernels/activations.py`` (Numba), ``gb_phi_f64``/``gb_dphi_f64`` and ``gb_phi_f32``/
``gb_dphi_f32`` in ``csrc/activations.h`` (C, token-pasted from one macro). ``grep -rn dphi``
finds all of them. Activation codes are positions in :data:`gradbench.spec.ACTIVATIONS`.

Formulas (``p`` is the activation's parameter: leaky slope, PReLU slope, ELU alpha; s(z) the
logistic sigmoid, Phi/phi_N the normal cdf/pdf)::

    identity  z                                   1
    sigmoid   s(z)                                s(z) s(-z) = e / (1 + e)^2,  e = exp(-|z|)
    tanh      tanh z                              sech^2 z = 4 e / (1 + e)^2,  e = exp(-2|z|)
    relu      max(z, 0)                           1 if z > 0 else 0
    leaky / prelu   z if z > 0 else p z           1 if z > 0 else p
    elu       z if z > 0 else p expm1(z)          1 if z > 0 else p exp(z)
    selu      lambda * elu with alpha_selu        lambda (1 if z > 0 else alpha exp(z))
    swish     z s(z)                              s(z) (1 + z s(-z))
    gelu      z Phi(z),  Phi(z) = erfc(-z/sqrt2)/2    Phi(z) + z phi_N(z)

The derivatives are written without cancellation, so saturated units keep their digits:
tanh'(20) = 1.7e-17 (1 - tanh^2 would give 0), sigmoid'(-700) = 1e-304, and Phi through erfc
keeps gelu accurate for large negative z. Float32 inputs are evaluated in float64 and rounded
once. At the kink of the ReLU family the left derivative is used (z <= 0). NaN stays NaN in phi
so that non-finite values are reported.

Scaled evaluation (:func:`phi_scaled`, :func:`dphi_scaled`): with forward rescaling an input is
a mantissa u and an int64 exponent f, z = u 2^f, which may lie far outside the float range.
Where |z| < :data:`TINY` (per activation and dtype) phi(z) equals its linear term c z to the last
bit (tanh c = 1, gelu and swish c = 1/2, elu c = 1 or alpha, selu lambda or lambda alpha) and
phi'(z) equals c, so they are evaluated in that form on the mantissa; where 2^f u overflows,
phi takes its limit form (linear or constant); elsewhere z is representable and phi is
evaluated directly. The result is the mantissa of phi(z) at the same exponent f.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from gradbench.spec import ACTIVATIONS, HOMOGENEOUS

SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# |z| below which phi(z) = c z and phi'(z) = c to the last bit: the next Taylor term relative
# to the linear one (tanh z^2/3, gelu 0.8 |z|, swish and elu/selu |z|/2) is below 2^-(p+3)
# with p the dtype's precision (53, 24).
TINY = {
    "float64": {"tanh": 2.0**-30, "gelu": 2.0**-57, "swish": 2.0**-57, "elu": 2.0**-57, "selu": 2.0**-57},
    "float32": {"tanh": 2.0**-16, "gelu": 2.0**-28, "swish": 2.0**-28, "elu": 2.0**-28, "selu": 2.0**-28},
}


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), written so that neither branch overflows; keeps z's dtype."""
    z = np.asarray(z)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype)


def _ncdf(x: np.ndarray) -> np.ndarray:
    """Phi(x) = erfc(-x/sqrt2)/2 (float64); in the lower tail as erfcx(a) exp(-a^2)/2 (a = -x/sqrt2),
    which stays accurate where erfc's own result is subnormal."""
    from scipy.special import erfc, erfcx  # here: SciPy takes ~0.12 s to import (CLI start)

    a = -x * _SQRT_HALF
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        return np.where(a > 20, 0.5 * erfcx(np.where(a > 20, a, 0.0)) * np.exp(-a * a), 0.5 * erfc(a))


def _as64(z: np.ndarray) -> np.ndarray:
    return np.asarray(z, dtype=np.float64)


def phi(z: np.ndarray, code: int, param: float) -> np.ndarray:
    """phi(z) for activation ``code`` (a position in :data:`gradbench.spec.ACTIVATIONS`)."""
    name = ACTIVATIONS[code]
    z = np.asarray(z)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        if name == "identity":
            return z.copy()
        if name == "relu":  # NaN stays NaN so that non-finite values are reported
            return np.where((z > 0) | np.isnan(z), z, 0.0).astype(z.dtype)
        if name in ("leaky_relu", "prelu"):
            return np.where(z > 0, z, param * z).astype(z.dtype)
        x = _as64(z)
        if name == "sigmoid":
            out = sigmoid(x)
        elif name == "tanh":
            out = np.tanh(x)
        elif name == "elu":
            out = np.where(x > 0, x, param * np.expm1(np.minimum(x, 0)))
        elif name == "selu":
            out = SELU_LAMBDA * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))
        elif name == "swish":
            out = x * sigmoid(x)
        elif name == "gelu":
            out = x * _ncdf(x)
        else:
            raise ValueError(f"unknown activation code {code}")
    return out.astype(z.dtype)


def dphi(z: np.ndarray, code: int, param: float) -> np.ndarray:
    """phi'(z), without cancellation (module docstring); the left derivative at the ReLU kink."""
    name = ACTIVATIONS[code]
    z = np.asarray(z)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        if name == "identity":
            return np.ones_like(z)
        if name == "relu":
            return (z > 0).astype(z.dtype)
        if name in ("leaky_relu", "prelu"):
            return np.where(z > 0, 1.0, param).astype(z.dtype)
        x = _as64(z)
        if name == "sigmoid":
            e = np.exp(-np.abs(x))
            out = e / ((1 + e) * (1 + e))
        elif name == "tanh":
            e = np.exp(-2 * np.abs(x))
            out = 4 * e / ((1 + e) * (1 + e))
        elif name == "elu":
            out = np.where(x > 0, 1.0, param * np.exp(np.minimum(x, 0)))
        elif name == "selu":
            out = SELU_LAMBDA * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))
        elif name == "swish":
            out = sigmoid(x) * (1 + x * sigmoid(-x))
        elif name == "gelu":
            out = _ncdf(x) + x * np.exp(-0.5 * x * x) * _INV_SQRT_2PI
        else:
            raise ValueError(f"unknown activation code {code}")
    return out.astype(z.dtype)


# ------------------------------------------------------------------ scaled evaluation
def linear_coefficients(code: int, param: float) -> tuple[float, float, float, float, float, float]:
    """Slopes of phi at 0 and at +-infinity: (c0 for z > 0, c0 for z <= 0, c_inf for z > 0,
    c_inf for z < 0, and the constant phi tends to at +inf and at -inf beside the slope)."""
    name = ACTIVATIONS[code]
    if name == "tanh":
        return 1.0, 1.0, 0.0, 0.0, 1.0, -1.0
    if name in ("gelu", "swish"):
        return 0.5, 0.5, 1.0, 0.0, 0.0, 0.0
    if name == "elu":
        return 1.0, param, 1.0, 0.0, 0.0, -param
    if name == "selu":
        return SELU_LAMBDA, SELU_LAMBDA * SELU_ALPHA, SELU_LAMBDA, 0.0, 0.0, -SELU_LAMBDA * SELU_ALPHA
    raise ValueError(f"activation {name!r} has no scaled form (homogeneous ones need none, sigmoid is O(1))")


def _clamp(f):
    """An exponent for np.ldexp (int32): beyond +-100000 every result is 0 or inf anyway. ``f``
    an int, or an int64 array (one exponent per row of a batch, shaped to broadcast: (B, 1))."""
    if isinstance(f, np.ndarray):
        return np.minimum(np.maximum(f, -100000), 100000).astype(np.int32)  # ldexp's vector loop
    return int(min(max(int(f), -100000), 100000))


def _regimes(u: np.ndarray, f, name: str):
    """z = u 2^f (float64), and the masks of the tiny and the overflowing entries."""
    x = _as64(u)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        z = np.ldexp(x, _clamp(f))
        tiny = np.abs(z) < TINY[u.dtype.name][name]
        over = np.isinf(z) & np.isfinite(x)
    return x, z, tiny, over


def phi_scaled(u: np.ndarray, f, code: int, param: float) -> np.ndarray:
    """The mantissa of phi(u 2^f) at exponent f (module docstring); u's dtype. ``f`` an int, or
    one per row of a batch u (B, N) as an int64 array (B, 1)."""
    name = ACTIVATIONS[code]
    if name in HOMOGENEOUS:
        return phi(u, code, param)  # phi(u 2^f) = phi(u) 2^f exactly
    x, z, tiny, over = _regimes(u, f, name)
    c0p, c0m, cip, cim, kp, km = linear_coefficients(code, param)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        pz = phi(z, code, param) if (tiny | over).sum() < z.size else np.zeros_like(x)
        over = over | (np.isinf(pz) & np.isfinite(x))  # SELU: lambda z overflows for z up to 1.05x below the max
        out = np.ldexp(pz, _clamp(-f))
        out = np.where(tiny, np.where(x > 0, c0p, c0m) * x, out)
        limit = np.where(x > 0, cip, cim) * x + np.ldexp(np.where(x > 0, kp, km), _clamp(-f))
        out = np.where(over, limit, out)
    return out.astype(u.dtype)


def dphi_scaled(u: np.ndarray, f, code: int, param: float) -> np.ndarray:
    """phi'(u 2^f) (module docstring); u's dtype. ``f`` as in :func:`phi_scaled`."""
    name = ACTIVATIONS[code]
    if name in HOMOGENEOUS:
        return dphi(u, code, param)
    x, z, tiny, over = _regimes(u, f, name)
    c0p, c0m, cip, cim, _, _ = linear_coefficients(code, param)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        out = dphi(np.where(tiny | over, 0.0, z), code, param).astype(np.float64)
        out = np.where(tiny, np.where(x > 0, c0p, c0m), out)
        out = np.where(over, np.where(x > 0, cip, cim), out)
    return out.astype(u.dtype)


# ------------------------------------------------------------------ log-derivative
# Activations whose derivative can fall below the float range while the chain should go on
# (phi' != 0 but in a limit, or where GELU's and swish's phi' changes sign): the backward pass rescues a layer of them in log form.
RESCUE = frozenset({"sigmoid", "tanh", "elu", "selu", "swish", "gelu"})
# A layer's dz = da * phi'(z) below this everywhere is recomputed in log form (docs/design.md).
RESCUE_BELOW = {"float64": 2.0**-900, "float32": 2.0**-100}
# ... unless the largest ln|da phi'| is below -2^62 ln 2: a scale beyond any int64 exponent, 0.
RESCUE_LN_MIN = -(2.0**62) * math.log(2.0)
# Where each rescued activation's ln|phi'(z)| falls below RESCUE_LN_MIN (2^(-2^62), beyond any int64
# exponent), in words for the diagnoses: tanh' ~ 4 e^(-2|z|), sigmoid' ~ e^(-|z|), the ELU family's
# and swish's negative side ~ e^z, gelu's ~ e^(-z^2 / 2)
SATURATED_AT = {name: f"{where} ~ {edge:.2g}".replace("e+", "e") for name, where, edge in (
    ("tanh", "|z|", -RESCUE_LN_MIN / 2), ("sigmoid", "|z|", -RESCUE_LN_MIN), ("elu", "z", RESCUE_LN_MIN),
    ("selu", "z", RESCUE_LN_MIN), ("swish", "z", RESCUE_LN_MIN), ("gelu", "z", -math.sqrt(-2 * RESCUE_LN_MIN)))}
_LN4 = math.log(4.0)
_HALF_LN_2PI = 0.5 * math.log(2 * math.pi)
_GELU_ASYMPTOTIC = -30.0  # below: gelu'(x) from the asymptotic Mills ratio, in log form


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    """ln s(x) = -ln(1 + e^-x), neither branch overflowing (float64)."""
    return np.where(x >= 0, -np.log1p(np.exp(-np.abs(x))), x - np.log1p(np.exp(np.minimum(x, 0))))


def _mills_series(a: np.ndarray) -> np.ndarray:
    """a m(a), m the asymptotic Mills ratio Phi(-a) / phi(a) to 6 terms: 1 - 1/a^2 + 3/a^4 - ...
    (relative error below 1e-14 from a = 30 on)."""
    r = 1 / (a * a)
    return 1 - r * (1 - r * (3 - r * (15 - r * (105 - r * 945))))


def log_dphi(x: np.ndarray, code: int, param: float) -> tuple[np.ndarray, np.ndarray]:
    """(ln |phi'(x)|, sign of phi'(x)) in float64 for the :data:`RESCUE` activations, at any
    float64 x including +-inf: tanh' = 4 e^-2a / (1 + e^-2a)^2 and sigmoid' = e^-a / (1 + e^-a)^2
    (a = |x|) in closed form, ELU and SELU's exponential side as ln(alpha) + x, swish as
    ln s(x) + ln|1 + x s(-x)|, gelu below x = -30 as -x^2/2 - ln sqrt(2 pi) + ln(a - m(a)), m the
    asymptotic Mills ratio (6 terms: relative error below 1e-14 there)."""
    name = ACTIVATIONS[code]
    x = _as64(x)
    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        a = np.abs(x)
        sign = np.ones_like(x)
        if name == "sigmoid":
            ln = -a - 2 * np.log1p(np.exp(-a))
        elif name == "tanh":
            ln = _LN4 - 2 * a - 2 * np.log1p(np.exp(-2 * a))
        elif name in ("elu", "selu"):
            lam, alpha = (1.0, param) if name == "elu" else (SELU_LAMBDA, SELU_ALPHA)
            ln_alpha = math.log(alpha) if alpha > 0 else -math.inf
            ln = np.where(x > 0, math.log(lam), math.log(lam) + ln_alpha + np.minimum(x, 0))
        elif name == "swish":
            ls = _log_sigmoid(x)
            t = 1 + x / (1 + np.exp(x))
            ln = np.where(np.isposinf(x), 0.0, np.where(np.isneginf(x), -np.inf, ls + np.log(np.abs(t))))
            sign = np.where(np.isinf(x), 1.0, np.sign(t))
        elif name == "gelu":
            d = dphi(np.maximum(x, _GELU_ASYMPTOTIC), code, param).astype(np.float64)
            ai = np.where(x < _GELU_ASYMPTOTIC, a, 40.0)
            low = -0.5 * ai * ai - _HALF_LN_2PI + np.log(ai - _mills_series(ai) / ai)
            ln = np.where(x < _GELU_ASYMPTOTIC, low, np.log(np.abs(d)))
            sign = np.where(x < _GELU_ASYMPTOTIC, -1.0, np.sign(d))
            ln = np.where(np.isinf(x), np.where(x > 0, 0.0, -np.inf), ln)
            sign = np.where(np.isposinf(x), 1.0, sign)
        else:
            raise ValueError(f"activation {name!r} needs no log-derivative (its phi' never underflows)")
    return ln, sign


# ------------------------------------------------------------------ log-activation
# Activations whose phi itself leaves the float range for finite z (the deep negative tail:
# GELU below z = -37.5, swish below -745 in float64): the forward rescues a layer of them in
# log form (reference.rescue_forward) where the layer's largest |h| lies below RESCUE_BELOW and
# some unit lies below RESCUE_X, where |phi| is just above RESCUE_BELOW (every unit that
# underflows lies below it).
# ELU and SELU (LIMIT_RESCUE) have no underflowing tail, but at a large exponent f their
# negative side, phi -> -alpha (SELU: -lambda alpha), has the mantissa -alpha 2^-f, which is
# subnormal from f ~ 1022 (float32: 126) and 0 from f ~ 1075 (150): a sample whose every unit is
# negative there lost its row (zero-bias ELU at width 1, h = 1e30 then z = -1e30 in float32 read
# the loss 0, not 0.1998). Their rows whose largest |h| is subnormal or 0 are looked at too, with
# any unit below -1; the positive side is linear (phi = lambda x: its mantissa is exact).
LIMIT_RESCUE = frozenset({"elu", "selu"})
PHI_RESCUE = frozenset({"gelu", "swish"}) | LIMIT_RESCUE
RESCUE_X = {"float64": {"gelu": -35.0, "swish": -620.0, "elu": -1.0, "selu": -1.0},
            "float32": {"gelu": -11.0, "swish": -65.0, "elu": -1.0, "selu": -1.0}}


def log_phi(x: np.ndarray, code: int, param: float) -> tuple[np.ndarray, np.ndarray]:
    """(ln |phi(x)|, sign of phi(x)) in float64 for the :data:`PHI_RESCUE` activations at any
    float64 x, +-inf included: swish as ln|x| + ln s(x); gelu as ln|x Phi(x)| from x = -30 up,
    below as -x^2/2 - ln sqrt(2 pi) + ln(a m(a)) (a = |x|, m the asymptotic Mills ratio, 6
    terms: relative error below 1e-14 there); ELU and SELU as ln(lambda x) above 0 and
    ln(lambda alpha) + ln(-expm1(x)) below (at -inf ln(lambda alpha), their limit)."""
    name = ACTIVATIONS[code]
    x = _as64(x)
    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        a = np.abs(x)
        sign = np.sign(x)
        if name in LIMIT_RESCUE:
            lam, c = (1.0, param) if name == "elu" else (SELU_LAMBDA, SELU_ALPHA)
            ln = np.where(x > 0, np.log(a) + math.log(lam),
                          math.log(lam * c) + np.log(-np.expm1(np.minimum(x, 0.0))))
        elif name == "swish":
            ln = np.where(np.isneginf(x), -np.inf, np.log(a) + _log_sigmoid(x))
        elif name == "gelu":
            mid = np.maximum(x, _GELU_ASYMPTOTIC)
            direct = np.log(np.abs(mid * _ncdf(mid)))
            ai = np.where(x < _GELU_ASYMPTOTIC, a, 40.0)
            low = -0.5 * ai * ai - _HALF_LN_2PI + np.log(_mills_series(ai))
            ln = np.where(x < _GELU_ASYMPTOTIC, low, direct)
            ln = np.where(np.isneginf(x), -np.inf, np.where(np.isposinf(x), np.inf, ln))
        else:
            raise ValueError(f"activation {name!r} needs no log form (its phi never underflows)")
    return ln, sign


# ------------------------------------------------------------------ max phi'
def _swish_argmax() -> float:
    """The z where swish' peaks: the root of swish'' = s(1-s)(2 + z(1 - 2s)), i.e. z tanh(z/2) = 2."""
    z = 2.4
    for _ in range(50):  # Newton on f(z) = z tanh(z/2) - 2, converges in a few steps
        t = math.tanh(z / 2)
        step = (z * t - 2) / (t + z * (1 - t * t) / 2)
        z -= step
        if abs(step) < 1e-16:
            break
    return z


@functools.lru_cache(maxsize=64)
def dphi_max(activation: str, param: float) -> float:
    """max_z phi'(z) in closed form: the scale of the saturation threshold 0.01 * max phi'.

    gelu: gelu'' = phi_N(z) (2 - z^2) vanishes at z = sqrt 2, so max = Phi(sqrt 2) + sqrt 2
    phi_N(sqrt 2); swish: at the root of z tanh(z/2) = 2 (z = 2.3994...), max = s (1 + z (1 - s)).
    """
    if activation == "sigmoid":
        return 0.25
    if activation in ("identity", "tanh", "relu"):
        return 1.0
    if activation in ("leaky_relu", "prelu"):
        return max(1.0, abs(param))
    if activation == "elu":
        return max(1.0, param)
    if activation == "selu":
        return SELU_LAMBDA * SELU_ALPHA
    if activation == "gelu":
        r = math.sqrt(2.0)
        return 0.5 * (1.0 + math.erf(1.0)) + r * math.exp(-1.0) / math.sqrt(2 * math.pi)
    if activation == "swish":
        z = _swish_argmax()
        s = 1.0 / (1.0 + math.exp(-z))
        return s * (1.0 + z * (1.0 - s))
    raise ValueError(f"unknown activation {activation!r}")


def saturation_uncountable(z: np.ndarray, activation: str) -> bool:
    """Whether the kernels' saturation count of the pre-activations ``z`` of one layer (or one
    time step) is not a count: they compare |phi'(z)| < 1 % of its largest value, which reads a
    NaN z as False (not saturated), and swish's and GELU's phi'(-inf) evaluates as inf * 0 = NaN
    though its limit is 0. Any other infinite z counts by its limit (tanh, sigmoid: saturated)."""
    return bool(np.isnan(z).any()) or (activation in ("swish", "gelu") and bool(np.any(z == -np.inf)))
