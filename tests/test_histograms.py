"""gradbench.histograms: a stats_only diagnosis's common bins, against np.histogram of log10 |dW|
from an independent plain backward (tests/naive.py)."""

import numpy as np
import pytest

import gradbench as gb
from tests import naive


def _plain(stack, params, x):
    """The plain float64 dW of every layer (L, N, N), from tests/naive.py."""
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    return naive.backward(stack, P, np.asarray(x, dtype=np.float64))[1]["W"]


def _log10_entries(dW_l):
    a = np.abs(dW_l).ravel()
    return np.log10(a[a > 0])


@pytest.mark.parametrize("kw", [dict(activation="tanh", depth=20), dict(activation="relu", depth=20),
                                dict(activation="sigmoid", sigma_b=0.1, depth=60)])
def test_stats_only_diagnosis_histograms_are_numpys_on_their_edges(kw):
    """The common bins of a stats_only diagnosis were 0.3 decades wide for 1/4-decade streaming
    bins, each moved whole by its centre: 763 of 5,120 entries of a tanh stack sat in another
    bin than np.histogram puts them on the reported edges (a comb), and the range ran down to the
    bottom of the 10-decade windows (-11) with the smallest entry at 10^-5. Now the edges lie on
    the 1/4-decade grid from the lowest occupied bin, and every count is np.histogram's."""
    stack = gb.Stack(width=16, **kw)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1)
    d = gb.diagnose(gb.backprop(stack, params, x, stats_only=True), params)
    dW = _plain(stack, params, x)
    edges = d.hist_edges
    np.testing.assert_array_equal(edges * 4, np.round(edges * 4))  # on the streaming grid
    assert len(edges) == 41
    smallest = min(_log10_entries(dW[l]).min() for l in range(stack.depth))
    assert edges[0] <= smallest < edges[0] + 0.25  # the lowest bin holds the smallest entry
    for l in range(stack.depth):
        v = _log10_entries(dW[l])
        want, _ = np.histogram(v, bins=edges)
        np.testing.assert_array_equal(d.hist_counts[l], want, err_msg=f"layer {l}")
        assert d.hist_outside[l] == len(v) - want.sum()
        assert d.hist_zeros[l] == 256 - len(v)


def test_stats_only_diagnosis_on_an_explicit_range_on_the_grid_is_exact():
    """hist_range (-8, 2) in 20 bins: half-decade bins, two whole streaming bins each."""
    stack = gb.Stack(depth=20, width=16, activation="tanh")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1)
    d = gb.diagnose(gb.backprop(stack, params, x, stats_only=True), params, bins=20, hist_range=(-8.0, 2.0))
    dW = _plain(stack, params, x)
    np.testing.assert_array_equal(d.hist_edges, np.linspace(-8, 2, 21))
    for l in range(20):
        want, _ = np.histogram(_log10_entries(dW[l]), bins=d.hist_edges)
        np.testing.assert_array_equal(d.hist_counts[l], want, err_msg=f"layer {l}")
