"""The vector activations of csrc/activations.h (gb_vact), lane by lane, at every instruction set.

tests/test_c.py reaches phi and phi' through the exported layer functions, which are the
baseline instance (SSE2 on x86-64); the drivers run the AVX2+FMA and AVX-512 instances. Here a
small extension is compiled at test time from csrc/activations.h once per instruction set (as
csrc/stack_f64_v3.c / _v4.c do: target_begin.h), and gb_vact is called on GB_VL lanes at a time
with phi only, phi' only, or both (the forward asks for both, the backward for phi' alone).
Checked against mpmath (exact maths) and the NumPy reference, never against the C code itself:
GELU over its whole range, the far lower tail where Phi is subnormal and then 0 included, and
the special values; and that phi' has the same bits whether phi is asked for too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from gradbench import abi, spec
from gradbench import activations as A
from gradbench.activations import dphi_max
from tests.helpers import FLOAT_LANES

cb = pytest.importorskip("gradbench.cbackend", reason="C extension not built", exc_type=ImportError)
mp = pytest.importorskip("mpmath")

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
ISAS = [i for i in (1, 3, 4) if i <= cb.isa()]  # baseline, AVX2+FMA, AVX-512: those this CPU runs
VECTOR = ["identity", "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "swish", "gelu"]

_TU = """
#define GB_ISA_LEVEL {level}
#if GB_ISA_LEVEL > 1
#include "target_begin.h"
#else
#define GB_TARGET_ON 1
#endif
#ifdef GB_TARGET_ON
#include <stdint.h>
#include "activations.h"
int gbt_vl_v{level}(void) {{
#ifdef GB_HAVE_VEC
    return GB_VL;
#else
    return 0;
#endif
}}
/* gb_vact on n lanes (n a multiple of GB_VL): mode 1 phi, 2 phi', 3 both */
void gbt_vact_v{level}(const double *z, int64_t n, int act, double p, int mode, double *a, double *d) {{
#ifdef GB_HAVE_VEC
    for (int64_t j = 0; j + GB_VL <= n; j += GB_VL) {{
        gb_vd v, va, vd;
        memcpy(&v, z + j, sizeof v);
        if (mode == 1) gb_vact(v, act, p, &va, NULL);
        else if (mode == 2) gb_vact(v, act, p, NULL, &vd);
        else gb_vact(v, act, p, &va, &vd);
        if (mode & 1) memcpy(a + j, &va, sizeof va);
        if (mode & 2) memcpy(d + j, &vd, sizeof vd);
    }}
#endif
}}
/* gb_vact_scaled (phi and phi' together, mode 3, or phi' alone, mode 2) and the scalar
 * gb_phi_scaled / gb_dphi_scaled of every lane (float32: f32 = 1, u rounded to float, results
 * rounded to float); used[j / GB_VL]: 1 where the vector path took the lanes */
void gbt_scaled_v{level}(const double *u, int64_t n, int act, double p, int64_t f, int f32, int mode,
                         double *a, double *d, double *sa, double *sd, int *used) {{
    const gb_scaled s = gb_scaled_init(act, p, 1, f, f32);
#ifdef GB_HAVE_VEC
    for (int64_t j = 0; j + GB_VL <= n; j += GB_VL) {{
        gb_vd v, va = {{0}}, vd = {{0}};
        memcpy(&v, u + j, sizeof v);
        used[j / GB_VL] = mode == 3 ? gb_vact_scaled(v, &s, act, &va, &vd) : gb_vact_scaled(v, &s, act, NULL, &vd);
        for (int i = 0; i < GB_VL; i++) {{
            a[j + i] = f32 ? (double)(float)va[i] : va[i];
            d[j + i] = f32 ? (double)(float)vd[i] : vd[i];
        }}
    }}
#endif
    for (int64_t j = 0; j < n; j++) {{
        sa[j] = f32 ? (double)gb_phi_scaled_f32((float)u[j], &s) : gb_phi_scaled_f64(u[j], &s);
        sd[j] = f32 ? (double)gb_dphi_scaled_f32((float)u[j], &s) : gb_dphi_scaled_f64(u[j], &s);
    }}
}}
#ifdef GB_HAVE_VEC
#include "vact_f32.h"
#endif
/* gb_vf_act (the float32 rows' float lanes) on n floats (n a multiple of 2 GB_VL): mode 2 phi',
 * 3 both; ok[j] = 1 where gb_vf_ok takes the lane */
void gbt_vf_v{level}(const float *x, int64_t n, int act, float p, int mode, float *a, float *d, int *ok) {{
#ifdef GB_HAVE_VEC
    for (int64_t j = 0; j + GB_VFL <= n; j += GB_VFL) {{
        gb_vf v, va, vd;
        memcpy(&v, x + j, sizeof v);
        const gb_vfi k = gb_vf_ok(v);
        if (mode == 2) gb_vf_act(v, act, p, NULL, &vd);
        else gb_vf_act(v, act, p, &va, &vd);
        if (mode == 3) memcpy(a + j, &va, sizeof va);
        memcpy(d + j, &vd, sizeof vd);
        for (int i = 0; i < GB_VFL; i++) ok[j + i] = k[i] != 0;
    }}
#endif
}}
#if GB_ISA_LEVEL > 1
#include "target_end.h"
#endif
#else
void gbt_vf_v{level}(const float *x, int64_t n, int act, float p, int mode, float *a, float *d, int *ok) {{}}
int gbt_vl_v{level}(void) {{ return 0; }}
void gbt_vact_v{level}(const double *z, int64_t n, int act, double p, int mode, double *a, double *d) {{}}
void gbt_scaled_v{level}(const double *u, int64_t n, int act, double p, int64_t f, int f32, int mode,
                         double *a, double *d, double *sa, double *sd, int *used) {{}}
#endif
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """The test extension: gbt_vact_v1/_v3/_v4 (the instances this compiler builds)."""
    from cffi import FFI

    from gradbench import _cbuild

    tmp = tmp_path_factory.mktemp("vact")
    sources = []
    for level in (1, 3, 4):
        src = tmp / f"vact_v{level}.c"
        src.write_text(_TU.format(level=level))
        sources.append(str(src))
    ffi = FFI()
    decls = "".join(f"int gbt_vl_v{lv}(void); void gbt_vact_v{lv}(const double *, int64_t, int, double, int, "
                    f"double *, double *);\nvoid gbt_scaled_v{lv}(const double *, int64_t, int, double, int64_t, "
                    f"int, int, double *, double *, double *, double *, int *);\n"
                    f"void gbt_vf_v{lv}(const float *, int64_t, int, float, int, float *, float *, int *);\n"
                    for lv in (1, 3, 4))
    ffi.cdef(decls)
    ffi.set_source("_gb_vact_test", decls, sources=sources, include_dirs=[str(CSRC)],
                   extra_compile_args=_cbuild.compile_flags(), libraries=["m"])
    so = ffi.compile(tmpdir=str(tmp))
    spec_ = importlib.util.spec_from_file_location("_gb_vact_test", so)
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    sys.modules.pop("_gb_vact_test", None)
    return mod


def vact(lib, isa, z, act, param=None, mode=3):
    """(phi, phi') of the float64 array z by gb_vact of instruction set isa (None where not asked)."""
    code = abi.ACT_CODE[act]
    p = spec.ACT_PARAM_DEFAULT.get(act, 0.0) if param is None else param
    vl = getattr(lib.lib, f"gbt_vl_v{isa}")()
    if vl == 0:
        pytest.skip(f"no vector code for instruction set {isa} with this compiler")
    n = -(-z.size // 8) * 8
    zp = np.zeros(n)
    zp[:z.size] = z
    a, d = np.full(n, 7.0), np.full(n, 7.0)
    ffi = lib.ffi
    getattr(lib.lib, f"gbt_vact_v{isa}")(ffi.cast("double *", zp.ctypes.data), n, code, float(p), mode,
                                         ffi.cast("double *", a.ctypes.data), ffi.cast("double *", d.ctypes.data))
    return (a[:z.size] if mode & 1 else None), (d[:z.size] if mode & 2 else None)


# ------------------------------------------------------------------ GELU against mpmath
def _gelu_grid():
    rng = np.random.default_rng(2024)
    return np.concatenate([
        rng.uniform(-40.0, 9.0, 1500), rng.uniform(-3.0, 3.0, 400),
        -np.geomspace(1e-9, 40.0, 300), np.geomspace(1e-9, 40.0, 150),
        np.linspace(-39.0, -36.5, 151),  # Phi leaves the normal range (z ~ -37.5) and rounds to 0 (~ -38.6)
        [0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 12.0, 28.0, 36.0, 44.0, 45.0, -0.75179, -0.7517916243936, 1e-300, -1e-300],
        -np.array([0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 28.0, 36.0, 44.0]),
        -np.nextafter([1.0, 2.0, 4.0, 12.0, 28.0, 44.0], 0), -np.nextafter([1.0, 2.0, 4.0, 12.0, 28.0, 44.0], 99),
    ])


def _gelu_mp(z):
    """mpmath's gelu(z) and gelu'(z) (160 bits) at each z."""
    mp.mp.prec = 160
    phi, dphi = [], []
    for v in z:
        x = mp.mpf(float(v))
        cdf = mp.erfc(-x / mp.sqrt(2)) / 2
        phi.append(x * cdf)
        dphi.append(cdf + x * mp.exp(-x * x / 2) / mp.sqrt(2 * mp.pi))
    return phi, dphi


@pytest.fixture(scope="module")
def gelu_exact():
    """z and mpmath's gelu(z), gelu'(z) on the grid."""
    z = _gelu_grid()
    return (z, *_gelu_mp(z))


def _check(z, got, exact, dtype, derivative, what):
    """got within a few ulps of the exact values (the tolerances of test_c.py's mpmath test)."""
    want = np.array([float(v) for v in exact]).astype(dtype)
    err = np.array([abs(float(mp.mpf(float(g)) - v)) for g, v in zip(got, exact)])
    ulp = np.spacing(np.abs(want)).astype(np.float64)
    ulps = {"float64": 4.0, "float32": 1.0}[dtype]  # float32: a double evaluation rounded once
    tol = ulps * ulp
    # results below the normal range: an ulp of the smallest subnormal more (rounded once)
    tol = np.where(np.abs(want) < np.finfo(dtype).tiny, tol + 2 * np.spacing(want.dtype.type(0)), tol)
    if derivative:  # near gelu''s root (z ~ -0.75) its terms cancel: ulps of max phi'
        eps = np.finfo(dtype).eps
        tol = np.where(np.abs(z) < 2, np.maximum(tol, ulps * eps * dphi_max("gelu", 0.0)), tol)
    bad = np.flatnonzero(~(err <= tol))
    assert bad.size == 0, (f"{what} at z = {z[bad[0]]!r}: {got[bad[0]]!r}, exact {float(exact[bad[0]])!r} "
                           f"({err[bad[0]] / max(ulp[bad[0]], 5e-324):.1f} ulp); {bad.size} such")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("isa", ISAS)
def test_vector_gelu_against_mpmath(lib, gelu_exact, isa, dtype):
    """phi and phi' of GELU, asked for together (the forward) and alone (the backward), within
    4 ulps (float64; float32: the double result rounded once, 1 ulp) of mpmath over
    [-40, 9] and the pieces' edges, the subnormal tail included; float32 rows are float32 z."""
    z0, phi, dphi = gelu_exact
    if dtype == "float32":  # the float32 values of the grid: exact values at the rounded z
        z = z0.astype(np.float32).astype(np.float64)
        phi, dphi = _gelu_mp(z)
    else:
        z = z0
    for mode in (3, 1, 2):
        a, d = vact(lib, isa, z, "gelu", mode=mode)
        if a is not None:
            _check(z, a.astype(dtype), phi, dtype, False, f"gelu isa {isa} {dtype} mode {mode}")
        if d is not None:
            _check(z, d.astype(dtype), dphi, dtype, True, f"gelu' isa {isa} {dtype} mode {mode}")


@pytest.mark.parametrize("isa", ISAS)
def test_vector_gelu_special_values(lib, isa):
    """0 and -0 (gelu keeps the sign of zero, gelu' = 1/2), +-inf and NaN as the reference
    (gelu(inf) = inf; gelu(-inf), gelu'(+-inf) NaN: inf * 0), huge finite z (Phi exactly 0 or 1)."""
    z = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e300, -1e300, 1.7976931348623157e308,
                  -1.7976931348623157e308, 50.0, -50.0, 5e-324, -5e-324])
    a, d = vact(lib, isa, z, "gelu")
    with np.errstate(all="ignore"):
        want_a, want_d = A.phi(z, abi.ACT_CODE["gelu"], 0.0), A.dphi(z, abi.ACT_CODE["gelu"], 0.0)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(want_a))
    np.testing.assert_array_equal(np.isnan(d), np.isnan(want_d))
    np.testing.assert_array_equal(a, want_a)  # equal where not NaN (0 == -0)
    np.testing.assert_array_equal(np.signbit(a[:2]), [False, True])
    np.testing.assert_array_equal(a[[10, 11]], [50.0, -0.0])
    np.testing.assert_array_equal(d[~np.isnan(d)], want_d[~np.isnan(want_d)])
    assert d[0] == d[1] == 0.5


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", VECTOR)
def test_vector_activations_match_reference(lib, isa, act):
    """Every activation's lanes, phi and phi' asked for together and each alone, against the
    reference (16 ulps; gelu's phi: of 0.5 |z| too, and gelu', swish': of max phi', as in
    tests/test_c.py: the reference's own error and the cancellation near phi''s roots)."""
    rng = np.random.default_rng(3)
    z = np.concatenate([rng.normal(0, 3, 2000), rng.uniform(-45, 45, 500), [0.0, -0.0, np.inf, -np.inf, np.nan]])
    code, p = abi.ACT_CODE[act], spec.ACT_PARAM_DEFAULT.get(act, 0.0)
    with np.errstate(all="ignore"):
        want_a, want_d = A.phi(z, code, p), A.dphi(z, code, p)
    eps = np.finfo(float).eps
    a3, d3 = vact(lib, isa, z, act, mode=3)
    a1, _ = vact(lib, isa, z, act, mode=1)
    _, d2 = vact(lib, isa, z, act, mode=2)
    for got, want, scale, what in ((a3, want_a, 0.5 * np.abs(z) if act == "gelu" else 0.0, "phi"),
                                   (a1, want_a, 0.5 * np.abs(z) if act == "gelu" else 0.0, "phi alone"),
                                   (d3, want_d, dphi_max(act, p) if act in ("gelu", "swish") else 0.0, "phi'"),
                                   (d2, want_d, dphi_max(act, p) if act in ("gelu", "swish") else 0.0, "phi' alone")):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{act} {what}: NaN pattern")
        ok = ~np.isnan(want) & (got != want)  # equal entries (inf included) pass
        tol = 16 * eps * np.maximum(np.maximum(np.abs(want), scale), np.finfo(float).tiny)
        bad = np.flatnonzero(~(np.abs(got[ok] - want[ok]) <= tol[ok]))
        assert bad.size == 0, (f"{act} {what} isa {isa} at z = {z[ok][bad[0]]!r}: {got[ok][bad[0]]!r}, "
                               f"reference {want[ok][bad[0]]!r}")


@pytest.mark.parametrize("isa", ISAS)
def test_vector_gelu_same_bits_alone_and_together(lib, isa):
    """GELU's phi' has the same bits whether phi is asked for too (the forward's saturation count
    and the backward's dz come from the same lanes), and phi likewise. (Not so for tanh, ELU and
    SELU, whose forms with and without the other output differ by an ulp or so, by design.)"""
    rng = np.random.default_rng(4)
    z = np.concatenate([rng.normal(0, 3, 3000), rng.uniform(-45, 45, 1000), [0.0, -0.0, np.inf, -np.inf, np.nan]])
    a3, d3 = vact(lib, isa, z, "gelu", mode=3)
    a1, _ = vact(lib, isa, z, "gelu", mode=1)
    _, d2 = vact(lib, isa, z, "gelu", mode=2)
    for one, both in ((a1, a3), (d2, d3)):
        np.testing.assert_array_equal(np.isnan(one), np.isnan(both))
        np.testing.assert_array_equal(one.view(np.int64)[~np.isnan(one)], both.view(np.int64)[~np.isnan(both)])


def test_gelu_table_is_the_generators_output():
    """csrc/gelu_table.h and kernels/gelu_table.py (the Numba GELU's copy) are what
    csrc/gen_gelu_table.py writes (and the script's own check, each piece within 2^-55 of F in
    relative terms, holds)."""
    sys.path.insert(0, str(CSRC))
    try:
        import gen_gelu_table
    finally:
        sys.path.remove(str(CSRC))
    pieces = gen_gelu_table.table_pieces()
    assert (CSRC / "gelu_table.h").read_text() == gen_gelu_table.table_text(pieces)
    assert gen_gelu_table.OUT_PY.read_text() == gen_gelu_table.table_python(pieces)


# ------------------------------------------------------------------ scaled evaluation, 1000 < |f| <= 2200
SCALED = ["tanh", "elu", "selu", "swish", "gelu"]
EDGE_F = [1001, 1010, 1021, 1022, 1023, 1024, 1025, 1052, 1073, 1074, 1075, 1076, 1100, 1500, 2043, 2044, 2045,
          2046, 2100, 2199, 2200]


def scaled(lib, isa, u, act, f, f32, mode=3):
    """(vector phi, phi', scalar phi, phi', vector path taken per GB_VL lanes) of mantissas u at f."""
    vl = getattr(lib.lib, f"gbt_vl_v{isa}")()
    if vl == 0:
        pytest.skip(f"no vector code for instruction set {isa} with this compiler")
    assert u.size % 8 == 0
    p = spec.ACT_PARAM_DEFAULT.get(act, 0.0)
    out = [np.zeros(u.size) for _ in range(4)]
    used = np.zeros(u.size // vl, np.intc)
    ffi = lib.ffi
    ptr = [ffi.cast("double *", x.ctypes.data) for x in [u] + out]
    getattr(lib.lib, f"gbt_scaled_v{isa}")(ptr[0], u.size, abi.ACT_CODE[act], float(p), int(f), int(f32), mode,
                                           *ptr[1:], ffi.cast("int *", used.ctypes.data))
    return (*out, used)


def _mantissas(rng, dtype):
    """Mantissas as a forward-rescaled layer has them (|u| <= 1, a few tiny ones), and vectors of
    magnitudes across the whole range (subnormal to near overflow; float32: its own range), signed
    zeros, the edges of TINY and of GB_SATURATED at the exponents tried: blocks of 8 lanes."""
    lo, hi = (-1074, 1023) if dtype == "float64" else (-149, 127)
    typical = rng.uniform(-1, 1, 8 * 300) * np.where(rng.random(8 * 300) < 0.02, 2.0 ** -40, 1.0)
    wide = rng.choice([-1.0, 1.0], 8 * 300) * np.ldexp(rng.uniform(1, 2, 8 * 300), rng.integers(lo, hi, 8 * 300))
    special = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0 ** lo, -(2.0 ** lo)])
    u = np.concatenate([typical, wide, special])
    return u.astype(dtype).astype(np.float64)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", SCALED)
def test_scaled_vector_path_is_ldexp_bit_for_bit(lib, act, isa, dtype):
    """gb_vact_scaled where 1000 < |f| <= 2200 (GB_VM_LDEXP): z = u 2^f and phi(z) 2^-f by three
    exact power-of-two products instead of ldexp, lanes below TINY by their linear term,
    overflowing ones by the limit form, the rest at saturation: the same bits as the scalar
    gb_phi_scaled / gb_dphi_scaled (ldexp, libm) for every lane the vector path takes, phi and phi'
    together and phi' alone, over random mantissas and exponents and the edge exponents (where
    2^-f, the intermediates or the results leave the normal range). The vector path must take the
    typical layer (|u| <= 1) at every exponent: it is not a test of the fallback."""
    rng = np.random.default_rng(abi.ACT_CODE[act] * 7 + isa)
    u = _mantissas(rng, dtype)
    typical = slice(0, 8 * 300)
    fs = EDGE_F + [int(v) for v in rng.integers(1001, 2201, 12)]
    taken = 0
    for f in fs + [-v for v in fs]:
        for mode in (3, 2):
            a, d, sa, sd, used = scaled(lib, isa, u, act, f, dtype == "float32", mode)
            lanes = np.repeat(used.astype(bool), u.size // used.size)
            assert lanes[typical].all(), f"{act} f={f}: the vector path left typical mantissas to the scalar code"
            taken += int(lanes.sum())
            what = f"{act} {dtype} isa {isa} f={f} mode {mode}"
            if mode == 3:
                np.testing.assert_array_equal(a[lanes].view(np.int64), sa[lanes].view(np.int64), err_msg=what + " phi")
            np.testing.assert_array_equal(d[lanes].view(np.int64), sd[lanes].view(np.int64), err_msg=what + " phi'")
    assert taken > 0.9 * u.size * len(fs) * 4


@pytest.mark.parametrize("isa", ISAS)
def test_scaled_ldexp_lanes_match_reference(lib, isa):
    """The same lanes against the reference's phi_scaled / dphi_scaled (NumPy, np.ldexp)."""
    rng = np.random.default_rng(9)
    u = _mantissas(rng, "float64")
    for act in SCALED:
        code, p = abi.ACT_CODE[act], spec.ACT_PARAM_DEFAULT.get(act, 0.0)
        for f in (1001, 1023, 1074, 1075, 1500, 2200, -1001, -1075, -1500, -2200):
            a, d, _, _, used = scaled(lib, isa, u, act, f, False)
            lanes = np.repeat(used.astype(bool), u.size // used.size)
            with np.errstate(all="ignore"):
                want_a = A.phi_scaled(u, f, code, np.float64(p))
                want_d = A.dphi_scaled(u, f, code, np.float64(p))
            for got, want, name in ((a, want_a, "phi"), (d, want_d, "phi'")):
                ok = lanes & (got != want)  # -0 == 0
                assert not ok.any(), f"{act} {name} f={f} u={u[ok][0]!r}: {got[ok][0]!r}, reference {want[ok][0]!r}"


# ------------------------------------------------------------------ float32's float lanes
FLOAT_PARAMS = [(act, None) for act in FLOAT_LANES] + [("elu", 0.5), ("elu", 1.7), ("elu", 37.0)]


def vf(lib, isa, z, act, p, mode=3):
    """(phi or None, phi', ok) of the float32 array z by gb_vf_act of instruction set isa."""
    if getattr(lib.lib, f"gbt_vl_v{isa}")() == 0:
        pytest.skip(f"no vector code for instruction set {isa} with this compiler")
    n = -(-z.size // 16) * 16
    zp = np.zeros(n, dtype=np.float32)
    zp[:z.size] = z
    a, d = np.full(n, 7.0, dtype=np.float32), np.full(n, 7.0, dtype=np.float32)
    ok = np.zeros(n, dtype=np.intc)
    ffi = lib.ffi
    getattr(lib.lib, f"gbt_vf_v{isa}")(ffi.cast("float *", zp.ctypes.data), n, abi.ACT_CODE[act], float(p), mode,
                                       ffi.cast("float *", a.ctypes.data), ffi.cast("float *", d.ctypes.data),
                                       ffi.cast("int *", ok.ctypes.data))
    return (a[:z.size] if mode == 3 else None), d[:z.size], ok[:z.size].astype(bool)


def _float_grid():
    rng = np.random.default_rng(7)
    z = np.concatenate([rng.uniform(-90.0, 90.0, 40000), rng.standard_normal(40000),
                        rng.choice([-1.0, 1.0], 40000) * 10.0 ** rng.uniform(-45.0, 1.95, 40000),
                        [0.0, 43.0, 86.0, 1e-45, 1.5e-38, 0.5 * np.log(2.0), np.log(2.0), 1e30, 3e38]]).astype(np.float32)
    edges = np.array([43.0, 86.0], dtype=np.float32)
    return np.concatenate([z, -z, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(0.0)),
                           -np.nextafter(edges, np.float32(np.inf)), -np.nextafter(edges, np.float32(0.0))])


def _within_ulps(what, z, got, want, ulps):
    """got within ulps float ulps of want (ulps of the smallest subnormal below the normals)."""
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    err = np.abs(got.astype(np.float64) - want) / ulp
    worst = int(np.argmax(err))
    assert err[worst] <= ulps, (f"{what} at z = {z[worst]!r}: {got[worst]!r}, want {want[worst]!r} "
                                f"({err[worst]:.2f} ulp)")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act,param", FLOAT_PARAMS)
def test_float_lanes_within_3_ulps(lib, isa, act, param):
    """The float32 rows' float lanes (csrc/vact_f32.h) give phi and phi' within 3 float ulps
    (2.4 measured over 2.8 million points) of the reference evaluated in float64
    (gradbench/activations.py: exact to ~2^-29 of a float ulp) at every finite float z, the
    results in the subnormals included (ulps of the smallest subnormal there), ELU with a
    parameter that float cannot hold (1.7) and a large one too. phi' has the same bits with phi
    asked for too (the forward) and alone (the backward); the lanes taken are exactly the
    finite ones (inf and NaN: the double functions); tanh keeps the sign of zero."""
    z = _float_grid()
    code = abi.ACT_CODE[act]
    p = spec.ACT_PARAM_DEFAULT.get(act, 0.0) if param is None else param
    a, d, ok = vf(lib, isa, z, act, p, mode=3)
    _, d_alone, ok_alone = vf(lib, isa, z, act, p, mode=2)
    assert np.array_equal(ok, np.isfinite(z)) and np.array_equal(ok, ok_alone)
    assert np.array_equal(d[ok].view(np.int32), d_alone[ok].view(np.int32)), f"{act}: phi' alone differs"
    z64 = z[ok].astype(np.float64)
    what = f"{act} (p = {p}, isa {isa})"
    _within_ulps(what, z[ok], a[ok], A.phi(z64, code, p), 3.0)
    _within_ulps(what + "'", z[ok], d[ok], A.dphi(z64, code, p), 3.0)
    zero = np.array([0.0, -0.0], dtype=np.float32)
    a, _, _ = vf(lib, isa, zero, act, p)
    if act == "tanh":
        assert np.array_equal(np.signbit(a), [False, True])
    _, _, ok = vf(lib, isa, np.array([np.nan, np.inf, -np.inf], dtype=np.float32), act, p)
    assert not ok.any()
