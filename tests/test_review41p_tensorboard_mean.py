"""TensorBoard's ``depth/act_mean`` is float32: a finite mean beyond float32's range read inf or 0.
The mean is written only where float32 holds it, and its exact size and sign as
``depth/act_mean_log10`` and ``depth/act_mean_sign``; checked against a plain float64 NumPy forward
pass (tests/naive.py) read back with TensorBoard's own EventAccumulator (review 41, item 2)."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from tests import naive


def _scalars(logdir, tag):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                             reason="the tensorboard package (the event reader) is not installed")
    acc = ea.EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    ev = acc.Scalars(tag)
    return {e.step: e.value for e in ev}


@pytest.mark.parametrize("kw", [
    dict(depth=60, activation="relu", init="he_normal", sigma_w=30.0),   # 3.386e+44 at layer 35: inf
    dict(depth=40, activation="relu", init="he_normal", sigma_w=0.05),   # 7.2e-52 at layer 32: 0.0
    dict(depth=40, activation="tanh", sigma_w=0.05, sigma_b=0.0),        # tiny means of either sign
])
def test_act_mean_tags_hold_the_plain_forward_means(tmp_path, kw):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed")
    from gradbench.tensorboard_io import write_diagnosis

    stack = gb.Stack(width=8, **kw)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 3, 1)
    write_diagnosis(gb.diagnose(gb.backprop(stack, params, x), params), tmp_path / "tb")
    _, saved = naive.forward(stack, {k: np.asarray(a, dtype=np.float64) for k, a in params.items()}, x)
    want = np.array([h.mean() for h in saved["hs"][1:]])  # the mean of h_{l+1}, plain float64
    assert np.all(np.isfinite(want)) and np.all(want != 0)
    mean = _scalars(tmp_path / "tb", "depth/act_mean")
    size = _scalars(tmp_path / "tb", "depth/act_mean_log10")
    sign = _scalars(tmp_path / "tb", "depth/act_mean_sign")
    tiny, big = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    held = (np.abs(want) >= tiny) & (np.abs(want) <= big)
    assert sorted(mean) == list(np.flatnonzero(held))  # the others are left out, not written as inf or 0
    for l, v in mean.items():
        assert np.isfinite(v) and v != 0 and abs(v - want[l]) <= 1e-6 * abs(want[l]), (l, v, want[l])
    assert sorted(size) == sorted(sign) == list(range(stack.depth))
    np.testing.assert_allclose([size[l] for l in range(stack.depth)], np.log10(np.abs(want)), rtol=1e-6, atol=1e-6)
    assert [sign[l] for l in range(stack.depth)] == list(np.sign(want))
    if kw["activation"] == "relu":  # these stacks leave float32's range (10^71.5 at layer 59; 10^-53.1 at 32)
        assert not held.all()
