"""The shortcuts that made small calls cheaper, each against an independent computation.

A 10-layer stack's ``gb.backprop`` spent most of its time in the Python around the kernels; the
shortcuts below (benchmarks/README.md, "Small calls") must give what the general paths give.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradbench as gb
from gradbench import buffers, engine, plan, reference
from gradbench.logscaled import LogScaled

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def _arrays(draw, dtype):
    """A small array of any magnitude (subnormals included), sometimes with NaN, inf or zeros."""
    shape = (draw(st.integers(0, 4)), draw(st.integers(1, 5)))
    lo, hi = (-1100, 1000) if dtype == np.float64 else (-160, 120)
    scale = 2.0 ** draw(st.integers(lo, hi))
    seed = draw(st.integers(0, 2**32 - 1))
    g = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)
    special = draw(st.sampled_from([None, np.nan, np.inf, -np.inf, 0.0]))
    if special is not None and g.size:
        g.flat[draw(st.integers(0, g.size - 1))] = special
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:
        g[...] = 0
    return g


@st.composite
def signals(draw):
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return _arrays(draw, dtype)


@SETTINGS
@given(signals())
def test_normalise_scales_by_the_exponent_of_the_largest_finite_magnitude(g):
    """reference.normalise takes max|g| without the masked reduction unless there is a NaN, and
    its power of two from math: e is frexp's exponent of the largest non-NaN magnitude (0 when
    that is 0 or inf), and g becomes g 2^-e, rounded once (float64 products, then the dtype)."""
    before = g.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        e = reference.normalise(g)
        finite = before[~np.isnan(before)]
        top = float(np.max(np.abs(finite))) if finite.size else 0.0
    want = 0 if top == 0 or not math.isfinite(top) else math.frexp(top)[1]
    assert e == want and isinstance(e, int)
    expected = (before.astype(np.float64) * 2.0 ** -want).astype(g.dtype)
    np.testing.assert_array_equal(g, expected)
    if want:
        m = float(np.max(np.abs(g[~np.isnan(g)])))
        assert 0.5 <= m < 1


@SETTINGS
@given(st.floats(allow_nan=True, allow_infinity=True, min_value=None, max_value=None),
       st.integers(-(2**62), 2**62), st.booleans())
def test_one_number_converts_as_an_array_of_one(m, e, warn):
    """LogScaled.to_float of a 0-d value (math.ldexp) against the same value as a 1-element
    array (NumPy's ldexp with clipped exponents): the same float and the same warnings."""
    one = LogScaled(np.array(m), np.array(e))
    arr = LogScaled(np.array([m]), np.array([e]))
    with warnings.catch_warnings(record=True) as w0, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        got = one.to_float(warn=warn)
    with warnings.catch_warnings(record=True) as w1, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        want = arr.to_float(warn=warn)[0]
    assert type(got) is np.float64
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got) == np.signbit(want)
    assert [str(x.message) for x in w0] == [str(x.message) for x in w1]


def test_a_small_run_is_planned_without_reading_the_memory(monkeypatch):
    """Runs whose plain estimate is at most plan.PLAN_FREELY get the plan of a machine with
    plenty of memory without reading /proc/meminfo; larger ones read it (and are refused when
    it is short)."""
    reads = []

    def available():
        reads.append(1)
        return 2**40

    small = gb.Stack(depth=10, width=16)
    assert plan.memory_estimate(small, 20) <= plan.PLAN_FREELY
    got = plan.plan_run(small, 20, available=available)
    assert reads == [] and got == plan.plan_run(small, 20, available=2**40)
    for kw in (dict(stats_only=True), dict(generated=True), dict(stats_only=True, generated=True)):
        assert plan.plan_run(small, 20, available=available, **kw) == plan.plan_run(small, 20, available=2**40, **kw)
    assert reads == []
    big = gb.Stack(depth=2000, width=64)
    assert plan.memory_estimate(big, 64) > plan.PLAN_FREELY
    plan.plan_run(big, 64, available=available)
    assert reads == [1]
    with pytest.raises(plan.PlanRefused):
        plan.plan_run(big, 64, available=lambda: 2**20)
    # gb.backprop: a small call does not read it either
    monkeypatch.setattr(engine, "available_memory", lambda: (_ for _ in ()).throw(AssertionError("read")))
    res = gb.backprop(small, gb.init_params(small, 0), gb.gaussian_input(small, 20, 1))
    assert math.isfinite(res.loss)


def test_keepers_read_the_memory_only_when_they_hold_much(monkeypatch):
    """The workspace keeps up to buffers.KEEP_FREELY bytes without asking how much memory is
    available; above that, at most a quarter of it (the oldest dropped first)."""
    reads = []

    def available():
        reads.append(1)
        return 4 * buffers.KEEP_FREELY  # a quarter: KEEP_FREELY

    monkeypatch.setattr(plan, "available_memory", available)
    ws = buffers.Workspace()
    ws.give([np.empty(buffers.KEEP_FREELY // 16)])  # half of KEEP_FREELY in bytes
    assert reads == [] and ws.bytes() == buffers.KEEP_FREELY // 2
    ws.give([np.empty(buffers.KEEP_FREELY // 16)])  # KEEP_FREELY in all: still no read
    assert reads == [] and ws.bytes() == buffers.KEEP_FREELY
    ws.give([np.empty(buffers.KEEP_FREELY // 8 + 1)])  # above: read, and the oldest dropped
    assert reads == [1] and ws.bytes() <= buffers.KEEP_FREELY
    ws.release()


def test_small_internal_arrays_bypass_the_workspace():
    """Internal arrays under buffers.WORKSPACE_FROM bytes come from np.empty and are not kept;
    larger ones are kept for the next call of the same shapes."""
    buffers.release()
    small = gb.Stack(depth=10, width=16)
    assert (small.depth + 1) * 20 * small.width * 8 < buffers.WORKSPACE_FROM
    gb.backprop(small, gb.init_params(small, 0), gb.gaussian_input(small, 20, 1))
    assert buffers.WORKSPACE.bytes() == 0
    wide = gb.Stack(depth=10, width=64)
    gb.backprop(wide, gb.init_params(wide, 0), gb.gaussian_input(wide, 64, 1))
    assert buffers.WORKSPACE.bytes() >= 11 * 64 * 64 * 8  # H (Z lives in the gradients' dW: B <= N)
    buffers.release()


def test_small_plans_are_worked_out_once_and_follow_the_settings(monkeypatch):
    """plan_run keeps the plan of a small run (plan.PLAN_FREELY) for its next call of the same
    arguments, equal to the plan the general path gives, and sees a changed module setting."""
    small = gb.Stack(depth=64, width=8, residual=4)
    estimates = []
    real = plan.memory_estimate
    monkeypatch.setattr(plan, "memory_estimate", lambda *a, **k: (estimates.append(1), real(*a, **k))[1])
    plan._free_plan.cache_clear()
    first = plan.plan_run(small, 5, stats_only=True, available=lambda: 2**40)
    n = len(estimates)
    assert n > 0 and first == plan.plan_run(small, 5, stats_only=True, available=2**40)
    assert not first.recompute  # its activations are below SMALL_RUN_BYTES: all kept
    estimates.clear()
    assert plan.plan_run(small, 5, stats_only=True, available=lambda: 2**40) == first and estimates == []
    monkeypatch.setattr(plan, "SMALL_RUN_BYTES", (2 * 64 + 1) * 5 * 8 * 8 - 1)  # now just too many
    changed = plan.plan_run(small, 5, stats_only=True, available=lambda: 2**40)
    assert changed.recompute and changed == plan.plan_run(small, 5, stats_only=True, available=2**40)
    with pytest.raises(TypeError, match="checkpoint"):  # still checked first, not hashed
        plan.plan_run(small, 5, checkpoint=[8], available=lambda: 2**40)


def _logscaled_fields(res):
    for name in ("loss_exact", "grad_norm", "signal_norm", "input_grad", "output", "act_mean", "act_std"):
        yield name, getattr(res, name)
    if res.grads is not None:
        for name in ("W", "b", "gamma", "beta", "slope", "W_in", "b_in", "W_out", "b_out"):
            v = getattr(res.grads, name, None)
            if v is not None:
                yield f"grads.{name}", v


@pytest.mark.parametrize("backend", gb.backends())
def test_results_hold_what_logscaled_checks(backend):
    """The engine builds most of a Result's LogScaled values without LogScaled's checks
    (LogScaled._of): each must be what the checked constructor accepts as it is, an ndarray
    mantissa and an int64 ndarray exponent whose shape is a prefix of the mantissa's."""
    rng = np.random.default_rng(0)
    for kw in (dict(), dict(loss="mse", input_dim=3, output_dim=2), dict(clip="norm", clip_on="layer"),
               dict(dtype="float32", residual=2, activation="relu", sigma_b=0.1), dict(batch_norm=True)):
        stack = gb.Stack(depth=4, width=6, **kw)
        x = gb.gaussian_input(stack, 5, 1)
        t = rng.standard_normal((5, 2)).astype(stack.np_dtype) if stack.loss == "mse" else None
        for stats_only in (False, True):
            res = gb.backprop(stack, gb.init_params(stack, 0), x, t, backend=backend, stats_only=stats_only)
            for name, v in _logscaled_fields(res):
                m, e = v.mantissa, v.exponent
                assert type(m) is np.ndarray and type(e) is np.ndarray and e.dtype == np.int64, (kw, name)
                assert m.shape[:e.ndim] == e.shape, (kw, name)
                checked = LogScaled(m, e)
                assert checked.mantissa is m and checked.exponent is e, (kw, name)
