"""Numba flags and size thresholds, in one place, used by every kernel.

``JIT``: ``cache=True`` so a compiled kernel is reused across processes (a fresh clone compiles
once, about a minute for both dtypes (docs/design.md): one kernel per direction and dtype,
options passed as integer codes).
``error_model="numpy"``: a float division by zero gives inf/NaN as in NumPy, no exception.
``fastmath`` stays off. ``nnan``/``ninf`` would break the non-finite diagnostics and ``afn``
the 1e-12 agreement. ``reassoc``+``contract`` were measured on the explicit dense loops: they
vectorise the dot-product reductions (2-4x faster at N = 16..64) but BLAS is faster still
there, and at N <= 8 (where the loops are used) the gain is below the noise; so they are off
and the kernels round exactly as written, operation by operation, like the reference.

Numba's on-disk cache is keyed by each kernel's source file, not by this module: the package
drops its cached kernels when any of its sources changes (``kernels/__init__.py``), so a flag
changed here takes effect at the next import. The size threshold of the dense layers lives in
``layers.py``, beside the kernels that read it.
"""

JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath=False)

from gradbench.abi import EXP_CLAMP  # noqa: F401  (the clamp of exponent differences, as everywhere)
