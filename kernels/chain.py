"""The exact chain's kernels and the float64 reductions, with the reference's names:
:func:`normalise`, :func:`add_aligned`, :func:`clip_signal` (gradbench/reference.py) and the sums
behind every norm and statistic (:func:`sumsq`, :func:`norm_scaled`, :func:`moments`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gradbench.abi import CLIP_NORM, CLIP_VALUE
from gradbench.reference import DZ_FAR_EXP

from ._config import EXP_CLAMP, JIT
from .activations import _as

_FAR64, _FAR32 = DZ_FAR_EXP["float64"], DZ_FAR_EXP["float32"]


# 2**k for every k whose power of two is a float64 (subnormals included), looked up: the per-row
# passes take a power of two per row (B a layer, several times), and a call of ldexp cost more
# than a row's multiplications
_POW2 = np.ldexp(1.0, np.arange(-1074, 1024))


@njit(inline="always", **JIT)
def pow2(k):
    """2.0**k in float64, ldexp's value (0 below 2**-1074, inf above 2**1023)."""
    if -1074 <= k <= 1023:
        return _POW2[k + 1074]
    return math.ldexp(1.0, int(k))


@njit(**JIT)
def _clamp(e):
    if e > EXP_CLAMP:
        return EXP_CLAMP
    if e < -EXP_CLAMP:
        return -EXP_CLAMP
    return e


@njit(**JIT)
def _ldexp(x, e):
    """x * 2**e in x's dtype, e already clamped (exact unless the result is subnormal)."""
    if e == 0:
        return x
    return math.ldexp(x, int(e))


# ------------------------------------------------------------------ the exact chain
@njit(inline="always", **JIT)
def absmax(g):
    """max |g| in float64 over a (B, N) array, NaN ignored (0 when all NaN or empty). Four
    running maxima (four chains of compare-and-select, not one): the same maximum."""
    B, N = g.shape
    m0 = m1 = m2 = m3 = 0.0
    n4 = N - N % 4
    for i in range(B):
        for j in range(0, n4, 4):
            v0 = abs(np.float64(g[i, j]))
            v1 = abs(np.float64(g[i, j + 1]))
            v2 = abs(np.float64(g[i, j + 2]))
            v3 = abs(np.float64(g[i, j + 3]))
            m0 = v0 if v0 > m0 else m0  # False for NaN
            m1 = v1 if v1 > m1 else m1
            m2 = v2 if v2 > m2 else m2
            m3 = v3 if v3 > m3 else m3
        for j in range(n4, N):
            v0 = abs(np.float64(g[i, j]))
            m0 = v0 if v0 > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    return m2 if m2 > m0 else m0


@njit(inline="always", **JIT)
def normalise(g):
    """Scale g in place by 2**-e so that max|g| lies in [0.5, 1); return e.

    e is 0 when g is all zero or when its largest magnitude is not finite (NaN ignored).
    """
    B, N = g.shape
    m = absmax(g)
    if m == 0.0 or not math.isfinite(m):
        return 0
    e = np.int64(math.frexp(m)[1])
    if e == 0:  # already in [0.5, 1)
        return e
    # as the reference: 2**-e in float64, then the dtype; in two exact steps when 2**-e is not
    # a finite number of the dtype (a subnormal max|g|)
    top = 1023 if g.itemsize == 8 else 127
    k = int(-e)
    k1 = k if k <= top else k // 2
    s1 = _as(pow2(k1), g[0, 0])
    for i in range(B):
        for j in range(N):
            g[i, j] *= s1
    if k1 != k:
        s2 = _as(pow2(k - k1), g[0, 0])
        for i in range(B):
            for j in range(N):
                g[i, j] *= s2
    return e


@njit(**JIT)
def _pow2_range(x):
    """(lo, hi): the exponents d for which 2**d is a number of x's dtype (subnormals included),
    so that x * 2**d rounds once, as ldexp(x, d) does."""
    return (-1074, 1023) if x.itemsize == 8 else (-149, 127)


@njit(**JIT)
def add_aligned(a, ea, s, es, scale):
    """scale * a * 2**ea + s * 2**es (a residual branch plus its skip), written into a, at the
    larger exponent; returns it.

    a, s (B,N)
    """
    B, N = a.shape
    em = max(ea, es)
    da = _clamp(ea - em)
    ds = _clamp(es - em)
    sc = _as(scale, a[0, 0])
    lo, hi = _pow2_range(a)
    if lo <= da <= hi and lo <= ds <= hi:  # products by powers of two of the dtype: ldexp's bits
        fa = _as(pow2(da), a[0, 0])
        fs = _as(pow2(ds), a[0, 0])
        for i in range(B):
            for j in range(N):
                a[i, j] = s[i, j] * fs + sc * (a[i, j] * fa)
        return em
    for i in range(B):
        for j in range(N):
            a[i, j] = _ldexp(s[i, j], ds) + sc * _ldexp(a[i, j], da)
    return em


@njit(**JIT)
def clip_signal(g, e, mode, c):
    """Clip the true value g * 2**e (value: to [-c, c]; norm: Frobenius norm <= c) in place.

    g (B,N) must be normalised (max|g| < 1). Returns the new exponent.
    """
    return clip_signal_acted(g, e, mode, c)[0]


@njit(**JIT)
def _clip_row(g, i, d, t):
    """Row i of g times 2**d (rounded to g's dtype), clamped to [-t, t]."""
    for j in range(g.shape[1]):
        x = np.float64(_ldexp(g[i, j], d))
        if x > t:
            x = t
        elif x < -t:
            x = -t
        g[i, j] = x


@njit(**JIT)
def clip_signal_acted(g, e, mode, c):
    """:func:`clip_signal`, and whether it acted (its own test, as
    :func:`gradbench.reference.clip_signal_acted`): (exponent, 1 or 0)."""
    B, N = g.shape
    if mode == CLIP_VALUE:
        ec = np.int64(math.frexp(c)[1])
        t = math.ldexp(c, int(-ec))  # c = t * 2**ec, t in [0.5, 1)
        m = 0.0
        for i in range(B):
            for j in range(N):
                v = abs(np.float64(g[i, j]))
                if v != v:  # np.max propagates NaN and NaN > t is False: no clipping
                    return e, np.int64(0)
                if v > m:
                    m = v
        d = _clamp(e - ec)
        if math.ldexp(m, int(d)) > t:
            for i in range(B):
                _clip_row(g, i, d, t)
            return ec, np.int64(1)
    elif mode == CLIP_NORM:
        n = math.sqrt(sumsq(g))
        if math.ldexp(n, int(_clamp(e))) > c:
            s = _as(c / n, g[0, 0])
            for i in range(B):
                for j in range(N):
                    g[i, j] *= s
            return np.int64(0), np.int64(1)
    return e, np.int64(0)


# ------------------------------------------------------------------ float64 reductions
# Whole-array sums in float64 by blocks of 128 with 8 partial sums each (NumPy's pairwise
# leaf), block sums added in order: within a few ulps of NumPy's pairwise summation.
@njit(**JIT)
def _sum_block(x, start, stop, mean, square, scale):
    """sum over x[start:stop] of (x scale - mean) or (x scale - mean)**2, 8 partial sums
    (scale: a power of two, 1 except for scaled norms)."""
    n8 = start + ((stop - start) // 8) * 8
    r = _add_eights(x, start, n8, mean, square, scale, (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    return _close_block(x, n8, stop, mean, square, scale, r)


@njit(inline="always", **JIT)
def _close_block(x, n8, stop, mean, square, scale, r):
    """A block's sum: its 8 partial sums r paired, then the entries n8..stop (fewer than 8)."""
    r0, r1, r2, r3, r4, r5, r6, r7 = r
    s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(n8, stop):
        v = np.float64(x[i]) * scale - mean
        s += v * v if square else v
    return s


@njit(inline="always", **JIT)
def _add_eights(x, start, stop, mean, square, scale, r):
    """The 8 partial sums r plus the entries start..stop (a multiple of 8 of them), lane k taking
    entries start + k, start + 8 + k, ...: (x scale - mean) or its square."""
    r0, r1, r2, r3, r4, r5, r6, r7 = r
    for i in range(start, stop, 8):
        v0 = np.float64(x[i]) * scale - mean
        v1 = np.float64(x[i + 1]) * scale - mean
        v2 = np.float64(x[i + 2]) * scale - mean
        v3 = np.float64(x[i + 3]) * scale - mean
        v4 = np.float64(x[i + 4]) * scale - mean
        v5 = np.float64(x[i + 5]) * scale - mean
        v6 = np.float64(x[i + 6]) * scale - mean
        v7 = np.float64(x[i + 7]) * scale - mean
        if square:
            v0 *= v0
            v1 *= v1
            v2 *= v2
            v3 *= v3
            v4 *= v4
            v5 *= v5
            v6 *= v6
            v7 *= v7
        r0 += v0
        r1 += v1
        r2 += v2
        r3 += v3
        r4 += v4
        r5 += v5
        r6 += v6
        r7 += v7
    return r0, r1, r2, r3, r4, r5, r6, r7


@njit(**JIT)
def _sum_flat(x, mean, square, scale):
    n = x.size
    s = 0.0
    for start in range(0, n, 128):
        s += _sum_block(x, start, min(start + 128, n), mean, square, scale)
    return s


@njit(**JIT)
def sumsq(g):
    """sum(g**2) in float64 over a C-contiguous array of any shape."""
    return _sum_flat(g.reshape(g.size), 0.0, True, 1.0)


# A sum of squares in [SUMSQ_LO, SUMSQ_HI] lost nothing to underflow or overflow
# (gradbench.reference.norm_scaled, the same bounds); outside it the entries are scaled by 2^-e.
SUMSQ_LO = 2.0**-960
SUMSQ_HI = 2.0**960


@njit(**JIT)
def norm_scaled(x):
    """||x|| = m * 2**e with no square lost (gradbench.reference.norm_scaled); returns (m, e).

    x: a C-contiguous array of any shape."""
    flat = x.reshape(x.size)
    s = _sum_flat(flat, 0.0, True, 1.0)
    if (s >= SUMSQ_LO and s <= SUMSQ_HI) or s != s:
        return math.sqrt(s), np.int64(0)
    a = 0.0
    for i in range(flat.size):
        v = abs(np.float64(flat[i]))
        if v > a:
            a = v
    if a == 0.0 or not math.isfinite(a):
        return math.sqrt(s), np.int64(0)
    e = np.int64(math.frexp(a)[1])
    k = int(-e)
    if k <= 1023:
        return math.sqrt(_sum_flat(flat, 0.0, True, math.ldexp(1.0, k))), e
    # max|x| subnormal (e < -1022): 2^-e is not a finite double (it was inf: an inf or NaN norm).
    # Each entry takes it in two exact steps, as gb_sumsq_row does: x 2^k1 into a buffer, block
    # by block, then 2^(k - k1) in _sum_block; the same blocks and partial sums as _sum_flat.
    # The rare path allocates; the common ones keep their single factor (and their bits).
    k1 = k // 2
    s1 = math.ldexp(1.0, k1)
    s2 = math.ldexp(1.0, k - k1)
    buf = np.empty(128)
    n = flat.size
    s = 0.0
    for start in range(0, n, 128):
        stop = min(start + 128, n)
        for i in range(start, stop):
            buf[i - start] = np.float64(flat[i]) * s1
        s += _sum_block(buf, 0, stop - start, 0.0, True, s2)
    return math.sqrt(s), e


@njit(**JIT)
def all_finite(g):
    x = g.reshape(g.size)
    for i in range(x.size):
        if not math.isfinite(x[i]):
            return False
    return True


@njit(**JIT)
def moments(h):
    """(mean, std) of all entries of h in float64, two passes, as h.mean() and h.std()."""
    x = h.reshape(h.size)
    m = _sum_flat(x, 0.0, False, 1.0) / x.size
    v = _sum_flat(x, m, True, 1.0) / x.size
    return m, math.sqrt(v)


@njit(inline="always", **JIT)
def pow2_down(d, lo, like):
    """(p1, p2) in the dtype of ``like`` (``lo``: its :func:`_pow2_range`'s first, the smallest
    subnormal's exponent), each a power of two of it (subnormals included), with
    (x * p1) * p2 == ldexp(x, d) for every x of that dtype and d <= 0: (2**d, 1) where 2**d is one;
    below, (2**(d - lo), 2**lo) (d clamped at 2 lo, below
    which every finite product is 0 as for ldexp): the first product is exact while it stays
    normal, and where it does not, both give 0 (the C kernels' gb_pow2_down)."""
    if d >= lo:
        return _as(pow2(d), like), _as(1.0, like)
    return _as(pow2(max(d, 2 * lo) - lo), like), _as(pow2(lo), like)


# ------------------------------------------------------------------ per-row exponents (the backward signal)
# The backward signal carries one exponent per row: row i is g[i] * 2**r[i] (r int64, (B,)).
# What is summed over the batch is brought to one exponent E (rows_exponent) by scaled(x, E):
# row i times 2**(r[i] - E), one rounding into the subnormals (gradbench.reference, "scaled").
@njit(**JIT)
def scale_row_into(dst, src, i, d):
    """dst[i] = ldexp(src[i], d) in the dtype (d already clamped; dst may be src): a
    multiplication by 2**d where 2**d is a number of the dtype (the same single rounding; a copy
    for d = 0). Below, two: by 2**(d - lo) and by 2**lo, lo the smallest subnormal's exponent (as
    the C kernels' gb_pow2_down): the first is exact while it stays normal, and where it does not,
    both give 0 (d below 2 lo: 0 for every finite entry, as for ldexp). A row far below the
    batch's top took a call of ldexp per entry: float32 swish at sigma_w = 1.46, L = 1000, N = B =
    64 (the benchmark's case) 93-95 ms, now 65-66 (one thread, 2026-12-07). Above the dtype's
    powers of two (never from a shift down), ldexp per entry."""
    N = src.shape[1]
    lo, hi = _pow2_range(src)
    if lo <= d <= hi:
        s = _as(pow2(d), src[0, 0])
        for j in range(N):
            dst[i, j] = src[i, j] * s
    elif d < lo:
        s1, s2 = pow2_down(d, lo, src[0, 0])
        for j in range(N):
            dst[i, j] = (src[i, j] * s1) * s2
    else:
        for j in range(N):
            dst[i, j] = _ldexp(src[i, j], d)


@njit(**JIT)
def scale_row(x, i, d):
    """x[i] = ldexp(x[i], d) in place (:func:`scale_row_into`; nothing to do for d = 0)."""
    if d != 0:
        scale_row_into(x, x, i, d)


@njit(**JIT)
def far_rows(dz, r, nz):
    """gradbench.reference.far_rows: each row of dz (nz[i]: not all zero) whose largest |entry|
    (NaN ignored; finite, not 0) has a frexp exponent beyond +-DZ_FAR_EXP brought into [0.5, 1),
    that exponent added to r[i], so that the row meets the weights (a stack's dz W_l) or a
    recurrent step's x_t and h_{t-1} (a row of 2^-580 beside h ~ 1e-174) without the products
    under- or overflowing."""
    for i in range(dz.shape[0]):
        if nz[i]:
            far_row(dz, i, absmax(dz[i:i + 1]), r)  # NaN ignored


@njit(**JIT)
def far_row(dz, i, m, r):
    """:func:`far_rows` on row i of dz, whose largest |entry| (NaN ignored) is m."""
    far = _FAR64 if dz.itemsize == 8 else _FAR32
    if m > 0.0 and m < math.inf:
        e = math.frexp(m)[1]
        if e > far or e < -far:
            scale_row(dz, i, -e)
            r[i] += e


@njit(**JIT)
def row_nonzero(x, i):
    """Whether row i of x has an entry != 0 (NaN and inf count)."""
    N = x.shape[1]
    for j in range(N):
        if x[i, j] != 0:
            return True
    return False


@njit(**JIT)
def rows_nonzero(x, nz):
    """nz[i] = row i of x has an entry != 0 (NaN and inf count)."""
    for i in range(x.shape[0]):
        nz[i] = row_nonzero(x, i)


@njit(**JIT)
def rows_exponent(r, nz):
    """E(rows): the largest r[i] over the nonzero rows (nz), over all rows when none is."""
    B = r.shape[0]
    E = np.int64(0)
    have = False
    for i in range(B):
        if nz[i] and (not have or r[i] > E):
            E = r[i]
            have = True
    if not have:
        for i in range(B):
            if i == 0 or r[i] > E:
                E = r[i]
    return E


@njit(**JIT)
def normalise_rows(g, r, nz):
    """:func:`normalise` row by row: r[i] += the exponent taken out of row i; nz[i] = the row
    has an entry != 0 (NaN and inf count)."""
    for i in range(g.shape[0]):
        e = normalise(g[i:i + 1])
        r[i] += e
        nz[i] = e != 0 or row_nonzero(g, i)


@njit(**JIT)
def _sum_block_rows(x, start, stop, sc, N, mean, square):
    """_sum_block of x[start:stop] (x flat, rows of N, N a multiple of 8) with entry k taken as
    x[k] * sc[k // N]: the same partial sums of (value - mean) or its square, each entry the
    value of the scaled copy; a row's part of the block at a time (eight entries lie in one row)."""
    n8 = start + ((stop - start) // 8) * 8
    r = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    i = start
    while i < n8:
        row = i // N
        end = min((row + 1) * N, n8)
        r = _add_eights(x, i, end, mean, square, sc[row], r)
        i = end
    return _close_block(x, n8, stop, mean, square, 1.0, r)  # nothing left: stop - start is a multiple of 8


@njit(**JIT)
def sumsq_rows(g, r, nz, E, sc):
    """sum over scaled(g, E) of the squares in float64: row i times 2**(r[i] - E) (a float64
    factor; ldexp entry by entry below 2**-1074), in the blocks and partial sums of
    :func:`sumsq`, so that it is sumsq's value of the batch-normalised array bit for bit.
    sc: (B,) float64 workspace."""
    same, tiny = _row_factors(r, nz, E, sc)
    return _sum_rows(g, r, nz, E, sc, same, tiny, 0.0, True)


@njit(**JIT)
def _row_factors(r, nz, E, sc):
    """sc[i] = 2**(r[i] - E) in float64 (0 below 2**-1074; 1 for zero rows, not nz[i]: they add
    zeros at any exponent); returns (every factor 1, some row below 2**-1074)."""
    same = True
    tiny = False
    for i in range(r.shape[0]):
        d = _clamp(r[i] - E) if nz[i] else np.int64(0)
        same &= d == 0
        tiny |= d < -1074
        sc[i] = pow2(d) if d >= -1074 else 0.0
    return same, tiny


@njit(**JIT)
def _sum_rows(g, r, nz, E, sc, same, tiny, mean, square):
    """:func:`_sum_flat` (sum of (value - mean) or its square) over scaled(g, E): row i times
    2**(r[i] - E), zero rows (not nz[i]) as they are, sc, same and tiny from
    :func:`_row_factors`; see :func:`sumsq_rows`."""
    N = g.shape[1]
    flat = g.reshape(g.size)
    if same:
        return _sum_flat(flat, mean, square, 1.0)
    n = flat.size
    s = 0.0
    if not tiny and N % 8 == 0:
        for start in range(0, n, 128):
            s += _sum_block_rows(flat, start, min(start + 128, n), sc, N, mean, square)
        return s
    # a row beyond 2**-1074 of the top (its entries by ldexp: 0, or inf/NaN as they are), or
    # eight entries that span two rows: the scaled values in a copy of each block; the same
    # partial sums
    buf = np.empty(128)
    for start in range(0, n, 128):
        stop = min(start + 128, n)
        for k in range(start, stop):
            i = k // N
            d = _clamp(r[i] - E) if nz[i] else np.int64(0)
            buf[k - start] = np.float64(flat[k]) * sc[i] if d >= -1074 else math.ldexp(np.float64(flat[k]), int(d))
        s += _sum_block(buf, 0, stop - start, mean, square, 1.0)
    return s


@njit(**JIT)
def moments_rows(h, q, nz, sc):
    """:func:`moments` of the rows taken at one exponent: entry (i, j) as h[i, j] * 2**q[i]
    (rows of zeros, not nz[i], as they are; q <= 0 the rows' exponents below the layer's), in
    float64, the same blocks and passes (moments' bits where every q is 0).    sc (B,) workspace"""
    n = h.size
    same, tiny = _row_factors(q, nz, 0, sc)
    m = _sum_rows(h, q, nz, 0, sc, same, tiny, 0.0, False) / n
    v = _sum_rows(h, q, nz, 0, sc, same, tiny, m, True) / n
    return m, math.sqrt(v)


@njit(**JIT)
def clip_rows_acted(g, r, nz, mode, c, sc):
    """:func:`clip_signal_acted` of the per-row signal (rows normalised): value, row by row, on
    the rows whose largest magnitude exceeds c (a row with NaN does not); norm, on the whole
    batch's norm at E(rows). Updates g and r in place; returns 1 where it acted, else 0."""
    B, N = g.shape
    acted = np.int64(0)
    if mode == CLIP_VALUE:
        ec = np.int64(math.frexp(c)[1])
        t = math.ldexp(c, int(-ec))  # c = t * 2**ec, t in [0.5, 1)
        for i in range(B):
            m = 0.0
            for j in range(N):
                v = abs(np.float64(g[i, j]))
                if v > m or v != v:  # np.max propagates NaN and NaN > t is False: the row stays
                    m = v
            d = _clamp(r[i] - ec)
            if math.ldexp(m, int(d)) > t:
                _clip_row(g, i, d, t)
                r[i] = ec
                acted = 1
    elif mode == CLIP_NORM:
        E = rows_exponent(r, nz)
        n = math.sqrt(sumsq_rows(g, r, nz, E, sc))
        if math.ldexp(n, int(_clamp(E))) > c:
            s = _as(c / n, g[0, 0])
            for i in range(B):
                for j in range(N):
                    g[i, j] *= s
                r[i] -= E
            acted = 1
    return acted


@njit(**JIT)
def signal_rows(g, r, nz, mode, c, sc):
    """A backward signal made ready (gradbench.reference.signal_rows), in place: each row
    normalised, clipped (``mode``, :func:`clip_rows_acted`; 0: no clip) and normalised again, rows
    of zeros given E(rows), which it returns with whether the clip acted (1/0)."""
    normalise_rows(g, r, nz)
    acted = np.int64(0)
    if mode != 0:
        acted = clip_rows_acted(g, r, nz, mode, c, sc)
        normalise_rows(g, r, nz)
    E = rows_exponent(r, nz)
    for i in range(r.shape[0]):
        if not nz[i]:  # no stale exponents on zero rows
            r[i] = E
    return E, acted


@njit(**JIT)
def add_aligned_rows(a, ra, s, rs, scale):
    """:func:`add_aligned` row by row: scale * a[i] * 2**ra[i] + s[i] * 2**rs[i] at the larger
    exponent, written into a and ra; a zero row of either side takes the other's exponent, so
    that it flushes nothing. a, s (B,N); ra, rs (B,)"""
    for i in range(a.shape[0]):
        ea = ra[i] if row_nonzero(a, i) else rs[i]
        es = rs[i] if row_nonzero(s, i) else ea
        ra[i] = add_aligned(a[i:i + 1], ea, s[i:i + 1], es, scale)


@njit(**JIT)
def layer_rows(h, g, nz, q):
    """The forward's rows made ready (gradbench.reference.layer_rows), in place: each row of h
    normalised, its exponent added to the absolute g (B,); returns the layer's exponent (the
    largest non-zero row's) and writes q (B,) = the rows' exponents relative to it (0 for rows of
    zeros); nz[i] = row i has an entry != 0 (NaN and inf count)."""
    normalise_rows(h, g, nz)
    e = rows_exponent(g, nz)
    for i in range(h.shape[0]):
        q[i] = g[i] - e if nz[i] else 0
    return e
