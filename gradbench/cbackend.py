"""The C backend: thin Python wrappers over the cffi-compiled ``gradbench._ckernels``.

:func:`stack_forward` and :func:`stack_backward` take exactly the arguments of
:mod:`gradbench.reference` (the contract is documented there), check dtype, contiguity and
shape of every array, pass the buffers with ``ffi.from_buffer`` (never copied) and make one C
call per direction. cffi releases the GIL around every C call, so two Python threads run the
kernels at the same time. Error codes of the C functions become exceptions.

For wide layers the C drivers call the BLAS that SciPy ships (``dgemm``/``sgemm`` taken from
``scipy.linalg.cython_blas`` at import and passed into C as function pointers); narrow layers use
the register-blocked kernels in ``csrc/``. ``GRADBENCH_C_THREADS`` sets the number of threads of
the own kernels (else ``OMP_NUM_THREADS``, else up to 2, the machine's cores); results do not
depend on it. SciPy's BLAS follows ``OPENBLAS_NUM_THREADS``.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from gradbench import spec

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

# Layers at least this wide use BLAS for their three matrix products (measured on a 2-core AMD
# EPYC (Zen 4) with SciPy's OpenBLAS: from width 64 on it is 10-40 % faster than the own
# register-blocked kernels, below about even; the own kernels avoid BLAS's per-call overhead
# and thread pool for the narrow layers of very deep stacks).
BLAS_MIN_WIDTH = int(os.environ.get("GRADBENCH_C_BLAS_MIN_WIDTH", "64"))
# B*N*N of a layer from which the own kernels use several threads: below it a parallel region
# (microseconds to enter, far worse when the cores are shared) costs more than it saves.
PAR_MIN_WORK = int(os.environ.get("GRADBENCH_C_PAR_MIN_WORK", str(1 << 22)))


def check(rc: int, what: str) -> None:
    """Raise the exception that the C error code ``rc`` of function ``what`` stands for."""
    if rc != 0:
        kind, text = _ERRORS.get(rc, (RuntimeError, f"error code {rc}"))
        raise kind(f"{what}: {text}")


def buffer(a: np.ndarray, name: str, dtype=None):
    """A cffi pointer to the C-contiguous array ``a`` (checked, never copied)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {np.dtype(dtype)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (pass np.ascontiguousarray({name}))")
    if a.dtype == np.int64:
        return ffi.from_buffer("int64_t[]", a)
    return ffi.from_buffer(_CTYPE[a.dtype][0], a)


def _suffix(a: np.ndarray) -> str:
    try:
        return _CTYPE[a.dtype][1]
    except KeyError:
        raise TypeError(f"dtype {a.dtype} is not supported; use float64 or float32") from None


# ------------------------------------------------------------------ BLAS and options
def _capsule_pointer(capsule) -> int:
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_ptr(capsule, get_name(capsule))


def _blas() -> tuple[int, int]:
    """Addresses of SciPy's Fortran dgemm and sgemm (0, 0 when unavailable)."""
    if os.environ.get("GRADBENCH_C_NO_BLAS", "") not in ("", "0"):
        return 0, 0
    try:
        from scipy.linalg import cython_blas

        capi = cython_blas.__pyx_capi__
        return _capsule_pointer(capi["dgemm"]), _capsule_pointer(capi["sgemm"])
    except Exception:  # pragma: no cover - SciPy is a dependency; keep the own kernels
        return 0, 0


def _default_threads() -> int:
    for var in ("GRADBENCH_C_THREADS", "OMP_NUM_THREADS"):
        env = os.environ.get(var, "").split(",")[0].strip()
        if env.isdigit():
            return max(1, int(env))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def make_opts(nthreads: int | None = None, blas: bool = True, blas_min_width: int | None = None,
              par_min_work: int | None = None):
    """A ``gb_opts`` struct for the drivers (BLAS pointers, thresholds, thread count)."""
    o = ffi.new("gb_opts *")
    if blas:
        d, s = _blas()
        o.dgemm = ffi.cast("gb_dgemm_fn", d)
        o.sgemm = ffi.cast("gb_sgemm_fn", s)
    o.blas_min_width = BLAS_MIN_WIDTH if blas_min_width is None else int(blas_min_width)
    o.nthreads = _default_threads() if nthreads is None else int(nthreads)
    o.par_min_work = PAR_MIN_WORK if par_min_work is None else int(par_min_work)
    return o


# Immutable after import: read by every call, never written (no global mutable state).
_OPTS = make_opts()
HAVE_OPENMP = bool(lib.gb_have_openmp())


# ------------------------------------------------------------------ the contract
def _cfg(icfg, fcfg):
    if not (isinstance(icfg, np.ndarray) and icfg.dtype == np.int64 and icfg.shape == (spec.I_SIZE,)):
        raise TypeError(f"icfg must be an int64 array of shape ({spec.I_SIZE},) from spec.kernel_config")
    if not (isinstance(fcfg, np.ndarray) and fcfg.dtype == np.float64 and fcfg.shape == (spec.F_SIZE,)):
        raise TypeError(f"fcfg must be a float64 array of shape ({spec.F_SIZE},) from spec.kernel_config")
    return buffer(icfg, "icfg"), buffer(fcfg, "fcfg")


def _check_shapes(arrays: dict, shapes: dict, dtypes: dict) -> None:
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype != dtypes[name]:
            raise TypeError(f"{name} has dtype {a.dtype}, expected {np.dtype(dtypes[name])}")
        if a.shape != shapes[name]:
            raise ValueError(f"{name} has shape {a.shape}, expected {shapes[name]}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    for name in ("H", "Z", "G", "dW", "db", "dgamma", "dbeta", "dslope", "bn_mean", "bn_rstd",
                 "fexp", "act_mean", "act_std", "saturation", "dead", "info", "sig_m", "sig_e",
                 "gnorm_m"):
        if name in arrays and not arrays[name].flags.writeable:
            raise ValueError(f"{name} must be writeable (the kernel writes into it)")


def _dims(W, H):
    if not isinstance(W, np.ndarray) or W.ndim != 3 or W.shape[1] != W.shape[2]:
        raise ValueError(f"W must have shape (L, N, N), got {getattr(W, 'shape', None)}")
    if not isinstance(H, np.ndarray) or H.ndim != 3:
        raise ValueError(f"H must have shape (L+1, B, N), got {getattr(H, 'shape', None)}")
    return W.shape[0], H.shape[1], W.shape[1]


def stack_forward(icfg, fcfg, W, b, gamma, beta, slope, H, Z, bn_mean, bn_rstd, fexp,
                  act_mean, act_std, saturation, dead, info):
    """Forward through all L layers in one C call (contract: :mod:`gradbench.reference`)."""
    forward_with(_OPTS, icfg, fcfg, W, b, gamma, beta, slope, H, Z, bn_mean, bn_rstd, fexp,
                 act_mean, act_std, saturation, dead, info)


def stack_backward(icfg, fcfg, W, gamma, beta, slope, H, Z, bn_rstd, fexp, G, dW, db, dgamma,
                   dbeta, dslope, sig_m, sig_e, gnorm_m, info):
    """Backward through all L layers in one C call (contract: :mod:`gradbench.reference`)."""
    backward_with(_OPTS, icfg, fcfg, W, gamma, beta, slope, H, Z, bn_rstd, fexp, G, dW, db,
                  dgamma, dbeta, dslope, sig_m, sig_e, gnorm_m, info)


def forward_with(opts, icfg, fcfg, W, b, gamma, beta, slope, H, Z, bn_mean, bn_rstd, fexp,
                 act_mean, act_std, saturation, dead, info):
    """:func:`stack_forward` with explicit options from :func:`make_opts` (tests, tuning)."""
    ic, fc = _cfg(icfg, fcfg)
    L, B, N = _dims(W, H)
    t, f8, i8 = W.dtype, np.dtype(np.float64), np.dtype(np.int64)
    sfx = _suffix(W)
    arrays = dict(W=W, b=b, gamma=gamma, beta=beta, slope=slope, H=H, Z=Z, bn_mean=bn_mean,
                  bn_rstd=bn_rstd, fexp=fexp, act_mean=act_mean, act_std=act_std,
                  saturation=saturation, dead=dead, info=info)
    shapes = dict(W=(L, N, N), b=(L, N), gamma=(L, N), beta=(L, N), slope=(L,), H=(L + 1, B, N),
                  Z=(L, B, N), bn_mean=(L, N), bn_rstd=(L, N), fexp=(L + 1,), act_mean=(L,),
                  act_std=(L,), saturation=(L,), dead=(L,), info=info.shape)
    dtypes = dict(W=t, b=t, gamma=t, beta=t, slope=t, H=t, Z=t, bn_mean=t, bn_rstd=t, fexp=i8,
                  act_mean=f8, act_std=f8, saturation=f8, dead=f8, info=i8)
    _check_shapes(arrays, shapes, dtypes)
    if info.ndim != 1 or info.size < 2:
        raise ValueError(f"info must have shape (k,) with k >= 2, got {info.shape}")
    fn = getattr(lib, f"gb_stack_forward_{sfx}")
    p = {n: buffer(a, n) for n, a in arrays.items()}
    rc = fn(ic, fc, p["W"], p["b"], p["gamma"], p["beta"], p["slope"], p["H"], p["Z"],
            p["bn_mean"], p["bn_rstd"], p["fexp"], p["act_mean"], p["act_std"], p["saturation"],
            p["dead"], p["info"], L, B, N, opts)
    check(rc, f"gb_stack_forward_{sfx}")


def backward_with(opts, icfg, fcfg, W, gamma, beta, slope, H, Z, bn_rstd, fexp, G, dW, db,
                  dgamma, dbeta, dslope, sig_m, sig_e, gnorm_m, info):
    """:func:`stack_backward` with explicit options from :func:`make_opts` (tests, tuning)."""
    ic, fc = _cfg(icfg, fcfg)
    L, B, N = _dims(W, H)
    t, f8, i8 = W.dtype, np.dtype(np.float64), np.dtype(np.int64)
    sfx = _suffix(W)
    arrays = dict(W=W, gamma=gamma, beta=beta, slope=slope, H=H, Z=Z, bn_rstd=bn_rstd, fexp=fexp,
                  G=G, dW=dW, db=db, dgamma=dgamma, dbeta=dbeta, dslope=dslope, sig_m=sig_m,
                  sig_e=sig_e, gnorm_m=gnorm_m, info=info)
    shapes = dict(W=(L, N, N), gamma=(L, N), beta=(L, N), slope=(L,), H=(L + 1, B, N),
                  Z=(L, B, N), bn_rstd=(L, N), fexp=(L + 1,), G=(B, N), dW=(L, N, N), db=(L, N),
                  dgamma=(L, N), dbeta=(L, N), dslope=(L,), sig_m=(L + 1,), sig_e=(L + 1,),
                  gnorm_m=(L,), info=info.shape)
    dtypes = dict(W=t, gamma=t, beta=t, slope=t, H=t, Z=t, bn_rstd=t, fexp=i8, G=t, dW=t, db=t,
                  dgamma=t, dbeta=t, dslope=t, sig_m=f8, sig_e=i8, gnorm_m=f8, info=i8)
    _check_shapes(arrays, shapes, dtypes)
    if info.ndim != 1 or info.size < 2:
        raise ValueError(f"info must have shape (k,) with k >= 2, got {info.shape}")
    fn = getattr(lib, f"gb_stack_backward_{sfx}")
    p = {n: buffer(a, n) for n, a in arrays.items()}
    rc = fn(ic, fc, p["W"], p["gamma"], p["beta"], p["slope"], p["H"], p["Z"], p["bn_rstd"],
            p["fexp"], p["G"], p["dW"], p["db"], p["dgamma"], p["dbeta"], p["dslope"], p["sig_m"],
            p["sig_e"], p["gnorm_m"], p["info"], L, B, N, opts)
    check(rc, f"gb_stack_backward_{sfx}")


# ------------------------------------------------------------------ elementwise (for tests)
def activation(z: np.ndarray, code: int, param: float) -> np.ndarray:
    """phi(z) computed by the C kernel (for tests against the reference)."""
    z = np.ascontiguousarray(z)
    a = np.empty_like(z)
    fn = getattr(lib, f"gb_activation_forward_{_suffix(z)}")
    check(fn(buffer(a, "a"), buffer(z, "z"), z.size, int(code), float(param)), f"gb_activation_forward_{_suffix(z)}")
    return a


def activation_grad(z: np.ndarray, code: int, param: float) -> np.ndarray:
    """phi'(z) computed by the C kernel, as da * phi'(z) with da = 1."""
    z = np.ascontiguousarray(z)
    dz = np.empty_like(z)
    ones = np.ones_like(z)
    fn = getattr(lib, f"gb_activation_backward_{_suffix(z)}")
    check(fn(buffer(dz, "dz"), buffer(ones, "da"), buffer(z, "z"), z.size, int(code), float(param)),
          f"gb_activation_backward_{_suffix(z)}")
    return dz
