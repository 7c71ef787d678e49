"""Exact means exact: every backend against an oracle with an unbounded exponent (mpmath), deep
zero-bias stacks whose forward pass would underflow, saturated units, tiny and huge inputs.

Each test here failed before forward rescaling covered every activation, before the
derivatives were written without cancellation and before the norms were scaled.
"""

from __future__ import annotations

import functools
import math

import mpmath as mp
import numpy as np
import pytest

import gradbench as gb
from gradbench import abi
from gradbench.backends import get_backend
from tests.naive_mp import chain, gru_chain, lstm_chain, rnn_chain

BACKENDS = gb.backends()
SMOOTH = ("tanh", "gelu", "swish", "elu", "selu")  # phi(0) = 0, not homogeneous
_MP: dict = {}


def _oracle(stack, params, x):
    key = (stack, params.W.tobytes(), x.tobytes())
    if key not in _MP:
        _MP[key] = chain(stack.activation, stack.act_param, params.W, x)
    return _MP[key]


def _deep_case(activation, dtype, depth, width=3, batch=2):
    stack = gb.Stack(depth=depth, width=width, activation=activation, init="xavier_normal", dtype=dtype)
    return stack, gb.init_params(stack, 0), gb.gaussian_input(stack, batch, 1)


# decades of accumulated rounding allowed after L layers (the chains here contract: errors add up)
def _tol(dtype, depth):
    eps = np.finfo(dtype).eps
    return max(1e-11, 20 * depth * eps / math.log(10))


def _check_against_oracle(backend, stack, params, x):
    lo, gW, gh = _oracle(stack, params, x)
    res = gb.backprop(stack, params, x, backend=backend)
    tol = _tol(stack.dtype, stack.depth)
    got = res.grad_norm.log10()
    assert np.all(np.isfinite(got)), f"[{backend}] {stack.activation}: ||dW|| not finite at {np.flatnonzero(~np.isfinite(got))[:5]}"
    worst = int(np.argmax(np.abs(got - gW)))
    assert abs(got[worst] - gW[worst]) <= tol, (
        f"[{backend}] {stack.activation} {stack.dtype} L={stack.depth}: log10 ||dW_{worst}|| = {got[worst]:.6f}, "
        f"mpmath {gW[worst]:.6f} (tolerance {tol:.2g} decades)")
    sig = res.signal_norm.log10()
    assert np.max(np.abs(sig - gh)) <= tol, f"[{backend}] {stack.activation}: ||dL/dh_l|| off by {np.max(np.abs(sig - gh)):.3g}"
    assert abs(float(res.loss_exact.log10()) - lo) <= tol, f"[{backend}] loss 10^{float(res.loss_exact.log10())} vs {lo}"
    return gW


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", SMOOTH)
def test_deep_zero_bias_stacks_equal_mpmath(activation, dtype, backend):
    """3000 layers of width 3: plain float64 underflows to 0 (gelu and swish by layer ~1100,
    float32 much earlier); every backend follows mpmath's unbounded chain to rounding."""
    stack, params, x = _deep_case(activation, dtype, 3000)
    gW = _check_against_oracle(backend, stack, params, x)
    if activation in ("gelu", "swish"):
        assert min(gW) < -600  # far below float64: the point of the test


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["tanh"])
def test_ten_thousand_layers_equal_mpmath(activation, backend):
    stack, params, x = _deep_case(activation, "float64", 10_000)
    gW = _check_against_oracle(backend, stack, params, x)
    assert min(gW) < -320


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", SMOOTH + ("relu", "leaky_relu", "identity"))
def test_ten_thousand_layers_equal_mpmath_every_activation(activation, dtype, backend):
    # zero-bias ReLU at width 3 loses a sample for good where its 3 units are <= 0 at once (one in 8
    # a layer): these weights at layer 1, and its gradient is exactly 0; at width 16 both samples
    # live through the 10^4 layers (checked below by the plain chain's forward)
    stack, params, x = _deep_case(activation, dtype, 10_000, width=16 if activation == "relu" else 3)
    if activation == "relu":
        h = x.astype(np.float64)
        for W in params.W:
            h = np.maximum(h @ W.T, 0)
            h /= np.abs(h).max()  # scale-free: only the signs matter for ReLU
            assert h.any(axis=1).all()
    _check_against_oracle(backend, stack, params, x)


# ------------------------------------------------------------------ the cases of the issue
@pytest.mark.parametrize("backend", BACKENDS)
def test_deep_gelu_is_not_zero(backend):
    """Stack(depth=800, width=64, gelu, xavier) read exactly 0 from layer ~528 (loss 0.0)."""
    stack = gb.Stack(depth=800, width=64, activation="gelu", init="xavier_normal")
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1), backend=backend)
    assert res.forward_rescaled
    assert np.all(np.isfinite(res.grad_norm.log10())) and np.all(np.isfinite(res.act_std.log10()))
    assert -330 > float(res.loss_exact.log10()) > -1e5  # plain float64: 0
    assert res.grads.W.mantissa.any(axis=(1, 2)).all()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
def test_long_default_tanh_stack_keeps_its_activations(backend):
    """The default stack (tanh, xavier, zero bias) underflowed near layer 47,000 at width 32;
    at width 4 plain float64 underflows within 20,000 layers."""
    stack = gb.Stack(depth=20_000, width=4, activation="tanh")
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 2, 1), backend=backend)
    std = res.act_std.log10()
    assert np.all(np.isfinite(std)) and std.min() < -400
    assert np.all(np.isfinite(res.grad_norm.log10()))


def test_float32_reads_like_float64_on_the_same_weights():
    """Stack(depth=8000, width=32, float32) stalled at the subnormal floor and read up to 16
    decades away from float64 on the same weights, with the opposite verdict."""
    st32 = gb.Stack(depth=8000, width=32, dtype="float32")
    p32 = gb.init_params(st32, 0)
    x32 = gb.gaussian_input(st32, 4, 1)
    st64 = st32.replace(dtype="float64")
    p64 = gb.Params(**{k: a.astype(np.float64) for k, a in p32.items()})
    backend = BACKENDS[-1]
    r32 = gb.backprop(st32, p32, x32, backend=backend)
    r64 = gb.backprop(st64, p64, x32.astype(np.float64), backend=backend)
    g32, g64 = r32.grad_norm.log10(), r64.grad_norm.log10()
    assert np.all(np.isfinite(g32)) and g64.min() < -60  # below float32's smallest subnormal
    assert np.max(np.abs(g32 - g64)) < 0.05, np.max(np.abs(g32 - g64))
    assert gb.diagnose(r32).verdict == gb.diagnose(r64).verdict


@pytest.mark.parametrize("backend", BACKENDS)
def test_norms_do_not_square_small_numbers(backend):
    """tanh sigma_w = 0.5 at depth 700: grad_norm[650] was -inf while grads.W[650] held 10^-439.7."""
    stack = gb.Stack(depth=700, width=16, activation="tanh", init="normal", sigma_w=0.5)
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1), backend=backend)
    W = res.grads.W
    direct = np.array([_log10_fro(W.mantissa[l], W.exponent[l]) for l in range(stack.depth)])
    got = res.grad_norm.log10()
    assert np.all(np.isfinite(got)) and got.min() < -300
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-10)


def _log10_fro(m, e):
    """log10 ||m 2^e||_F computed independently (mpmath sums)."""
    s = mp.fsum(mp.mpf(float(v)) ** 2 for v in np.ravel(m))
    return float(mp.log10(mp.sqrt(s)) + e * mp.log10(2)) if s > 0 else -math.inf


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation, scale", [
    ("leaky_relu", 1e200), ("identity", 1e250), ("leaky_relu", 1e-200),
    ("tanh", 1e-200), ("gelu", 1e-200), ("swish", 1e-250), ("elu", 1e-300),
])
def test_tiny_and_huge_inputs(activation, scale, backend):
    """x * 1e200 gave +inf and x * 1e-200 gave -inf norms while grads.W was right. (Saturating
    activations on huge inputs have derivatives like exp(-1e200): beyond any int64 exponent.)"""
    stack = gb.Stack(depth=6, width=3, activation=activation)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 2, 1) * scale
    lo, gW, gh = chain(activation, stack.act_param, params.W, x)
    res = gb.backprop(stack, params, x, backend=backend)
    np.testing.assert_allclose(res.grad_norm.log10(), gW, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.signal_norm.log10(), gh, rtol=0, atol=1e-12)
    assert abs(float(res.loss_exact.log10()) - lo) < 1e-12


# ------------------------------------------------------------------ saturated units
def _mp_dphi(name, z, p):
    from tests.naive_mp import dphi

    return dphi(name, mp.mpf(float(z)), mp.mpf(p))


def _mp_phi(name, z, p):
    from tests.naive_mp import phi

    return phi(name, mp.mpf(float(z)), mp.mpf(p))


ROOTS = {"gelu": -0.7517915241, "swish": -1.2784645428}  # phi' = 0 there: relative accuracy is moot


def _grid(name, dtype):
    big = 700.0 if dtype == "float64" else 85.0
    z = np.concatenate([np.linspace(-big, big, 1401), np.geomspace(1e-8, big, 200), -np.geomspace(1e-8, big, 200)])
    z = np.unique(z.astype(dtype))
    if name in ROOTS:
        z = z[np.abs(z - ROOTS[name]) > 0.05]
    return z


def _ulps(got, true, dtype):
    """|got - true| in units of the dtype's spacing at true (results below the smallest normal
    number, which keep only absolute precision, are left out: the README says so)."""
    info = np.finfo(dtype)
    t = np.array([float(v) for v in true])
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.abs(got.astype(np.float64) - t) / (np.abs(t) * info.eps)
    return np.where(np.abs(t) >= info.tiny, u, 0.0)


def _conditioning(name, z, p, deriv):
    """|z f'(z) / f(z)| of f = phi' (deriv) or phi: the rounding of z (or of z^2/2, z/sqrt2
    inside exp and erfc) is amplified by it. Near the roots of swish' and gelu' and in gelu's
    far tail it exceeds 1; elsewhere the bound below is a few ulps."""
    from tests import naive_mp

    f = naive_mp.dphi if deriv else naive_mp.phi
    with mp.workdps(60):
        x, pm = mp.mpf(float(z)), mp.mpf(p)
        fx = f(name, x, pm)
        if fx == 0:
            return 1.0
        return float(abs(x * mp.diff(lambda v: f(name, v, pm), x) / fx))


@functools.lru_cache(maxsize=None)
def _true_values(name, dtype):
    """mpmath's phi' and phi on the grid, shared by every backend."""
    p = gb.Stack(depth=1, width=1, activation=name).act_param
    with mp.workdps(60):  # the oracle's formulas do not cancel (sigmoid' = 1/(4 cosh^2(z/2)), ...)
        return ([_mp_dphi(name, v, p) for v in _grid(name, dtype)], [_mp_phi(name, v, p) for v in _grid(name, dtype)])


@pytest.mark.parametrize("module", ["numpy", *[b for b in BACKENDS if b != "numpy"]])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", gb.ACTIVATIONS)
def test_phi_and_dphi_to_a_few_ulps_in_saturation(name, dtype, module):
    """tanh'(20) was 0 (true 1.7e-17): 1 - tanh^2 cancels. Every activation and derivative of
    every backend, |z| up to 700 (float32: 85), against mpmath."""
    if module == "numpy":
        from gradbench import activations as impl

        phi_f, dphi_f = impl.phi, impl.dphi
    else:
        impl = get_backend(module)

        def phi_f(z, c, p):
            a = np.empty_like(z)
            impl.activation_forward(a, z, c, p)
            return a

        def dphi_f(z, c, p):
            d = np.empty_like(z)
            impl.activation_backward(d, np.ones_like(z), z, c, p)
            return d

    p = gb.Stack(depth=1, width=1, activation=name).act_param
    z = _grid(name, dtype).reshape(1, -1)
    code = abi.ACT_CODE[name]
    true_d, true_p = _true_values(name, dtype)
    bound = 4.0 if dtype == "float64" else 2.0
    for what, got, true in (("phi'", dphi_f(z, code, p)[0], true_d), ("phi", phi_f(z, code, p)[0], true_p)):
        u = _ulps(got, true, dtype)
        bad = np.flatnonzero(u > bound)
        # beyond `bound` only where the function's own conditioning explains it (3 ulp of z)
        bad = [i for i in bad if u[i] > bound + 3 * _conditioning(name, z[0, i], p, what == "phi'")]
        if bad:
            i = max(bad, key=lambda k: u[k])
            raise AssertionError(f"[{module}] {name} {what}({z[0, i]!r}) = {got[i]!r}, mpmath "
                                 f"{mp.nstr(true[i], 17)}: {u[i]:.1f} ulp")
    if name == "tanh" and dtype == "float64":
        assert float(dphi_f(np.array([[20.0]]), code, p)[0, 0]) == pytest.approx(1.6993e-17, rel=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_saturated_width_one_chain(backend):
    """Width 1, depth 100, every W = 15, tanh: -1126.2372 (numpy, numba) and -1126.2630 (C)
    decades before; the accurate value comes from mpmath."""
    stack = gb.Stack(depth=100, width=1, activation="tanh")
    params = gb.init_params(stack, 0)
    params.W[...] = 15.0
    x = np.array([[0.7]])
    lo, gW, gh = chain("tanh", 0.0, params.W, x)
    res = gb.backprop(stack, params, x, backend=backend)
    assert abs(res.grad_norm.log10()[0] - gW[0]) < 1e-9, (res.grad_norm.log10()[0], gW[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_saturated_stack_has_no_zero_layers(backend):
    """Stack(depth=200, width=8, tanh, normal, sigma_w=50) reported 179 layers of exactly zero
    gradient; the accurate chain has none (10^-902 at layer 0)."""
    stack = gb.Stack(depth=200, width=8, activation="tanh", init="normal", sigma_w=50)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 2, 1)
    lo, gW, gh = chain("tanh", 0.0, params.W, x)
    res = gb.backprop(stack, params, x, backend=backend)
    got = res.grad_norm.log10()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, gW, rtol=0, atol=1e-8)
    assert gW[0] < -800


# ------------------------------------------------------------------ the heads: confident right answers
def _head_case(loss, dtype, rows):
    """A one-layer identity stack of width 2 (W = I, b = 0) whose head outputs are ``rows``
    (y = x W_out^T with W_out = [[1, 0], [0, 1]] or [[1, 1]]): the logits are set exactly."""
    O = 1 if loss == "bce" else 2
    stack = gb.Stack(depth=1, width=2, activation="identity", loss=loss, output_dim=O, dtype=dtype)
    q = gb.init_params(stack, 0)
    dt = stack.np_dtype
    W_out = np.array([[0.5, 0.5]] if O == 1 else [[1.0, 0.0], [0.0, 1.0]], dt)
    params = gb.Params(W=np.eye(2, dtype=dt)[None], b=np.zeros((1, 2), dt), gamma=q.gamma, beta=q.beta,
                       slope=q.slope, W_out=W_out, b_out=np.zeros(O, dt))
    x = np.array([[y, y] for y in rows] if O == 1 else rows, dt)
    return stack, params, x, [[mp.mpf(float(v)) for v in np.atleast_1d(r @ W_out.T.astype(np.float64))] for r in x]


def _head_oracle(loss, logits, targets):
    """log10 of the loss and dL/dy, with mpmath (at 1,000 digits, the caller's: 1 - p at a
    margin of 900 needs 400)."""
    B, O = len(logits), len(logits[0])
    dys = []
    total = mp.mpf(0)
    for y, t in zip(logits, targets):
        if loss == "bce":
            total += sum(mp.log1p(mp.exp(yi)) - ti * yi for yi, ti in zip(y, t))
            dys.append([(1 / (1 + mp.exp(-yi)) - ti) / (B * O) for yi, ti in zip(y, t)])
        else:
            lse = mp.log(sum(mp.exp(v) for v in y))
            total += lse - y[t]
            dys.append([(mp.exp(v - lse) - (1 if j == t else 0)) / B for j, v in enumerate(y)])
    return mp.log10(total / (B * O if loss == "bce" else B)), dys


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss, dtype, rows, targets", [
    ("bce", "float64", [40.0, -30.0], [[1.0], [0.0]]),       # sigmoid(y) - t cancels in 1 - p
    ("bce", "float64", [800.0, 790.0], [[1.0], [1.0]]),      # dL/dy = -e^-800: below float64
    ("bce", "float32", [-110.0, -100.0], [[0.0], [0.0]]),    # dL/dy = 1e-48: below float32
    ("softmax_ce", "float64", [[40.0, 0.0], [0.0, 35.0]], [0, 1]),
    ("softmax_ce", "float64", [[900.0, 0.0], [0.0, 850.0]], [0, 1]),
])
def test_head_gradients_of_confident_right_answers_equal_mpmath(loss, dtype, rows, targets, backend):
    """bce's dL/dy = sigmoid(y) - t and softmax_ce's p_t - 1 once cancelled to 0 (or to rounding
    noise) for a confident right answer, and dL/dy was rounded to float32 before any exponent:
    ||dL/dW_0|| read 0 (verdict "no gradient") where it is 1e-16, 1e-347 or 1e-46."""
    stack, params, x, logits = _head_case(loss, dtype, rows)
    t = np.array(targets, stack.np_dtype if loss == "bce" else np.int64)
    with mp.workdps(1000):
        lo, dys = _head_oracle(loss, logits, targets)
        W_out = [[mp.mpf(float(v)) for v in r] for r in params.W_out.astype(np.float64)]
        dz = [[sum(dy[o] * W_out[o][j] for o in range(len(dy))) for j in range(2)] for dy in dys]
        xm = [[mp.mpf(float(v)) for v in r] for r in x.astype(np.float64)]
        gW0 = mp.sqrt(sum(sum(dz[b][i] * xm[b][j] for b in range(len(x))) ** 2 for i in range(2) for j in range(2)))
    res = gb.backprop(stack, params, x, t, backend=backend)
    tol = 1e-12 if dtype == "float64" else 2e-6
    got = float(res.grad_norm.log10()[0])
    assert abs(got - float(mp.log10(gW0))) <= tol, f"[{backend}] log10 ||dW_0|| = {got}, mpmath {mp.log10(gW0)}"
    assert abs(float(res.loss_exact.log10()) - float(lo)) <= tol, f"loss 10^{float(res.loss_exact.log10())}, mpmath 10^{lo}"
    gb_out = res.grads.W_out
    got_out = float(np.log10(np.sqrt(np.sum(np.square(gb_out.mantissa, dtype=np.float64))))) + float(np.ravel(gb_out.exponent)[0]) * math.log10(2)
    with mp.workdps(1000):
        want_out = mp.log10(mp.sqrt(sum(sum(dys[b][o] * xm[b][j] for b in range(len(x))) ** 2
                                        for o in range(len(dys[0])) for j in range(2))))
    assert abs(got_out - float(want_out)) <= tol, f"log10 ||dL/dW_out|| = {got_out}, mpmath {want_out}"
    assert gb.diagnose(res).verdict != "no gradient"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss, rows, targets", [
    ("bce", [1e15, 2e15], [[1.0], [1.0]]),
    ("bce", [-3e18, -1e18], [[0.0], [0.0]]),
    ("softmax_ce", [[1e15, 0.0], [0.0, 2e15]], [0, 1]),
])
def test_head_loss_of_a_huge_margin_carries_its_exponent(loss, rows, targets, backend):
    """A right answer by a margin m far beyond exp's range: loss and dL/dy ~ e^-m, here 2^-(1.4e15)
    to 2^-(1.4e18), within an int64 exponent. Closed form (the other terms are e^-m smaller):
    the mean loss is e^-m / B for the smallest margin m, and ||dL/dW_0|| = |dL/dy| m c with the
    x = (m, m) rows and W_out's c (bce: y = x (1/2, 1/2)^T, |dz| = |dy| / 2, ||.|| of a 2 x 2 of
    equal entries = 2 |entry|; softmax_ce: y = x, dz = dy row (+-e^-m / B) times x's row)."""
    stack, params, x, _ = _head_case(loss, "float64", rows)
    t = np.array(targets, np.float64 if loss == "bce" else np.int64)
    res = gb.backprop(stack, params, x, t, backend=backend)
    B, ln10 = len(rows), math.log(10)
    m = min(abs(r) for r in np.ravel(rows) if r != 0)
    want_loss = (-m - math.log(B)) / ln10
    want_dw = (-m - math.log(B) + math.log(m) + (0.0 if loss == "bce" else 0.5 * math.log(2))) / ln10
    assert res.loss == 0.0  # the float reads 0
    assert abs(float(res.loss_exact.log10()) - want_loss) < 0.1, (float(res.loss_exact.log10()), want_loss)
    assert abs(float(res.grad_norm.log10()[0]) - want_dw) < 0.1, (float(res.grad_norm.log10()[0]), want_dw)
    assert gb.diagnose(res, params).verdict != "no gradient"
    so = gb.backprop(stack, params, x, t, backend=backend, stats_only=True)
    np.testing.assert_array_equal(so.grad_norm.log10(), res.grad_norm.log10())
    d = gb.diagnose(so, params)  # float64 cannot bin 10^-4e14 by decades: every entry still counted once
    assert d.hist_counts.sum() + d.hist_zeros.sum() + d.hist_nonfinite.sum() + d.hist_outside.sum() == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_mse_head_whose_squares_overflow_equals_mpmath(backend):
    """A linear stack of gain 2.5 and depth 450 (forward-rescaled) reaches head outputs of ~1e167:
    the squared differences overflow, and loss_exact read inf (as the recurrent heads did); now
    it is their scaled sum, mean (y - t)^2 against mpmath on the returned h_L. The float is inf."""
    stack = gb.Stack(depth=450, width=8, activation="identity", sigma_w=2.5, loss="mse", output_dim=2)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1)
    t = np.random.default_rng(0).uniform(0, 1, (4, 2))
    res = gb.backprop(stack, params, x, t, backend=backend)
    h, f = res.output.mantissa, res.output.exponent  # one exponent per sample
    y = [[mp.fsum([mp.mpf(float(params.b_out[o]))] + [mp.ldexp(mp.mpf(float(h[b, k])), int(f[b])) * mp.mpf(float(params.W_out[o, k]))
                                                        for k in range(8)]) for o in range(2)] for b in range(4)]
    want = mp.fsum((y[b][o] - mp.mpf(float(t[b, o]))) ** 2 for b in range(4) for o in range(2)) / 8
    assert mp.log10(want) > 320 and res.loss == math.inf and res.first_nonfinite_backward is None
    got = mp.ldexp(mp.mpf(float(res.loss_exact.mantissa)), int(res.loss_exact.exponent))
    assert abs(got - want) <= 1e-12 * want, (float(mp.log10(got)), float(mp.log10(want)))


@pytest.mark.parametrize("loss, rows, targets", [
    ("bce", [1e30, 4e18], [[1.0], [1.0]]), ("bce", [-1e300, -1e300], [[0.0], [0.0]]),
    ("softmax_ce", [[1e30, 0.0], [0.0, 1e20]], [0, 1]),
])
def test_limit_a_head_right_beyond_any_exponent_reads_0_and_is_named(loss, rows, targets):
    """A margin beyond 2^62 ln 2 ~ 3.2e18 for every sample: e^-m below 2^(-2^62), no int64
    exponent holds it. The loss and every gradient read 0 (a 100-layer linear stack of gain 2
    with a bce head once raised OverflowError there) and the diagnosis says why."""
    stack, params, x, _ = _head_case(loss, "float64", rows)
    t = np.array(targets, np.float64 if loss == "bce" else np.int64)
    res = gb.backprop(stack, params, x, t, backend="numpy")
    assert res.loss == 0.0 and res.loss_exact.log10() == -np.inf
    assert np.all(res.grad_norm.log10() == -np.inf)
    d = gb.diagnose(res, params)
    assert d.verdict == "no gradient" and "underflowed beyond even the exponent range" in d.explanation
    assert f"the {loss} head is right with a margin beyond ~3e18 for every sample" in d.explanation


# ------------------------------------------------------------------ where it stops (the README's list)
def test_limit_head_output_beyond_float64_is_non_finite():
    stack = gb.Stack(depth=4, width=4, activation="relu", init="normal", sigma_w=1e100, loss="mse")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 3, 1)
    with np.errstate(all="ignore"):
        res = gb.backprop(stack, params, x, np.zeros((3, 1)))
    assert res.forward_rescaled and np.all(np.isfinite(res.act_std.mantissa))  # the stack itself is exact
    assert not np.isfinite(res.loss) and gb.diagnose(res).verdict == "exploding"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_biased_exploding_stack_is_exact_beyond_float64(backend):
    """README: a bias enters each row at the row's exponent, so a biased leaky-ReLU stack that
    explodes past 10^308 (layer ~1190 here) is exact as the zero-bias one is (until 2026-12-07 its
    forward overflowed at layer 1189 as plain float64 does, every gradient NaN)."""
    kw = dict(depth=1700, width=6, activation="leaky_relu", activation_param=0.3, init="he_normal", sigma_w=3.0)
    biased = gb.Stack(**kw, sigma_b=1e-3)
    params = gb.init_params(biased, 0)
    x = gb.gaussian_input(biased, 1, 1)
    key = (biased, params.W.tobytes(), params.b.tobytes(), x.tobytes())
    if key not in _MP:
        _MP[key] = chain(biased.activation, biased.act_param, params.W, x, b=params.b)
    lo, gW, gh = _MP[key]
    res = gb.backprop(biased, params, x, backend=backend)
    assert res.forward_rescaled and res.first_nonfinite_forward is None and res.first_nonfinite_backward is None
    assert lo > 888  # 10^889, far beyond float64
    tol = _tol("float64", biased.depth)
    assert abs(float(res.loss_exact.log10()) - lo) <= tol
    assert np.max(np.abs(res.grad_norm.log10() - gW)) <= tol
    assert np.max(np.abs(res.signal_norm.log10() - gh)) <= tol
    assert gb.diagnose(res).verdict == "exploding"


@pytest.mark.parametrize("activation", gb.ACTIVATIONS)
def test_which_forwards_carry_exponents(activation):
    """README: every stack without batch norm carries forward exponents, with zero biases whatever
    the activation but sigmoid, with biases every one but sigmoid and tanh; batch norm never."""
    for sigma_b, batch_norm in ((0.0, False), (0.1, False), (0.0, True), (0.1, True)):
        stack = gb.Stack(depth=3, width=4, activation=activation, sigma_b=sigma_b, batch_norm=batch_norm)
        params = gb.init_params(stack, 0)
        res = gb.backprop(stack, params, gb.gaussian_input(stack, 2, 1), backend="numpy")
        want = not batch_norm and activation != "sigmoid" and (sigma_b == 0 or activation != "tanh")
        assert res.forward_rescaled == want, (activation, sigma_b, batch_norm)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["elu", "selu", "relu", "gelu", "swish"])
def test_a_biased_exploding_float32_stack_is_exact_beyond_float32(activation, backend):
    """float32 stacks with biases at sigma_w = 3 pass 3.4e38 by layer ~110 (and read non-finite
    from there: GELU from layer 126 on every backend): carried by exponents, they follow mpmath,
    GELU and swish with rows deep in their negative tails brought up to the bias's floor."""
    stack = gb.Stack(depth=250, width=8, activation=activation, init="normal", sigma_w=3.0, sigma_b=0.1,
                     dtype="float32")
    params, x = gb.init_params(stack, 1), gb.gaussian_input(stack, 2, 1)
    key = (stack, params.W.tobytes(), params.b.tobytes(), x.tobytes())
    if key not in _MP:
        _MP[key] = chain(stack.activation, stack.act_param, params.W, x, b=params.b)
    lo, gW, gh = _MP[key]
    res = gb.backprop(stack, params, x, backend=backend)
    assert res.forward_rescaled and res.first_nonfinite_forward is None
    assert lo > 100  # past float32's 10^38.5 by far
    tol = _tol("float32", stack.depth)
    assert abs(float(res.loss_exact.log10()) - lo) <= tol
    assert np.max(np.abs(res.grad_norm.log10() - gW)) <= tol
    assert np.max(np.abs(res.signal_norm.log10() - gh)) <= tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_selu_just_below_float64s_max_is_exact(dtype, backend):
    """SELU's lambda z overflows for z in (max / 1.0507, max] though z and the exponents carrying
    it do not: an exploding SELU stack read non-finite from the layer where an entry landed
    there (layer 977 of a width-16 stack at sigma_w = 3, with or without biases). Here the
    input puts one there at once (identity weights); phi_scaled's limit form takes it."""
    stack = gb.Stack(depth=3, width=2, activation="selu", dtype=dtype)
    q = gb.init_params(stack, 0)
    W = np.broadcast_to(np.eye(2, dtype=stack.np_dtype), (3, 2, 2)).copy()
    params = gb.Params(W=W, b=q.b, gamma=q.gamma, beta=q.beta, slope=q.slope)
    big = 1.75e308 if dtype == "float64" else 3.3e38  # float32: the same window of its own max
    x = np.array([[big, -1.0]], dtype=stack.np_dtype)
    lo, gW, gh = chain("selu", stack.act_param, W, x)
    res = gb.backprop(stack, params, x, backend=backend)
    assert res.first_nonfinite_forward is None and res.first_nonfinite_backward is None
    tol = 1e-11 if dtype == "float64" else 2e-5
    assert abs(float(res.loss_exact.log10()) - lo) <= tol
    assert np.max(np.abs(res.grad_norm.log10() - gW)) <= tol
    assert np.max(np.abs(res.signal_norm.log10() - gh)) <= tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, scale", [("float64", 1e-310), ("float32", 1e-42)])
def test_inputs_far_below_the_bias_are_carried_at_its_floor(dtype, scale, backend):
    """Rows of h_0 ~2^1030 below the bias (float32 2^139; subnormal inputs) would put b 2^-f past
    the dtype's range: each is brought up to the bias's floor first (reference.raise_rows), its
    mantissas kept. z is then the plain chain's (the bias holds it), and dW_0 = dz_0^T x keeps the
    inputs' digits, where plain arithmetic rounds a subnormal product: both against a float64
    chain that scales x by 2^1100 (float32: 2^200) for that one product."""
    stack = gb.Stack(depth=30, width=8, activation="relu", init="normal", sigma_w=1.5, sigma_b=0.1, dtype=dtype)
    params = gb.init_params(stack, 0)
    x = (gb.gaussian_input(stack, 4, 1) * np.asarray(scale, dtype=dtype)).astype(dtype)
    res = gb.backprop(stack, params, x, backend=backend)
    assert res.forward_rescaled and res.first_nonfinite_forward is None
    # the plain chain in float64, loss 0.5 ||h_L||^2; x enters z_0 below any rounding of the bias
    Ws, bs = params.W.astype(np.float64), params.b.astype(np.float64)
    hs, zs = [x.astype(np.float64)], []
    for W, b in zip(Ws, bs):
        zs.append(hs[-1] @ W.T + b)
        hs.append(np.maximum(zs[-1], 0))
    g = hs[-1]
    for l in range(stack.depth - 1, -1, -1):
        dz = g * (zs[l] > 0)
        g = dz @ Ws[l]
    k = 1100 if dtype == "float64" else 200
    dw0 = dz.T @ np.ldexp(hs[0], k)  # exact scaling: the digits of x kept
    tol = 1e-9 if dtype == "float64" else 1e-4
    assert float(res.loss_exact.log10()) == pytest.approx(math.log10(0.5 * np.sum(hs[-1] ** 2)), abs=tol)
    assert float(res.grad_norm.log10()[0]) == pytest.approx(math.log10(np.linalg.norm(dw0)) - k * math.log10(2),
                                                            abs=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gelu_rows_deep_in_the_tail_beside_a_bias_meet_its_floor(backend, monkeypatch):
    """A biased GELU stack at width 4 whose rows fall deep into GELU's negative tail (h ~2^-6.2e6
    beside a bias of 0.1): b 2^-f of such a row is past float64 (until the floor, the forward was
    taken again without exponents). Rows below the bias's floor are brought up to it
    (reference.raise_rows): the signal follows mpmath (to the rounding of z that the tail
    amplifies), the statistics of those rows are their own (the C drivers took them after the
    rows' exponents changed: 0 at four layers), and a layer whose every row lay more than 2^2094
    below the bias reads dW_l = 0 where mpmath has 10^-2e6, which the diagnosis explains."""
    from gradbench import reference

    raised = []
    orig = reference.raise_rows
    monkeypatch.setattr(reference, "raise_rows", lambda H, q, e, floor: (raised.append(int(((e + q) < floor).sum())),
                                                                          orig(H, q, e, floor))[1])
    stack = gb.Stack(depth=300, width=4, activation="gelu", init="normal", sigma_w=3.0, sigma_b=0.1)
    params, x = gb.init_params(stack, 1), gb.gaussian_input(stack, 2, 1)
    key = (stack, params.W.tobytes(), params.b.tobytes(), x.tobytes())
    if key not in _MP:
        _MP[key] = chain(stack.activation, stack.act_param, params.W, x, b=params.b)
    lo, gW, gh = _MP[key]
    ref = gb.backprop(stack, params, x, backend="numpy")
    assert sum(raised) > 0 and ref.forward_rescaled
    res = gb.backprop(stack, params, x, backend=backend)
    assert res.first_nonfinite_forward is None and min(gh) < -2e6
    assert np.max(np.abs(res.signal_norm.log10() - gh)) <= 1e-5
    got, want = res.act_std.log10(), ref.act_std.log10()
    assert np.all(np.isfinite(got)) and np.max(np.abs(got - want)) <= 1e-6
    g = res.grad_norm.log10()
    zero = np.flatnonzero(g == -np.inf)
    assert zero.size and np.all(np.isfinite(np.asarray(gW)[zero]))  # mpmath: tiny, not 0
    fin = np.isfinite(g)
    assert np.max(np.abs(g[fin] - np.asarray(gW)[fin])) <= 1e-5
    text = gb.diagnose(res, params).explanation
    assert "carried at the bias's floor its entries read 0, as plain arithmetic reads them beside the bias" in text


def _tail_stack(activation, dtype, depth=3):
    """A zero-bias stack of width 2 whose first layer puts both units deep in phi's tail (z_0 =
    -40 for GELU, -800 for swish: phi(z) ~ 1e-348, below float64), the others mixing them."""
    zt = {"gelu": -40.0, "swish": -800.0}[activation]
    stack = gb.Stack(depth=depth, width=2, activation=activation, dtype=dtype)
    q = gb.init_params(stack, 0)
    W = q.W.copy()
    W[0] = np.array([[zt / 2, zt / 2], [zt / 2 - 1, zt / 2 + 1]], dtype=stack.np_dtype)
    return stack, gb.Params(W=W, b=q.b, gamma=q.gamma, beta=q.beta, slope=q.slope), np.ones((1, 2), stack.np_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ["gelu", "swish"])
def test_a_layer_deep_in_phis_tail_is_carried_in_log_form(activation, dtype, backend):
    """phi itself leaves float64 in GELU's and swish's negative tail (GELU below z = -37.5): a
    layer whose every unit lay there read 0, and so did the loss and every gradient above it
    (mpmath: 10^-1391.9 for this loss). The forward now takes such a layer from ln|phi|."""
    stack, params, x = _tail_stack(activation, dtype)
    lo, gW, gh = _oracle(stack, params, x)
    res = gb.backprop(stack, params, x, backend=backend)
    assert res.forward_rescaled
    tol = 1e-11 if dtype == "float64" else 2e-5
    assert abs(float(res.loss_exact.log10()) - lo) <= tol * abs(lo), (float(res.loss_exact.log10()), lo)
    np.testing.assert_allclose(res.grad_norm.log10(), gW, rtol=tol)
    np.testing.assert_allclose(res.signal_norm.log10()[:len(gh)], gh, rtol=tol)
    assert gb.diagnose(res, params).verdict != "no gradient"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_default_gelu_residual_stack_equals_mpmath_at_every_layer(backend):
    """Stack(depth=300, width=4, activation='gelu', residual=2), batch 2: 5 layers read
    ||dW_l|| = 0 where mpmath gives 10^-392.8 down to 10^-3e14 (the branch's input deep in GELU's
    tail); the chain is checked layer by layer against an mpmath run of the same weights."""
    stack = gb.Stack(depth=300, width=4, activation="gelu", residual=2)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 2, 1)
    res = gb.backprop(stack, params, x, backend=backend)
    got = res.grad_norm.log10()
    assert np.all(np.isfinite(got))
    ref = np.array(chain("gelu", 0.0, params.W, x, residual=2)[1])
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_limit_a_layer_beyond_any_exponent_in_phis_tail_reads_0_and_is_named():
    """GELU at z = -1e10: ln|phi| = -5e19, below -2^62 ln 2 (beyond any int64 exponent): the layer
    reads 0, and the diagnosis names it (it once blamed the derivative's 2^(-2^62) floor)."""
    stack = gb.Stack(depth=1, width=1, activation="gelu")
    q = gb.init_params(stack, 0)
    params = gb.Params(W=np.full((1, 1, 1), -1e10), b=q.b, gamma=q.gamma, beta=q.beta, slope=q.slope)
    res = gb.backprop(stack, params, np.ones((1, 1)), backend="numpy")
    d = gb.diagnose(res, params)
    assert d.verdict == "no gradient" and "phi' below 2^(-2^62)" not in d.explanation
    assert "the forward activations of layer 0 are exactly 0: every unit's gelu(z) is 0 or lies below 2^(-2^62)" in d.explanation


def test_limit_one_exponent_per_layer_flushes_entries_2_to_1074_below():
    stack = gb.Stack(depth=1, width=2, activation="identity")
    params = gb.init_params(stack, 0)
    x = np.array([[1e300, 1e-300], [2e300, -3e-300]])  # 1e600 apart: more than 2^1074
    res = gb.backprop(stack, params, x, backend="numpy")
    W = res.grads.W.mantissa[0]
    assert np.all(W[:, 0] != 0) and np.all(W[:, 1] == 0)  # the small column is flushed ...
    lo, gW, gh = chain("identity", 0.0, params.W, x)  # ... which the unbounded chain keeps
    assert abs(res.grad_norm.log10()[0] - gW[0]) < 1e-12  # and the norm does not notice it


@pytest.mark.parametrize("name, z", [("tanh", 360.0), ("sigmoid", 720.0), ("gelu", -37.9)])
def test_limit_subnormal_unit_derivatives_are_accurate_in_absolute_terms(name, z):
    p = gb.Stack(depth=1, width=1, activation=name).act_param
    for module in BACKENDS:
        impl = get_backend(module)
        zz = np.array([[z]])
        d = np.empty_like(zz)
        impl.activation_backward(d, np.ones_like(zz), zz, abi.ACT_CODE[name], p)
        with mp.workdps(60):
            true = float(_mp_dphi(name, z, p))
        assert 0 < abs(true) < np.finfo(np.float64).tiny
        assert abs(d[0, 0] - true) <= 1e-7 * np.finfo(np.float64).tiny, (module, d[0, 0], true)


def test_limit_derivatives_beyond_any_int64_exponent_are_zero():
    stack = gb.Stack(depth=3, width=3, activation="tanh")
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 2, 1) * 1e200  # tanh'(1e200) = 4 exp(-2e200): 10^(-8.7e199)
    res = gb.backprop(stack, params, x)
    assert res.grad_norm.log10()[0] == -np.inf and np.all(np.isfinite(res.grad_norm.log10()[1:]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation, sigma_w, dtype", [
    ("tanh", 3000.0, "float64"), ("sigmoid", 6000.0, "float64"), ("tanh", 300.0, "float32"),
    ("sigmoid", 600.0, "float32"),
])
def test_saturated_vanilla_cell_equals_mpmath(backend, activation, sigma_w, dtype):
    """Every unit of steps 1-5 saturated beyond the dtype (tanh'(z) underflows float64 beyond
    |z| ~ 354, float32 beyond ~ 52): the signal reaching steps 0-4 is 10^-4147 .. 10^-1024 (float32:
    10^-404 .. 10^-100), which the cell once read as 0 (it kept phi'(z_t) as a plain number). Now
    each such step is taken in log form; mpmath's plain chain on the same weights is the oracle.
    The tolerance is the rounding of z (|z| ~ 3000 eps per step)."""
    rnn = gb.Recurrent(cell="rnn", steps=6, hidden=3, input_dim=2, sigma_w=sigma_w, recurrent_init="normal",
                       activation=activation, dtype=dtype)
    params, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=2, seed=1)
    lo, gh, gW = rnn_chain(activation, rnn.act_param, params.W_ih, params.W_hh,
                           params.b_ih.astype(np.float64) + params.b_hh, xs)
    assert max(gh[:-1]) < math.log10(np.finfo(dtype).tiny) - 50  # beyond the dtype: 0 in plain arithmetic
    res = gb.backprop(rnn, params, xs, backend=backend)
    tol = 1e-10 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(res.signal_norm.log10(), gh, rtol=0, atol=tol)
    got = res.grad_norm.log10()
    assert got[0] == gW[0] == -np.inf  # h_{-1} = 0
    np.testing.assert_allclose(got[1:], gW[1:], rtol=0, atol=tol)
    assert abs(float(res.loss_exact.log10()) - lo) <= tol
    assert res.saturation[1:].min() == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sigma_w, dtype", [(1000.0, "float64"), (100.0, "float32")])
def test_step_norms_whose_squares_underflow_equal_mpmath(backend, sigma_w, dtype):
    """A step's dW_hh term 10^-2300 (float32: 10^-220) within a signal that is not rescued (some
    unit is not saturated): its norm was a plain sum of squares (0, or the float32 Gram matrices'
    underflow) and read 0 or inf; now scaled by powers of two first."""
    rnn = gb.Recurrent(cell="rnn", steps=8, hidden=3, input_dim=2, sigma_w=sigma_w, recurrent_init="normal",
                       dtype=dtype)
    params, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=2, seed=10)
    _, gh, gW = rnn_chain("tanh", 0.0, params.W_ih, params.W_hh, params.b_ih.astype(np.float64) + params.b_hh, xs)
    assert min(gW[1:]) < 2 * math.log10(np.finfo(dtype).tiny)  # its square underflows the dtype
    res = gb.backprop(rnn, params, xs, backend=backend)
    tol = 1e-10 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(res.grad_norm.log10()[1:], gW[1:], rtol=0, atol=tol)
    np.testing.assert_allclose(res.signal_norm.log10(), gh, rtol=0, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_signal_far_below_its_cell_signal_equals_mpmath(backend):
    """The LSTM's state [dL/dh; dL/dc] shares one exponent: ||dL/dh_0|| = 10^-248 beside a dL/dc
    near 1 was a plain sum of squares and read 0 ("no gradient reaches step 0"). Step 3's
    10^-6073 lies beyond float64 below its dL/dc and still reads 0 (one exponent per step)."""
    rnn = gb.Recurrent(cell="lstm", steps=6, hidden=3, input_dim=2, sigma_w=1e5, recurrent_init="normal")
    params, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=2, seed=1)
    gh, gW = lstm_chain(params.W_ih, params.W_hh, params.b_ih + params.b_hh, xs)
    res = gb.backprop(rnn, params, xs, backend=backend)
    s, g = res.signal_norm.log10(), res.grad_norm.log10()
    assert gh[0] < -200 and gh[3] < -6000
    for t in (0, 1, 2, 4, 5):
        assert abs(s[t] - gh[t]) < 1e-9, (t, s[t], gh[t])
    for t in (1, 2, 3, 5):
        assert abs(g[t] - gW[t]) < 1e-9, (t, g[t], gW[t])
    assert s[3] == -np.inf and "no gradient reaches step 0" not in gb.diagnose(res).explanation


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias, dtype", [(40.0, "float64"), (20.0, "float64"), (10.0, "float32")])
def test_gru_with_an_open_update_gate_equals_mpmath(backend, bias, dtype):
    """An update-gate bias of +40: 1 - z = 4e-18 reads 0 by subtraction, and the loss, every
    signal and dW_hh were exactly 0 (mpmath: 10^-35.6); +20 lost 8 digits, float32 +10 four.
    1 - z is now sigma'(a)/sigma(a) where z > 1/2."""
    rnn = gb.Recurrent(cell="gru", steps=4, hidden=2, input_dim=2, recurrent_init="normal", dtype=dtype)
    params, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=1, seed=1)
    params.b_ih[2:4] += bias  # the update gate's block
    lo, gh, gW = gru_chain(params.W_ih, params.W_hh, params.b_ih, params.b_hh, xs)
    res = gb.backprop(rnn, params, xs, backend=backend)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert abs(float(res.loss_exact.log10()) - lo) <= tol
    np.testing.assert_allclose(res.signal_norm.log10(), gh, rtol=0, atol=tol)
    np.testing.assert_allclose(res.grad_norm.log10()[1:], gW[1:], rtol=0, atol=tol)


def test_limit_recurrent_forward_underflow_and_gated_saturation_read_0():
    """The README's limits of the recurrent cells, as they stand: a sigmoid cell whose state
    underflows (biases -800: mpmath gives a loss of 10^-694.6) reads 0, and a GRU at gain 1e5
    whose gate derivatives all underflow reads dW_hh = 0 (mpmath: 10^-769)."""
    rnn = gb.Recurrent(cell="rnn", activation="sigmoid", steps=3, hidden=2, input_dim=2)
    params = gb.init_params(rnn, 0)
    params.b_ih[:] = -800.0
    res = gb.backprop(rnn, params, gb.sequence_input(rnn, batch=1, seed=1), backend="numpy")
    assert res.loss == 0 and np.all(res.signal_norm.log10() == -np.inf)
    gru = gb.Recurrent(cell="gru", steps=6, hidden=3, input_dim=2, sigma_w=1e5, recurrent_init="normal")
    res = gb.backprop(gru, gb.init_params(gru, 0), gb.sequence_input(gru, batch=2, seed=1), backend="numpy")
    assert np.all(res.grads.W_hh.to_float() == 0)
    assert "contribution to dL/dW_hh is exactly 0: the gates' derivatives underflowed float64" in gb.diagnose(res).explanation
