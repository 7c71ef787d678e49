"""The BLAS under NumPy and SciPy: which OpenBLAS kernels run in this process.

NumPy's and SciPy's wheels bundle OpenBLAS built for many CPUs (``DYNAMIC_ARCH``); it picks its
kernels when it is loaded, by the CPU or by the environment variable ``OPENBLAS_CORETYPE``. The
choice matters to gradbench's wide layers: on a Zen 5 core a float64 product of 2048 x 2048
matrices ran at 105.8 GF/s with OpenBLAS's AVX-512 kernels ("SkylakeX", its own choice there)
and at 62.7 GF/s with its AVX2 kernels ("Haswell", what ``OPENBLAS_CORETYPE=Haswell`` forces),
while gradbench's own float64 products run at 66-75 GF/s from N = 256 to 512. The C backend
therefore calls BLAS from a width that depends on the kernels SciPy's OpenBLAS runs
(``gradbench.cbackend.BLAS_MIN_WIDTH``). gradbench never sets ``OPENBLAS_CORETYPE``: it is a
process-wide setting of the user's NumPy and SciPy.
"""

from __future__ import annotations

import os

# OpenBLAS's names of its AVX-512 kernel sets.
AVX512_KERNELS = ("SkylakeX", "Cooperlake", "SapphireRapids")


def openblas_kernels() -> dict[str, str]:
    """Every OpenBLAS loaded in this process: its file (real path) and the kernels it runs."""
    from threadpoolctl import threadpool_info

    return {os.path.realpath(i["filepath"]): i.get("architecture") or "unknown"
            for i in threadpool_info() if i.get("internal_api") == "openblas"}


def scipy_kernels() -> str | None:
    """The kernels of SciPy's OpenBLAS (whose ``dgemm`` gradbench's C and Numba backends call):
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


def runs_avx512_kernels() -> bool:
    """Whether SciPy's OpenBLAS runs its AVX-512 kernels here."""
    return scipy_kernels() in AVX512_KERNELS
