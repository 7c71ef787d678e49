"""Compile the Numba kernels into their on-disk cache before the suite, on two processes.

    python tests/compile_kernels.py          # both parts at once, one process each
    python tests/compile_kernels.py stack    # one part (what each process runs)

A cold cache (a fresh clone) had both pytest-xdist workers compile the same kernels at their
start, ~2.7 min each (one process, measured 2026-12-06: the stack's float64 drivers 57 s,
float32 49 s, the recurrent cells' 26 s and 23 s). Here the stacks and the recurrent cells
compile side by side (their kernels are separate functions, so the two processes write separate
cache index files), and the workers load what they find. Kernels the parts do not reach are
compiled by the tests as before. `make test` runs this first; a warm cache makes it a few
seconds."""

from __future__ import annotations

import subprocess
import sys
import time


def _part(name: str) -> None:
    import gradbench as gb

    for dt in ("float64", "float32"):
        if name == "stack":
            st = gb.Stack(depth=4, width=3, activation="tanh", dtype=dt)
            gb.backprop(st, gb.init_params(st, 0), gb.gaussian_input(st, 2, 1), backend="numba")
        else:
            for cell in ("rnn", "lstm", "gru"):
                r = gb.Recurrent(cell=cell, steps=3, hidden=3, input_dim=2, dtype=dt)
                gb.backprop(r, gb.init_params(r, 0), gb.sequence_input(r, 2, 1), backend="numba")


def main(argv: list[str]) -> int:
    if argv:
        _part(argv[0])
        return 0
    import gradbench as gb

    if "numba" not in gb.backends():
        print("compile_kernels: no Numba backend here, nothing to compile")
        return 0
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, part]) for part in ("stack", "recurrent")]
    rcs = [p.wait() for p in procs]
    print(f"compile_kernels: Numba kernels compiled or loaded in {time.perf_counter() - t0:.0f} s")
    return max(rcs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
