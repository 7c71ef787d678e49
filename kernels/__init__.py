"""Numba backend (imported as ``gradbench.kernels``): hand-written kernels, one fused call per
direction. Same functions and arguments as :mod:`gradbench.reference`.

``stack_forward`` / ``stack_backward`` validate every array with :func:`gradbench.abi.check`
(the one check of every backend: Numba does no bounds checks, so nothing reaches a kernel
unchecked) and call the trusting compiled drivers in :mod:`.stack`; the per-layer kernels are
exported for tests.
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


_drop_stale_cache()

from .chain import add_aligned, clip_signal, normalise  # noqa: E402 (after the cache check)
from .layers import (  # noqa: E402
    activation_backward, activation_forward, batchnorm_backward, batchnorm_forward, dense_backward, dense_forward,
)
from .histogram import histogram_fill  # noqa: E402  (stats_only runs' histograms, gradbench.histograms)
from .stack import stack_backward_kernel, stack_forward_kernel  # noqa: E402

__all__ = [
    "activation_backward", "activation_forward", "add_aligned", "batchnorm_backward",
    "batchnorm_forward", "clip_signal", "dense_backward", "dense_forward", "histogram_fill", "normalise",
    "stack_backward", "stack_forward",
]

stack_forward = abi.checked("stack_forward", stack_forward_kernel)
stack_backward = abi.checked("stack_backward", stack_backward_kernel)
