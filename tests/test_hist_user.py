"""The relative histogram heat map of a stats-only run against plain float64 counts (a helper's
finding): entries below the plot's grid are counted from the dW a full run stores, in plain
NumPy, never from the code's own histograms."""

from __future__ import annotations

import re

import numpy as np
import pytest

import gradbench as gb
from gradbench.plot import histogram_heatmap

pytest.importorskip("matplotlib")


def _below(fig) -> tuple[int, float, bool]:
    text = fig.axes[0].get_xlabel()
    m = re.search(r"(\d+) (or more )?entries below 10\^(-?[\d.]+) of the norm", text)
    assert m, text
    return int(m.group(1)), float(m.group(3)), bool(m.group(2))


def test_entries_below_the_grid_of_a_stats_only_heat_map_are_a_lower_bound_and_said_so():
    # the case measured by hand: sigmoid, depth 3000, width 16, batch 8, seed 0 (gradbench run
    # --stats-only --hist): 6 entries of dW lie below 10^-7 of their layer's norm; the stats-only
    # heat map said "not shown: 1 entries below 10^-7 of the norm", the full run's 6. Here a tanh
    # stack (depth 200, width 64, batch 2) that plain float64 holds: 17 entries below 10^-7 of
    # their layer's norm, of which the stats-only map counted 14 under the same words.
    stack = gb.Stack(depth=200, width=64, activation="tanh")
    params = gb.GeneratedParams(stack, 0)
    x = gb.gaussian_input(stack, 2, seed=np.random.default_rng([0, 1]))
    dW = gb.backprop(stack, params, x).grads.W.to_float().reshape(200, -1)
    assert np.all(dW != 0) and np.all(np.isfinite(dW))
    scale = np.max(np.abs(dW), axis=1, keepdims=True)  # norms without squares underflowing
    rel = np.log10(np.abs(dW)) - np.log10(scale[:, 0] * np.linalg.norm(dW / scale, axis=1))[:, None]

    full, lo, hedged = _below(histogram_heatmap(gb.backprop(stack, params, x)))
    assert not hedged and full == int(np.sum(rel < lo))  # exact from stored gradients
    stats, lo2, hedged = _below(histogram_heatmap(gb.backprop(stack, params, x, stats_only=True)))
    truth = int(np.sum(rel < lo))
    assert lo2 == lo and stats < truth and hedged  # re-binned, fewer: the words say it is a lower bound
    # every entry counted below is truly below: nothing within one quarter-decade bin above lo
    assert stats >= int(np.sum(rel < lo - 0.25))
