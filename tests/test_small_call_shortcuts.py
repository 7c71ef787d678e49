"""The shortcuts that cut a small gb.backprop call's Python (2026-12-07): each gives what the
longer way gave, and bad input is still refused with the same words before any kernel runs."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench import engine, reference
from gradbench.inputs import check_inputs
from gradbench.params import Params, _probe_rows, _rows_log10, origin_words, probe_and_size


def test_a_huge_weight_is_accepted_and_a_nan_refused_as_before():
    st = gb.Stack(depth=2, width=3, activation="identity")
    p = gb.init_params(st, 0)
    x = gb.gaussian_input(st, 2, 1)
    W = np.full_like(p.W, np.finfo(np.float64).max)
    check_inputs(st, Params(W=W, b=p.b, gamma=p.gamma, beta=p.beta, slope=p.slope), x)
    W[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"params\.W contains NaN or Inf \(first at index \(1, 2, 0\)\)"):
        gb.backprop(st, Params(W=W, b=p.b, gamma=p.gamma, beta=p.beta, slope=p.slope), x, backend="numpy")


def test_check_inputs_keeps_the_params_it_was_given_unless_it_copied():
    st = gb.Stack(depth=3, width=4)
    p = gb.init_params(st, 0)
    x = gb.gaussian_input(st, 5, 1)
    assert check_inputs(st, p, x)[0] is p  # every array as given: no second Params
    W = np.asfortranarray(p.W)  # copied to C order: a new Params with the words and record kept
    q = Params(W=W, b=p.b, gamma=p.gamma, beta=p.beta, slope=p.slope, origin="mine")
    got = check_inputs(st, q, x)[0]
    assert got is not q and got.W.flags.c_contiguous and got.origin == "mine"
    np.testing.assert_array_equal(got.W, p.W)


def test_the_probe_rows_are_the_list_they_were():
    for N in (1, 2, 3, 16, 17):
        rows = _probe_rows(N)
        assert rows.tolist() == sorted({0, N // 2, N - 1}) and not rows.flags.writeable
        W = np.random.default_rng(N).standard_normal((4, N, N))
        assert W[:, rows, :].tobytes() == W[:, sorted({0, N // 2, N - 1}), :].tobytes()


def test_sampled_size_of_rows_that_overflow_underflow_or_are_zero():
    rows = np.ones((4, 3, 5))
    rows[1] = 0.0  # -inf
    rows[2] = 1e200  # the plain sum of squares overflows: scaled first
    rows[3] = 1e-200  # underflows
    got = _rows_log10(rows, 5)
    assert got[0] == pytest.approx(0.5 * np.log10(15 * 5 / 3))
    assert got[1] == -np.inf
    assert got[2] == pytest.approx(200 + 0.5 * np.log10(15 * 5 / 3))
    assert got[3] == pytest.approx(-200 + 0.5 * np.log10(15 * 5 / 3))
    plain = np.random.default_rng(0).standard_normal((6, 3, 8))  # every row plain: the unmasked path
    sq = np.einsum("lkn,lkn->l", plain, plain, dtype=np.float64)
    assert _rows_log10(plain, 8).tobytes() == (0.5 * np.log10(sq * (8 / 3))).tobytes()


def test_origin_words_compares_the_probe_as_array_equal_with_nans_did():
    st = gb.Stack(depth=2, width=4)
    p = gb.init_params(st, 0)
    assert origin_words(p, st, probe_and_size(p)[0]) is None
    p.W[0] *= 2
    assert "changed after they were drawn" in origin_words(p, st, probe_and_size(p)[0])
    nan_drawn = Params(W=p.W, b=p.b, gamma=p.gamma, beta=p.beta, slope=p.slope, origin=None,
                       drawn=np.array([[1.0, np.nan]]))
    assert origin_words(nan_drawn, st, np.array([[1.0, np.nan]])) is None  # NaN where it was: as drawn
    assert origin_words(nan_drawn, st, np.array([[1.0, 2.0]])) is not None


def test_nonzero_rows_reads_nan_negative_zero_and_subnormals_as_before():
    for dt in (np.float64, np.float32):
        X = np.array([[0, -0.0, 0], [0, np.nan, 0], [0, 0, np.finfo(dt).smallest_subnormal], [np.inf, 0, 0],
                      [0, 0, 0]], dtype=dt)
        got = reference.nonzero_rows(X)
        assert got.dtype == bool and got.tolist() == np.any(X != 0, axis=1).tolist()


@pytest.mark.parametrize("backend", ["numpy", "c", "numba"])
def test_statistics_beyond_float64_are_still_taken_again(backend, monkeypatch):
    if backend not in gb.backends():
        pytest.skip(f"{backend} is not available here")
    # batch norm with gamma = 1e200 under ReLU: h_1 ~ 1e200, whose sum of squares the kernels' float64
    # overflows; the segment's stds are not all finite, so the engine takes them again (rescale_stats)
    st = gb.Stack(depth=3, width=8, activation="relu", batch_norm=True)
    p = gb.init_params(st, 0)
    p.gamma[:] = 1e200
    x = gb.gaussian_input(st, 4, 1)
    taken = []
    again = reference.rescale_stats
    monkeypatch.setattr(reference, "rescale_stats", lambda *a: (taken.append(1), again(*a))[1])
    res = gb.backprop(st, p, x, backend=backend)
    assert taken
    assert np.isfinite(res.act_std.log10()[0]) and res.act_std.log10()[0] > 199
    monkeypatch.undo()
    ref = gb.backprop(st, p, x, backend="numpy")
    np.testing.assert_allclose(res.act_std.log10()[0], ref.act_std.log10()[0], rtol=1e-12)


def test_a_small_call_hands_nothing_to_the_workspace(monkeypatch):
    from gradbench.buffers import WORKSPACE

    given = []
    monkeypatch.setattr(WORKSPACE, "give", lambda arrays: given.append(list(arrays)))
    st = gb.Stack(depth=3, width=4)
    gb.backprop(st, gb.init_params(st, 0), gb.gaussian_input(st, 3, 1), backend="numpy")
    assert given == []
    big = gb.Stack(depth=4, width=64)  # H of 5 x 64 x 64 float64: 160 KiB, from the workspace
    gb.backprop(big, gb.init_params(big, 0), gb.gaussian_input(big, 64, 1), backend="numpy")
    assert len(given) == 1 and given[0]
    assert engine.WORKSPACE is WORKSPACE
