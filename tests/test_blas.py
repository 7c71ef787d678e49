"""gradbench.blas tells which kernels SciPy's OpenBLAS runs, and the C backend's BLAS width follows it.

Checked against what OpenBLAS is told to run: ``OPENBLAS_CORETYPE`` forces its kernels in a fresh
process (AVX-512 ones only on a CPU that has AVX-512).
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


def _uses_openblas() -> bool:
    return any("openblas" in os.path.basename(p).lower() for p in blas.openblas_kernels())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OPENBLAS_CORETYPE is read by Linux builds")
def test_forced_avx2_kernels_are_reported_and_keep_blas_from_1024():
    if not _uses_openblas():
        pytest.skip("SciPy does not use OpenBLAS here")
    assert _fresh("Haswell") == ["Haswell", "0", "1024"]


@pytest.mark.skipif(not blas.has_avx512(), reason="AVX-512 kernels need a CPU with AVX-512")
def test_avx512_kernels_are_reported_and_move_blas_to_512():
    if not _uses_openblas():
        pytest.skip("SciPy does not use OpenBLAS here")
    assert _fresh("SkylakeX") == ["SkylakeX", "1", "512"]


def test_cpu_flags_match_proc_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    assert blas.cpu_flags() == frozenset(flags)
    assert blas.has_avx512() == all(f in flags for f in ("avx512f", "avx512dq", "avx512bw", "avx512vl"))
