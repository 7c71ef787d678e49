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
from .chain import add_aligned, all_finite, clip_signal_acted, moments, norm_scaled, normalise, sumsq
from .layers import (
    _activation_backward, _activation_forward_stats, batchnorm_backward, batchnorm_forward, dense_backward,
    dense_fix, dense_forward, matmul_backward, matmul_forward, rescue_forward, rescue_saturated,
)


@njit(**JIT)
def _needs_scaled(code, rescale):
    """Forward rescaling of an activation that is not positively homogeneous: phi_scaled."""
    return rescale and not (code == IDENTITY or code == RELU or code == LEAKY or code == PRELU)


@njit(**JIT)
def stack_forward_kernel(icfg, fcfg, W, b, gamma, beta, slope, H, Z, bn_mean, bn_rstd, fexp,
                         act_mean, act_std, saturation, dead, info):
    """Forward through all L layers.  W (L,N,N), b/gamma/beta (L,N), slope (L,), H (L+1,B,N),
    Z (L,B,N), bn_mean/bn_rstd (L,N), fexp (L+1,), statistics (L,), info (>=1,)"""
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
    for l in range(L):
        p = np.float64(slope[l]) if code == PRELU else param
        if code == PRELU:  # abi.saturation_threshold of the slope that runs, rounded to the dtype
            sat_threshold = np.float64(_as(0.01 * max(1.0, abs(p)), H[0, 0, 0]))
        if bn:
            dense_forward(y, H[l], W[l], b[l])
            batchnorm_forward(y, Z[l], bn_mean[l], bn_rstd[l], y, gamma[l], beta[l], eps)
            z = y
        else:
            z = Z[l]
            matmul_forward(z, H[l], W[l])  # + b[l], fused into the activation's pass
        nsat = _activation_forward_stats(H[l + 1], z, b[l], not bn, code, p, fexp[l],
                                         _needs_scaled(code, rescale), sat_threshold, alive)
        if not bn and not all_finite(z) and dense_fix(z, H[l], W[l], b[l]):  # z now has its bias
            nsat = _activation_forward_stats(H[l + 1], z, b[l], False, code, p, fexp[l],
                                             _needs_scaled(code, rescale), sat_threshold, alive)
        fexp[l + 1] = fexp[l]
        if rescale and not (k > 0 and (l + 1) % k == 0):  # a skip's add holds the layer otherwise
            fexp[l + 1] = rescue_forward(H[l + 1], z, fexp[l], code, p)
        if k > 0 and (l + 1) % k == 0:
            fexp[l + 1] = add_aligned(H[l + 1], fexp[l], H[l + 1 - k], fexp[l + 1 - k], alpha)
        if rescale:
            fexp[l + 1] += normalise(H[l + 1])
        m, s = moments(H[l + 1])
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
def _finish(G, l, clip_mode, c, sig_m, sig_e, info):
    """Normalise, clip and record dL/dh_l, now complete in G; returns whether the clip acted (1/0)."""
    e = sig_e[l] + normalise(G)
    acted = np.int64(0)
    if clip_mode != 0:
        e, acted = clip_signal_acted(G, e, clip_mode, c)
        e += normalise(G)
    sig_e[l] = e
    sig_m[l] = math.sqrt(sumsq(G))
    # a finite sum of squares means every entry is finite; otherwise look
    if info[INFO_BACKWARD] < 0 and not math.isfinite(sig_m[l]) and not all_finite(G):
        info[INFO_BACKWARD] = l
    return acted


@njit(**JIT)
def stack_backward_kernel(icfg, fcfg, W, gamma, beta, slope, H, Z, bn_rstd, fexp, G, dW, db,
                          dgamma, dbeta, dslope, sig_m, sig_e, gnorm_m, gnorm_e, dz_e, clip_acted, info):
    """Backward through all L layers with the power-of-two rescaled chain.  G (B,N) holds
    dL/dh_L on entry and dL/dh_0 on exit; dW (L,N,N), db/dgamma/dbeta (L,N), dslope (L,),
    sig_m/sig_e (L+1,), gnorm_m/gnorm_e/dz_e (L,), clip_acted (L+1,: entry L the caller's)"""
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
    skip_e = np.int64(0)
    # the caller normalised and clipped the top signal: normalise (a no-op) and record only
    _finish(G, L, 0, c, sig_m, sig_e, info)
    for l in range(L - 1, -1, -1):
        e = sig_e[l + 1]
        p = np.float64(slope[l]) if code == PRELU else param
        end = k > 0 and (l + 1) % k == 0
        if end:  # end of a group: dL/dh_{l+1} also flows down the skip
            skip_e = e
            for i in range(B):
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
        # without batch norm db = sum_B dz is summed in the activation's pass
        dslope[l] = _activation_backward(dz, db[l], not bn, G, z, code, p, fexp[l], _needs_scaled(code, rescale))
        e += rescue_saturated(dz, db[l], not bn, G, z, code, p, fexp[l], _needs_scaled(code, rescale))
        if bn:
            batchnorm_backward(dz, dgamma[l], dbeta[l], dz, Z[l], bn_rstd[l], gamma[l])
            dense_backward(G, dW[l], db[l], dz, H[l], W[l])
        else:
            for j in range(N):
                dgamma[l, j] = 0
                dbeta[l, j] = 0
            matmul_backward(G, dW[l], dz, H[l], W[l])
        nm, ne = norm_scaled(dW[l])
        gnorm_m[l] = nm
        gnorm_e[l] = e + fexp[l] + ne
        dz_e[l] = e
        sig_e[l] = e
        if k > 0 and l % k == 0:  # start of a group: add the skip path
            sig_e[l] = add_aligned(G, e, skip, skip_e, 1.0)
        clip_acted[l] = _finish(G, l, clip_mode, c, sig_m, sig_e, info)
