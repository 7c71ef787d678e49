"""Rows of dz far from 1 (reference.far_rows): brought to [0.5, 1) by a power of two before
dz W_l, so that the product neither under- nor overflows.

Review 51: tanh with sigma_w = 1e-30 and sigma_b = 1000 in float32 (depth 30, width 4) read
||dL/dh_l|| = 0 from layer 26 down on every backend, where the exact chain (mpmath) has
10^-1015.37 there and 10^-7354.35 for ||dW_0||; the report blamed a tanh' below 2^(-2^62), at
|z| ~ 10^3. A row of tanh'(z ~ 23) ~ 10^-20 stayed above the saturated-derivative rescue's
2^-100 and then times weights of 10^-30 underflowed float32 in the product. float64 at
sigma_w = 1e-100 read 0 from the top layer down (mpmath 10^-362.58). Checked here against
the plain chain rule in mpmath (tests/naive_mp.py), which has no exponent limit. (Not PReLU,
whose slope gradient shares dW's exponent; nor batch norm, whose rows share one exponent.)
"""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from tests.naive_mp import chain

BACKENDS = gb.backends()
_MP: dict = {}


def _case(activation, dtype, sigma_w, sigma_b, param=None, depth=30, width=4, batch=2):
    kw = {} if param is None else dict(activation_param=param)
    stack = gb.Stack(depth=depth, width=width, activation=activation, sigma_w=sigma_w, sigma_b=sigma_b,
                     dtype=dtype, **kw)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, batch, 1)
    key = (stack, params.W.tobytes(), params.b.tobytes(), x.tobytes())
    if key not in _MP:
        _MP[key] = chain(activation, stack.act_param, params.W, x, b=params.b)
    return stack, params, x, _MP[key]


# float32's products round at 2^-24 a step and the chain compounds them; float64's at 2^-53
TOL = {"float32": 2e-4, "float64": 1e-9}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, sigma_w", [("float32", 1e-30), ("float64", 1e-100)])
def test_tiny_weights_beside_large_biases_keep_every_layer(backend, dtype, sigma_w):
    stack, params, x, (lo, gW, gh) = _case("tanh", dtype, sigma_w, 1000.0)
    res = gb.backprop(stack, params, x, backend=backend)
    got_w, got_h = res.grad_norm.log10(), res.signal_norm.log10()
    assert np.all(np.isfinite(got_w)) and np.all(np.isfinite(got_h)), (got_w, got_h)
    np.testing.assert_allclose(got_w, gW, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(got_h, gh, rtol=0, atol=TOL[dtype])
    assert min(gh) < -1000  # far beyond either dtype: only the carried exponents hold it


@pytest.mark.parametrize("backend", BACKENDS)
def test_leaky_rows_far_below_one(backend):
    """float32 leaky ReLU with slope 1e-30 whose units are all negative (biases ~ -30 against
    weights of 1e-20): dz is the slope times the signal, ~2^-100, and dz W_l ~2^-166 underflowed
    to 0 (every layer below read 0; the chain has 10^-629 at layer 0)."""
    stack, params, x, _ = _case("leaky_relu", "float32", 1e-20, 30.0, param=1e-30, depth=12)
    params.b[...] = -np.abs(params.b)  # every unit negative: every phi' is the slope
    lo, gW, gh = chain("leaky_relu", stack.act_param, params.W, x, b=params.b)
    res = gb.backprop(stack, params, x, backend=backend)
    np.testing.assert_allclose(res.grad_norm.log10(), gW, rtol=0, atol=TOL["float32"])
    np.testing.assert_allclose(res.signal_norm.log10(), gh, rtol=0, atol=TOL["float32"])
    assert min(gh) < -600
