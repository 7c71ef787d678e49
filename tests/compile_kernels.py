"""Compile the Numba kernels into their on-disk cache before the suite, on two processes.

    python tests/compile_kernels.py            # both parts at once, one process each
    python tests/compile_kernels.py stack      # one part (what each process runs)

A cold cache (a fresh clone) had both pytest-xdist workers compile the same kernels at their
start, ~2.7 min each (one process, measured 2026-12-06: the stack's float64 drivers 57 s,
float32 49 s, the recurrent cells' 26 s and 23 s). Here they compile first and the workers load
what they find: the stacks on one process; the recurrent cells and then the checked layer
functions the tests call directly (activation, dense backward, normalise, clip_signal,
histogram_fill), which the test workers used to compile, on the other. Both dtypes each.
Measured back to back on this 2-core machine, cold: stack 138 s wall (111 s user), recurrent
cells and layer functions 132 s (109 s); the cells alone had taken 83 s (80 s) beside the
stack's 125 s (107 s). One process per dtype instead was slower, 151 s (124 s and 117 s user):
most helpers take float64 scalars in both dtypes, and both processes compiled them. Kernels the
parts do not reach are compiled by the tests as before. `make test` runs this first; a warm
cache makes it a few seconds.

Both processes write the index files of the helpers they share (the chain, layer and activation
helpers, one index per function holding every signature). Numba updates an index by reading it,
adding its entry and writing it back: two processes doing so at once could each drop the
other's entry, or name the same data file for different signatures. Each process therefore
holds an exclusive lock (fcntl.flock, on a file in the cache directory) while Numba saves an
entry; without fcntl (Windows) the parts run one after the other in one process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

PARTS = ("stack", "recurrent")


def _lock_cache_saves() -> None:
    """Make Numba's read-add-write of a cache index exclusive across the parts' processes."""
    import fcntl

    from numba.core import caching

    save = caching.IndexDataCacheFile.save

    def locked_save(self, key, data):
        with open(os.path.join(self._cache_path, "compile_kernels.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                save(self, key, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    caching.IndexDataCacheFile.save = locked_save


def _part(name: str) -> None:
    import numpy as np

    import gradbench as gb
    from gradbench import kernels as nk
    from gradbench.abi import ACT_CODE, CLIP_NORM, CLIP_VALUE

    if name not in PARTS:
        raise ValueError(f"compile_kernels: part must be one of {', '.join(PARTS)}, got {name!r}")
    for dt in ("float64", "float32"):
        if name == "stack":
            st = gb.Stack(depth=4, width=3, activation="tanh", dtype=dt)
            gb.backprop(st, gb.init_params(st, 0), gb.gaussian_input(st, 2, 1), backend="numba")
            continue
        for cell in ("rnn", "lstm", "gru"):
            r = gb.Recurrent(cell=cell, steps=3, hidden=3, input_dim=2, dtype=dt)
            gb.backprop(r, gb.init_params(r, 0), gb.sequence_input(r, 2, 1), backend="numba")

        # the checked layer functions, with the argument types the tests give them
        def a(*shape):
            return np.full(shape, 0.5, dtype=dt)

        nk.activation_forward(a(2, 3), a(2, 3), ACT_CODE["tanh"], 0.0)
        nk.activation_backward(a(2, 3), a(2, 3), a(2, 3), ACT_CODE["tanh"], 0.0)
        nk.dense_backward(a(2, 3), a(3, 3), a(3), a(2, 3), a(2, 3), a(3, 3))
        nk.normalise(a(2, 3))
        for mode in (CLIP_VALUE, CLIP_NORM):
            nk.clip_signal(a(2, 3), 0, mode, 1.0)
        for counts in (np.uint32, np.uint16):
            m, bins, i64 = 2, 8, np.int64
            nk.histogram_fill(a(m, 3, 3), np.zeros(m, i64), 4, bins, np.zeros(m, i64), np.zeros((m, bins), counts),
                              np.zeros(m, i64), np.zeros(m, i64), np.zeros(m, i64))


def main(argv: list[str]) -> int:
    if argv:
        _lock_cache_saves()
        _part(argv[0])
        return 0
    import gradbench as gb

    if "numba" not in gb.backends():  # imports the kernels: a stale cache is dropped here, once
        print("compile_kernels: no Numba backend here, nothing to compile")
        return 0
    t0 = time.perf_counter()
    try:
        import fcntl  # noqa: F401
    except ImportError:
        for part in PARTS:
            _part(part)
        rcs = [0]
    else:
        procs = [subprocess.Popen([sys.executable, __file__, part]) for part in PARTS]
        rcs = [p.wait() for p in procs]
    print(f"compile_kernels: Numba kernels compiled or loaded in {time.perf_counter() - t0:.0f} s")
    return max(rcs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
