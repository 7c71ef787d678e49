"""Parameter-gradient clipping (gradbench.clipping) on exact values, against Python's exact
arithmetic: row norms of rows whose entries span 2^-1000 .. 2^1000 with exponents of +-3000
(the rows summed as they are and the rows scaled first), and the value clip of every entry,
row by row or all rows, with NaN, inf and zero rows, float64 and float32 mantissas."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from gradbench.clipping import _clip_value, row_norms
from gradbench.logscaled import LogScaled


def _rows(dtype, seed=0):
    rng = np.random.default_rng(seed)
    R, n = 12, 40
    top = {np.float64: 1000, np.float32: 100}[dtype]
    scale = rng.integers(-top, top, size=R)  # each row's own magnitude: some beyond 2^+-400, some within
    scale[:3] = (0, 5, -7)
    m = (rng.standard_normal((R, n)) * np.exp2(scale[:, None] + rng.integers(-30, 30, size=(R, n)))).astype(dtype)
    m[3] = 0.0
    e = rng.integers(-3000, 3000, size=R)
    return m, e


def _exact_norm(row, e) -> float:
    """log10 of sqrt(sum of squares) of row * 2^e, exactly (Fractions), rounded at the end."""
    s = sum(Fraction(float(v)) ** 2 for v in row)
    if s == 0:
        return -math.inf
    return (math.log10(s.numerator) - math.log10(s.denominator)) / 2 + e * math.log10(2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_norms_are_the_exact_norms(dtype):
    m, e = _rows(dtype)
    got = row_norms(LogScaled(m, e)).log10()
    want = [_exact_norm(m[i], e[i]) for i in range(len(e))]
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g == w == -math.inf) or abs(g - w) <= 1e-15 * max(1.0, abs(w)), (i, g, w)


def test_row_norms_of_non_finite_rows():
    m = np.array([[1.0, np.nan, 2.0], [1.0, np.inf, -3.0], [-np.inf, 0.0, 0.0], [0.0, 0.0, 0.0]])
    n = row_norms(LogScaled(m, np.zeros(4, dtype=np.int64)))
    assert np.isnan(n.mantissa[0]) and np.isinf(n.mantissa[1]) and np.isinf(n.mantissa[2]) and n.mantissa[3] == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("c", [1e-300, 3.5e-5, 0.75, 2.0 ** 600])
def test_the_value_clip_is_exact(dtype, c):
    """Every entry v = m 2^e becomes max(-c, min(c, v)) exactly (float32 mantissas: rounded to
    float32 at the row's exponent, as they are stored); some rows need it and some not (or all,
    for the smallest c)."""
    m, e = _rows(dtype, seed=1)
    m[5, 7] = np.nan
    out = _clip_value(LogScaled(m, e), c)
    C = Fraction(c)
    for i in range(len(e)):
        for j in range(m.shape[1]):
            v = m[i, j]
            got_m, got_e = out.mantissa[i, j], int(out.exponent[i])
            if np.isnan(v):
                assert np.isnan(got_m)
                continue
            true = Fraction(float(v)) * Fraction(2) ** int(e[i])
            want = max(-C, min(C, true))
            at = Fraction(2) ** got_e
            if dtype == np.float32:  # the float64 value at the row's exponent, stored as float32
                want = Fraction(float(np.float32(float(want / at)))) * at
            got = Fraction(float(got_m)) * at
            assert got == want, (i, j, float(v), int(e[i]), c)
    assert out.mantissa.dtype == m.dtype


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_value_clip_of_one_value_a_layer(dtype):
    """PReLU's slope gradient is (L,): one entry a row. Rows that need the clip and rows that do
    not, in one call (a scalar row once raised TypeError)."""
    m = np.array([0.5, -0.75, 0.5, 0.0], dtype=dtype)
    e = np.array([0, -20, 3000, -3000])
    out = _clip_value(LogScaled(m, e), 1e-3)
    got = [Fraction(float(out.mantissa[i])) * Fraction(2) ** int(out.exponent[i]) for i in range(4)]
    C = Fraction(1e-3)
    if dtype == np.float32:
        C = Fraction(float(np.float32(float(C / Fraction(2) ** int(out.exponent[0]))))) * Fraction(2) ** int(out.exponent[0])
    assert got == [C, Fraction(-0.75) * Fraction(2) ** -20, C, 0]
    assert out.mantissa.shape == (4,) and out.mantissa.dtype == dtype


@pytest.mark.parametrize("backend", ["numpy", "numba", "c"])
def test_parameter_value_clip_of_prelu_slopes(backend):
    """A PReLU stack clipped by value per layer, threshold between its layers' |d slope|: the
    clipped slope gradients are np.clip of the unclipped ones (the same run without clip)."""
    import gradbench as gb

    if backend not in gb.backends():
        pytest.skip(f"backend {backend} not available here")
    s = gb.Stack(depth=4, width=6, activation="prelu")
    p, x = gb.init_params(s, seed=0), gb.gaussian_input(s, batch=5, seed=1)
    raw = gb.backprop(s, p, x, backend="numpy").grads.slope.to_float()
    mags = np.sort(np.abs(raw))
    assert mags[0] > 0 and mags[1] < mags[2]
    c = float(np.sqrt(mags[1] * mags[2]))  # two layers clipped, two not
    res = gb.backprop(s.replace(clip="value", clip_threshold=c, clip_on="layer"), p, x, backend=backend)
    np.testing.assert_allclose(res.grads.slope.to_float(), np.clip(raw, -c, c), rtol=1e-12)
