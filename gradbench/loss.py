"""The loss at the top of the stack and the gradient it sends down (dL/dh_L).

``sum_squares``: 0.5 ||h_L||^2 on the exact h_L (mantissa and forward exponent), so the loss
and dL/dh_L = h_L are exact at any depth. A head: :func:`head_loss`. The top signal is then
normalised and, with signal clipping, clipped once here (:func:`top_signal`); the backends'
``stack_backward`` only normalise their top signal.
"""

from __future__ import annotations

import numpy as np

from gradbench import abi, reference
from gradbench.activations import sigmoid
from gradbench.logscaled import ldexp
from gradbench.params import Params
from gradbench.spec import Stack


def head_loss(stack: Stack, h: np.ndarray, f: int, params: Params, t) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Loss of the head y = h_L W_out^T + b_out, h_L = h 2^f; returns (loss, dL/dh_L, dW_out
    (mantissa at exponent f), db_out).

    mse: mean over the B x O elements of (y - t)^2; bce: mean over the B x O elements of
    softplus(y) - t y (from logits, stable); softmax_ce: mean over the batch of
    logsumexp(y) - y[t]. Computed in float64, dL/dy rounded to the stack's dtype.
    """
    if f == 0:
        y64 = (h @ params.W_out.T + params.b_out).astype(np.float64)
    else:  # a forward-rescaled stack: h_L W_out^T at its exponent, then the bias
        with np.errstate(under="ignore", over="ignore"):
            y64 = ldexp((h @ params.W_out.T).astype(np.float64), f) + params.b_out
    B, O = y64.shape
    if stack.loss == "mse":
        diff = y64 - t
        loss = float(np.mean(diff * diff))
        dy = 2.0 * diff / (B * O)
    elif stack.loss == "bce":
        loss = float(np.mean(np.maximum(y64, 0) - y64 * t + np.log1p(np.exp(-np.abs(y64)))))
        dy = (sigmoid(y64) - t) / (B * O)
    else:
        shifted = y64 - y64.max(axis=1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=1))
        loss = float(np.mean(lse - shifted[np.arange(B), t]))
        p = np.exp(shifted - lse[:, None])
        p[np.arange(B), t] -= 1.0
        dy = p / B
    dy = dy.astype(h.dtype)
    return loss, dy @ params.W_out, dy.T @ h, dy.sum(axis=0)


def top_signal(stack: Stack, G: np.ndarray, e: int) -> tuple[int, float]:
    """Normalise and (signal clipping) clip the true top gradient dL/dh_L = G * 2**e in place.

    Done once, here, with the reference's :func:`~gradbench.reference.normalise` and
    :func:`~gradbench.reference.clip_signal` (:func:`gradbench.reference.top_signal`); the
    backends' ``stack_backward`` only normalise their top signal. Returns the new exponent
    and the norm of the mantissas.
    """
    e = reference.top_signal(G, e, abi.signal_clip(stack), stack.clip_threshold)
    return e, float(np.sqrt(np.sum(np.square(G, dtype=np.float64))))
