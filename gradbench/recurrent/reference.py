"""The NumPy reference of the recurrent cells: plain, readable, the oracle of the other backends.

Dimension letters: T steps, B batch, N hidden units, D inputs, GN = G * N gate rows. Per cell a
step pair ``<cell>_step_forward`` / ``<cell>_step_backward`` (arguments: outputs, saved values,
inputs, parameters) and the drivers ``rnn_forward``, ``rnn_backward``, ``lstm_forward``, ...
over the arrays of :mod:`gradbench.recurrent.abi` (validated by :func:`gradbench.abi.check`
before the trusting ``*_kernel`` runs). The Numba and C backends compute the same things.

Forward
    The input projection of all steps is one matrix product, ``U = X W_ih^T + b`` (T, B, GN);
    each step adds only the recurrent product ``h_{t-1} W_hh^T``. The forward saves what the
    backward needs: the states, the pre-activations ``Z`` (the vanilla cell's z_t, the gates'; the
    backward recomputes phi'(z_t), the gate values and their derivatives from them, half the
    memory of saving both), the LSTM's cell states, the GRU's ``h_{t-1} W_hn^T + b_hn``. Every
    derivative is :func:`gradbench.activations.dphi` at the pre-activation (right in saturation,
    not 1 - tanh^2 rounded to 0). Per step it records the mean and standard deviation
    of h_t, the saturated fraction of the activation entries, the mean forget gate (LSTM) or
    update gate (GRU) and the fraction of them below 0.1, and the first non-finite step.

The exact chain through time
    The backward state (dL/dh_t, and for the LSTM the part of dL/dc_t carried back through
    c_{t+1}) carries one int64 exponent per row (sample), as a stack's backward signal does
    (:func:`gradbench.reference.signal_rows`): after every step each row (G[i] with GC[i]) is
    scaled by one power of two so that its max|.| lies in [0.5, 1) (exact); ``sig_e[j]`` is
    the largest non-zero row's exponent and ``row_e`` the rows' exponents relative to it on entry
    and exit. So a sample 10^-400 below another at some step keeps its own chain. Signal
    clipping acts on the true magnitudes (:func:`gradbench.reference.clip_rows`: by value each
    row, by norm the batch's; ``clip_acted[j]``: whether it changed the state at H[j], by its own
    test; the caller clips the top state and keeps its flag). A vanilla row whose every
    dz_t = dL/dh_t phi'(z_t) lies below ``RESCUE_BELOW`` (every unit saturated beyond the dtype:
    tanh'(z) underflows float64 beyond |z| ~ 354) is taken in log form as the stacks' saturated
    rows are (:func:`gradbench.reference.rescue_rows`), its power of two added to the row's
    exponent, so the signal below it stays exact (down to 2^(-2^62)); a vanilla row of dz_t far
    from 1 is brought to [0.5, 1) before it meets W_hh (:func:`gradbench.reference.far_rows`; the
    gated cells' state row holds dz W_hh beside dL/dc_t or the GRU's g z at one exponent, so
    theirs is not). The LSTM's recorded
    ||dL/dc_t|| is that of the total, the carried part plus dL/dh_t o_t tanh'(c_t). A parameter
    gradient is a sum over the steps and the rows of terms with different exponents: a step's
    sum over its rows is taken at the largest exponent among them (for dW_ih and dW_hh among the
    rows whose x_t or h_{t-1} is non-zero too: :func:`gradbench.reference.pair_top`; each row far
    from 1 first brought to [0.5, 1), :func:`gradbench.reference.far_rows`), and the
    steps' sums go into a running (mantissa, exponent) accumulator, each term brought to the
    larger exponent before it is added (the residual-add rule of the stacks), so the total is
    right to rounding at any length. Zero terms are skipped (they would only move the
    accumulator's exponent). The every-step loss adds its direct gradient dL/dh_t (exponent 0)
    to each row of the state by the same rule (:func:`loss_exponents`).

Forward exponents (vanilla cells with identity, relu or leaky_relu)
    ``h_t = H[t+1] * 2**fexp[t+1]``: the pre-activation is formed at the larger of the input's
    exponent (0) and the state's, ``z = 2**-e U_t + 2**(fexp[t]-e) h_{t-1}W_hh^T`` with
    ``e = max(0, fexp[t])``, the activation commutes with the power of two, and h_t is
    normalised. So an exploding or vanishing linear/ReLU state is exact at any length (the
    input's share rounds away when the state is 2^1000 times larger, as in plain arithmetic).
    tanh, sigmoid and the gated cells have |h| <= 1; elu, selu, swish and gelu vanilla cells are
    not rescaled, and where they overflow the first non-finite step is reported.
"""

from __future__ import annotations

import math

import numpy as np

from gradbench import abi
from gradbench.abi import CLIP_NONE, EXP_CLAMP, INFO_BACKWARD, INFO_FORWARD
from gradbench.activations import dphi, phi
from gradbench.recurrent.abi import (
    DE_B_HH, DE_B_IH, DE_W_HH, DE_W_IH, EXP_EMPTY, RF_ACT_PARAM, RF_CLIP, RF_GATE_LOW, RF_SAT, RF_SAT_GATE,
    RI_ACT, RI_CLIP, RI_LOSS_EVERY, RI_RESCALE_FWD,
)
from gradbench.reference import (
    far_rows, nonzero_rows, norm_scaled, normalise, pair_rows, pair_top, rescue_rows, row_shift,
    row_top, scaled_rows, signal_rows,
)

SIGMOID, TANH = abi.ACT_CODE["sigmoid"], abi.ACT_CODE["tanh"]


def _ldexp(x: np.ndarray, e: int) -> np.ndarray:
    return np.ldexp(x, min(max(int(e), -EXP_CLAMP), EXP_CLAMP))  # (np.clip of a scalar costs 10 us)


# ------------------------------------------------------------------ shared pieces
def input_projection(U, X, W_ih, bias):
    """U = X W_ih^T + bias for all steps at once.    U (T,B,GN), X (T,B,D), W_ih (GN,D), bias (GN,)"""
    np.matmul(X, W_ih.T, out=U)
    U += bias


def accumulate(acc: np.ndarray, E: int, term: np.ndarray, e: int) -> int:
    """acc * 2**E + term * 2**e written into acc at the larger exponent; returns it.

    ``E == EXP_EMPTY``: acc holds nothing yet and becomes the term; an all-zero term is skipped.
    """
    if not np.any(term):
        return E
    if E == EXP_EMPTY:
        acc[...] = term
        return e
    em = max(E, e)
    if E != em:
        acc[...] = _ldexp(acc, E - em)
    acc += term if e == em else _ldexp(term, e - em)
    return em


def loss_exponents(r: np.ndarray, state: np.ndarray, dh: np.ndarray) -> np.ndarray:
    """The rows' exponents of G 2**r + dh (the state's rows, ``state`` the joint [G | GC]
    rows): the larger of r[i] and max|dh[i]|'s (NaN ignored; 0 when that is not finite), so
    that neither part is scaled below the float range (a carried pass's dh is all zero; its G
    of 2^-2000 was scaled by 2^-2000 into 0); a row of zeros on one side takes the other's."""
    with np.errstate(invalid="ignore"):
        m = np.fmax.reduce(np.abs(dh), axis=1, initial=0.0)
    q = np.frexp(m)[1].astype(np.int64) * np.isfinite(m)
    return np.where(~nonzero_rows(state), q, np.where(~nonzero_rows(dh), r, np.maximum(r, q)))


def add_loss_gradient(G, GC, r, dh):
    """G * 2**r + dh * 2**0 (the every-step loss's direct gradient) row by row at
    :func:`loss_exponents`, into G and r; GC (the LSTM's dL/dc, sharing G's rows' exponents;
    None otherwise) moves with G."""
    em = loss_exponents(r, G if GC is None else np.concatenate([G, GC], axis=1), dh)
    G[...] = np.ldexp(dh, row_shift(-em)) + np.ldexp(G, row_shift(r - em))
    if GC is not None:
        GC[...] = np.ldexp(GC, row_shift(r - em))
    r[...] = em


def finish_state(G, GC, r, j, clip_mode, c, sig_m, sig_e, csig_m, info, clip_acted=None):
    """Normalise each row (jointly with GC's), clip and record dL/dH[j] (complete in G, row i at
    2**r[i]): :func:`gradbench.reference.signal_rows` on the joint rows [G | GC].

    sig_e[j] is the largest non-zero row's exponent, sig_m[j] the norm of G's rows at it;
    csig_m[j] gets ||GC||, the part of dL/dC[j] carried through C[j+1]: the LSTM's backward
    replaces it by the total's norm (lstm_backward_kernel) except at j = 0, where it is the total.
    clip_acted[j] (unless None: the top's is the caller's) gets whether the clip changed the state
    [G | GC], by its own test (:func:`gradbench.reference.clip_rows`); 0 without a clip."""
    g = G if GC is None else np.concatenate([G, GC], axis=1)
    e, acted = signal_rows(g, r, clip_mode, c)
    if clip_acted is not None:
        clip_acted[j] = acted
    if GC is not None:
        N = G.shape[1]
        G[...], GC[...] = g[:, :N], g[:, N:]
        csig_m[j] = rows_norm(GC, r, e)
    sig_e[j] = e
    sig_m[j] = rows_norm(G, r, e)
    if info[INFO_BACKWARD] < 0 and not np.all(np.isfinite(g)):
        info[INFO_BACKWARD] = j


def record_forward(t, h, act_mean, act_std, info):
    h64 = h.astype(np.float64)
    act_mean[t] = h64.mean()
    act_std[t] = np.sqrt(((h64 - act_mean[t]) ** 2).mean())
    if info[INFO_FORWARD] < 0 and not np.all(np.isfinite(h)):
        info[INFO_FORWARD] = t


def rows_norm(X: np.ndarray, r: np.ndarray, e: int) -> float:
    """||X|| of rows X[i] 2**(r[i] - e), as one float64 with no square lost to underflow (a joint
    exponent can leave dL/dh or the LSTM's dL/dc 10^-200 below the other part)."""
    m, k = norm_scaled(scaled_rows(X.astype(np.float64), r, e))
    return float(np.ldexp(m, k))


def step_norm(dz: np.ndarray, hp: np.ndarray) -> tuple[float, int]:
    """||dz^T h_{t-1}||_F = m * 2**e, nothing lost to underflow or overflow: dz and hp scaled by
    the powers of two of their largest entries (exact) and the product formed in float64; its
    norm by :func:`gradbench.reference.norm_scaled`, scaled where the squares would under- or
    overflow (a sample 10^200 below the batch's largest h_{t-1}, whose share of the product is
    10^-213, read 0)."""
    ez, eh = 0, 0
    with np.errstate(invalid="ignore"):
        az, ah = float(np.max(np.abs(dz), initial=0.0)), float(np.max(np.abs(hp), initial=0.0))
    if az > 0 and ah > 0 and math.isfinite(az) and math.isfinite(ah):
        ez, eh = int(np.frexp(az)[1]), int(np.frexp(ah)[1])
    zs = np.ldexp(dz.astype(np.float64), -ez)
    hs = np.ldexp(hp.astype(np.float64), -eh)
    m, k = norm_scaled(zs.T @ hs)
    return math.ldexp(m, k), ez + eh


def accumulate_step(dW_ih, dW_hh, db_ih, db_hh, dexp, gnorm_m, gnorm_e, t, dzx, dzh, x, hp, r, f):
    """Step t's parameter-gradient terms (dzx for W_ih/b_ih, dzh for W_hh/b_hh; row i at
    2**r[i]) into the accumulators, each a sum over the rows taken at the largest exponent of the
    rows it adds (:func:`gradbench.reference.pair_top`; x's rows at 0, h_{t-1}'s at f = fexp[t]).
    The W_hh term's norm from dzh as it is; the sums from copies whose rows far from 1 are in
    [0.5, 1) (:func:`gradbench.reference.far_rows`), so that they meet x_t and h_{t-1} unflushed."""
    zero = np.zeros_like(r)
    wh = pair_top(dzh, r, hp, zero)
    m, e_n = step_norm(pair_rows(dzh, r, wh), hp)
    gnorm_m[t], gnorm_e[t] = m, wh + f + e_n
    # Rows far from 1 (a gate's or phi's derivative of 1e-174 times the normalised state) brought
    # to [0.5, 1) by a power of two, their exponents added to the rows' (far_rows, the stacks'
    # rule), before they meet x_t and h_{t-1}: dz 2^-580 times h 1e-174 underflowed to 0 in the
    # products. Copies: the gated cells' dz W_hh takes dz as it is (the vanilla cell's rows are
    # brought there already, rnn_step_backward). dzx and dzh (the GRU's differ in
    # the n block) each their own.
    sx = dzx.copy()
    rx = r + far_rows(sx)
    if dzh is dzx:
        sh, rh = sx, rx
    else:
        sh = dzh.copy()
        rh = r + far_rows(sh)
    wx, wh = pair_top(sx, rx, x, zero), pair_top(sh, rh, hp, zero)
    bx, bh = row_top(sx, rx), row_top(sh, rh)
    dzx, dzh = sx, sh
    zh = pair_rows(dzh, rh, wh)
    dexp[DE_W_HH] = accumulate(dW_hh, int(dexp[DE_W_HH]), zh.T @ hp, wh + f)
    dexp[DE_W_IH] = accumulate(dW_ih, int(dexp[DE_W_IH]), pair_rows(dzx, rx, wx).T @ x, wx)
    dexp[DE_B_IH] = accumulate(db_ih, int(dexp[DE_B_IH]), scaled_rows(dzx, rx, bx).sum(axis=0), bx)
    dexp[DE_B_HH] = accumulate(db_hh, int(dexp[DE_B_HH]), scaled_rows(dzh, rh, bh).sum(axis=0), bh)


# ------------------------------------------------------------------ vanilla rnn
def rnn_step_forward(h, z, code, param):
    """h_t = phi(z); returns phi'(z) (for the saturation statistic).    h, z (B,N)"""
    h[...] = phi(z, code, param)
    return dphi(z, code, param)


def rnn_step_backward(dz, g, z, code, param) -> np.ndarray:
    """dz = dL/dh_t * phi'(z_t), each row whose every entry lies below ``RESCUE_BELOW`` in log
    form (:func:`gradbench.reference.rescue_rows`), then each row far from 1 brought to [0.5, 1)
    (:func:`gradbench.reference.far_rows`: phi' of 1e-174 times the normalised state, which dz
    W_hh of 1e-200 flushed to 0); returns the rows' shifts k (B,) (row i of dz's true value is
    dz[i] * 2**(r[i] + k[i]); 0 where neither acted).    dz, g, z (B,N)"""
    dz[...] = g * dphi(z, code, param)
    k = rescue_rows(dz, g, z, code, param)
    return k + far_rows(dz)


def rnn_forward_kernel(icfg, fcfg, X, W_ih, W_hh, b_ih, b_hh, H, Z, fexp, act_mean, act_std, saturation,
                       gate_mean, gate_low, info):
    """The vanilla cell through T steps (module docstring)."""
    code, param, rescale = int(icfg[RI_ACT]), fcfg[RF_ACT_PARAM], bool(icfg[RI_RESCALE_FWD])
    T = X.shape[0]
    info[INFO_FORWARD] = -1
    input_projection(Z, X, W_ih, b_ih + b_hh)  # U is kept in Z until step t overwrites Z[t] with z_t
    for t in range(T):
        P = H[t] @ W_hh.T
        if rescale:
            e = max(0, int(fexp[t]))
            Z[t] = _ldexp(Z[t], -e) + _ldexp(P, int(fexp[t]) - e)
        else:
            e = int(fexp[t])
            Z[t] += P
        da = rnn_step_forward(H[t + 1], Z[t], code, param)
        fexp[t + 1] = e + (normalise(H[t + 1]) if rescale else 0)
        saturation[t] = np.mean(np.abs(da) < fcfg[RF_SAT])
        gate_mean[t] = gate_low[t] = np.nan
        record_forward(t, H[t + 1], act_mean, act_std, info)


def rnn_backward_kernel(icfg, fcfg, X, W_hh, H, Z, fexp, DH, G, row_e, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m,
                        sig_e, gnorm_m, gnorm_e, clip_acted, info):
    """Backward through T steps of the vanilla cell (module docstring)."""
    clip_mode, c, every = int(icfg[RI_CLIP]), float(fcfg[RF_CLIP]), bool(icfg[RI_LOSS_EVERY])
    code, param = int(icfg[RI_ACT]), fcfg[RF_ACT_PARAM]
    T = X.shape[0]
    info[INFO_BACKWARD] = -1
    r = int(sig_e[T]) + row_e.astype(np.int64)  # row i of the state is G[i] * 2**r[i]
    finish_state(G, None, r, T, CLIP_NONE, c, sig_m, sig_e, None, info)  # the caller clipped it
    dz = np.empty_like(G)
    for t in range(T - 1, -1, -1):
        r += rnn_step_backward(dz, G, Z[t], code, param)
        accumulate_step(dW_ih, dW_hh, db_ih, db_hh, dexp, gnorm_m, gnorm_e, t, dz, dz, X[t], H[t], r, int(fexp[t]))
        np.matmul(dz, W_hh, out=G)
        if every:
            add_loss_gradient(G, None, r, DH[t])
        finish_state(G, None, r, t, clip_mode, c, sig_m, sig_e, None, info, clip_acted)
    row_e[...] = r - sig_e[0]


# ------------------------------------------------------------------ lstm
def gates(z, codes, N):
    """The gate values and their derivatives at z, block by block (codes: one per N-block).

    a, da (B, G N) = phi(z), phi'(z) (phi' from z, right in saturation).
    """
    a, da = np.empty_like(z), np.empty_like(z)
    for k, code in enumerate(codes):
        zk = z[:, k * N:(k + 1) * N]
        a[:, k * N:(k + 1) * N] = phi(zk, code, 0.0)
        da[:, k * N:(k + 1) * N] = dphi(zk, code, 0.0)
    return a, da


LSTM_GATES = (SIGMOID, SIGMOID, TANH, SIGMOID)
GRU_GATES = (SIGMOID, SIGMOID, TANH)


def lstm_step_forward(h, c, z, c_prev, N):
    """Gates i, f, g, o of z, c_t = f c_{t-1} + i g, h_t = o tanh(c_t); returns (a, da) of the gates.

    h, c, c_prev (B,N); z (B,4N)
    """
    a, da = gates(z, LSTM_GATES, N)
    i, f, g, o = (a[:, k * N:(k + 1) * N] for k in range(4))
    c[...] = f * c_prev + i * g
    h[...] = o * phi(c, TANH, 0.0)
    return a, da


def lstm_step_backward(dz, gc_prev, g, gc, z, c, c_prev, N):
    """dz (B,4N) and the part of dL/dc_{t-1} carried through c_t, from dL/dh_t = g and the part of
    dL/dc_t carried through c_{t+1}, gc; the gates are recomputed from z. Returns dc, the total
    dL/dc_t (what reaches c_t through h_t and through c_{t+1}).

    dc = gc + g o tanh'(c_t); dz_i = dc g~ i', dz_f = dc c_{t-1} f', dz_g = dc i g~',
    dz_o = g tanh(c_t) o'; gc_prev = dc f.    gc_prev, g, gc, c, c_prev (B,N); dz, z (B,4N)
    """
    a, da = gates(z, LSTM_GATES, N)
    i, f, gg, o = (a[:, k * N:(k + 1) * N] for k in range(4))
    di, df, dg, do = (da[:, k * N:(k + 1) * N] for k in range(4))
    tc, dtc = phi(c, TANH, 0.0), dphi(c, TANH, 0.0)
    dc = gc + g * o * dtc
    dz[:, 0 * N:1 * N] = dc * gg * di
    dz[:, 1 * N:2 * N] = dc * c_prev * df
    dz[:, 2 * N:3 * N] = dc * i * dg
    dz[:, 3 * N:4 * N] = g * tc * do
    gc_prev[...] = dc * f
    return dc


def _gate_stats(t, gate, da, fcfg, N, tanh_block, saturation, gate_mean, gate_low):
    """Saturation over all gate entries (sigmoid' < RF_SAT_GATE, tanh' < RF_SAT), the mean of
    ``gate`` (forget or update gate) and the fraction of it below RF_GATE_LOW."""
    sat = da < fcfg[RF_SAT_GATE]
    sat[:, tanh_block * N:(tanh_block + 1) * N] = da[:, tanh_block * N:(tanh_block + 1) * N] < fcfg[RF_SAT]
    saturation[t] = np.mean(sat)
    g64 = gate.astype(np.float64)
    gate_mean[t] = g64.mean()
    gate_low[t] = np.mean(g64 < fcfg[RF_GATE_LOW])


def lstm_forward_kernel(icfg, fcfg, X, W_ih, W_hh, b_ih, b_hh, H, C, Z, act_mean, act_std, saturation, gate_mean,
                        gate_low, info):
    """The LSTM through T steps (module docstring)."""
    T, N = X.shape[0], W_hh.shape[1]
    info[INFO_FORWARD] = -1
    input_projection(Z, X, W_ih, b_ih + b_hh)  # U, then z_t = U_t + h_{t-1} W_hh^T step by step
    for t in range(T):
        Z[t] = Z[t] + H[t] @ W_hh.T
        a, da = lstm_step_forward(H[t + 1], C[t + 1], Z[t], C[t], N)
        _gate_stats(t, a[:, N:2 * N], da, fcfg, N, 2, saturation, gate_mean, gate_low)
        record_forward(t, H[t + 1], act_mean, act_std, info)


def lstm_backward_kernel(icfg, fcfg, X, W_hh, H, C, Z, DH, G, GC, row_e, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m,
                         sig_e, csig_m, gnorm_m, gnorm_e, clip_acted, info):
    """Backward through T steps of the LSTM; row i of G and of GC share one exponent (module docstring).

    GC holds the part of dL/dC[j] carried back through C[j+1] (0 at j = T on entry, the whole of
    dL/dC[0] on exit). csig_m[j] is the norm of the total dL/dC[j], the carried part plus
    dL/dH[j] o_{j-1} tanh'(C[j]) (o_{j-1} the output gate of step j-1), at exponent sig_e[j]:
    step j-1 computes it (dc) from the state finished at j and overwrites the carried part's
    norm that finish_state wrote. csig_m[0] keeps the carried part: the whole of dL/dc_{-1} at
    the start of the sequence (h_{-1} does not depend on c_{-1}); at a later segment's start
    the segment before it (run next) overwrites it.
    """
    clip_mode, c, every = int(icfg[RI_CLIP]), float(fcfg[RF_CLIP]), bool(icfg[RI_LOSS_EVERY])
    T, N = X.shape[0], W_hh.shape[1]
    info[INFO_BACKWARD] = -1
    r = int(sig_e[T]) + row_e.astype(np.int64)  # row i of G and of GC at 2**r[i]
    finish_state(G, GC, r, T, CLIP_NONE, c, sig_m, sig_e, csig_m, info)
    dz = np.empty((G.shape[0], 4 * N), dtype=G.dtype)
    for t in range(T - 1, -1, -1):
        dc = lstm_step_backward(dz, GC, G, GC, Z[t], C[t + 1], C[t], N)
        csig_m[t + 1] = rows_norm(dc, r, int(sig_e[t + 1]))  # the total dL/dC[t+1]
        accumulate_step(dW_ih, dW_hh, db_ih, db_hh, dexp, gnorm_m, gnorm_e, t, dz, dz, X[t], H[t], r, 0)
        np.matmul(dz, W_hh, out=G)
        if every:
            add_loss_gradient(G, GC, r, DH[t])
        finish_state(G, GC, r, t, clip_mode, c, sig_m, sig_e, csig_m, info, clip_acted)
    row_e[...] = r - sig_e[0]


# ------------------------------------------------------------------ gru
def one_minus(s, ds):
    """1 - s of a sigmoid gate s without cancellation: s'/s = 1 - s where s > 1/2 (s' taken at the
    pre-activation: right when 1 - s is below s's rounding, 4e-18 at a pre-activation of 40,
    where 1 - s reads 0), else 1 - s itself."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s > 0.5, ds / s, 1 - s).astype(s.dtype)


def gru_step_forward(h, zs, hn, u, p, h_prev, b_hn, N):
    """r, z = sigma(u + p) of the first two blocks, hn = p_n + b_hn, n = tanh(u_n + r hn),
    h_t = (1 - z) n + z h_{t-1} (1 - z by :func:`one_minus`); zs = the pre-activations [z_r, z_z, z_n]; returns (a, da).

    h, hn, h_prev (B,N); zs, u, p (B,3N); b_hn (N,)
    """
    zs[:, :2 * N] = u[:, :2 * N] + p[:, :2 * N]
    hn[...] = p[:, 2 * N:] + b_hn
    r = phi(zs[:, :N], SIGMOID, 0.0)
    zs[:, 2 * N:] = u[:, 2 * N:] + r * hn
    a, da = gates(zs, GRU_GATES, N)
    z, n = a[:, N:2 * N], a[:, 2 * N:]
    h[...] = one_minus(z, da[:, N:2 * N]) * n + z * h_prev
    return a, da


def gru_step_backward(dzx, dzh, g, zs, hn, h_prev, N):
    """The pre-activation gradients of step t from dL/dh_t = g (gates recomputed from zs): dzx
    for W_ih and b_ih, dzh for W_hh and b_hh (they differ in the n block: r multiplies
    h W_hn^T + b_hn only); returns z (dL/dh_{t-1} gets g z directly).

    dn = g (1 - z) n', dz = g (h_{t-1} - n) z', dr = dn hn r'; dzx = [dr, dz, dn],
    dzh = [dr, dz, dn r].    dzx, dzh, zs (B,3N); g, hn, h_prev (B,N)
    """
    a, da = gates(zs, GRU_GATES, N)
    r, z, n = a[:, :N], a[:, N:2 * N], a[:, 2 * N:]
    dr_, dz_, dn_ = da[:, :N], da[:, N:2 * N], da[:, 2 * N:]
    dn = g * one_minus(z, dz_) * dn_
    dzx[:, :N] = dn * hn * dr_
    dzx[:, N:2 * N] = g * (h_prev - n) * dz_
    dzx[:, 2 * N:] = dn
    dzh[:, :2 * N] = dzx[:, :2 * N]
    dzh[:, 2 * N:] = dn * r
    return z


def gru_forward_kernel(icfg, fcfg, X, W_ih, W_hh, b_ih, b_hh, H, Z, HN, act_mean, act_std, saturation, gate_mean,
                       gate_low, info):
    """The GRU through T steps (module docstring)."""
    T, N = X.shape[0], W_hh.shape[1]
    info[INFO_FORWARD] = -1
    bias = b_ih.copy()
    bias[:2 * N] += b_hh[:2 * N]  # b_hn stays inside r * (h W_hn^T + b_hn)
    input_projection(Z, X, W_ih, bias)  # U, replaced step by step by the pre-activations
    for t in range(T):
        a, da = gru_step_forward(H[t + 1], Z[t], HN[t], Z[t].copy(), H[t] @ W_hh.T, H[t], b_hh[2 * N:], N)
        _gate_stats(t, a[:, N:2 * N], da, fcfg, N, 2, saturation, gate_mean, gate_low)
        record_forward(t, H[t + 1], act_mean, act_std, info)


def gru_backward_kernel(icfg, fcfg, X, W_hh, H, Z, HN, DH, G, row_e, dW_ih, dW_hh, db_ih, db_hh, dexp, sig_m, sig_e,
                        gnorm_m, gnorm_e, clip_acted, info):
    """Backward through T steps of the GRU (module docstring)."""
    clip_mode, c, every = int(icfg[RI_CLIP]), float(fcfg[RF_CLIP]), bool(icfg[RI_LOSS_EVERY])
    T, N = X.shape[0], W_hh.shape[1]
    info[INFO_BACKWARD] = -1
    r = int(sig_e[T]) + row_e.astype(np.int64)
    finish_state(G, None, r, T, CLIP_NONE, c, sig_m, sig_e, None, info)
    dzx = np.empty((G.shape[0], 3 * N), dtype=G.dtype)
    dzh = np.empty_like(dzx)
    for t in range(T - 1, -1, -1):
        z = gru_step_backward(dzx, dzh, G, Z[t], HN[t], H[t], N)
        accumulate_step(dW_ih, dW_hh, db_ih, db_hh, dexp, gnorm_m, gnorm_e, t, dzx, dzh, X[t], H[t], r, 0)
        G[...] = G * z + dzh @ W_hh
        if every:
            add_loss_gradient(G, None, r, DH[t])
        finish_state(G, None, r, t, clip_mode, c, sig_m, sig_e, None, info, clip_acted)
    row_e[...] = r - sig_e[0]


rnn_forward = abi.checked("rnn_forward", rnn_forward_kernel)
rnn_backward = abi.checked("rnn_backward", rnn_backward_kernel)
lstm_forward = abi.checked("lstm_forward", lstm_forward_kernel)
lstm_backward = abi.checked("lstm_backward", lstm_backward_kernel)
gru_forward = abi.checked("gru_forward", gru_forward_kernel)
gru_backward = abi.checked("gru_backward", gru_backward_kernel)
