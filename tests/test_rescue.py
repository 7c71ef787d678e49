"""Deeply saturated layers: dz = da * phi'(z) below the float range in every unit.

Before the rescue the product underflowed to 0 (or to digit-less subnormals) and the exact chain
read 0 below such a layer (tanh at sigma_w = 1e4). Every backend now recomputes that layer in log
form, scaled by a power of two (gradbench.reference.rescue_saturated): checked against an mpmath
chain with unbounded exponents (tests/naive_mp.py) at batch 1, where one exponent per layer is
exact, and backend against backend at larger batches, residual groups and float32.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import gradbench as gb
from tests.naive_mp import chain

BACKENDS = gb.backends()


def _log10_norms(mantissa, exponent):
    """log10 of the Frobenius norm of each layer's mantissa * 2**exponent, scaled by hand (no
    square underflows): independent of the kernels' own norms."""
    out = []
    for m, e in zip(mantissa.reshape(len(mantissa), -1).astype(np.float64), exponent):
        s = np.abs(m).max()
        out.append(-np.inf if s == 0 else np.log10(s) + np.log10(np.linalg.norm(m / s)) + int(e) * np.log10(2))
    return np.array(out)


def _oracle_check(stack, params, x, backend, tol):
    lo, gW, gh = chain(stack.activation, stack.act_param, params.W, x)
    want = np.asarray(gW, dtype=float)
    res = gb.backprop(stack, params, x, backend=backend)
    got, sig = res.grad_norm.log10(), res.signal_norm.log10()
    assert np.all(np.isfinite(got)), f"[{backend}] exact zeros at {np.flatnonzero(~np.isfinite(got))}"
    np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=backend)
    np.testing.assert_allclose(sig, np.asarray(gh, dtype=float), rtol=0, atol=tol, err_msg=backend)
    # the gradient arrays themselves, not only their norms: a rescued layer's dW carries the
    # rescue's power of two in its exponent (they were off by up to 2391 decades)
    arrays = _log10_norms(res.grads.W.mantissa, res.grads.W.exponent)
    np.testing.assert_allclose(arrays, want, rtol=0, atol=tol, err_msg=f"{backend}: grads.W")
    # at batch 1, db_l = dz_l and dW_l = dz_l h_l^T: ||dW_l|| = ||db_l|| ||h_l||, with ||h_l|| <= sqrt(N)
    # (tanh, sigmoid: |h| <= 1; layer 0: the input)
    if stack.activation in ("tanh", "sigmoid"):
        db = _log10_norms(res.grads.b.mantissa, res.grads.b.exponent)
        h_max = np.r_[np.log10(np.linalg.norm(x)), np.full(stack.depth - 1, 0.5 * np.log10(stack.width))]
        assert np.all(arrays <= db + h_max + tol), f"{backend}: grads.b below what grads.W implies"
        assert np.all(db <= arrays + 30), f"{backend}: grads.b far above grads.W"  # ||h_l|| >= 1e-30 here
    # the streaming histograms of a statistics-only run: the largest entry of a layer lies in
    # [||dW_l|| / N, ||dW_l||] (N^2 entries), its bin [top, top + 1) / per_decade
    st = gb.backprop(stack, params, x, backend=backend, stats_only=True).grad_hist
    lo_edge = st.top / st.per_decade
    assert np.all(lo_edge <= want + tol), f"{backend}: a histogram entry above the layer's norm"
    assert np.all(lo_edge + 1 / st.per_decade >= want - np.log10(stack.width) - tol), backend
    return got


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation, sigma_w, dtype, tol", [
    ("tanh", 1e4, "float64", 1e-9),     # down to 10^-27064: every layer below ~10 read 0 before
    ("sigmoid", 3e3, "float64", 1e-9),
    ("tanh", 1e3, "float32", 2e-3),     # float32 z of |z| ~ 1e3 carry 1e-4 of ln phi' each
])
def test_saturated_stacks_equal_mpmath_at_batch_1(backend, activation, sigma_w, dtype, tol):
    stack = gb.Stack(depth=30, width=12, activation=activation, init="normal", sigma_w=sigma_w, dtype=dtype)
    params = gb.init_params(stack, 0)
    got = _oracle_check(stack, params, gb.gaussian_input(stack, 1, 1), backend, tol)
    assert got.min() < -2000  # far below any float: the rescue was needed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["elu", "selu"])
def test_one_sided_saturation_equals_mpmath(backend, activation):
    # every pre-activation of layer 0 in the thousands below 0: phi'(z) ~ e^-2000 in every unit,
    # phi(z) ~ -alpha; the layers above are ordinary. (Swish and GELU saturate only where phi itself
    # underflows as fast as phi': there the forward is the limit, see README "Where it stops".)
    stack = gb.Stack(depth=4, width=6, activation=activation, init="normal", sigma_w=1.5)
    params = gb.init_params(stack, 0)
    params.W[0] = -np.abs(params.W[0]) * 2000
    x = np.abs(gb.gaussian_input(stack, 1, 1)) + 0.5
    got = _oracle_check(stack, params, x, backend, 1e-9)
    assert got[0] < -400


@pytest.mark.parametrize("residual, batch_norm", [(0, False), (2, False)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation, sigma_w", [("tanh", 1e4), ("sigmoid", 3e3), ("swish", 3e3)])
def test_backends_agree_on_rescued_layers(activation, sigma_w, dtype, residual, batch_norm):
    if len(BACKENDS) < 2:
        pytest.skip("one backend built")
    stack = gb.Stack(depth=24, width=16, activation=activation, init="normal", sigma_w=sigma_w, dtype=dtype,
                     residual=residual, batch_norm=batch_norm)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 5, 1)
    ref = gb.backprop(stack, params, x, backend="numpy")
    want = ref.grad_norm.log10()
    assert np.isfinite(want).all()
    # float32: the backends' forward pre-activations differ by an ulp (~1e-7 relative at |z| ~ 1e4)
    # and ln tanh'(z) ~ -2|z| turns that into ~1e-3 decades a layer; float64 1e-16 of that
    tol = 1e-9 if dtype == "float64" else 2e-2
    for backend in BACKENDS[1:]:
        got = gb.backprop(stack, params, x, backend=backend).grad_norm.log10()
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(1.0, np.max(np.abs(want)) / 1000),
                                   err_msg=backend)


def test_rescue_leaves_ordinary_layers_alone():
    # a layer whose dz reaches 2^-900 anywhere is untouched: bitwise the plain product
    from gradbench import abi, reference

    z = np.array([[300.0, 1.0]])
    da = np.array([[0.75, 2.0**-880]])
    dz = np.empty_like(z)
    reference.activation_backward(dz, da, z, abi.ACT_CODE["tanh"], 0.0)
    before = dz.copy()
    assert reference.rescue_saturated(dz, da, z, abi.ACT_CODE["tanh"], 0.0) == 0
    np.testing.assert_array_equal(dz, before)
    relu = np.array([[1e-300, 2.0]])
    assert reference.rescue_saturated(relu.copy(), relu, relu, abi.ACT_CODE["relu"], 0.0) == 0


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "elu", "selu", "swish", "gelu"])
def test_log_derivative_against_mpmath(activation):
    import mpmath as mp

    from gradbench import abi
    from gradbench.activations import SELU_ALPHA, SELU_LAMBDA, log_dphi
    from kernels import activations as nb

    def true(x):
        x = mp.mpf(x)
        if activation == "tanh":
            return mp.sech(x) ** 2
        if activation == "sigmoid":
            return mp.exp(-abs(x)) / (1 + mp.exp(-abs(x))) ** 2
        if activation in ("elu", "selu"):
            lam, alpha = (1, mp.mpf(1)) if activation == "elu" else (mp.mpf(SELU_LAMBDA), mp.mpf(SELU_ALPHA))
            return lam if x > 0 else lam * alpha * mp.exp(x)
        if activation == "swish":
            s = 1 / (1 + mp.exp(-x))
            return s * (1 + x * (1 - s))
        return mp.ncdf(x) + x * mp.npdf(x)

    code = abi.ACT_CODE[activation]
    xs = np.array([-1e4, -800.0, -100.0, -37.5, -30.5, -29.5, -10.0, -3.0, -0.5, 0.0, 0.7, 5.0, 40.0, 900.0, 1e4])
    ln, sign = log_dphi(xs, code, 1.0)
    with mp.workdps(60):
        for i, x in enumerate(xs):
            t = true(x)
            want = float(mp.log(abs(t)))
            assert abs(ln[i] - want) <= 1e-13 * max(1.0, abs(want)), (activation, x, ln[i], want)
            assert sign[i] == (1.0 if t > 0 else -1.0), (activation, x)
            l2, s2 = nb.log_dphi(float(x), code, 1.0)  # the Numba twin
            assert abs(l2 - ln[i]) <= 1e-14 * max(1.0, abs(want)) and s2 == sign[i], (activation, x, l2, ln[i])
    ln_inf, _ = log_dphi(np.array([np.inf, -np.inf]), code, 1.0)
    assert ln_inf[1] == -np.inf and not np.isnan(ln_inf[0])
    assert nb.log_dphi(-np.inf, code, 1.0)[0] == -np.inf and not np.isnan(nb.log_dphi(np.inf, code, 1.0)[0])


def _batch_against_alone(stack, params, x, backend):
    """The run of the batch and, for dW_l at every layer and dL/dx row by row, the largest
    relative difference from the runs of each sample alone (batch 1: an independent chain per
    sample, no row shares an exponent with another). The probe loss 0.5 ||h_L||^2 sums over
    samples, so dW_l of the batch is the sum of theirs."""
    res = gb.backprop(stack, params, x, backend=backend)
    alone = [gb.backprop(stack, params, x[i:i + 1], backend=backend) for i in range(len(x))]
    worst = 0.0
    for l in range(stack.depth):
        e = int(res.grads.W.exponent[l])
        total = sum(np.ldexp(a.grads.W.mantissa[l].astype(np.float64), int(a.grads.W.exponent[l]) - e) for a in alone)
        got = res.grads.W.mantissa[l].astype(np.float64)
        # at the largest entry's scale: a layer's mantissas can be ~1e-234 (a derivative above the
        # rescue's 2^-900 is not renormalised), whose squares underflow np.linalg.norm to 0, and
        # the NaN of 0 / 0 then passed max() unseen (62 of the tanh stack's 300 layers)
        s = float(np.max(np.abs(got)))
        assert s > 0, l
        rel = np.linalg.norm((total - got) / s) / np.linalg.norm(got / s)
        assert np.isfinite(rel), l
        worst = max(worst, float(rel))
    rows = max(float(np.max(np.abs(res.input_grad.log10()[i] - a.input_grad.log10()[0]))) for i, a in enumerate(alone))
    return res, alone, worst, rows


@pytest.mark.parametrize("backend", gb.backends())
def test_every_sample_keeps_its_own_exponent_in_the_backward(backend):
    """In a deeply saturated stack the samples of a batch drift thousands of decades apart and
    cross. With one exponent per layer two of three samples fell to exactly 0 and layer 0 read
    10^-103283 where the first sample alone has 10^-98291 (README "Where it stops" quoted it).
    Each row now carries its own power of two: dW_l of the batch is the sum of the samples'
    own at every layer, and each row of dL/dx is that sample's (runs of batch 1)."""
    stack = gb.Stack(depth=300, width=32, activation="tanh", init="normal", sigma_w=1e4)
    res, alone, worst, rows = _batch_against_alone(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 3, 1),
                                                   backend)
    assert res.extras["lost_samples"] == 0 and np.all(np.any(res.input_grad.mantissa != 0, axis=1))
    # saturated tanh: phi' = exp(-2|z|) with |z| ~ 1e4 turns the forward's last-bit differences
    # (a batch's product against one row's) into ~1e-12 a layer
    assert worst < 1e-7 and rows < 1e-8
    logs = [float(a.grad_norm.log10()[0]) for a in alone]
    assert round(float(res.grad_norm.log10()[0]), 2) == round(max(logs), 2) == -98291.46  # README
    assert min(logs) < max(logs) - 4000  # the samples are thousands of decades apart at layer 0
    assert "lose their gradient" not in gb.diagnose(res).explanation
    # a residual stack, and a value-clipped signal (clipped row by row on its true magnitude)
    for st, seed in ((gb.Stack(depth=60, width=6, activation="swish", sigma_w=4.0), 37),
                     (gb.Stack(depth=200, width=16, activation="sigmoid", sigma_w=300.0, clip="value",
                               clip_threshold=1e-300, clip_on="signal"), 3)):
        res, _, worst, rows = _batch_against_alone(st, gb.init_params(st, seed), gb.gaussian_input(st, 4, seed), backend)
        assert worst < 1e-10 and rows < 1e-10, (st.activation, worst, rows)


def test_a_sample_whose_relu_units_all_die_is_counted_and_named():
    stack = gb.Stack(depth=6, width=8, activation="relu", init="he_normal", sigma_b=0.5)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1)
    params.W[0] = np.abs(params.W[0])
    params.b[0] = 0.0
    params.b[1:] = np.abs(params.b[1:]) + 0.1  # every later layer lives on its biases alone
    x[2] = -np.abs(x[2]) - 1.0  # sample 2: z <= 0 for every unit of layer 0
    res = gb.backprop(stack, params, x)
    assert res.extras["lost_samples"] == 1 and np.all(res.input_grad.mantissa[2] == 0)
    assert np.any(res.input_grad.mantissa[[0, 1, 3]] != 0)
    assert "1 of 4 samples lose their gradient" in gb.diagnose(res).explanation
    assert "dead units" in gb.diagnose(res).explanation


def test_lost_samples_travel_with_the_diagnosis():
    stack = gb.Stack(depth=6, width=8, activation="relu", init="he_normal", sigma_b=0.5)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1)
    params.W[0], params.b[0], params.b[1:] = np.abs(params.W[0]), 0.0, np.abs(params.b[1:]) + 0.1
    x[2] = -np.abs(x[2]) - 1.0  # sample 2 dies in layer 0 (the test above)
    d = gb.diagnose(gb.backprop(stack, params, x))
    assert d.lost_samples == 1
    back = gb.Diagnosis.from_dict(d.to_dict())
    assert back.lost_samples == 1
    old = d.to_dict()
    del old["lost_samples"]  # a file written before the field existed
    assert gb.Diagnosis.from_dict(old).lost_samples == 0


def _relu_chain(W, b, x):
    """dL/dx and ||dL/dW_l|| of a ReLU stack with the probe loss 0.5 ||h_L||^2, by hand in NumPy."""
    hs, zs = [x], []
    for Wl, bl in zip(W, b):
        zs.append(hs[-1] @ Wl.T + bl)
        hs.append(np.maximum(zs[-1], 0.0))
    g, norms = hs[-1], np.zeros(len(W))
    for l in range(len(W) - 1, -1, -1):
        dz = g * (zs[l] > 0)
        norms[l] = np.linalg.norm(dz.T @ hs[l])
        g = dz @ W[l]
    return g, norms


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_sample_lost_to_a_dead_layer_is_not_blamed_on_the_batch_exponent(backend):
    """Layer 5 of a ReLU stack is dead for every sample (bias -100): all 4 samples reach the input
    as exact zeros. Each sample carries its own exponent and none is flushed by the others, so
    the explanation names the dead units and does not advise batch 1 (it said "4 of 4
    samples ... fell more than 2^-1074 below the batch's largest ... run such samples one at a
    time (batch 1)"); by hand, each sample alone reads the same zeros."""
    stack = gb.Stack(depth=10, width=8, activation="relu", init="he_normal", sigma_b=0.5)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1)
    params.b[:] = np.abs(params.b) + 0.5
    params.b[5] = -100.0
    for i in range(4):  # batch 1, independently: the input gradient and layers 0..5 are exactly 0
        g, norms = _relu_chain(params.W, params.b, x[i:i + 1])
        assert np.all(g == 0) and np.all(norms[:6] == 0) and np.all(norms[7:] > 0)
    res = gb.backprop(stack, params, x, backend=backend)
    assert res.extras["lost_samples"] == 4
    text = gb.diagnose(res, params).explanation
    assert "all 4 samples lose their gradient" in text and "dead units (z <= 0) in some layer" in text
    assert "batch 1" not in text and "below the batch's largest" not in text
    # every ||dW_l|| exactly 0 (layer 8 dead: h_9 = relu(b_9) > 0 carries the loss): the verdict says it
    params.b[8] = -100.0
    _, norms = _relu_chain(params.W, params.b, x)
    assert np.all(norms == 0)
    d = gb.diagnose(gb.backprop(stack, params, x, backend=backend), params)
    assert d.verdict == "no gradient" and d.lost_samples == 4 and "lose their gradient" not in d.explanation


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("seed", [0, 3])
def test_derivatives_beyond_2_to_the_minus_2_to_the_60_are_finite(backend, activation, seed):
    """float32 x ~ 1e19: pre-activations of ~1e19 and derivatives of 2^(-1.5e18). ln|phi'| is
    then a float whose unit is 128, and exp(ell - k ln 2) was rounded anywhere within a few of
    those: inf on every backend (seed 3) or 0. Now the log form's entries are exp((ell - top) + r),
    r in [0, ln 2]: finite, and the norms as mpmath's to float32's digits of z."""
    stack = gb.Stack(depth=3, width=17, activation=activation, dtype="float32")
    params = gb.init_params(stack, seed)
    x = (gb.gaussian_input(stack, 1, seed + 1).astype(np.float64) * 1e19).astype(np.float32)
    res = gb.backprop(stack, params, x, backend=backend)
    got, sig = res.grad_norm.log10(), res.signal_norm.log10()
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(sig)), (got, sig)
    _, gW, gh = chain(activation, stack.act_param, params.W, x)
    np.testing.assert_allclose(got, np.asarray(gW, dtype=float), rtol=1e-5)
    np.testing.assert_allclose(sig, np.asarray(gh, dtype=float), rtol=1e-5)
    assert got.min() < -1e16


def test_the_log_form_keeps_the_differences_at_any_magnitude():
    """from_log at ln ~ -1e18 (ulp 128): the largest entry in [1, 2], the others its exact
    ratio exp(ln - top) (was inf or 0: ln - k ln 2 rounded by hundreds)."""
    from gradbench.logscaled import from_log

    for top in (-1e18, -3.1e18, -3e15, -1000.5):  # down to LN_MIN, -3.2e18
        ln = np.array([top, top - 512.0, -np.inf, top - 5000.0])  # 512: a multiple of ulp(top)
        m, k = from_log(ln, np.array([1.0, -1.0, 1.0, 1.0]))
        assert 1 <= m[0] <= 2 and m[2] == 0 and m[3] == 0
        assert m[1] / -m[0] == pytest.approx(np.exp(-512.0), rel=1e-13)
        assert abs(k - top / np.log(2)) <= 2 + abs(top) * 2**-50  # k = floor(top / ln 2), to top's digits


def test_float32_samples_are_not_flushed_by_the_batch():
    """A float32 swish stack (depth 60, width 6, sigma_w = 4, batch 4) lost 3 of 4 samples, each
    more than 2^-149 below the batch's largest at some layer, though each alone reaches the input:
    with one exponent per row none is lost, and each row's input gradient is within float32's
    chaos of the sample's own (the same stack in float64 agrees to 1e-10: test above)."""
    stack = gb.Stack(depth=60, width=6, activation="swish", sigma_w=4.0, dtype="float32")
    params, x = gb.init_params(stack, 37), gb.gaussian_input(stack, 4, 37)
    res, alone, _, rows = _batch_against_alone(stack, params, x, "numpy")
    assert res.extras["lost_samples"] == 0 and np.all(np.any(res.input_grad.mantissa != 0, axis=1))
    spread = np.ptp([float(np.max(a.input_grad.log10())) for a in alone])
    assert spread > 20 and rows < 1  # tens of decades apart, each row where its sample alone is
    assert "lose their gradient" not in gb.diagnose(res, params).explanation


def test_a_top_layer_saturated_to_one_value_is_named_as_the_floor_not_a_zero_input():
    """tanh at sigma_w = 1e140, depth 3, width 4, batch 1: every top unit reads -1 (std 0 over the
    layer), which the diagnosis took for an exactly zero output and said 'an all-zero input or
    signal, or every unit dead', and 'plain float64 is fine here'. The zero is tanh' below
    2^(-2^62) at |z| ~ 1e140 (checked here with a plain forward)."""
    stack = gb.Stack(depth=3, width=4, activation="tanh", sigma_w=1e140)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 1, 1)
    h = np.asarray(x, dtype=np.float64)
    for l in range(3):
        z = h @ params.W[l].T + params.b[l]
        h = np.tanh(z)
    # log10 tanh'(z) = log10(1 - tanh(z)^2) ~ log10 4 - 2 |z| log10 e, far below -2^62 log10 2 at every top unit
    assert np.all(np.log10(4) - 2 * np.abs(z) * np.log10(np.e) < -(2.0 ** 62) * np.log10(2))
    assert np.all(np.abs(h) == 1.0) and np.unique(h).size == 1  # one value: std 0, not a zero output
    res = gb.backprop(stack, params, x)
    d = gb.diagnose(res, params)
    assert d.verdict == "no gradient"
    text = str(d)
    assert "2^(-2^62)" in text and "all-zero input" not in text
    assert "plain float64 is fine here" not in text
    # where tanh' leaves the int64 exponent: ln 4 - 2|z| = -2^62 ln 2 (it said "e.g. tanh at |z| ~ 1e200")
    edge = (math.log(4) + 2.0**62 * math.log(2)) / 2
    m = re.search(r"as tanh' does at \|z\| ~ ([\d.]+e\d+)", " ".join(text.split()))
    assert m and float(m.group(1)) == pytest.approx(edge, rel=0.05), text
    sig = gb.Stack(depth=3, width=4, activation="sigmoid", sigma_w=1e140)  # sigmoid' ~ e^-|z|: twice as far
    ds = gb.diagnose(gb.backprop(sig, gb.init_params(sig, 0), x), gb.init_params(sig, 0))
    m = re.search(r"as sigmoid' does at \|z\| ~ ([\d.]+e\d+)", " ".join(str(ds).split()))
    assert ds.verdict == "no gradient" and m and float(m.group(1)) == pytest.approx(2 * edge, rel=0.05), str(ds)
