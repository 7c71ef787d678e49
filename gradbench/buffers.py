"""Large arrays for the engine: small pages, and a workspace reused from one call to the next.

Page faults, not arithmetic, decided a first call: a 10^4-layer, width-64 run touches ~1 GB of
fresh arrays (activations, pre-activations, gradients), and NumPy asks the kernel for
transparent huge pages on large arrays (``madvise(MADV_HUGEPAGE)``). Measured on this project's
machine (a Firecracker guest with a virtio balloon that reports free memory to the host): a
huge page costs 0.05 s per GiB when it was freed less than ~1 s before, but 1-2.3 s per GiB
once the guest has reported the free 2 MiB block to the host (after ~2 s; the host then backs
it afresh on the next touch), against a steady ~0.35 s per GiB with 4 KiB pages, which are
below the reporting order and stay backed. (On other machines memory compaction can stall huge
pages in the same way.)
gradbench does not change NumPy's global setting; its own arrays of 4 MiB and more (the size
from which NumPy advises huge pages) come from
:func:`empty`, an anonymous mapping advised ``MADV_NOHUGEPAGE`` (Linux; elsewhere
``numpy.empty``), and the internal ones (activations, pre-activations, batch-norm statistics,
checkpoints: never returned to the caller) are kept in a :class:`Workspace` between calls of
the same shapes, so a repeated call touches fresh memory only for the gradients it returns.

The gradients a call returns are fresh arrays, and fresh memory is what costs: a warm 10^4-layer
width-32 call spent a quarter of its time faulting in its 80 MB of dW (20,000 page faults,
``perf stat``). The large returned arrays are therefore leased from :data:`RECYCLER`: when the
caller's last reference to one (or to any view of it) is gone, its pages go back to the
recycler, already faulted in, and the next call of that size takes them. The caller sees an
ordinary array that it owns alone for as long as it holds it.

The workspace keeps at most ``limit`` bytes (default: a quarter of the memory available when
the arrays are handed back) and nothing while a call holds it; the recycler keeps mappings of
one size at a time under the same kind of limit. :func:`release` empties both.
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
import sys
import threading
import weakref

import numpy as np

from gradbench._env import available_cpus

# bytes: below this NumPy's own allocation is used. NumPy advises huge pages from 4 MiB on
# (numpy/_core/src/multiarray/alloc.c), and so do we take over there: with 32 MiB, a first call at
# L = 1000, n = 64, B = 64 (H, Z and dW of 31 MiB each, on NumPy's huge pages) took 193-265 ms
# against 35-39 ms warm, and 72-104 ms with them on small pages (alternating fresh processes 3 s
# apart, default threads, a quiet machine, 2026-12-05). The price is the TLB's: warm calls pinned
# to one thread 60.9-61.9 ms against 59.0-60.2 (+3 %); at L = 300 (10 MiB arrays) first calls
# 26-36 against 17-46 ms, warm the same.
SMALL_PAGES_FROM = 4 * 2**20


def _small_pages(nbytes: int) -> bool:
    """Whether an array of ``nbytes`` gets its own mapping on small pages (module docstring)."""
    return (nbytes >= SMALL_PAGES_FROM and getattr(mmap, "MADV_NOHUGEPAGE", None) is not None
            and sys.platform.startswith("linux"))


def _mapping(nbytes: int, prefault: str | None = None) -> mmap.mmap:
    """A fresh anonymous mapping of ``nbytes``, advised ``MADV_NOHUGEPAGE``; ``prefault``
    ("ascending", "descending"): faulted in by :data:`PREFAULTER` in that order meanwhile."""
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_NOHUGEPAGE)
    except OSError:  # pragma: no cover - an old kernel: ordinary pages anyway
        pass
    if prefault is not None:
        PREFAULTER.add(m, prefault)
    return m


def empty(shape, dtype, *, recycle: bool = True, prefault: str | None = "ascending") -> np.ndarray:
    """An uninitialised C-contiguous array, on 4 KiB pages when it is large (module docstring).

    A large array is leased from :data:`RECYCLER` (``recycle=True``): its memory returns there
    when the array and every view of it are gone. ``recycle=False``: its own mapping, unmapped
    when it is gone (the workspace's arrays, which have their own reuse). A fresh large mapping
    is faulted in on another core in the order the caller will write it (``prefault``:
    "ascending", "descending" or None; :class:`Prefaulter`).
    """
    if prefault not in (None, "ascending", "descending"):
        raise ValueError(f"prefault must be None, 'ascending' or 'descending', got {prefault!r}")
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if not _small_pages(nbytes):
        return np.empty(shape, dtype=dtype)
    if recycle:
        return RECYCLER.lease(nbytes, dtype, count, prefault).reshape(shape)
    return np.frombuffer(_mapping(nbytes, prefault), dtype=dtype, count=count).reshape(shape)


class Prefaulter:
    """Faults in fresh mappings on another core while the kernels start writing them.

    A first call spends as long faulting in its fresh pages as computing (a 10^4-layer width-64
    run: ~1 GB, ~0.35 s per GiB here). One helper thread advises each new mapping
    ``MADV_POPULATE_WRITE`` (Linux >= 5.14: the kernel faults the pages in without touching
    them; the contents stay zero) in chunks of ``chunk`` bytes, in the order the caller will
    write them, taking the pending mappings in turn (H and Z of the forward pass fill together).
    A page the caller reaches first is simply faulted in by the caller; nothing waits for the
    helper. The C drivers leave it a CPU while it has work (``gradbench.cbackend.call_opts``),
    and a pass that has written its arrays drops what is left on them (:meth:`cancel`). Off
    where it cannot help: one CPU in the process's affinity, or a kernel without the advice (the
    first refusal turns it off).
    """

    POPULATE_WRITE = 23  # MADV_POPULATE_WRITE (linux/mman.h)

    def __init__(self, chunk: int = 2**21):
        self.chunk = chunk
        self._cond = threading.Condition()
        self._jobs: list[list] = []  # [mapping, address, next offset, stop offset, step]
        self._thread = None
        self._madvise = None
        self.enabled = sys.platform.startswith("linux") and available_cpus() >= 2

    def add(self, m: mmap.mmap, order: str) -> None:
        """Fault in ``m`` in ``order`` ("ascending" or "descending") in the helper thread."""
        if not self.enabled:
            return
        n = len(m)
        address = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if order == "ascending":
            job = [m, address, 0, n, self.chunk]
        else:
            job = [m, address, n, 0, -self.chunk]
        with self._cond:
            if self._madvise is None:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                self._madvise = libc.madvise
            self._jobs.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="gradbench-prefault", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    if not self._cond.wait(timeout=5.0):
                        self._thread = None  # idle: the next add() starts a new thread
                        return
                job = self._jobs[0]  # stays listed (pending()) until it is done
            m, address, at, stop, step = job
            lo, hi = (at, min(at + step, stop)) if step > 0 else (max(at + step, stop), at)
            # ctypes releases the GIL during the call
            if self._madvise(address + lo, hi - lo, self.POPULATE_WRITE) != 0:
                self.enabled = ctypes.get_errno() in (0, 12)  # ENOMEM: unmapped since; else refused
            with self._cond:
                if not any(j is job for j in self._jobs):
                    continue  # cancelled meanwhile
                job[2] = hi if step > 0 else lo
                self._jobs.remove(job)
                if job[2] != stop and self.enabled:
                    self._jobs.append(job)  # in turn with the other pending mappings

    def native_id(self) -> int | None:
        """The helper thread's id (as in ``/proc/self/task``), or None while there is none."""
        thread = self._thread
        return None if thread is None else thread.native_id

    def pending(self) -> int:
        """Bytes still to fault in."""
        with self._cond:
            return sum(abs(job[3] - job[2]) for job in self._jobs)

    def cancel(self, *arrays: np.ndarray) -> None:
        """Drop the pending work on the mappings under ``arrays``: the caller has written them
        itself (a pass that has filled its fresh arrays; walking their pages again would only
        hold the CPU that the next pass wants). The chunk in hand, if any, is the last."""
        with self._cond:
            if not self._jobs:  # the usual case: nothing pending
                return
        spans = [(a.__array_interface__["data"][0], a.nbytes) for a in arrays if a is not None and a.nbytes]
        with self._cond:
            self._jobs = [job for job in self._jobs
                          if not any(p < job[1] + len(job[0]) and job[1] < p + n for p, n in spans)]

    def _after_fork(self) -> None:
        """In a forked child: no helper thread, no lock held by one, and none of the parent's
        pending work (faulting in copy-on-write pages would copy them)."""
        self._cond = threading.Condition()
        self._jobs = []
        self._thread = None


# What a keeper holds without asking how much memory is available (reading /proc/meminfo took
# 25-35 us, a twentieth of a small call's whole time): a machine with less than 4x this free has
# other troubles than the few arrays of a small call.
KEEP_FREELY = 16 * 2**20


def _limit(limit: int | None, total: int) -> int:
    """Bytes a keeper may hold: ``limit``, or a quarter of the memory available now; a keeper
    holding ``total`` <= :data:`KEEP_FREELY` bytes keeps them without reading the memory."""
    if limit is not None:
        return limit
    if total <= KEEP_FREELY:
        return KEEP_FREELY
    from gradbench.plan import available_memory

    return available_memory() // 4


class _Keeper:
    """What the recycler and the workspace share: kept items by key under one lock, their bytes
    (``_size`` of each), at most ``limit`` of them (``None``: a quarter of the available memory)."""

    def __init__(self, limit: int | None = None):
        self._lock = threading.Lock()
        self._free: dict = {}
        self.limit = limit

    @staticmethod
    def _size(item) -> int:
        raise NotImplementedError

    def _total(self) -> int:  # the caller holds the lock
        return sum(self._size(x) for kept in self._free.values() for x in kept)

    def bytes(self) -> int:
        with self._lock:
            return self._total()

    def release(self) -> None:
        with self._lock:
            self._free.clear()


@functools.lru_cache(maxsize=64)
def _lease_type(nbytes: int) -> type:
    """A ctypes byte array of ``nbytes`` that can be weakly referenced (a Python subclass)."""
    return type(f"Lease{nbytes}", (ctypes.c_char * nbytes,), {})


class Recycler(_Keeper):
    """Mappings of returned arrays, taken back when the caller no longer holds them.

    :meth:`lease` hands out an array over a mapping through a ctypes object (the lease) that
    exports the mapping's buffer: the array, its views and any memoryview of them keep the lease
    alive, and the lease's finaliser puts the mapping back here once nothing does. Only raw
    pointers can outlive it, as with any array. Keeps mappings of one size at a time (the last
    one asked for: a call of another size frees them first) and at most ``limit`` bytes
    (``None``: a quarter of the available memory). Thread-safe.
    """

    @staticmethod
    def _size(m: mmap.mmap) -> int:
        return len(m)

    def lease(self, nbytes: int, dtype, count: int, prefault: str | None = None) -> np.ndarray:
        """A 1-d array of ``count`` ``dtype`` items over a mapping of ``nbytes`` (a fresh one is
        faulted in in the order ``prefault``, see :func:`empty`)."""
        with self._lock:
            kept = self._free.get(nbytes)
            m = kept.pop() if kept else None
            if m is None:
                self._free.clear()  # another size: what is kept cannot serve it
        if m is None:
            m = _mapping(nbytes, prefault)
        lease = _lease_type(nbytes).from_buffer(m)
        weakref.finalize(lease, self._give_back, m).atexit = False
        return np.frombuffer(lease, dtype=dtype, count=count)

    def _give_back(self, m: mmap.mmap) -> None:
        limit = _limit(self.limit, len(m))  # mappings are large: this reads the memory
        with self._lock:
            if self._total() + len(m) <= limit:
                self._free.setdefault(len(m), []).append(m)



class Workspace(_Keeper):
    """Arrays handed back by one call and taken again by the next call of the same shapes.

    Thread-safe: :meth:`take` removes what it returns, so two concurrent calls never share an
    array. Keeps at most ``limit`` bytes (``None``: a quarter of the available memory).
    """

    @staticmethod
    def _size(a: np.ndarray) -> int:
        return a.nbytes

    def take(self, shape, dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype``: a kept one if there is one, else a new one."""
        key = (tuple(int(s) for s in shape), np.dtype(dtype).str)
        with self._lock:
            kept = self._free.get(key)
            if kept:
                return kept.pop()
        return empty(shape, dtype, recycle=False, prefault="ascending")

    def give(self, arrays) -> None:
        """Keep ``arrays`` for the next call (within the limit; the oldest are dropped first)."""
        with self._lock:
            for a in arrays:
                self._free.setdefault((a.shape, a.dtype.str), []).append(a)
            total = self._total()
        limit = _limit(self.limit, total)  # outside the lock: it may read /proc/meminfo
        with self._lock:
            total = self._total()
            for key in list(self._free):
                while total > limit and self._free[key]:
                    total -= self._free[key].pop(0).nbytes
                if not self._free[key]:
                    del self._free[key]

    def retain(self, keys) -> None:
        """Drop every kept array whose (shape, dtype) is not among ``keys`` (before a call that
        needs other shapes allocates: what it cannot reuse should not occupy memory)."""
        with self._lock:
            if not self._free:
                return
        keys = {(tuple(int(s) for s in shape), np.dtype(dt).str) for shape, dt in keys}
        with self._lock:
            for key in [k for k in self._free if k not in keys]:
                del self._free[key]



# The engine's workspace and the recycler of returned arrays: one each per process, emptied by
# release(). Caches of memory only (no results): what a call computes never depends on them.
WORKSPACE = Workspace()
RECYCLER = Recycler()
PREFAULTER = Prefaulter()


def _after_fork_in_child() -> None:
    # only the forking thread lives on: a lock another thread held stays held in the child
    for keeper in (WORKSPACE, RECYCLER):
        keeper._lock = threading.Lock()
    PREFAULTER._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# Internal arrays from this many bytes are kept in the workspace between calls; smaller ones
# (a 10-layer stack of width 16 has only such) cost less to allocate than to look up.
WORKSPACE_FROM = 32 * 2**10


def take_internal(shape, dtype, taken: list) -> np.ndarray:
    """An engine's internal array: from :data:`WORKSPACE` (appended to ``taken``, which the
    engine gives back when its pass ends), or below :data:`WORKSPACE_FROM` bytes a plain
    ``np.empty`` (the heap reuses such blocks itself)."""
    if math.prod(shape) * np.dtype(dtype).itemsize < WORKSPACE_FROM:
        return np.empty(shape, dtype)
    a = WORKSPACE.take(shape, dtype)
    taken.append(a)
    return a


def held() -> int:
    """Bytes kept for later calls (workspace and recycler): memory a new call may count on."""
    return WORKSPACE.bytes() + RECYCLER.bytes()


def release() -> None:
    """Free the memory the engine keeps between calls (:data:`WORKSPACE`, :data:`RECYCLER`)."""
    WORKSPACE.release()
    RECYCLER.release()
