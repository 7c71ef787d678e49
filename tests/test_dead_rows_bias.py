"""A sample whose every unit dies after huge activations, then meets a bias (reference.raise_rows).

Review 51: ReLU with biases carries one exponent per sample (the bias taken as b 2^-f at each
row's exponent f). A row of zeros (every unit dead) kept the exponent of the huge activations
it came from, ~2^1990 (float32 ~2^266) above the next layer's bias, so b 2^-f read 0 there and
the loss and every gradient read -inf, where the exact chain (mpmath) is finite: its z is the
bias itself. Any exponent holds a row of zeros; it is now put at the bias's floor.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from tests.naive_mp import chain

BACKENDS = gb.backends()
_MP: dict = {}

# (dtype, sigma_w, depth, seed): each has a sample whose units all die at some layer (mpmath)
CASES = [("float64", 1e200, 5, 7), ("float32", 1e20, 6, 5), ("float32", 1e30, 5, 7)]


def _case(dtype, sigma_w, depth, seed):
    stack = gb.Stack(depth=depth, width=3, activation="relu", sigma_w=sigma_w, sigma_b=1.0, dtype=dtype)
    params = gb.init_params(stack, seed)
    x = gb.gaussian_input(stack, 2, seed + 100)
    key = (stack, seed)
    if key not in _MP:
        _MP[key] = chain("relu", 0.0, params.W, x, b=params.b)
    return stack, params, x, _MP[key]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, sigma_w, depth, seed", CASES)
def test_a_dead_sample_meets_the_next_bias(backend, dtype, sigma_w, depth, seed):
    stack, params, x, (loss, gW, gh) = _case(dtype, sigma_w, depth, seed)
    assert np.isfinite(loss)
    res = gb.backprop(stack, params, x, backend=backend)
    tol = 1e-4 if dtype == "float32" else 1e-10
    assert abs(float(res.loss_exact.log10()) - loss) < tol
    np.testing.assert_allclose(res.grad_norm.log10(), gW, rtol=0, atol=tol)  # -inf where mpmath has 0
    np.testing.assert_allclose(res.signal_norm.log10()[:depth], gh, rtol=0, atol=tol)


def test_the_readme_numbers():
    """README: ReLU, sigma_w = 1e200, sigma_b = 1, depth 5, width 3: mpmath's loss 10^398.79."""
    stack, params, x, (loss, _, _) = _case("float64", 1e200, 5, 7)
    assert round(loss, 2) == 398.79
    assert round(float(gb.backprop(stack, params, x).loss_exact.log10()), 2) == 398.79
