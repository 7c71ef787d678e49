"""The fused drivers: the whole stack in one compiled call per direction.

Same contract as :func:`gradbench.reference.stack_forward` / ``stack_backward`` (read its
module docstring). Workspace is allocated once at the start; the layer loop allocates nothing
and never leaves compiled code. One compiled kernel per dtype: the activation and the options
arrive as integer codes in ``icfg`` and floats in ``fcfg``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gradbench.abi import (
    F_ACT_PARAM, F_BN_EPS, F_CLIP, F_RES_SCALE, F_SAT, I_ACT, I_BN, I_CLIP, I_RESCALE_FWD,
    I_RESIDUAL, INFO_BACKWARD, INFO_FORWARD,
)

from ._config import JIT
from .activations import IDENTITY, LEAKY, PRELU, RELU, _as
from .chain import (
    _clamp, _ldexp, _pow2_range, add_aligned, add_aligned_rows, all_finite, far_rows, layer_rows, moments_rows,
    norm_scaled, pow2, row_nonzero, rows_exponent, rows_nonzero, scale_row, signal_rows, sumsq_rows,
)
from .layers import (
    _activation_backward, _activation_forward_stats, batchnorm_backward, batchnorm_forward, dense_fix,
    dense_fix_rows, dense_forward, matmul_dh, matmul_dw, matmul_forward, rescue_forward_rows,
    rescue_saturated_rows,
)


@njit(**JIT)
def _bias_floor(b):
    """reference.bias_floor of a bias with a nonzero entry: the exponent of max|b| less
    T_MAX_EXP - 3 (1020 in float64, 124 in float32)."""
    m = 0.0
    for j in range(b.shape[0]):
        m = max(m, abs(np.float64(b[j])))
    return math.frexp(m)[1] - (1020 if b.itemsize == 8 else 124)


@njit(**JIT)
def _needs_scaled(code, rescale):
    """Forward rescaling of an activation that is not positively homogeneous: phi_scaled."""
    return rescale and not (code == IDENTITY or code == RELU or code == LEAKY or code == PRELU)


@njit(**JIT)
def stack_forward_kernel(icfg, fcfg, W, b, gamma, beta, slope, H, Z, bn_mean, bn_rstd, fexp, frow,
                         act_mean, act_std, saturation, dead, info):
    """Forward through all L layers.  W (L,N,N), b/gamma/beta (L,N), slope (L,), H (L+1,B,N),
    Z (L,B,N), bn_mean/bn_rstd (L,N), fexp (L+1,), frow (L+1,B) (row i of h_l at
    2**(fexp[l] + frow[l, i])), statistics (L,), info (>=1,)"""
    code = icfg[I_ACT]
    bn = icfg[I_BN] != 0
    k = icfg[I_RESIDUAL]
    rescale = icfg[I_RESCALE_FWD] != 0
    param = fcfg[F_ACT_PARAM]
    alpha = fcfg[F_RES_SCALE]
    eps = fcfg[F_BN_EPS]
    sat_threshold = fcfg[F_SAT]
    L, B, N = Z.shape
    info[INFO_FORWARD] = -1
    y = np.empty_like(H[0])  # workspace: the batch-normalised pre-activation
    alive = np.empty(N, dtype=np.bool_)
    f = np.zeros(B, dtype=np.int64)  # the rows' absolute exponents: of z_l's rows, then of h_{l+1}'s
    fs = np.empty(B, dtype=np.int64)  # the skip's rows' (end of a residual group)
    nz = np.ones(B, dtype=np.bool_)  # rows of h_{l+1} with an entry != 0
    sc = np.empty(B)  # the statistics' row factors
    bz = np.empty_like(H[0])  # rescaling with biases: each row's b 2^-f[i]
    for l in range(L):
        p = np.float64(slope[l]) if code == PRELU else param
        if code == PRELU:  # abi.saturation_threshold of the slope that runs, rounded to the dtype
            sat_threshold = np.float64(_as(0.01 * max(1.0, abs(p)), H[0, 0, 0]))
        # rescaling with biases: rows far below the bias brought up to its floor, rows of zeros
        # put there (reference.raise_rows)
        row_bias = rescale and not bn and row_nonzero(b, l)
        if row_bias:
            floor = _bias_floor(b[l])
            for i in range(B):
                d = fexp[l] + frow[l, i] - floor
                if d < 0:
                    scale_row(H[l], i, _clamp(d))
                    frow[l, i] = floor - fexp[l]
                elif d > 0 and not row_nonzero(H[l], i):
                    frow[l, i] = floor - fexp[l]
        if bn:
            dense_forward(y, H[l], W[l], b[l])
            batchnorm_forward(y, Z[l], bn_mean[l], bn_rstd[l], y, gamma[l], beta[l], eps)
            z = y
        else:
            z = Z[l]
            matmul_forward(z, H[l], W[l])  # + b[l], fused into the activation's pass
        if rescale:  # row i of z_l is the mantissa of z_i 2^f[i]: one exponent per sample
            for i in range(B):
                f[i] = fexp[l] + frow[l, i]
        scaled = _needs_scaled(code, rescale)
        # the bias: fused into the activation's pass, or (rescaling with biases) b 2^-f[i] per row
        if row_bias:  # reference.bias_rows: ldexp's value (scale_row)
            for i in range(B):
                for j in range(N):
                    bz[i, j] = b[l, j]
                scale_row(bz, i, _clamp(-f[i]))
                for j in range(N):
                    z[i, j] += bz[i, j]
        nsat = _activation_forward_stats(H[l + 1], z, b[l], not bn and not row_bias, code, p, f, scaled,
                                         sat_threshold, alive)
        if not bn and not all_finite(z) and (dense_fix_rows(z, H[l], W[l], bz) if row_bias
                                             else dense_fix(z, H[l], W[l], b[l])):  # z now has its bias
            nsat = _activation_forward_stats(H[l + 1], z, b[l], False, code, p, f, scaled, sat_threshold, alive)
        end = k > 0 and (l + 1) % k == 0  # a skip's add holds the layer: no rescue there
        if rescale:
            if end:
                for i in range(B):
                    fs[i] = fexp[l + 1 - k] + frow[l + 1 - k, i]
                add_aligned_rows(H[l + 1], f, H[l + 1 - k], fs, alpha)
            else:
                rescue_forward_rows(H[l + 1], z, f, code, p)
            fexp[l + 1] = layer_rows(H[l + 1], f, nz, frow[l + 1])
        else:
            fexp[l + 1] = fexp[l]
            for i in range(B):
                frow[l + 1, i] = 0
            if end:
                add_aligned(H[l + 1], 0, H[l + 1 - k], 0, alpha)
        # statistics of h_{l+1} at the layer's exponent (moments' bits when every row is at it)
        m, s = moments_rows(H[l + 1], frow[l + 1], nz, sc)
        act_mean[l] = m
        act_std[l] = s
        # finite moments mean every entry is finite; otherwise look (a huge finite sum can overflow)
        saturation[l] = nsat / (B * N)
        ndead = 0
        for j in range(N):
            ndead += not alive[j]
        dead[l] = ndead / N
        if info[INFO_FORWARD] < 0 and not (math.isfinite(m) and math.isfinite(s)) and not all_finite(H[l + 1]):
            info[INFO_FORWARD] = l


@njit(**JIT)
def _finish(G, r, nz, l, clip, clip_mode, c, sig_m, sig_e, info, sc):
    """Normalise each row, clip (``clip``) and record dL/dh_l, now complete in G (row i at
    exponent r[i]): zero rows take E(rows), sig_e[l] = E(rows), sig_m[l] = ||scaled(G, sig_e[l])||.
    Returns whether the clip acted (1/0)."""
    E, acted = signal_rows(G, r, nz, clip_mode if clip else 0, c, sc)
    sig_e[l] = E
    sig_m[l] = math.sqrt(sumsq_rows(G, r, nz, E, sc))
    # a finite sum of squares means every entry is finite; otherwise look
    if info[INFO_BACKWARD] < 0 and not math.isfinite(sig_m[l]) and not all_finite(G):
        info[INFO_BACKWARD] = l
    return acted


@njit(**JIT)
def _prelu_dslope(da, z, r, q, w):
    """dL/dslope = sum over rows of 2**(r_i + q_i - w) sum_j da[i, j] min(z[i, j], 0), in float64,
    each term scaled and added in order (row i of da at r_i, of z at q_i, the sum at w: dW's)."""
    B, N = z.shape
    s = 0.0
    for i in range(B):
        d = _clamp(r[i] + q[i] - w)
        f = pow2(d) if -1074 <= d <= 1023 else 0.0  # 0: ldexp entry by entry
        for j in range(N):
            zz = z[i, j]
            m = zz if not (zz > 0) else _as(0.0, zz)  # min(z, 0), NaN stays NaN
            v = np.float64(da[i, j] * m)
            s += v * f if f != 0.0 else math.ldexp(v, int(d))
    return s


@njit(**JIT)
def _pair_exponent(r, q, nz, h, E):
    """dW's exponent (gradbench.reference.pair_top): the largest r[i] + q[i] over the rows where
    both dL/dz (nz) and h have an entry != 0; E (dL/dz's) where there is none."""
    w = np.int64(0)
    have = False
    for i in range(r.shape[0]):
        if nz[i] and (not have or r[i] + q[i] > w) and row_nonzero(h, i):
            w = r[i] + q[i]
            have = True
    return w if have else E


@njit(**JIT)
def _scale_rows_sum(dz, db, r, nz, E, q, w):
    """db = sum_B scaled(dz, E) (row i times 2**(r_i - E), rows in order) and, in place, dz row i
    times 2**min(r_i + q_i - w, 0): dW's rows (zero rows as they are; a row above w, whose h_i is
    0, not scaled up: reference.pair_rows, where 2^(r_i + q_i - w) could overflow and inf * 0
    read NaN). One factor per row where the two agree (every row when the forward's rows share
    one exponent), two where they differ."""
    B, N = dz.shape
    for j in range(N):
        db[j] = 0
    lo, hi = _pow2_range(dz)
    for i in range(B):
        d = _clamp(r[i] - E) if nz[i] else np.int64(0)
        dw = min(_clamp(r[i] + q[i] - w), np.int64(0)) if nz[i] else np.int64(0)
        if d != dw:  # db's row at E, dW's at w
            if lo <= d <= hi and lo <= dw <= hi:
                s1 = _as(pow2(d), dz[0, 0])
                s2 = _as(pow2(dw), dz[0, 0])
                for j in range(N):
                    v = dz[i, j]
                    db[j] += v * s1
                    dz[i, j] = v * s2
            else:
                for j in range(N):
                    v = dz[i, j]
                    db[j] += _ldexp(v, d)
                    dz[i, j] = _ldexp(v, dw)
            continue
        if d != 0 and not (lo <= d <= hi):
            scale_row(dz, i, d)
            d = 0
        s = _as(pow2(d), dz[0, 0])
        if d == 0:
            for j in range(N):
                db[j] += dz[i, j]
        else:
            for j in range(N):
                v = dz[i, j] * s
                dz[i, j] = v
                db[j] += v


@njit(**JIT)
def stack_backward_kernel(icfg, fcfg, W, gamma, beta, slope, H, Z, bn_rstd, fexp, frow, G, row_e, dW, db,
                          dgamma, dbeta, dslope, sig_m, sig_e, gnorm_m, gnorm_e, dz_e, dw_e, clip_acted, info):
    """Backward through all L layers with the power-of-two rescaled chain, one exponent per row
    of the signal.  G (B,N) holds dL/dh_L on entry (row i at 2**(sig_e[L] + row_e[i])) and
    dL/dh_0 on exit (row i at 2**(sig_e[0] + row_e[i])); frow (L+1,B) the forward's rows'
    exponents (row i of h_l and z_l at fexp[l] + frow[l, i]); dW (L,N,N), db/dgamma/dbeta (L,N),
    dslope (L,), sig_m/sig_e (L+1,), gnorm_m/gnorm_e/dz_e/dw_e (L,), clip_acted (L+1,: entry L
    the caller's)"""
    code = icfg[I_ACT]
    bn = icfg[I_BN] != 0
    k = icfg[I_RESIDUAL]
    clip_mode = icfg[I_CLIP]
    rescale = icfg[I_RESCALE_FWD] != 0
    c = fcfg[F_CLIP]
    param = fcfg[F_ACT_PARAM]
    alpha = _as(fcfg[F_RES_SCALE], G[0, 0])
    L, B, N = Z.shape
    info[INFO_BACKWARD] = -1
    dz = np.empty_like(G)  # workspace, allocated once
    zl = np.empty_like(G)
    skip = np.zeros_like(G)
    r = np.empty(B, dtype=np.int64)  # row i of G is G[i] * 2**r[i]
    skip_r = np.zeros(B, dtype=np.int64)
    rp = np.empty(B, dtype=np.int64)  # PReLU under batch norm: da's rows' exponents
    f = np.zeros(B, dtype=np.int64)  # the forward's rows' absolute exponents (z_l's rows)
    nz = np.empty(B, dtype=np.bool_)  # rows with an entry != 0
    sc = np.empty(B)  # the norms' row factors
    for i in range(B):
        r[i] = sig_e[L] + row_e[i]
    # the caller normalised and clipped the top signal: normalise (a no-op) and record only
    _finish(G, r, nz, L, False, clip_mode, c, sig_m, sig_e, info, sc)
    for l in range(L - 1, -1, -1):
        p = np.float64(slope[l]) if code == PRELU else param
        q = frow[l]  # row i of h_l (and of z_l) at fexp[l] + q[i]
        end = k > 0 and (l + 1) % k == 0
        if end:  # end of a group: dL/dh_{l+1} also flows down the skip
            for i in range(B):
                skip_r[i] = r[i]
                for j in range(N):
                    skip[i, j] = G[i, j]
                    G[i, j] *= alpha
        if bn:
            gl = gamma[l]
            bl = beta[l]
            Zl = Z[l]
            for i in range(B):
                for j in range(N):
                    zl[i, j] = gl[j] * Zl[i, j] + bl[j]
            z = zl
        else:
            z = Z[l]
        if rescale:
            for i in range(B):
                f[i] = fexp[l] + q[i]
        scaled = _needs_scaled(code, rescale)
        _activation_backward(dz, db[l], False, G, z, code, p, f, scaled)
        rows_nonzero(dz, nz)
        rescue_saturated_rows(dz, G, z, code, p, f, scaled, r, nz)
        E = rows_exponent(r, nz)
        if bn:  # batch norm couples the rows: all at E
            for i in range(B):
                rp[i] = r[i]
                if nz[i]:
                    scale_row(dz, i, _clamp(r[i] - E))
                r[i] = E
            batchnorm_backward(dz, dgamma[l], dbeta[l], dz, Z[l], bn_rstd[l], gamma[l])
            rows_nonzero(dz, nz)
            E = rows_exponent(r, nz)
        else:
            for j in range(N):
                dgamma[l, j] = 0
                dbeta[l, j] = 0
            if code != PRELU:  # (reference.DZ_FAR_EXP: PReLU's slope gradient shares dW's exponent)
                far_rows(dz, r, nz)  # a row far from 1 in [0.5, 1): dz W_l neither under- nor overflows
                E = rows_exponent(r, nz)
        w = _pair_exponent(r, q, nz, H[l], E)  # dW = sum_i dz_i^T h_i at 2**(fexp[l] + w)
        # PReLU is never rescued: da's rows are at r (before batch norm's common exponent)
        dslope[l] = _prelu_dslope(G, z, rp if bn else r, q, w) if code == PRELU else 0.0
        matmul_dh(G, dz, W[l])  # the rows at their own exponents r
        _scale_rows_sum(dz, db[l], r, nz, E, q, w)  # db at E, dW at w
        matmul_dw(dW[l], dz, H[l])
        nm, ne = norm_scaled(dW[l])
        gnorm_m[l] = nm
        gnorm_e[l] = w + fexp[l] + ne
        dz_e[l] = E
        dw_e[l] = w
        if k > 0 and l % k == 0:  # start of a group: add the skip path
            add_aligned_rows(G, r, skip, skip_r, 1.0)
        clip_acted[l] = _finish(G, r, nz, l, True, clip_mode, c, sig_m, sig_e, info, sc)
    for i in range(B):
        row_e[i] = r[i] - sig_e[0]
