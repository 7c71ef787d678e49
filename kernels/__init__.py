"""Numba backend (imported as ``gradbench.kernels``): hand-written kernels, one fused call per
direction. Same functions and arguments as :mod:`gradbench.reference`.

``stack_forward`` / ``stack_backward`` validate every array with :func:`gradbench.abi.check`
(the one check of every backend: Numba does no bounds checks, so nothing reaches a kernel
unchecked) and call the trusting compiled drivers in :mod:`.stack`. The layer functions
(``dense_forward``, ..., ``clip_signal``, for tests and users) check their arrays with
:func:`gradbench.abi.check_layer`, ``histogram_fill`` with :func:`gradbench.abi.check_histogram_fill`
(the C backend's checks), then call the kernel of the same name; code inside this package imports
the unchecked kernels from the submodules (:mod:`.layers`, :mod:`.chain`, :mod:`.histogram`).
"""

from __future__ import annotations

import hashlib
import os

from gradbench import abi


def _drop_stale_cache(here: str | None = None) -> None:
    """Numba keys a cached kernel by its own source file only: a kernel that calls a function of
    another module of this package (stack.py -> chain.py) kept the old compiled code after that
    module changed (an edited checkout, an editable install after ``git pull``) and gave the old
    results. The package's sources are hashed at import; when the hash differs from the one
    recorded beside the cache, the cached kernels are dropped (compiled again on first use).
    Where the cache directory cannot be written, nothing is done (Numba then caches elsewhere)."""
    here = here or os.path.dirname(os.path.abspath(__file__))
    cache = os.path.join(here, "__pycache__")
    digest = hashlib.sha256()
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    stamp = os.path.join(cache, "sources.sha256")
    try:
        with open(stamp, encoding="ascii") as f:
            if f.read() == digest.hexdigest():
                return
    except OSError:
        pass
    try:
        os.makedirs(cache, exist_ok=True)
        for name in os.listdir(cache):
            if name.endswith((".nbi", ".nbc")):
                os.remove(os.path.join(cache, name))
        from gradbench import _atomic

        _atomic.write_atomic(stamp, lambda f: f.write(digest.hexdigest()))
    except OSError:  # a read-only install
        pass


def _check_numba_threads() -> None:
    """Refuse ``NUMBA_NUM_THREADS`` that Numba's own import would stop on (0 or below: a bare
    ``ValueError: Number of threads specified must be > 0.`` naming no variable, which
    ``gradbench.backend_status()`` could not report) or ignore with a warning (not an int)."""
    text = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    if not text:
        return
    try:
        ok = int(text) >= 1
    except ValueError:
        ok = False
    if not ok:
        from gradbench._env import EnvError

        raise EnvError(f"environment variable NUMBA_NUM_THREADS={text!r} must be an int >= 1 "
                       "(unset it for Numba's default: one thread per CPU)")


_check_numba_threads()
_drop_stale_cache()

from . import chain as _chain, histogram as _histogram, layers as _layers  # noqa: E402 (after the cache check)
from .stack import stack_backward_kernel, stack_forward_kernel  # noqa: E402

# the unchecked histogram kernel, for the engine's stats_only runs (gradbench.engine._compiled_fill),
# whose arrays it makes itself
histogram_fill_kernel = _histogram.histogram_fill

__all__ = [
    "activation_backward", "activation_forward", "add_aligned", "batchnorm_backward",
    "batchnorm_forward", "clip_signal", "dense_backward", "dense_forward", "histogram_fill", "normalise",
    "stack_backward", "stack_forward",
]

stack_forward = abi.checked("stack_forward", stack_forward_kernel)
stack_backward = abi.checked("stack_backward", stack_backward_kernel)


# ------------------------------------------------------------------ checked layer functions
def dense_forward(z, h, W, b):
    """z = h W^T + b.    z (B,N), h (B,N), W (N,N), b (N,)"""
    abi.check_layer("dense_forward", z, h, W, b)
    _layers.dense_forward(z, h, W, b)


def dense_backward(dh, dW, db, dz, h, W):
    """dW = dz^T h, db = sum_B dz, dh = dz W."""
    abi.check_layer("dense_backward", dh, dW, db, dz, h, W)
    _layers.dense_backward(dh, dW, db, dz, h, W)


def batchnorm_forward(y, xhat, mean, rstd, z, gamma, beta, eps):
    """y = gamma * (z - mean_B) * rstd + beta (train mode, biased variance)."""
    abi.check_layer("batchnorm_forward", y, xhat, mean, rstd, z, gamma, beta)
    _layers.batchnorm_forward(y, xhat, mean, rstd, z, gamma, beta, eps)


def batchnorm_backward(dz, dgamma, dbeta, dy, xhat, rstd, gamma):
    """dz = gamma * rstd * (dy - mean_B(dy) - xhat * mean_B(dy * xhat))."""
    abi.check_layer("batchnorm_backward", dz, dgamma, dbeta, dy, xhat, rstd, gamma)
    _layers.batchnorm_backward(dz, dgamma, dbeta, dy, xhat, rstd, gamma)


def activation_forward(a, z, code, param, f=None):
    """a = phi(z); with a forward exponent ``f``, phi_scaled (the mantissa of phi(z 2**f))."""
    abi.check_layer("activation_forward", a, z)
    _layers.activation_forward(a, z, code, param, f)


def activation_backward(dz, da, z, code, param, f=None) -> float:
    """dz = da * phi'(z) (dphi_scaled of z 2**f with ``f``); returns dL/dslope = sum(da * min(z,
    0)) for PReLU, else 0."""
    abi.check_layer("activation_backward", dz, da, z)
    return _layers.activation_backward(dz, da, z, code, param, f)


def normalise(g) -> int:
    """g *= 2**-e in place with e the exponent of max|g|; returns e."""
    abi.check_layer("normalise", g)
    return _chain.normalise(g)


def add_aligned(a, ea, s, es, scale=1.0) -> int:
    """scale * a * 2**ea + s * 2**es, written into a, at the larger exponent; returns it."""
    abi.check_layer("add_aligned", a, s)
    return _chain.add_aligned(a, ea, s, es, scale)


def clip_signal(g, e, mode, c) -> int:
    """Clip the true value g * 2**e in place (value or norm); returns the new exponent."""
    abi.check_layer("clip_signal", g)
    return _chain.clip_signal(g, e, mode, c)


def histogram_fill(dW, e, per_decade, bins, top, counts, below, zeros, nonfinite) -> None:
    """The streaming histograms of the m layers of ``dW`` (m, ...) with exponents ``e`` (m,): the
    kernel :func:`.histogram.histogram_fill`, its arguments checked as the C twin's."""
    abi.check_histogram_fill(dW, e, per_decade, bins, top, counts, below, zeros, nonfinite)
    _histogram.histogram_fill(dW, e, per_decade, bins, top, counts, below, zeros, nonfinite)
