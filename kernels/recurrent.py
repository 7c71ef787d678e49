"""The recurrent cells in Numba: the contract of :mod:`gradbench.recurrent.reference`.

Same functions and arguments (the tables of :mod:`gradbench.recurrent.abi`), validated once by
:func:`gradbench.abi.check` before the trusting ``*_kernel`` runs. The algorithm is that of the C
kernels (``csrc/recurrent_impl.h``): the input projection of all steps is one product, each step
adds the recurrent product; in the backward pass the steps' dz rows are collected in chunks of
K steps (``icfg[RI_CHUNK]``) scaled to the chunk's largest exponent, dW_ih = Z^T X and dW_hh = Z^T H are products over
the chunk, added to the running (mantissa, exponent) accumulators by the aligned rule, and the
norm of a step's dW_hh term comes from the B x B Gram matrices when that is cheaper. Matrix
products go through ``np.dot`` (BLAS); phi and phi' are :mod:`.activations`' (``dphi`` from z).
One compiled kernel per cell, direction and dtype.
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
from .activations import RESCUE_BELOW32, RESCUE_BELOW64, _as, dphi, phi
from .chain import _clamp, _ldexp, absmax, all_finite, clip_signal_acted, moments, norm_scaled, normalise, sumsq
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


@njit(**JIT)
def _snorm(x):
    """||x|| as one float64 with no square lost to underflow (the reference's _snorm)."""
    m, e = norm_scaled(x)
    return math.ldexp(m, int(e))


@njit(**JIT)
def _finish(gg, B, j, clip_mode, c, sig_m, sig_e, csig_m, lstm, info):
    """Normalise the state gg = [dL/dh; dL/dc] (rows, N) jointly, clip, record dL/dH[j] (and
    the norm of the carried dL/dc, which the LSTM's next step replaces by the total's); returns
    whether the clip changed the state (1/0, its own test: the reference's clip_acted[j])."""
    e = sig_e[j] + normalise(gg)
    acted = np.int64(0)
    if clip_mode != 0:
        e, acted = clip_signal_acted(gg, e, clip_mode, c)
        e += normalise(gg)
    sig_e[j] = e
    sig_m[j] = _snorm(gg[:B])
    if lstm:
        csig_m[j] = _snorm(gg[B:])
    if info[INFO_BACKWARD] < 0 and not all_finite(gg):
        info[INFO_BACKWARD] = j
    return acted


@njit(**JIT)
def _add_loss(gg, B, e, dh):
    """gg 2**e + dh 2**0 (first B rows) at the larger exponent (the reference's loss_exponent);
    the LSTM's dL/dc moves along."""
    m = absmax(dh)
    em = e
    if m > 0:
        em = max(e, np.int64(math.frexp(m)[1]) if math.isfinite(m) else np.int64(0))
    dg = _clamp(e - em)
    dd = _clamp(-em)
    rows, N = gg.shape
    for i in range(rows):
        for j in range(N):
            if i < B:
                gg[i, j] = _ldexp(dh[i, j], dd) + _ldexp(gg[i, j], dg)
            else:
                gg[i, j] = _ldexp(gg[i, j], dg)
    return em


@njit(**JIT)
def _step_norm_plain(dz, hp, gram):
    B = dz.shape[0]
    if gram:
        zz = np.dot(dz, dz.T)
        hh = np.dot(hp, hp.T)
        s = 0.0
        for i in range(B):
            for j in range(B):
                s += np.float64(zz[i, j]) * np.float64(hh[i, j])
        return math.sqrt(max(s, 0.0))
    return math.sqrt(sumsq(np.dot(dz.T, hp)))


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
def _step_norm(dz, hp, gram):
    """||dz^T hp||_F = m 2^e (dz (B,GN), hp (B,N)), from the Gram matrices or directly: in the
    dtype while max|dz| and max|hp| lie in [2^-S, 2^S] (S = 240; float32: 40), else from float64
    copies scaled by the powers of two of their largest entries (nothing lost to underflow)."""
    az = absmax(dz)
    ah = absmax(hp)
    S = 240.0 if dz.itemsize == 8 else 40.0
    lo, hi = 2.0**-S, 2.0**S
    # an all-zero side is in range: its partner may not be (h_0 ~ 1e155 with dz = 0: hp hp^T
    # overflows, and 0 * inf in the Gram sum read NaN for a norm of 0); frexp(0) gives 0
    if not (az < math.inf and ah < math.inf) or ((az == 0 or lo <= az <= hi) and (ah == 0 or lo <= ah <= hi)):
        return _step_norm_plain(dz, hp, gram), np.int64(0)
    ez = np.int64(math.frexp(az)[1])
    eh = np.int64(math.frexp(ah)[1])
    return _step_norm_plain(_scaled_copy(dz, ez), _scaled_copy(hp, eh), gram), ez + eh


@njit(**JIT)
def _flush(zx, zh, ex, eh, nz, m, t0, X, H, dW_ih, dW_hh, db_ih, db_hh, dexp, separate, rescale_copy):
    """Chunk of steps [t0, t0+m): rows scaled to the chunk's exponents, products, accumulators."""
    Ex = np.int64(EXP_EMPTY)
    Eh = np.int64(EXP_EMPTY)
    for k in range(m):
        if nz[k]:
            Ex = max(Ex, ex[k])
            Eh = max(Eh, eh[k])
    if Ex == EXP_EMPTY:
        return
    B, GN = zx.shape[1], zx.shape[2]
    for k in range(m):
        if not nz[k]:
            zx[k, :, :] = 0
            zh[k, :, :] = 0
            continue
        sh = _clamp(eh[k] - Eh)
        sx = _clamp(ex[k] - Ex)
        for i in range(B):
            for j in range(GN):
                if rescale_copy:
                    zh[k, i, j] = _ldexp(zx[k, i, j], sh)
                elif separate:
                    zh[k, i, j] = _ldexp(zh[k, i, j], sh)
                zx[k, i, j] = _ldexp(zx[k, i, j], sx)
    R = m * B
    Zx = zx[:m].reshape(R, GN)
    Zh = (zh if separate or rescale_copy else zx)[:m].reshape(R, GN)
    D = X.shape[2]
    N = H.shape[2]
    _acc(dW_ih.reshape(GN * D), dexp, DE_W_IH, np.dot(Zx.T, X[t0:t0 + m].reshape(R, D)).reshape(GN * D), Ex)
    own_bias = separate and not rescale_copy
    tb = np.zeros(GN, dtype=zx.dtype)
    for r in range(R):
        for j in range(GN):
            tb[j] += Zx[r, j]
    _acc(db_ih, dexp, DE_B_IH, tb, Ex)
    if own_bias:
        tb[:] = 0
        for r in range(R):
            for j in range(GN):
                tb[j] += Zh[r, j]
        _acc(db_hh, dexp, DE_B_HH, tb, Eh)
    else:
        _acc(db_hh, dexp, DE_B_HH, tb, Ex)
    _acc(dW_hh.reshape(GN * N), dexp, DE_W_HH, np.dot(Zh.T, H[t0:t0 + m].reshape(R, N)).reshape(GN * N), Eh)


@njit(**JIT)
def _mark(zx, zh, ex, eh, nz, k, e, e_h):
    any_nz = False
    B, GN = zx.shape[1], zx.shape[2]
    for i in range(B):
        for j in range(GN):
            if zx[k, i, j] != 0 or zh[k, i, j] != 0:
                any_nz = True
    ex[k] = e
    eh[k] = e_h
    nz[k] = any_nz


@njit(**JIT)
def _backward(cell, icfg, fcfg, X, W_hh, H, C, Z, HN, fexp, DH, G, GC, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m,
              sig_e, csig_m, gnorm_m, gnorm_e, clip_acted, info):
    """Backward through T steps of cell 0 (rnn), 1 (lstm) or 2 (gru) (module docstring)."""
    clip_mode = icfg[RI_CLIP]
    c = fcfg[RF_CLIP]
    every = icfg[RI_LOSS_EVERY] != 0
    rescale = icfg[RI_RESCALE_FWD] != 0
    code = icfg[RI_ACT]
    p = fcfg[RF_ACT_PARAM]
    below = RESCUE_BELOW64 if G.itemsize == 8 else RESCUE_BELOW32
    T, B, D = X.shape
    GN, N = W_hh.shape
    lstm = cell == 1
    separate = cell == 2 or rescale
    K = icfg[RI_CHUNK]  # steps per chunk; step t's slot is t % K
    slots = min(K, T)
    zx = np.zeros((slots, B, GN), dtype=G.dtype)
    zh = np.zeros((slots, B, GN), dtype=G.dtype) if separate else zx
    ex = np.zeros(slots, dtype=np.int64)
    eh = np.zeros(slots, dtype=np.int64)
    nz = np.zeros(slots, dtype=np.bool_)
    gram = B * (GN + N) < 2 * GN * N
    rows = 2 * B if lstm else B
    gg = np.empty((rows, N), dtype=G.dtype)
    gg[:B] = G
    if lstm:
        gg[B:] = GC
    one = _as(1.0, G[0, 0])
    SIGMOID, TANH = _codes()
    a = np.empty((B, GN), dtype=G.dtype)  # gates and derivatives recomputed from Z
    ga = np.empty((B, GN), dtype=G.dtype)
    tc = np.empty((B, N), dtype=G.dtype)
    dtc = np.empty((B, N), dtype=G.dtype)
    info[INFO_BACKWARD] = -1
    _finish(gg, B, T, CLIP_NONE, c, sig_m, sig_e, csig_m, lstm, info)
    for t in range(T - 1, -1, -1):
        e = sig_e[t + 1]
        k = t % K
        dzx = zx[k]
        dzh = zh[k]
        gh = gg[:B]
        if cell == 0:
            zt = Z[t]
            m = 0.0  # max|dz|, NaN ignored: the rescue's test, found while forming dz
            for i in range(B):
                for j in range(N):
                    v = gh[i, j] * dphi(zt[i, j], code, p)
                    dzx[i, j] = v
                    if abs(v) > m:
                        m = abs(v)
            if m < below:
                e += rescue_saturated(dzx, dtc[0], False, gh, zt, code, p, 0, False)
            if rescale:
                dzh[:, :] = dzx
            gh[:, :] = np.dot(dzx, W_hh)
        elif cell == 1:
            Zt, cp = Z[t], C[t]
            _gates_row(a, ga, Zt, N, 4)
            _gate(tc, dtc, C[t + 1], TANH)
            gc = gg[B:]
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
            csig_m[t + 1] = _snorm(dtc)  # ||total dL/dC[t+1]||, exponent e (reference)
            gh[:, :] = np.dot(dzx, W_hh)
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
            P = np.dot(dzh, W_hh)
            for i in range(B):
                for j in range(N):
                    gh[i, j] = gh[i, j] + P[i, j]
        e_h = e + fexp[t] if cell == 0 else e
        _mark(zx, zh, ex, eh, nz, k, e, e_h)
        gm, ge = _step_norm(dzh if separate else dzx, H[t], gram)
        gnorm_m[t] = gm
        gnorm_e[t] = e_h + ge
        if k == 0:
            _flush(zx, zh, ex, eh, nz, min(K, T - t), t, X, H, dW_ih, dW_hh, db_ih, db_hh, dexp, cell == 2,
                   cell == 0 and rescale)
        if every:
            e = _add_loss(gg, B, e, DH[t])
        sig_e[t] = e
        clip_acted[t] = _finish(gg, B, t, clip_mode, c, sig_m, sig_e, csig_m, lstm, info)
    G[:, :] = gg[:B]
    if lstm:
        GC[:, :] = gg[B:]


def rnn_backward_kernel(icfg, fcfg, X, W_hh, H, Z, fexp, DH, G, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m, sig_e,
                        gnorm_m, gnorm_e, clip_acted, info):
    _backward(0, icfg, fcfg, X, W_hh, H, H, Z, H[1:], fexp, DH, G, G, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m,
              sig_e, sig_m, gnorm_m, gnorm_e, clip_acted, info)


def lstm_backward_kernel(icfg, fcfg, X, W_hh, H, C, Z, DH, G, GC, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m, sig_e,
                         csig_m, gnorm_m, gnorm_e, clip_acted, info):
    _backward(1, icfg, fcfg, X, W_hh, H, C, Z, C[1:], np.zeros(len(sig_e), dtype=np.int64), DH, G, GC, dW_ih, dW_hh,
              db_ih, db_hh, dexp, sig_m, sig_e, csig_m, gnorm_m, gnorm_e, clip_acted, info)


def gru_backward_kernel(icfg, fcfg, X, W_hh, H, Z, HN, DH, G, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m, sig_e,
                        gnorm_m, gnorm_e, clip_acted, info):
    _backward(2, icfg, fcfg, X, W_hh, H, H, Z, HN, np.zeros(len(sig_e), dtype=np.int64), DH, G, G, dW_ih, dW_hh,
              db_ih, db_hh, dexp, sig_m, sig_e, sig_m, gnorm_m, gnorm_e, clip_acted, info)


rnn_forward = abi.checked("rnn_forward", rnn_forward_kernel)
rnn_backward = abi.checked("rnn_backward", rnn_backward_kernel)
lstm_forward = abi.checked("lstm_forward", lstm_forward_kernel)
lstm_backward = abi.checked("lstm_backward", lstm_backward_kernel)
gru_forward = abi.checked("gru_forward", gru_forward_kernel)
gru_backward = abi.checked("gru_backward", gru_backward_kernel)
