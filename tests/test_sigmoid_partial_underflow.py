"""Sigmoid outputs that underflow beside outputs that do not (engine.flushed_outputs,
verdict.partial_underflow_words).

Review 51: a sigmoid forward carries no exponent, so an output sigmoid(z) of 10^-1132 (z ~ -2607)
reads 0 beside one near 1 in the same layer, and that tiny output can carry the larger term of
a gradient (its sigmoid' is e^z, the saturated unit near 1's e^-z is far smaller): sigma_w = 1e4,
depth 1, width 2 read ||dW_0|| = 10^-3428.81 where the exact chain (mpmath) gives 10^-2265.16, and
float32 at sigma_w = 1000 was hundreds of decades off at every layer, finite, with no word of
it. gradbench cannot hold such a layer exactly (one exponent per sample); the diagnosis now says
which layers hold underflowed outputs and which numbers are not the exact ones.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from tests.naive_mp import chain

BACKENDS = gb.backends()


def _plain_count(stack, params, x):
    """Outputs below the dtype's smallest normal per layer, from a plain forward in the dtype
    (the same z, sigmoid written out): an independent count of what underflows."""
    dt = stack.np_dtype
    h, out = x.astype(dt), []
    with np.errstate(over="ignore", under="ignore"):
        for l in range(stack.depth):
            z = h @ params.W[l].T + params.b[l]
            h = (1 / (1 + np.exp(-z))).astype(dt)
            out.append(int(np.count_nonzero(h < np.finfo(dt).tiny)))
    return out


# (dtype, sigma_w, depth, params seed, input seed): mpmath and the run disagree / nothing underflows
# (an underflowed output need not carry the larger term: then the numbers hold, and the words say "may")
OFF = [("float64", 1e4, 1, 4, 1), ("float32", 1000.0, 3, 1, 1), ("float64", 1e4, 3, 2, 2)]
EXACT = [("float32", 30.0, 3, 1, 1), ("float64", 300.0, 3, 2, 2)]


def _run(case, backend, **options):
    dtype, sigma_w, depth, ps, xs = case
    stack = gb.Stack(depth=depth, width=4 if depth > 1 else 2, activation="sigmoid", sigma_w=sigma_w, dtype=dtype)
    params, x = gb.init_params(stack, ps), gb.gaussian_input(stack, 2 if depth > 1 else 1, xs)
    return stack, params, x, gb.backprop(stack, params, x, backend=backend, **options)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", OFF)
def test_the_diagnosis_says_which_numbers_are_not_exact(backend, case):
    stack, params, x, res = _run(case, backend)
    _, gW, _ = chain("sigmoid", 0.0, params.W, x, b=params.b)
    off = np.abs(res.grad_norm.log10() - np.asarray(gW)) > 1  # decades: the statement is true
    assert off.any()
    np.testing.assert_array_equal(res.extras["flushed_outputs"], _plain_count(stack, params, x))
    text = " ".join(str(gb.diagnose(res)).split())
    assert text.count("judged on this run's numbers, which are not exact here") == 2  # each dtype's limits
    assert "not exact here" in text and "may be far from the exact values" in text, text
    n = res.extras["flushed_outputs"]
    if n[-1]:
        assert "every gradient" in text
    else:  # only the layers above an underflowed one read them, and only those are off
        named = np.zeros(stack.depth, dtype=bool)
        named[np.flatnonzero(n) + 1] = True
        assert not (off & ~named).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", EXACT)
def test_no_word_where_nothing_underflowed(backend, case):
    stack, params, x, res = _run(case, backend)
    _, gW, _ = chain("sigmoid", 0.0, params.W, x, b=params.b)
    np.testing.assert_allclose(res.grad_norm.log10(), gW, rtol=0, atol=1e-3)
    assert _plain_count(stack, params, x) == [0] * stack.depth
    assert not res.extras["flushed_outputs"].any()
    assert "not exact here" not in str(gb.diagnose(res))  # nor in the limits' sentences


def test_checkpointed_and_stats_only_runs_count_the_same():
    stack, params, x, res = _run(("float32", 1000.0, 3, 1, 1), "numpy")
    for options in (dict(checkpoint=1), dict(stats_only=True)):
        other = gb.backprop(stack, params, x, **options)
        np.testing.assert_array_equal(other.extras["flushed_outputs"], res.extras["flushed_outputs"])


def test_the_readme_numbers():
    """README: sigma_w = 1e4, depth 1, width 2: ||dW_0|| 10^-3428.81 where mpmath gives 10^-2265.16."""
    stack, params, x, res = _run(OFF[0], "numpy")
    _, gW, _ = chain("sigmoid", 0.0, params.W, x, b=params.b)
    assert round(float(res.grad_norm.log10()[0]), 2) == -3428.81
    assert round(gW[0], 2) == -2265.16
