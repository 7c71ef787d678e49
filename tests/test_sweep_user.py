"""A new user's sweeps off the demo paths (a helper's findings), each checked against a
computation written out here, never the code's own output."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from tests.helpers import Tripwire


@pytest.mark.parametrize("field,values,shown", [
    ("sigma_w", [1, 1.0], "1 and 1.0"),
    ("sigma_b", [0.0, -0.0], "0.0 and -0.0"),
])
def test_two_spellings_of_one_number_are_refused_as_one_configuration(field, values, shown):
    # they are one network: Stack stores both as the same float, and GeneratedParams draws the
    # same weights (compared here bit for bit). The grid was accepted, both ran under one run key,
    # and the sweep ended in "RuntimeError: 1 of 2 runs have no row (a bug: please report it)".
    a, b = (gb.Stack(depth=3, width=4, **{field: v}) for v in values[:2])
    assert a == b
    pa, pb = gb.GeneratedParams(a, 0).materialize(), gb.GeneratedParams(b, 0).materialize()
    assert np.array_equal(pa.W, pb.W) and np.array_equal(pa.b, pb.b)
    with pytest.raises(ValueError, match=rf"grid\['{field}'\] has repeated values .*\({shown}: the same configuration\)"):
        gb.sweep({field: values}, depth=3, width=4, client=Tripwire())
