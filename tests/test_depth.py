"""The exact chain at depths where plain float64 under- or overflows, against closed forms."""

import math

import numpy as np
import pytest

import gradbench as gb
from tests import naive


def _log10_chain_width1(activation, w, x0):
    """log10 |dL/dW_l| of a width-1, batch-1 stack with loss 0.5 h_L^2, summed in log space.

    h_{l+1} = phi(w_l h_l); dL/dh_L = h_L; dL/dz_l = dL/dh_{l+1} phi'(z_l); dL/dW_l = dL/dz_l h_l.
    For sigmoid every factor is an ordinary float; for identity and relu (w, x > 0) the
    activations are products too, so log10 h_l is a cumulative sum. Only the products leave
    float64's range, so sums of log10 give an independent closed form of the exact chain.
    """
    L = len(w)
    log_h, log_dphi = np.empty(L + 1), np.zeros(L)
    log_h[0] = math.log10(x0)
    if activation == "sigmoid":
        h = x0
        for l in range(L):
            z = w[l] * h
            h = float(naive.phi("sigmoid", np.array(z), 0.0))
            log_h[l + 1] = math.log10(h)
            log_dphi[l] = math.log10(float(naive.dphi("sigmoid", np.array(z), 0.0)))
    else:  # phi(z) = z on z > 0
        log_h[1:] = log_h[0] + np.cumsum(np.log10(w))
    log_g = log_h[L]  # log10 |dL/dh_L|
    out = np.empty(L)
    for l in range(L - 1, -1, -1):
        log_dz = log_g + log_dphi[l]
        out[l] = log_dz + log_h[l]
        log_g = log_dz + math.log10(w[l])
    return out


@pytest.mark.parametrize("activation", ["identity", "sigmoid", "relu"])
def test_exponents_match_closed_form_where_float64_underflows(activation):
    L = 3000
    rng = np.random.default_rng(0)
    w = rng.uniform(0.3, 0.9, L)  # positive weights: relu stays on its linear branch
    stack = gb.Stack(depth=L, width=1, activation=activation)
    params = gb.init_params(stack, seed=0)
    params.W[:, 0, 0] = w
    x = np.array([[0.7]])
    res = gb.backprop(stack, params, x, backend="numpy")
    ref = _log10_chain_width1(activation, w, 0.7)
    assert ref.min() < -400  # beyond float64: a plain chain would give exact zeros here
    np.testing.assert_allclose(res.grad_norm.log10(), ref, rtol=0, atol=1e-9)
    # the gradient entries themselves, which for width 1 are the norms up to sign
    np.testing.assert_allclose(res.grads.W.log10()[:, 0, 0], ref, rtol=0, atol=1e-9)


def _mean_field_chi1(phi, dphi, sigma_w, sigma_b=0.0, n=200):
    """chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2] at the fixed point q* (Gauss-Hermite)."""
    t, wts = np.polynomial.hermite_e.hermegauss(n)
    wts = wts / wts.sum()
    q = 1.0
    for _ in range(500):
        q = sigma_w**2 * np.sum(wts * phi(np.sqrt(q) * t) ** 2) + sigma_b**2
    return sigma_w**2 * np.sum(wts * dphi(np.sqrt(q) * t) ** 2)


def test_1500_layer_sigmoid_decays_at_the_mean_field_rate():
    # 1500 layers (5000 until 2026-12-06: 86 s of a loaded 2-core machine against 18 s here): the
    # same fitted slope (-0.6286 against -0.6285), plain float64 zero below the top 520 layers
    # (518) and float32's subnormals passed 76 layers down (75)
    L, N = 1500, 256
    stack = gb.Stack(depth=L, width=N, activation="sigmoid", init="xavier_normal")
    params = gb.init_params(stack, seed=0)
    x = gb.gaussian_input(stack, batch=8, seed=1)
    # statistics only: the norms are those of the full run (test_checkpoint), without its 0.79 GB
    # of dW beside the 0.79 GB of W (at 5000 layers 2.6 GB each, the suite's largest arrays)
    res = gb.backprop(stack, params, x, backend="numpy", stats_only=True)
    lg = res.grad_norm.log10()
    assert np.all(np.isfinite(lg))
    # slope of log10 ||dL/dW_l|| per layer of backpropagation (from the top down)
    depth_below_top = (L - 1) - np.arange(L)
    slope = np.polyfit(depth_below_top[: L - 50], lg[: L - 50], 1)[0]
    s = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    chi1 = _mean_field_chi1(s, lambda z: s(z) * (1 - s(z)), sigma_w=1.0)
    predicted = 0.5 * math.log10(chi1)
    assert predicted == pytest.approx(-0.63, abs=0.02)
    assert slope == pytest.approx(-0.63, abs=0.05)
    assert slope == pytest.approx(predicted, abs=0.05)
    # plain float64 turns the gradients of all but the top ~500 layers into exact zeros:
    # where the exact value is below the smallest subnormal, to_float() gives 0 (and says so)
    with pytest.warns(gb.UnderflowWarning):
        plain = res.grad_norm.to_float()
    zero = np.flatnonzero(plain == 0)
    assert zero.max() < L - 400 and L - zero.max() < 600
    # README: "(float32 after about 70)": below float32's smallest subnormal from ~75 layers down
    f32 = np.flatnonzero(lg < math.log10(np.finfo(np.float32).smallest_subnormal))
    assert 60 <= L - 1 - f32.max() <= 80


def test_10000_layer_tanh_has_finite_exact_norms_everywhere():
    stack = gb.Stack(depth=10_000, width=32, activation="tanh")
    params = gb.init_params(stack, seed=0)
    x = gb.gaussian_input(stack, batch=16, seed=1)
    res = gb.backprop(stack, params, x, backend="numpy")
    assert np.all(np.isfinite(res.grad_norm.log10()))
    assert np.all(np.isfinite(res.signal_norm.log10()))
    assert res.first_nonfinite_forward is None and res.first_nonfinite_backward is None


@pytest.mark.parametrize("backend", gb.backends())
@pytest.mark.parametrize("dtype,w", [("float32", -95.0), ("float64", -720.0)])
def test_subnormal_signal_is_normalised_exactly(backend, dtype, w):
    """A layer whose derivative is subnormal: 2**-e is not a finite number of the dtype, so
    the backends must scale in two steps instead of multiplying by inf."""
    stack = gb.Stack(depth=2, width=1, activation="sigmoid", dtype=dtype)
    params = gb.init_params(stack, 0)
    params.W[0, 0, 0], params.W[1, 0, 0] = w, 1.0
    res = gb.backprop(stack, params, np.ones((1, 1), dtype=dtype), backend=backend)
    assert res.first_nonfinite_backward is None
    # closed form in log space: dL/dx = h2 * s'(z1) * 1 * s'(z0) * w with z0 = w, z1 = s(w)
    s = lambda z: 0.5 * (1 + math.tanh(z / 2))  # noqa: E731
    h1 = s(w)
    h2 = s(h1)
    log_ds0 = w / math.log(10) - 2 * math.log10(1 + math.exp(w))  # log10 s'(w) for w << 0
    expected = math.log10(h2) + math.log10(s(h1) * (1 - s(h1))) + log_ds0 + math.log10(abs(w))
    got = res.input_grad.log10()[0, 0]
    assert got == pytest.approx(expected, abs=1e-5 if dtype == "float32" else 1e-9)
