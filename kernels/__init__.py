"""Numba backend (imported as ``gradbench.kernels``): hand-written kernels, one fused call per
direction. Same functions and arguments as :mod:`gradbench.reference`.

``stack_forward`` / ``stack_backward`` check dtypes and contiguity (cheap, O(1) per array) and
call the compiled drivers in :mod:`.stack`; the per-layer kernels are exported for tests.
"""

from __future__ import annotations

import numpy as np

from .layers import (
    activation_backward, activation_forward, add_aligned, batchnorm_backward, batchnorm_forward,
    clip_signal, dense_backward, dense_forward, normalise,
)
from .stack import stack_backward_kernel, stack_forward_kernel

__all__ = [
    "activation_backward", "activation_forward", "add_aligned", "batchnorm_backward",
    "batchnorm_forward", "clip_signal", "dense_backward", "dense_forward", "normalise",
    "stack_backward", "stack_forward",
]

_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))


def _check(dtype_names, float64_names, int64_names, arrays):
    dt = arrays[dtype_names[0]].dtype
    if dt not in _FLOATS:
        raise TypeError(f"{dtype_names[0]} has dtype {dt}; the numba backend supports float64 and float32")
    for group, want in ((dtype_names, dt), (float64_names, np.dtype(np.float64)),
                        (int64_names, np.dtype(np.int64))):
        for name in group:
            a = arrays[name]
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
            if a.dtype != want:
                raise TypeError(f"{name} has dtype {a.dtype}, expected {want}")
            if not a.flags.c_contiguous:
                raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")


def stack_forward(icfg, fcfg, W, b, gamma, beta, slope, H, Z, bn_mean, bn_rstd, fexp,
                  act_mean, act_std, saturation, dead, info):
    """Forward through all L layers (contract: :func:`gradbench.reference.stack_forward`)."""
    arrays = locals()
    _check(("W", "b", "gamma", "beta", "slope", "H", "Z", "bn_mean", "bn_rstd"),
           ("fcfg", "act_mean", "act_std", "saturation", "dead"), ("icfg", "fexp", "info"), arrays)
    L, N = W.shape[0], W.shape[1]
    if H.shape[0] != L + 1 or Z.shape != (L,) + H.shape[1:] or H.shape[2] != N:
        raise ValueError(f"H has shape {H.shape} and Z {Z.shape}; expected (L+1, B, N) and (L, B, N) with L={L}, N={N}")
    stack_forward_kernel(icfg, fcfg, W, b, gamma, beta, slope, H, Z, bn_mean, bn_rstd, fexp,
                         act_mean, act_std, saturation, dead, info)


def stack_backward(icfg, fcfg, W, gamma, beta, slope, H, Z, bn_rstd, fexp, G, dW, db, dgamma,
                   dbeta, dslope, sig_m, sig_e, gnorm_m, info):
    """Backward through all L layers (contract: :func:`gradbench.reference.stack_backward`)."""
    arrays = locals()
    _check(("W", "gamma", "beta", "slope", "H", "Z", "bn_rstd", "G", "dW", "db", "dgamma",
            "dbeta", "dslope"), ("fcfg", "sig_m", "gnorm_m"), ("icfg", "fexp", "sig_e", "info"), arrays)
    L = W.shape[0]
    if G.shape != H.shape[1:] or Z.shape[0] != L:
        raise ValueError(f"G has shape {G.shape}, H {H.shape}, Z {Z.shape}: expected G (B, N), H (L+1, B, N), Z (L, B, N) with L={L}")
    stack_backward_kernel(icfg, fcfg, W, gamma, beta, slope, H, Z, bn_rstd, fexp, G, dW, db,
                          dgamma, dbeta, dslope, sig_m, sig_e, gnorm_m, info)
