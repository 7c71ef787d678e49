"""The streaming histogram of log10 |dW| per layer, compiled: the twin of
:func:`gradbench.histograms.fill_streaming` (same bins, same counts), one pass to find each
layer's top bin and one to count, without the NumPy version's temporaries (a float64 copy and
an int64 index array of every entry). The engine uses it for ``stats_only`` runs whatever the
backend; the NumPy version stays the reference the tests compare it with.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gradbench.logscaled import LOG10_2

from ._config import JIT


@njit(**JIT)
def _bin(v, shift, per_decade):
    """floor((log10 v + shift) * per_decade) for v > 0 finite (shift = e log10 2)."""
    return math.floor((math.log10(v) + shift) * per_decade)


@njit(**JIT)
def histogram_fill(dW, e, per_decade, bins, top, counts, below, zeros, nonfinite):
    """Fill the GradHistogram rows of the m layers of dW (m, N, D) with exponents e (m,).

    Bin j holds the entries with j <= (log10|dW| + e log10 2) * per_decade < j + 1; each layer
    keeps the ``bins`` bins ending at its top bin (top = 0 and empty counts when it has no
    non-zero finite entry); ``below`` counts non-zero finite entries under the window.
    """
    m = dW.shape[0]
    for l in range(m):
        x = dW[l].reshape(dW[l].size)
        shift = np.float64(e[l]) * LOG10_2
        nz = 0
        nf = 0
        amax = 0.0
        for i in range(x.size):
            v = abs(np.float64(x[i]))
            if v == 0.0:
                nz += 1
            elif not math.isfinite(v):
                nf += 1
            elif v > amax:
                amax = v
        zeros[l] = nz
        nonfinite[l] = nf
        for j in range(bins):
            counts[l, j] = 0
        below[l] = 0
        if amax == 0.0:
            top[l] = 0
            continue
        t = _bin(amax, shift, per_decade)  # log10 is monotonic: the top entry's bin is the top bin
        top[l] = t
        lo = t - bins + 1
        nb = 0
        for i in range(x.size):
            v = abs(np.float64(x[i]))
            if v > 0.0 and math.isfinite(v):
                j = _bin(v, shift, per_decade) - lo
                if j >= 0:
                    counts[l, min(j, bins - 1)] += 1  # j <= bins - 1 (log10 is monotonic); never out of bounds
                else:
                    nb += 1
        below[l] = nb
