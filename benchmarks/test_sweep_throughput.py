"""Sweep throughput on Dask: 2 workers against 1, and 1 worker against a plain serial loop.

The case of issue 16: 200 runs (tanh, depth 500, width 64, batch 32: 50 values of sigma_w x 4
seeds). Each measurement is the fastest of three fresh subprocesses, with one thread per process
(OMP, OpenBLAS, MKL), the layout of a Dask worker, so the three compare like with like:

- ``serial``: the loop a user writes in one process: ``GeneratedParams``, ``gaussian_input``,
  ``backprop(stats_only=True)``, ``diagnose`` per run (kernels warmed up first);
- ``sweep-1``, ``sweep-2``: ``gb.sweep`` on a LocalCluster of 1 or 2 worker processes, started
  and warmed up before the clock starts (``startup_s`` records that part apart); the sweep also
  computes the mean-field columns and ships and assembles the table, which counts as overhead.

- ``serial-1cpu``: the serial loop pinned to one CPU. A run with generated weights fills the
  next segment's weights in a helper thread (``gradbench.supply``), so one process, and one
  worker, uses more than one core where a second is free; two workers on two cores compete for
  that. 2 workers against this loop is the per-core scaling.

Recorded: runs per second, and the ratios (targets of the issue: 2 workers >= 1.7x one worker,
one worker within 1.15x of the serial loop). On a shared machine they are reported, not
asserted. Under ``make test`` a tiny stand-in (8 runs of depth 20) runs the same code once.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys, time
import numpy as np
import gradbench as gb
from gradbench.sweep.worker import warm_up

mode, runs, L, N, B = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
seeds = range(4)
sigma_w = np.linspace(0.8, 2.0, runs // len(seeds)).tolist()
fixed = dict(depth=L, width=N, activation="tanh", init="normal")

if __name__ == "__main__":
    startup = 0.0
    if mode == "serial":
        warm_up("auto", "float64")
        t = time.perf_counter()
        rates = []
        for sw in sigma_w:
            stack = gb.Stack(sigma_w=sw, **fixed)
            for seed in seeds:
                params = gb.GeneratedParams(stack, seed)  # what a sweep's run uses (gradbench run --seed)
                x = gb.gaussian_input(stack, B, seed=np.random.default_rng([seed, 1]))
                rates.append(gb.diagnose(gb.backprop(stack, params, x, stats_only=True)).decades_per_layer)
        seconds = time.perf_counter() - t
    else:
        import distributed
        t0 = time.perf_counter()
        with distributed.LocalCluster(n_workers=int(mode[-1]), threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as lc, distributed.Client(lc) as client:
            client.run(warm_up, "auto", "float64")
            startup = time.perf_counter() - t0
            t = time.perf_counter()
            table = gb.sweep({"sigma_w": sigma_w}, seeds=seeds, batch=B, client=client, **fixed)
            seconds = time.perf_counter() - t
            rates = table.decades_per_layer.tolist()
    print(json.dumps(dict(seconds=seconds, startup_s=startup, runs=len(rates),
                          finite=bool(np.all(np.isfinite(rates))), rates=rates)))
"""

THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}


def _run(mode: str, runs: int, L: int, N: int, B: int) -> dict:
    one_cpu = None
    if mode == "serial-1cpu" and hasattr(os, "sched_getaffinity"):
        cpu = min(os.sched_getaffinity(0))
        one_cpu = lambda: os.sched_setaffinity(0, {cpu})  # noqa: E731
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode.split("-")[0] if mode.startswith("serial") else mode,
                          str(runs), str(L), str(N), str(B)], capture_output=True, text=True, check=True,
                         env=os.environ | THREADS, timeout=1800, preexec_fn=one_cpu)
    return json.loads(out.stdout.strip().splitlines()[-1])


ROUNDS = 3


def _best(mode: str, runs: int, L: int, N: int, B: int, rounds: int) -> dict:
    """The result of the fastest of ``rounds`` fresh processes."""
    return min((_run(mode, runs, L, N, B) for _ in range(rounds)), key=lambda r: r["seconds"])


_results: dict = {}


@pytest.mark.parametrize("mode", ["serial", "serial-1cpu", "sweep-1", "sweep-2"])
def test_sweep_throughput(benchmark, mode):
    runs, L, N, B = 200, 500, 64, 32
    if benchmark.disabled:  # make test: a tiny stand-in, same code path
        runs, L, N, B = 8, 20, 8, 4
    benchmark.group = "sweep-throughput"
    # the fastest of three fresh processes (one under make test): the machine is shared, and one
    # round each put one worker at 1.25x the serial loop where three alternations gave 0.90-1.21x
    r = benchmark.pedantic(_best, args=(mode, runs, L, N, B, 1 if benchmark.disabled else ROUNDS), rounds=1,
                           iterations=1)
    assert r["runs"] == runs and r["finite"], r
    _results[(mode, runs)] = r
    rate = runs / r["seconds"]
    benchmark.extra_info.update(case=f"sweep-tanh-L{L}-n{N}-B{B}-{runs}runs", impl=mode, kind="sweep",
                                family="sweep", dtype="float64", activation="tanh", batch_norm=False, residual=0,
                                threads={"per_process": 1}, L=L, n=N, B=B, runs=runs, seconds=r["seconds"],
                                runs_per_second=rate, startup_s=r["startup_s"], flops=6 * B * N * N * L * runs)
    serial, one = _results.get(("serial", runs)), _results.get(("sweep-1", runs))
    if mode != "serial" and serial:
        # every run is the same computation whether looped or swept
        assert r["rates"] == serial["rates"]
    if mode == "sweep-1" and serial:
        benchmark.extra_info["overhead_vs_serial"] = r["seconds"] / serial["seconds"]
    if mode == "sweep-2" and one:
        benchmark.extra_info["speedup_vs_1_worker"] = one["seconds"] / r["seconds"]
    pinned = _results.get(("serial-1cpu", runs))
    if mode == "sweep-2" and pinned:
        benchmark.extra_info["speedup_vs_1_cpu"] = pinned["seconds"] / r["seconds"]
    if not benchmark.disabled:
        print(f"\n{mode}: {rate:.2f} runs/s ({r['seconds']:.2f} s for {runs} runs; cluster start + warm-up "
              f"{r['startup_s']:.2f} s){_ratios(benchmark.extra_info)}")
    assert math.isfinite(rate)


def _ratios(info: dict) -> str:
    parts = []
    if "overhead_vs_serial" in info:
        parts.append(f"1 worker / serial loop = {info['overhead_vs_serial']:.3f}x time")
    if "speedup_vs_1_worker" in info:
        parts.append(f"2 workers vs 1: {info['speedup_vs_1_worker']:.2f}x throughput")
    if "speedup_vs_1_cpu" in info:
        parts.append(f"2 workers vs the serial loop on one CPU: {info['speedup_vs_1_cpu']:.2f}x throughput")
    return "; " + "; ".join(parts) if parts else ""
