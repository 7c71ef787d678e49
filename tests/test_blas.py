"""gradbench.blas tells which kernels the OpenBLAS the C backend calls runs (NumPy's where it is
an ILP64 OpenBLAS, else SciPy's), and the C backend's BLAS width follows it.

Checked against what OpenBLAS is told to run: ``OPENBLAS_CORETYPE`` forces its kernels in a fresh
process (AVX-512 ones only on a CPU that has AVX-512: where the C backend's own dispatch runs its
AVX-512 instance, x86-64-v4, whose features include those of OpenBLAS's SkylakeX kernels).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from gradbench import blas

CODE = ("import gradbench.blas as b, gradbench.cbackend as c; "
        "print(b.gemm_kernels(), int(b.runs_avx512_kernels()), c.BLAS_MIN_WIDTH, c.BLAS_MIN_WIDTH_F32)")


def _fresh(coretype: str, threads: str = "1") -> list[str]:
    """What a fresh process reads under OpenBLAS's ``coretype`` kernels and ``threads`` threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADBENCH_C_BLAS_MIN_WIDTH")}
    env["OPENBLAS_CORETYPE"] = coretype
    env["OPENBLAS_NUM_THREADS"] = threads
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
def test_forced_avx2_kernels_are_reported_and_leave_the_own_avx512_kernels_every_width():
    """Under OpenBLAS's AVX2 kernels the own AVX-512 products (packed panels) were 1.4-1.5x
    faster at every width measured (gradbench/cbackend.py): no BLAS; an AVX2 instance calls it
    from 512."""
    if blas.gemm_kernels() is None:
        pytest.skip("the C backend's BLAS is not an OpenBLAS here")
    width = str(1 << 31) if _c_isa() == 4 else "512"
    assert _fresh("Haswell") == ["Haswell", "0", width, width]


@pytest.mark.skipif(_c_isa() != 4, reason="AVX-512 kernels need a CPU with AVX-512")
def test_avx512_kernels_are_reported_and_move_blas_to_512():
    if blas.gemm_kernels() is None:
        pytest.skip("the C backend's BLAS is not an OpenBLAS here")
    assert _fresh("SkylakeX") == ["SkylakeX", "1", "512", "512"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OPENBLAS_CORETYPE is read by Linux builds")
def test_blas_with_several_threads_is_never_called():
    """Where the OpenBLAS the C backend calls runs several threads (its default on a multi-core
    machine) the own products take every width: under other load OpenBLAS's split products waited
    for time slices (width 1024: 2.4-6.4 s against 1.1-1.3). gemm_threads reads what OpenBLAS was
    told, in a fresh process."""
    if blas.gemm_kernels() is None:
        pytest.skip("the C backend's BLAS is not an OpenBLAS here")
    if len(os.sched_getaffinity(0)) < 2:  # (taskset -c 1): OpenBLAS takes at most the CPUs it may use
        pytest.skip("this process may use one CPU: OpenBLAS runs one thread whatever it is told")
    never = str(1 << 31)
    for kernels in ("Haswell", "SkylakeX") if _c_isa() == 4 else ("Haswell",):
        assert _fresh(kernels, threads="2")[2:] == [never, never]
    code = "import gradbench.blas as b; print(b.gemm_threads())"
    for threads in ("1", "2"):  # (OpenBLAS takes at most the CPUs)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "OPENBLAS_NUM_THREADS": threads}).stdout.split()
        assert out == [threads]



def _cbackend():
    try:
        from gradbench import cbackend
    except ImportError:
        pytest.skip("C extension not built")
    return cbackend


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ta, tb", [("N", "N"), ("T", "N"), ("N", "T")])
def test_ilp64_shims_compute_numpys_product(dtype, ta, tb):
    """The shims (csrc/blas64.c) hand NumPy's ILP64 gemm the right arguments: column-major
    C = op(A) op(B) with m, n, k and leading dimensions all different, against NumPy's matmul."""
    cb = _cbackend()
    if blas.numpy_gemm() is None:
        pytest.skip("NumPy's BLAS is not an ILP64 OpenBLAS here")
    m, n, k = 7, 5, 9
    rng = np.random.default_rng(0)
    # column-major op(A) (m, k), op(B) (k, n): stored as the transposes' C-order arrays
    A = rng.standard_normal((m, k) if ta == "N" else (k, m)).astype(dtype)
    B = rng.standard_normal((k, n) if tb == "N" else (n, k)).astype(dtype)
    Af, Bf = np.asfortranarray(A), np.asfortranarray(B)
    C = np.zeros((m, n), dtype=dtype, order="F")
    ffi, lib = cb.ffi, cb.lib
    T = "double" if dtype == np.float64 else "float"
    fn = lib.gb_dgemm_ilp64 if dtype == np.float64 else lib.gb_sgemm_ilp64
    ints = [ffi.new("int *", v) for v in (m, n, k, A.shape[0], B.shape[0], m)]
    fn(ffi.new("char[]", ta.encode()), ffi.new("char[]", tb.encode()), ints[0], ints[1], ints[2],
       ffi.new(f"{T} *", 1.5), ffi.cast(f"{T} *", Af.ctypes.data), ints[3],
       ffi.cast(f"{T} *", Bf.ctypes.data), ints[4], ffi.new(f"{T} *", 0.0),
       ffi.cast(f"{T} *", C.ctypes.data), ints[5])
    want = 1.5 * (A if ta == "N" else A.T).astype(np.float64) @ (B if tb == "N" else B.T).astype(np.float64)
    np.testing.assert_allclose(C, want, rtol=1e-12 if dtype == np.float64 else 1e-5, atol=1e-5)


def test_drivers_call_numpys_gemm():
    """The drivers' BLAS pointers are the shims, and the shims' targets are NumPy's own gemm (one
    pool of BLAS threads with the user's NumPy products: csrc/blas64.c)."""
    cb = _cbackend()
    found = blas.numpy_gemm()
    if found is None:
        pytest.skip("NumPy's BLAS is not an ILP64 OpenBLAS here")
    if os.environ.get("GRADBENCH_C_NO_BLAS"):
        pytest.skip("GRADBENCH_C_NO_BLAS is set")
    ffi, lib = cb.ffi, cb.lib
    assert cb.BLAS_SOURCE == "numpy"
    assert ffi.cast("void *", cb._OPTS.dgemm) == ffi.cast("void *", ffi.addressof(lib, "gb_dgemm_ilp64"))
    assert ffi.cast("void *", cb._OPTS.sgemm) == ffi.cast("void *", ffi.addressof(lib, "gb_sgemm_ilp64"))
    import ctypes

    import threadpoolctl

    path = next(i["filepath"] for i in threadpoolctl.threadpool_info()
                if os.path.basename(os.path.dirname(i["filepath"])) == "numpy.libs")
    numpy_blas = ctypes.CDLL(path)
    names = next(pair for pair in blas._ILP64_GEMM if all(hasattr(numpy_blas, n) for n in pair))
    assert found[:2] == tuple(ctypes.cast(getattr(numpy_blas, n), ctypes.c_void_p).value for n in names)


def test_the_blas_width_follows_the_kernels_and_the_instance():
    """README: BLAS from width 512 under OpenBLAS's AVX-512 kernels, never under its AVX2 ones
    while the own products run AVX-512, and from 512 on a CPU without AVX-512 (every branch,
    whatever this machine runs)."""
    try:
        from gradbench import cbackend
    except ImportError:
        pytest.skip("C extension not built")
    never = cbackend.NO_BLAS
    assert never > 1 << 30
    assert [cbackend.default_blas_min_width(avx512, isa, 1) for avx512 in (True, False) for isa in (4, 3, 1)] == \
        [512, 512, 512, never, 512, 512]
    assert [cbackend.default_blas_min_width(avx512, isa, 2) for avx512 in (True, False) for isa in (4, 3, 1)] == \
        [never] * 6
    one = blas.gemm_threads() == 1
    assert cbackend.default_blas_min_width() == (512 if one and (blas.runs_avx512_kernels() or cbackend.isa() < 4)
                                                 else never)
