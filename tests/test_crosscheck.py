"""The shared cross-backend suite: every backend against the NumPy reference, for every option.

Parametrised over :func:`gradbench.backends.backends` minus "numpy", so a new backend is
checked here as soon as it is registered. Three checks per problem (``check_problem``):

1. free running, through :func:`gradbench.backprop`: every field of the Result (gradients with
   exponents, loss, signal and gradient norms, statistics, first non-finite layers) within
   ``TOL[dtype]["stack"]`` times the growth of the chain, measured independently with the
   reference (an input perturbation and a float32 run); chaotic stacks (growth too large) skip only this check;
2. the backward pass on identical forward values (the reference's H, Z, ...): linear in the
   signal, so well conditioned even when the forward is chaotic; held at the stack tolerance;
3. layer by layer: each layer (each residual group) fed the reference's own input,
   ``TOL[dtype]["layer"]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradbench as gb
from gradbench import engine
from gradbench import reference as R
from gradbench.backends import get_backend
from tests.helpers import (
    MAX_STACK_RTOL, TOL, assert_bias_under_batchnorm, backward_growth, assert_equal_ints, assert_fractions, assert_true_values, backward_arrays,
    bn_param_scale, chain_growth, compare_results, forward_arrays, other_backends, problem, run_backward, run_forward,
    slice_params,
)

BACKENDS = other_backends()


def _flips(dtype, count, growth=1.0):
    if dtype == "float64":
        return 0 if growth <= 1e3 else 1
    return TOL[dtype]["flips"] + int(0.01 * count)


def _h0(stack, params, x):
    return x if params.W_in is None else (x @ params.W_in.T + params.b_in).astype(stack.dtype)


def _as64(fwd):
    return {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in fwd.items()}


def _compare_backward(backend, stack, fwd, rb, gbk, rt):
    dt = stack.dtype
    exact = dt == "float64"
    e_w = rb["sig_e"][1:] + fwd["fexp"][:-1]
    assert_true_values(backend, "backward: signal norm", gbk["sig_m"], gbk["sig_e"], rb["sig_m"], rb["sig_e"], rt,
                       exact_exponents=exact)
    assert_true_values(backend, "backward: dL/dh_0", gbk["G"][None], gbk["sig_e"][:1], rb["G"][None], rb["sig_e"][:1], rt)
    if stack.batch_norm:
        assert_bias_under_batchnorm(backend, "backward: db", gbk["db"], gbk["sig_e"][1:], rb["dbeta"],
                                    rb["dgamma"], rb["sig_e"][1:], dt)
    assert_true_values(backend, "backward: ||dW||", gbk["gnorm_m"], gbk["gnorm_e"], rb["gnorm_m"], rb["gnorm_e"], rt)
    for name in ("dW", "dgamma", "dbeta", "dslope") + (() if stack.batch_norm else ("db",)):
        ge = gbk["sig_e"][1:] + (fwd["fexp"][:-1] if name in ("dW", "dslope") else 0)
        re = e_w if name in ("dW", "dslope") else rb["sig_e"][1:]
        floor = bn_param_scale(rb["dgamma"], rb["dbeta"]) if name in ("dgamma", "dbeta") else None
        assert_true_values(backend, f"backward: {name}", gbk[name], ge, rb[name], re, rt, floor=floor)
    assert_equal_ints(backend, "backward: info[1] (first non-finite signal)", gbk["info"][1], rb["info"][1])


_REF_CACHE: dict = {}  # the reference's side of check_problem, shared by every backend


def _key(stack, params, x, t, seed, max_chunks):
    h = hash((x.tobytes(), None if t is None else t.tobytes(), seed, max_chunks)
             + tuple(a.tobytes() for _, a in params.items()))
    return (stack, x.shape, h)


def _reference_side(stack, params, x, t, seed, max_chunks):
    key = _key(stack, params, x, t, seed, max_chunks)
    if key in _REF_CACHE:
        return _REF_CACHE[key]
    dt, L = stack.dtype, stack.depth
    B, N = x.shape[0], stack.width
    out = dict(ref=gb.backprop(stack, params, x, t, backend="numpy"))
    out["growth"], out["kappa"] = chain_growth(stack, params, x, t)
    out["rescale"] = rescale = engine.can_rescale_forward(stack, params)
    out["fwd"] = fwd = run_forward(R, forward_arrays(stack, params, _h0(stack, params, x), 0, rescale))
    rng = np.random.default_rng(seed + 17)
    out["G"] = G = rng.standard_normal((B, N)).astype(dt).astype(np.float64)
    out["top"] = top = int(rng.choice([0, 0, -3000]))
    out["rb"] = run_backward(R, backward_arrays(stack, fwd, G, top))
    out["grow_b"] = backward_growth(R, stack.replace(dtype="float64"), _as64(fwd), G, top)
    c = stack.residual or 1
    starts = list(range(0, L, c))
    if len(starts) > max_chunks:
        starts = sorted(set(np.linspace(0, len(starts) - 1, max_chunks).astype(int)))
        starts = [s * c for s in starts]
    out["chunks"] = {}
    for a in starts:
        args = (stack, slice_params(params, a, a + c), fwd["H"][a], int(fwd["fexp"][a]), rescale)
        out["chunks"][a] = (args, run_forward(R, forward_arrays(*args)))
    while len(_REF_CACHE) >= 40:
        _REF_CACHE.pop(next(iter(_REF_CACHE)))
    _REF_CACHE[key] = out
    return out


def check_problem(backend, stack, params, x, t=None, *, max_chunks=24, seed=0):
    """The three checks of the module docstring; returns the measured growth of the chain."""
    mod = get_backend(backend)
    dt = stack.dtype
    tol = TOL[dt]
    L, B, N = stack.depth, x.shape[0], stack.width
    rs = _reference_side(stack, params, x, t, seed, max_chunks)

    # 1. free running
    ref, growth, kappa = rs["ref"], rs["growth"], rs["kappa"]
    got = gb.backprop(stack, params, x, t, backend=backend)
    # rounding injected at every layer, each amplified by up to the measured growth
    rtol = tol["stack"] * max(1.0, growth * np.sqrt(L), kappa / 30)  # ~30: a well-conditioned stack
    if rtol <= MAX_STACK_RTOL[dt]:
        compare_results(backend, got, ref, rtol, _flips(dt, B * N, growth),
                        exact_exponents=dt == "float64" and growth <= 1e3 and kappa <= 1e4)

    # 2. backward on the reference's forward values, from a random signal at a deep exponent
    fwd, rb = rs["fwd"], rs["rb"]
    gbk = run_backward(mod, backward_arrays(stack, fwd, rs["G"], rs["top"]))
    # rounding adds up along the chain (slowly) and is amplified where the backward cancels
    rt = tol["stack"] * max(1.0, L / 50, rs["grow_b"] / 30)  # ~30: a well-conditioned chain
    if rt <= MAX_STACK_RTOL[dt]:  # else only the layer-by-layer checks below say something
        _compare_backward(backend, stack, fwd, rb, gbk, rt)

    # 3. layer by layer (one residual group at a time), inputs taken from the reference
    c = stack.residual or 1
    lt = tol["layer"] * c
    for a, (args, r1) in rs["chunks"].items():
        g1 = run_forward(mod, forward_arrays(*args))
        e = r1["fexp"][1:]
        for name in ("H", "Z"):
            gm, rm = (g1[name][1:], r1[name][1:]) if name == "H" else (g1[name], r1[name])
            ee = e if name == "H" else np.zeros(c, dtype=np.int64)
            ge = g1["fexp"][1:] if name == "H" else ee
            assert_true_values(backend, f"layer forward: {name}", gm, ge, rm, ee, lt, layer_offset=a)
        if stack.batch_norm:
            # the batch mean may cancel to ~0: measure it against the units' spread 1/rstd
            spread = np.max(1.0 / np.abs(r1["bn_rstd"].astype(float)), axis=1)
            for name, floor in (("bn_mean", spread), ("bn_rstd", None)):
                assert_true_values(backend, f"layer forward: {name}", g1[name], np.zeros(c, np.int64), r1[name],
                                   np.zeros(c, np.int64), lt, layer_offset=a, floor=floor)
        assert_equal_ints(backend, f"layer {a} forward: fexp", g1["fexp"], r1["fexp"])
        assert_equal_ints(backend, f"layer {a} forward: info[0]", g1["info"][0], r1["info"][0])
        sd = r1["act_std"]
        for name, scale in (("act_mean", np.abs(r1["act_mean"]) + sd), ("act_std", np.abs(r1["act_mean"]) + sd)):
            d = np.abs(g1[name] - r1[name])
            ok = (d <= lt * scale) | (np.isnan(g1[name]) & np.isnan(r1[name])) | (g1[name] == r1[name])
            assert np.all(ok), (f"[{backend}] layer {a + int(np.argmin(ok))} forward: {name} {g1[name]} "
                                f"vs reference {r1[name]} (tolerance {lt:.3g})")
        assert_fractions(backend, "layer forward: saturation", g1["saturation"], r1["saturation"], B * N,
                         _flips(dt, B * N), layer_offset=a)
        assert_fractions(backend, "layer forward: dead", g1["dead"], r1["dead"], N, _flips(dt, N), layer_offset=a)
    return growth, kappa


# ------------------------------------------------------------------ property-based grid
@st.composite
def stacks(draw):
    dtype = draw(st.sampled_from(["float64", "float64", "float32"]))
    activation = draw(st.sampled_from(gb.ACTIVATIONS))
    kind = draw(st.sampled_from(["tiny"] * 12 + ["medium"] * 5 + ["deep"]))
    if kind == "tiny":
        depth = draw(st.integers(1, 6))
        width = draw(st.one_of(st.integers(1, 24), st.integers(25, 256)))
    elif kind == "medium":
        depth = draw(st.integers(7, 80))
        width = draw(st.integers(1, 48))
    else:
        depth = draw(st.sampled_from([300, 1000, 2000]))  # 2000: the reference takes ~1 s
        width = draw(st.integers(1, 8))
    batch = draw(st.integers(1, 64 if width <= 64 else 12))
    k = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
    if k:
        depth = max(k, depth - depth % k)
    bn = draw(st.booleans())
    if bn and batch == 1:  # batch norm at batch 1 is refused (degenerate statistics)
        batch = 2
    if activation == "identity" and bn and not k:
        # 0.5 ||xhat||^2 is the same for any input: its exact gradient is 0 and both sides
        # compute pure rounding noise. A residual path keeps the problem well posed.
        k = 1
    clip = draw(st.sampled_from([None, None, "value", "norm"]))
    loss = draw(st.sampled_from(["sum_squares"] * 4 + ["mse", "bce", "softmax_ce"]))
    kw = dict(
        depth=depth, width=width, activation=activation, init=draw(st.sampled_from(gb.INITS)),
        sigma_b=draw(st.sampled_from([0.0, 0.0, 0.1])), batch_norm=bn, residual=k,
        residual_scale=draw(st.sampled_from([1.0, 0.5])), clip=clip,
        clip_threshold=draw(st.sampled_from([1e-3, 0.1, 10.0])),
        clip_on=draw(st.sampled_from(["signal", "signal", "layer", "global"])), loss=loss,
        output_dim=draw(st.integers(2, 3)), dtype=dtype,
    )
    if loss != "sum_squares" and draw(st.booleans()):
        kw["input_dim"] = draw(st.integers(1, 9))
    if activation in ("leaky_relu", "prelu", "elu") and draw(st.booleans()):
        kw["activation_param"] = draw(st.sampled_from([0.2, 0.7, 1.5]))
    return gb.Stack(**kw), batch, draw(st.integers(0, 2**16))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=stacks())
def test_random_stacks_agree_with_reference(backend, case):
    stack, batch, seed = case
    params, x, t = problem(stack, batch, seed)
    check_problem(backend, stack, params, x, t, seed=seed)


# ------------------------------------------------------------------ a seeded grid of every option
GRID = (
    [dict(activation=a) for a in gb.ACTIVATIONS]
    + [dict(activation=a, batch_norm=True, residual=2) for a in gb.ACTIVATIONS]
    + [dict(activation="tanh", init=i) for i in gb.INITS]
    + [
        dict(activation="prelu", batch_norm=True, activation_param=0.3),
        dict(activation="relu", residual=3, residual_scale=0.5, init="he_normal", sigma_b=0.1, depth=9),
        dict(activation="tanh", clip="value", clip_threshold=1e-3, residual=2),
        dict(activation="tanh", clip="norm", clip_threshold=1e-2, batch_norm=True),
        dict(activation="relu", clip="value", clip_threshold=0.05, clip_on="layer", init="he_normal"),
        dict(activation="gelu", clip="norm", clip_threshold=0.05, clip_on="global"),
        dict(activation="relu", init="he_normal"),  # zero bias: the forward pass is rescaled too
        dict(activation="leaky_relu", residual=2, sigma_w=0.3, depth=40),  # rescaled, vanishing
        dict(activation="sigmoid", loss="bce", output_dim=2, input_dim=3),
        dict(activation="selu", loss="softmax_ce", output_dim=3, batch_norm=True),
    ]
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", GRID, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_every_option_agrees_with_reference(backend, dtype, case):
    kw = dict(depth=8, width=7, init="xavier_normal", dtype=dtype) | case
    stack = gb.Stack(**kw)
    params, x, t = problem(stack, batch=5, seed=3)
    check_problem(backend, stack, params, x, t)


# ------------------------------------------------------------------ nasty inputs
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_saturated_units_with_z_about_300(backend, dtype, activation):
    stack = gb.Stack(depth=6, width=8, activation=activation, sigma_w=300.0, sigma_b=1.0, dtype=dtype)
    params, x, _ = problem(stack, batch=4, seed=5, x_scale=300.0)
    ref = gb.backprop(stack, params, x, backend="numpy")
    assert ref.saturation.min() > 0.9  # the test means what it says
    if activation == "sigmoid" and dtype == "float64":  # phi'(-300) ~ 1e-130 is carried exactly
        assert ref.grad_norm.log10()[0] < -40
    check_problem(backend, stack, params, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_all_dead_relu_layer(backend, dtype):
    stack = gb.Stack(depth=6, width=8, activation="relu", init="he_normal", dtype=dtype)
    params = gb.init_params(stack, seed=0)
    params.b[2] = -1e3  # every unit of layer 2 dead for any input
    params.b[3:] = 0.5
    x = gb.gaussian_input(stack, batch=4, seed=1)
    ref = gb.backprop(stack, params, x, backend="numpy")
    assert ref.dead[2] == 1.0 and np.all(ref.grads.W.mantissa[:4] == 0)
    got = gb.backprop(stack, params, x, backend=backend)
    assert got.dead[2] == 1.0
    assert np.all(got.grads.W.mantissa[:4] == 0), f"[{backend}] dW below a dead layer must be exactly 0"
    check_problem(backend, stack, params, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [2, 6])  # batch 1 with batch norm is refused (degenerate)
def test_zero_variance_batchnorm_units(backend, dtype, batch):
    stack = gb.Stack(depth=5, width=6, activation="tanh", batch_norm=True, sigma_b=0.5, dtype=dtype)
    params = gb.init_params(stack, seed=2)
    params.W[:, :2, :] = 0  # units 0 and 1 of every layer: z = b, variance 0
    params.gamma[:] = 1.5
    params.beta[:] = 0.1
    x = gb.gaussian_input(stack, batch=batch, seed=3)
    ref = gb.backprop(stack, params, x, backend="numpy")
    assert np.isfinite(ref.loss)
    check_problem(backend, stack, params, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_of_one(backend, dtype):
    stack = gb.Stack(depth=12, width=9, activation="swish", residual=3, dtype=dtype)
    params, x, _ = problem(stack, batch=1, seed=4)
    check_problem(backend, stack, params, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_3000_layer_sigmoid_exponents_agree_where_float64_underflows(backend):
    stack = gb.Stack(depth=3000, width=4, activation="sigmoid", init="xavier_normal")
    params, x, _ = problem(stack, batch=2, seed=6)
    growth = check_problem(backend, stack, params, x, max_chunks=8)
    assert growth[0] < 1e3  # an ordered chain: the free-running comparison was held
    ref = _reference_side(stack, params, x, None, 0, 8)["ref"]
    got = gb.backprop(stack, params, x, backend=backend)
    assert ref.grad_norm.log10()[0] < -400  # far below float64's smallest number
    assert_equal_ints(backend, "signal_norm exponents", got.signal_norm.exponent, ref.signal_norm.exponent)
    assert_equal_ints(backend, "grads.W exponents", got.grads.W.exponent, ref.grads.W.exponent)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_1200_layer_linear_stack_rescales_forward(backend, dtype):
    stack = gb.Stack(depth=1200, width=3, activation="identity", sigma_w=0.6, dtype=dtype)
    params, x, _ = problem(stack, batch=2, seed=7)
    ref = gb.backprop(stack, params, x, backend="numpy")
    assert ref.forward_rescaled and np.all(ref.output.exponent < -1100)  # one exponent per sample
    got = gb.backprop(stack, params, x, backend=backend)
    assert np.array_equal(got.output.exponent, ref.output.exponent)
    check_problem(backend, stack, params, x, max_chunks=16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ["tanh", "gelu", "swish", "elu", "selu"])
def test_deep_zero_bias_stacks_rescale_forward(backend, dtype, activation):
    """Zero-bias stacks of activations with phi(0) = 0 carry forward exponents too (phi_scaled):
    identical exponents, mantissas to the layer tolerance, far below float64 and float32."""
    # float32: 600 layers reach 10^-45 already; over 1500 its rounding (0.3 % by then) is more
    # than the free-running comparison's model allows where db cancels over the batch
    stack = gb.Stack(depth=1500 if dtype == "float64" else 600, width=4, activation=activation, dtype=dtype)
    params, x, _ = problem(stack, batch=4, seed=9)
    ref = gb.backprop(stack, params, x, backend="numpy")
    got = gb.backprop(stack, params, x, backend=backend)
    assert ref.forward_rescaled and got.forward_rescaled
    assert_equal_ints(backend, "forward exponents", got.act_std.exponent, ref.act_std.exponent)
    check_problem(backend, stack, params, x, max_chunks=12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation, x_scale", [("gelu", 1e-250), ("tanh", 1e-30), ("leaky_relu", 1e250),
                                                  ("swish", 1e-20)])
def test_tiny_and_huge_inputs(backend, dtype, activation, x_scale):
    if dtype == "float32":
        x_scale = x_scale ** (30 / 250) if x_scale < 1 else 1e30
    stack = gb.Stack(depth=8, width=6, activation=activation, dtype=dtype)
    params, x, _ = problem(stack, batch=3, seed=10, x_scale=x_scale)
    check_problem(backend, stack, params, x)


def _assert_subnormal_layer_agrees(backend, stack, params, x, layer):
    """||dW_layer||, whose dW mantissas are float64 subnormals, is finite with the reference's
    exponent and verdict; check_problem holds the values (the backward on the reference's forward
    values and layer by layer to ~1e-12; free running to the chain's measured growth, when held)."""
    ref = gb.backprop(stack, params, x, backend="numpy")
    dW = np.abs(ref.grads.W.mantissa[layer])
    assert 0 < dW.max() < np.finfo(np.float64).tiny  # the test means what it says
    got = gb.backprop(stack, params, x, backend=backend)
    assert np.all(np.isfinite(got.grad_norm.mantissa)), f"[{backend}] grad_norm {got.grad_norm.log10()}"
    assert_equal_ints(backend, "grad_norm exponents", got.grad_norm.exponent, ref.grad_norm.exponent)
    assert gb.diagnose(got).verdict == gb.diagnose(ref).verdict
    check_problem(backend, stack, params, x)


@pytest.mark.usefixtures("plain_biased_forward")  # subnormal dW mantissas: a forward without exponents
@pytest.mark.parametrize("backend", BACKENDS)
def test_subnormal_weight_gradient_hand_set(backend):
    """b_0 = -716 puts h_1 = swish(-716) ~ 1e-308 at the subnormal boundary, so dW_1's entries
    are subnormal: its scaled norm needs 2^1025, not a finite double (Numba gave inf)."""
    stack = gb.Stack(depth=2, width=2, activation="swish", sigma_b=0.1)
    p = gb.init_params(stack, 0)
    W = np.zeros_like(p.W)
    W[1] = np.eye(2)
    b = p.b.copy()
    b[0] = -716.0
    b[1] = 1.0
    params = dataclasses.replace(p, W=W, b=b)
    x = np.array([[1.0, 1.0]])
    _assert_subnormal_layer_agrees(backend, stack, params, x, 1)


@pytest.mark.usefixtures("plain_biased_forward")  # subnormal dW mantissas: a forward without exponents
@pytest.mark.parametrize("backend", BACKENDS)
def test_subnormal_weight_gradient_orthogonal_swish(backend):
    """Initialised weights that reach a subnormal dW_21 on their own (Numba gave NaN there: 0 * inf)."""
    stack = gb.Stack(depth=40, width=2, activation="swish", init="orthogonal", sigma_w=2.0, sigma_b=0.1,
                     residual=2)
    params, x, _ = problem(stack, batch=1, seed=0)
    _assert_subnormal_layer_agrees(backend, stack, params, x, 21)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_saturated_tanh_chain(backend, dtype):
    """sigma_w = 50: most units saturated, derivatives down to 1e-17 (0 before, by cancellation)."""
    stack = gb.Stack(depth=60, width=8, activation="tanh", init="normal", sigma_w=50.0, dtype=dtype)
    params, x, _ = problem(stack, batch=3, seed=11)
    ref = gb.backprop(stack, params, x, backend="numpy")
    assert ref.saturation.mean() > 0.5 and np.all(np.isfinite(ref.grad_norm.log10()))
    check_problem(backend, stack, params, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chaotic_stack_is_checked_layer_by_layer(backend):
    """tanh with he init explodes rounding differences: only checks 2 and 3 can be held."""
    stack = gb.Stack(depth=400, width=24, activation="tanh", init="he_normal", sigma_w=2.0)
    params, x, _ = problem(stack, batch=8, seed=8)
    growth = check_problem(backend, stack, params, x, max_chunks=20)
    assert growth[0] * TOL["float64"]["stack"] > MAX_STACK_RTOL["float64"]  # chaotic indeed


@pytest.mark.usefixtures("plain_biased_forward")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_first_nonfinite_layers(backend):
    stack = gb.Stack(depth=12, width=4, activation="identity", sigma_w=1e40, sigma_b=1.0)
    params, x, _ = problem(stack, batch=4, seed=0)
    ref = gb.backprop(stack, params, x, backend="numpy")
    got = gb.backprop(stack, params, x, backend=backend)
    assert ref.first_nonfinite_forward is not None
    assert got.first_nonfinite_forward == ref.first_nonfinite_forward
    assert got.first_nonfinite_backward == ref.first_nonfinite_backward


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bit_reproducible_run_to_run(backend, dtype):
    stack = gb.Stack(depth=30, width=200, activation="gelu", batch_norm=True, residual=3, dtype=dtype)
    params, x, _ = problem(stack, batch=16, seed=9)
    a = gb.backprop(stack, params, x, backend=backend)
    b = gb.backprop(stack, params, x, backend=backend)
    for name, g in a.grads.items():
        np.testing.assert_array_equal(getattr(b.grads, name).mantissa, g.mantissa, err_msg=f"[{backend}] {name}")
    np.testing.assert_array_equal(a.act_mean.mantissa, b.act_mean.mantissa)
    np.testing.assert_array_equal(a.signal_norm.mantissa, b.signal_norm.mantissa)
