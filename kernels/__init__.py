"""Numba backend (imported as ``gradbench.kernels``): hand-written kernels, one fused call per
direction. Same functions and arguments as :mod:`gradbench.reference`.

``stack_forward`` / ``stack_backward`` validate every array with :func:`gradbench.abi.check`
(the one check of every backend: Numba does no bounds checks, so nothing reaches a kernel
unchecked) and call the trusting compiled drivers in :mod:`.stack`; the per-layer kernels are
exported for tests.
"""

from __future__ import annotations

from gradbench import abi

from .chain import add_aligned, clip_signal, normalise
from .layers import (
    activation_backward, activation_forward, batchnorm_backward, batchnorm_forward, dense_backward, dense_forward,
)
from .stack import stack_backward_kernel, stack_forward_kernel

__all__ = [
    "activation_backward", "activation_forward", "add_aligned", "batchnorm_backward",
    "batchnorm_forward", "clip_signal", "dense_backward", "dense_forward", "normalise",
    "stack_backward", "stack_forward",
]

stack_forward = abi.checked("stack_forward", stack_forward_kernel)
stack_backward = abi.checked("stack_backward", stack_backward_kernel)
