"""The histogram heat map's last, partial row group spans its own layers only: depth 2001 in rows
of 2 drew layer 2000 alone over 1999.5-2001.5, the axis going to 2001.5 (review 41, item 4)."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench import plot


def _mesh(fig):
    ax = fig.axes[0]
    (mesh,) = [c for c in ax.collections if hasattr(c, "get_coordinates")]
    return ax, mesh.get_coordinates()[:, 0, 1]  # the rows' y edges


@pytest.mark.parametrize("depth", [2001, 4001, 4003, 2000])
@pytest.mark.parametrize("relative", [True, False])
def test_each_row_spans_its_own_layers(depth, relative):
    stack = gb.Stack(depth=depth, width=4)
    params = gb.init_params(stack, 0)
    res = gb.backprop(stack, params, gb.gaussian_input(stack, 2, 1))
    item = res if relative else gb.diagnose(res, params)
    ax, y = _mesh(plot.histogram_heatmap(item, relative=relative))
    g = -(-depth // 2000)  # rows of ceil(L / 2000) layers (at most 2000 rows)
    starts = list(range(0, depth, g))
    want = [s - 0.5 for s in starts] + [depth - 0.5]  # each group from its first layer to its last
    np.testing.assert_array_equal(y, want)
    assert ax.get_ylim()[1] == depth - 0.5
    assert (f"rows of {g} layers" in ax.get_ylabel()) == (g > 1)
