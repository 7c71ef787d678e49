"""ELU and SELU at a large forward exponent: a sample whose every unit is negative there.

With forward rescaling a row of activations is a mantissa at an exponent f. ELU's and SELU's
negative side tends to -alpha (SELU: -lambda alpha), whose mantissa at f is -alpha 2^-f: subnormal
from f ~ 1022 (float32: 126), 0 from f ~ 1075 (150). Such a row read 0 on every backend, and the
sample's loss and gradients with it: a width-1 zero-bias ELU stack with h_1 = 1e30 then z_2 =
-1e30 in float32 read the loss 0, not 0.1998 (a reviewer's case); a 200-layer width-6 ELU stack at
sigma_w = 8 in float32 read loss 0 and "NO GRADIENT", where mpmath has loss 10^9.61. Checked
against closed forms and mpmath (tests/naive_mp.py), never against gradbench's own output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradbench as gb
from tests.naive_mp import chain

BACKENDS = gb.backends()
SELU = (1.0507009873554804934193349852946, 1.6732632423543772848170429916717)  # lambda, alpha
# log10 of gradbench's reach: a value below 2^(-2^62) is beyond any int64 exponent and reads 0
REACH_LOG10 = -(2.0**62) * math.log10(2.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, big", [("float64", 1e300), ("float64", 2.0**520),
                                        ("float32", 1e30), ("float32", 2.0**68)])
@pytest.mark.parametrize("activation", ["elu", "selu"])
def test_a_row_saturated_at_a_large_exponent_keeps_its_value(activation, dtype, big, backend):
    """h_1 = big^2 (past the float range: 1e600, 2^1040, 1e60, 2^136), z_2 = -h_1, so
    h_2 = -alpha (lambda alpha), h_3 = lambda alpha expm1(h_2), loss h_3^2 / 2. Mantissas at the
    row's exponent: 0 for 1e300 and 1e30, subnormal (digits lost) for 2^520 and 2^68."""
    stack = gb.Stack(depth=3, width=1, activation=activation, dtype=dtype)
    params = gb.Params(W=np.array([[[big]], [[-1.0]], [[1.0]]], dtype), b=np.zeros((3, 1), dtype),
                       gamma=np.ones((3, 1), dtype), beta=np.zeros((3, 1), dtype), slope=np.zeros(3, dtype))
    res = gb.backprop(stack, params, np.array([[big]], dtype), backend=backend)
    lam, alpha = (1.0, stack.act_param) if activation == "elu" else SELU
    h2 = -lam * alpha
    h3 = lam * alpha * math.expm1(h2)
    dz3 = h3 * lam * alpha * math.exp(h2)  # dL/dh_3 = h_3, phi'(z_3) = lambda alpha e^z_3
    rtol = 1e-12 if dtype == "float64" else 2e-6
    assert res.loss == pytest.approx(0.5 * h3 * h3, rel=rtol), res.loss
    assert float(res.grads.W.to_float()[2, 0, 0]) == pytest.approx(dz3 * h2, rel=rtol)  # dW_2 = dz_3 h_2
    assert float(res.grads.b.to_float()[2, 0]) == pytest.approx(dz3, rel=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation, dtype, depth, width, sigma_w", [
    ("elu", "float32", 200, 6, 8.0), ("selu", "float32", 200, 6, 8.0),
    ("elu", "float64", 400, 8, 1e10), ("selu", "float64", 400, 8, 1e10)])
def test_deep_zero_bias_elu_and_selu_stacks_follow_mpmath(activation, dtype, depth, width, sigma_w, backend):
    """Zero-bias stacks whose samples pass through all-negative layers at huge exponents (a
    reviewer's cases: loss 10^9.612 and 10^3064.27 by mpmath, read 0 with "NO GRADIENT" before).
    Every layer's ||dW|| against mpmath on the same weights: to rounding in float64; in float32 to
    L eps of the exponent, relative (a pre-activation of ~1e11, rounded in float32 layer after
    layer, moves e^z by ~10^6 of its 10^-4e11: Numba's and C's sums differ as much), and 0 only
    where mpmath's value lies beyond 2^(-2^62)."""
    stack = gb.Stack(depth=depth, width=width, activation=activation, sigma_w=sigma_w, dtype=dtype)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1)
    loss, gW, gh = chain(activation, stack.act_param, params.W, x)
    gW = np.array(gW)
    res = gb.backprop(stack, params, x, backend=backend)
    got = res.grad_norm.log10()
    f64 = dtype == "float64"
    assert float(res.loss_exact.log10()) == pytest.approx(loss, abs=1e-9 if f64 else 2e-6)
    reach = np.isfinite(gW) & (gW > REACH_LOG10)
    assert reach.sum() >= 45, reach.sum()  # the cases have gradients within reach to compare
    err = np.abs(got[reach] - gW[reach])
    # float32: L eps relative (the rounding of each layer's sums, compounded along the chain)
    bound = 1e-9 if f64 else depth * np.finfo(np.float32).eps * np.maximum(1.0, np.abs(gW[reach]))
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (int(np.flatnonzero(reach)[worst]), got[reach][worst], gW[reach][worst])
    assert np.all(np.isneginf(got[~reach])), got[~reach]  # beyond the reach (or mpmath's 0): 0
