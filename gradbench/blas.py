"""The BLAS under NumPy and SciPy: which OpenBLAS kernels run in this process.

NumPy's and SciPy's wheels bundle OpenBLAS built for many CPUs (``DYNAMIC_ARCH``); it picks its
kernels when it is loaded, by the CPU or by the environment variable ``OPENBLAS_CORETYPE``. The
choice matters to gradbench's wide layers: on a Zen 5 core a float64 product of 2048 x 2048
matrices ran at 105.8 GF/s with OpenBLAS's AVX-512 kernels ("SkylakeX", its own choice there)
and at 62.7 GF/s with its AVX2 kernels ("Haswell", what ``OPENBLAS_CORETYPE=Haswell`` forces),
while gradbench's own AVX-512 float64 products (packed panels) run a whole forward + backward at
75-90 GF/s from N = 256 to 2048. The C backend therefore calls BLAS from a width that depends on
the kernels of the OpenBLAS it calls (NumPy's where it is an ILP64 OpenBLAS, else SciPy's:
:func:`gemm_kernels`) and on its own instance (``gradbench.cbackend.BLAS_MIN_WIDTH``). gradbench never sets ``OPENBLAS_CORETYPE``: it is a
process-wide setting of the user's NumPy and SciPy.
"""

from __future__ import annotations

import functools
import os

# OpenBLAS's names of its AVX-512 kernel sets.
AVX512_KERNELS = ("SkylakeX", "Cooperlake", "SapphireRapids")


def openblas_kernels() -> dict[str, str]:
    """Every OpenBLAS loaded in this process: its file (real path) and the kernels it runs."""
    from threadpoolctl import threadpool_info

    return {os.path.realpath(i["filepath"]): i.get("architecture") or "unknown"
            for i in threadpool_info() if i.get("internal_api") == "openblas"}


def scipy_kernels() -> str | None:
    """The kernels of SciPy's OpenBLAS (whose ``dgemm`` the Numba backend calls, and the C
    backend where NumPy's BLAS is not an ILP64 OpenBLAS):
    "Haswell", "SkylakeX", ...; ``None`` for another BLAS or where it cannot be told."""
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)

        kernels = openblas_kernels()
    except Exception:  # noqa: BLE001 - no threadpoolctl, an unusual SciPy: nothing to tell
        return None
    # SciPy's wheels keep their OpenBLAS in scipy.libs (scipy/.libs on some platforms)
    mine = [k for path, k in kernels.items() if os.path.basename(os.path.dirname(path)) in ("scipy.libs", ".libs")
            and "scipy" in path]
    if len(mine) == 1:
        return mine[0]
    return next(iter(kernels.values())) if len(kernels) == 1 else None


# NumPy's ILP64 OpenBLAS (numpy >= 2 wheels: "scipy_" prefix; older "openblas64_" builds: none)
_ILP64_GEMM = (("scipy_dgemm_64_", "scipy_sgemm_64_"), ("dgemm_64_", "sgemm_64_"))


@functools.lru_cache(maxsize=1)
def numpy_gemm() -> tuple[int, int, str] | None:
    """NumPy's own BLAS gemm, when it is an OpenBLAS with 64-bit integers (the ``64_`` symbols
    of NumPy's wheels): the addresses of its ``dgemm`` and ``sgemm`` and the kernels it runs;
    ``None`` for any other BLAS (then the C backend calls SciPy's). The C backend prefers it:
    one pool of BLAS threads for NumPy's products and gradbench's (csrc/blas64.c says why)."""
    import ctypes

    import numpy  # noqa: F401  (loads NumPy's BLAS)

    try:
        kernels = openblas_kernels()
    except Exception:  # noqa: BLE001 - no threadpoolctl, an unusual NumPy: SciPy's BLAS
        return None
    mine = [(path, k) for path, k in kernels.items() if os.path.basename(os.path.dirname(path)) == "numpy.libs"]
    if len(mine) != 1:
        return None
    path, arch = mine[0]
    lib = ctypes.CDLL(path)  # the library already loaded: the same instance
    for d, s in _ILP64_GEMM:
        if hasattr(lib, d) and hasattr(lib, s):
            return (ctypes.cast(getattr(lib, d), ctypes.c_void_p).value,
                    ctypes.cast(getattr(lib, s), ctypes.c_void_p).value, arch)
    return None


def gemm_kernels() -> str | None:
    """The kernels of the BLAS the C backend calls: NumPy's (:func:`numpy_gemm`) or SciPy's."""
    mine = numpy_gemm()
    return mine[2] if mine is not None else scipy_kernels()


def gemm_threads() -> int | None:
    """The threads of the BLAS the C backend calls (NumPy's ILP64 OpenBLAS, else SciPy's) as
    threadpoolctl reads them now (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, the CPUs, or a
    ``threadpool_limits``); ``None`` where it cannot be told."""
    try:
        from threadpoolctl import threadpool_info

        pools = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
    except Exception:  # noqa: BLE001 - no threadpoolctl: nothing to tell
        return None
    where = "numpy.libs" if numpy_gemm() is not None else "scipy"
    mine = [i for i in pools if where in os.path.realpath(i["filepath"])]
    return int(mine[0]["num_threads"]) if len(mine) == 1 else None


def runs_avx512_kernels() -> bool:
    """Whether the BLAS the C backend calls (:func:`gemm_kernels`) runs its AVX-512 kernels."""
    return gemm_kernels() in AVX512_KERNELS
