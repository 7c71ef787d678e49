"""C-backend tests: the compiled module, phi and phi' against the reference, every driver output
against the NumPy reference (the oracle), BLAS vs own kernels, thread counts, thread safety and
the GIL, error codes, and the exact chain where the reference itself over/underflows.

The cross-backend suite (tests/test_crosscheck.py) runs the engine-level comparison for every
registered backend; the tests here compare the raw arrays each driver writes, layer by layer.
"""

import dataclasses
import functools
import threading
import time

import numpy as np
import pytest

import gradbench as gb
from gradbench import reference as ref
from gradbench import abi, spec
from gradbench import activations as A
from gradbench.activations import dphi_max
from tests.helpers import FLOAT_LANES, misaligned, team_opts

cb = pytest.importorskip("gradbench.cbackend", reason="C extension not built", exc_type=ImportError)

# Tolerances by dtype: (values and gradients, relative to the largest entry of the layer).
RTOL = {"float64": 1e-12, "float32": 1e-4}
EPS = {"float64": np.finfo(np.float64).eps, "float32": np.finfo(np.float32).eps}


# ------------------------------------------------------------------ the compiled module
def test_compiled_module_imports():
    from gradbench import _ckernels

    for name in ("gb_stack_forward_f64", "gb_stack_forward_f32", "gb_stack_backward_f64",
                 "gb_stack_backward_f32", "gb_activation_forward_f64", "gb_activation_backward_f32"):
        assert hasattr(_ckernels.lib, name), name
    assert "c" in gb.backends()
    assert gb.backend_status()["c"] == "available"


# ------------------------------------------------------------------ activations
def _grid(dtype):
    z = np.concatenate([
        np.linspace(-12, 12, 4801),
        np.geomspace(1e-12, 300, 400), -np.geomspace(1e-12, 300, 400),
        [0.0, -0.0, 0.5499999999, 0.55, 19.9, 20.0, 20.1, 299.0, -299.0, 300.0, -300.0, 700.0,
         -700.0, np.inf, -np.inf, np.nan],
    ])
    return z.astype(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", spec.ACTIVATIONS)
def test_phi_matches_reference(act, dtype):
    code = abi.ACT_CODE[act]
    param = spec.ACT_PARAM_DEFAULT.get(act, 0.0)
    z = _grid(dtype)
    got, want = cb.phi(z, code, param), A.phi(z, code, param)
    assert got.dtype == want.dtype == z.dtype
    # a few ulp of the value (libm / the vector tanh vs NumPy's and SciPy's own functions);
    # gelu: the reference's erfc(-z/sqrt2) is hundreds of ulps off for z << 0 (see
    # test_saturated_units_against_mpmath): ulp of 0.5 |z| there
    scale = np.abs(want.astype(np.float64))
    if act == "gelu":
        scale = np.maximum(scale, 0.5 * np.abs(z.astype(np.float64)))
    tol = 8 * EPS[dtype] * np.maximum(scale, np.finfo(dtype).tiny)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN pattern of {act}")
    ok = ~np.isnan(want) & (got != want)  # equal entries (inf included) pass
    diff = np.abs(got[ok].astype(np.float64) - want[ok].astype(np.float64))
    bad = np.flatnonzero(~(diff <= tol[ok]))
    assert bad.size == 0, f"{act} {dtype}: phi({z[ok][bad[0]]}) = {got[ok][bad[0]]}, reference {want[ok][bad[0]]}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", spec.ACTIVATIONS)
def test_dphi_matches_reference(act, dtype):
    code = abi.ACT_CODE[act]
    param = spec.ACT_PARAM_DEFAULT.get(act, 0.0)
    z = _grid(dtype)
    got, want = cb.dphi(z, code, param), A.dphi(z, code, param)
    assert got.dtype == want.dtype == z.dtype
    # a few ulp of phi' itself (both evaluate it without cancellation), but for gelu and swish,
    # whose phi' crosses zero (the terms of s (1 + z s(-z)) and Phi + z phi_N cancel there) and
    # where the reference's Phi + z phi_N is hundreds of ulps off for z << 0 (the rounding of
    # -z/sqrt2 and z^2, magnified by erfc and exp; the C version corrects both): ulps of max phi'
    w = want.astype(np.float64)
    scale = dphi_max(act, param) if act in ("gelu", "swish") else np.finfo(dtype).tiny
    tol = 8 * EPS[dtype] * np.maximum(np.abs(w), scale)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN pattern of {act}'")
    ok = ~np.isnan(want) & (got != want)
    diff = np.abs(got[ok].astype(np.float64) - w[ok])
    bad = np.flatnonzero(~(diff <= tol[ok]))
    assert bad.size == 0, f"{act}' {dtype}: at z = {z[ok][bad[0]]}: {got[ok][bad[0]]}, reference {want[ok][bad[0]]}"


def test_dphi_against_finite_differences():
    """Independent of the reference: central differences of the C phi itself."""
    z = np.linspace(-6, 6, 1201) + 0.0123  # avoid the kinks at 0
    h = 1e-6
    for act in spec.ACTIVATIONS:
        code, param = abi.ACT_CODE[act], spec.ACT_PARAM_DEFAULT.get(act, 0.0)
        fd = (cb.phi(z + h, code, param) - cb.phi(z - h, code, param)) / (2 * h)
        np.testing.assert_allclose(cb.dphi(z, code, param), fd, rtol=1e-6, atol=1e-8,
                                   err_msg=act)


def _mp_phi(act, z, p, derivative):
    """phi(z) or phi'(z) in mpmath (exact maths, 160 bits), from the textbook definitions."""
    mp = pytest.importorskip("mpmath")
    mp.mp.prec = 160
    z, p = mp.mpf(float(z)), mp.mpf(float(p))
    lam, alpha = mp.mpf(A.SELU_LAMBDA), mp.mpf(A.SELU_ALPHA)  # the library's constants

    def s(x):
        return 1 / (1 + mp.exp(-x))

    pos = z > 0
    table = {
        "identity": (z, 1),
        "sigmoid": (s(z), s(z) * s(-z)),
        "tanh": (mp.tanh(z), mp.sech(z) ** 2),
        "relu": (z if pos else 0, 1 if pos else 0),
        "leaky_relu": (z if pos else p * z, 1 if pos else p),
        "prelu": (z if pos else p * z, 1 if pos else p),
        "elu": (z if pos else p * mp.expm1(z), 1 if pos else p * mp.exp(z)),
        "selu": (lam * (z if pos else alpha * mp.expm1(z)), lam * (1 if pos else alpha * mp.exp(z))),
        "swish": (z * s(z), s(z) + z * s(z) * s(-z)),
        "gelu": (z * mp.erfc(-z / mp.sqrt(2)) / 2,
                 mp.erfc(-z / mp.sqrt(2)) / 2 + z * mp.exp(-z * z / 2) / mp.sqrt(2 * mp.pi)),
    }
    return table[act][1 if derivative else 0]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", spec.ACTIVATIONS)
def test_saturated_units_against_mpmath(act, dtype):
    """phi and phi' far into saturation (|z| up to 700 in float64, 80 in float32) within a few
    ulps of the exact value (float32: 1, the double result rounded once; 3 for the activations
    in float lanes) from mpmath: no cancellation (1 - tanh^2 gives 0 at z = 20, the true
    value is 1.7e-17). Results below the normal range (gelu beyond |z| ~ 37) come from an
    intermediate that is itself subnormal: |z| more ulps of 2^-1074 are allowed there.
    Near the roots of swish' and gelu' (|z| < 2) the terms cancel in any double evaluation:
    a few ulps of max phi' there."""
    code, param = abi.ACT_CODE[act], spec.ACT_PARAM_DEFAULT.get(act, 0.0)
    zmax = {"float64": 700.0, "float32": 80.0}[dtype]
    big = np.geomspace(2.0, zmax, 150)
    small = np.concatenate([np.geomspace(1e-6, 2.0, 60, endpoint=False), [0.0]])
    z = np.concatenate([big, -big, small, -small, [20.0, -20.0]]).astype(dtype)
    ulps = {"float64": 4.0, "float32": 1.0}[dtype]  # float32: double evaluation rounded once
    if dtype == "float32" and act in FLOAT_LANES:
        ulps = 3.0  # but for the float lanes of csrc/vact_f32.h (tests/test_vact.py)
    tiny = np.finfo(dtype).tiny
    for derivative, fn in ((False, cb.phi), (True, cb.dphi)):
        got = fn(z, code, param).astype(np.float64)
        exact = [_mp_phi(act, v, param, derivative) for v in z]
        want = np.array([float(v) for v in exact]).astype(dtype)
        ulp = np.spacing(np.abs(want)).astype(np.float64)
        err = np.array([abs(float(g - v)) for g, v in zip(got, exact)])  # exact difference, rounded
        tol = ulps * ulp
        tol = np.where(np.abs(want) < tiny, tol + np.abs(z) * np.spacing(want.dtype.type(0)), tol)
        if derivative:
            tol = np.where(np.abs(z) < 2, np.maximum(tol, ulps * EPS[dtype] * dphi_max(act, param)), tol)
        bad = np.flatnonzero(~(err <= tol))
        name = f"{act}{chr(39) if derivative else ''} {dtype}"
        assert bad.size == 0, (f"{name} at z = {z[bad[0]]!r}: {got[bad[0]]!r}, exact {float(exact[bad[0]])!r} "
                               f"({err[bad[0]] / ulp[bad[0]]:.1f} ulp)")
    if act == "tanh":  # the motivating case of issue 12
        assert cb.dphi(np.array([20.0]), code, 0.0)[0] == pytest.approx(1.7e-17, rel=0.01)


SCALED = ["tanh", "elu", "selu", "swish", "gelu", "relu", "identity", "leaky_relu"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", SCALED)
def test_scaled_activations_match_reference(act, dtype):
    """phi_scaled / dphi_scaled (mantissa u, exponent f): the linear form where |u 2^f| is below
    TINY, the limit form where u 2^f overflows, phi itself between, against the reference."""
    code, param = abi.ACT_CODE[act], spec.ACT_PARAM_DEFAULT.get(act, 0.3)
    rng = np.random.default_rng(7)
    u = np.concatenate([rng.uniform(-1, 1, 200), [0.0, -0.0, 0.5, -0.5, 0.999, -0.999, 1e-30, -1e-30,
                                                  3.0, -3.0, np.nan]]).astype(dtype)
    tiny = A.TINY[dtype].get(act, 2.0**-57)
    fs = [0, 3, -3, -20, -30, -31, -60, -200, -1100, -100000, -10**7, 20, 130, 1000, 1030, 5000, 10**7]
    for f in fs:
        for derivative in (False, True):
            ref_fn = A.dphi_scaled if derivative else A.phi_scaled
            c_fn = cb.dphi if derivative else cb.phi
            want = ref_fn(u, f, code, np.float64(param)).astype(np.float64)  # fcfg's type
            got = c_fn(u, code, param, f).astype(np.float64)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{act} f={f}: NaN pattern")
            scale = np.abs(want)
            if act == "gelu" and not derivative:  # the reference's erfc is less accurate (see above)
                scale = np.maximum(scale, 0.5 * np.abs(u.astype(np.float64)))
            if derivative:
                scale = np.maximum(scale, dphi_max(act, param))
            with np.errstate(invalid="ignore", over="ignore"):
                z = np.abs(np.ldexp(u.astype(np.float64), max(min(f, 100000), -100000)))
                exact = ((z < tiny) | np.isinf(z)) & (act not in spec.HOMOGENEOUS)  # linear or limit form: bitwise
                ok = np.isnan(want) | (got == want) | (~exact & (np.abs(got - want) <= 16 * EPS[dtype] * scale))
            assert ok.all(), (f"{act}{chr(39) if derivative else ''} {dtype} u={u[~ok][0]!r} f={f}: "
                              f"{got[~ok][0]!r}, reference {want[~ok][0]!r} (TINY {tiny:g})")


# ------------------------------------------------------------------ whole drivers vs reference
def _problem(stack, batch, seed=0):
    params = gb.init_params(stack, seed=seed)
    x = gb.gaussian_input(stack, batch=batch, seed=seed + 1)
    if stack.activation == "prelu":  # distinct slopes per layer
        rng = np.random.default_rng(seed + 3)
        params.slope[...] = rng.uniform(0.05, 0.5, stack.depth).astype(stack.dtype)
    return params, x


def _run(forward, backward, stack, params, x, top=True, rescale=None, fexp0=0, frow0=None):
    """The engine's allocation and calls (sum_squares loss), returning every array written.

    ``top=False`` hands dL/dh_L to the backward pass as it is (not normalised beforehand);
    ``rescale`` overrides the engine's choice of forward rescaling; row i of ``x`` is at
    2**(fexp0 + frow0[i]) (``frow0`` default 0)."""
    L, N, B, dt = stack.depth, stack.width, x.shape[0], stack.np_dtype
    if rescale is None:
        rescale = gb.engine.can_rescale_forward(stack, params)
    icfg, fcfg = abi.kernel_config(stack, rescale)
    out = dict(
        H=np.empty((L + 1, B, N), dt), Z=np.empty((L, B, N), dt), bn_mean=np.zeros((L, N), dt),
        bn_rstd=np.ones((L, N), dt), fexp=np.zeros(L + 1, np.int64), frow=np.zeros((L + 1, B), np.int64), act_mean=np.empty(L),
        act_std=np.empty(L), saturation=np.empty(L), dead=np.empty(L),
        info=np.full(2, -1, np.int64),
    )
    out["H"][0] = x
    out["fexp"][0] = fexp0
    if frow0 is not None:
        out["frow"][0] = frow0
    o = out
    forward(icfg, fcfg, params.W, params.b, params.gamma, params.beta, params.slope, o["H"], o["Z"],
            o["bn_mean"], o["bn_rstd"], o["fexp"], o["frow"], o["act_mean"], o["act_std"], o["saturation"],
            o["dead"], o["info"])
    o.update(G=o["H"][L].copy(), row_e=np.zeros(o["H"].shape[1], np.int64), dW=np.empty((L, N, N), dt), db=np.empty((L, N), dt),
             dgamma=np.empty((L, N), dt), dbeta=np.empty((L, N), dt), dslope=np.empty(L, dt),
             sig_m=np.empty(L + 1), sig_e=np.zeros(L + 1, np.int64), gnorm_m=np.empty(L),
             gnorm_e=np.zeros(L, np.int64), dz_e=np.zeros(L, np.int64), dw_e=np.zeros(L, np.int64), clip_acted=np.zeros(L + 1, np.int64))
    # the engine normalises and (signal clipping) clips the top signal once, before the backward
    o["sig_e"][L] = o["fexp"][L]
    if top:
        o["sig_e"][L] = ref.top_signal(o["G"], int(o["fexp"][L]), abi.signal_clip(stack), stack.clip_threshold)
    backward(icfg, fcfg, params.W, params.gamma, params.beta, params.slope, o["H"], o["Z"],
             o["bn_rstd"], o["fexp"], o["frow"], o["G"], o["row_e"], o["dW"], o["db"], o["dgamma"], o["dbeta"], o["dslope"],
             o["sig_m"], o["sig_e"], o["gnorm_m"], o["gnorm_e"], o["dz_e"], o["dw_e"], o["clip_acted"], o["info"])
    return o


def _c_with(opts):
    return (lambda *a: cb.forward_with(opts, *a), lambda *a: cb.backward_with(opts, *a))


def _compare(got, want, stack, label, rtol=None, truth=None):
    """Layer-by-layer comparison of every output; exponents and flags exactly.

    ``truth`` (float32): a function returning the float64 reference's run on the same float32
    weights and input. Where H, dW or G differ from the reference by more than ``rtol``, both
    are held to that truth instead: each layer of C within ``rtol`` of it, or within 1.5 times
    the reference's own error there (two float32 computations can lie on either side of it)."""
    rtol = RTOL[stack.dtype] if rtol is None else rtol
    for name in ("fexp", "frow", "sig_e", "gnorm_e", "dz_e", "dw_e", "clip_acted"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{label}: exponents {name}")
    np.testing.assert_array_equal(got["info"][:2], want["info"][:2], err_msg=f"{label}: info")
    arrays = ["H", "Z", "G", "dW", "gnorm_m", "sig_m", "act_std", "dslope"]
    if stack.batch_norm:
        arrays += ["bn_mean", "bn_rstd", "dgamma", "dbeta"]  # db is zero up to rounding under BN
    else:
        arrays += ["db"]
        for name in ("dgamma", "dbeta"):
            assert not np.any(got[name]), f"{label}: {name} must be zero without batch norm"
    if stack.activation != "prelu":
        assert not np.any(got["dslope"]), f"{label}: dslope must be zero unless PReLU"
    for name in arrays:
        g = np.asarray(got[name], np.float64)
        w = np.asarray(want[name], np.float64)
        if g.ndim <= 1 and name not in ("dslope",):
            g, w = g[:, None], w[:, None]
        elif name == "dslope":
            g, w = g[None], w[None]  # one scale for the whole vector
        g, w = g.reshape(len(g), -1), w.reshape(len(w), -1)
        scale = np.max(np.abs(w), axis=1, keepdims=True)
        err = np.abs(g - w) / np.where(scale > 0, scale, 1.0)
        finite = np.isfinite(w)
        np.testing.assert_array_equal(np.isfinite(g), finite, err_msg=f"{label}: {name} finiteness")
        err = np.where(finite, err, 0.0)
        if err.max() > rtol and truth is not None and name in ("H", "dW", "G"):
            _closer_to_truth(got, want, truth, name, rtol, label)
            continue
        if err.max() > rtol:
            l, i = np.unravel_index(np.argmax(err), err.shape)
            raise AssertionError(f"{label}: {name} layer/row {l} index {i}: {g[l, i]!r} vs "
                                 f"reference {w[l, i]!r} (relative error {err.max():.2e} > {rtol:g})")
    # mean of the activations: cancels near zero, so relative to its std
    dm = np.abs(got["act_mean"] - want["act_mean"])
    assert np.all(dm <= rtol * (np.abs(want["act_mean"]) + want["act_std"]) + 1e-300), f"{label}: act_mean"
    for name, count in (("saturation", got["H"].shape[1] * stack.width), ("dead", stack.width)):
        # a threshold comparison may flip for an entry within rounding of it
        assert np.all(np.abs(got[name] - want[name]) <= 1.0 / count + 1e-12), f"{label}: {name}"


def _closer_to_truth(got, want, truth, name, rtol, label, factor=1.5):
    """``_compare``'s fallback: C's error against the float64 truth, layer by layer, within
    ``rtol`` or ``factor`` times the reference's own error."""
    t = _true_values(truth())[name]
    t = t.reshape(len(t), -1)
    scale = np.max(np.abs(t), axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    e_c = np.max(np.abs(_true_values(got)[name].reshape(t.shape) - t) / scale, axis=1)
    e_r = np.max(np.abs(_true_values(want)[name].reshape(t.shape) - t) / scale, axis=1)
    bad = e_c > np.maximum(rtol, factor * e_r)
    assert not np.any(bad), (f"{label}: {name} layers {np.flatnonzero(bad)}: C {e_c[bad]} from the "
                             f"float64 truth, the reference {e_r[bad]}")


OPTIONS = {
    "plain": {},
    "bn": dict(batch_norm=True),
    "residual": dict(residual=2, residual_scale=0.5),
    "clip_value": dict(clip="value", clip_threshold=0.01),
    "clip_norm": dict(clip="norm", clip_threshold=1e-3),
    "bn_res_clip": dict(batch_norm=True, residual=3, clip="norm", clip_threshold=0.1),
    "sigma_b": dict(sigma_b=0.3),
}
# widths that exercise every tile of the own products (vector, half vector, scalar remainder)
# and, in float32, their blocks of k (64: three at N = 130); the widest also through BLAS
# (forced: by default BLAS takes N >= cbackend.BLAS_MIN_WIDTH, 512 or none)
SHAPES = [(3, 5), (8, 6), (33, 7), (130, 4)]  # batch >= 4: batch norm over 2 samples is noise


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("act", spec.ACTIVATIONS)
def test_drivers_match_reference(act, option, dtype):
    for width, batch in SHAPES:
        if act == "identity" and "bn" in option:
            # 0.5 ||BN(z)||^2 does not depend on z: its gradient is exactly zero and both
            # backends return rounding noise (nothing to compare)
            continue
        stack = gb.Stack(depth=6, width=width, activation=act, init="he_normal", dtype=dtype,
                         **OPTIONS[option])
        params, x = _problem(stack, batch)
        want = _run(ref.stack_forward, ref.stack_backward, stack, params, x)
        got = _run(cb.stack_forward, cb.stack_backward, stack, params, x)
        truth = functools.cache(lambda: _float64_truth(stack, params, x)) if dtype == "float32" else None
        _compare(got, want, stack, f"{act} {option} {dtype} N={width} B={batch}", truth=truth)
        if width == 130:
            got = _run(*_c_with(cb.make_opts(blas_min_width=128)), stack, params, x)
            _compare(got, want, stack, f"{act} {option} {dtype} N={width} B={batch} BLAS", truth=truth)


def _float64_truth(stack, params, x):
    """The reference in float64 on the same float32 weights and input."""
    st = dataclasses.replace(stack, dtype="float64")
    p = gb.init_params(st, 0)
    for k in ("W", "b", "gamma", "beta", "slope"):
        if getattr(params, k) is not None:
            getattr(p, k)[...] = getattr(params, k).astype(np.float64)
    return _run(ref.stack_forward, ref.stack_backward, st, p, x.astype(np.float64))


def _true_values(out):
    """H_l, dL/dW_l (layer-wise) and dL/dh_0 with their exponents applied (float64)."""
    L = len(out["dW"])
    return {"H": np.ldexp(np.asarray(out["H"], np.float64), (out["fexp"][:, None] + out["frow"])[:, :, None]),
            "dW": np.ldexp(np.asarray(out["dW"], np.float64), (out["dw_e"] + out["fexp"][:L])[:, None, None]),
            "G": np.ldexp(np.asarray(out["G"], np.float64), int(out["sig_e"][0]))[None]}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("act", spec.ACTIVATIONS)
def test_float32_blocks_of_k_are_as_close_to_float64_as_the_reference(act, option):
    """Width 300 in float32: the own products sum k in five blocks of 64 (stack_impl.h GB_KB).
    Here the reference itself lies up to 1.8e-4 from the float64 truth (SELU with value clipping,
    the largest of these 67 cases), so C is held to the truth instead: within float32's
    tolerance 1e-4, or 3 times the reference's own error (relative to each layer's largest
    entry; H_l, dL/dW_l, dL/dh_0). Three, not 1.5: in that case the error is one draw of how
    float32 sums round, and the reference's draw is its BLAS's. dL/dh_0, measured on a Zen 5
    CPU: the reference 8.0e-5 with OpenBLAS's Haswell kernels (its choice there) and 1.8e-4
    with its SkylakeX ones (OPENBLAS_CORETYPE); C 1.6e-4 (AVX-512), 1.7e-4 (AVX2) and 2.3e-4
    (baseline), the same on one thread or two."""
    if act == "identity" and "bn" in option:
        return
    stack = gb.Stack(depth=6, width=300, activation=act, init="he_normal", dtype="float32", **OPTIONS[option])
    params, x = _problem(stack, 5)
    truth = _float64_truth(stack, params, x)
    got = _run(cb.stack_forward, cb.stack_backward, stack, params, x)
    want = _run(ref.stack_forward, ref.stack_backward, stack, params, x)
    for name in ("H", "dW", "G"):
        _closer_to_truth(got, want, lambda: truth, name, 1e-4, f"{act} {option} N=300", factor=3.0)


SMOOTH = ("tanh", "sigmoid", "swish", "gelu", "identity")


@pytest.mark.parametrize("isa", [i for i in (1, 3, 4) if i <= cb.isa()])
@pytest.mark.parametrize("act, dtype", [(a, d) for a in spec.ACTIVATIONS if a != "identity"
                                        for d in ("float64", "float32") if d == "float64" or a in SMOOTH])
def test_batch_norm_with_trained_gamma_and_beta_matches_reference(act, dtype, isa):
    """Batch norm with gamma and beta as training leaves them (the init's 1 and 0 hide a wrong
    or missing one): y = gamma xhat + beta feeds the activation forward and its derivative
    backward (vector and scalar lanes: width 37 leaves a remainder at every lane count).
    float32 only for smooth activations: at a kink (ReLU family, ELU, SELU) a y within one
    rounding of 0 takes the other derivative when the reference rounds gamma xhat and the sum
    apart and C fuses them (seen: leaky ReLU, width 130, batch 4: 1.2e-4 in one row of G)."""
    for width, batch in ((37, 9), (64, 16)):
        stack = gb.Stack(depth=6, width=width, activation=act, init="he_normal", dtype=dtype, batch_norm=True)
        params, x = _problem(stack, batch)
        rng = np.random.default_rng(width)
        params.gamma[...] = rng.uniform(0.5, 1.5, params.gamma.shape).astype(dtype)
        params.beta[...] = rng.uniform(-0.5, 0.5, params.beta.shape).astype(dtype)
        want = _run(ref.stack_forward, ref.stack_backward, stack, params, x)
        got = _run(*_c_with(cb.make_opts(isa=isa, blas=False)), stack, params, x)
        _compare(got, want, stack, f"{act} bn gamma/beta {dtype} isa {isa} N={width} B={batch}")


@pytest.mark.parametrize("act, depth, width, batch", [
    ("relu", 300, 16, 4),       # forward rescaling on (homogeneous, zero bias): fexp moves
    ("identity", 200, 9, 3),
    ("prelu", 100, 12, 5),
    ("sigmoid", 600, 16, 8),    # vanishing: sig_e goes far below the float64 range
])
def test_deep_exact_chain_matches_reference(act, depth, width, batch):
    stack = gb.Stack(depth=depth, width=width, activation=act, init="he_normal" if act != "sigmoid" else "xavier_normal")
    params, x = _problem(stack, batch)
    want = _run(ref.stack_forward, ref.stack_backward, stack, params, x)
    got = _run(cb.stack_forward, cb.stack_backward, stack, params, x)
    if act == "sigmoid":
        assert want["sig_e"][0] < -1100  # beyond what plain float64 represents
    _compare(got, want, stack, f"deep {act}", rtol=1e-11)


def _at_layer(out):
    """H's rows at their layer's exponent fexp (float64 mantissas times 2**frow)."""
    return np.ldexp(np.asarray(out["H"], np.float64), out["frow"][:, :, None])


def _aligned_error(got_m, got_e, want_m, want_e):
    """max over layers of |got - want| / max|want| with both at the reference's exponents."""
    shape = (-1,) + (1,) * (got_m.ndim - 1)
    g = np.ldexp(got_m.astype(np.float64), (got_e - want_e).reshape(shape))
    w = want_m.astype(np.float64)
    scale = np.max(np.abs(w.reshape(len(w), -1)), axis=1).reshape(shape)
    return float(np.max(np.abs(g - w) / np.where(scale > 0, scale, 1.0)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", ["tanh", "gelu", "swish", "elu", "selu"])
def test_deep_zero_bias_stack_tracks_reference_exponents(act, dtype):
    """10^4 zero-bias layers at sigma_w = 0.6: the activations decay far below the float range
    (2^-3000 .. 2^-18000) and only the forward exponents keep them; the chain runs in the
    linear form of phi_scaled. In float64 every exponent must be the reference's. In float32
    the two backends' roundings drift apart over 10^4 layers (up to ~1e-2 for SELU, whose
    slope jumps at 0), so a max|h| that close to a power of two may normalise one exponent
    apart: exponents within one, and the true values (mantissas brought to the reference's
    exponents) agree to the rounding of a 10^4-layer product chain (100 L ulps)."""
    L = 10_000
    stack = gb.Stack(depth=L, width=8, activation=act, init="normal", sigma_w=0.6, dtype=dtype)
    params, x = _problem(stack, 4)
    want = _run(ref.stack_forward, ref.stack_backward, stack, params, x)
    got = _run(cb.stack_forward, cb.stack_backward, stack, params, x)
    assert want["fexp"][L] < -3000 and want["sig_e"][0] < -6000  # far beyond float64
    for name in ("fexp", "frow", "sig_e", "gnorm_e", "dz_e", "dw_e"):
        if dtype == "float64":
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{act}: {name}")
        elif name != "gnorm_e":  # the sum of three exponents (sig_e, fexp, the norm's): by its value below
            d = np.abs(got[name] - want[name])
            assert d.max() <= 1, f"{act} {dtype}: {name} {d.max()} apart at layer {np.argmax(d)}"
    rtol = 100 * L * EPS[dtype] / 2
    e_w = lambda o: o["dw_e"] + o["fexp"][:-1]  # noqa: E731
    for what, gm, ge, wm, we in (
            ("H", _at_layer(got), got["fexp"], _at_layer(want), want["fexp"]),
            ("dW", got["dW"], e_w(got), want["dW"], e_w(want)),
            ("||dW||", got["gnorm_m"], got["gnorm_e"], want["gnorm_m"], want["gnorm_e"]),
            ("||dL/dh||", got["sig_m"], got["sig_e"], want["sig_m"], want["sig_e"])):
        err = _aligned_error(gm, ge, wm, we)
        assert err <= rtol, f"{act} {dtype}: {what} off by {err:.3g} (> {rtol:.3g})"


def test_chaotic_stack_layer_by_layer():
    """tanh with he init over hundreds of layers amplifies rounding; check each layer given
    the same input: the C forward of one layer from the reference's h_l."""
    stack = gb.Stack(depth=300, width=24, activation="tanh", init="he_normal")
    params, x = _problem(stack, 6)
    want = _run(ref.stack_forward, ref.stack_backward, stack, params, x)
    for l in range(0, 300, 37):
        one = gb.Stack(depth=1, width=24, activation="tanh")
        p1 = gb.Params(**{n: np.ascontiguousarray(a[l:l + 1]) for n, a in params.items()})
        got = _run(cb.stack_forward, cb.stack_backward, one, p1, want["H"][l], fexp0=want["fexp"][l],
                   frow0=want["frow"][l])  # the reference's h_l: its rows at their exponents
        true = lambda o, i: np.ldexp(o["H"][i], (o["fexp"][i] + o["frow"][i])[:, None])  # noqa: E731
        np.testing.assert_allclose(true(got, 1), true(want, l + 1), rtol=1e-13,
                                   atol=1e-13 * np.abs(true(want, l + 1)).max())


# ------------------------------------------------------------------ kernels, BLAS, threads
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("width", [7, 64, 200])
def test_blas_and_own_kernels_agree(width, dtype):
    stack = gb.Stack(depth=5, width=width, activation="gelu", batch_norm=True, residual=5, dtype=dtype)
    params, x = _problem(stack, 9)
    own = _run(*_c_with(cb.make_opts(nthreads=1, blas=False)), stack, params, x)
    blas = _run(*_c_with(cb.make_opts(nthreads=1, blas_min_width=1)), stack, params, x)
    want = _run(ref.stack_forward, ref.stack_backward, stack, params, x)
    _compare(own, want, stack, "own kernels")
    _compare(blas, want, stack, "BLAS")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_blas_with_the_forward_rows_apart(dtype):
    """The BLAS path where dW's rows and db's are at different exponents (a zero-bias stack whose
    samples enter 2^40 apart: dW alone by BLAS, db by the own sums), against the reference."""
    stack = gb.Stack(depth=4, width=64, activation="gelu", sigma_w=1.5, dtype=dtype)
    params, x = _problem(stack, 9)
    frow0 = np.array([0, -40, -3][: len(x)] + [0] * max(0, len(x) - 3))
    blas = _run(*_c_with(cb.make_opts(nthreads=1, blas_min_width=1)), stack, params, x, frow0=frow0)
    want = _run(ref.stack_forward, ref.stack_backward, stack, params, x, frow0=frow0)
    assert np.any(want["frow"][:-1] != 0)
    _compare(blas, want, stack, "BLAS")


def _chain(A, Bm, dtype):
    """A @ Bm as one chain per entry over k in order, each product rounded and then added (the
    layer pairs are the baseline instance: no FMA); float32 in blocks of 64 k, each a chain from
    0, added to the result in order (csrc/stack_impl.h, GB_KB)."""
    A, Bm = A.astype(dtype), Bm.astype(dtype)
    K = A.shape[1]
    out = np.zeros((A.shape[0], Bm.shape[1]), dtype=dtype)
    block = 64 if dtype == np.float32 else K
    for k0 in range(0, K, block):
        acc = np.zeros_like(out)
        for k in range(k0, min(K, k0 + block)):
            acc = acc + A[:, k, None] * Bm[None, k, :]
        out = acc if k0 == 0 else out + acc
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_packed_products_keep_one_chain_per_entry(dtype):
    """Products over more than 256 rows of B take B in packed panels of 256 rows x 128 columns
    (cache blocks); each entry must still be one chain over k in order, the bits of the unpacked
    loop: float64 goes on from C where the panel before stopped. The layer functions against that
    chain computed in NumPy: z = h W^T + b and dh = dz W over k = N = 264 (two panels of k, the
    second of 8 rows; column panels of 128, 128 and 8), dW = dz^T h over k = B = 300. Adding the
    second panel's chain to C instead of going on from it changes the float64 bits (checked)."""
    B, N = 300, 264
    rng = np.random.default_rng(7)
    h, dz = rng.standard_normal((B, N)).astype(dtype), rng.standard_normal((B, N)).astype(dtype)
    W, b = (rng.standard_normal((N, N)) / 16).astype(dtype), rng.standard_normal(N).astype(dtype)
    z = np.empty((B, N), dtype)
    cb.dense_forward(z, h, W, b)
    np.testing.assert_array_equal(z, _chain(h, W.T, dtype) + b)
    dh, dW, db = np.empty((B, N), dtype), np.empty((N, N), dtype), np.empty(N, dtype)
    cb.dense_backward(dh, dW, db, dz, h, W)
    np.testing.assert_array_equal(dh, _chain(dz, W, dtype))
    np.testing.assert_array_equal(dW, _chain(dz.T, h, dtype))


THREAD_STACKS = {  # every path of the threaded drivers: plain, residual, rescaled (zero bias), PReLU,
    # and the one-thread paths (batch norm, signal clipping) called with several threads
    "tanh": dict(activation="tanh", sigma_b=0.2),
    "relu-res-rescaled": dict(activation="relu", residual=2, residual_scale=0.5),
    "elu-rescaled": dict(activation="elu"),
    "prelu": dict(activation="prelu", sigma_b=0.1),
    "gelu-f32": dict(activation="gelu", sigma_b=0.1, dtype="float32"),
    "bn-clip": dict(activation="prelu", batch_norm=True, residual=2, clip="norm", clip_threshold=0.5),
}


# (300, 24) and (24, 520): products of packed panels of B (k > 256), in the forward and for dW
@pytest.mark.parametrize("width, batch", [(64, 64), (40, 33), (8, 300), (24, 3), (300, 24), (24, 520)])
@pytest.mark.parametrize("case", list(THREAD_STACKS))
def test_results_do_not_depend_on_thread_count(case, width, batch):
    stack = gb.Stack(depth=8, width=width, init="he_normal", **THREAD_STACKS[case])
    params, x = _problem(stack, batch)
    runs = [_run(*_c_with(team_opts(t, solo_after=s)), stack, params, x)
            for t, s in ((1, 0), (2, 0), (3, 0), (2, 0), (5, 0), (2, 4), (3, 1))]  # s: one thread from then on
    for other in runs[1:]:
        for name, a in runs[0].items():
            np.testing.assert_array_equal(other[name], a, err_msg=name)
    want = _run(ref.stack_forward, ref.stack_backward, stack, params, x)
    _compare(runs[1], want, stack, f"{case} 2 threads")


ISAS = [i for i in (1, 3, 4) if i <= cb.isa()]  # baseline, AVX2+FMA, AVX-512: those this CPU runs


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", ["tanh", "relu-res-rescaled", "gelu-f32", "bn-clip"])
def test_every_instruction_set_matches_reference(case, isa):
    """The portable build: the baseline instance (no -march, e.g. SSE2 on x86-64) and the
    AVX2/AVX-512 instances chosen at run time all match the reference, and each is
    bit-identical across thread counts."""
    stack = gb.Stack(depth=8, width=40, init="he_normal", **THREAD_STACKS[case])
    params, x = _problem(stack, 33)
    assert cb.isa(cb.make_opts(isa=isa)) == isa
    runs = [_run(*_c_with(team_opts(t, isa=isa)), stack, params, x)
            for t in (1, 2)]
    for name, a in runs[0].items():
        np.testing.assert_array_equal(runs[1][name], a, err_msg=f"isa {isa}: {name}")
    want = _run(ref.stack_forward, ref.stack_backward, stack, params, x)
    _compare(runs[0], want, stack, f"{case} isa {isa}")


def _fork_child(seed):
    """In a forked child: a threaded C call must not hang (a GNU OpenMP pool would)."""
    stack = gb.Stack(depth=3, width=32, activation="tanh")
    params = gb.init_params(stack, seed)
    res = gb.backprop(stack, params, gb.gaussian_input(stack, 4096, seed), backend="c")
    return float(res.grad_norm.log10()[0])


def test_fork_after_a_threaded_call_does_not_hang():
    """Issue 14: after one C call big enough to run threads (width 32, batch 4096),
    multiprocessing.Pool(2).map with fork children must finish. Runs in a subprocess with a
    timeout, so that a hang fails the test instead of blocking the suite."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import multiprocessing as mp, numpy as np, gradbench as gb
        from gradbench import cbackend as cb
        from tests.test_c import _fork_child
        stack = gb.Stack(depth=3, width=32, activation="tanh")
        assert cb.threads_for(3, 4096, 32) == 2  # the call below runs a team
        gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4096, 1), backend="c")
        with mp.get_context("fork").Pool(2) as pool:
            out = pool.map(_fork_child, [1, 2, 3, 4])
        assert all(np.isfinite(out)), out
        print("ok", len(out))
    """)
    env = dict(__import__("os").environ, GRADBENCH_C_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent), env=env)
    assert proc.returncode == 0 and "ok 4" in proc.stdout, proc.stderr[-2000:]


def test_two_python_threads_at_once_match_serial():
    stacks = [gb.Stack(depth=40, width=48, activation="tanh", init="he_normal", batch_norm=True),
              gb.Stack(depth=30, width=20, activation="selu", residual=3, dtype="float32")]
    problems = [(s, *_problem(s, 16, seed=i)) for i, s in enumerate(stacks)]
    serial = [gb.backprop(s, p, x, backend="c") for s, p, x in problems]
    results = [[None, None] for _ in range(3)]

    def work(rep, i):
        s, p, x = problems[i]
        results[rep][i] = gb.backprop(s, p, x, backend="c")

    threads = [threading.Thread(target=work, args=(rep, i)) for rep in range(3) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rep in range(3):
        for i in range(2):
            got, want = results[rep][i], serial[i]
            np.testing.assert_array_equal(got.grads.W.mantissa, want.grads.W.mantissa)
            np.testing.assert_array_equal(got.grads.W.exponent, want.grads.W.exponent)
            np.testing.assert_array_equal(got.signal_norm.mantissa, want.signal_norm.mantissa)
            np.testing.assert_array_equal(got.act_std.mantissa, want.act_std.mantissa)


def test_gil_is_released_during_the_call():
    """While one thread is inside the C driver, the main thread keeps running Python."""
    stack = gb.Stack(depth=3000, width=32, activation="gelu")
    params, x = _problem(stack, 32)
    L, N, B = stack.depth, stack.width, 32
    icfg, fcfg = abi.kernel_config(stack, False)
    H = np.empty((L + 1, B, N)); H[0] = x
    bufs = [np.empty((L, B, N)), np.zeros((L, N)), np.ones((L, N)), np.zeros(L + 1, np.int64),
            np.zeros((L + 1, B), np.int64), np.empty(L), np.empty(L), np.empty(L), np.empty(L), np.full(2, -1, np.int64)]
    span = {}

    def call():
        t0 = time.perf_counter()
        cb.stack_forward(icfg, fcfg, params.W, params.b, params.gamma, params.beta, params.slope, H, *bufs)
        span["t"] = (t0, time.perf_counter())

    worker = threading.Thread(target=call)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    t0, t1 = span["t"]
    inside = [t for t in ticks if t0 < t < t1]
    # with the GIL held the main thread would not tick at all during the call
    assert len(inside) > 100, f"{len(inside)} ticks of the main thread during a {t1 - t0:.3f} s C call"


# ------------------------------------------------------------------ errors
def _arrays(stack, batch=2):
    L, N = stack.depth, stack.width
    params, x = _problem(stack, batch)
    icfg, fcfg = abi.kernel_config(stack, False)
    H = np.zeros((L + 1, batch, N)); H[0] = x
    fwd = [icfg, fcfg, params.W, params.b, params.gamma, params.beta, params.slope, H,
           np.empty((L, batch, N)), np.zeros((L, N)), np.ones((L, N)), np.zeros(L + 1, np.int64),
           np.zeros((L + 1, batch), np.int64), np.empty(L), np.empty(L), np.empty(L), np.empty(L), np.full(2, -1, np.int64)]
    return fwd


def test_error_codes_become_exceptions():
    """The C drivers check their configuration themselves too (abi.check does it first in
    Python): called directly, bad codes come back as error codes that become exceptions."""
    stack = gb.Stack(depth=4, width=6, activation="tanh")
    fwd = _arrays(stack)
    bad_act = fwd[0].copy(); bad_act[abi.I_ACT] = 42
    with pytest.raises(ValueError, match="unknown activation"):
        cb._driver("stack_forward", cb._OPTS, (bad_act, *fwd[1:]))
    bad_res = fwd[0].copy(); bad_res[abi.I_RESIDUAL] = 3  # does not divide L = 4
    with pytest.raises(ValueError, match="bad argument"):
        cb._driver("stack_forward", cb._OPTS, (bad_res, *fwd[1:]))
    bad_clip = fwd[0].copy(); bad_clip[abi.I_CLIP] = 7
    with pytest.raises(ValueError, match="bad argument"):
        cb._driver("stack_forward", cb._OPTS, (bad_clip, *fwd[1:]))
    sig_rescaled = fwd[0].copy(); sig_rescaled[abi.I_ACT] = abi.ACT_CODE["sigmoid"]
    sig_rescaled[abi.I_RESCALE_FWD] = 1  # sigmoid has no scaled form (linear_coefficients)
    with pytest.raises(ValueError, match="bad argument"):
        cb._driver("stack_forward", cb._OPTS, (sig_rescaled, *fwd[1:]))
    with pytest.raises(ValueError, match="unknown activation"):
        cb.phi(np.zeros(3), 99, 0.0)
    with pytest.raises(MemoryError):
        cb.check(abi.ENOMEM, "gb_stack_forward_f64")
    # a workspace that cannot be allocated: N*N doubles for a huge N (no buffer is touched
    # before the allocation fails)
    st = cb.ffi.new("gb_stack_arrays *")
    keep = [np.zeros(16), np.zeros(16, np.int64)]
    st.icfg, st.fcfg = cb.pointer(fwd[0], "int64_t *"), cb.pointer(fwd[1], "double *")
    st.L, st.B, st.N = 1, 1, 1 << 29
    rc = cb.lib.gb_stack_forward_f64(st, cb.make_opts(blas=False))
    del keep
    with pytest.raises(MemoryError, match="workspace"):
        cb.check(rc, "gb_stack_forward_f64")


def test_wrappers_validate_before_any_kernel_runs():
    stack = gb.Stack(depth=4, width=6, activation="tanh")
    fwd = _arrays(stack)
    wrong_dtype = list(fwd); wrong_dtype[7] = fwd[7].astype(np.float32)
    with pytest.raises(TypeError, match="H has dtype float32"):
        cb.stack_forward(*wrong_dtype)
    wrong_shape = list(fwd); wrong_shape[8] = np.empty((3, 2, 6))
    with pytest.raises(ValueError, match=r"Z has shape \(3, 2, 6\), expected \(4, 2, 6\)"):
        cb.stack_forward(*wrong_shape)
    strided = list(fwd); strided[7] = np.zeros((5, 2, 12))[:, :, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        cb.stack_forward(*strided)
    bad_cfg = list(fwd); bad_cfg[0] = fwd[0].astype(np.int32)
    with pytest.raises(TypeError, match="icfg"):
        cb.stack_forward(*bad_cfg)
    with pytest.raises(TypeError, match="float16"):
        cb.phi(np.zeros(3, np.float16), 2, 0.0)


def test_all_finite_refuses_what_it_cannot_read():
    base = np.zeros((3, 4))
    assert cb.all_finite(base)
    for bad in (base.astype(np.int64), base.astype(np.float16), base[:, ::2], misaligned(base)):
        with pytest.raises((TypeError, ValueError), match="^all_finite: a "):
            cb.all_finite(bad)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        cb.all_finite(base.tolist())


# ------------------------------------------------------------------ the exact chain at the edge
@pytest.mark.parametrize("dtype, scale, shift", [("float64", 2.0 ** -1040, 1200), ("float32", 2.0 ** -140, 200)])
def test_subnormal_signal_is_normalised_exactly(dtype, scale, shift):
    """dL/dh_L below 2^-1024 (float32: 2^-128): 2^-e itself is not a finite float, so the
    normalisation must scale in two steps. Checked against the exact product G^T h_0."""
    stack = gb.Stack(depth=1, width=4, activation="tanh", dtype=dtype)
    params, x = _problem(stack, 3)
    params.W[...] = (params.W.astype(np.float64) * scale).astype(dtype)  # exact (power of two)
    # the backward pass normalises its top signal itself (the reference's normalise would
    # multiply by 2^-e = inf here)
    got = _run(cb.stack_forward, cb.stack_backward, stack, params, x, top=False, rescale=False)
    G = got["H"][1].astype(np.float64)  # tanh(z) = z here; subnormal entries, held exactly
    assert 0 < np.abs(G).max() < np.finfo(dtype).tiny
    assert np.all(np.isfinite(got["dW"])) and got["info"][1] == -1
    e = int(got["sig_e"][1])
    true_dW = np.ldexp(G, shift).T @ x.astype(np.float64)  # exact scaling into the normal range
    mant = got["dW"][0].astype(np.float64)
    np.testing.assert_allclose(np.ldexp(mant, e + shift), true_dW, rtol=RTOL[dtype])
    sig_true = np.sqrt(np.sum(np.ldexp(G, shift) ** 2))
    np.testing.assert_allclose(np.ldexp(got["sig_m"][1], e + shift), sig_true, rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_input_check_finds_every_non_finite_entry_on_every_thread_count_and_isa(dtype):
    """cbackend.all_finite (gb_check_finite: one pass of bit tests, on the team for a large
    array) against NumPy's np.all(np.isfinite(.)): inf, -inf and NaN at the ends, at the
    threads' block edges and in between; the largest finite number, subnormals and -0 pass."""
    n = 3 * (1 << 20) + 5  # three threads' blocks of 2^20 entries, and a ragged end
    dt = np.dtype(dtype)
    base = np.random.default_rng(0).standard_normal(n).astype(dt)
    base[[7, 100, n - 9]] = [np.finfo(dt).max, np.finfo(dt).smallest_subnormal, -0.0]
    opts = [cb.make_opts(nthreads=t, isa=isa) for t in (1, 2, 3) for isa in ISAS]
    for o in opts:
        assert cb.all_finite(base, o)
    for where in (0, 1, n // 3 - 1, n // 3, n // 2, 2 * n // 3, n - 1):
        for bad in (np.inf, -np.inf, np.nan):
            a = base.copy()
            a[where] = bad
            assert not np.all(np.isfinite(a))
            for o in opts:
                assert not cb.all_finite(a, o), (where, bad, o.nthreads, o.isa)
    assert cb.all_finite(base[:0])


def test_a_large_array_with_nan_is_refused_with_its_index():
    """check_array's message is the same with the C check (from 2^18 entries on) as with NumPy's."""
    stack = gb.Stack(depth=80, width=64)
    params = gb.init_params(stack, 0)
    from gradbench.inputs import C_CHECK_FROM

    assert params.W.size >= C_CHECK_FROM
    W = params.W.copy()
    W[61, 5, 7] = np.nan
    bad = gb.Params(W=W, b=params.b, gamma=params.gamma, beta=params.beta, slope=params.slope)
    with pytest.raises(ValueError, match=r"params\.W contains NaN or Inf \(first at index \(61, 5, 7\)\)"):
        gb.backprop(stack, bad, gb.gaussian_input(stack, 2, 1))


def test_the_thread_limit_is_the_drivers_and_beyond_it_is_refused(monkeypatch):
    """GRADBENCH_C_THREADS=3000000000 was accepted and threads() said 3000000000 while the
    drivers ran 64 (csrc/gb_internal.h GB_MAX_THREADS)."""
    import re
    from pathlib import Path

    from gradbench import cbackend
    from gradbench._env import EnvError

    header = (Path(cbackend.__file__).resolve().parent.parent / "csrc" / "gb_internal.h").read_text()
    assert int(re.search(r"#define GB_MAX_THREADS (\d+)", header).group(1)) == cbackend.MAX_THREADS
    monkeypatch.setenv("GRADBENCH_C_THREADS", str(cbackend.MAX_THREADS + 1))
    with pytest.raises(EnvError, match=rf"GRADBENCH_C_THREADS='{cbackend.MAX_THREADS + 1}' is not an integer from 1 to "
                                       rf"{cbackend.MAX_THREADS}"):
        cbackend._env_threads()
    monkeypatch.setenv("GRADBENCH_C_THREADS", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "99999999999999999999")
    assert cbackend._env_threads() == cbackend.MAX_THREADS
