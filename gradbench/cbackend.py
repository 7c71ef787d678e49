"""The C backend: thin Python wrappers over the cffi-compiled ``gradbench._ckernels``.

Wrappers check dtype, contiguity and shape, pass buffers with ``ffi.from_buffer`` and turn the
error codes of the C functions into exceptions.
"""

from __future__ import annotations

import numpy as np

try:
    from gradbench._ckernels import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        'C extension not built: run "pip install -e ." (needs a C compiler such as gcc)'
    ) from exc

_ERRORS = {
    1: (ValueError, "unknown activation code"),
    2: (ValueError, "bad argument"),
    3: (MemoryError, "the C kernel could not allocate its workspace"),
}
_CTYPE = {np.dtype(np.float64): ("double[]", "f64"), np.dtype(np.float32): ("float[]", "f32")}


def check(rc: int, what: str) -> None:
    """Raise the exception that the C error code ``rc`` of function ``what`` stands for."""
    if rc != 0:
        kind, text = _ERRORS.get(rc, (RuntimeError, f"error code {rc}"))
        raise kind(f"{what}: {text}")


def buffer(a: np.ndarray, name: str, dtype=None):
    """A cffi pointer to the C-contiguous array ``a`` (checked, never copied)."""
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {np.dtype(dtype)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if a.dtype == np.int64:
        return ffi.from_buffer("int64_t[]", a)
    return ffi.from_buffer(_CTYPE[a.dtype][0], a)


def _suffix(a: np.ndarray) -> str:
    try:
        return _CTYPE[a.dtype][1]
    except KeyError:
        raise TypeError(f"dtype {a.dtype} is not supported; use float64 or float32") from None


def activation(z: np.ndarray, code: int, param: float) -> np.ndarray:
    """phi(z) computed by the C kernel (for tests against the reference)."""
    z = np.ascontiguousarray(z)
    a = np.empty_like(z)
    fn = getattr(lib, f"gb_activation_forward_{_suffix(z)}")
    check(fn(buffer(a, "a"), buffer(z, "z"), z.size, int(code), float(param)), fn.__name__)
    return a


def activation_grad(z: np.ndarray, code: int, param: float) -> np.ndarray:
    """phi'(z) computed by the C kernel, as da * phi'(z) with da = 1."""
    z = np.ascontiguousarray(z)
    dz = np.empty_like(z)
    ones = np.ones_like(z)
    fn = getattr(lib, f"gb_activation_backward_{_suffix(z)}")
    check(fn(buffer(dz, "dz"), buffer(ones, "da"), buffer(z, "z"), z.size, int(code), float(param)), fn.__name__)
    return dz
