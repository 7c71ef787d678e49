"""The speed targets of the performance issue, each measured in one run, in fresh processes.

Every test runs ``target_runner.py`` in subprocesses whose threads are set as a user's would be:
``one`` (every library on one thread, the process pinned to one CPU), ``two`` (two threads, two
CPUs) or ``default`` (no thread variables at all: library defaults). It records one row with
``kind="target"``: the target's name, the measured ratio, what is wanted, and whether it holds;
``gradbench bench`` prints them as one table. Ratios compare runs of the same benchmark run, one
after the other, on the same machine (a shared machine moves single timings by up to 40 %); each
time is the minimum over two rounds of fresh processes, the implementations or settings
interleaved (:func:`interleaved`).

Targets (t = time):
- ``plain loop``: t(plain NumPy loop) / t(best gradbench backend) >= 1.0 at every width, one
  thread and default threads; >= 1.5 at n = 64; the same (>= 1.0, default threads, backend
  "auto") in float32 and in mode ``mixed`` (a NumPy product before each call, as a user's own
  code leaves NumPy's BLAS threads spinning), float32 and float64;
- ``auto``: t(fastest backend) / t(backend="auto") >= 1 / 1.1, the backends timed in turn in
  one process (two processes running the same backend differed by up to 13 %);
- ``default threads``: t(one thread) / t(default threads) >= 1.0 for every backend and width,
  and for a shallow stack (L = 20, n = 64, B = 64: too small a call for a team); a row that
  runs one thread in both settings runs the same code twice and is shown, not judged: for C, the
  drivers start one thread (the runner's ``c_threads``); for Numba, one thread computed in each
  (the runner's measured ``threads_ran``: Numba hands its products to BLAS, which runs a
  64 x 64 product on one thread however many it has);
- ``two threads``: t(one) / t(two) >= 1.7 at n = 64 and wider;
- ``pieces after a BLAS spin``: t(bound) / t(pieces) >= 0.95 for a C call (L = 200, n = 256,
  B = 256, mode ``mixed``, default threads) that starts beside NumPy's spinning BLAS worker, takes
  one CPU and looks again between pieces (``GRADBENCH_C_RELOOK_TOTAL``); the bound: one thread
  while the worker spins, the team after (t(one piece) / t(pieces), reported, was the target
  until 2026-12-05);
- ``first call``: t(first call in a fresh process, kernels cached) / t(warm) <= 1.5 at
  L = 10^4, n = 64, B = 64, the minima over three fresh processes;
- ``million layers``: time per layer of a stats-only run with generated weights and
  checkpoints (L = 10^5, n = 64, B = 64, fresh process) / of the warm in-memory run (L = 10^4)
  <= 1.8, one kernel thread with the second CPU free for the helper thread (weights, histograms);
  the same on one CPU is reported;
- ``small calls`` (reported): t(plain loop) / t(best gradbench backend) and the peers on
  10-layer stacks (n = 16, B = 20 and n = 64, B = 64), one thread, 300 calls a process: the
  size of the training demos' nets, where the Python around the kernels is most of a call;
- ``BLAS kernels`` (reported): the float64 2048^3 product and the wide cases (c, plain loop, JAX)
  under the kernels this machine's environment makes OpenBLAS run (``OPENBLAS_CORETYPE``) and
  under OpenBLAS's own choice (the variable removed), one thread;
- ``% of peak``: 6 B N^2 L / t against one core's FMA peak, measured in the same run by
  benchmarks/fma_peak.c (16 chains of float64 FMAs on the widest vectors, built for this CPU;
  a 2048^3 product through NumPy's BLAS is reported beside it, and is the peak without a C
  compiler), one thread: >= 75 % at n = 64, B = 64 and >= 50 % at n = 32, B = 16.

Under ``make test`` (benchmarks disabled) one tiny configuration of each runs, to keep the
plumbing honest; ``make bench-quick`` and ``make bench`` run the real sizes.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import gradbench as gb

RUNNER = str(Path(__file__).with_name("target_runner.py"))
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "GRADBENCH_C_THREADS", "XLA_FLAGS")
FAST = [b for b in ("numba", "c") if b in gb.backends()]


def _env(threads: str) -> tuple[dict, list[int] | None]:
    """Environment and CPUs of a subprocess: ``one``, ``two`` (threads per library and as many
    CPUs), ``one+cpu`` (one thread per library, two CPUs: gradbench's helper thread may take
    the second) or ``default`` (no thread variables, every CPU)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if threads in ("one", "two", "one+cpu"):
        n = 2 if threads == "two" else 1
        env.update({k: str(n) for k in THREAD_VARS if k != "XLA_FLAGS"})
        cpus = cpus[:1 if threads == "one" else 2] if cpus else None
    return env, cpus


def run(mode: str, impl: str, L: int, N: int, B: int, dtype="float64", reps=3, threads="one",
        unset: tuple[str, ...] = (), extra_env: dict | None = None) -> dict:
    env, cpus = _env(threads)
    for name in unset:
        env.pop(name, None)
    env.update(extra_env or {})
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.run([sys.executable, RUNNER, mode, impl, str(L), str(N), str(B), dtype, str(reps)],
                          env=env, preexec_fn=pre, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise AssertionError(f"{impl} {mode} L={L} N={N} B={B} {threads}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def interleaved(benchmark, runs: dict, threads: dict | None = None) -> dict:
    """The minimum time of each entry of ``runs`` (name: the keyword arguments of :func:`run`)
    over two rounds of fresh processes, the entries interleaved (one round under ``make test``).
    One process per entry let a process that stayed slow throughout decide a ratio: float32 at
    n = 512 gave 0.85 and 0.95 against 1.10-1.19 for the same builds by hand, process by
    process; and where two settings run the same code, a ratio whose truth is 1.0 carried a few
    % of machine noise. ``threads`` (filled in): entry -> the threads it ran, as
    :func:`threads_of` reads them off the runner's line."""
    t: dict = {}
    for _ in range(1 if benchmark.disabled else 2):
        for name, kwargs in runs.items():
            r = run(**kwargs)
            t[name] = min(t.get(name, math.inf), r["min"])
            if threads is not None and (ran := threads_of(r)) is not None:
                threads[name] = ran
    return t


def record(benchmark, name: str, value: float, want: str, ok: bool, **detail) -> None:
    benchmark.group = "targets"
    benchmark.extra_info.update(case="targets", impl=name, kind="target", target=name, value=round(value, 4),
                                want=want, ok=bool(ok), detail=detail)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def sizes(benchmark, full, quick, tiny):
    """The (L, N, B) cases: tiny under make test, else quick, plus full under make bench."""
    if benchmark.disabled:
        return tiny
    return quick + (full if os.environ.get("GRADBENCH_BENCH_BUDGET", "") not in ("", "1.5") else [])


WIDTHS_QUICK = [(10_000, 32, 16), (1_000, 64, 64), (200, 512, 256)]
WIDTHS_FULL = [(50, 2048, 512)]
TINY = [(40, 16, 8)]
# a shallow stack of wide-enough layers: too small a call for the C drivers' team (its start and
# end; GRADBENCH_C_PAR_MIN_TOTAL), which ran slower with default threads than with one
SHALLOW = [(20, 64, 64)]


@pytest.mark.parametrize("threads", ["one", "default"])
def test_target_plain_loop_and_auto(benchmark, threads):
    if not FAST:
        pytest.skip("no compiled backend (numba, c) is available")
    rows = []
    for L, N, B in sizes(benchmark, WIDTHS_FULL, WIDTHS_QUICK, TINY):
        reps = 1 if benchmark.disabled else 3
        t = interleaved(benchmark, {impl: dict(mode="warm", impl=impl, L=L, N=N, B=B, reps=reps, threads=threads)
                                    for impl in ["numpy-loop", *FAST, "auto"]})
        best = min(FAST, key=t.get)
        want = 1.5 if N == 64 else 1.0
        rows.append(dict(L=L, N=N, B=B, plain_loop=t["numpy-loop"] / t[best], best=best,
                         auto=t[best] / t["auto"], want=want, times=t))
    ok = all(r["plain_loop"] >= r["want"] for r in rows)
    record(benchmark, f"plain loop / best gradbench ({threads} threads)", min(r["plain_loop"] for r in rows),
           ">= 1.0 at every width, >= 1.5 at n = 64", ok, rows=rows)
    if threads == "default":
        assert all(r["auto"] > 0 for r in rows)


def test_target_plain_loop_float32_and_mixed(benchmark):
    """Target 1 on the paths beside the grid's: float32, and calls between a user's own NumPy
    products (mode ``mixed``), at default threads, against the plain loop run the same way."""
    if not FAST:
        pytest.skip("no compiled backend (numba, c) is available")
    rows = []
    for mode, dtype in (("warm", "float32"), ("mixed", "float32"), ("mixed", "float64")):
        for L, N, B in sizes(benchmark, [], WIDTHS_QUICK, TINY):
            reps = 1 if benchmark.disabled else 3
            t = interleaved(benchmark, {impl: dict(mode=mode, impl=impl, L=L, N=N, B=B, dtype=dtype, reps=reps,
                                                   threads="default") for impl in ("numpy-loop", "auto")})
            rows.append(dict(mode=mode, dtype=dtype, L=L, N=N, B=B, plain_loop=t["numpy-loop"] / t["auto"], times=t))
    record(benchmark, "plain loop / auto: float32, and after NumPy products (default threads)",
           min(r["plain_loop"] for r in rows), ">= 1.0", all(r["plain_loop"] >= 1.0 for r in rows), rows=rows)


@pytest.mark.parametrize("backend", FAST or ["none"])
def test_target_default_and_two_threads(benchmark, backend):
    if backend == "none":
        pytest.skip("no compiled backend (numba, c) is available")
    rows = []
    for L, N, B in sizes(benchmark, SHALLOW + WIDTHS_FULL, WIDTHS_QUICK, TINY):
        work = L * B * N * N
        reps = 1 if benchmark.disabled else (200 if work < 1 << 24 else 10 if work < 1 << 29 else 3)
        # (10 calls of ~30-50 ms at n = 64: with 3, one busy moment of the shared second CPU
        # decided the two-thread ratio, 1.26 in a make bench where 20 calls gave 1.66-1.70; the
        # shallow stack's ~0.75 ms calls: 20 gave one / default 0.974 where both settings run the
        # same code on one thread, and the minima of 200 in one process each came 726 / 727 us)
        threads = {}
        t = interleaved(benchmark, {th: dict(mode="warm", impl=backend, L=L, N=N, B=B, reps=reps, threads=th)
                                    for th in ("one", "two", "default")}, threads)
        rows.append(dict(L=L, N=N, B=B, default=t["one"] / t["default"], two=t["one"] / t["two"], times=t,
                         threads=threads, same_code=_same_code(threads)))
    wide = [r for r in rows if r["N"] >= 64 and (r["L"], r["N"], r["B"]) not in SHALLOW] or rows
    # a row where the default threads run one thread, as the one-thread setting does (the C
    # drivers at n = 32, B = 16; Numba's BLAS at n = 64), times the same code twice: its ratio is
    # the machine's noise (0.96-1.05 over the make bench runs), not the defaults' cost; shown,
    # not judged
    judged = [r for r in rows if not r["same_code"]]
    record(benchmark, f"one thread / default threads; one / two threads at n >= 64 ({backend})",
           min(r["default"] for r in judged) if judged else min(r["default"] for r in rows),
           ">= 1.0 where the default runs more threads; two threads >= 1.7",
           all(r["default"] >= 1.0 for r in judged) and all(r["two"] >= 1.7 for r in wide),
           two_threads=min(r["two"] for r in wide), rows=rows)


def threads_of(r: dict):
    """The threads a runner's line says its calls ran: the C drivers' ``c_threads`` (the threads
    they start, or "blas" where BLAS runs the products on its own), else the measured
    ``threads_ran``; None where neither is known."""
    return r.get("c_threads", r.get("threads_ran"))


def test_target_pieces_after_a_blas_spin(benchmark):
    """A call that starts beside NumPy's spinning BLAS worker and takes one CPU looks again
    between pieces (cbackend.RELOOK_TOTAL) and takes the whole team once the worker sleeps, mode
    ``mixed``, default threads. Judged against what any schedule can do: one thread while the
    worker spins (``spin``, measured by the runner), the team after; from the warm one-thread and
    default-thread times t1, t2 of the same call, bound = s + (1 - s / t1) t2 (t1 where s >= t1).
    The ratio against the same call as one piece (``GRADBENCH_C_RELOOK_TOTAL`` beyond any call)
    is reported beside it: it depends on how badly the one piece's team fares beside the worker
    (1.32 on a Zen 5, where that team stalled; 0.99-1.08 on a Zen 4, where the team's judge sent it
    solo soon), so it cannot be a target of the pieces. The README's Threads paragraph quotes it."""
    if "c" not in FAST:
        pytest.skip("the C backend is not built")
    L, N, B = (40, 64, 16) if benchmark.disabled else (200, 256, 256)
    reps = 1 if benchmark.disabled else 5
    whole = {"GRADBENCH_C_RELOOK_TOTAL": str(1 << 62)}
    case = dict(impl="c", L=L, N=N, B=B, reps=reps)
    spins: list = []
    t: dict = {}
    for _ in range(1 if benchmark.disabled else 2):
        for name, kwargs in {"pieces": dict(mode="mixed", threads="default"),
                             "one piece": dict(mode="mixed", threads="default", extra_env=whole),
                             "warm one thread": dict(mode="warm", threads="one"),
                             "warm default": dict(mode="warm", threads="default")}.items():
            r = run(**case, **kwargs)
            t[name] = min(t.get(name, math.inf), r["min"])
            if r.get("spin") is not None:
                spins.append(r["spin"])
    if not spins:
        pytest.skip("the spin of NumPy's BLAS worker could not be measured here")
    s, t1, t2 = statistics.median(spins), t["warm one thread"], t["warm default"]
    bound = t1 if s >= t1 else s + (1 - s / t1) * t2
    ratio = bound / t["pieces"]
    record(benchmark, f"the bound / pieces after a NumPy product (c, L={L} n={N} B={B}, default threads)",
           ratio, ">= 0.95", ratio >= 0.95, times=t, spin=s, bound=bound,
           one_piece_over_pieces=t["one piece"] / t["pieces"])


def _same_code(threads: dict) -> bool:
    """Whether one thread ran the products in both the ``one`` and the ``default`` setting
    (``threads``: setting -> :func:`threads_of` its runs; unknown: False)."""
    return threads.get("one") == threads.get("default") == 1


def test_target_auto_picks_the_fastest(benchmark):
    if not FAST:
        pytest.skip("no compiled backend (numba, c) is available")
    rows = []
    for dtype in ("float64", "float32"):
        for L, N, B in sizes(benchmark, WIDTHS_FULL, WIDTHS_QUICK, TINY):
            # every backend at least twice in each place of the order; 30 calls where they are
            # short (6 let the same C code in auto and c come out 0.80 apart at float32 n = 64,
            # where three runs right after gave 0.95-1.00; 12 read 0.908 at float64 n = 64 on
            # 2026-12-07, where 40 by hand gave 21.9 ms minimum for both)
            reps = 1 if benchmark.disabled else (30 if L * B * N * N < 1 << 29 else 6)
            r = run("race", ",".join([*FAST, "auto"]), L, N, B, dtype, reps=reps, threads="default")
            t = r["mins"]
            best = min(FAST, key=t.get)
            rows.append(dict(L=L, N=N, B=B, dtype=dtype, best=best, auto_runs=r["backend"]["auto"],
                             ratio=t[best] / t["auto"], times=t))
    record(benchmark, "fastest backend / auto (default threads)", min(r["ratio"] for r in rows), ">= 1 / 1.1",
           all(r["ratio"] >= 1 / 1.1 for r in rows), rows=rows)


def test_target_first_call(benchmark):
    L, N, B = (200, 16, 8) if benchmark.disabled else (10_000, 64, 64)
    # 6 warm calls: the first of them writes fresh gradients (the first call's result is still
    # held), and on this shared VM a process sometimes gets the second CPU only part of the time.
    # A first call is one sample a process: the minima over three, as the other targets take
    # theirs over rounds (one process read 2.02x where 12 alternating ones read 1.80-1.96x)
    runs = [run("first", "auto", L, N, B, reps=1 if benchmark.disabled else 6, threads="default")
            for _ in range(1 if benchmark.disabled else 3)]
    first, warm = min(r["first"] for r in runs), min(r["min"] for r in runs)
    ratio = first / warm
    record(benchmark, "first call / warm call (auto, L=10^4 n=64 B=64)", ratio, "<= 1.5", ratio <= 1.5,
           first=first, min=warm, firsts=[round(r["first"], 4) for r in runs], warms=[round(r["min"], 4) for r in runs],
           backend=runs[0]["backend"], c_threads=runs[0].get("c_threads"))


@pytest.mark.parametrize("backend", FAST or ["none"])
def test_target_percent_of_peak(benchmark, backend):
    if backend == "none":
        pytest.skip("no compiled backend (numba, c) is available")
    blas = run("peak", "numpy", 1, 1, 1, threads="one")["gflops"]
    fma = run("fma", "numpy", 1, 1, 1, threads="one")["gflops"]  # None without a C compiler
    peak = fma or blas
    rows = []
    cases = [(200, 16, 8, 0.5)] if benchmark.disabled else [(1_000, 64, 64, 0.75), (10_000, 32, 16, 0.5)]
    # 10 calls of ~30-40 ms a process, two rounds: with 3 calls in one process the n = 64 case
    # gave 40.5 GF/s in a make bench and 56.6 GF/s by hand the next hour (30 calls, pinned)
    times = interleaved(benchmark, {(L, N, B): dict(mode="warm", impl=backend, L=L, N=N, B=B,
                                                    reps=1 if benchmark.disabled else 10, threads="one")
                                    for L, N, B, _ in cases})
    for L, N, B, want in cases:
        t = times[(L, N, B)]
        gf = 6 * B * N * N * L / t / 1e9
        rows.append(dict(L=L, N=N, B=B, gflops=gf, fraction=gf / peak, of_blas=gf / blas, want=want))
    record(benchmark, f"% of one core's FMA peak ({backend}, one thread)", min(r["fraction"] / r["want"] for r in rows),
           ">= 1 (75 % at n=64 B=64, 50 % at n=32 B=16)", all(r["fraction"] >= r["want"] for r in rows),
           peak_gflops=peak, blas_gflops=blas,
           peak="16 chains of float64 FMAs on the widest vectors (benchmarks/fma_peak.c, -march=native), one core"
           if fma else "a 2048^3 float64 matrix product through NumPy's BLAS, one thread (no C compiler)", rows=rows)


def test_target_million_layers(benchmark):
    """Stats-only with generated weights vs the warm in-memory run, per layer (module docstring)."""
    impl = "c" if "c" in FAST else (FAST[0] if FAST else "numpy")
    (L, N, B), = sizes(benchmark, [], [(100_000, 64, 64)], [(600, 16, 8)])
    Lw = min(L, 10_000)
    rows = []
    for threads in ("one+cpu", "one"):
        warm = run("warm", impl, Lw, N, B, reps=1 if benchmark.disabled else 3, threads=threads)["min"] / Lw
        stats = run("stats", impl, L, N, B, reps=0, threads=threads)["first"] / L
        rows.append(dict(L=L, N=N, B=B, threads=threads, ratio=stats / warm, us_per_layer=1e6 * stats,
                         warm_us_per_layer=1e6 * warm))
    ratio = rows[0]["ratio"]
    record(benchmark, f"million layers: stats-only generated / warm in memory, per layer ({impl}, n = {N})", ratio,
           "<= 1.8 (one kernel thread, second CPU free)", ratio <= 1.8, rows=rows, L=L, L_warm=Lw)


def _c_isa() -> int | None:
    """The instruction set the C backend runs here (4: AVX-512), None without it."""
    try:
        from gradbench import cbackend
    except ImportError:
        return None
    return cbackend.isa()


# Small calls (reported): a 10-layer stack, the size of the training demos' nets, where what
# surrounds the kernels (checks, planning, the exact top signal, the Result) is most of a call.
SMALL = [(10, 16, 20), (10, 64, 64)]


def test_target_small_calls(benchmark):
    """gradbench's best against the plain loop and the peers on 10-layer stacks, one thread."""
    from gradbench import peers

    if not FAST:
        pytest.skip("no compiled backend (numba, c) is available")
    impls = ["numpy-loop", *[p for p in ("torch", "jax") if p in peers.peers()], *FAST, "auto"]
    reps = 1 if benchmark.disabled else 300
    rows = []
    for L, N, B in [(4, 8, 4)] if benchmark.disabled else SMALL:
        t = interleaved(benchmark, {impl: dict(mode="warm", impl=impl, L=L, N=N, B=B, reps=reps, threads="one")
                                    for impl in impls})
        best = min([*FAST, "auto"], key=t.get)
        best_peer = min((i for i in impls if i not in (*FAST, "auto")), key=t.get)
        rows.append(dict(L=L, N=N, B=B, best=best, plain_loop=t["numpy-loop"] / t[best], best_peer=best_peer,
                         versus_best_peer=t[best_peer] / t[best], times=t))
    record(benchmark, "small calls (L = 10, one thread): plain loop / best gradbench", min(r["plain_loop"] for r in rows),
           "reported", True, rows=rows)


def test_target_blas_kernels(benchmark):
    """The wide cases under the environment's OpenBLAS kernels and under OpenBLAS's own choice (the
    C backend's products are BLAS's or its own by gradbench.cbackend.BLAS_MIN_WIDTH, which follows
    the kernels: under the AVX2 ones its own AVX-512 products run every width)."""
    from gradbench import peers

    rows = []
    cases = sizes(benchmark, WIDTHS_FULL, WIDTHS_QUICK[2:], [(4, 16, 8)])
    impls = ["c", "numpy-loop", *(["jax"] if "jax" in peers.peers() else [])] if "c" in FAST else ["numpy-loop"]
    for label, unset in (("environment", ()), ("openblas", ("OPENBLAS_CORETYPE",))):
        peak = run("peak", "numpy", 1, 1, 1, threads="one", unset=unset)["gflops"]
        for L, N, B in cases:
            t = {impl: run("warm", impl, L, N, B, reps=1 if benchmark.disabled else 2, threads="one",
                           unset=unset)["min"] for impl in impls}
            best_peer = min((i for i in impls if i != "c"), key=t.get)
            rows.append(dict(kernels=label, coretype=None if unset else os.environ.get("OPENBLAS_CORETYPE"),
                             L=L, N=N, B=B, dgemm_gflops=peak, times=t, best_peer=best_peer,
                             c_vs_best_peer=t[best_peer] / t["c"] if "c" in t else None))
    mine = [r["c_vs_best_peer"] for r in rows if r["kernels"] == "openblas" and r["c_vs_best_peer"]]
    record(benchmark, "BLAS kernels: dgemm GF/s and wide c vs best peer, environment's and OpenBLAS's own kernels",
           min(mine) if mine else 0.0, "reported (target 6 under OpenBLAS's own choice: >= 1.0)", True,
           c_isa=_c_isa(), rows=rows)


def test_a_row_is_left_unjudged_only_where_both_settings_run_one_thread():
    assert _same_code({"one": 1, "two": 1, "default": 1})
    assert not _same_code({"one": 1, "two": 2, "default": 2})
    assert not _same_code({})  # not known (no schedstat): judged
    assert not _same_code({"one": 1})
    assert not _same_code({"one": "blas", "two": "blas", "default": "blas"})  # BLAS's threads differ


def test_threads_of_a_runner_line():
    assert threads_of({"c_threads": 2, "threads_ran": 1}) == 2  # C: what the drivers start
    assert threads_of({"c_threads": "blas", "threads_ran": 2}) == "blas"
    assert threads_of({"threads_ran": 1}) == 1  # numba, peers: measured
    assert threads_of({}) is None
