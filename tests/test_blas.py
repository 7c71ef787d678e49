"""gradbench.blas tells which kernels SciPy's OpenBLAS runs, and the C backend's BLAS width follows it.

Checked against what OpenBLAS is told to run: ``OPENBLAS_CORETYPE`` forces its kernels in a fresh
process (AVX-512 ones only on a CPU that has AVX-512: where the C backend's own dispatch runs its
AVX-512 instance, x86-64-v4, whose features include those of OpenBLAS's SkylakeX kernels).
"""

import os
import subprocess
import sys

import pytest

from gradbench import blas

CODE = ("import gradbench.blas as b, gradbench.cbackend as c; "
        "print(b.scipy_kernels(), int(b.runs_avx512_kernels()), c.BLAS_MIN_WIDTH)")


def _fresh(coretype: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRADBENCH_C_BLAS_MIN_WIDTH"}
    env["OPENBLAS_CORETYPE"] = coretype
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True)
    if proc.returncode != 0 and "C extension not built" in proc.stderr:
        pytest.skip("C extension not built")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def _c_isa() -> int:
    try:
        from gradbench import cbackend
    except ImportError:  # no C extension: the fresh process would skip anyway
        return 0
    return cbackend.isa()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OPENBLAS_CORETYPE is read by Linux builds")
def test_forced_avx2_kernels_are_reported_and_keep_blas_from_1024():
    if blas.scipy_kernels() is None:
        pytest.skip("SciPy does not use OpenBLAS here")
    assert _fresh("Haswell") == ["Haswell", "0", "1024"]


@pytest.mark.skipif(_c_isa() != 4, reason="AVX-512 kernels need a CPU with AVX-512")
def test_avx512_kernels_are_reported_and_move_blas_to_512():
    if blas.scipy_kernels() is None:
        pytest.skip("SciPy does not use OpenBLAS here")
    assert _fresh("SkylakeX") == ["SkylakeX", "1", "512"]

