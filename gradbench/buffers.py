"""Large arrays for the engine: small pages, and a workspace reused from one call to the next.

Page faults, not arithmetic, decided a first call: a 10^4-layer, width-64 run touches ~1 GB of
fresh arrays (activations, pre-activations, gradients), and NumPy asks the kernel for
transparent huge pages on large arrays (``madvise(MADV_HUGEPAGE)``), which on a fragmented
machine stalls in memory compaction: ~2 s per GiB on first touch (measured here), 0.05 s per
GiB once huge pages are free, against ~0.5 s per GiB with ordinary 4 KiB pages every time.
gradbench does not change NumPy's global setting; its own arrays of 32 MiB and more come from
:func:`empty`, an anonymous mapping advised ``MADV_NOHUGEPAGE`` (Linux; elsewhere
``numpy.empty``), and the internal ones (activations, pre-activations, batch-norm statistics,
checkpoints: never returned to the caller) are kept in a :class:`Workspace` between calls of
the same shapes, so a repeated call touches fresh memory only for the gradients it returns.

The workspace keeps at most ``limit`` bytes (default: a quarter of the memory available when
the arrays are handed back) and nothing while a call holds it; :func:`release` empties it.
"""

from __future__ import annotations

import math
import mmap
import sys
import threading

import numpy as np

SMALL_PAGES_FROM = 32 * 2**20  # bytes: below this NumPy's own allocation is used


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, on 4 KiB pages when it is large (module docstring)."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    advise = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if nbytes < SMALL_PAGES_FROM or advise is None or not sys.platform.startswith("linux"):
        return np.empty(shape, dtype=dtype)
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(advise)
    except OSError:  # pragma: no cover - an old kernel: ordinary pages anyway
        pass
    return np.frombuffer(m, dtype=dtype, count=count).reshape(shape)


class Workspace:
    """Arrays handed back by one call and taken again by the next call of the same shapes.

    Thread-safe: :meth:`take` removes what it returns, so two concurrent calls never share an
    array. Keeps at most ``limit`` bytes (``None``: a quarter of the available memory).
    """

    def __init__(self, limit: int | None = None):
        self._lock = threading.Lock()
        self._free: dict[tuple, list[np.ndarray]] = {}
        self.limit = limit

    def take(self, shape, dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype``: a kept one if there is one, else a new one."""
        key = (tuple(int(s) for s in shape), np.dtype(dtype).str)
        with self._lock:
            kept = self._free.get(key)
            if kept:
                return kept.pop()
        return empty(shape, dtype)

    def give(self, arrays) -> None:
        """Keep ``arrays`` for the next call (within the limit; the oldest are dropped first)."""
        from gradbench.plan import available_memory

        limit = self.limit if self.limit is not None else available_memory() // 4
        with self._lock:
            for a in arrays:
                self._free.setdefault((a.shape, a.dtype.str), []).append(a)
            total = self.bytes()
            for key in list(self._free):
                while total > limit and self._free[key]:
                    total -= self._free[key].pop(0).nbytes
                if not self._free[key]:
                    del self._free[key]

    def retain(self, keys) -> None:
        """Drop every kept array whose (shape, dtype) is not among ``keys`` (before a call that
        needs other shapes allocates: what it cannot reuse should not occupy memory)."""
        keys = {(tuple(int(s) for s in shape), np.dtype(dt).str) for shape, dt in keys}
        with self._lock:
            for key in [k for k in self._free if k not in keys]:
                del self._free[key]

    def bytes(self) -> int:
        return sum(a.nbytes for arrays in self._free.values() for a in arrays)

    def release(self) -> None:
        with self._lock:
            self._free.clear()


# The engine's workspace: one per process, emptied by release(). A cache of memory only (no
# results): what a call computes never depends on it.
WORKSPACE = Workspace()


def release() -> None:
    """Free the arrays the engine keeps between calls (:data:`WORKSPACE`)."""
    WORKSPACE.release()
