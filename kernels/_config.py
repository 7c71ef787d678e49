"""Numba flags and size thresholds, in one place, used by every kernel.

``JIT``: ``cache=True`` so a compiled kernel is reused across processes (a fresh clone compiles
once, in seconds: one kernel per direction and dtype, options passed as integer codes).
``error_model="numpy"``: a float division by zero gives inf/NaN as in NumPy, no exception.
``fastmath`` stays off. ``nnan``/``ninf`` would break the non-finite diagnostics and ``afn``
the 1e-12 agreement; ``contract``/``reassoc`` were measured (see ``NARROW``) and bought less
than the noise of this machine on the whole stack, so they are not used: the kernels then
round exactly as written, operation by operation, like the reference.
"""

JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath=False)

# Width at or below which the dense layers use explicit loops; above it, np.dot (BLAS).
# Measured on a 2-core AMD EPYC (AVX2/FMA), float64, whole stack fwd+bwd:
# see the table in kernels/layers.py next to dense_forward.
NARROW = 16

# np.ldexp in the reference works with int32 exponents: clamp to +-4000 (beyond it every
# float is 0 or inf already), exactly as gradbench.reference does.
EXP_CLAMP = 4000
