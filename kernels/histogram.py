"""The streaming histogram of log10 |dW| per layer, compiled: the twin of
:func:`gradbench.histograms.fill_streaming` (same bins, same counts), one pass to find each
layer's top bin and one to count, without the NumPy version's temporaries (a float64 copy and
an int64 index array of every entry). The engine uses it for ``stats_only`` runs whatever the
backend; the NumPy version stays the reference the tests compare it with.

No logarithm per entry. An entry v = (1 + f) 2^k (f the 52 fraction bits F = f 2^52) lies in
bin ``floor((log10 v + shift) * per_decade)``; within one binary exponent k that is
``floor(y_k) + #{boundaries below v}``, the boundaries being the few mantissas where the bin
changes. Per layer, a table over the exponents of the window holds ``floor(y_k)`` and those
boundaries as fraction-bit keys, so an entry costs a lookup and a couple of integer compares.
The keys are rounded, and so is ``(log10 v + shift) * per_decade`` itself, by a few ulps of the
largest of its terms: an entry within a guard of a key (:func:`_guard`: 16 such ulps, in units of
F) is binned the original way, with log10, so the counts are those of that formula entry for
entry. At exponents beyond ~10^12 decades the guard covers every entry and the kernel is the
log10 loop again.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gradbench.logscaled import LOG10_2

from ._config import JIT

FRACTION = 2**52  # units of the fraction bits F of a float64


@njit(**JIT)
def _bin(v, shift, per_decade):
    """floor((log10 v + shift) * per_decade) for v > 0 finite (shift = e log10 2)."""
    return math.floor((math.log10(v) + shift) * per_decade)


@njit(**JIT)
def _guard(shift):
    """|F - key| below which an entry is binned with log10: 16 ulps of the largest term of
    (log10 v + shift) (|log10 v| <= 324) in bins, as units of F (d bins = ln 10 / p d m / m)."""
    g = 32.0 * math.log(10.0) * (abs(shift) + 330.0)
    return np.int64(min(g, 8.0 * FRACTION))


@njit(**JIT)
def _exponent(v):
    """k with 2^k <= v < 2^(k+1) for a normal float64 v > 0; -1023 for a subnormal one."""
    return np.int64(math.frexp(v)[1]) - 1 if v >= 2.2250738585072014e-308 else np.int64(-1023)


@njit(**JIT)
def _table(kmin, kmax, shift, per_decade, base, keys):
    """For k in [kmin, kmax]: base[k - kmin] = floor(y_k) - 1 with y_k = (k log10 2 + shift) p the
    bin coordinate of 2^k, and keys[k - kmin, i] the fraction-bit key of the boundary of bin
    base + 1 + i: the F where (1 + F 2^-52) 2^k reaches it (< 0: below 2^k, >= 2^52: above)."""
    nk = keys.shape[1]
    for k in range(kmin, kmax + 1):
        y = (k * LOG10_2 + shift) * per_decade
        b = math.floor(y) - 1
        base[k - kmin] = b
        for i in range(nk):
            # boundary j = b + 1 + i at mantissa m = 10^(j / p - k log10 2 - shift), m 2^k the value
            t = (b + 1 + i) / per_decade - shift - k * LOG10_2
            m = 10.0 ** t
            keys[k - kmin, i] = np.int64(round((m - 1.0) * FRACTION)) if m < 4.0 else np.int64(4 * FRACTION)


@njit(**JIT)
def histogram_fill(dW, e, per_decade, bins, top, counts, below, zeros, nonfinite):
    """Fill the GradHistogram rows of the m layers of dW (m, N, D) with exponents e (m,).

    Bin j holds the entries with j <= (log10|dW| + e log10 2) * per_decade < j + 1; each layer
    keeps the ``bins`` bins ending at its top bin (top = 0 and empty counts when it has no
    non-zero finite entry); ``below`` counts non-zero finite entries under the window.
    """
    m = dW.shape[0]
    size = dW[0].size if m else 0
    x = np.empty(size, dtype=np.float64)
    bits = x.view(np.uint64)
    # exponents of one window: bins / p decades, plus the partial ones at both ends
    span = int(math.ceil(bins / per_decade / LOG10_2)) + 3
    nk = int(math.ceil(per_decade * LOG10_2)) + 2  # boundaries within one binary exponent, with margin
    base = np.empty(span, dtype=np.int64)
    keys = np.empty((span, nk), dtype=np.int64)
    tally = np.zeros(bins, dtype=np.int64)
    for l in range(m):
        src = dW[l].reshape(size)
        shift = np.float64(e[l]) * LOG10_2
        nz = 0
        nf = 0
        amax = 0.0
        amin = np.inf
        for i in range(size):
            v = abs(np.float64(src[i]))
            x[i] = v
            if v == 0.0:
                nz += 1
            elif not math.isfinite(v):
                nf += 1
            else:
                amax = max(amax, v)
                amin = min(amin, v)
        zeros[l] = nz
        nonfinite[l] = nf
        counts[l, :] = 0
        below[l] = 0
        if amax == 0.0:
            top[l] = 0
            continue
        t = _bin(amax, shift, per_decade)  # log10 is monotonic: the top entry's bin is the top bin
        top[l] = t
        lo = t - bins + 1
        kmax = _exponent(amax)
        kmin = max(kmax - span + 1, _exponent(amin))  # the table covers the window's exponents present
        _table(kmin, kmax, shift, per_decade, base, keys)
        guard = _guard(shift)
        nb = 0
        for i in range(size):
            b = bits[i]
            if b == 0 or b >= np.uint64(0x7FF0000000000000):
                continue  # zero, or not finite: counted above
            k = np.int64(b >> np.uint64(52)) - 1023
            if k < kmin:  # far below the window (kmin > the smallest exponent only then)
                j = lo - 1
            elif k == -1023:  # subnormal
                j = _bin(x[i], shift, per_decade)
            else:
                f = np.int64(b & np.uint64(FRACTION - 1))
                r = k - kmin
                j = base[r]
                near = False
                for c in range(nk):
                    key = keys[r, c]
                    if f >= key:
                        j += 1
                    if abs(f - key) < guard:
                        near = True
                if near:
                    j = _bin(x[i], shift, per_decade)
            j -= lo
            if j >= 0:
                tally[min(j, bins - 1)] += 1  # j <= bins - 1 (log10 is monotonic); never out of bounds
            else:
                nb += 1
        below[l] = nb
        for j in range(bins):
            counts[l, j] = tally[j]
            tally[j] = 0
