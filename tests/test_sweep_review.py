"""Findings of an outside review of sweeps, each checked against a computation written out here
(SciPy's regression, group norms summed in NumPy, hand-made rows files), never the code's own
output."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import gradbench as gb
from gradbench.sweep import run_one
from gradbench.sweep.worker import rate_se
from gradbench.verdict import grad_rate


def _fit(x, y):
    """SciPy's least-squares line through the finite points: (rate going down, its SE)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y)
    fit = stats.linregress(x[ok], y[ok])
    return -fit.slope, fit.stderr


def _group_norms(g, k):
    """log10 of the root sum of squares of each group's ||dW_l||, summed in plain NumPy."""
    return np.log10(np.sqrt((10.0 ** (2 * np.asarray(g, float))).reshape(-1, k).sum(axis=1)))


# ---------------------------------------------------------------- 1. the SE is that of the rate's own fit
def test_the_se_of_a_residual_stack_is_that_of_the_group_fit_its_rate_comes_from():
    # the review's case: tanh, batch norm, residual groups of 2, depth 8, width 8, batch 4, seed 0;
    # the row said SE 0.0443 (a per-layer fit's, slope 0.0431) beside the group fit's rate 0.0345
    stack = gb.Stack(depth=8, width=8, activation="tanh", batch_norm=True, residual=2)
    row = run_one(stack, 4, 0)
    params = gb.GeneratedParams(stack, 0).materialize()
    x = gb.gaussian_input(stack, 4, seed=np.random.default_rng([0, 1]))
    g = gb.diagnose(gb.backprop(stack, params, x)).grad_log10
    rate, se = _fit(np.arange(4), _group_norms(g, 2))
    assert row["decades_per_layer"] == pytest.approx(rate / 2, rel=1e-9)  # the rate is the group fit's
    assert row["decades_per_layer_se"] == pytest.approx(se / 2, rel=1e-9)  # and so is its SE now
    per_layer = _fit(np.arange(8), g)[1]
    assert abs(per_layer - se / 2) > 0.01  # what the row held (0.0443 against 0.0722)


def test_the_se_leaves_out_the_points_the_rate_leaves_out():
    rng = np.random.default_rng(3)
    layers = np.arange(40)
    g = -0.05 * layers + rng.normal(0, 0.2, 40)
    g[17] -= 400.0  # a dead branch's layer: isolated, out of the rate's fit
    keep = layers != 17
    rate, se = _fit(layers[keep], g[keep])
    assert grad_rate(g)[0] == pytest.approx(rate, rel=1e-12)
    assert rate_se(g) == pytest.approx(se, rel=1e-12)
    # residual groups of 4: one group 150 decades below its neighbours is left out as a whole
    g = -0.05 * layers + rng.normal(0, 0.2, 40)
    g[20:24] -= 150.0
    norms = _group_norms(g, 4)
    groups = np.arange(10)
    rate, se = _fit(groups[groups != 5], norms[groups != 5])
    assert grad_rate(g, 4)[0] == pytest.approx(rate / 4, rel=1e-12)
    assert rate_se(g, 4) == pytest.approx(se / 4, rel=1e-12)
    assert math.isnan(rate_se(g[:8], 4))  # two groups: a line through two points has no SE
