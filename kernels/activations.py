"""phi and phi' of every activation, one scalar function each: the Numba twins of
:mod:`gradbench.activations` (same names, same formulas; ``grep -rn dphi`` finds all three).

Each function takes a scalar ``z`` of the array dtype and returns that dtype; the smooth
activations are evaluated in float64 and rounded once, as the reference does. ``_as(x, like)``
casts ``x`` to the type of ``like`` (float32 or float64) at compile time.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from gradbench import activations as A
from gradbench.abi import ACT_CODE
from gradbench.activations import SELU_ALPHA, SELU_LAMBDA
from gradbench.spec import ACTIVATIONS

from . import gelu_table as _gelu_table
from ._config import JIT

IDENTITY, SIGMOID, TANH, RELU = ACT_CODE["identity"], ACT_CODE["sigmoid"], ACT_CODE["tanh"], ACT_CODE["relu"]
LEAKY, PRELU, ELU, SELU = ACT_CODE["leaky_relu"], ACT_CODE["prelu"], ACT_CODE["elu"], ACT_CODE["selu"]
SWISH, GELU = ACT_CODE["swish"], ACT_CODE["gelu"]

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _as(x, like):
    """``x`` as the float type of ``like`` (pure-Python fallback, used with NUMBA_DISABLE_JIT)."""
    return type(like)(x) if isinstance(like, np.floating) else float(x)


@overload(_as)
def _as_impl(x, like):
    if isinstance(like, types.Float) and like.bitwidth == 32:
        return lambda x, like: np.float32(x)
    return lambda x, like: np.float64(x)


# tanh without a libm call, so that LLVM vectorises the loops that use it (5x faster than
# math.tanh here, ~1.2x faster than NumPy's SIMD tanh). tanh|x| = E/(E + 2), E = expm1(2|x|),
# E = 2**n (1 + expm1(r)) - 1 with r = 2|x| - n ln2 in [-0.35, 0.35] (Cody-Waite) and expm1(r)
# by Taylor to r**13 (truncation < 1e-17). Measured against np.tanh on 1.2e6 points from
# 1e-3 to 30 in scale: at most 3 ulp apart, as far as libm's tanh is from np.tanh.
_POW2 = np.array([2.0**n for n in range(64)])
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00


@njit(**JIT)
def _exp_poly(y):
    """(2**n, expm1(r)) with e^y = 2**n (1 + expm1(r)), for 0 <= y <= 40 (Cody-Waite, Taylor to
    r**13): no libm call, so loops over it vectorise."""
    nf = math.floor(y * _INV_LN2 + 0.5)
    r = (y - nf * _LN2_HI) - nf * _LN2_LO
    return _POW2[int(nf)], _expm1_reduced(r)


@njit(inline="always", **JIT)
def _expm1_reduced(r):
    """expm1(r) for a reduced |r| <= 0.35 + 2^-30 (Taylor to r**13, truncation < 1e-17)."""
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    return r + r * (r * p)


@njit(**JIT)
def tanh64(x):
    """tanh of a float64 (see above); NaN stays NaN, -0.0 stays -0.0, |x| >= 19.1 gives +-1."""
    y = min(40.0, 2.0 * abs(x))  # tanh(20) rounds to 1 already; NaN: 40 (min's first operand)
    p2, em1 = _exp_poly(y)
    e1 = (p2 * (1.0 + em1) - 1.0) if p2 > 1.0 else em1
    t = e1 / (e1 + 2.0)
    if x != x:
        return x
    return math.copysign(t, x)


# The derivatives of tanh and sigmoid from the same polynomial, for |x| up to 20 and 40 (the
# callers fix up larger |x| and NaN with dphi): sech^2 x = 4P / (P + 1)^2 with P = e^{2|x|},
# sigmoid' x = P / (P + 1)^2 with P = e^{|x|}. No cancellation: a few ulps like dphi's form.
# min(40.0, |x|), in that order: Numba's min returns its first operand when the other is NaN, so
# a NaN x indexes the polynomial's table at 2^58, not at int(NaN) (one past its end).
DTANH_MAX = 20.0
DSIGMOID_MAX = 40.0


@njit(**JIT)
def dtanh64(x):
    p2, em1 = _exp_poly(min(40.0, 2.0 * abs(x)))
    P = p2 * (1.0 + em1)
    return 4.0 * P / ((P + 1.0) * (P + 1.0))


@njit(**JIT)
def dsigmoid64(x):
    p2, em1 = _exp_poly(min(40.0, abs(x)))
    P = p2 * (1.0 + em1)
    return P / ((P + 1.0) * (P + 1.0))


@njit(**JIT)
def sigmoid_pair64(x):
    """(sigmoid x, sigmoid' x) of a float64 from the same polynomial, for |x| up to DSIGMOID_MAX
    (the callers fix up larger |x| and NaN with sigmoid64 and dphi): with P = e^{|x|} and
    r = 1 / (P + 1), sigmoid is 1 - r (x >= 0) or r, sigmoid' is P r^2. One division, no libm
    call: loops over it vectorise. Within a few ulps of sigmoid64 (1 - r rounds once more, and
    r <= 1/2 keeps it accurate)."""
    p2, em1 = _exp_poly(min(40.0, abs(x)))
    P = p2 * (1.0 + em1)
    r = 1.0 / (P + 1.0)
    return (1.0 - r if x >= 0 else r), P * r * r


# ELU, SELU and swish from the same polynomial (the layer kernels' vector paths; the callers fix
# up what the bound leaves out with phi/dphi). With P = e^{|x|} and E = P - 1 = expm1|x|:
# expm1(-|x|) = -E / P and e^{-|x|} = 1 / P, no cancellation. ELU_FAMILY_MIN: below it (and
# NaN) e^x is not the polynomial's any more (the bound), and phi' = alpha e^x matters to the
# exact chain down to e^-745; above 0 phi is the line. Swish: for x > 40 phi(x) = x and phi' = 1
# to the last bit (x e^-x < 2^-54 there); from -40 down to EXP_ZERO (and NaN, +-inf) the callers
# fix up. Below EXP_ZERO e^x rounds to 0: phi and phi' are their limits, the scalar forms' bits
# (ELU -outer inner and +0, swish -0 and -0), so that the far lower tail of an exploding stack
# (z ~ -2^100 for half its entries) stays in the vector loops.
ELU_FAMILY_MIN = -40.0
SWISH_MAX = 40.0
EXP_ZERO = -746.0  # e^-746 < 2^-1075: rounds to 0


@njit(inline="always", **JIT)
def elu_pair64(x, outer, inner):
    """(phi, phi') of outer (x if x > 0 else inner expm1(x)) for x >= ELU_FAMILY_MIN and below
    EXP_ZERO: ELU (outer 1, inner alpha), SELU (lambda, alpha). One division each, no libm call, one return (with a
    second, on x > 0, LLVM did not vectorise the loops over it)."""
    p2, em1 = _exp_poly(min(40.0, abs(x)))  # NaN: 40 (see DTANH_MAX)
    P = p2 * (1.0 + em1)
    E = (P - 1.0) if p2 > 1.0 else em1  # below -40: -E / P is -1 to the last bit
    pos = x > 0
    d = inner / P if x >= EXP_ZERO else inner * 0.0  # e^x: 0 (inner 0.0: the scalar form's sign)
    return outer * (x if pos else inner * (-E / P)), outer * (1.0 if pos else d)


@njit(inline="always", **JIT)
def swish_pair64(x):
    """(x sigmoid(x), sigmoid(x) (1 + x sigmoid(-x))) for x >= -40 and below EXP_ZERO (x > 40: x
    and 1), as sigmoid_pair64: r = 1 / (P + 1) is sigmoid(-|x|)."""
    p2, em1 = _exp_poly(min(40.0, abs(x)))
    r = 1.0 / (p2 * (1.0 + em1) + 1.0) if x >= EXP_ZERO else 0.0
    s, t = (1.0 - r, r) if x >= 0 else (r, 1.0 - r)  # sigmoid(x), sigmoid(-x)
    big = x > SWISH_MAX
    return (x if big else x * s), (1.0 if big else s * (1.0 + x * t))


# GELU from a piecewise polynomial, as the C kernels' gb_vgelu (csrc/activations.h, where the
# derivation is): with w = |x|, E = exp(-w^2/2) and F(w) = erfcx(w/sqrt2)/2 (kernels/gelu_table.py,
# the C table's numbers: one polynomial in w - centre per piece of [0, 44], relative error
# < 2^-55), Phi(-w) = E F, so
#   x <= 0: gelu = -(w E F),     gelu' = E (F - w c)
#   x > 0:  gelu = x (1 - E F),  gelu' = 1 - E (F - w c),   c = 1/sqrt(2 pi).
# E keeps its relative accuracy at every w: w^2 = wh^2 + (w - wh)(w + wh) with wh the top 26 bits
# of w (Veltkamp's split: wh^2 exact), e^(-wh^2/2) reduced by Cody-Waite to 2^k e^r, the small
# term added to r. For x >= GELU_MIN, k >= -988: 2^k is a normal number (no subnormal step, as in
# C below -37.5); w is clamped to -GELU_MIN, where E F < 2^-990: for x > -GELU_MIN gelu = x and
# gelu' = 1 to the last bit. Below GELU_ZERO (but -inf) gelu and gelu' round to zero (|gelu(-39)|
# = 2e-331, |gelu'(-39)| = 8e-330): -0 and +0, the scalar forms' zeros. Between the two, and for
# NaN and +-inf, the callers fix up with phi/dphi (the results are subnormal there).
GELU_MIN = -37.0
GELU_ZERO = -39.0
_POW2_NEG = np.array([2.0**-n for n in range(1001)])
_GELU_EDGES = np.array(_gelu_table.EDGES[1:-1])  # the pieces' lower edges but the first
_GELU_TAB = _gelu_table.TABLE
_GELU_DEG = _gelu_table.DEG
_VELTKAMP = 134217729.0  # 2^27 + 1


@njit(inline="always", **JIT)
def gelu_pair64(x):
    """(gelu x, gelu' x) of a float64 for x >= GELU_MIN and -inf < x < GELU_ZERO (see above). No
    libm call, no branch: loops over it vectorise (the table is read by gathers)."""
    w = min(-GELU_MIN, abs(x))  # NaN: -GELU_MIN (min's first operand; the callers fix it up)
    idx = 0
    for e in _GELU_EDGES:
        idx += w >= e
    T = _GELU_TAB
    dx = w - T[_GELU_DEG + 2, idx]
    dx2 = dx * dx
    dx4 = dx2 * dx2
    dx8 = dx4 * dx4
    t3 = T[3, idx] + dx * T[4, idx]
    t5 = T[5, idx] + dx * T[6, idx]
    t7 = T[7, idx] + dx * T[8, idx]
    t9 = T[9, idx] + dx * T[10, idx]
    t11 = T[11, idx] + dx * T[12, idx]
    t13 = T[13, idx] + dx * T[14, idx]
    R = ((t3 + dx2 * t5) + dx4 * (t7 + dx2 * t9)) + dx8 * ((t11 + dx2 * t13) + dx4 * T[15, idx])
    S = T[1, idx] + dx * (T[2, idx] + dx * R)
    F = T[0, idx] + (T[_GELU_DEG + 1, idx] + dx * S)
    # E = exp(-w^2/2) = 2^k (1 + q)
    cw = _VELTKAMP * w
    wh = cw - (cw - w)
    hi = -0.5 * (wh * wh)
    lo = -0.5 * ((w - wh) * (w + wh))
    kf = math.floor(hi * _INV_LN2 + 0.5)
    r = (hi - kf * _LN2_HI) + (lo - kf * _LN2_LO)
    q = _expm1_reduced(r)
    s = _POW2_NEG[-int(kf)]
    g = (F + F * q) * s  # E F = Phi(-w)
    wf = w * F
    an = (wf + wf * q) * s  # w E F
    fd = F - w * INV_SQRT_2PI
    h = (fd + fd * q) * s  # E (F - w c)
    pos = x > 0
    zero = x < GELU_ZERO
    return (x * (1.0 - g) if pos else (-0.0 if zero else math.copysign(an, x))), (
        1.0 - h if pos else (0.0 if zero else h))


@njit(**JIT)
def tanh(z):
    """tanh in z's dtype (float32: the float64 value rounded once)."""
    return _as(tanh64(np.float64(z)), z)


@njit(**JIT)
def sigmoid64(x):
    """1 / (1 + exp(-x)) of a float64, written so that neither branch overflows (as the reference)."""
    e = math.exp(-abs(x))
    if x >= 0:
        return 1.0 / (1.0 + e)
    return e / (1.0 + e)


@njit(**JIT)
def sigmoid(z):
    """sigmoid in z's dtype (float32: the float64 value rounded once)."""
    return _as(sigmoid64(np.float64(z)), z)


@njit(**JIT)
def phi(z, code, p):
    """phi(z) for activation ``code``; ``p`` (float64) is its parameter (slope, alpha).

    Evaluated in float64 and rounded once to z's dtype, as the reference."""
    if code == RELU:  # NaN stays NaN
        if z > 0 or z != z:
            return z
        return _as(0.0, z)
    if code == LEAKY or code == PRELU:
        if z > 0:
            return z
        return _as(p * z, z)
    if code == IDENTITY:
        return z
    x = np.float64(z)
    if code == TANH:
        v = tanh64(x)
    elif code == SIGMOID:
        v = sigmoid64(x)
    elif code == ELU:
        v = x if x > 0 else p * math.expm1(x)  # x <= 0 or NaN here: min(x, 0) is x
    elif code == SELU:
        v = SELU_LAMBDA * (x if x > 0 else SELU_ALPHA * math.expm1(x))
    elif code == SWISH:
        v = x * sigmoid64(x)
    else:  # GELU
        v = 0.5 * x * math.erfc(-x * SQRT_HALF)
    return _as(v, z)


@njit(**JIT)
def dphi(z, code, p):
    """phi'(z) without cancellation (see gradbench.activations); the left derivative at the
    ReLU kink. Evaluated in float64 and rounded once to z's dtype."""
    one = _as(1.0, z)
    if code == RELU:
        if z > 0:
            return one
        return _as(0.0, z)
    if code == LEAKY or code == PRELU:
        if z > 0:
            return one
        return _as(p, z)
    if code == IDENTITY:
        return one
    x = np.float64(z)
    if code == TANH:
        e = math.exp(-2.0 * abs(x))
        v = 4.0 * e / ((1.0 + e) * (1.0 + e))
    elif code == SIGMOID:
        e = math.exp(-abs(x))
        v = e / ((1.0 + e) * (1.0 + e))
    elif code == ELU:
        v = 1.0 if x > 0 else p * math.exp(x)
    elif code == SELU:
        v = SELU_LAMBDA * (1.0 if x > 0 else SELU_ALPHA * math.exp(x))
    elif code == SWISH:
        v = sigmoid64(x) * (1.0 + x * sigmoid64(-x))
    else:  # GELU
        v = 0.5 * math.erfc(-x * SQRT_HALF) + x * math.exp(-0.5 * x * x) * INV_SQRT_2PI
    return _as(v, z)


# ------------------------------------------------------------------ scaled evaluation
# phi_scaled / dphi_scaled: the twins of gradbench.activations.phi_scaled / dphi_scaled (read
# their docstring). The thresholds and coefficients are gradbench.activations' own numbers,
# indexed here by activation code (0 for the activations that need no scaled form).
_TINY64 = np.array([A.TINY["float64"].get(n, 0.0) for n in ACTIVATIONS])
_TINY32 = np.array([A.TINY["float32"].get(n, 0.0) for n in ACTIVATIONS])
_EXP_LIMIT = 100000  # the clamp of gradbench.activations._clamp


def tiny_threshold(u, code):
    """The TINY threshold of u's dtype (pure-Python fallback, used with NUMBA_DISABLE_JIT)."""
    return (_TINY32 if isinstance(u, np.float32) else _TINY64)[code]


@overload(tiny_threshold)
def _tiny_impl(u, code):
    if isinstance(u, types.Float) and u.bitwidth == 32:
        return lambda u, code: _TINY32[code]
    return lambda u, code: _TINY64[code]


@njit(**JIT)
def _clamp_f(f):
    return int(min(max(f, -_EXP_LIMIT), _EXP_LIMIT))


@njit(**JIT)
def _coefficients(code, p):
    """(c0+, c0-, cinf+, cinf-, k+, k-) of gradbench.activations.linear_coefficients."""
    if code == TANH:
        return 1.0, 1.0, 0.0, 0.0, 1.0, -1.0
    if code == ELU:
        return 1.0, p, 1.0, 0.0, 0.0, -p
    if code == SELU:
        return SELU_LAMBDA, SELU_LAMBDA * SELU_ALPHA, SELU_LAMBDA, 0.0, 0.0, -SELU_LAMBDA * SELU_ALPHA
    return 0.5, 0.5, 1.0, 0.0, 0.0, 0.0  # gelu, swish


@njit(**JIT)
def scaled_regime(u, f, code):
    """(x, z, regime) of the mantissa u at exponent f: x = float64(u), z = x 2^f, regime 0
    (direct), 1 (tiny: the linear form), 2 (2^f u overflows: the limit form)."""
    x = np.float64(u)
    z = math.ldexp(x, _clamp_f(f))
    tiny = tiny_threshold(u, code)
    if abs(z) < tiny:
        return x, z, 1
    if math.isinf(z) and math.isfinite(x):
        return x, z, 2
    return x, z, 0


@njit(**JIT)
def phi_scaled(u, f, code, p):
    """The mantissa of phi(u 2^f) at exponent f (tanh, elu, selu, swish, gelu)."""
    x, z, regime = scaled_regime(u, f, code)
    c0p, c0m, cip, cim, kp, km = _coefficients(code, p)
    if regime == 1:
        return _as((c0p if x > 0 else c0m) * x, u)
    v = np.float64(phi(z, code, p)) if regime == 0 else 0.0
    if regime == 2 or (math.isinf(v) and math.isfinite(x)):  # SELU: lambda z overflows below z's overflow
        if x > 0:
            return _as(cip * x + math.ldexp(kp, _clamp_f(-f)), u)
        return _as(cim * x + math.ldexp(km, _clamp_f(-f)), u)
    return _as(math.ldexp(v, _clamp_f(-f)), u)


@njit(**JIT)
def dphi_scaled(u, f, code, p):
    """phi'(u 2^f) (tanh, elu, selu, swish, gelu)."""
    x, z, regime = scaled_regime(u, f, code)
    c0p, c0m, cip, cim, _, _ = _coefficients(code, p)
    if regime == 1:
        return _as(c0p if x > 0 else c0m, u)
    if regime == 2:
        return _as(cip if x > 0 else cim, u)
    return _as(np.float64(dphi(z, code, p)), u)


# ------------------------------------------------------------------ log-derivative
# The twin of gradbench.activations.log_dphi (read its docstring): ln|phi'(x)| and its sign at
# any float64 x, for the activations whose saturated layers the backward pass rescues.
_LN4 = math.log(4.0)
_HALF_LN_2PI = 0.5 * math.log(2.0 * math.pi)
_GELU_ASYMPTOTIC = -30.0
RESCUE_CODES = np.array([n in A.RESCUE for n in ACTIVATIONS])
RESCUE_BELOW64, RESCUE_BELOW32 = A.RESCUE_BELOW["float64"], A.RESCUE_BELOW["float32"]
RESCUE_LN_MIN = A.RESCUE_LN_MIN


@njit(**JIT)
def _mills_series(r):
    """a m(a), m the asymptotic Mills ratio Phi(-a) / phi(a) to 6 terms (r = 1/a^2)."""
    return 1.0 - r * (1.0 - r * (3.0 - r * (15.0 - r * (105.0 - r * 945.0))))


@njit(**JIT)
def log_dphi(x, code, p):
    """(ln |phi'(x)|, sign of phi'(x)), x float64 (may be +-inf)."""
    a = abs(x)
    if code == SIGMOID:
        return -a - 2.0 * math.log1p(math.exp(-a)), 1.0
    if code == TANH:
        return _LN4 - 2.0 * a - 2.0 * math.log1p(math.exp(-2.0 * a)), 1.0
    if code == ELU or code == SELU:
        lam = 1.0 if code == ELU else SELU_LAMBDA
        alpha = p if code == ELU else SELU_ALPHA
        if x > 0:
            return math.log(lam), 1.0
        if not alpha > 0:
            return -math.inf, 1.0
        return math.log(lam) + math.log(alpha) + x, 1.0
    if code == SWISH:
        if math.isinf(x):
            return (0.0 if x > 0 else -math.inf), 1.0
        ls = -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
        t = 1.0 + x / (1.0 + math.exp(x))
        if t == 0:
            return -math.inf, 1.0
        return ls + math.log(abs(t)), (1.0 if t > 0 else -1.0)
    # GELU
    if x == math.inf:
        return 0.0, 1.0
    if x >= _GELU_ASYMPTOTIC:
        d = np.float64(dphi(x, code, p))
        if d == 0:
            return -math.inf, 1.0
        return math.log(abs(d)), (1.0 if d > 0 else -1.0)
    if math.isinf(a):
        return -math.inf, -1.0
    r = 1.0 / (a * a)
    mills = _mills_series(r) / a
    return -0.5 * a * a - _HALF_LN_2PI + math.log(a - mills), -1.0


# ------------------------------------------------------------------ log-activation
# The twin of gradbench.activations.log_phi: ln|phi(x)| and its sign at any float64 x for the
# activations whose phi itself underflows (the forward's rescue, layers.rescue_forward).
PHI_RESCUE_CODES = np.array([n in A.PHI_RESCUE for n in ACTIVATIONS])
LIMIT_RESCUE_CODES = np.array([n in A.LIMIT_RESCUE for n in ACTIVATIONS])  # ELU, SELU
_RESCUE_X64 = np.array([A.RESCUE_X["float64"].get(n, 0.0) for n in ACTIVATIONS])
_RESCUE_X32 = np.array([A.RESCUE_X["float32"].get(n, 0.0) for n in ACTIVATIONS])


@njit(**JIT)
def log_phi(x, code, p):
    """(ln |phi(x)|, sign of phi(x)), x float64 (may be +-inf): swish, gelu, elu and selu."""
    sg = 1.0 if x > 0 else (-1.0 if x < 0 else 0.0)
    if code == ELU or code == SELU:  # ln(lambda x) above 0, ln(lambda alpha) + ln(-expm1(x)) below
        lam = 1.0 if code == ELU else SELU_LAMBDA
        if x > 0:
            return math.log(x) + math.log(lam), sg
        if x == 0:
            return -math.inf, 0.0
        c = p if code == ELU else SELU_ALPHA
        return math.log(lam * c) + math.log(-math.expm1(x)), sg
    if x == -math.inf:
        return -math.inf, -1.0
    if x == math.inf:
        return math.inf, 1.0
    if x == 0:
        return -math.inf, 0.0
    a = abs(x)
    if code == SWISH:
        ls = -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
        return math.log(a) + ls, sg
    if x >= _GELU_ASYMPTOTIC:  # GELU: phi(x) = x Phi(x) in the normal range
        return math.log(abs(np.float64(phi(x, code, p)))), sg
    r = 1.0 / (a * a)
    return -0.5 * a * a - _HALF_LN_2PI + math.log(_mills_series(r)), sg
