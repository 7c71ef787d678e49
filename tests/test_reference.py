"""The NumPy reference against finite differences and an independent plain implementation."""

import numpy as np
import pytest

import gradbench as gb
from tests import naive
from tests.helpers import problem

FD_RTOL = 1e-6      # central differences, norm-wise over the sampled entries
PLAIN_RTOL = 1e-10  # reference vs the independent plain backward (different formulas, same maths)


def _problem(stack, seed=0, batch=4):
    return problem(stack, batch, seed=seed)


def _as_dict(params):
    return {n: a.astype(np.float64).copy() for n, a in params.items()}


def _fd_grads(stack, P, x, t, rng, per_array=4, h=1e-6):
    """Central differences of the naive loss at a few random entries of every parameter."""
    out = {}
    for name, a in P.items():
        if name == "slope" and stack.activation != "prelu":
            continue
        if name in ("gamma", "beta") and not stack.batch_norm:
            continue
        idx = [tuple(rng.integers(0, s) for s in a.shape) for _ in range(per_array)]
        vals = []
        for i in idx:
            old = a[i]
            step = h * max(1.0, abs(old))
            a[i] = old + step
            lp = naive.forward(stack, P, x, t)[0]
            a[i] = old - step
            lm = naive.forward(stack, P, x, t)[0]
            a[i] = old
            vals.append((lp - lm) / (2 * step))
        out[name] = (idx, np.array(vals))
    return out


def _rel(got, ref):
    scale = np.linalg.norm(ref)
    return np.linalg.norm(got - ref) / (scale if scale > 0 else 1.0)


CASES = (
    [dict(activation=a) for a in gb.ACTIVATIONS]
    + [dict(activation="tanh", init=i) for i in gb.INITS]
    + [
        dict(activation="sigmoid", batch_norm=True),
        dict(activation="relu", batch_norm=True, init="he_normal"),
        dict(activation="prelu", batch_norm=True),
        dict(activation="tanh", residual=2, residual_scale=0.5),
        # a bias keeps z off the ReLU kink (z = 0 exactly when a whole row of h is 0)
        dict(activation="relu", residual=3, init="he_uniform", depth=6, sigma_b=0.1),
        dict(activation="elu", residual=2, batch_norm=True, activation_param=0.7),
        dict(activation="leaky_relu", activation_param=0.2, sigma_b=0.3),
        dict(activation="swish", sigma_w=1.7, sigma_b=0.1),
        dict(activation="tanh", loss="mse", output_dim=3),
        dict(activation="sigmoid", loss="bce", output_dim=2, input_dim=3),
        dict(activation="relu", loss="softmax_ce", output_dim=4, input_dim=7, init="he_normal"),
        dict(activation="gelu", loss="softmax_ce", output_dim=3, batch_norm=True, residual=2),
    ]
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gradients_equal_finite_differences(case):
    kw = dict(depth=4, width=5) | case
    stack = gb.Stack(**kw)
    params, x, t = _problem(stack)
    res = gb.backprop(stack, params, x, t, backend="numpy")
    P = _as_dict(params)
    loss_plain = naive.forward(stack, P, x, t)[0]
    assert res.loss == pytest.approx(loss_plain, rel=1e-12)
    fd = _fd_grads(stack, P, x, t, np.random.default_rng(7))
    got_all = dict(res.grads.items())
    for name, (idx, ref) in fd.items():
        got = got_all[name].to_float()
        got = np.array([got[i] for i in idx])
        # an absolute floor for gradients that are zero in exact arithmetic (biases under BN)
        err = np.linalg.norm(got - ref)
        floor = 1e-8 * max(1.0, abs(loss_plain))  # rounding of the loss / step
        assert err <= FD_RTOL * np.linalg.norm(ref) + floor, f"{name}: got {got}, finite differences {ref}"


@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("target", ["layer", "global"])
def test_parameter_clipping_equals_clipped_finite_differences(mode, target):
    c = 0.05 if mode == "value" else 0.3
    stack = gb.Stack(depth=4, width=5, activation="tanh", sigma_w=2.5, sigma_b=0.2, loss="mse",
                     output_dim=2, input_dim=3, clip=mode, clip_threshold=c, clip_on=target)
    params, x, t = _problem(stack)
    res = gb.backprop(stack, params, x, t, backend="numpy")
    P = _as_dict(params)
    _, plain, _ = naive.backward(stack, P, x, t)
    unclipped = dict(res.grads.items())
    ref = naive.clip_params(stack, {n: plain[n] for n in unclipped})
    # clipping must be active for the test to mean anything
    assert any(not np.allclose(ref[n], plain[n]) for n in ref)
    for name, g in res.grads.items():
        assert _rel(g.to_float(), ref[name]) <= PLAIN_RTOL, name
    # and the unclipped plain gradients themselves agree with finite differences
    fd = _fd_grads(stack, P, x, t, np.random.default_rng(3))
    for name, (idx, vals) in fd.items():
        assert _rel(np.array([plain[name][i] for i in idx]), vals) <= FD_RTOL


@pytest.mark.parametrize("mode,c", [("value", 0.02), ("norm", 0.05)])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_signal_clipping_equals_plain_clipped_backward(mode, c, activation):
    stack = gb.Stack(depth=8, width=6, activation=activation, init="he_normal", sigma_b=0.1,
                     clip=mode, clip_threshold=c, clip_on="signal", residual=2)
    params, x, _ = _problem(stack, batch=5)
    res = gb.backprop(stack, params, x, backend="numpy")
    _, plain, signal = naive.backward(stack, _as_dict(params), x)
    unclipped = gb.backprop(stack.replace(clip=None), params, x, backend="numpy")
    assert not np.allclose(unclipped.grads.W.to_float(), plain["W"])  # clipping is active
    for name, g in res.grads.items():
        assert _rel(g.to_float(), plain[name]) <= PLAIN_RTOL, name
    np.testing.assert_allclose(res.signal_norm.to_float(), signal, rtol=PLAIN_RTOL)
    if mode == "norm":
        assert np.all(res.signal_norm.to_float() <= c * (1 + 1e-12))
    else:
        assert np.abs(res.input_grad.to_float()).max() <= c


@pytest.mark.parametrize("activation,init,depth", [
    ("tanh", "xavier_normal", 60), ("sigmoid", "xavier_normal", 80), ("relu", "he_normal", 100),
    ("selu", "lecun_normal", 40), ("gelu", "he_normal", 30), ("elu", "xavier_uniform", 50),
])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_rescaled_chain_equals_plain_backward(activation, init, depth, batch_norm):
    """At depths where float64 neither under- nor overflows, exponents change nothing."""
    stack = gb.Stack(depth=depth, width=16, activation=activation, init=init, batch_norm=batch_norm)
    params, x, _ = _problem(stack, batch=8)
    res = gb.backprop(stack, params, x, backend="numpy")
    loss, plain, signal = naive.backward(stack, _as_dict(params), x)
    assert np.all(np.isfinite(res.grad_norm.log10()))
    assert res.loss == pytest.approx(loss, rel=1e-10)
    got = res.grads.W.to_float()
    for l in range(depth):
        assert _rel(got[l], plain["W"][l]) <= 1e-9, f"layer {l}"
    np.testing.assert_allclose(res.signal_norm.to_float(), signal, rtol=1e-9)
    np.testing.assert_allclose(res.grad_norm.to_float(), np.linalg.norm(plain["W"], axis=(1, 2)), rtol=1e-9)


def test_statistics_match_their_definitions():
    stack = gb.Stack(depth=6, width=10, activation="sigmoid", sigma_w=6.0, residual=3)
    params, x, _ = _problem(stack, batch=7)
    res = gb.backprop(stack, params, x, backend="numpy")
    _, s = naive.forward(stack, _as_dict(params), x)
    for l in range(stack.depth):
        h, z = s["hs"][l + 1], s["zs"][l]
        assert res.act_mean.to_float()[l] == pytest.approx(h.mean(), rel=1e-12)
        assert res.act_std.to_float()[l] == pytest.approx(h.std(), rel=1e-12)
        dphi = naive.dphi("sigmoid", z, 0)
        assert res.saturation[l] == np.mean(dphi < 0.01 * 0.25)
        assert np.isnan(res.dead[l])  # sigmoid: z <= 0 kills nothing (defined for the ReLU family)
    assert res.saturation.max() > 0  # sigma_w = 6 saturates


@pytest.mark.parametrize("backend", gb.backends())
@pytest.mark.parametrize("activation,param", [("gelu", None), ("swish", None), ("leaky_relu", -0.5),
                                              ("prelu", -0.3), ("elu", 0.5)])
def test_saturation_counts_small_derivatives_of_either_sign(backend, activation, param):
    # saturated: |phi'| below 1 % of the largest |phi'|. GELU (phi' down to -0.13) and swish
    # (-0.10) pass real gradients where phi' < 0, as does a negative slope (|phi'| = 0.5); the
    # kernels counted every phi' < 0 (GELU 30 % where 3 % are saturated)
    stack = gb.Stack(depth=3, width=64, activation=activation, activation_param=param, init="he_normal")
    params, x, _ = _problem(stack, batch=16)
    res = gb.backprop(stack, params, x, backend=backend)
    _, s = naive.forward(stack, _as_dict(params), x)
    grid = np.linspace(-10.0, 10.0, 200_001)
    bound = 0.01 * np.abs(naive.dphi(activation, grid, stack.act_param)).max()
    for l in range(stack.depth):
        want = np.mean(np.abs(naive.dphi(activation, s["zs"][l], stack.act_param)) < bound)
        assert res.saturation[l] == pytest.approx(want, abs=1.5 / (16 * 64))  # a unit at the bound may flip
    if activation in ("gelu", "swish"):
        assert res.saturation[0] < 0.1
    elif activation != "elu":  # ELU (phi' = alpha e^z > 0): a control whose count did not change
        assert res.saturation[0] == 0.0


@pytest.mark.parametrize("backend", gb.backends())
@pytest.mark.parametrize("activation", ["leaky_relu", "prelu"])
def test_a_slope_of_one_percent_is_not_saturated_in_either_dtype(backend, activation):
    # |phi'| is 1 or the slope 0.01, exactly 1 % of the maximum: not below it. float32 holds the
    # slope as 0.0099999998 and compared it with the float64 bound 0.01 (50 % "saturated")
    for dtype in ("float64", "float32"):
        stack = gb.Stack(depth=3, width=8, activation=activation, activation_param=0.01, dtype=dtype)
        params, x, _ = _problem(stack, batch=4)
        assert np.all(gb.backprop(stack, params, x, backend=backend).saturation == 0.0), dtype


def test_dead_relu_layer_is_reported_and_gradients_are_exact_zeros():
    stack = gb.Stack(depth=5, width=8, activation="relu", init="he_normal", sigma_b=0.0)
    params = gb.init_params(stack, seed=0)
    params.b[2] = -1e3  # every unit of layer 2 dead for any input
    params.b[3:] = 0.5  # layers above still carry a signal from their biases
    x = gb.gaussian_input(stack, batch=4, seed=1)
    res = gb.backprop(stack, params, x, backend="numpy")
    assert res.dead[2] == 1.0
    # below the dead layer no signal arrives; layer 3 sees h_3 = 0 so dW_3 = dz^T h_3 = 0 too
    assert np.all(res.grads.W.to_float()[:4] == 0)
    assert np.all(np.isneginf(res.grad_norm.log10()[:4]))
    assert np.isfinite(res.grad_norm.log10()[4])
    assert np.all(res.grads.b.to_float()[:3] == 0) and np.any(res.grads.b.to_float()[3] != 0)


@pytest.mark.usefixtures("plain_biased_forward")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_first_nonfinite_layer_forward_and_backward():
    stack = gb.Stack(depth=12, width=4, activation="identity", sigma_w=1e40, sigma_b=1.0)
    params, x, _ = _problem(stack)
    res = gb.backprop(stack, params, x, backend="numpy")
    # with a bias and no exponents (plain_biased_forward) h grows ~1e15 per layer and overflows
    hs = naive.forward(stack, _as_dict(params), x)[1]["hs"]
    first = next(l for l in range(stack.depth) if not np.all(np.isfinite(hs[l + 1])))
    assert res.first_nonfinite_forward == first
    assert res.first_nonfinite_backward is not None


def test_noncontiguous_inputs_are_accepted_and_give_the_same_result():
    stack = gb.Stack(depth=3, width=4, activation="tanh")
    params, x, _ = _problem(stack)
    ref = gb.backprop(stack, params, x, backend="numpy")
    x_nc = np.asfortranarray(x)
    W_nc = np.ascontiguousarray(params.W.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert not x_nc.flags.c_contiguous and not W_nc.flags.c_contiguous
    p2 = gb.Params(**(dict(params.items()) | {"W": W_nc}))
    got = gb.backprop(stack, p2, x_nc, backend="numpy")
    np.testing.assert_array_equal(got.grads.W.mantissa, ref.grads.W.mantissa)
    assert got.loss == ref.loss


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_float32_agrees_with_float64(activation):
    s64 = gb.Stack(depth=20, width=12, activation=activation, init="xavier_normal")
    s32 = s64.replace(dtype="float32")
    p64 = gb.init_params(s64, 0)
    p32 = gb.Params(**{n: a.astype(np.float32) for n, a in p64.items()})
    x64 = gb.gaussian_input(s64, 6, 1)
    r64 = gb.backprop(s64, p64, x64, backend="numpy")
    r32 = gb.backprop(s32, p32, x64.astype(np.float32), backend="numpy")
    np.testing.assert_allclose(r32.grad_norm.log10(), r64.grad_norm.log10(), atol=1e-4 * 20)
