"""Histograms of log10 |dL/dW_l| entries, exact at any exponent: one builder for every use.

Entries are mantissas m with one int64 exponent e per layer (true value m 2^e); the bin of an
entry is ``floor((log10|m| + e log10 2 - lo) * scale)``, computed from m and e so that nothing
underflows (as exact as float64 log10: about 1e-12 decades at 10^5 decades). :func:`bin_rows`
computes those indices in place, one log10 per entry, and :func:`count_window` counts them in
a window of bins per layer. Two users:

- streaming (``stats_only`` runs): :func:`fill_streaming` keeps per layer the ``bins`` bins of
  1/per_decade decades ending at its largest entry (:class:`GradHistogram`);
- :func:`histograms` (a diagnosis of stored gradients): common bins over all layers.

:func:`rebin_streaming` turns streaming histograms into common bins for a diagnosis (by default
each a whole number of fine bins, so that the counts stay exact). Exact zeros and non-finite
entries are counted apart everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradbench.logscaled import LOG10_2

# The default window of the streaming histograms (bins) and of a diagnosis, and the streaming
# resolution (bins per decade).
DEFAULT_BINS = 40
DEFAULT_PER_DECADE = 4
# The most of either a run takes: a window of 10^6 bins is 10^6 decades at one bin a decade (2^31
# bins passed the plan and ran out of memory in the diagnosis)
MAX_BINS = 10**6
MAX_PER_DECADE = 10**6
# The largest |top bin index| the three fills store (int64, with room below it for a layer's ~650
# decades of entries at MAX_PER_DECADE bins a decade and its window of MAX_BINS). A run's exponents
# reach ~2^62 (gradients near 10^-1.4e18: a zero-bias GELU stack at sigma_w = 3, depth 300, width 8,
# batch 1), an index of ~5.6e18 at the default 4 bins a decade: inside; at 7 and more bins a decade
# such a layer is refused by name (fill_streaming) where it had stored INT64_MIN (Numba, NumPy).
TOP_BIN_LIMIT = 2.0**63 - 2.0**40


@dataclass(frozen=True, eq=False)
class GradHistogram:
    """Per-layer histograms of log10 |dL/dW_l| entries on a fixed grid, exact at any depth.

    Bin ``j`` (an integer, the same grid for every layer) holds the entries with
    ``j <= log10|dW| * per_decade < j + 1``, computed from mantissa and int64 exponent (no
    underflow; bin assignment is as exact as float64 log10, about 1e-12 decades at 10^5
    decades). Each layer keeps the ``bins`` bins ending at its largest entry: ``counts[l, i]``
    is bin ``top[l] - bins + 1 + i``; ``below[l]`` counts non-zero finite entries under the
    window, ``zeros[l]`` and ``nonfinite[l]`` the rest. Layers with no non-zero finite entry
    have ``top = 0`` and empty counts.
    """

    per_decade: int
    bins: int
    top: np.ndarray
    counts: np.ndarray
    below: np.ndarray
    zeros: np.ndarray
    nonfinite: np.ndarray

    def edges(self, layer: int) -> np.ndarray:
        """The bins + 1 bin edges (log10 units) of layer ``layer``."""
        lo = int(self.top[layer]) - self.bins + 1
        return np.arange(lo, lo + self.bins + 1) / self.per_decade

    def dense(self, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All layers on the common grid [lo, hi) (log10 units, rounded out to the bin grid).

        Returns edges (nb + 1,), counts (L, nb) and outside (L,): non-zero finite entries not
        in [lo, hi), including those under each layer's window.
        """
        j0, j1 = math.floor(lo * self.per_decade), math.ceil(hi * self.per_decade)
        nb = max(j1 - j0, 1)
        L = len(self.top)
        out = np.zeros((L, nb), dtype=np.int64)
        first = self.top - self.bins + 1 - j0  # column of counts[:, 0] on the dense grid
        for i in range(self.bins):
            col = first + i
            ok = (col >= 0) & (col < nb)
            out[np.nonzero(ok)[0], col[ok]] += self.counts[ok, i]
        total = self.counts.sum(axis=1, dtype=np.int64) + self.below
        return np.arange(j0, j0 + nb + 1) / self.per_decade, out, total - out.sum(axis=1)


# ------------------------------------------------------------------ the builder
def bin_rows(m: np.ndarray, e: np.ndarray, lo, scale: float, closed: tuple[int, float] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin indices ``floor((log10|m| + e log10 2 - lo) * scale)`` of every entry, as float64.

    ``m`` (R, M) mantissas, ``e`` (R,) exponents, ``lo`` a scalar or (R,). Returns the indices
    (R, M) (-inf for zeros, NaN or inf for non-finite entries), and per row the number of exact
    zeros and of non-finite entries. ``closed``: (bins, tol): the range's two edges belong to
    it, as np.histogram's: an entry on the lower edge gets index 0 and one on the upper edge
    ``bins - 1``, "on" meaning within ``tol`` (in bin units: the rounding of the log10 computed
    here, which np.log10 of the same number can differ from by a few units of the last place of
    its magnitude); beyond them, below 0 or ``bins`` and more.
    """
    a = np.abs(m, dtype=np.float64)  # a fresh float64 array: worked on in place
    zeros = a.shape[1] - np.count_nonzero(a, axis=1)
    nonfinite = a.shape[1] - np.count_nonzero(np.isfinite(a), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log10(a, out=a)
        a += (np.asarray(e, dtype=np.float64) * LOG10_2 - lo).reshape(-1, 1)
        a *= scale
        if closed is not None:  # the edges themselves, to rounding, as np.histogram's first and last bins
            n, tol = closed
            a[(a >= n) & (a <= n + tol)] = n - 0.5
            a[(a < 0) & (a >= -tol)] = 0.0
        np.floor(a, out=a)
    return a, zeros.astype(np.int64), nonfinite.astype(np.int64)


def count_window(idx: np.ndarray, lo, nbins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of the finite indices ``idx`` (R, M) in bins ``lo .. lo + nbins - 1`` per row.

    Returns counts (R, nbins), below (R,) and above (R,) (finite indices outside the window);
    non-finite indices (zeros, NaN, inf entries) are not counted. ``idx`` is overwritten.
    """
    R = idx.shape[0]
    idx -= np.asarray(lo, dtype=np.float64).reshape(-1, 1)
    skip = ~np.isfinite(idx)
    np.clip(idx, -1, nbins, out=idx)
    idx += 1  # column 0: below, 1..nbins: inside, nbins + 1: above, nbins + 2: not counted
    idx[skip] = nbins + 2
    cols = idx.astype(np.int64)
    cols += (np.arange(R, dtype=np.int64) * (nbins + 3))[:, None]
    c = np.bincount(cols.ravel(), minlength=R * (nbins + 3)).reshape(R, nbins + 3)
    return c[:, 1:nbins + 1], c[:, 0], c[:, nbins + 1]


# Bytes per entry of one layer that the compiled fills hold: the Numba kernel's |v| (float64), its
# mantissa (float64) and its slot (int32) (kernels/histogram.py TEMP_BYTES); the C one's none (a few KiB
# of blocks on its stack and 32 (bins + 2) bytes of tallies, csrc/histogram.c). Here, so that the
# memory estimate (gradbench.plan) reads them without importing Numba or the C extension.
COMPILED_FILL_BYTES = {"numba": 20, "c": 0}


def fill_for(backend: str | None) -> str:
    """The fill of a ``stats_only`` run's streaming histograms on ``backend``: the backend's own
    compiled one (``"c"``, ``"numba"``: its module's ``histogram_fill``, loaded with the backend, so
    that a C run imports no Numba), NumPy's on the ``"numpy"`` backend or when the backend is not
    known (None)."""
    return backend if backend in COMPILED_FILL_BYTES else "numpy"


def fill_streaming(dW: np.ndarray, e: np.ndarray, per_decade: int, bins: int, top, counts, below, zeros,
                   nonfinite, kernel=None) -> None:
    """Fill the :class:`GradHistogram` rows of the layers of dW (m, ...) with exponents e (m,).

    Layers with no non-zero finite entry get ``top = 0`` and empty counts. ``kernel``: a compiled
    twin with these arguments (the same bins, from vectorised passes over one layer at a time),
    used when dW is C-contiguous (m, N, D): the backend's own ``histogram_fill``
    (``gradbench.kernels.histogram_fill``, Numba, or its unchecked ``histogram_fill_kernel``, which
    the engine passes; :func:`gradbench.cbackend.histogram_fill`, C,
    float64 and float32 dW). None: this NumPy version, the reference.
    """
    if kernel is not None and dW.flags.c_contiguous and dW.ndim == 3:
        try:
            kernel(dW, np.ascontiguousarray(e, dtype=np.int64), int(per_decade), int(bins), top, counts, below,
                   zeros, nonfinite)
            return
        except ValueError:  # the compiled fills refuse a top bin beyond TOP_BIN_LIMIT: say which and why
            _refuse_far_bins(dW, e, per_decade)
            raise
    idx, zeros[:], nonfinite[:] = bin_rows(dW.reshape(dW.shape[0], -1), e, 0.0, per_decade)
    with np.errstate(invalid="ignore"):
        t = np.max(idx, axis=1, where=np.isfinite(idx), initial=-np.inf)
    t[~np.isfinite(t)] = 0.0
    if not np.all(np.abs(t) < TOP_BIN_LIMIT):
        _refuse_far_bins(dW, e, per_decade)
    top[:] = t.astype(np.int64)
    counts[:], below[:], _ = count_window(idx, t - bins + 1, bins)


def _refuse_far_bins(dW: np.ndarray, e: np.ndarray, per_decade: int) -> None:
    """Raise the ValueError that names hist_per_decade when some layer of dW (m, ...) with exponents
    e (m,) has its largest non-zero finite |entry| in a bin whose index, floor((log10 |v| + e log10 2)
    per_decade), is beyond :data:`TOP_BIN_LIMIT` in magnitude (one pass over dW, on the failure
    path only); return otherwise."""
    a = np.abs(dW.reshape(dW.shape[0], -1), dtype=np.float64)
    a[~np.isfinite(a)] = 0.0
    big = a.max(axis=1, initial=0.0)
    has = big > 0
    with np.errstate(divide="ignore"):
        decades = np.log10(big[has]) + np.asarray(e, dtype=np.float64)[has] * LOG10_2
    far = np.abs(np.floor(decades * per_decade)) >= TOP_BIN_LIMIT
    if np.any(far):
        x = decades[far][np.argmax(np.abs(decades[far]))]
        raise ValueError(f"hist_per_decade={per_decade}: a layer's gradients lie near 10^{x:.4g}, whose "
                         f"histogram bin index at {per_decade} bins a decade is beyond int64; pass "
                         f"hist_per_decade={_finest(abs(x))} or less")


def _finest(decades: float) -> int:
    """The most bins a decade whose index at ``decades`` (> 0) stays below TOP_BIN_LIMIT (1 at least)."""
    p = int(TOP_BIN_LIMIT // decades)
    while p > 1 and math.floor(decades * p) >= TOP_BIN_LIMIT:
        p -= 1
    return max(p, 1)


def checked_range(hist_range, bins: int) -> tuple[float, float]:
    """A caller's ``hist_range`` (lo, hi) in log10 units as floats: finite reals with lo < hi that
    split into ``bins`` bins of distinct, finite edges with a finite bins / (hi - lo) (a range of
    (-inf, 0) gave NaN edges, (1e-320, 2e-320) an infinite scale, and every entry was counted
    nowhere; strings or three numbers failed inside the unpacking)."""
    what = "hist_range must be (lo, hi), finite numbers in log10 units with lo < hi"
    if isinstance(hist_range, (str, bytes)) or not hasattr(hist_range, "__len__") or len(hist_range) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) for v in hist_range):
        raise ValueError(f"{what}, got {hist_range!r}")
    try:
        lo, hi = (float(v) for v in hist_range)
    except OverflowError:  # an int beyond any float
        raise ValueError(f"{what}, got {hist_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{what}, got {hist_range!r}")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        edges, scale = np.linspace(lo, hi, bins + 1), bins / (hi - lo)
    if not (np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0) and math.isfinite(scale)):
        raise ValueError(f"hist_range={hist_range!r} does not split into {bins} bins of distinct float edges "
                         "(a range too narrow for its bins, or too wide for float64)")
    return lo, hi


# Entries of dW that :func:`histograms` works on at a time: a block of whole layers, or a slice of
# one layer's entries where a layer has more. Its temporaries (8 MiB of float64 and a few masks)
# come back from the heap block after block (glibc's mmap threshold rises to their size once the
# first is freed): over all 300 layers of a (300, 256, 256) dW at once they were twice the
# gradients, fresh pages each time (gb.diagnose 0.37-0.45 s warm, 0.16-0.18 s in blocks).
HIST_CHUNK = 2**20


def entry_blocks(L: int, M: int, chunk: int):
    """(r0, r1, c0, c1): blocks of at most ``chunk`` entries (at least one row's slice) covering an
    (L, M) array row by row: whole rows where a row has at most ``chunk`` entries, else slices."""
    if M <= chunk:
        rows = max(1, chunk // max(M, 1))
        for r in range(0, L, rows):
            yield r, min(L, r + rows), 0, M
    else:
        for r in range(L):
            for c in range(0, M, chunk):
                yield r, r + 1, c, min(M, c + chunk)


def histograms(W, bins: int = DEFAULT_BINS, hist_range: tuple[float, float] | None = None, chunk: int = HIST_CHUNK):
    """Histograms of log10 |entries| of each layer's dW on common bins, exact from mantissas and exponents.

    Parameters
    ----------
    W : LogScaled (L, ...)
        One exponent per layer.
    bins : int
    hist_range : (lo, hi), optional
        In log10 units; default: floor and ceil of the finite, non-zero range over all layers.
        The upper edge belongs to the last bin.
    chunk : int
        Entries worked on at a time (:data:`HIST_CHUNK`); the counts do not depend on it.

    Returns
    -------
    edges (bins + 1,), counts (L, bins), zeros (L,), nonfinite (L,), outside (L,)
    """
    m = W.mantissa
    L = m.shape[0]
    m2 = m.reshape(L, -1)
    e = W.exponent.reshape(L)
    if hist_range is None:
        lo, hi, offset = _default_range(m2, e, chunk)
    else:
        (lo, hi), offset = checked_range(hist_range, bins), 0
    edges = np.linspace(lo, hi, bins + 1) + offset * LOG10_2
    # the rounding of log10|m| + (e - offset) log10 2 - lo, in bin units: a few ulps of the magnitudes
    tol = 16 * np.finfo(np.float64).eps * (max(abs(lo), abs(hi)) + 1.0) * bins / (hi - lo)
    counts = np.zeros((L, bins), dtype=np.int64)
    zeros, nonfinite, outside = (np.zeros(L, dtype=np.int64) for _ in range(3))
    for r0, r1, c0, c1 in entry_blocks(L, m2.shape[1], chunk):
        # lo and hi themselves (to rounding) belong to the range; beyond them is outside (a caller's range
        # may cut entries off)
        idx, z, nf = bin_rows(m2[r0:r1, c0:c1], e[r0:r1] - offset, lo, bins / (hi - lo), closed=(bins, tol))
        c, below, above = count_window(idx, 0.0, bins)
        counts[r0:r1] += c
        zeros[r0:r1] += z
        nonfinite[r0:r1] += nf
        outside[r0:r1] += below + above
    return edges, counts, zeros, nonfinite, outside


# From this exponent on (|log10| ~ 3e11 decades, where float64's spacing passes 1e-4 decades) the
# default range is counted from the largest exponent: a loss of e^-1e15 puts every layer near
# 10^-4.3e14, where float64 cannot tell one decade from the next.
FAR_EXPONENT = 2**40


def _default_range(m2: np.ndarray, e: np.ndarray, chunk: int = HIST_CHUNK) -> tuple[float, float, int]:
    """Floor and ceil of log10 of the smallest and largest non-zero finite entry over all rows
    (``chunk`` entries at a time, :func:`entry_blocks`: a copy of every dW at once would double the
    memory of a run), in decades above ``offset log10 2``; ``offset`` is 0, or the largest
    exponent of a row with such an entry when one is beyond :data:`FAR_EXPONENT`. Returns (lo, hi, offset)."""
    L = m2.shape[0]
    lmin, lmax = np.full(L, np.inf), np.zeros(L)  # per row: the smallest and largest such |entry|
    for r0, r1, c0, c1 in entry_blocks(L, m2.shape[1], chunk):
        absm = np.abs(m2[r0:r1, c0:c1], dtype=np.float64)
        ok = np.isfinite(absm)
        ok &= absm > 0
        np.minimum(lmin[r0:r1], np.min(absm, axis=1, where=ok, initial=np.inf), out=lmin[r0:r1])
        np.maximum(lmax[r0:r1], np.max(absm, axis=1, where=ok, initial=0.0), out=lmax[r0:r1])
    has = lmax > 0
    if not has.any():
        return -1.0, 0.0, 0
    es = e[has]
    offset = int(es.max()) if int(np.abs(es).max()) >= FAR_EXPONENT else 0
    lo = float(np.min(np.log10(lmin[has]) + LOG10_2 * (es - offset)))
    hi = float(np.max(np.log10(lmax[has]) + LOG10_2 * (es - offset)))
    lo, hi = math.floor(lo), math.ceil(hi)
    return float(lo), float(hi if hi > lo else lo + 1), offset


# Layers whose counts _move_whole_bins moves at a time (plan.diagnose_bytes counts its temporaries)
MOVE_CHUNK = 8192


def rebin_streaming(hist, bins: int = DEFAULT_BINS, hist_range: tuple[float, float] | None = None,
                    chunk: int = MOVE_CHUNK):
    """The streaming histograms of a ``stats_only`` run (:class:`GradHistogram`)
    on ``bins`` common bins, as :func:`histograms` returns them.

    By default the common bins are whole fine bins (1 / per_decade decades): ``k`` fine bins
    each, the fewest that let ``bins`` of them cover every layer's occupied fine bins, from the
    lowest occupied one up. Each fine bin then lies inside one common bin, so the counts are
    exact: those of ``np.histogram`` of the entries' log10 on the returned edges.

    An explicit ``hist_range`` is exact in the same way when its ends and its bin width are
    whole multiples of 1 / per_decade. Otherwise a fine bin may straddle a common edge: each
    goes whole into the common bin that holds its centre, so the counts are exact only to one
    fine bin (the streaming histograms do not know where in its fine bin an entry lies).
    """
    L, wb, pd = len(hist.top), hist.bins, hist.per_decade
    has = hist.counts.sum(axis=1) > 0
    offset = 0  # a bin index to count from, far out (as in _default_range; top is exact in int64)
    if hist_range is not None:
        lo, hi = checked_range(hist_range, bins)
        j0, k = _on_fine_grid(lo, hi, bins, pd)
    elif has.any():
        if int(np.abs(hist.top[has]).max()) >= FAR_EXPONENT:
            offset = int(hist.top[has].max())
        j0, k = _default_fine_range(hist, has, bins, offset, chunk)
    else:
        (lo, hi), k = (-1.0, 0.0), None
    counts = np.zeros((L, bins), dtype=np.int64)
    outside = hist.below.astype(np.int64).copy()
    if k is not None:  # common edges on the fine grid: fine bin j goes to column (j - j0) // k
        edges = (j0 + k * np.arange(bins + 1)) / pd + offset / pd

        def column(a, b):
            return (hist.top[a:b, None] - offset - wb + 1 + np.arange(wb)[None, :] - j0) // k
    else:
        edges = np.linspace(lo, hi, bins + 1) + offset / pd

        def column(a, b):
            centre = (hist.top[a:b, None] - offset - wb + 1 + np.arange(wb)[None, :] + 0.5) / pd
            return np.floor((centre - lo) / (hi - lo) * bins).astype(np.int64)

    _move_whole_bins(counts, outside, hist.counts, column, chunk)
    return edges, counts, hist.zeros.astype(np.int64), hist.nonfinite.astype(np.int64), outside


def _default_fine_range(hist, has: np.ndarray, bins: int, offset: int, chunk: int) -> tuple[int, int]:
    """(j0, k): the lowest occupied fine bin of the layers ``has`` (counted from ``offset``) and
    the fewest fine bins per common bin with which ``bins`` common bins reach the highest (each
    layer's top bin)."""
    low = None
    for a in range(0, len(hist.top), chunk):  # no (L, bins) temporary at once
        rows = np.flatnonzero(has[a:a + chunk]) + a
        if rows.size:
            first = hist.top[rows] - offset - hist.bins + 1 + np.argmax(np.asarray(hist.counts[rows]) > 0, axis=1)
            low = int(first.min()) if low is None else min(low, int(first.min()))
    top = int(hist.top[has].max()) - offset
    return low, -(-(top - low + 1) // bins)


def rebin_is_exact(hist, bins: int, hist_range: tuple[float, float] | None) -> bool:
    """Whether :func:`rebin_streaming` of ``hist`` on ``bins`` bins over ``hist_range`` gives
    np.histogram's counts (every fine bin inside one common bin), not counts exact only to one
    fine bin."""
    if hist_range is None:
        return True
    lo, hi = checked_range(hist_range, bins)
    return _on_fine_grid(lo, hi, bins, hist.per_decade)[1] is not None


def _on_fine_grid(lo: float, hi: float, bins: int, pd: int) -> tuple[int, int | None]:
    """(j0, k) when [lo, hi) in ``bins`` bins has its edges on the 1/pd grid: lo = j0 / pd and
    every bin k fine bins wide; else (0, None)."""
    j0, span = lo * pd, (hi - lo) * pd
    if j0 == round(j0) and span == round(span) and round(span) % bins == 0:
        return int(round(j0)), int(round(span)) // bins
    return 0, None


def _move_whole_bins(out: np.ndarray, outside: np.ndarray, counts: np.ndarray, column, chunk: int) -> None:
    """Adds ``counts[l, j]`` to ``out[l, column(a, b)[l - a, j]]`` where that column lies in
    ``out``'s row, else to ``outside[l]``; ``column`` gives the target columns of the rows [a, b).

    Rows go ``chunk`` at a time: the temporaries are a few (chunk, source bins) arrays (with
    65,536 rows, diagnosing a 2 x 10^5-layer stats-only run added 197 MiB at its peak; with
    8,192, 89 MiB). Counts are summed by ``np.bincount`` (float64 weights: exact below 2^53, far
    above any layer's entry count)."""
    L, bins = out.shape
    for a in range(0, L, chunk):
        b = min(L, a + chunk)
        col = column(a, b)
        c = np.asarray(counts[a:b], dtype=np.int64)
        inside = (col >= 0) & (col < bins) & (c > 0)
        flat = (col + np.arange(b - a)[:, None] * bins)[inside]
        moved = np.bincount(flat, weights=c[inside], minlength=(b - a) * bins)
        out[a:b] += moved.reshape(b - a, bins).astype(np.int64)
        outside[a:b] += np.where(inside, 0, c).sum(axis=1)


# ------------------------------------------------------------------ relative to each layer's norm
# The fewest bins a relative histogram from a diagnosis may have (fewer show no shape).
MIN_RELATIVE_BINS = 4


def check_has_histograms(res, who: str) -> None:
    """Refuse a Result that carries neither gradients nor histograms (``stats_only=True`` with
    ``hist_bins=0``), naming ``who`` needs them and how to get them."""
    if getattr(res, "grads", None) is None and getattr(res, "grad_hist", None) is None:
        raise ValueError(f"{who} needs per-layer histograms of log10 |dW|, and the result has none (a stats_only "
                         "run with hist_bins=0): run gb.backprop with hist_bins >= 1 (default 40) or without "
                         "stats_only")


@dataclass(frozen=True, eq=False)
class RelativeHistograms:
    """Per-layer histograms of log10 |dW_l entries| - log10 ||dW_l||_F on one grid.

    Every entry satisfies |dW_ij| <= ||dW||_F, so the values are <= 0 and each layer's
    distribution sits near -log10 N whatever its scale: at 10^5 layers spanning 60,000 decades
    the shape of every layer stays visible (absolute bins would give each layer one bin).
    ``edges`` (bins + 1,) in decades; ``counts`` (L, bins); ``zeros`` (L,) exact zeros;
    ``outside`` (L,) non-zero finite entries below the grid; ``nonfinite`` (L,) NaN and inf
    entries; ``unplaced`` (L,) non-zero finite entries whose place relative to the norm is not
    known: outside the bins they were counted in, or in a layer whose norm is not finite (it
    has non-finite entries). Every entry of a layer is in exactly one of these. ``exact``:
    every entry is in its own bin (from stored gradients), else at most one bin from it
    (re-binned from coarser histograms, :meth:`shifted`).
    """

    edges: np.ndarray
    counts: np.ndarray
    zeros: np.ndarray
    outside: np.ndarray
    nonfinite: np.ndarray | None = None  # None: none (zeros of the layers' length)
    unplaced: np.ndarray | None = None
    exact: bool = True

    def __post_init__(self):
        for name in ("nonfinite", "unplaced"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros(len(self.zeros), dtype=np.int64))

    @classmethod
    def from_result(cls, res, per_decade: int = DEFAULT_PER_DECADE, decades: float | None = None
                    ) -> "RelativeHistograms":
        """Exact from the stored gradients of a Result; from the streaming histograms of a
        ``stats_only`` Result (each fine bin placed as :meth:`shifted` says: every entry at most
        one bin from its own), on a grid no finer than theirs."""
        check_has_histograms(res, "RelativeHistograms.from_result")
        norm = np.asarray(res.grad_norm.log10(), dtype=np.float64)
        N = res.stack.width
        lo = -float(math.ceil(math.log10(N)) + 5 if decades is None else decades)
        if res.grads is None:
            h = res.grad_hist
            per_decade = min(per_decade, h.per_decade)  # finer bins than the source's would be a comb
            first = (h.top - h.bins + 1) / h.per_decade  # the lower edge of each layer's window
            return cls.shifted(first, 1.0 / h.per_decade, h.counts, norm, lo, int(round(-lo * per_decade)), h.zeros,
                               beneath=h.below, unknown=0, nonfinite=h.nonfinite)
        bins = int(round(-lo * per_decade))
        W = res.grads.W
        L = W.mantissa.shape[0]
        m2, e = W.mantissa.reshape(L, -1), W.exponent.reshape(L)
        counts = np.zeros((L, bins), dtype=np.int64)
        zeros, nonfinite, outside, unplaced = (np.zeros(L, dtype=np.int64) for _ in range(4))
        ok = np.isfinite(norm)
        shift = np.where(ok, norm, 0.0) + lo
        for s in range(0, L, 4096):
            t = slice(s, s + 4096)
            idx, zeros[t], nonfinite[t] = bin_rows(m2[t], e[t], shift[t], per_decade)
            idx[idx == bins] = bins - 1  # |entry| = ||dW|| (one non-zero entry): the top bin
            c, below, above = count_window(idx, 0.0, bins)  # above: none, as |entry| <= ||dW||
            counts[t] = np.where(ok[t, None], c, 0)
            outside[t] = np.where(ok[t], below + above, 0)
            unplaced[t] = np.where(ok[t], 0, c.sum(axis=1) + below + above)
        return cls(np.linspace(lo, 0.0, bins + 1), counts, zeros, outside, nonfinite, unplaced)

    @classmethod
    def from_diagnosis(cls, d, per_decade: int = DEFAULT_PER_DECADE) -> "RelativeHistograms":
        """From a diagnosis's common bins, each shifted by its layer's norm (:meth:`shifted`:
        every entry at most one bin from its own).

        The relative bins are 1/per_decade decades wide, or the smallest multiple of that no
        narrower than the diagnosis's bins, on a grid from 0 down to at least the default
        lower end. Refused when that grid would have fewer than :data:`MIN_RELATIVE_BINS` bins
        (deep stacks: 40 common bins over ~2,000 decades are 48 decades each, wider than a
        layer's whole distribution): the Result gives the exact view, or a diagnosis with more
        bins (or a narrower ``hist_range``). The diagnosis's ``hist_outside`` entries (outside
        its bins) are ``unplaced``.
        """
        N = int(d.stack["width"])
        lo = -float(math.ceil(math.log10(N)) + 5)
        edges = np.asarray(d.hist_edges, dtype=np.float64)
        width = float(edges[1] - edges[0])
        step = max(1, math.ceil(width * per_decade * (1 - 1e-9))) / per_decade
        bins = math.ceil(-lo / step - 1e-9)
        if bins < MIN_RELATIVE_BINS:
            need = math.ceil((edges[-1] - edges[0]) * per_decade)
            raise ValueError(f"the diagnosis's histogram bins are {width:.3g} decades wide: relative to each layer's "
                             f"norm they would give fewer than {MIN_RELATIVE_BINS} bins over the {-lo:g} decades "
                             f"below it; plot the Result instead (exact), or diagnose with bins >= {need} (or a "
                             "narrower hist_range), or pass relative=False for the diagnosis's own bins")
        first = np.full(len(d.grad_log10), float(edges[0]))
        return cls.shifted(first, width, d.hist_counts, np.asarray(d.grad_log10, dtype=np.float64), -bins * step,
                           bins, d.hist_zeros, beneath=0, unknown=d.hist_outside, nonfinite=d.hist_nonfinite)

    @classmethod
    def shifted(cls, first, width, counts, norm, lo, bins, zeros, *, beneath, unknown, nonfinite
                ) -> "RelativeHistograms":
        """Counts on per-layer grids (lower edge ``first[l]``, bins of ``width`` no wider than
        the relative grid's) moved to the relative grid [lo, 0) of ``bins`` bins.

        A source bin covers [a, b) relative to its layer's norm; as no entry lies above the
        norm, its entries lie in [a, min(b, 0)], and the bin goes whole into the relative bin
        holding that interval's centre: every entry lands at most one bin from its own. Only
        a bin wholly below ``lo`` (b <= lo) counts as ``outside``; one across ``lo`` goes to the
        lowest bin. ``beneath`` (L,): entries below each layer's grid (``outside`` if that grid
        starts at or below ``lo``, else ``unplaced``); ``unknown`` (L,): entries anywhere else
        (``unplaced``). In layers whose norm is not finite every finite entry is ``unplaced``.
        """
        counts = np.asarray(counts)  # converted chunk by chunk (_move_whole_bins), not as a whole
        norm = np.asarray(norm, dtype=np.float64)
        L = len(norm)
        nb = counts.shape[1] if counts.ndim == 2 else 0
        ok = np.isfinite(norm)
        rel_first = np.asarray(first, dtype=np.float64) - np.where(ok, norm, 0.0)
        out = np.zeros((L, bins), dtype=np.int64)
        extra = np.zeros(L, dtype=np.int64)  # the source bins wholly below lo

        def column(a, b):
            start = rel_first[a:b, None] + np.arange(nb)[None, :] * width
            centre = (start + np.minimum(start + width, 0.0)) / 2
            col = np.clip(np.floor((centre - lo) / -lo * bins), 0, bins - 1).astype(np.int64)
            return np.where((start + width <= lo) | ~ok[a:b, None], -1, col)

        _move_whole_bins(out, extra, counts.reshape(L, nb), column, MOVE_CHUNK)
        beneath = np.broadcast_to(np.asarray(beneath, dtype=np.int64), (L,))
        low = rel_first <= lo  # the grid of the layer starts at or below lo: what lies beneath is outside
        outside = np.where(ok, extra + np.where(low, beneath, 0), 0)
        unplaced = np.broadcast_to(np.asarray(unknown, dtype=np.int64), (L,)) + np.where(
            ok, np.where(low, 0, beneath), extra + beneath)
        return cls(np.linspace(lo, 0.0, bins + 1), out, np.asarray(zeros, dtype=np.int64), outside,
                   np.asarray(nonfinite, dtype=np.int64), unplaced, exact=False)
