"""One power of two per sample in the stacks' forward pass (``frow``), every backend.

With forward rescaling (zero biases, no batch norm) the forward is row-separable: a call on a
batch must give each row the activations that row has alone (a call with that row only, its
exponent as ``fexp[0]``), however far apart the rows lie; the backward's sums over rows (dW,
dslope) are the rows' own sums at ``dw_e[l] + fexp[l]``. Rows enter 2^2000 apart (float32:
2^300), beyond any one exponent's reach. The engine's test is a reviewer's case, where one
exponent per layer for the batch had flushed a sample and read a loss 10^(3 10^16) off.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradbench as gb
from gradbench import reference
from gradbench.backends import get_backend
from tests.helpers import (TOL, assert_true_values, backward_arrays, forward_arrays, run_backward, run_forward,
                           slice_params)

CASES = {  # zero biases throughout: the rescaled forward
    "tanh": dict(activation="tanh", sigma_w=2.0),
    "gelu": dict(activation="gelu", sigma_w=1.5),
    "gelu-tail": dict(activation="gelu", sigma_w=20.0),  # rows deep in GELU's tail: rescued one by one
    "swish": dict(activation="swish", sigma_w=1.7),
    "elu": dict(activation="elu", sigma_w=1.3),
    "selu": dict(activation="selu", init="lecun_normal"),
    "leaky": dict(activation="leaky_relu", init="he_normal"),
    "prelu": dict(activation="prelu", init="he_normal"),
    "relu-residual": dict(activation="relu", init="he_normal", residual=2),
    "gelu-residual": dict(activation="gelu", sigma_w=1.2, residual=3, residual_scale=0.5),
    "tanh-value-clip": dict(activation="tanh", sigma_w=2.0, clip="value", clip_threshold=0.05, clip_on="signal"),
}
# deep in GELU's tail phi(z) ~ e^(-z^2/2): the last-bit difference between a batch's product h W^T
# and one row's (BLAS orders the sums differently) is multiplied by z^2 ~ 10^5..10^8 in ln phi
LOOSE = {"gelu-tail": 1e5}
FROW0 = {"float64": [0, -2000, -30, -7], "float32": [0, -300, -12, -3]}
FEXP0 = 3


def _input(stack):
    x = np.random.default_rng(5).standard_normal((4, stack.width))
    x = np.ldexp(x, -np.frexp(np.max(np.abs(x), axis=1))[1][:, None])  # each row normalised
    return np.ascontiguousarray(x, dtype=stack.np_dtype)


def _forward(backend, stack, params, x, frow0, fexp0=FEXP0):
    return run_forward(get_backend(backend), forward_arrays(stack, params, x, fexp0=fexp0, rescale=True,
                                                            frow0=frow0))


def _rows_of(a):
    """(L+1, B, N) mantissas and their exponents fexp + frow as ((L+1) B, N) and ((L+1) B,)."""
    H, e = a["H"], a["fexp"][:, None] + a["frow"]
    return H.reshape(-1, H.shape[-1]), e.reshape(-1)


def _problem(name, dtype, depth=6):
    stack = gb.Stack(depth=depth, width=5, dtype=dtype, **CASES[name])
    return stack, gb.init_params(stack, 1), _input(stack)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", gb.backends())
def test_each_row_has_the_forward_it_has_alone(backend, name, dtype):
    stack, p, x = _problem(name, dtype)
    frow0 = FROW0[dtype]
    got = _forward(backend, stack, p, x, frow0)
    rtol = TOL[dtype]["stack"] * LOOSE.get(name, 1)
    H = got["H"]
    live = np.any(H[1:] != 0, axis=2)
    # the contract: rows normalised, the layer's exponent its largest non-zero row's, rows of zeros 0
    m = np.max(np.abs(H[1:]), axis=2)
    assert np.all((m[live] >= 0.5) & (m[live] < 1)) and not np.any(got["frow"][1:][~live])
    assert np.all(np.max(np.where(live, got["frow"][1:], np.iinfo(np.int64).min), axis=1)[live.any(axis=1)] == 0)
    for i in range(len(x)):
        alone = _forward(backend, stack, p, x[i:i + 1], None, FEXP0 + frow0[i])
        gm, ge = got["H"][:, i], got["fexp"] + got["frow"][:, i]
        assert_true_values(backend, f"h_l of row {i}", gm, ge, alone["H"][:, 0], alone["fexp"] + alone["frow"][:, 0],
                           rtol)
        assert_true_values(backend, f"z_l of row {i}", got["Z"][:, i], ge[:-1], alone["Z"][:, 0],
                           alone["fexp"][:-1] + alone["frow"][:-1, 0], rtol)
    # the rows 2^2000 below stayed (one exponent for the batch flushed them to 0)
    assert np.all(np.any(H[-1] != 0, axis=1)) or stack.dead_below_zero


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", [b for b in gb.backends() if b != "numpy"])
def test_backends_follow_the_reference_with_rows_far_apart(backend, name, dtype):
    """Every backend against the reference on the same input: forward values, exponents and
    statistics, then the backward on the reference's forward (dW at dw_e + fexp)."""
    stack, p, x = _problem(name, dtype)
    want = _forward("numpy", stack, p, x, FROW0[dtype])
    rtol = TOL[dtype]["layer"] * 10 * stack.depth
    if name not in LOOSE:  # free-running; in GELU's tail rounding is amplified: layer by layer only
        got = _forward(backend, stack, p, x, FROW0[dtype])
        assert_true_values(backend, "h rows", *_rows_of(got), *_rows_of(want), rtol)
        if dtype == "float64":  # float32: a last-bit difference may move a row's normalisation by one
            assert np.array_equal(got["fexp"], want["fexp"]) and np.array_equal(got["frow"], want["frow"])
        for k in ("act_mean", "act_std"):
            assert got[k] == pytest.approx(want[k], rel=rtol, abs=rtol), k
        assert np.array_equal(got["saturation"], want["saturation"]) or dtype == "float32"
    for l in range(stack.depth):  # each layer on the reference's input to it (residual groups whole)
        a = l - l % stack.residual if stack.residual else l
        if stack.residual and l != a:
            continue
        b = a + (stack.residual or 1)
        one = run_forward(get_backend(backend), forward_arrays(stack, slice_params(p, a, b), want["H"][a],
                                                               fexp0=int(want["fexp"][a]), rescale=True,
                                                               frow0=want["frow"][a]))
        ref = {k: v[a:b + 1] for k, v in want.items() if k in ("H", "fexp", "frow")}
        # in GELU's tail ln phi(z) ~ -z^2 / 2: one ulp of z is z^2 ulps of phi, however it is evaluated
        z = np.ldexp(want["Z"][a:b].astype(np.float64), np.clip(want["fexp"][a:b, None] + want["frow"][a:b], -2000,
                                                                 2000)[:, :, None])
        cond = float(np.max(np.square(z[np.isfinite(z)]), initial=1.0))
        assert_true_values(backend, f"h rows of layers {a}..{b - 1}", *_rows_of(one), *_rows_of(ref),
                           TOL[dtype]["layer"] * 10 + 4 * TOL[dtype]["eps"] * cond, layer_offset=a)
    G = np.random.default_rng(3).standard_normal(x.shape)
    G = np.ldexp(G, -np.frexp(np.max(np.abs(G), axis=1))[1][:, None]).astype(stack.np_dtype)
    z = np.ldexp(want["Z"].astype(np.float64), np.clip(want["fexp"][:-1, None] + want["frow"][:-1], -2000, 2000)[:, :, None])
    rtol += 4 * stack.depth * TOL[dtype]["eps"] * float(np.max(np.square(z[np.isfinite(z)]), initial=1.0))  # the tail's
    bw = run_backward(reference, backward_arrays(stack, want, G, 0))
    bg = run_backward(get_backend(backend), backward_arrays(stack, want, G, 0))
    assert np.array_equal(bg["dz_e"], bw["dz_e"]) and np.array_equal(bg["dw_e"], bw["dw_e"])
    assert_true_values(backend, "dW", bg["dW"], bg["dw_e"] + bg["fexp"][:-1], bw["dW"], bw["dw_e"] + bw["fexp"][:-1],
                       rtol)
    assert_true_values(backend, "dL/dh_0 rows", bg["G"], bg["sig_e"][0] + bg["row_e"], bw["G"],
                       bw["sig_e"][0] + bw["row_e"], rtol)
    assert bg["gnorm_m"] == pytest.approx(bw["gnorm_m"], rel=rtol) and np.array_equal(bg["gnorm_e"], bw["gnorm_e"])
    if stack.activation == "prelu":
        assert_true_values(backend, "dslope", bg["dslope"][:, None], bg["dw_e"] + bg["fexp"][:-1],
                           bw["dslope"][:, None], bw["dw_e"] + bw["fexp"][:-1], rtol)


def _sum_at(parts, e):
    """sum of mantissa * 2**(exponent - e) over parts, in float64."""
    return sum(np.ldexp(np.asarray(m, dtype=np.float64), int(k) - e) for m, k in parts)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["tanh", "gelu", "prelu", "relu-residual", "gelu-tail"])
@pytest.mark.parametrize("backend", gb.backends())
def test_weight_gradients_are_the_rows_sums_at_dw_e(backend, name, dtype):
    """dW_l = sum over rows of dz_i^T h_i with h_i and dz_i at their own exponents: the batch's
    dW (at dw_e + fexp) is the sum of the row-alone calls' (the backward signal's rows enter
    with the exponents that make the products comparable: row i at -frow0[i], so every row's
    product lies within 2^40 of the others but the one 2^2000 below, which adds nothing)."""
    stack, p, x = _problem(name, dtype)
    frow0 = FROW0[dtype]
    fwd = _forward("numpy", stack, p, x, frow0)
    G = np.random.default_rng(4).standard_normal(x.shape)
    G = np.ldexp(G, -np.frexp(np.max(np.abs(G), axis=1))[1][:, None]).astype(stack.np_dtype)
    row_e = -np.array(fwd["frow"][-1])  # rows of h_L far apart: their signals the other way
    row_e[1] = 0  # ... but for the far row: its products stay 2^2000 below
    row_e -= row_e.max()

    def call(f, g, re):
        a = backward_arrays(stack, f, g, 0)
        a["row_e"][:] = re
        return run_backward(get_backend(backend), a)

    got = call(fwd, G, row_e)
    alone = []
    for i in range(len(x)):
        one = dict(fwd, H=np.ascontiguousarray(fwd["H"][:, i:i + 1]), Z=np.ascontiguousarray(fwd["Z"][:, i:i + 1]),
                   frow=np.ascontiguousarray(fwd["frow"][:, i:i + 1]))
        alone.append(call(one, G[i:i + 1], [row_e[i]]))
    rtol = TOL[dtype]["stack"]
    for l in range(stack.depth):
        e = int(got["dw_e"][l] + got["fexp"][l])
        parts = [(a["dW"][l], a["dw_e"][l] + a["fexp"][l]) for a in alone]
        want = _sum_at(parts, e)
        sizes = sorted(np.max(np.abs(_sum_at([q], e))) for q in parts)
        assert sizes[-2] > 1e-9 * sizes[-1]  # the rows' products lie within 2^40: the sum is not one row's
        assert_true_values(backend, f"dW[{l}] (the rows' sum)", got["dW"][l][None], np.array([e]), want[None],
                           np.array([e]), rtol)
        if stack.activation == "prelu":
            want = _sum_at([(a["dslope"][l], a["dw_e"][l] + a["fexp"][l]) for a in alone], e)
            assert abs(float(got["dslope"][l]) - want) <= rtol * max(abs(want), 1e-300), (backend, l)
    assert_true_values(backend, "dL/dh_0 rows", got["G"], got["sig_e"][0] + got["row_e"],
                       np.concatenate([a["G"] for a in alone]),
                       np.array([a["sig_e"][0] + a["row_e"][0] for a in alone]), rtol)


@pytest.mark.parametrize("backend", gb.backends())
def test_a_sample_far_below_the_other_keeps_its_loss_and_gradient(backend):
    """Zero-bias GELU at sigma_w = 20, depth 40, width 3, batch 2 (a reviewer's case): sample 0's
    activations fall to 10^-(3 10^16), sample 1's to 10^-2564.58 (mpmath's plain chain,
    tests/naive_mp.py). One exponent per layer for the batch flushed sample 1 to 0 on the way up
    and read the loss 10^-3.07e16; now the batch's loss is the samples' sum, sample 1's, and
    each sample's output and dL/dx are its run alone's."""
    from tests import naive_mp

    st = gb.Stack(depth=40, width=3, activation="gelu", sigma_w=20.0, init="normal")
    p = gb.init_params(st, 3)
    x = gb.gaussian_input(st, 2, 103)
    true_loss = float(naive_mp.chain("gelu", 0.0, p.W, x)[0])
    assert true_loss == pytest.approx(-2564.5758714514, abs=1e-6)
    res = gb.backprop(st, p, x, backend=backend)
    assert res.loss_exact.log10() == pytest.approx(true_loss, abs=1e-9)
    assert res.extras["forward_lost_samples"] == 0 and res.extras["lost_samples"] == 0
    out = res.output.log10()
    grad = res.input_grad.log10()
    for i in range(2):
        a = gb.backprop(st, p, np.ascontiguousarray(x[i:i + 1]), backend=backend)
        np.testing.assert_allclose(out[i], a.output.log10()[0], rtol=1e-12)
        np.testing.assert_allclose(grad[i], a.input_grad.log10()[0], rtol=1e-12)
    assert np.max(out[0]) < -1.5e16 and -1300 < np.max(out[1]) < -1280  # h_L: half the loss's decades
    assert math.isfinite(res.grad_norm.log10()[0])
    # checkpointed (one segment's activations and the rows' exponents at the checkpoints): the same bits
    seg = gb.backprop(st, p, x, backend=backend, checkpoint=8)
    assert np.array_equal(seg.grads.W.mantissa, res.grads.W.mantissa)
    assert np.array_equal(seg.grads.W.exponent, res.grads.W.exponent)
    assert np.array_equal(seg.output.exponent, res.output.exponent)
