"""Batch norm whose squared deviations overflow the dtype (reference.batchnorm_far_columns).

Review 51: float32 batch norm at ``sigma_w = 1e20`` (|z - mean| ~ 1e20, its square beyond
float32's 3.4e38) read a loss of 10^-0.126 where the exact one is 10^0.465, with gradient norms
that differed from backend to backend, and no flag; at ``1e30`` (float64 ``1e160``) the loss
and every gradient read 0. Batch norm's output does not depend on the scale of z, so the exact
chain is O(1) there: checked against the plain chain rule in mpmath (tests/naive_mp.bn_chain).
"""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from tests.naive_mp import bn_chain

BACKENDS = gb.backends()
_MP: dict = {}
TOL = {"float32": 1e-4, "float64": 1e-10}  # in log10, i.e. relative / 2.3


def _case(dtype, sigma_w, activation="tanh"):
    stack = gb.Stack(depth=3, width=4, activation=activation, sigma_w=sigma_w, sigma_b=0.5, batch_norm=True,
                     dtype=dtype)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 3, 1)
    key = (stack, params.W.tobytes(), x.tobytes())
    if key not in _MP:
        _MP[key] = bn_chain(activation, stack.act_param, params.W, params.b, params.gamma, params.beta,
                            stack.bn_eps, x)
    return stack, params, x, _MP[key]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, sigma_w", [("float32", 1e20), ("float32", 1e30), ("float64", 1e160),
                                            ("float64", 1e250), ("float32", 1.0), ("float64", 1.0)])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_batch_norm_at_any_weight_scale_is_the_exact_chain(backend, dtype, sigma_w, activation):
    stack, params, x, (loss, gW, gh) = _case(dtype, sigma_w, activation)
    res = gb.backprop(stack, params, x, backend=backend)
    np.testing.assert_allclose(np.log10(float(res.loss)), loss, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(res.grad_norm.log10(), gW, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(res.signal_norm.log10()[:stack.depth], gh, rtol=0, atol=TOL[dtype])
    # batch norm makes the chain scale-free: dW_l carries 1/sigma_w, the loss none
    assert abs(gW[0] + np.log10(sigma_w)) < 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_the_overflowing_columns_change(backend):
    """One unit's weights 1e25 in float32 (its squares overflow), the others O(1): the other
    units keep the outputs and dW rows of a run without the big unit to the bit (batch norm acts
    per unit), and the big unit's are those of its unscaled self (batch norm is scale-free)."""
    stack = gb.Stack(depth=1, width=4, activation="tanh", batch_norm=True, bn_eps=1e-30, dtype="float32")
    params = gb.init_params(stack, 3)
    x = gb.gaussian_input(stack, 5, 4)
    plain = gb.backprop(stack, params, x, backend=backend)
    params.W[0, 2] *= np.float32(1e25)
    big = gb.backprop(stack, params, x, backend=backend)
    out, out0 = big.output.to_float(), plain.output.to_float()
    dW, dW0 = big.grads.W.to_float()[0], plain.grads.W.to_float()[0]
    keep = [0, 1, 3]
    np.testing.assert_array_equal(out[:, keep], out0[:, keep])
    np.testing.assert_array_equal(dW[keep], dW0[keep])
    np.testing.assert_allclose(out[:, 2], out0[:, 2], rtol=1e-5)
    np.testing.assert_allclose(dW[2] * 1e25, dW0[2], rtol=1e-4)


@pytest.mark.parametrize("dtype, sigma_w", [("float32", 1e20), ("float32", 1e10), ("float64", 1e160),
                                            ("float64", 1e100)])
def test_diagnosis_says_where_a_plain_batch_norm_overflows(dtype, sigma_w):
    """The run is exact; a plain batch norm in the run's dtype is not where the batch's squared
    deviations sum past its largest number: the diagnosis says so instead of "plain ... is fine
    here". Checked against a plain batch norm of layer 0's pre-activations in that dtype."""
    stack = gb.Stack(depth=4, width=8, activation="tanh", sigma_w=sigma_w, sigma_b=0.5, batch_norm=True, dtype=dtype)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 16, 1)
    z = x @ params.W[0].T + params.b[0]
    with np.errstate(over="ignore"):
        plain_inf = bool(np.isinf(((z - z.mean(axis=0)) ** 2).sum(axis=0)).any())
    text = str(gb.diagnose(gb.backprop(stack, params, x)))
    said = f"plain {dtype} would overflow batch norm's variance at layer 0" in text
    assert said == plain_inf, text
    assert plain_inf == (sigma_w > 1e19 if dtype == "float32" else sigma_w > 1e154)


def test_peers_know_a_plain_batch_norm_cannot_hold_it():
    """peers.representable (the benchmarks' guard before checking a peer) says a plain float32
    run cannot reproduce batch norm at sigma_w = 1e20, and the plain NumPy loop indeed misses the
    exact loss there (its variance is inf); at sigma_w = 1 it says nothing and the loop agrees."""
    from gradbench import peers
    for sigma_w, holds in ((1.0, True), (1e20, False)):
        stack = gb.Stack(depth=3, width=4, activation="tanh", sigma_w=sigma_w, sigma_b=0.5, batch_norm=True,
                         dtype="float32")
        params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 3, 1)
        ref = gb.backprop(stack, params, x, backend="numpy")
        why = peers.representable(stack, ref)
        assert (why is None) == holds, why
        with np.errstate(all="ignore"):
            got = peers.prepare("numpy-loop", stack, params, x)()
        close = np.isclose(got.loss, float(ref.loss), rtol=1e-4)
        assert close == holds, (got.loss, float(ref.loss))


def test_the_readme_numbers():
    """README "Where it stops": float32 tanh at sigma_w = 1e20, depth 3, width 4: loss 10^0.4655."""
    stack, params, x, (loss, _, _) = _case("float32", 1e20)
    assert round(loss, 4) == 0.4655
    assert round(float(np.log10(float(gb.backprop(stack, params, x).loss))), 4) == 0.4655
