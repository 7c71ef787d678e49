"""The streaming histogram of log10 |dW| per layer, compiled: the twin of
:func:`gradbench.histograms.fill_streaming` (same bins, same counts), one pass to find each
layer's top bin and a few vectorised ones to count, with :data:`TEMP_BYTES` of temporaries per
entry of one layer (the NumPy version holds a float64 copy and an int64 index array of every
entry of the segment). The engine uses it for ``stats_only``
runs whatever the backend; the NumPy version stays the reference the tests compare it with.

No logarithm per entry. An entry v = m 2^k (1 <= m < 2) of a layer with exponent e lies in bin
``floor(y)``, y = (log10 v + e log10 2) p = (k + e + log2 m) p log10 2. The kernel computes y
from k + e (exact: integers) and log2 m from a short series (2 atanh s, s = (m - 1)/(m + 1)
after m is brought into [sqrt(1/2), sqrt 2): |s| <= 0.172, error ~1e-9), with no table
and no call, so the loop vectorises. An entry whose y lies within ``tol`` of a bin boundary is
binned the original way, ``floor((log10 v + e log10 2) p)`` with log10, as are subnormal
entries; ``tol`` is 1e-6 bins plus 64 ulps of the largest term of that formula, above both
its rounding and the series' error, so the counts are those of that formula entry for entry
(about 2e-6 of the entries take the slow way). At exponents beyond ~10^13 decades ``tol``
covers every entry and the kernel is the log10 loop again.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gradbench.histograms import COMPILED_FILL_BYTES, TOP_BIN_LIMIT
from gradbench.logscaled import LOG10_2

from ._config import JIT
from .activations import _INV_LN2

_FRACTION = np.uint64(2**52 - 1)  # the fraction bits of a float64
_ONE = np.uint64(0x3FF0000000000000)  # 1.0: its exponent bits
_INF = np.uint64(0x7FF0000000000000)  # the smallest non-finite |v|, as bits
_SQRT2 = math.sqrt(2.0)
# Bytes per entry of one layer that histogram_fill holds: |v| (float64), its mantissa (float64), its slot (int32)
# (the number lives in gradbench.histograms: the memory estimate reads it without importing Numba)
TEMP_BYTES = COMPILED_FILL_BYTES["numba"]


@njit(**JIT)
def _bin(v, shift, per_decade):
    """floor((log10 v + shift) * per_decade) for v > 0 finite (shift = e log10 2), as a float64
    (math.floor's int64 is undefined beyond 2^63, where an exponent near 2^62 takes an index at
    7 bins a decade)."""
    return np.floor((math.log10(v) + shift) * per_decade)


@njit(**JIT)
def histogram_fill(dW, e, per_decade, bins, top, counts, below, zeros, nonfinite):
    """Fill the GradHistogram rows of the m layers of dW (m, N, D) with exponents e (m,).

    Bin j holds the entries with j <= (log10|dW| + e log10 2) * per_decade < j + 1; each layer
    keeps the ``bins`` bins ending at its top bin (top = 0 and empty counts when it has no
    non-zero finite entry); ``below`` counts non-zero finite entries under the window.
    Temporaries: TEMP_BYTES per entry of one layer.
    """
    m = dW.shape[0]
    size = dW[0].size if m else 0
    x = np.empty(size, dtype=np.float64)  # |entries| of one layer, and their bits
    bits = x.view(np.uint64)
    mant = np.empty(size, dtype=np.uint64)  # m in [1, 2) of each entry, as bits
    mf = mant.view(np.float64)
    slot = np.empty(size, dtype=np.int32)  # 0: not counted (zero, non-finite) or not binned yet;
    tally = np.zeros(bins + 2, dtype=np.int64)  # 1: below the window; 2 + j: bin lo + j
    word = np.empty(1, dtype=np.uint64)
    wordf = word.view(np.float64)
    c = per_decade * LOG10_2
    for l in range(m):
        src = dW[l].reshape(size)
        shift = np.float64(e[l]) * LOG10_2
        for i in range(size):
            x[i] = abs(np.float64(src[i]))
        nz = 0
        nf = 0
        top_bits = np.uint64(0)  # of the largest finite |v| (bits order like values for v >= 0)
        for i in range(size):  # integer selects: vectorised
            b = bits[i]
            nz += b == 0
            nf += b >= _INF
            top_bits = max(top_bits, b if b < _INF else np.uint64(0))
        zeros[l] = nz
        nonfinite[l] = nf
        counts[l, :] = 0
        below[l] = 0
        if top_bits == 0:
            top[l] = 0
            continue
        word[0] = top_bits
        tf = _bin(wordf[0], shift, per_decade)  # log10 is monotonic: the top entry's bin is the top bin
        if not abs(tf) < TOP_BIN_LIMIT:
            raise ValueError("histogram_fill: a layer's top bin index lies beyond int64")
        t = np.int64(tf)
        top[l] = t
        lo = np.float64(t - bins + 1)
        tol = 1e-6 + 64.0 * 2.0**-52 * (abs(shift) + 340.0) * per_decade
        ek = np.float64(e[l]) - 1023.0  # k + e = biased exponent + ek
        for i in range(size):
            mant[i] = (bits[i] & _FRACTION) | _ONE
        slow = 0
        for i in range(size):  # vectorised: no call, no table, selects only
            kb = np.int64(bits[i] >> np.uint64(52))  # biased exponent (the sign bit is 0)
            mm = mf[i]
            up = mm > _SQRT2
            mm = mm * 0.5 if up else mm
            kf = np.float64(kb) + ek + (1.0 if up else 0.0)
            s = (mm - 1.0) / (mm + 1.0)
            s2 = s * s
            ln = 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0)))))
            y = (kf + ln * _INV_LN2) * c
            fl = math.floor(y)
            fr = y - fl
            odd = (fr < tol) | (fr > 1.0 - tol) | (kb == 0) | (kb == 2047)
            jf = fl - lo
            jf = jf if jf > -1.0 else -1.0  # below the window: slot 1
            jf = jf if jf < bins - 1.0 else bins - 1.0  # (never above it, but for rounding)
            slot[i] = 0 if odd else np.int32(jf) + 2
            slow += odd
        if slow:  # zeros and non-finite entries stay out; the rest binned with log10
            for i in range(size):
                if slot[i] == 0:
                    b = bits[i]
                    if b != 0 and b < _INF:
                        j = _bin(x[i], shift, per_decade) - lo  # in float64, as the C fill
                        slot[i] = np.int32(min(max(j, -1.0), bins - 1.0)) + 2
        for i in range(size):
            tally[slot[i]] += 1
        below[l] = tally[1]
        for j in range(bins):
            counts[l, j] = tally[j + 2]
        tally[:] = 0
