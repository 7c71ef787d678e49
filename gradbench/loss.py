"""The loss at the top of the stack and the gradient it sends down (dL/dh_L).

``sum_squares``: 0.5 ||h_L||^2 on the exact h_L (mantissa and forward exponent), so the loss
and dL/dh_L = h_L are exact at any depth. A head: :func:`head_loss`. The top signal is then
normalised and, with signal clipping, clipped once here (:func:`top_signal`); the backends'
``stack_backward`` only normalise their top signal.
"""

from __future__ import annotations

import math

import numpy as np

from gradbench import abi, reference
from gradbench.activations import _log_sigmoid
from gradbench.logscaled import LN2, LN_MIN, LogScaled, from_log, ldexp, log_rem
from gradbench.params import Params
from gradbench.spec import Stack


# dL/dy and the loss are scaled by a power of two only where exp would leave the normal range
_EXP_LOW = -600.0


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) = -ln s(-x), neither branch overflowing."""
    return -_log_sigmoid(-x)


def _softplus_pair(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(softplus(y), softplus(-y)) with one exp and one log1p: max(+-y, 0) + log1p(e^-|y|), the
    values of :func:`_softplus` bit for bit (its branches add the same two terms)."""
    tail = np.log1p(np.exp(-np.abs(y)))
    return np.maximum(y, 0.0) + tail, np.maximum(-y, 0.0) + tail


def _log_softplus(x: np.ndarray, sp: np.ndarray | None = None) -> np.ndarray:
    """log(softplus(x)) where softplus(x) itself underflows: x below -37 (exp(x) < 1e-16: the
    correction -exp(x)/2 is lost against x). ``sp``: softplus(x), if the caller has it."""
    with np.errstate(divide="ignore"):
        return np.where(x < -37, x, np.log(_softplus(np.maximum(x, -37)) if sp is None else sp))


def _logsumexp(a: np.ndarray, axis=None) -> np.ndarray:
    """log(sum(exp(a))) over ``axis``, -inf for an empty or all -inf sum."""
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out.reshape(()) if axis is None else np.squeeze(out, axis=axis)


def _exp_scaled(logs: np.ndarray, scale: bool) -> tuple[np.ndarray, int]:
    """exp(logs) as (mantissas, E) with exp(logs) = mantissas 2**E: E = 0 unless the largest
    entry is below exp(-600) (and ``scale``), else the largest mantissa is O(1)."""
    top = float(np.max(logs)) if logs.size else -np.inf
    if not scale or not np.isfinite(top) or top >= _EXP_LOW:  # NaN stays NaN (from_log would zero it)
        return np.exp(logs), 0
    return from_log(logs, 1.0)


def _exp_scaled_rows(logs: np.ndarray, scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_exp_scaled` sample by sample: ``logs`` (..., R, O), one exponent per row r
    (over every leading index), (mantissas, E (R,) int64)."""
    R = logs.shape[-2]
    E = np.zeros(R, dtype=np.int64)
    top = np.max(logs, axis=tuple(i for i in range(logs.ndim) if i != logs.ndim - 2)) if logs.size else np.full(R, -np.inf)
    low = np.isfinite(top) & (top < _EXP_LOW) if scale else np.zeros(R, dtype=bool)
    m = np.exp(logs)
    for r in np.flatnonzero(low):
        m[..., r, :], E[r] = from_log(logs[..., r, :], 1.0)
    return m, E


def _sum_exact(terms: np.ndarray, norm: int) -> LogScaled | None:
    """sum(terms) / norm as a LogScaled where the float sum overflows: every term finite (and
    >= 0), scaled by 2^-k (k the exponent of the largest) before they are added. None when a
    term is not finite (then the float's inf or NaN is the answer)."""
    top = float(np.max(terms, initial=0.0))
    if not math.isfinite(top):
        return None
    k = int(np.frexp(top)[1])
    m, e = np.frexp(float(np.sum(np.ldexp(terms, -k))) / norm)
    return LogScaled(np.array(m), np.array(int(e) + k))


def head_gradient(kind: str, y: np.ndarray, t, count: int, *, scale: bool = True,
                  exact: bool | None = None, rows: bool = False) -> tuple[float, LogScaled, np.ndarray, int]:
    """The loss of head outputs ``y`` (float64, R x O) against targets ``t``, a mean over
    ``count`` samples (and the O outputs for mse and bce), and dL/dy without cancellation.

    Returns (loss, the loss as a LogScaled, dL/dy mantissas, E): dL/dy = mantissas 2**E.
    bce's dL/dy = sigmoid(y) - t is taken as (1 - t) sigmoid(y) - t sigmoid(-y) and softmax_ce's
    target entry p_t - 1 as -sum_{j != t} p_j: a confident right answer (a margin of 40) has
    a gradient of 1e-17, not the 0 or the rounding noise of 1 - p. Where it lies below exp(-600)
    the terms are evaluated from their logarithms and scaled by a power of two (``scale``; else
    they underflow as in plain float64, E = 0); with ``rows`` sample by sample, E an (R,) array
    (a sample right by a margin of 800 beside one that is wrong keeps its 10^-347: one exponent
    for the batch flushed it). The loss as a LogScaled is exact where the float
    is not (``exact``, default ``scale``): below float64's smallest normal from the terms'
    logarithms, and where the float sum overflows from terms scaled by a power of two (mse:
    from the differences, so no square is lost either way: a difference of 1e160 has a loss of
    1e320). The float ``loss`` below float64's range is plain float64's (0 or subnormal); where
    the sum overflowed it is the exact loss rounded (inf only if the mean itself overflows: 64
    terms of 1e307 have a mean of 1e307).
    """
    exact = scale if exact is None else exact
    R, O = y.shape
    tiny = np.finfo(np.float64).tiny
    if kind == "mse":
        diff = y - t
        loss = float(np.sum(diff * diff)) / (count * O)
        dy = 2.0 * diff / (count * O)
        E = np.zeros(R, dtype=np.int64) if rows else 0
        if not exact or tiny <= loss < np.inf or loss != loss:
            return loss, LogScaled.from_float(loss), dy, E
        s, e = reference.sumsq_scaled(diff)  # sum diff^2 = s 4^e, s in [0.25, R O] (or 0)
        if not math.isfinite(s):
            return loss, LogScaled.from_float(loss), dy, E
        m, e2 = np.frexp(s / (count * O))
        loss_exact = LogScaled(np.array(m), np.array(int(e2) + 2 * e))
        if loss == np.inf:  # the sum overflowed: the mean may still be a float
            loss = float(loss_exact.to_float(warn=False))
        return loss, loss_exact, dy, E
    scaled = _exp_scaled_rows if rows else _exp_scaled
    if kind == "bce":
        t = np.asarray(t, dtype=np.float64)
        with np.errstate(divide="ignore"):
            lt, l1t = np.log(t), np.log1p(-t)  # -inf where a term has no weight
        sp, sn = _softplus_pair(y)  # once each: the head of a small net is much of its call
        logs = np.stack([l1t - sn, lt - sp])  # log (1-t) sigmoid(y), log t sigmoid(-y)
        m, E = scaled(logs, scale)
        dy = (m[0] - m[1]) / (count * O)
        terms = (1 - t) * sp + t * sn  # the loss's terms
        loss_value = float(np.sum(terms)) / (count * O)
        norm = count * O

        def loss_logs():  # the loss's terms in log form, needed only when the loss underflows
            return np.concatenate([(l1t + _log_softplus(y, sp)).ravel(), (lt + _log_softplus(-y, sn)).ravel()])
    else:
        rows = np.arange(R)
        s = y - y.max(axis=1, keepdims=True)
        lse = _logsumexp(s, axis=1)
        others = s.copy()
        others[rows, t] = -np.inf
        margin = _logsumexp(others, axis=1) - s[rows, t]  # log sum_{j != t} exp(y_j - y_t)

        def loss_logs():
            return _log_softplus(margin)

        logs = s - lse[:, None]
        logs[rows, t] = margin + s[rows, t] - lse  # log sum_{j != t} p_j
        m, E = scaled(logs, scale)
        m[rows, t] = -m[rows, t]
        dy = m / count
        terms = _softplus(margin)  # the loss's terms
        loss_value = float(np.sum(terms)) / count
        norm = count
    if loss_value >= tiny or not exact:
        if loss_value == np.inf and exact:  # a sum of finite terms beyond float64: |y| ~ 1e306
            big = _sum_exact(terms, norm)
            if big is not None:  # the mean may still be a float
                return float(big.to_float(warn=False)), big, dy, E
        return loss_value, LogScaled.from_float(loss_value), dy, E
    lam = float(_logsumexp(loss_logs())) - float(np.log(norm))  # log of the loss
    if not LN_MIN <= lam < np.inf:  # beyond any int64 exponent (from_log): 0 like the float
        return loss_value, LogScaled.from_float(loss_value), dy, E
    e = int(np.floor(lam / LN2)) + 1  # the mantissa exp(lam - e ln 2) in [1/2, 1]
    return loss_value, LogScaled(np.array(np.exp(log_rem(lam, e - 1) - LN2)), np.array(e)), dy, E


def head_loss(stack: Stack, h: np.ndarray, f, params: Params, t) -> tuple:
    """Loss of the head y = h_L W_out^T + b_out (a stack's, or a recurrent net's on its last
    step: only ``stack.loss`` is read), row i of h_L = h[i] 2^f[i] (``f`` (B,) int64, or
    one int for all); returns (loss, loss as LogScaled, dL/dh_L mantissas, their exponents E (one
    per sample, (B,)), dW_out's mantissa and exponent, db_out's mantissa and exponent).

    mse: mean over the B x O elements of (y - t)^2; bce: mean over the B x O elements of
    softplus(y) - t y (from logits, stable); softmax_ce: mean over the batch of
    logsumexp(y) - y[t]. Computed in float64 (:func:`head_gradient`: no cancellation, a power
    of two per sample where dL/dy leaves float64's range); each sample's dL/dy is scaled to a
    largest entry in [0.5, 1) (a power of two) and its mantissas rounded to the stack's dtype: a
    float32 stack's top gradient of 1e-48 is not flushed to 0, nor a sample right by a margin
    of 800 beside one that is wrong. The sums over samples (dW_out, db_out) take the rows at the
    largest exponent, as the stacks' backward does (:func:`gradbench.reference.scaled_rows`); dW_out
    = dy^T h_L at the largest E[i] + f[i] over the rows where both are non-zero
    (:func:`gradbench.reference.pair_top`).
    """
    f = np.zeros(len(h), dtype=np.int64) + f
    loss, loss_exact, dy, E = head_dy(stack.loss, h, f, params.W_out, params.b_out, t)
    top = reference.row_top(dy, E)
    w = reference.pair_top(dy, E, h, f)
    dys = reference.scaled_rows(dy, E, top)
    # h's rows at one exponent (no forward rescaling, or no spread): db_out's rows are dW_out's
    same = w == top + f[0] and np.all(f == f[0]) if len(f) else True
    rows = dys if same else reference.pair_rows(dy, E + f, w)
    if h.dtype == np.float64:
        dW_out = rows.T @ h
    else:  # sums of up to B products of mantissas <= 1 and entries of h_L up to 3.4e38: in float64,
        # then a power of two into the dtype's range (the largest entry in [0.5, 1))
        dW64 = rows.T.astype(np.float64) @ h.astype(np.float64)
        w += reference.normalise(dW64)
        dW_out = dW64.astype(h.dtype)
    return loss, loss_exact, dy @ params.W_out, E, dW_out, w, dys.sum(axis=0), top


def head_dy(kind: str, h: np.ndarray, f, W_out, b_out, t) -> tuple[float, LogScaled, np.ndarray, np.ndarray]:
    """The head y = h 2^f W_out^T + b_out on the rows of ``h`` (``f`` an int, or (R,) int64: one
    per row) (a mean over them): (loss, loss as LogScaled, dL/dy mantissas in h's dtype, E (R,)),
    row i of dL/dy = mantissas[i] 2^E[i] from :func:`head_gradient`, each row's largest entry
    brought into [0.5, 1) before the rounding to h's dtype (float32's 1e-48 is carried, not
    flushed; rows of zeros at the largest row's exponent). The product and the bias in float64
    for a float32 stack too: its h_L of 1.9e38 times W_out can pass float32's 3.4e38 (the loss
    read inf and every gradient NaN where float64 holds 4.09e76)."""
    y64 = h.astype(np.float64) @ W_out.T.astype(np.float64)
    if np.any(f):  # a forward-rescaled stack: h_L W_out^T at its exponent (each row's), then the bias
        with np.errstate(under="ignore", over="ignore"):
            y64 = ldexp(y64, np.reshape(f, (-1, 1)) if np.ndim(f) else f)
    y64 = y64 + b_out.astype(np.float64)
    loss, loss_exact, dy, E = head_gradient(kind, y64, t, len(y64), rows=True)
    E = E + 0  # a copy
    reference.signal_rows(dy, E)  # float64, before the rounding to h's dtype
    return loss, loss_exact, dy.astype(h.dtype), E


def top_signal(stack: Stack, G: np.ndarray, e) -> tuple[int, float, bool, np.ndarray]:
    """Normalise and (signal clipping) clip the true top gradient dL/dh_L in place, row i being
    G[i] * 2**e[i] (``e`` one exponent per sample, or one for all).

    Done once, here, with the reference's per-row steps (:func:`gradbench.reference.signal_rows`)
    as every layer's signal is; the backends'
    ``stack_backward`` only normalise their top signal. Returns the layer's exponent (the
    largest row's), the norm of the mantissas at it, whether the clip acted (``clip_acted[L]``;
    False without signal clipping) and the rows' exponents relative to it (``row_e``).
    """
    r = np.zeros(len(G), dtype=np.int64) + e
    top, acted = reference.signal_rows(G, r, abi.signal_clip(stack), stack.clip_threshold)
    norm = math.sqrt(float(np.square(reference.scaled_rows(G, r, top), dtype=np.float64).sum()))
    return top, norm, acted, r - top
