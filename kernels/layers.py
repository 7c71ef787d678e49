"""The layer kernels: the same names and argument order as :mod:`gradbench.reference` (the exact
chain's helpers and the float64 reductions are in :mod:`.chain`).

Dimension letters: B batch, N width (outputs of a layer), D inputs of a layer (= N here).
Argument order: outputs, saved values, inputs, parameters, dimensions. Kernels write into
caller-provided arrays and never allocate (except the two ``_into`` helpers' callers, which
allocate their workspace once per stack). Arithmetic follows the reference operation by
operation in the array dtype; reductions over the batch (db, dbeta, dgamma, BN mean/var) run
over rows in order, as NumPy's axis-0 reductions do, so they agree to the last bit; matrix
products and whole-array float64 norms may round differently (within a few ulps).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gradbench.abi import BN_ROWS
from gradbench.spec import ACTIVATIONS

from ._config import JIT
from .activations import (
    _LN2_HI, _LN2_LO, _RESCUE_X32, _RESCUE_X64, DSIGMOID_MAX, DTANH_MAX, ELU, ELU_FAMILY_MIN, EXP_ZERO, GELU,
    GELU_MIN, GELU_ZERO, IDENTITY, LEAKY, LIMIT_RESCUE_CODES, PHI_RESCUE_CODES, PRELU, RELU, RESCUE_BELOW32, RESCUE_BELOW64,
    RESCUE_CODES, RESCUE_LN_MIN, SELU, SELU_ALPHA, SELU_LAMBDA, SIGMOID, SWISH, TANH, _as, _clamp_f, _coefficients,
    dphi, dphi_scaled, dsigmoid64, dtanh64, elu_pair64, gelu_pair64, log_dphi, log_phi, phi, phi_scaled,
    sigmoid_pair64, swish_pair64, tanh, tanh64, tiny_threshold,
)
from .chain import absmax, all_finite, pow2, row_nonzero


# ------------------------------------------------------------------ dense
# Two paths chosen by width: explicit loops for N <= NARROW, np.dot (BLAS, through SciPy's
# OpenBLAS) above. Measured (float64, one layer, best of 5, 2-core AMD EPYC with AVX2/FMA,
# shared and loaded; fwd = dense_forward, bwd = dense_backward, microseconds):
#     N   B  | loops fwd  bwd | np.dot fwd  bwd | loops + fastmath reassoc/contract fwd
#     4   4  |      0.0   0.2 |        0.1  0.2 |   0.0
#     8   4  |      0.1   0.2 |        0.2  0.1 |   0.1
#    12   8  |      0.6   0.9 |        0.3  0.4 |   0.2
#    16  16  |      2.0   3.0 |        0.8  0.6 |   1.1
#    32  16  |      6.6   8.3 |        0.9  1.5 |   1.4
#    64  64  |    132.9  83.4 |       16.6 20.5 |  32.2
# BLAS wins from N ~ 12 up, so the loops serve only the very narrow stacks (N <= 8), where
# a call into BLAS costs more than the work. A parallel (prange) path was not added: for
# wide layers the time is in BLAS, which already uses both cores, and the elementwise work
# (one vectorised tanh per entry) is a few percent of it.
NARROW = 8


@njit(**JIT)
def dense_forward(z, h, W, b):
    """z = h W^T + b.    z (B,N), h (B,D), W (N,D), b (N,)"""
    matmul_forward(z, h, W)
    B, N = z.shape
    for i in range(B):
        for j in range(N):
            z[i, j] += b[j]
    dense_fix(z, h, W, b)


@njit(**JIT)
def _exp_of_max(x):
    """(True, binary exponent of max|x|) (frexp; 0 for all zeros), (False, 0) when x is not all finite."""
    m = 0.0
    for k in range(x.size):
        v = abs(np.float64(x[k]))
        if not math.isfinite(v):
            return False, 0
        if v > m:
            m = v
    return True, math.frexp(m)[1]


@njit(**JIT)
def _ldexp_inf(x, e):
    """ldexp(x, e), +-inf where it overflows (as C's and compiled Numba's; math.ldexp raises in
    Python, NUMBA_DISABLE_JIT=1). Below 2**1024 the result is exact or a subnormal rounded once."""
    if x != 0.0 and math.isfinite(x) and math.frexp(x)[1] + e > 1024:
        return math.copysign(math.inf, x)
    return math.ldexp(x, e)


@njit(**JIT)
def _fix_row(z, h, W, b, i):
    """:func:`dense_fix` on row i of z, with the bias b (N,) of that row; whether it changed an entry."""
    N = z.shape[1]
    D = h.shape[1]
    bad = False
    for j in range(N):
        bad |= not math.isfinite(z[i, j])
    if not bad:
        return False
    okh, eh = _exp_of_max(h[i])
    if not okh:
        return False
    fixed = False
    for j in range(N):
        if math.isfinite(z[i, j]) or not math.isfinite(b[j]):
            continue
        okw, ew = _exp_of_max(W[j])
        if not okw:
            continue
        s = 0.0
        for k in range(D):  # sequential, each product rounded (no fastmath: no FMA)
            s += math.ldexp(np.float64(h[i, k]), -eh) * math.ldexp(np.float64(W[j, k]), -ew)
        s += _ldexp_inf(np.float64(b[j]), -(eh + ew))
        z[i, j] = _as(_ldexp_inf(s, eh + ew), z[i, j])
        fixed = True
    return fixed


@njit(**JIT)
def dense_fix(z, h, W, b):
    """Recompute, exactly scaled, every z[i, j] that is not finite while h[i], W[j] and b[j] are
    (reference.dense_fix, operation by operation); returns whether it changed an entry.
    z (B,N), h (B,D), W (N,D), b (N,)"""
    fixed = False
    for i in range(z.shape[0]):
        fixed |= _fix_row(z, h, W, b, i)
    return fixed


@njit(**JIT)
def dense_fix_rows(z, h, W, bz):
    """:func:`dense_fix` with a bias per row, bz (B,N) (the stack's forward with exponents)."""
    fixed = False
    for i in range(z.shape[0]):
        fixed |= _fix_row(z, h, W, bz[i], i)
    return fixed


@njit(**JIT)
def matmul_forward(z, h, W):
    """z = h W^T (the bias is added by the caller: dense_forward, or fused into the activation).

    z (B,N), h (B,D), W (N,D)"""
    B, N = z.shape
    D = h.shape[1]
    if N > NARROW:
        np.dot(h, W.T, z)
        return
    for i in range(B):
        for j in range(N):
            acc = _as(0.0, z[0, 0])
            for k in range(D):
                acc += h[i, k] * W[j, k]
            z[i, j] = acc


@njit(**JIT)
def dense_backward(dh, dW, db, dz, h, W):
    """dW = dz^T h, db = sum_B dz, dh = dz W.    dh (B,D), dW (N,D), db (N,), dz (B,N), h (B,D)"""
    B, N = dz.shape
    for j in range(N):
        db[j] = 0
    for i in range(B):
        for j in range(N):
            db[j] += dz[i, j]
    matmul_backward(dh, dW, dz, h, W)


@njit(**JIT)
def matmul_backward(dh, dW, dz, h, W):
    """dW = dz^T h, dh = dz W (db is summed by the caller).    dh (B,D), dW (N,D), dz (B,N), h (B,D)"""
    matmul_dw(dW, dz, h)
    matmul_dh(dh, dz, W)


@njit(**JIT)
def matmul_dw(dW, dz, h):
    """dW = dz^T h.    dW (N,D), dz (B,N), h (B,D)"""
    B, N = dz.shape
    D = h.shape[1]
    if N > NARROW:
        np.dot(dz.T, h, dW)
        return
    for j in range(N):
        for k in range(D):
            dW[j, k] = 0
        for i in range(B):
            d = dz[i, j]
            for k in range(D):
                dW[j, k] += d * h[i, k]


@njit(**JIT)
def matmul_dh(dh, dz, W):
    """dh = dz W.    dh (B,D), dz (B,N), W (N,D)"""
    B, N = dz.shape
    D = W.shape[1]
    if N > NARROW:
        np.dot(dz, W, dh)
        return
    for i in range(B):
        for k in range(D):
            dh[i, k] = 0
        for j in range(N):
            d = dz[i, j]
            for k in range(D):
                dh[i, k] += d * W[j, k]


# ------------------------------------------------------------------ batch norm
@njit(**JIT)
def _batchnorm_mean(mean, z):
    """mean (N,) = mean_B of z (B,N) as gradbench.reference.batchnorm_mean takes it: per block of
    BN_ROWS rows, the sum S_q of the differences from its first row c_q, then c_0 + sum_q (n_q
    (c_q - c_0) + S_q) / B (exact for a column whose entries are all equal)."""
    B, N = z.shape
    s = np.empty_like(mean)  # a block's S_q
    for j in range(N):
        mean[j] = 0
    for q0 in range(0, B, BN_ROWS):
        nq = _as(min(BN_ROWS, B - q0), mean[0])
        for j in range(N):  # row by row (the inner loops over a row vectorise)
            s[j] = z[q0, j] - z[q0, j]
        for i in range(q0 + 1, min(q0 + BN_ROWS, B)):
            for j in range(N):
                s[j] += z[i, j] - z[q0, j]
        for j in range(N):
            mean[j] += nq * (z[q0, j] - z[0, j]) + s[j]
    nb = _as(B, mean[0])
    for j in range(N):
        mean[j] = z[0, j] + mean[j] / nb


@njit(**JIT)
def _batchnorm_far_column(rstd, z, mean, j, eps):
    """rstd[j] of a column whose sum of squared deviations overflowed, from the deviations scaled
    by 2^-k (k: the exponent of the largest): gradbench.reference.batchnorm_far_columns. A column
    whose largest deviation is not finite keeps rstd = 1/sqrt(inf) = 0, as the plain formula."""
    B = z.shape[0]
    top = 0.0
    for i in range(B):
        top = max(top, abs(float(z[i, j] - mean[j])))
    if not math.isfinite(top):
        rstd[j] = 0.0
        return
    k = math.frexp(top)[1]
    sc = _as(pow2(-k), mean[0])
    v = _as(0.0, mean[0])
    for i in range(B):
        d = (z[i, j] - mean[j]) * sc
        v += d * d
    v = v / _as(B, mean[0])
    rstd[j] = pow2(-k) / math.sqrt(float(v) + eps * pow2(-2 * k))


@njit(**JIT)
def batchnorm_forward(y, xhat, mean, rstd, z, gamma, beta, eps):
    """y = gamma * (z - mean_B) * rstd + beta, rstd = 1/sqrt(var_B + eps) (biased variance).

    y, xhat, z (B,N); mean, rstd, gamma, beta (N,). y may be z (in place).
    """
    B, N = z.shape
    nb = _as(B, mean[0])
    _batchnorm_mean(mean, z)
    for j in range(N):
        rstd[j] = 0  # the variance first
    for i in range(B):
        for j in range(N):
            d = z[i, j] - mean[j]
            rstd[j] += d * d
    for j in range(N):
        if math.isinf(rstd[j]):
            _batchnorm_far_column(rstd, z, mean, j, eps)
        else:
            # eps is a float64: the reference computes var + eps, sqrt and 1/ in float64
            rstd[j] = 1.0 / math.sqrt((rstd[j] / nb) + eps)
    for i in range(B):
        for j in range(N):
            x = (z[i, j] - mean[j]) * rstd[j]
            xhat[i, j] = x
            y[i, j] = gamma[j] * x + beta[j]


@njit(**JIT)
def batchnorm_backward(dz, dgamma, dbeta, dy, xhat, rstd, gamma):
    """dz = gamma * rstd * (dy - mean_B(dy) - xhat * mean_B(dy * xhat)), linear in dy.

    dz, dy, xhat (B,N); dgamma, dbeta, rstd, gamma (N,). dz may be dy (in place).
    """
    B, N = dy.shape
    nb = _as(B, dbeta[0])
    _batchnorm_mean(dbeta, dy)  # mean_B(dy) first (gradbench.reference.batchnorm_mean)
    for j in range(N):
        dgamma[j] = 0
    for i in range(B):
        for j in range(N):
            dgamma[j] += dy[i, j] * xhat[i, j]
    for i in range(B):
        for j in range(N):
            gr = gamma[j] * rstd[j]
            dz[i, j] = gr * ((dy[i, j] - dbeta[j]) - xhat[i, j] * (dgamma[j] / nb))
    for j in range(N):
        dbeta[j] = dbeta[j] * nb


# ------------------------------------------------------------------ activations
@njit(**JIT)
def _all_linear(z, b, add_bias, f, tiny):
    """Whether every row's exponent f[i] is below -24 and every entry x of z (+ b) finite with
    |x 2^f[i]| < tiny: phi_scaled's linear form for the whole layer, which then skips the
    polynomials. Asked where the signal has vanished (zero-bias tanh, ELU, swish, GELU stacks at
    or below the edge of chaos), where it holds but for the rare mantissa beyond tiny 2^-f or a
    non-finite one. Below f = -1000 the vector paths' z 2^f = z sc would need a subnormal sc:
    such rows take the scalar forms.    z (B,N), f (B,) int64"""
    B, N = z.shape
    for i in range(B):
        if f[i] >= -24:
            return False
    out = 0
    for i in range(B):
        e = math.frexp(tiny)[1] - f[i]  # tiny 2^-f < 2^e; beyond the largest float from e = 1025 on
        lim = math.inf if e > 1024 else math.ldexp(tiny, int(-f[i]))
        for j in range(N):
            out += not (abs(np.float64(z[i, j] + b[j] if add_bias else z[i, j])) < lim)
    return out == 0


@njit(**JIT)
def _activation_forward_stats(a, z, b, add_bias, code, param, f, scaled, sat_threshold, alive):
    """z += b (when ``add_bias``: the dense layer's bias, fused here) and a = phi(z) (``scaled``:
    row i the mantissa of phi(z 2^f[i]), :func:`.activations.phi_scaled`, at the row's exponent
    f[i]: f (B,) int64, read only when ``scaled``); returns the number of entries with
    phi' < sat_threshold and sets alive[j] = some z[:, j] is not <= 0 (NaN counts as alive, as
    in the reference). One pass over z for the common activations; the switch is outside the
    element loops, the row's powers of two outside the entry loops.
    """
    B, N = z.shape
    nsat = 0
    for j in range(N):
        alive[j] = False
    if code == TANH and not scaled:  # a loop LLVM vectorises; phi' = 1 - a^2 only for the count
        one = _as(1.0, a[0, 0])
        for i in range(B):
            for j in range(N):
                zz = z[i, j] + b[j] if add_bias else z[i, j]
                z[i, j] = zz
                t = tanh(zz)
                a[i, j] = t
                nsat += (one - t * t) < sat_threshold
                alive[j] = alive[j] or not (zz <= 0)
        return nsat
    if scaled and _SCALED_FORM[code] and _all_linear(z, b, add_bias, f, tiny_threshold(a[0, 0], code)):
        c0p, c0m, _, _, _, _ = _coefficients(code, param)  # phi_scaled's linear form, entry by entry
        for i in range(B):
            for j in range(N):
                zz = z[i, j] + b[j] if add_bias else z[i, j]
                z[i, j] = zz
                x = np.float64(zz)
                c0 = c0p if x > 0 else c0m
                a[i, j] = _as(c0 * x, zz)
                nsat += abs(_as(c0, zz)) < sat_threshold
                alive[j] = alive[j] or not (zz <= 0)
        return nsat
    if code == TANH and scaled:  # phi_scaled of tanh, vectorised (scaled_regime's regimes), row by row
        tiny = tiny_threshold(a[0, 0], code)
        for i in range(B):
            if not _vector_row(f[i], scaled):
                nsat += _scalar_row(a, z, b, add_bias, i, code, param, f[i], scaled, sat_threshold, alive)
                continue
            sc, isc = pow2(f[i]), pow2(-f[i])
            for j in range(N):
                zz = z[i, j] + b[j] if add_bias else z[i, j]
                z[i, j] = zz
                x = np.float64(zz)
                zt = x * sc  # exact: a power of two (or 0 when every entry is tiny)
                tz = tanh64(zt)
                lin = abs(zt) < tiny
                m = x if lin else tz * isc  # tiny: tanh(z) = z to the last bit (c0 = 1); exact scaling back
                a[i, j] = _as(m, zz)
                d = 1.0 if lin else 1.0 - tz * tz
                nsat += d < sat_threshold
                alive[j] = alive[j] or not (zz <= 0)
        return nsat
    if code == SIGMOID:  # vectorised like tanh (sigmoid has no scaled form): the polynomial for
        rare = 0        # |z| <= DSIGMOID_MAX, then phi and dphi for the rest (and NaN)
        for i in range(B):
            for j in range(N):
                zz = z[i, j] + b[j] if add_bias else z[i, j]
                z[i, j] = zz
                s, d = sigmoid_pair64(np.float64(zz))
                a[i, j] = _as(s, zz)
                inside = abs(zz) <= DSIGMOID_MAX
                nsat += inside and d < sat_threshold
                rare += not inside
                alive[j] = alive[j] or not (zz <= 0)
        if rare:
            for i in range(B):
                for j in range(N):
                    zz = z[i, j]
                    if not (abs(zz) <= DSIGMOID_MAX):
                        a[i, j] = phi(zz, code, param)
                        nsat += abs(dphi(zz, code, param)) < sat_threshold
        return nsat
    if code == RELU:
        zero = _as(0.0, a[0, 0])
        for i in range(B):
            for j in range(N):
                zz = z[i, j] + b[j] if add_bias else z[i, j]
                z[i, j] = zz
                pos = zz > 0
                a[i, j] = zz if (pos or zz != zz) else zero
                nsat += (1.0 if pos else 0.0) < sat_threshold
                alive[j] = alive[j] or not (zz <= 0)
        return nsat
    if code == LEAKY or code == PRELU or code == IDENTITY:  # phi(z) = z above 0, slope z else
        one = _as(1.0, a[0, 0])
        p = 1.0 if code == IDENTITY else param  # 1.0 p z = z to the last bit (NaN, -0 too)
        d_neg = _as(p, a[0, 0])
        for i in range(B):
            for j in range(N):
                zz = z[i, j] + b[j] if add_bias else z[i, j]
                z[i, j] = zz
                pos = zz > 0
                a[i, j] = zz if pos else _as(p * zz, zz)
                nsat += abs(one if pos else d_neg) < sat_threshold  # a negative slope: phi' < 0
                alive[j] = alive[j] or not (zz <= 0)
        return nsat
    if _SMOOTH[code]:
        return _smooth_forward_stats(a, z, b, add_bias, code, param, f, scaled, sat_threshold, alive)
    for i in range(B):
        nsat += _scalar_row(a, z, b, add_bias, i, code, param, f[i] if scaled else 0, scaled, sat_threshold, alive)
    return nsat


@njit(inline="always", **JIT)
def _vector_row(f, scaled):
    """Whether a row at exponent f takes the vector paths: plain, or 2^f a normal number
    (|f| <= 1000); else the scalar forms."""
    return not scaled or -1000 <= f <= 1000


@njit(**JIT)
def _scalar_row(a, z, b, add_bias, i, code, param, f, scaled, sat_threshold, alive):
    """_activation_forward_stats of row i by the scalar forms (at its exponent f): the layers
    without a vector path, and the scaled rows whose 2^f is not a normal number. Returns the
    row's count of phi' < sat_threshold."""
    nsat = 0
    for j in range(z.shape[1]):
        zz = z[i, j] + b[j] if add_bias else z[i, j]
        z[i, j] = zz
        a[i, j], d = _scalar_pair(zz, f, code, param, scaled)
        nsat += abs(d) < sat_threshold  # GELU, swish, a negative slope: phi' < 0
        if not (zz <= 0):
            alive[j] = True
    return nsat


@njit(inline="always", **JIT)
def _scalar_pair(zz, f, code, param, scaled):
    """(phi, phi') of one entry by the scalar forms: phi_scaled/dphi_scaled at exponent f, or phi/dphi."""
    if scaled:
        return phi_scaled(zz, f, code, param), dphi_scaled(zz, f, code, param)
    return phi(zz, code, param), dphi(zz, code, param)


# ELU, SELU, swish and GELU, plain and scaled (phi_scaled's regimes), vectorised like tanh: the
# polynomial forms of .activations (elu_pair64, swish_pair64, gelu_pair64) at z 2^f for every
# entry, the linear form where |z 2^f| < TINY (c0 z, exact); then phi_scaled/dphi_scaled
# (phi/dphi) for the entries the polynomial does not cover (z 2^f below -40; GELU from -37 to
# -39, below which it is zero; NaN, infinite). The per-entry functions are inlined by Numba
# (inline="always"): left to LLVM, they were called, not inlined, and the loops ran scalar (35
# against 6 us a layer of 64 x 64).
# the activations with a scaled form (phi_scaled): their linear form where z 2^f < TINY
_SCALED_FORM = np.array([c in (TANH, ELU, SELU, SWISH, GELU) for c in range(len(ACTIVATIONS))])
_SMOOTH = np.array([c in (ELU, SELU, SWISH, GELU) for c in range(len(ACTIVATIONS))])  # by activation code
# ReLU, leaky ReLU, PReLU and identity: phi' is a constant on each side of 0 (these are
# positively homogeneous, so never scaled), a select per entry that LLVM vectorises.
_PIECEWISE_LINEAR = np.array([c in (RELU, LEAKY, PRELU, IDENTITY) for c in range(len(ACTIVATIONS))])


@njit(**JIT)
def _smooth_setup(code, param, f, scaled, like):
    """(sc, isc, tiny, outer, inner, lowest) of the vector paths: z 2^f = z sc, the result scaled
    back by isc (exact: powers of two, |f| <= 1000); phi's
    factors (elu_pair64), which also give the linear form's c0 (c0+ = outer, c0- = outer inner:
    the numbers of .activations._coefficients; swish and GELU: 1/2 both); the polynomial's lower
    bound in z 2^f (GELU: the bound of its zeros, below GELU_ZERO, too)."""
    if not scaled:
        sc, isc, tiny = 1.0, 1.0, 0.0
    else:  # |f| <= 1000
        sc, isc, tiny = pow2(f), pow2(-f), tiny_threshold(like, code)
    if code == GELU:
        return sc, isc, tiny, 0.5, 1.0, (GELU_MIN, GELU_ZERO)
    if code == SWISH:
        return sc, isc, tiny, 0.5, 1.0, (ELU_FAMILY_MIN, EXP_ZERO)
    return sc, isc, tiny, (1.0 if code == ELU else SELU_LAMBDA), (param if code == ELU else SELU_ALPHA), (
        ELU_FAMILY_MIN, EXP_ZERO)


@njit(inline="always", **JIT)
def _smooth_pair(x, zt, code, isc, tiny, outer, inner, lowest):
    """(mantissa of phi(zt), phi'(zt)) of the entry x (zt = x 2^f), and whether it is left to
    the scalar fix-up (_smooth_rare)."""
    if code == SWISH:
        v, d = swish_pair64(zt)
    elif code == GELU:
        v, d = gelu_pair64(zt)
    else:
        v, d = elu_pair64(zt, outer, inner)
    lin = abs(zt) < tiny
    c0 = outer if x > 0 else outer * inner
    return (c0 * x if lin else v * isc), (c0 if lin else d), _smooth_rare(zt, lowest)


@njit(inline="always", **JIT)
def _smooth_rare(zt, lowest):
    """Below the polynomial's bound lowest[0] but not below lowest[1] (GELU's zeros), NaN, or
    infinite (phi_scaled's limit form where x 2^f overflows): phi_scaled/dphi_scaled (phi/dphi)
    instead."""
    return not (lowest[0] <= zt < math.inf or -math.inf < zt < lowest[1])


@njit(**JIT)
def _smooth_forward_stats(a, z, b, add_bias, code, param, f, scaled, sat_threshold, alive):
    """_activation_forward_stats of ELU, SELU, swish and GELU (see above), row by row at the
    rows' exponents f (B,)."""
    B, N = z.shape
    # one loop per polynomial, the code a constant in each (the loop is inlined): with the code
    # tested per entry, LLVM kept GELU's table reads behind a branch and no loop vectorised
    if code == GELU:
        nsat, rare = _smooth_forward_loop(a, z, b, add_bias, GELU, code, param, f, scaled, sat_threshold, alive)
    elif code == SWISH:
        nsat, rare = _smooth_forward_loop(a, z, b, add_bias, SWISH, code, param, f, scaled, sat_threshold, alive)
    else:
        nsat, rare = _smooth_forward_loop(a, z, b, add_bias, ELU, code, param, f, scaled, sat_threshold, alive)
    if rare:
        for i in range(B):
            if not _vector_row(f[i], scaled):  # done by the scalar forms already
                continue
            v = _smooth_setup(code, param, f[i], scaled, a[0, 0])
            sc, lowest = v[0], v[5]
            for j in range(N):
                zz = z[i, j]
                # rare, or phi itself past the max (SELU's lambda z: phi_scaled's limit form)
                if _smooth_rare(np.float64(zz) * sc, lowest) or (math.isinf(a[i, j]) and math.isfinite(zz)):
                    a[i, j], d = _scalar_pair(zz, f[i], code, param, scaled)
                    nsat += abs(d) < sat_threshold
    return nsat


@njit(inline="always", **JIT)
def _smooth_forward_loop(a, z, b, add_bias, kind, code, param, f, scaled, sat_threshold, alive):
    """The vector loop of _smooth_forward_stats (kind: GELU, SWISH, or ELU for ELU and SELU;
    each row with _smooth_setup's values at its exponent, or by the scalar forms where 2^f[i] is
    not a normal number); returns (nsat, rare)."""
    B, N = z.shape
    nsat = 0
    rare = 0
    for i in range(B):
        if not _vector_row(f[i], scaled):
            nsat += _scalar_row(a, z, b, add_bias, i, code, param, f[i], scaled, sat_threshold, alive)
            continue
        sc, isc, tiny, outer, inner, lowest = _smooth_setup(code, param, f[i], scaled, a[0, 0])
        for j in range(N):
            zz = z[i, j] + b[j] if add_bias else z[i, j]
            z[i, j] = zz
            x = np.float64(zz)
            m, d, odd = _smooth_pair(x, x * sc, kind, isc, tiny, outer, inner, lowest)
            odd = odd or (abs(m) == math.inf and math.isfinite(x))  # SELU's lambda z past the max
            a[i, j] = _as(m, zz)
            nsat += not odd and abs(_as(d, zz)) < sat_threshold
            rare += odd
            alive[j] = alive[j] or not (zz <= 0)
    return nsat, rare


@njit(**JIT)
def _smooth_backward(dz, da, z, code, param, f, scaled):
    """dz = da phi'(z 2^f[i]) of ELU, SELU, swish and GELU (see above), row by row."""
    B, N = z.shape
    if code == GELU:  # one loop per polynomial, as in _smooth_forward_stats
        rare = _smooth_backward_loop(dz, da, z, GELU, code, param, f, scaled)
    elif code == SWISH:
        rare = _smooth_backward_loop(dz, da, z, SWISH, code, param, f, scaled)
    else:
        rare = _smooth_backward_loop(dz, da, z, ELU, code, param, f, scaled)
    if rare:
        for i in range(B):
            if not _vector_row(f[i], scaled):
                continue
            v = _smooth_setup(code, param, f[i], scaled, z[0, 0])
            sc, lowest = v[0], v[5]
            for j in range(N):
                zz = z[i, j]
                if _smooth_rare(np.float64(zz) * sc, lowest):
                    dz[i, j] = da[i, j] * _scalar_dphi(zz, f[i], code, param, scaled)


@njit(inline="always", **JIT)
def _scalar_dphi(zz, f, code, param, scaled):
    """phi'(zz 2^f) by the scalar forms (phi'(zz) without ``scaled``)."""
    return dphi_scaled(zz, f, code, param) if scaled else dphi(zz, code, param)


@njit(**JIT)
def _scalar_dphi_row(dz, da, z, i, code, param, f, scaled):
    """dz[i] = da[i] * phi'(z[i] 2^f) by the scalar forms (phi'(z[i]) without ``scaled``)."""
    for j in range(z.shape[1]):
        dz[i, j] = da[i, j] * _scalar_dphi(z[i, j], f, code, param, scaled)


@njit(inline="always", **JIT)
def _smooth_backward_loop(dz, da, z, kind, code, param, f, scaled):
    """The vector loop of _smooth_backward (see _smooth_forward_loop); returns rare."""
    B, N = z.shape
    rare = 0
    for i in range(B):
        if not _vector_row(f[i], scaled):
            _scalar_dphi_row(dz, da, z, i, code, param, f[i], scaled)
            continue
        sc, isc, tiny, outer, inner, lowest = _smooth_setup(code, param, f[i], scaled, z[0, 0])
        for j in range(N):
            x = np.float64(z[i, j])
            _, d, odd = _smooth_pair(x, x * sc, kind, isc, tiny, outer, inner, lowest)
            dz[i, j] = da[i, j] * _as(d, z[i, j])
            rare += odd
    return rare


@njit(**JIT)
def activation_forward(a, z, code, param, f=None):  # noqa: D401 (the reference's layer function)
    """a = phi(z) (with ``f``: the mantissa of phi(z 2^f)).    a, z (B,N)"""
    B, N = z.shape
    for i in range(B):
        for j in range(N):
            if f is None:
                a[i, j] = phi(z[i, j], code, param)
            else:
                a[i, j] = phi_scaled(z[i, j], f, code, param)


@njit(**JIT)
def _activation_backward(dz, db, sum_db, da, z, code, param, f, scaled):
    """dz = da * phi'(z) (``scaled``: row i phi'(z 2^f[i]), f (B,) int64 the rows' exponents);
    with ``sum_db`` also db = sum_B dz (rows in order, as dense_backward sums it), fused into the
    same pass. Returns sum(da * min(z, 0)) for PReLU, else 0.  dz, da, z (B,N); db (N,)"""
    B, N = z.shape
    if sum_db:
        for j in range(N):
            db[j] = 0
    if scaled and _SCALED_FORM[code] and _all_linear(z, z[0], False, f, tiny_threshold(dz[0, 0], code)):
        c0p, c0m, _, _, _, _ = _coefficients(code, param)  # dphi_scaled's linear form
        for i in range(B):
            for j in range(N):
                v = da[i, j] * _as(c0p if z[i, j] > 0 else c0m, z[i, j])
                dz[i, j] = v
                if sum_db:
                    db[j] += v
        return 0.0
    if code == TANH and scaled:  # dphi_scaled of tanh, vectorised row by row; |z 2^f| > 20, NaN fixed up
        tiny = tiny_threshold(dz[0, 0], code)
        for i in range(B):
            if not _vector_row(f[i], scaled):
                _scalar_dphi_row(dz, da, z, i, code, param, f[i], scaled)
                continue
            sc = pow2(f[i])
            for j in range(N):
                zt = np.float64(z[i, j]) * sc
                d = 1.0 if abs(zt) < tiny else dtanh64(zt)
                dz[i, j] = da[i, j] * _as(d, z[i, j])
            rare = 0
            for j in range(N):
                rare += not (abs(np.float64(z[i, j]) * sc) <= DTANH_MAX)
            if rare:
                for j in range(N):
                    if not (abs(np.float64(z[i, j]) * sc) <= DTANH_MAX):
                        dz[i, j] = da[i, j] * dphi_scaled(z[i, j], f[i], code, param)
        if sum_db:
            for i in range(B):
                for j in range(N):
                    db[j] += dz[i, j]
        return 0.0
    if (code == TANH or code == SIGMOID) and not scaled:
        # vectorised: the polynomial derivative for |z| up to its bound, then dphi for the rest
        bound = DTANH_MAX if code == TANH else DSIGMOID_MAX
        if code == TANH:
            for i in range(B):
                for j in range(N):
                    dz[i, j] = da[i, j] * _as(dtanh64(np.float64(z[i, j])), z[i, j])
        else:
            for i in range(B):
                for j in range(N):
                    dz[i, j] = da[i, j] * _as(dsigmoid64(np.float64(z[i, j])), z[i, j])
        rare = 0
        for i in range(B):
            for j in range(N):
                rare += not (abs(z[i, j]) <= bound)
        if rare:
            for i in range(B):
                for j in range(N):
                    zz = z[i, j]
                    if not (abs(zz) <= bound):
                        dz[i, j] = da[i, j] * dphi(zz, code, param)
        if sum_db:
            for i in range(B):
                for j in range(N):
                    db[j] += dz[i, j]
        return 0.0
    if _SMOOTH[code]:
        _smooth_backward(dz, da, z, code, param, f, scaled)
        if sum_db:
            for i in range(B):
                for j in range(N):
                    db[j] += dz[i, j]
        return 0.0
    if _PIECEWISE_LINEAR[code]:  # phi' = 1 above 0, the slope else (ReLU: 0; identity: 1)
        one = _as(1.0, dz[0, 0])
        d_neg = _as(0.0 if code == RELU else (1.0 if code == IDENTITY else param), dz[0, 0])
        for i in range(B):
            for j in range(N):
                v = da[i, j] * (one if z[i, j] > 0 else d_neg)
                dz[i, j] = v
                if sum_db:
                    db[j] += v
    else:
        for i in range(B):
            _scalar_dphi_row(dz, da, z, i, code, param, f[i] if scaled else 0, scaled)
            if sum_db:
                for j in range(N):
                    db[j] += dz[i, j]
    if code != PRELU:
        return 0.0
    s = 0.0
    for i in range(B):
        for j in range(N):
            zz = z[i, j]
            m = zz if not (zz > 0) else _as(0.0, zz)  # min(z, 0), NaN stays NaN
            s += np.float64(da[i, j] * m)
    return s


@njit(**JIT)
def rescue_forward(a, z, f, code, param):
    """The reference's rescue_forward (gradbench.reference): a layer whose every unit's phi lies
    deep in its tail (GELU, swish) in log form; returns a's exponent (f: untouched).
    a, z (B,N): the mantissas of phi(z 2^f) and z at exponent f."""
    if not PHI_RESCUE_CODES[code]:
        return f
    m = absmax(a)
    below = _BELOW_EXP64 if a.itemsize == 8 else _BELOW_EXP32
    limit = LIMIT_RESCUE_CODES[code]  # ELU, SELU: a row whose |h| are subnormal or 0 at f, too
    healthy = m > 0 and math.frexp(m)[1] + f > below and not (limit and m < (_TINY_NORMAL64 if a.itemsize == 8
                                                                             else _TINY_NORMAL32))
    if not math.isfinite(m) or healthy or not all_finite(a):
        return f  # a NaN too: the reference's max|a| is NaN there
    xlim = (_RESCUE_X64 if a.itemsize == 8 else _RESCUE_X32)[code]
    B, N = z.shape
    deep = False
    for i in range(B):
        for j in range(N):
            if math.ldexp(np.float64(z[i, j]), _clamp_f(f)) <= xlim:
                deep = True
    if not deep:
        return f
    ell = np.empty((B, N))  # the rare path may allocate
    sgn = np.empty((B, N))
    lin = np.zeros((B, N), dtype=np.bool_)
    top = -math.inf
    ln2 = math.log(2.0)
    for i in range(B):
        for j in range(N):
            x = math.ldexp(np.float64(z[i, j]), _clamp_f(f))
            if abs(x) < tiny_threshold(z[i, j], code) or (limit and x > 0):  # the linear form: a's mantissa is exact
                lin[i, j] = True
                v = np.float64(a[i, j])
                ell[i, j] = (math.log(abs(v)) if v != 0 else -math.inf) + f * ln2
                sgn[i, j] = 1.0
            else:
                ell[i, j], sgn[i, j] = log_phi(x, code, param)
            if ell[i, j] > top:
                top = ell[i, j]
    if not (top >= RESCUE_LN_MIN and top < math.inf):
        return f
    k = int(math.floor(top / ln2))
    rem = _log_rem(top, k)
    for i in range(B):
        for j in range(N):
            if lin[i, j]:
                a[i, j] = _as(math.ldexp(np.float64(a[i, j]), _clamp_f(f - k)), z[i, j])
            else:
                a[i, j] = _as(sgn[i, j] * math.exp((ell[i, j] - top) + rem), z[i, j])
    return k


_BELOW_EXP64, _BELOW_EXP32 = math.frexp(RESCUE_BELOW64)[1], math.frexp(RESCUE_BELOW32)[1]  # -899, -99
_TINY_NORMAL64, _TINY_NORMAL32 = float(np.finfo(np.float64).tiny), float(np.finfo(np.float32).tiny)


@njit(**JIT)
def rescue_forward_rows(a, z, f, code, param):
    """:func:`rescue_forward` row by row (gradbench.reference.rescue_forward_rows): row i, at
    exponent f[i], rescued alone (a 1 x N block), f[i] set to its exponent.    a, z (B,N); f (B,)"""
    if not PHI_RESCUE_CODES[code]:
        return
    for i in range(a.shape[0]):
        f[i] = rescue_forward(a[i:i + 1], z[i:i + 1], f[i], code, param)


@njit(**JIT)
def rescue_saturated(dz, db, sum_db, da, z, code, param, f, scaled):
    """The reference's rescue_saturated (gradbench.reference): a layer whose every dz fell below
    2^-900 (float32: 2^-100) recomputed in log form, scaled by 2^-k; returns k (0: untouched).
    With ``sum_db`` db = sum_B dz again, from the new dz.    dz, da, z (B,N); db (N,)"""
    if not RESCUE_CODES[code]:
        return 0
    if not absmax(dz) < (RESCUE_BELOW64 if dz.itemsize == 8 else RESCUE_BELOW32):
        return 0
    B, N = z.shape
    ell = np.empty((B, N))  # ln|da phi'| and the sign of da phi': the rare path may allocate
    sgn = np.empty((B, N))
    top = -math.inf
    for i in range(B):
        for j in range(N):
            x = math.ldexp(np.float64(z[i, j]), _clamp_f(f)) if scaled else np.float64(z[i, j])
            ln, sg = log_dphi(x, code, param)
            a = np.float64(da[i, j])
            ell[i, j] = (math.log(abs(a)) if a != 0 else -math.inf) + ln
            sgn[i, j] = (1.0 if a > 0 else (-1.0 if a < 0 else (0.0 if a == 0 else a))) * sg  # NaN stays
            if ell[i, j] > top:
                top = ell[i, j]
    if not (top >= RESCUE_LN_MIN and top < math.inf):  # beyond any int64 exponent: stays 0
        return 0
    k = int(math.floor(top / math.log(2.0)))
    rem = _log_rem(top, k)
    for i in range(B):
        for j in range(N):
            dz[i, j] = _as(sgn[i, j] * math.exp((ell[i, j] - top) + rem), z[i, j])
    if sum_db:
        for j in range(N):
            db[j] = 0
        for i in range(B):
            for j in range(N):
                db[j] += dz[i, j]
    return k


@njit(**JIT)
def rescue_saturated_rows(dz, da, z, code, param, f, scaled, r, nz):
    """:func:`rescue_saturated` row by row (the backward signal's rows carry their own exponents
    r, z's rows theirs, f (B,), read when ``scaled``): every row whose max|dz[i]| (NaN ignored)
    is below 2^-900 (float32: 2^-100), an all-zero row included, recomputed in log form at its
    own k_i (z's row at f[i]), r[i] += k_i; a row whose largest ell is
    -inf, NaN or below RESCUE_LN_MIN stays. nz[i] (the row has an entry != 0) is updated for the
    rows rewritten.    dz, da, z (B,N); r, nz (B,)"""
    if not RESCUE_CODES[code]:
        return
    bound = RESCUE_BELOW64 if dz.itemsize == 8 else RESCUE_BELOW32
    B, N = z.shape
    for i in range(B):
        below = True  # max|dz[i]| < bound, NaN ignored: no entry at or above it (found early)
        for j in range(N):
            if abs(np.float64(dz[i, j])) >= bound:  # False for NaN
                below = False
                break
        if below:
            row = dz[i:i + 1]
            r[i] += rescue_saturated(row, row[0], False, da[i:i + 1], z[i:i + 1], code, param, f[i], scaled)
            nz[i] = row_nonzero(dz, i)


@njit(**JIT)
def _log_rem(top, k):
    """top - k ln 2 for k = floor(top / ln 2), put in [0, ln 2] (gradbench.logscaled.log_rem):
    the rescues' entries are sign exp((ell - top) + _log_rem(top, k))."""
    r = top - k * _LN2_HI - k * _LN2_LO
    return min(max(r, 0.0), math.log(2.0))


@njit(**JIT)
def activation_backward(dz, da, z, code, param, f=None):
    """dz = da * phi'(z) (with ``f``: phi'(z 2^f)); returns dL/dslope = sum(da * min(z, 0)) for
    PReLU, else 0.    dz, da, z (B,N)"""
    if f is None:
        return _activation_backward(dz, dz[0], False, da, z, code, param, np.zeros(z.shape[0], np.int64), False)
    return _activation_backward(dz, dz[0], False, da, z, code, param, np.full(z.shape[0], f, np.int64), True)
