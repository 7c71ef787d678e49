"""Each layer kernel of the Numba and C backends against the reference's layer function on
identical inputs (nasty values included): the layer pairs that the drivers call, one at a time;
and every bad array refused by both before a kernel runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradbench as gb
from gradbench import reference as R
from gradbench.abi import ACT_CODE, CLIP_NORM, CLIP_VALUE, LAYER_ARGS
from gradbench.backends import get_backend
from tests.helpers import misaligned

# Every backend that exports the reference's layer functions: Numba (gradbench.kernels) and C
# (gradbench.cbackend, the exported C layer pairs).
LAYER_BACKENDS = [b for b in ("numba", "c") if b in gb.backends()]


@pytest.fixture(params=LAYER_BACKENDS)
def K(request):
    return get_backend(request.param)


RTOL = {"float64": 1e-13, "float32": 1e-5}
DTYPES = ["float64", "float32"]


def _close(what, got, ref, dtype):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs reference {ref.shape}"
    nan = np.isnan(ref) != np.isnan(got)
    assert not nan.any(), f"{what}, index {np.argwhere(nan)[0]}: got {got[nan][0]}, reference {ref[nan][0]}"
    fin = np.isfinite(ref)
    inf = ~fin & ~np.isnan(ref) & (got != ref)
    assert not inf.any(), f"{what}, index {np.argwhere(inf)[0]}: got {got[inf][0]}, reference {ref[inf][0]}"
    scale = np.max(np.abs(ref[fin]), initial=0.0)
    with np.errstate(invalid="ignore"):
        diff = np.where(fin, np.abs(got - ref), 0.0)
    i = np.unravel_index(np.argmax(diff), diff.shape) if diff.size else ()
    assert diff.size == 0 or diff[i] <= RTOL[dtype] * scale, (
        f"{what}, index {i}: got {got[i]!r}, reference {ref[i]!r}, off by {diff[i] / scale:.3g} of max |ref|")


def _nasty(rng, B, N, dtype):
    z = rng.standard_normal((B, N)) * 3
    flat = z.reshape(-1)
    special = [300.0, -300.0, 0.0, -0.0, 25.0, -25.0, 1e-310, 800.0, -800.0]
    flat[: min(len(special), flat.size)] = special[: flat.size]
    return z.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", gb.ACTIVATIONS)
def test_activation_kernels_equal_reference(K, name, dtype):
    rng = np.random.default_rng(1)
    z = _nasty(rng, 7, 9, dtype)
    z[6, 8] = np.nan
    code, param = ACT_CODE[name], (0.3 if name in ("leaky_relu", "prelu", "elu") else 0.0)
    a_ref, a_got = np.empty_like(z), np.empty_like(z)
    R.activation_forward(a_ref, z, code, param)
    K.activation_forward(a_got, z, code, param)
    _close(f"{name} phi", a_got, a_ref, dtype)
    da = rng.standard_normal(z.shape).astype(dtype)
    dz_ref, dz_got = np.empty_like(z), np.empty_like(z)
    with np.errstate(invalid="ignore"):
        s_ref = R.activation_backward(dz_ref, da, z, code, param)
    s_got = K.activation_backward(dz_got, da, z, code, param)
    _close(f"{name} da*phi'", dz_got, dz_ref, dtype)
    _close(f"{name} dslope", s_got, s_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N", [(1, 1), (4, 5), (16, 16), (8, 40), (3, 200)])  # both dense paths
def test_dense_kernels_equal_reference(K, B, N, dtype):
    rng = np.random.default_rng(B * 1000 + N)
    h, W = rng.standard_normal((B, N)).astype(dtype), rng.standard_normal((N, N)).astype(dtype)
    b, dz = rng.standard_normal(N).astype(dtype), rng.standard_normal((B, N)).astype(dtype)
    outs = [[np.empty((B, N), dtype), np.empty((N, N), dtype), np.empty(N, dtype), np.empty((B, N), dtype)] for _ in range(2)]
    for mod, (z, dW, db, dh) in zip((R, K), outs):
        mod.dense_forward(z, h, W, b)
        mod.dense_backward(dh, dW, db, dz, h, W)
    for what, i in (("z", 0), ("dW", 1), ("db", 2), ("dh", 3)):
        _close(f"dense {what} (B={B}, N={N})", outs[1][i], outs[0][i], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [1, 2, 9])
def test_batchnorm_kernels_equal_reference(K, B, dtype):
    N = 6
    rng = np.random.default_rng(B)
    z = rng.standard_normal((B, N)).astype(dtype)
    z[:, 0] = 0.75  # a zero-variance unit
    gamma, beta = rng.standard_normal(N).astype(dtype), rng.standard_normal(N).astype(dtype)
    dy = rng.standard_normal((B, N)).astype(dtype)
    res = []
    for mod in (R, K):
        y, xhat, mean, rstd = np.empty_like(z), np.empty_like(z), np.empty(N, dtype), np.empty(N, dtype)
        mod.batchnorm_forward(y, xhat, mean, rstd, z.copy(), gamma, beta, np.float64(1e-5))
        dz, dgamma, dbeta = np.empty_like(z), np.empty(N, dtype), np.empty(N, dtype)
        mod.batchnorm_backward(dz, dgamma, dbeta, dy, xhat, rstd, gamma)
        res.append(dict(y=y, xhat=xhat, mean=mean, rstd=rstd, dz=dz, dgamma=dgamma, dbeta=dbeta))
    for k in res[0]:
        _close(f"batchnorm {k} (B={B})", res[1][k], res[0][k], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [2, 3, 5, 8, 13, 64])
@pytest.mark.parametrize("backend", ["numpy", *LAYER_BACKENDS])
def test_batchnorm_takes_a_unit_whose_samples_are_equal_exactly(backend, B, dtype):
    """A unit whose batch entries are all equal (zero weights into it, one input repeated): the
    mean is that value, xhat exactly 0, y exactly beta, and a backward signal equal across the
    batch gives dz exactly 0 and dbeta = B dy, on every backend. The plain sum / B rounds: its
    xhat was rounding times 1 / sqrt(eps), decades apart between backends deep in a stack. The
    other units' means against math.fsum's (correctly rounded sum) within a few roundings."""
    mod = R if backend == "numpy" else get_backend(backend)
    N = 5
    rng = np.random.default_rng(B)
    z = (rng.standard_normal((B, N)) * 3 + 1).astype(dtype)
    const = [np.float64(0.1), np.float64(-7.3e-5), np.float64(2.0) / 3]  # not sums of exact halves
    for j, c in enumerate(const):
        z[:, j] = c
    gamma, beta = rng.standard_normal(N).astype(dtype), rng.standard_normal(N).astype(dtype)
    y, xhat, mean, rstd = np.empty_like(z), np.empty_like(z), np.empty(N, dtype), np.empty(N, dtype)
    mod.batchnorm_forward(y, xhat, mean, rstd, z.copy(), gamma, beta, np.float64(1e-5))
    k = len(const)
    assert np.array_equal(mean[:k], z[0, :k]) and not np.any(xhat[:, :k]), (mean, xhat)
    assert np.array_equal(y[:, :k], np.broadcast_to(beta[:k], (B, k)))
    assert np.array_equal(rstd[:k], (1 / np.sqrt(np.float64(1e-5))).astype(dtype).repeat(k))
    u = float(np.finfo(dtype).eps)
    for j in range(k, N):
        exact = math.fsum(map(float, z[:, j])) / B
        assert abs(float(mean[j]) - exact) <= 4 * u * float(np.max(np.abs(z[:, j]))), (j, mean[j], exact)
    dy = np.repeat(rng.standard_normal((1, N)).astype(dtype), B, axis=0)
    dz, dgamma, dbeta = np.empty_like(z), np.empty(N, dtype), np.empty(N, dtype)
    mod.batchnorm_backward(dz, dgamma, dbeta, dy, xhat, rstd, gamma)
    assert not np.any(dz[:, :k]) and not np.any(dgamma[:k]), (dz, dgamma)
    assert np.array_equal(dbeta[:k], dy[0, :k] * np.asarray(B, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalise_and_add_aligned_equal_reference(K, dtype):
    rng = np.random.default_rng(3)
    cases = [rng.standard_normal((3, 4)) * 1e-200, np.zeros((2, 2)), rng.standard_normal((2, 3)) * 1e30]
    cases.append(np.array([[np.nan, 0.25, -3.0]]))
    cases.append(np.array([[np.inf, 1.0]]))
    for g in cases:
        g = g.astype(dtype)
        a, b = g.copy(), g.copy()
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):
            er = R.normalise(a)
        eg = K.normalise(b)
        assert eg == er, f"normalise exponent {eg}, reference {er} for {g}"
        _close("normalise", b, a, dtype)
    s = rng.standard_normal((3, 5)).astype(dtype)
    # scaled by a normal power of two (-8, -47, -120: float32 subnormals), by ldexp beyond (-2000)
    for ea, es, scale in ((0, 0, 1.0), (-3, 5, 0.5), (7, -40, 2.0), (-120, 0, 1.0), (0, -120, 0.7), (0, -2000, 1.0)):
        a0 = rng.standard_normal((3, 5)).astype(dtype)
        a, b = a0.copy(), a0.copy()
        with np.errstate(under="ignore"):
            er = R.add_aligned(a, ea, s, es, scale)
        eg = K.add_aligned(b, ea, s, es, scale)
        assert eg == er
        _close(f"add_aligned({ea}, {es}, {scale})", b, a, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", [CLIP_VALUE, CLIP_NORM])
@pytest.mark.parametrize("e", [-50, 0, 3, 40])
def test_clip_signal_equals_reference(K, mode, e, dtype):
    rng = np.random.default_rng(e + 100)
    g0 = rng.uniform(-1, 1, (4, 6)).astype(dtype)
    for c in (1e-3, 0.3, 7.0):
        a, b = g0.copy(), g0.copy()
        er = R.clip_signal(a, e, mode, c)
        eg = K.clip_signal(b, e, mode, c)
        assert eg == er, f"clip mode {mode}, e={e}, c={c}: exponent {eg}, reference {er}"
        _close(f"clip mode {mode}, e={e}, c={c}", b, a, dtype)


# The layer functions: their arrays in order, those they write, and the call with its other arguments. Every array
# is (B, N) unless LAYER_SHAPES says otherwise.
_TANH = ACT_CODE["tanh"]
LAYER_CALLS = {
    "dense_forward": ("z h W b", "z", lambda f, a: f(*a)),
    "dense_backward": ("dh dW db dz h W", "dh dW db", lambda f, a: f(*a)),
    "batchnorm_forward": ("y xhat mean rstd z gamma beta", "y xhat mean rstd", lambda f, a: f(*a, 1e-5)),
    "batchnorm_backward": ("dz dgamma dbeta dy xhat rstd gamma", "dz dgamma dbeta", lambda f, a: f(*a)),
    "activation_forward": ("a z", "a", lambda f, a: f(*a, _TANH, 0.0)),
    "activation_backward": ("dz da z", "dz", lambda f, a: f(*a, _TANH, 0.0)),
    "normalise": ("g", "g", lambda f, a: f(*a)),
    "add_aligned": ("a s", "a", lambda f, a: f(a[0], 0, a[1], -3)),
    "clip_signal": ("g", "g", lambda f, a: f(a[0], 0, CLIP_NORM, 0.5)),
}
_B, _N = 3, 4
LAYER_SHAPES = {"W": (_N, _N), "dW": (_N, _N),
                **{n: (_N,) for n in ("b", "db", "mean", "rstd", "gamma", "beta", "dgamma", "dbeta")}}


def test_the_layer_table_is_the_layer_functions():
    """abi.LAYER_ARGS, which both backends check against, lists every layer function's arrays in the order of its
    arguments, and the reference's."""
    import inspect

    assert set(LAYER_ARGS) == set(LAYER_CALLS)
    for function, table in LAYER_ARGS.items():
        names, written = LAYER_CALLS[function][0].split(), LAYER_CALLS[function][1].split()
        assert [t[0] for t in table] == names and [t[0] for t in table if t[2]] == written, function
        params = list(inspect.signature(getattr(R, function)).parameters)
        assert [p for p in params if p in names] == names, function


def _bad_layer_arrays(names: list, written: list, good: dict):
    """(label, name, replacement) for each array of a layer call: another dtype (int64; float32 beside float64
    arrays), a shape one entry short and one long (where another array fixes it), strided, misaligned, read-only
    (written arrays), a list."""
    for name in names:
        a = good[name]
        yield "int64", name, a.astype(np.int64)
        if len(names) > 1:
            yield "float32", name, a.astype(np.float32)
            for d in (-1, 1):
                yield f"shape{d:+d}", name, np.zeros(a.shape[:-1] + (a.shape[-1] + d,))
        yield "strided", name, np.zeros(a.shape[:-1] + (2 * a.shape[-1],))[..., ::2]
        yield "misaligned", name, misaligned(a)
        if name in written:
            ro = a.copy()
            ro.flags.writeable = False
            yield "read-only", name, ro
        yield "list", name, a.tolist()


@pytest.mark.parametrize("function", list(LAYER_CALLS))
def test_layer_functions_refuse_every_bad_array_before_a_kernel_runs(K, function):
    """The layer functions read and write the entries of the shapes their first array gives: called with a wrong
    dtype, shape or layout the C ones overflowed the heap (ASan) and the Numba ones (no bounds checks) read and
    wrote out of bounds. Each is refused with a TypeError or ValueError naming the function, and nothing is
    written."""
    names, written, call = LAYER_CALLS[function]
    names, written = names.split(), written.split()
    fn = getattr(K, function)

    def good():
        rng = np.random.default_rng(0)
        return {n: rng.uniform(0.1, 0.9, LAYER_SHAPES.get(n, (_B, _N))) for n in names}

    call(fn, list(good().values()))  # the valid call runs
    call(fn, [a.astype(np.float32) for a in good().values()])
    cases = list(_bad_layer_arrays(names, written, good()))
    assert len(cases) >= 5 * len(names)
    for label, name, bad in cases:
        arrays = good()
        arrays[name] = bad
        before = {k: np.copy(v) for k, v in arrays.items()}
        with pytest.raises((TypeError, ValueError)) as err:
            call(fn, list(arrays.values()))
        assert str(err.value).startswith(f"{function}: "), (label, name, str(err.value))
        for k, v in before.items():
            np.testing.assert_array_equal(arrays[k], v, err_msg=f"{function} {label} {name}: {k} was written")
    for shape in ((0, _N), (_B, 0), (0, 0)):  # empty layers: C refused them unnamed, Numba read entry 0
        arrays = [np.zeros(LAYER_SHAPES.get(n, shape)) if n not in LAYER_SHAPES else
                  np.zeros(tuple(shape[1] for _ in LAYER_SHAPES[n])) for n in names]
        with pytest.raises(ValueError, match=rf"^{function}: {names[0]} has shape .*every axis at least 1"):
            call(fn, arrays)
    if function == "clip_signal":  # its g is (B, N)
        with pytest.raises(ValueError, match=r"clip_signal: g has shape \(12,\), expected \(B,N\)"):
            fn(np.full(12, 0.5), 0, CLIP_NORM, 0.5)
