"""The recurrent cells in Numba: the contract of :mod:`gradbench.recurrent.reference`.

Same functions and arguments (the tables of :mod:`gradbench.recurrent.abi`), validated once by
:func:`gradbench.abi.check` before the trusting ``*_kernel`` runs. The algorithm is that of the C
kernels (``csrc/recurrent_impl.h``): the input projection of all steps is one product, each step
adds the recurrent product. The backward state carries one power of two per row (sample,
``row_e``), made ready after every step by the stacks' row helpers (:mod:`.chain`:
signal_rows); the steps' dz rows, each at its own exponent,
are collected in chunks of K steps (``icfg[RI_CHUNK]``) and scaled to the chunk's largest
exponent of the rows each sum counts (the pair rule), dW_ih = Z^T X and dW_hh = Z^T H are
products over the chunk, added to the running (mantissa, exponent) accumulators by the aligned
rule, and the norm of a step's dW_hh term comes from the B x B Gram matrices when that is
cheaper and their sum trustworthy (GRAM_TRUST), else from the product. Matrix products go
through ``np.dot`` (BLAS); phi and phi' are :mod:`.activations`' (``dphi`` from z). One compiled
kernel per cell, direction and dtype.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gradbench import abi
from gradbench.abi import CLIP_NONE, INFO_BACKWARD, INFO_FORWARD
from gradbench.recurrent.abi import (
    DE_B_HH, DE_B_IH, DE_W_HH, DE_W_IH, EXP_EMPTY, RF_ACT_PARAM, RF_CLIP, RF_GATE_LOW, RF_SAT, RF_SAT_GATE,
    RI_ACT, RI_CHUNK, RI_CLIP, RI_LOSS_EVERY, RI_RESCALE_FWD,
)

from ._config import JIT
from .activations import SIGMOID as _SIGMOID_CODE
from .activations import TANH as _TANH_CODE
from .activations import RESCUE_BELOW32, RESCUE_BELOW64, RESCUE_CODES, _as, dphi, phi
from .chain import (
    _clamp, _ldexp, _pow2_range, absmax, all_finite, far_row, far_rows, moments, norm_scaled, normalise, pow2,
    row_nonzero, rows_exponent, scale_row, scale_row_into, signal_rows, sumsq_rows,
)
from .layers import rescue_saturated


# The gate codes as entries of an array: an integer constant would reach phi/dphi as a literal
# type and compile a copy of them per code (compile time is real: a fresh clone compiles all).
_GATE_CODES = np.array([_SIGMOID_CODE, _TANH_CODE], dtype=np.int64)


@njit(**JIT)
def _codes():
    return _GATE_CODES[0], _GATE_CODES[1]


# ------------------------------------------------------------------ shared pieces
@njit(**JIT)
def _projection(U, X, W_ih, bias):
    """U (T*B, GN) = X (T*B, D) W_ih^T + bias"""
    np.dot(X, W_ih.T, U)
    R, GN = U.shape
    for r in range(R):
        for j in range(GN):
            U[r, j] += bias[j]


@njit(**JIT)
def _record(t, h, act_mean, act_std, info):
    m, s = moments(h)
    act_mean[t] = m
    act_std[t] = s
    if info[INFO_FORWARD] < 0 and not all_finite(h):
        info[INFO_FORWARD] = t


@njit(**JIT)
def _gate(a, da, z, code):
    """a = phi(z), da = phi'(z) of a sigmoid or tanh gate, elementwise.    a, da, z (B, n)"""
    B, n = z.shape
    for i in range(B):
        for j in range(n):
            zz = z[i, j]
            da[i, j] = dphi(zz, code, 0.0)
            a[i, j] = phi(zz, code, 0.0)


@njit(**JIT)
def _one_minus(s, ds, one):
    """1 - s of a sigmoid gate without cancellation (the reference's one_minus)."""
    return ds / s if s > 0.5 else one - s


@njit(**JIT)
def _gate_stats(t, a, da, fcfg, N, G, tanh_block, saturation, gate_mean, gate_low):
    """The reference's _gate_stats (saturation over all gates, mean and low fraction of block 1)."""
    B = a.shape[0]
    nsat = 0
    nlow = 0
    s = 0.0
    for i in range(B):
        for k in range(G):
            thr = fcfg[RF_SAT] if k == tanh_block else fcfg[RF_SAT_GATE]
            for j in range(N):
                nsat += np.float64(da[i, k * N + j]) < thr
        rs = 0.0
        for j in range(N):
            v = np.float64(a[i, N + j])
            rs += v
            nlow += v < fcfg[RF_GATE_LOW]
        s += rs
    saturation[t] = nsat / (B * G * N)
    gate_mean[t] = s / (B * N)
    gate_low[t] = nlow / (B * N)


# ------------------------------------------------------------------ forward
@njit(**JIT)
def rnn_forward_kernel(icfg, fcfg, X, W_ih, W_hh, b_ih, b_hh, H, Z, fexp, act_mean, act_std, saturation,
                       gate_mean, gate_low, info):
    """The vanilla cell through T steps.  X (T,B,D), H (T+1,B,N), Z (T,B,N), fexp (T+1,)"""
    code = icfg[RI_ACT]
    rescale = icfg[RI_RESCALE_FWD] != 0
    p = fcfg[RF_ACT_PARAM]
    thr = fcfg[RF_SAT]
    T, B, D = X.shape
    N = W_hh.shape[1]
    _projection(Z.reshape(T * B, N), X.reshape(T * B, D), W_ih, b_ih + b_hh)  # U lives in Z until z_t
    P = np.empty((B, N), dtype=H.dtype)
    info[INFO_FORWARD] = -1
    for t in range(T):
        np.dot(H[t], W_hh.T, P)
        z = Z[t]
        h = H[t + 1]
        e = fexp[t]
        if rescale:
            e = max(np.int64(0), fexp[t])
            du = _clamp(-e)
            dp = _clamp(fexp[t] - e)
            for i in range(B):
                for j in range(N):
                    z[i, j] = _ldexp(z[i, j], du) + _ldexp(P[i, j], dp)
        else:
            for i in range(B):
                for j in range(N):
                    z[i, j] = z[i, j] + P[i, j]
        nsat = 0
        for i in range(B):
            for j in range(N):
                zz = z[i, j]
                h[i, j] = phi(zz, code, p)
                nsat += abs(np.float64(dphi(zz, code, p))) < thr
        fexp[t + 1] = e + (normalise(h) if rescale else 0)
        saturation[t] = nsat / (B * N)
        gate_mean[t] = np.nan
        gate_low[t] = np.nan
        _record(t, h, act_mean, act_std, info)


@njit(**JIT)
def _gates_row(a, da, z, N, G):
    """Gate values and derivatives of rows z (B, G N): sigmoid blocks, the tanh block 2."""
    SIGMOID, TANH = _codes()
    _gate(a[:, :2 * N], da[:, :2 * N], z[:, :2 * N], SIGMOID)
    _gate(a[:, 2 * N:3 * N], da[:, 2 * N:3 * N], z[:, 2 * N:3 * N], TANH)
    if G == 4:
        _gate(a[:, 3 * N:], da[:, 3 * N:], z[:, 3 * N:], SIGMOID)


@njit(**JIT)
def lstm_forward_kernel(icfg, fcfg, X, W_ih, W_hh, b_ih, b_hh, H, C, Z, act_mean, act_std, saturation, gate_mean,
                        gate_low, info):
    """The LSTM through T steps.  Z (T,B,4N) pre-activations; H, C (T+1,B,N)"""
    T, B, D = X.shape
    N = W_hh.shape[1]
    SIGMOID, TANH = _codes()
    _projection(Z.reshape(T * B, 4 * N), X.reshape(T * B, D), W_ih, b_ih + b_hh)  # U, then z_t
    P = np.empty((B, 4 * N), dtype=H.dtype)
    a = np.empty((B, 4 * N), dtype=H.dtype)
    da = np.empty((B, 4 * N), dtype=H.dtype)
    tc = np.empty((B, N), dtype=H.dtype)
    info[INFO_FORWARD] = -1
    for t in range(T):
        np.dot(H[t], W_hh.T, P)
        Zt = Z[t]
        for i in range(B):
            for j in range(4 * N):
                Zt[i, j] = Zt[i, j] + P[i, j]
        _gates_row(a, da, Zt, N, 4)
        c, cp, h = C[t + 1], C[t], H[t + 1]
        for i in range(B):
            for j in range(N):
                c[i, j] = a[i, N + j] * cp[i, j] + a[i, j] * a[i, 2 * N + j]
        _gate(tc, P[:, :N], c, TANH)  # P's first block: scratch for tanh'(c)
        for i in range(B):
            for j in range(N):
                h[i, j] = a[i, 3 * N + j] * tc[i, j]
        _gate_stats(t, a, da, fcfg, N, 4, 2, saturation, gate_mean, gate_low)
        _record(t, h, act_mean, act_std, info)


@njit(**JIT)
def gru_forward_kernel(icfg, fcfg, X, W_ih, W_hh, b_ih, b_hh, H, Z, HN, act_mean, act_std, saturation, gate_mean,
                       gate_low, info):
    """The GRU through T steps.  Z (T,B,3N) pre-activations [z_r, z_z, z_n]; H (T+1,B,N); HN (T,B,N)"""
    T, B, D = X.shape
    N = W_hh.shape[1]
    SIGMOID, TANH = _codes()
    bias = b_ih.copy()
    for j in range(2 * N):  # b_hn stays inside r * (h W_hn^T + b_hn)
        bias[j] = b_ih[j] + b_hh[j]
    _projection(Z.reshape(T * B, 3 * N), X.reshape(T * B, D), W_ih, bias)  # U, then z_t
    P = np.empty((B, 3 * N), dtype=H.dtype)
    a = np.empty((B, 3 * N), dtype=H.dtype)
    da = np.empty((B, 3 * N), dtype=H.dtype)
    one = _as(1.0, H[0, 0, 0])
    info[INFO_FORWARD] = -1
    for t in range(T):
        hp, h, hn = H[t], H[t + 1], HN[t]
        np.dot(hp, W_hh.T, P)
        Zt = Z[t]
        for i in range(B):
            for j in range(2 * N):
                Zt[i, j] = Zt[i, j] + P[i, j]
            for j in range(N):
                hn[i, j] = P[i, 2 * N + j] + b_hh[2 * N + j]
        _gate(a[:, :2 * N], da[:, :2 * N], Zt[:, :2 * N], SIGMOID)
        for i in range(B):
            for j in range(N):
                Zt[i, 2 * N + j] = Zt[i, 2 * N + j] + a[i, j] * hn[i, j]
        _gate(a[:, 2 * N:], da[:, 2 * N:], Zt[:, 2 * N:], TANH)
        for i in range(B):
            for j in range(N):
                z = a[i, N + j]
                h[i, j] = _one_minus(z, da[i, N + j], one) * a[i, 2 * N + j] + z * hp[i, j]
        _gate_stats(t, a, da, fcfg, N, 3, 2, saturation, gate_mean, gate_low)
        _record(t, h, act_mean, act_std, info)


# ------------------------------------------------------------------ backward: the exact chain
# The backward state carries one power of two per row (sample): row i of dL/dh (and of the
# LSTM's carried dL/dc, [G | GC] side by side in one (B, 2N) array, normalised together) is
# gg[i] * 2**r[i]. What is summed over the batch is taken at the largest exponent of the rows it
# adds (the pair rule: for W_ih of the rows whose x_t row is non-zero too, for W_hh of those
# whose h_{t-1} row is; of all non-zero rows where none is), each row scaled down to it; a row
# above it (its partner row is 0) is not scaled up: it adds exactly 0 (NaN from its own NaN).
@njit(**JIT)
def _acc(acc, dexp, k, term, e):
    """acc 2**dexp[k] + term 2**e into acc at the larger exponent (EXP_EMPTY: acc = term); an
    all-zero term is skipped.    acc, term: flat views of the same size"""
    nz = False
    for i in range(term.size):
        if term[i] != 0:
            nz = True
            break
    if not nz:
        return
    E = dexp[k]
    if E == EXP_EMPTY:
        acc[:] = term
        dexp[k] = e
        return
    em = max(E, e)
    da = _clamp(E - em)
    ds = _clamp(e - em)
    for i in range(acc.size):
        acc[i] = _ldexp(acc[i], da) + _ldexp(term[i], ds)
    dexp[k] = em


@njit(inline="always", **JIT)
def _add_scaled(tb, src, i, d):
    """tb += src[i] * 2**d (each entry scaled as :func:`.chain.scale_row_into`, then added in the dtype)."""
    N = src.shape[1]
    lo, hi = _pow2_range(src)
    if d == 0:
        for j in range(N):
            tb[j] += src[i, j]
    elif lo <= d <= hi:
        s = _as(pow2(d), src[0, 0])
        for j in range(N):
            tb[j] += src[i, j] * s
    else:
        for j in range(N):
            tb[j] += _ldexp(src[i, j], d)


@njit(**JIT)
def _rows_norm(g, r, E, buf):
    """||g's rows scaled to 2**E|| (row i times 2**(r[i] - E) in float64, as the reference's
    rows_norm) as one float64, no square lost (the LSTM's dL/dh part may lie far below its
    joint exponent).    g (B, n) (any layout), buf (B, n) float64 C-contiguous workspace"""
    B, n = g.shape
    for i in range(B):
        d = _clamp(r[i] - E)
        if -1074 <= d <= 1023:  # a float64 power of two: ldexp's bits
            s = pow2(d)
            for j in range(n):
                buf[i, j] = np.float64(g[i, j]) * s
        else:
            for j in range(n):
                buf[i, j] = math.ldexp(np.float64(g[i, j]), int(d))
    m, e = norm_scaled(buf)
    return math.ldexp(m, int(e))


@njit(**JIT)
def _finish(gg, r, nz, N, j, clip_mode, c, sig_m, sig_e, csig_m, lstm, info, sc, buf):
    """dL/dH[j] made ready (gg = [dL/dh | dL/dc] (B, N or 2N), row i at r[i]): each row
    normalised jointly, clipped (clip_rows_acted: value row by row, norm over the batch) and
    normalised again, rows of zeros given the largest non-zero row's exponent sig_e[j]; records
    ||dL/dh|| (and the LSTM's carried ||dL/dc||) at it. Returns whether the clip acted (1/0)."""
    E, acted = signal_rows(gg, r, nz, clip_mode, c, sc)
    sig_e[j] = E
    if lstm:  # dL/dh's part of a row may lie far below the row's joint exponent: no square lost
        sig_m[j] = _rows_norm(gg[:, :N], r, E, buf)
        csig_m[j] = _rows_norm(gg[:, N:], r, E, buf)
        fin = math.isfinite(sig_m[j]) and math.isfinite(csig_m[j])
    else:  # every row normalised, the top one at E: the plain sum of squares loses none that counts
        sig_m[j] = math.sqrt(sumsq_rows(gg, r, nz, E, sc))
        fin = math.isfinite(sig_m[j])
    # a finite norm means every entry is finite (an inf or NaN stays one at any row factor)
    if info[INFO_BACKWARD] < 0 and not fin and not all_finite(gg):
        info[INFO_BACKWARD] = j
    return acted


@njit(**JIT)
def _add_loss_rows(gg, r, N, dh):
    """Row by row, gg[i] 2**r[i] + dh[i] 2**0 (first N columns; the LSTM's dL/dc moves along) at
    em_i: the exponent q_i of max|dh[i]| (NaN ignored, 0 if not finite) where the state row is
    all 0, r[i] where dh[i] is all 0, else the larger of the two (the reference's rule)."""
    B, W = gg.shape
    for i in range(B):
        m = 0.0
        zero = True
        for j in range(N):
            v = abs(np.float64(dh[i, j]))
            if v > m:
                m = v
            zero = zero and dh[i, j] == 0
        q = np.int64(math.frexp(m)[1]) if math.isfinite(m) else np.int64(0)
        if not row_nonzero(gg, i):
            em = q
        elif zero:
            continue
        else:
            em = max(r[i], q)
        dd = _clamp(-em)
        dg = _clamp(r[i] - em)
        lo, hi = _pow2_range(gg)
        if lo <= dd <= hi and lo <= dg <= hi:  # products by powers of two of the dtype: ldexp's bits
            sd = _as(pow2(dd), gg[0, 0])
            sg = _as(pow2(dg), gg[0, 0])
            for j in range(N):
                gg[i, j] = dh[i, j] * sd + gg[i, j] * sg
            for j in range(N, W):
                gg[i, j] = gg[i, j] * sg
        else:
            for j in range(N):
                gg[i, j] = _ldexp(dh[i, j], dd) + _ldexp(gg[i, j], dg)
            for j in range(N, W):
                gg[i, j] = _ldexp(gg[i, j], dg)
        r[i] = em


# The Gram sum is trusted where it keeps more than this share of its terms' magnitudes; below,
# the samples' terms cancel (one input twice with opposite targets: sqrt of rounding noise, 1e-8
# of the terms, where the product gives 1e-16) or underflowed in h h^T (a sample 10^200 below
# another's h_{t-1}): the norm is taken from the product dz^T h instead.
GRAM_TRUST = 2.0**-26


@njit(**JIT)
def _product_norm(P):
    """||P||_F in float64 with nothing lost: the plain sum of squares where it lies in
    [SUMSQ_LO, SUMSQ_HI] (its bits as before), else from P scaled by its largest power of two
    (:func:`.chain.norm_scaled`; C's gb_rnorm)."""
    m, e = norm_scaled(P)
    return _ldexp(m, e)


@njit(**JIT)
def _step_norm_plain(dz, hp, gram):
    B = dz.shape[0]
    if gram:
        zz = np.dot(dz, dz.T)
        hh = np.dot(hp, hp.T)
        s = 0.0
        a = 0.0
        for i in range(B):
            for j in range(B):
                t = np.float64(zz[i, j]) * np.float64(hh[i, j])
                s += t
                a += abs(t)
        if not (s <= a * GRAM_TRUST):  # (a NaN stays NaN)
            return math.sqrt(max(s, 0.0))
    return _product_norm(np.dot(dz.T, hp))


@njit(**JIT)
def _scaled_copy(x, e):
    """x 2^-e in float64 (exact)."""
    out = np.empty(x.shape)
    B, n = x.shape
    for i in range(B):
        for j in range(n):
            out[i, j] = _ldexp(np.float64(x[i, j]), _clamp(-e))
    return out


@njit(**JIT)
def _step_norm_wide(dz, hp):
    """||dz^T hp||_F with the product formed in float64, entry by entry (the reference's, which
    forms it in float64 unscaled when a side is not finite: then the norm is inf, or NaN where an
    entry is, from inf * 0 or inf - inf; neither the Gram sum, whose cross terms meet infs that
    cancel in dz^T hp, nor a float32 product, whose finite terms can overflow, says which)."""
    B, GN = dz.shape
    N = hp.shape[1]
    s = 0.0
    for i in range(GN):
        for j in range(N):
            p = 0.0
            for b in range(B):
                p += np.float64(dz[b, i]) * np.float64(hp[b, j])
            s += p * p
    return math.sqrt(s)


@njit(**JIT)
def _step_norm(dz, hp, gram):
    """||dz^T hp||_F = m 2^e (dz (B,GN), hp (B,N)), from the Gram matrices or directly: in the
    dtype while max|dz| and max|hp| lie in [2^-S, 2^S] (S = 240; float32: 40), else from float64
    copies scaled by the powers of two of their largest entries (nothing lost to underflow); with
    an inf on either side from the product in float64 (:func:`_step_norm_wide`), as the reference."""
    az = absmax(dz)
    ah = absmax(hp)
    S = 240.0 if dz.itemsize == 8 else 40.0
    lo, hi = 2.0**-S, 2.0**S
    # an all-zero side is in range: its partner may not be (h_0 ~ 1e155 with dz = 0: hp hp^T
    # overflows, and 0 * inf in the Gram sum read NaN for a norm of 0); frexp(0) gives 0
    if not (az < math.inf and ah < math.inf):  # an inf (absmax ignores NaN, which any path keeps)
        return _step_norm_wide(dz, hp), np.int64(0)
    if (az == 0 or lo <= az <= hi) and (ah == 0 or lo <= ah <= hi):
        return _step_norm_plain(dz, hp, gram), np.int64(0)
    ez = np.int64(math.frexp(az)[1])
    eh = np.int64(math.frexp(ah)[1])
    return _step_norm_plain(_scaled_copy(dz, ez), _scaled_copy(hp, eh), gram), ez + eh


@njit(**JIT)
def _step_rows(t, k, dzx, dzh, X, H, r, fx, fh, nbx, nbh, gru):
    """Step t's rows (slot k): nbx/nbh[k, i] = dzx/dzh row i non-zero, fx/fh[k, i] = and x_t's /
    h_{t-1}'s row non-zero too (the rows whose exponents count for dW_ih's / dW_hh's); returns
    the W_hh term's exponent (without fexp): the largest r[i] over the fh rows, over the nbh rows
    where there is none (the reference's pair_top), EXP_EMPTY when dzh is all 0."""
    B = dzx.shape[0]
    wh = np.int64(EXP_EMPTY)
    wb = np.int64(EXP_EMPTY)
    Xt = X[t]
    Ht = H[t]
    for i in range(B):
        ax = row_nonzero(dzx, i)
        ah = row_nonzero(dzh, i) if gru else ax
        nbx[k, i] = ax
        nbh[k, i] = ah
        fx[k, i] = ax and row_nonzero(Xt, i)
        hin = ah and row_nonzero(Ht, i)
        fh[k, i] = hin
        if hin:
            wh = max(wh, r[i])
        if ah:
            wb = max(wb, r[i])
    return wh if wh != EXP_EMPTY else wb


@njit(inline="always", **JIT)
def _down(e, E):
    """A row's shift to a sum's exponent E: e - E, never up (a row above E is one whose partner
    row is 0: it adds exactly 0 as it is, or NaN from an inf or NaN of its own, as plain
    arithmetic gives; scaled up it could overflow, and inf * 0 read NaN)."""
    return _clamp(min(e - E, np.int64(0)))


@njit(**JIT)
def _flush(zx, zh, rk, rkh, fx, fh, nbx, nbh, m, t0, X, H, fexp, vanilla, gru, dW_ih, dW_hh, db_ih, db_hh, dexp,
           tbx, tbh):
    """Chunk of steps [t0, t0+m) (slot k = step t0 + k): each (step, row) at its own exponent
    rk[k, i] (the GRU's dzh rows: rkh[k, i]; else rkh is rk) (plus fexp for the vanilla W_hh term)
    scaled to the chunk's largest exponent of the rows that count for each sum (:func:`_step_rows`;
    a row above it, whose partner is 0, as it is: :func:`_down`), one product per weight, the
    aligned adds. zx holds the raw dzx rows (and dzh but for the GRU, whose zh holds its own);
    the W_hh rows are scaled into zh unless they take the W_ih rows' factors."""
    B, GN = zx.shape[1], zx.shape[2]
    Ewx = np.int64(EXP_EMPTY)
    Ewh = np.int64(EXP_EMPTY)
    Ebx = np.int64(EXP_EMPTY)
    Ebh = np.int64(EXP_EMPTY)
    Eh = np.int64(EXP_EMPTY)  # the W_hh rows' largest, fexp included (no row with a partner)
    for k in range(m):
        fe = fexp[t0 + k] if vanilla else np.int64(0)
        for i in range(B):
            e = rk[k, i]
            eh = rkh[k, i]
            if nbx[k, i]:
                Ebx = max(Ebx, e)
            if nbh[k, i]:
                Ebh = max(Ebh, eh)
                Eh = max(Eh, eh + fe)
            if fx[k, i]:
                Ewx = max(Ewx, e)
            if fh[k, i]:
                Ewh = max(Ewh, eh + fe)
    if Ebx == EXP_EMPTY and Ebh == EXP_EMPTY:
        return
    if Ewx == EXP_EMPTY:  # no row with a partner: the term is 0 (or NaN), at the rows' largest
        Ewx = Ebx
    if Ewh == EXP_EMPTY:
        Ewh = Eh
    # one scaled copy serves both products where every row takes the same factor in both
    shared = not gru
    if shared:
        for k in range(m):
            fe = fexp[t0 + k] if vanilla else np.int64(0)
            for i in range(B):
                if nbx[k, i] and _down(rk[k, i], Ewx) != _down(rkh[k, i] + fe, Ewh):
                    shared = False
    tbx[:] = 0
    tbh[:] = 0
    for k in range(m):
        fe = fexp[t0 + k] if vanilla else np.int64(0)
        Zk = zx[k]
        Hk = zh[k]
        for i in range(B):
            e = rk[k, i]
            eh = rkh[k, i]
            if gru:
                if nbh[k, i]:
                    _add_scaled(tbh, Hk, i, _clamp(eh - Ebh))
                    scale_row(Hk, i, _down(eh + fe, Ewh))
            elif not shared:
                if nbx[k, i]:
                    scale_row_into(Hk, Zk, i, _down(eh + fe, Ewh))
                else:
                    Hk[i, :] = 0
            if nbx[k, i]:
                _add_scaled(tbx, Zk, i, _clamp(e - Ebx))
                scale_row(Zk, i, _down(e, Ewx))
    R = m * B
    Zx = zx[:m].reshape(R, GN)
    Zh = zx[:m].reshape(R, GN) if shared else zh[:m].reshape(R, GN)
    D = X.shape[2]
    N = H.shape[2]
    if Ebx != EXP_EMPTY:
        _acc(dW_ih.reshape(GN * D), dexp, DE_W_IH, np.dot(Zx.T, X[t0:t0 + m].reshape(R, D)).reshape(GN * D), Ewx)
        _acc(db_ih, dexp, DE_B_IH, tbx, Ebx)
    if gru:
        if Ebh != EXP_EMPTY:
            _acc(db_hh, dexp, DE_B_HH, tbh, Ebh)
    elif Ebx != EXP_EMPTY:
        _acc(db_hh, dexp, DE_B_HH, tbx, Ebx)
    if Ebh != EXP_EMPTY:
        _acc(dW_hh.reshape(GN * N), dexp, DE_W_HH, np.dot(Zh.T, H[t0:t0 + m].reshape(R, N)).reshape(GN * N), Ewh)


@njit(**JIT)
def _backward(cell, icfg, fcfg, X, W_hh, H, C, Z, HN, fexp, DH, G, GC, row_e, dW_ih, dW_hh, db_ih, db_hh, dexp,
              sig_m, sig_e, csig_m, gnorm_m, gnorm_e, clip_acted, info):
    """Backward through T steps of cell 0 (rnn), 1 (lstm) or 2 (gru) (module docstring), one
    exponent per row of the state."""
    clip_mode = icfg[RI_CLIP]
    c = fcfg[RF_CLIP]
    every = icfg[RI_LOSS_EVERY] != 0
    code = icfg[RI_ACT]
    p = fcfg[RF_ACT_PARAM]
    below = RESCUE_BELOW64 if G.itemsize == 8 else RESCUE_BELOW32
    T, B, D = X.shape
    GN, N = W_hh.shape
    vanilla = cell == 0
    lstm = cell == 1
    gru = cell == 2
    rescue = vanilla and RESCUE_CODES[code]
    K = icfg[RI_CHUNK]  # steps per chunk; step t's slot is t % K
    slots = min(K, T)
    zx = np.zeros((slots, B, GN), dtype=G.dtype)  # the steps' dzx (and dzh but for the GRU) rows
    zh = np.zeros((slots, B, GN), dtype=G.dtype)  # the GRU's dzh rows; the W_hh rows at the flush
    rk = np.zeros((slots, B), dtype=np.int64)  # the rows' exponents
    rkh = np.zeros((slots, B), dtype=np.int64) if gru else rk  # the GRU's dzh rows' (far_rows: their own)
    fx = np.zeros((slots, B), dtype=np.bool_)
    fh = np.zeros((slots, B), dtype=np.bool_)
    nbx = np.zeros((slots, B), dtype=np.bool_)
    nbh = np.zeros((slots, B), dtype=np.bool_)
    tbx = np.zeros(GN, dtype=G.dtype)
    tbh = np.zeros(GN, dtype=G.dtype)
    gram = B * (GN + N) < 2 * GN * N
    gg = np.empty((B, 2 * N if lstm else N), dtype=G.dtype)  # [dL/dh | dL/dc]
    gg[:, :N] = G
    if lstm:
        gg[:, N:] = GC
    gh = gg[:, :N]
    r = np.empty(B, dtype=np.int64)  # row i of the state is gg[i] * 2**r[i]
    for i in range(B):
        r[i] = sig_e[T] + row_e[i]
    nz = np.empty(B, dtype=np.bool_)
    sc = np.empty(B)
    buf = np.empty((B, N))  # the norms' scaled rows (float64)
    zs = np.empty((B, GN), dtype=G.dtype)  # the step norm's scaled rows
    P = np.empty((B, N), dtype=G.dtype)
    one = _as(1.0, G[0, 0])
    SIGMOID, TANH = _codes()
    a = np.empty((B, GN), dtype=G.dtype)  # gates and derivatives recomputed from Z
    ga = np.empty((B, GN), dtype=G.dtype)
    tc = np.empty((B, N), dtype=G.dtype)
    dtc = np.empty((B, N), dtype=G.dtype)
    info[INFO_BACKWARD] = -1
    _finish(gg, r, nz, N, T, CLIP_NONE, c, sig_m, sig_e, csig_m, lstm, info, sc, buf)
    for t in range(T - 1, -1, -1):
        k = t % K
        dzx = zx[k]
        dzh = zh[k] if gru else zx[k]
        if vanilla:
            zt = Z[t]
            for i in range(B):
                m = 0.0  # max|dz[i]|, NaN ignored: the row's rescue test, found while forming it
                for j in range(N):
                    v = gh[i, j] * dphi(zt[i, j], code, p)
                    dzx[i, j] = v
                    if abs(v) > m:
                        m = abs(v)
                # a row below the bound is taken in log form (a row of da = 0 would stay 0)
                if rescue and m < below and row_nonzero(gh, i):
                    r[i] += rescue_saturated(dzx[i:i + 1], tc[0], False, gh[i:i + 1], zt[i:i + 1], code, p, 0, False)
                    m = absmax(dzx[i:i + 1])
                far_row(dzx, i, m, r)  # a row far from 1 to [0.5, 1) before it meets W_hh
            np.dot(dzx, W_hh, P)
            gh[:, :] = P
        elif lstm:
            Zt, cp = Z[t], C[t]
            _gates_row(a, ga, Zt, N, 4)
            _gate(tc, dtc, C[t + 1], TANH)
            gc = gg[:, N:]
            for i in range(B):
                for j in range(N):
                    g = gh[i, j]
                    dc = gc[i, j] + g * a[i, 3 * N + j] * dtc[i, j]
                    dzx[i, j] = dc * a[i, 2 * N + j] * ga[i, j]
                    dzx[i, N + j] = dc * cp[i, j] * ga[i, N + j]
                    dzx[i, 2 * N + j] = dc * a[i, j] * ga[i, 2 * N + j]
                    dzx[i, 3 * N + j] = g * tc[i, j] * ga[i, 3 * N + j]
                    gc[i, j] = dc * a[i, N + j]
                    dtc[i, j] = dc  # tanh'(c_t) read above: the slot keeps the total dL/dc_t
            csig_m[t + 1] = _rows_norm(dtc, r, sig_e[t + 1], buf)  # ||total dL/dC[t+1]|| (reference)
            np.dot(dzx, W_hh, P)
            gh[:, :] = P
        else:
            hn, hp = HN[t], H[t]
            _gates_row(a, ga, Z[t], N, 3)
            for i in range(B):
                for j in range(N):
                    g = gh[i, j]
                    z = a[i, N + j]
                    dn = g * _one_minus(z, ga[i, N + j], one) * ga[i, 2 * N + j]
                    dzx[i, j] = dn * hn[i, j] * ga[i, j]
                    dzx[i, N + j] = g * (hp[i, j] - a[i, 2 * N + j]) * ga[i, N + j]
                    dzx[i, 2 * N + j] = dn
                    dzh[i, j] = dzx[i, j]
                    dzh[i, N + j] = dzx[i, N + j]
                    dzh[i, 2 * N + j] = dn * a[i, j]
                    gh[i, j] = g * z
            np.dot(dzh, W_hh, P)
            for i in range(B):
                for j in range(N):
                    gh[i, j] = gh[i, j] + P[i, j]
        # the step's rows: their exponents (the state's, rescued rows' shifts included) and
        # which of them count for the sums; the W_hh term's norm at its own exponent
        for i in range(B):
            rk[k, i] = r[i]
            rkh[k, i] = r[i]
        fe = fexp[t] if vanilla else np.int64(0)
        wh = _step_rows(t, k, dzx, dzh, X, H, r, fx, fh, nbx, nbh, gru)
        if wh == EXP_EMPTY:  # dzh all 0: the term is 0
            gnorm_m[t] = 0.0
            gnorm_e[t] = sig_e[t + 1] + fe
        else:
            same = True  # no non-zero row below wh: the rows as they are
            for i in range(B):
                if nbh[k, i] and r[i] < wh:
                    same = False
            src = dzh
            if not same:
                for i in range(B):
                    if nbh[k, i]:
                        scale_row_into(zs, dzh, i, _down(r[i], wh))
                    else:
                        zs[i, :] = 0
                src = zs
            gm, ge = _step_norm(src, H[t], gram)
            gnorm_m[t] = gm
            gnorm_e[t] = wh + fe + ge
        # rows far from 1 to [0.5, 1) for the chunk's products (the gated cells' state took dz W_hh
        # as it was; the vanilla cell's rows are there already, and the step norm above read a copy)
        if not vanilla:
            far_rows(dzx, rk[k], nbx[k])
        if gru:
            far_rows(dzh, rkh[k], nbh[k])
        if k == 0:
            _flush(zx, zh, rk, rkh, fx, fh, nbx, nbh, min(K, T - t), t, X, H, fexp, vanilla, gru, dW_ih, dW_hh, db_ih,
                   db_hh, dexp, tbx, tbh)
        if every:
            _add_loss_rows(gg, r, N, DH[t])
        clip_acted[t] = _finish(gg, r, nz, N, t, clip_mode, c, sig_m, sig_e, csig_m, lstm, info, sc, buf)
    G[:, :] = gg[:, :N]
    if lstm:
        GC[:, :] = gg[:, N:]
    for i in range(B):
        row_e[i] = r[i] - sig_e[0]


def rnn_backward_kernel(icfg, fcfg, X, W_hh, H, Z, fexp, DH, G, row_e, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m,
                        sig_e, gnorm_m, gnorm_e, clip_acted, info):
    _backward(0, icfg, fcfg, X, W_hh, H, H, Z, H[1:], fexp, DH, G, G, row_e, dW_ih, dW_hh, db_ih, db_hh, dexp,
              sig_m, sig_e, sig_m, gnorm_m, gnorm_e, clip_acted, info)


def lstm_backward_kernel(icfg, fcfg, X, W_hh, H, C, Z, DH, G, GC, row_e, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m,
                         sig_e, csig_m, gnorm_m, gnorm_e, clip_acted, info):
    _backward(1, icfg, fcfg, X, W_hh, H, C, Z, C[1:], np.zeros(len(sig_e), dtype=np.int64), DH, G, GC, row_e, dW_ih,
              dW_hh, db_ih, db_hh, dexp, sig_m, sig_e, csig_m, gnorm_m, gnorm_e, clip_acted, info)


def gru_backward_kernel(icfg, fcfg, X, W_hh, H, Z, HN, DH, G, row_e, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m, sig_e,
                        gnorm_m, gnorm_e, clip_acted, info):
    _backward(2, icfg, fcfg, X, W_hh, H, H, Z, HN, np.zeros(len(sig_e), dtype=np.int64), DH, G, G, row_e, dW_ih,
              dW_hh, db_ih, db_hh, dexp, sig_m, sig_e, sig_m, gnorm_m, gnorm_e, clip_acted, info)


rnn_forward = abi.checked("rnn_forward", rnn_forward_kernel)
rnn_backward = abi.checked("rnn_backward", rnn_backward_kernel)
lstm_forward = abi.checked("lstm_forward", lstm_forward_kernel)
lstm_backward = abi.checked("lstm_backward", lstm_backward_kernel)
gru_forward = abi.checked("gru_forward", gru_forward_kernel)
gru_backward = abi.checked("gru_backward", gru_backward_kernel)
