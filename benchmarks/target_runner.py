"""One timed run in a fresh process, for benchmarks/test_targets.py (run as a script).

    python target_runner.py MODE IMPL L N B DTYPE REPS

MODE ``warm``: one untimed call, then REPS timed calls (the minimum is reported); ``first``: the
first call of the process (kernels already compiled and cached on disk) and then the warm
minimum; ``mixed``: like ``warm``, with a NumPy product of the layer's size just before each
timed call (the user's own NumPy code between calls: its BLAS threads still spinning), and
``spin``: how long NumPy's worker runs after that product (:func:`_spin`); ``fma``: one core's measured FMA peak (benchmarks/fma_peak.c compiled for this CPU);
``stats``: like ``first``, for a run with generated weights, statistics only and
checkpoints every sqrt(L) layers (kernels warmed up on a small such run); ``peak``: the rate of a large float64 matrix product (2048^3) on the threads given, an
achievable peak to state the kernels' efficiency against; ``race``: IMPL is a comma-separated
list of gradbench backends, each warmed up, then timed in turn REPS times in this one process,
the order rotated every round (a call right after numba's ran ~10 % slower, whichever it was;
the minimum of each reported under ``mins``, and the backend each ran): a ratio between them
carries none of the process-to-process noise of separate runs. IMPL is a gradbench backend
(``numpy``, ``numba``, ``c``, ``auto``) or a peer of gradbench.peers (``numpy-loop``: the
plain loop a user writes; ``torch``, ``jax``). The threads are whatever the environment of the process says (the caller
sets OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, GRADBENCH_C_THREADS, ... and the affinity). Prints
one JSON line; the timed modes add ``threads_ran`` (the threads that computed during the timed
calls, measured: :func:`_threads_ran`) and, for the C backend, ``c_threads`` (the threads the C
drivers start, by their rule).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time


def _stack(L, N, dtype):
    import gradbench as gb

    # tanh at the edge of chaos (sigma_w^2 = 1.76, sigma_b^2 = 0.05): activations stay O(1)
    return gb.Stack(depth=L, width=N, activation="tanh", init="normal", sigma_w=math.sqrt(1.76),
                    sigma_b=math.sqrt(0.05), dtype=dtype)


def _cpu_ns() -> dict[int, int] | None:
    """CPU time (ns) of each thread of this process so far (Linux ``schedstat``), or None."""
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended, or no schedstat
    return out or None


def _threads_ran(before, after, wall: float) -> int | None:
    """The threads that computed during the timed calls: those whose CPU time grew by at least a
    quarter of the calls' time (gradbench's helper threads, the prefaulter, a BLAS worker that
    only wakes now and then stay below it). Measured, not inferred from a backend's rules: it is
    what tells whether two thread settings ran the same code (Numba hands its products to BLAS,
    which runs a 64 x 64 product on one thread however many it has)."""
    if before is None or after is None or wall <= 0:
        return None
    return sum((ns - before.get(tid, 0)) >= 0.25 * wall * 1e9 for tid, ns in after.items())


def _spin(product, rounds: int = 3) -> float | None:
    """How long another thread of this process keeps running after ``product`` (NumPy's BLAS
    worker spinning before it sleeps), the median of ``rounds``, s: polled with the C backend's
    look at ``/proc`` (:func:`gradbench.cbackend.busy_threads`); None where it is not built, or
    nothing ran after the product for 2 s (another thread that never stops)."""
    try:
        from gradbench import cbackend
    except ImportError:
        return None
    spins = []
    for _ in range(rounds):
        product()
        t = time.perf_counter()
        while cbackend.busy_threads():
            if time.perf_counter() - t > 2.0:
                return None
        spins.append(time.perf_counter() - t)
    return sorted(spins)[len(spins) // 2]


def main(argv):
    mode, impl = argv[0], argv[1]
    L, N, B, dtype, reps = int(argv[2]), int(argv[3]), int(argv[4]), argv[5], int(argv[6])
    out = {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    if mode == "fma":  # one core's FMA peak: benchmarks/fma_peak.c, built here for this CPU
        import shutil
        import subprocess
        import tempfile

        cc = os.environ.get("CC", "cc")
        if shutil.which(cc.split()[0]) is None:
            out["gflops"] = None
        else:
            with tempfile.TemporaryDirectory() as tmp:
                exe = os.path.join(tmp, "fma_peak")
                src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.c")
                subprocess.run([*cc.split(), "-O2", "-march=native", "-ffp-contract=fast", src, "-o", exe], check=True)
                out["gflops"] = float(subprocess.run([exe], capture_output=True, text=True, check=True).stdout.split()[0])
        print(json.dumps(out))
        return
    if mode == "peak":
        import numpy as np

        a = np.random.default_rng(0).standard_normal((2048, 2048))
        a @ a
        t = time.perf_counter()
        a @ a
        out["gflops"] = 2 * 2048**3 / (time.perf_counter() - t) / 1e9
        print(json.dumps(out))
        return
    import gradbench as gb
    from gradbench import peers

    stack = _stack(L, N, dtype)
    params = gb.init_params(stack, 0) if mode != "stats" else None
    x = gb.gaussian_input(stack, B, 1)
    if mode == "race":
        impls = impl.split(",")
        backend = {i: gb.backprop(stack, params, x, backend=i).backend for i in impls}  # warm-up
        times = {i: [] for i in impls}
        for k in range(reps):
            for i in impls[k % len(impls):] + impls[:k % len(impls)]:
                t = time.perf_counter()
                gb.backprop(stack, params, x, backend=i)
                times[i].append(time.perf_counter() - t)
        out.update(mins={i: min(v) for i, v in times.items()}, backend=backend)
        print(json.dumps(out))
        return
    if impl in peers.PEERS:  # numpy-loop, torch, jax
        run = peers.prepare(impl, stack, params, x)
    elif mode == "stats":  # the million-layer way: generated weights, statistics only, checkpoints
        tiny = _stack(40, N, dtype)
        gb.backprop(tiny, gb.GeneratedParams(tiny, 0), gb.gaussian_input(tiny, B, 1), backend=impl, stats_only=True)
        generated = gb.GeneratedParams(stack, 0)

        def run():
            return gb.backprop(stack, generated, x, backend=impl, stats_only=True, checkpoint=max(1, round(L**0.5)))
    else:
        # the kernels compile (or load from the on-disk cache) on a tiny stack first, so that a
        # "first" call measures what a user's first call costs with kernels already built
        tiny = _stack(2, 4, dtype)
        gb.backprop(tiny, gb.init_params(tiny, 0), gb.gaussian_input(tiny, 2, 1), backend=impl)

        def run():
            return gb.backprop(stack, params, x, backend=impl)

    if mode == "mixed":  # a NumPy product of the layer's size before each call (warm otherwise)
        import numpy as np

        a = np.ones((max(B, 256), N), dtype=dtype)
        w = np.ones((N, N), dtype=dtype)
        run()
    t = time.perf_counter()
    res = run()
    first = time.perf_counter() - t
    times = []
    before = _cpu_ns()
    for _ in range(reps):
        if mode == "mixed":
            a @ w  # leaves NumPy's BLAS threads spinning, as a user's own code would
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    ran = _threads_ran(before, _cpu_ns(), sum(times))
    if ran is not None:
        out["threads_ran"] = ran
    if mode == "mixed":
        out["spin"] = _spin(lambda: a @ w)
    out.update(first=first, min=min(times) if times else first, backend=getattr(res, "backend", impl))
    if out["backend"] == "c":  # the threads a warm call of the C drivers starts with here, or
        from gradbench import cbackend  # "blas" where BLAS runs the products on its own threads

        out["c_threads"] = "blas" if cbackend.blas_for(N, dtype) else cbackend.threads_for(L, B, N, dtype)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
