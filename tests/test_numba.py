"""Numba-specific checks: the kernels' Python bodies once under NUMBA_DISABLE_JIT=1 (the layer
kernels are checked against the reference in tests/test_layers.py, with the C ones)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("gradbench.kernels")


_NOJIT_SCRIPT = textwrap.dedent("""
    import json, numpy as np, gradbench as gb
    import numba
    assert numba.config.DISABLE_JIT
    out = []
    cases = [dict(activation=a) for a in gb.ACTIVATIONS] + [
        dict(activation="tanh", batch_norm=True, residual=2, clip="value", clip_threshold=1e-3),
        dict(activation="relu", init="he_normal", clip="norm", clip_threshold=1e-2),
        dict(activation="prelu", batch_norm=True),
        dict(activation="tanh", width=20, dtype="float32"),
    ]
    for kw in cases:
        st = gb.Stack(**(dict(depth=4, width=5) | kw))
        p = gb.init_params(st, 0)
        x = gb.gaussian_input(st, 3, 1)
        r = gb.backprop(st, p, x, backend="numpy")
        g = gb.backprop(st, p, x, backend="numba")
        def rel(a, b):
            a, b = a.to_float(warn=False), b.to_float(warn=False)
            return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
        out.append(dict(case=str(kw), dtype=st.dtype, W=rel(g.grads.W, r.grads.W),
                        signal=rel(g.signal_norm, r.signal_norm), std=rel(g.act_std, r.act_std),
                        sat=float(np.max(np.abs(g.saturation - r.saturation)))))
    print(json.dumps(out))
""")


def test_kernel_bodies_run_as_python_under_disable_jit():
    """The kernels' Python bodies (NUMBA_DISABLE_JIT=1) compute the reference's results too."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-c", _NOJIT_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 14
    for row in rows:
        tol = 1e-12 if row["dtype"] == "float64" else 1e-4
        for k in ("W", "signal", "std"):
            assert row[k] <= tol, f"NUMBA_DISABLE_JIT: {row['case']}: {k} off by {row[k]:.3g}"
        assert row["sat"] == 0, row


# ------------------------------------------------------------------ the chain's norms near and below the subnormal boundary
@st.composite
def _tiny_arrays(draw):
    """(rows, cols) arrays of integer multiples of 2^k, k at or near the subnormal range of the
    dtype, exact by construction; some entries (or all) zero."""
    dtype = draw(st.sampled_from(["float64", "float64", "float32"]))
    lo = -1074 if dtype == "float64" else -149
    k = draw(st.integers(lo, lo + 80))  # max|x| from the smallest subnormal to ~2^-940 (float64)
    bits = draw(st.integers(0, 24))  # entries below 2^24: exact in either dtype
    rows, cols = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 7, 8, 9, 130, 300]))
    ints = draw(st.lists(st.one_of(st.just(0), st.integers(-(2**bits), 2**bits)), min_size=rows * cols,
                         max_size=rows * cols))
    return np.ldexp(np.array(ints, dtype=np.float64), k).astype(dtype).reshape(rows, cols)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(x=_tiny_arrays())
def test_norm_helpers_below_the_subnormal_boundary(x):
    """norm_scaled, normalise and sumsq (the Numba chain's) on arrays whose max is subnormal, near
    the boundary or zero: against exact rational arithmetic, and the reference's exponents.
    norm_scaled once scaled by 2^-e with e < -1022, an infinite factor (inf, or NaN from 0 * inf)."""
    from gradbench import reference as R
    from gradbench.kernels.chain import norm_scaled, normalise, sumsq

    exact = sum(Fraction(float(v)) ** 2 for v in x.ravel())
    m, e = norm_scaled(x)
    rm, re_ = R.norm_scaled(x)
    assert e == re_, (e, re_)
    if exact == 0:
        assert m == 0 and e == 0
    else:
        assert math.isfinite(m) and m > 0, (m, e)
        rel = abs(float(Fraction(m) ** 2 * Fraction(2) ** (2 * e) / exact) - 1.0)
        assert rel <= 2e-12, (m, e, rel)  # ||x|| to 1e-12
        assert abs(m - rm) <= 1e-12 * rm, (m, rm)
        if e != 0:
            assert e == math.frexp(float(np.max(np.abs(x))))[1]

    g = x.copy()
    ge = normalise(g)
    gr = x.copy()
    assert ge == R.normalise(gr)
    np.testing.assert_array_equal(g, gr)
    a = float(np.max(np.abs(g)))
    if exact == 0:
        assert ge == 0 and a == 0
    else:
        assert 0.5 <= a < 1.0
        assert all(Fraction(float(u)) * Fraction(2) ** ge == Fraction(float(v)) for u, v in zip(g.ravel(), x.ravel()))
        s = sum(Fraction(float(u)) ** 2 for u in g.ravel())
        assert abs(float(Fraction(sumsq(g)) / s) - 1.0) <= 2e-12


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(x=_tiny_arrays(), e=st.sampled_from([0, -5, 1100, -3000]))
def test_histogram_of_subnormal_layers(x, e):
    """The compiled streaming histogram (stats_only runs) of layers whose max|dW| is subnormal, near
    the boundary or zero: the NumPy reference's bins, top, below and zero counts."""
    from gradbench import histograms
    from gradbench.kernels import histogram_fill

    m = np.stack([x, x[::-1] * 3, np.zeros_like(x)]).astype(np.float64)
    exps = np.array([e, e + 1, e], dtype=np.int64)
    out = []
    for compiled in (True, False):
        h = {k: np.zeros(3, np.int64) for k in ("top", "below", "zeros", "nonfinite")}
        c = np.zeros((3, 12), np.uint32)
        histograms.fill_streaming(m, exps, 4, 12, h["top"], c, h["below"], h["zeros"], h["nonfinite"],
                                  kernel=histogram_fill if compiled else None)
        out.append((h, c))
    (hg, cg), (hr, cr) = out
    np.testing.assert_array_equal(cg, cr)
    for k in hg:
        np.testing.assert_array_equal(hg[k], hr[k], err_msg=k)


def test_polynomial_sigmoid_tanh_and_their_derivatives_against_mpmath():
    """The Numba kernels' vectorised forms (kernels/activations.py: one polynomial for e^|x|, no
    libm call) against mpmath at 40 digits, over their whole range |x| <= 20 (tanh') and 40
    (sigmoid, sigmoid'), the ends and tiny and subnormal x: within 4e-16 relative."""
    import mpmath as mp

    from gradbench.kernels.activations import DSIGMOID_MAX, DTANH_MAX, dtanh64, sigmoid_pair64, tanh64

    mp.mp.dps = 40
    ends = [0.0, -0.0, 5e-324, -5e-324, 1e-300, 1e-8, -1e-8, 0.5, -0.5, DTANH_MAX, -DTANH_MAX, DSIGMOID_MAX,
            -DSIGMOID_MAX, float(np.nextafter(DSIGMOID_MAX, 0)), float(np.nextafter(-DSIGMOID_MAX, 0))]
    for x in np.concatenate([np.linspace(-DSIGMOID_MAX, DSIGMOID_MAX, 1601), ends]):
        x = float(x)
        e = mp.exp(-abs(mp.mpf(x)))
        want_s, want_d = (1 / (1 + e) if x >= 0 else e / (1 + e)), e / (1 + e) ** 2
        s, d = sigmoid_pair64(x)
        assert abs(s - want_s) <= 4e-16 * want_s and abs(d - want_d) <= 4e-16 * want_d, (x, s, d)
        assert abs(tanh64(x) - mp.tanh(x)) <= 4e-16 * abs(mp.tanh(x)), x
        if abs(x) <= DTANH_MAX:
            want_t = 1 / mp.cosh(x) ** 2
            assert abs(dtanh64(x) - want_t) <= 4e-16 * want_t, x
    assert math.isnan(tanh64(math.nan))


def test_sigmoid_forward_beyond_the_polynomial_and_non_finite_entries():
    """The Numba sigmoid layer takes the polynomial for |z| <= 40 and phi for the rest: entries
    past the bound, at it, infinite and NaN, against the reference's activation, saturation count
    and dead units (z and a of one layer, with its bias)."""
    from gradbench import activations as A
    from gradbench.abi import ACT_CODE
    from gradbench.kernels.layers import _activation_forward_stats

    code = ACT_CODE["sigmoid"]

    z0 = np.array([[-745.0, -50.0, -40.0, -39.999, 0.0, 39.999, 40.0, 50.0],
                   [-np.inf, np.inf, np.nan, -1e-300, 1e-300, -3.0, 3.0, 700.0]])
    b = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.25, -0.25, 0.0])
    for dtype in ("float64", "float32"):
        z = z0.astype(dtype)
        a = np.empty_like(z)
        alive = np.empty(8, dtype=np.bool_)
        nsat = _activation_forward_stats(a, z.copy(), b.astype(dtype), True, code, 0.0, _rows(z, 0), False, 1e-3,
                                         alive)
        zb = z + b.astype(dtype)
        with np.errstate(all="ignore"):
            want = A.phi(zb, code, 0.0)
        np.testing.assert_allclose(a, want, rtol=1e-15 if dtype == "float64" else 1e-7, atol=0)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(want))
        with np.errstate(invalid="ignore"):
            assert nsat == np.sum(np.abs(A.dphi(zb, code, 0.0)) < 1e-3)
        np.testing.assert_array_equal(alive, np.any(~(zb <= 0), axis=0))


def test_polynomial_elu_selu_swish_against_mpmath():
    """elu_pair64 and swish_pair64 (the vector paths of the ELU, SELU and swish layers) against
    mpmath over their range x >= -40, ends, tiny and subnormal x: within 4 ulps; swish' where it
    is a difference (its root near -1.278) to 4 ulps of its terms' size."""
    import mpmath as mp

    from gradbench.activations import SELU_ALPHA, SELU_LAMBDA
    from gradbench.kernels.activations import ELU_FAMILY_MIN, EXP_ZERO, SWISH_MAX, elu_pair64, swish_pair64

    mp.mp.dps = 40
    u = 2.0**-52

    def close(got, want, size):
        return abs(got - want) <= 4 * max(u * abs(size), 5e-324)  # subnormal results: 4 of their ulps
    xs = np.concatenate([np.linspace(ELU_FAMILY_MIN, 45.0, 1701), [0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300,
                         -1e-8, 1e-8, ELU_FAMILY_MIN, SWISH_MAX, float(np.nextafter(SWISH_MAX, 50)), 1e300]])
    for x in map(float, xs):
        X = mp.mpf(x)
        for (v, d), outer, inner in ((elu_pair64(x, 1.0, 1.3), 1, 1.3), (elu_pair64(x, SELU_LAMBDA, SELU_ALPHA),
                                                                          SELU_LAMBDA, SELU_ALPHA)):
            want_v = outer * (X if x > 0 else inner * mp.expm1(X))
            want_d = outer * (1 if x > 0 else inner * mp.exp(X))
            assert close(v, want_v, want_v) and close(d, want_d, want_d), (x, v, d)
        s, t = 1 / (1 + mp.exp(-X)), 1 / (1 + mp.exp(X))
        v, d = swish_pair64(x)
        assert close(v, X * s, X * s), (x, v)
        assert close(d, s * (1 + X * t), abs(s) + abs(s * X * t)), (x, d)
    for x in (EXP_ZERO - 1e-9, -800.0, -1e5, -1e300):  # e^x rounds to 0: the limits, the scalar forms' bits
        for (v, d), p, q in ((elu_pair64(x, 1.0, 1.3), 1.0, 1.3), (elu_pair64(x, 1.0, -0.5), 1.0, -0.5),
                             (elu_pair64(x, SELU_LAMBDA, SELU_ALPHA), SELU_LAMBDA, SELU_ALPHA)):
            want_v, want_d = p * (q * math.expm1(x)), p * (q * math.exp(x))
            assert (v, d) == (want_v, want_d) and math.copysign(1, d) == math.copysign(1, want_d), (x, v, d)
        v, d = swish_pair64(x)
        assert (v, d) == (0.0, 0.0) and math.copysign(1, v) == -1 and math.copysign(1, d) == -1, (x, v, d)


def test_polynomial_gelu_against_mpmath():
    """gelu_pair64 (the vector path of the GELU layers: a piecewise polynomial for erfcx and a
    split exp) against mpmath over its range x >= -37, ends, tiny and subnormal x: within 4 ulps
    (phi' to 4 ulps of its terms' size Phi + |x| phi_N: its root near -0.752 is a difference);
    below -39 both exactly zero. The scalar forms (libm's erfc) are 1450 ulps off at x = -37."""
    import mpmath as mp

    from gradbench.kernels.activations import GELU_MIN, GELU_ZERO, gelu_pair64

    mp.mp.dps = 40
    u = 2.0**-52
    rng = np.random.default_rng(11)
    xs = np.concatenate([np.linspace(GELU_MIN, 45.0, 1641), rng.uniform(-4, 4, 400), -np.logspace(-300, 1.56, 200),
                         [0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, 1.0, 4.0, 12.0, 28.0, 36.0, 44.0,
                          float(np.nextafter(4.0, 0)), 1e300]])
    for x in map(float, xs):
        X = mp.mpf(x)
        Phi, pdf = mp.ncdf(X), mp.npdf(X)
        v, d = gelu_pair64(x)
        assert abs(v - X * Phi) <= 4 * max(u * abs(X * Phi), 5e-324), (x, v)
        assert abs(d - (Phi + X * pdf)) <= 4 * max(u * (Phi + abs(X * pdf)), 5e-324), (x, d)
    for x in (GELU_ZERO - 1e-9, -40.0, -1e3, -1e300):
        v, d = gelu_pair64(x)
        assert (v, d) == (0.0, 0.0) and math.copysign(1, v) == -1 and math.copysign(1, d) == 1, x


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["tanh", "elu", "selu", "swish", "gelu"])
def test_smooth_layers_against_the_scalar_forms(name, dtype):
    """The tanh, ELU, SELU, swish and GELU layers' vector paths (plain, and scaled at exponents
    from -1100 to 1000: the linear form, the direct one, x 2^f overflowing; below -1000 the
    linear layers, and mantissas of 2^944 and more that leave it there) against phi/dphi and
    phi_scaled/dphi_scaled entry by entry: the same NaN, infinities and zeros, the same
    saturation count, values within 4 ulps (float64) and 1 (float32); entries below the
    polynomial's bound, infinite and NaN among them (the fix-up: without it phi' of -50 is e^-40).
    GELU's direct form against mpmath instead (the scalar forms' erfc is up to 1450 ulps off)."""
    from gradbench.abi import ACT_CODE
    from gradbench.kernels.activations import dphi, dphi_scaled, phi, phi_scaled
    from gradbench.kernels.layers import _activation_backward, _activation_forward_stats

    code, param = ACT_CODE[name], (1.3 if name == "elu" else 0.0)
    rng = np.random.default_rng(7)
    special = [-1e5, -800.0, -746.0, -745.9, -745.0, -50.0, -40.0, -39.999, -39.0, -38.5, -37.0, -36.999, -1e-300,
               -5e-324, -0.0, 0.0, 5e-324, 1e-300, 39.999, 40.0, 50.0, 700.0, 1e300, -1e300, np.inf, -np.inf, np.nan,
               -1.278, -0.752, 2.0**-30, -2.0**-30]
    # tanh: its polynomials and the scalar exp forms are each within ~2.5 ulps of the truth
    # (test_polynomial_sigmoid_tanh_and_their_derivatives_against_mpmath), so up to 5 apart
    ulps = (5 if name == "tanh" else 4) if dtype == "float64" else 1
    for f in (None, -1100, -1050, -1001, -1000, -60, -1, 0, 1, 30, 1000):
        z = np.concatenate([special, rng.standard_normal(300) * 10 ** rng.uniform(-8, 2.5, 300)])
        if f is not None and abs(f) < 1020:
            z = np.concatenate([z, np.ldexp(rng.uniform(-45, 45, 100), -f)])
        if f is not None and f < -24:  # every entry in the linear form: the layer's linear path
            linear = z[np.isfinite(z) & (np.abs(np.ldexp(z, f)) < 2.0**-60)]
            z = np.concatenate([z, linear])
            _pair_check(linear.astype(dtype), code, param, f)
        with np.errstate(over="ignore"):
            z = z.astype(dtype).reshape(1, -1)
        n = z.shape[1]
        a, dz, alive = np.empty_like(z), np.empty_like(z), np.empty(n, dtype=np.bool_)
        scaled, fe = f is not None, (0 if f is None else f)
        with np.errstate(all="ignore"):
            nsat = _activation_forward_stats(a, z.copy(), np.zeros(n, dtype), False, code, param, _rows(z, fe), scaled,
                                             1e-3, alive)
            _activation_backward(dz, dz[0], False, np.ones_like(z), z, code, param, _rows(z, fe), scaled)
        want_a = np.array([phi(v, code, param) if f is None else phi_scaled(v, f, code, param) for v in z[0]])
        want_d = np.array([dphi(v, code, param) if f is None else dphi_scaled(v, f, code, param) for v in z[0]])
        if name == "gelu" and fe >= -1000:  # below, a layer not all linear takes the scalar forms
            _gelu_direct_by_mpmath(want_a, want_d, z[0], fe, scaled)
        assert nsat == np.sum(np.abs(want_d) < 1e-3), f
        for deriv, got, want in ((False, a[0], want_a), (True, dz[0], want_d)):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            plain = ~np.isnan(want) & (~np.isfinite(want) | (want == 0))
            np.testing.assert_array_equal(got[plain], want[plain])
            ok = np.isfinite(want) & (want != 0)
            size = np.abs(want[ok]).astype(np.float64)
            if name in ("swish", "gelu") and deriv:  # phi' is a difference near its root (swish -1.278:
                with np.errstate(over="ignore", invalid="ignore"):  # s (1 + x t); gelu -0.752: Phi + x phi_N):
                    x = np.ldexp(z[0][ok].astype(np.float64), fe)  # ulps of its terms' size (x = inf: NaN,
                    terms = ((1 + np.abs(x) / (1 + np.exp(x))) / (1 + np.exp(-x)) if name == "swish"  # fmax
                             else 1 + np.abs(x) * np.exp(-0.5 * x * x))  # takes |phi'|)
                    size = np.fmax(size, terms)
            err = np.abs(got[ok].astype(np.float64) - want[ok]) / np.spacing(size.astype(dtype))
            assert err.max(initial=0) <= ulps, (f, float(err.max()))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["relu", "leaky_relu", "prelu", "identity"])
def test_piecewise_linear_layers_against_the_scalar_forms(name, dtype):
    """The ReLU-family and identity layers' vector paths against phi/dphi entry by entry, bit for
    bit (signed zeros, NaN and infinities included), with the bias fused and db summed in the
    same pass; the saturation count, the dead units and PReLU's dL/dslope as the reference's."""
    from gradbench import activations as A
    from gradbench.abi import ACT_CODE
    from gradbench.kernels.activations import dphi, phi
    from gradbench.kernels.layers import _activation_backward, _activation_forward_stats

    code = ACT_CODE[name]
    rng = np.random.default_rng(5)
    special = [-np.inf, -1e300, -1.0, -5e-324, -0.0, 0.0, 5e-324, 1.0, 1e300, np.inf, np.nan, -np.nan]
    for param in ((-0.3, 0.01, 0.25, 1e-300) if name != "relu" and name != "identity" else (0.0,)):
        B, N = 6, 8
        z0 = rng.standard_normal((B, N))
        z0[:, :2] = np.reshape(special, (B, 2))  # with a bias of -0.0: z + b is z, -0.0 included
        z0[:, 3] = -np.abs(z0[:, 3])  # a dead unit
        with np.errstate(over="ignore"):
            z0 = z0.astype(dtype)
        b = rng.standard_normal(N).astype(dtype)
        b[:2] = -0.0
        z, a, alive = z0.copy(), np.empty_like(z0), np.empty(N, dtype=np.bool_)
        with np.errstate(all="ignore"):
            nsat = _activation_forward_stats(a, z, b, True, code, param, _rows(z, 0), False, 0.02, alive)
            zb = z0 + b
        np.testing.assert_array_equal(z.view(np.uint8), zb.view(np.uint8))
        want_a = np.array([phi(v, code, param) for v in zb.ravel()], dtype=dtype).reshape(B, N)
        want_d = np.array([dphi(v, code, param) for v in zb.ravel()], dtype=dtype).reshape(B, N)
        np.testing.assert_array_equal(a.view(np.uint8), want_a.view(np.uint8))
        assert nsat == np.sum(np.abs(want_d) < 0.02)
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(alive, np.any(~(zb <= 0), axis=0))
        da = rng.standard_normal((B, N)).astype(dtype)
        dz, db = np.empty_like(da), np.empty(N, dtype)
        with np.errstate(all="ignore"):
            s = _activation_backward(dz, db, True, da, zb, code, param, _rows(zb, 0), False)
            want_dz = da * want_d
            want_db = np.zeros(N, dtype)
            for row in want_dz:
                want_db += row
        np.testing.assert_array_equal(dz.view(np.uint8), want_dz.view(np.uint8))
        np.testing.assert_array_equal(db.view(np.uint8), want_db.view(np.uint8))
        assert math.isnan(s) if name == "prelu" else s == 0.0  # NaN in z: dL/dslope is NaN
        zf = np.where(np.isfinite(zb), zb, -0.5).astype(dtype)
        s = _activation_backward(dz, db, False, da, zf, code, param, _rows(zf, 0), False)
        np.testing.assert_array_equal(dz, da * A.dphi(zf, code, param).astype(dtype))
        want_s = math.fsum(float(x) for x in (da * np.minimum(zf, 0)).ravel()) if name == "prelu" else 0.0
        assert s == pytest.approx(want_s, rel=1e-5 if dtype == "float32" else 1e-12, abs=0)


def _rows(z, f):
    """The layer kernels' exponents: one per row of z (B,) int64, here all f."""
    return np.full(z.shape[0], f, dtype=np.int64)


def _pair_check(z, code, param, f):
    """A layer of only linear-form entries (f < -1000): phi_scaled and dphi_scaled bit for bit."""
    from gradbench.kernels.activations import dphi_scaled, phi_scaled
    from gradbench.kernels.layers import _activation_backward, _activation_forward_stats

    z = z.reshape(1, -1)
    n = z.shape[1]
    a, dz, alive = np.empty_like(z), np.empty_like(z), np.empty(n, dtype=np.bool_)
    nsat = _activation_forward_stats(a, z.copy(), np.zeros(n, z.dtype), False, code, param, _rows(z, f), True, 0.6,
                                     alive)
    _activation_backward(dz, dz[0], False, np.ones_like(z), z, code, param, _rows(z, f), True)
    want_a = np.array([phi_scaled(v, f, code, param) for v in z[0]], dtype=z.dtype)
    want_d = np.array([dphi_scaled(v, f, code, param) for v in z[0]], dtype=z.dtype)
    np.testing.assert_array_equal(a[0].view(np.uint8), want_a.view(np.uint8))
    np.testing.assert_array_equal(dz[0].view(np.uint8), want_d.view(np.uint8))
    assert nsat == np.sum(np.abs(want_d) < 0.6)
    if z.dtype == np.float64 and -1020 < f < -1000:  # mantissas beyond TINY 2^-f there: the scalar forms
        big = np.concatenate([z[0], np.ldexp([-3.0, 1.5, 40.0], -f)]).reshape(1, -1)
        a, dz = np.empty_like(big), np.empty_like(big)
        _activation_forward_stats(a, big.copy(), np.zeros(big.shape[1]), False, code, param, _rows(big, f), True,
                                  0.6, np.empty(big.shape[1], dtype=np.bool_))
        _activation_backward(dz, dz[0], False, np.ones_like(big), big, code, param, _rows(big, f), True)
        np.testing.assert_array_equal(a[0], [phi_scaled(v, f, code, param) for v in big[0]])
        np.testing.assert_array_equal(dz[0], [dphi_scaled(v, f, code, param) for v in big[0]])


def _gelu_direct_by_mpmath(want_a, want_d, z, f, scaled):
    """GELU's phi and phi' (phi_scaled/dphi_scaled's direct regime: the mantissa of phi(z 2^f) at
    exponent f) by mpmath, in place of the scalar forms' values, for the entries the layers'
    polynomial covers: z 2^f >= GELU_MIN, finite, not in the linear form (|z 2^f| >= TINY)."""
    import mpmath as mp

    from gradbench.activations import TINY
    from gradbench.kernels.activations import GELU_MIN

    mp.mp.dps = 40
    tiny = TINY[z.dtype.name]["gelu"] if scaled else 0.0
    for k, v in enumerate(z):
        X = mp.ldexp(mp.mpf(float(v)), f)
        if not (mp.isfinite(X) and X >= GELU_MIN and abs(X) >= tiny and abs(X) < mp.mpf(2) ** 1024):
            continue
        Phi = mp.ncdf(X)
        want_a[k] = float(mp.ldexp(X * Phi, -f))
        want_d[k] = float(Phi + X * mp.npdf(X))


def _bins_by_log10(v: np.ndarray, e: int, per_decade: int, bins: int) -> dict:
    """One layer's streaming histogram entry by entry with the C library's log10 (Python's
    math.log10), the formula the kernel's docstring promises: floor((log10|v| + e log10 2) p)."""
    from gradbench.logscaled import LOG10_2

    shift = float(e) * LOG10_2
    a = [abs(float(x)) for x in v.ravel()]
    j = [math.floor((math.log10(x) + shift) * per_decade) for x in a if 0 < x < math.inf]
    out = dict(zeros=sum(x == 0 for x in a), nonfinite=sum(not math.isfinite(x) for x in a), top=0, below=0,
               counts=[0] * bins)
    if j:
        out["top"] = top = max(j)
        lo = top - bins + 1
        out["below"] = sum(k < lo for k in j)
        for k in j:
            if k >= lo:
                out["counts"][k - lo] += 1
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("per_decade", [1, 4, 10])
def test_histogram_entries_at_bin_boundaries(dtype, per_decade):
    """The compiled histogram bins most entries with a series for log2 and only those near a
    boundary with log10 (kernels/histogram.py): entries at every boundary of the window and 1 to
    3 ulps either side, beside zeros, subnormals and non-finite ones, at layer exponents from 0 to
    2^45, against log10 entry by entry."""
    from gradbench.kernels.histogram import histogram_fill
    from gradbench.logscaled import LOG10_2

    rng = np.random.default_rng(per_decade)
    tiny = np.finfo(np.float64).smallest_subnormal if dtype == "float64" else np.finfo(np.float32).smallest_subnormal
    for e in [0, -5, 7, 1100, -3000, 10**6, -(10**7), 2**45]:
        shift = float(e) * LOG10_2
        # 10^(j/p) 2^-e (up to whole decades of 2^-e) from 10^-33 to 10^5
        base = 10.0 ** (np.arange(-30 * per_decade, 8 * per_decade) / per_decade - (shift % 1.0) - 3)
        near = [base]
        for d in (1, 2, 3):
            near += [base, base]
            for _ in range(d):
                near[-2], near[-1] = np.nextafter(near[-2], np.inf), np.nextafter(near[-1], 0)
        v = np.concatenate(near + [[0.0, 0.0, np.inf, np.nan, 5 * tiny, -1e-3]]).astype(dtype)
        v *= np.where(rng.random(v.size) < 0.5, -1, 1).astype(dtype)
        layers = np.stack([v, v[::-1], rng.permutation(v)]).reshape(3, 2, -1)
        bins = 40
        h = {k: np.zeros(3, np.int64) for k in ("top", "below", "zeros", "nonfinite")}
        counts = np.zeros((3, bins), np.uint32)
        histogram_fill(layers, np.full(3, e, np.int64), per_decade, bins, h["top"], counts, h["below"], h["zeros"],
                       h["nonfinite"])
        for l in range(3):
            want = _bins_by_log10(layers[l], e, per_decade, bins)
            assert list(counts[l]) == want.pop("counts"), (e, l)
            assert {k: int(h[k][l]) for k in want} == want, (e, l)


def test_cached_kernels_are_dropped_when_any_source_of_the_package_changes(tmp_path):
    """Numba's cache is keyed by a kernel's own file: a change in a module it calls kept stale
    compiled code (seen: chain.py's norm fix, stack.py's cached kernel still gave inf)."""
    from gradbench import kernels

    (tmp_path / "a.py").write_text("x = 1\n")
    cache = tmp_path / "__pycache__"
    kernels._drop_stale_cache(str(tmp_path))  # first time: records the hash
    (cache / "a.f-1.py311.nbi").write_bytes(b"i")
    (cache / "a.f-1.py311.1.nbc").write_bytes(b"c")
    (cache / "a.cpython-311.pyc").write_bytes(b"p")
    kernels._drop_stale_cache(str(tmp_path))  # unchanged sources: the cache stays
    assert (cache / "a.f-1.py311.nbi").exists()
    (tmp_path / "b.py").write_text("y = 2\n")  # another module of the package changes
    kernels._drop_stale_cache(str(tmp_path))
    assert sorted(p.name for p in cache.iterdir()) == ["a.cpython-311.pyc", "sources.sha256"]
