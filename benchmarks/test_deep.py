"""Million-layer runs: checkpointed, generated weights, statistics only (docs/design.md section 5).

Each run is a fresh subprocess so that its peak resident memory is its own (VmHWM, reset at its
start: ``ru_maxrss`` would include the resident set of the process it was forked from);
the time is measured inside it around ``gb.backprop`` (import and compilation excluded).
Targets (issue: million-layer simulations): 10^6 layers, width 64, batch 64, tanh, he_normal,
float64, generated weights, statistics only, fastest backend: peak memory < 1 GiB, time per
layer within 1.8x of the warm plain in-memory run at 10^4 layers (its second call in the
process) with the second CPU free for the helper thread (benchmarks/test_targets.py measures
that ratio in fresh processes; here the grid's threads and CPUs apply). ``make bench-quick`` runs 10^5
layers, ``make bench`` 10^6; under ``make test`` tiny stand-ins run once.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys, time
import numpy as np
import gradbench as gb
from gradbench._procstat import own_peak_bytes, reset_peak

reset_peak()  # VmHWM := the current RSS (imports included)
L, N, B, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
stack = gb.Stack(depth=L, width=N, activation="tanh", init="he_normal")
x = gb.gaussian_input(stack, B, seed=1)
warm = gb.Stack(depth=4, width=N, activation="tanh", init="he_normal")
gb.backprop(warm, gb.init_params(warm, 0), gb.gaussian_input(warm, B, 1))  # compile / load caches
if mode == "plain":  # warm: the second call (the first pays for its fresh memory)
    params = gb.init_params(stack, 0)
    gb.backprop(stack, params, x, checkpoint=None)  # dropped at once: its memory serves the next call
    t = time.perf_counter()
    res = gb.backprop(stack, params, x, checkpoint=None)
else:
    params = gb.GeneratedParams(stack, 0)
    t = time.perf_counter()
    res = gb.backprop(stack, params, x, stats_only=True, checkpoint=max(1, round(L ** 0.5)))
seconds = time.perf_counter() - t
g = res.grad_norm.log10()
print(json.dumps(dict(seconds=seconds, maxrss_mib=own_peak_bytes() / 2**20,
                      backend=res.backend, finite=bool(np.all(np.isfinite(g))), log10_first=float(g[0]),
                      log10_last=float(g[-1]))))
"""


def _run(L: int, N: int, B: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(L), str(N), str(B), mode],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


CASES = [
    pytest.param("plain", 10_000, id="deep-plain-L10000-n64-B64"),
    pytest.param("stats", 100_000, id="deep-stats-L100000-n64-B64"),
    pytest.param("stats", 1_000_000, id="deep-stats-L1000000-n64-B64", marks=pytest.mark.bench_full),
]
_plain: dict = {}


@pytest.mark.parametrize("mode,L", CASES)
def test_deep_stats_only(benchmark, mode, L):
    N, B = 64, 64
    if benchmark.disabled:  # make test: a tiny stand-in, same code path
        L, N, B = (400, 8, 4) if mode == "plain" else (2_000, 8, 4)
    benchmark.group = "deep-stats-only"
    r = benchmark.pedantic(_run, args=(L, N, B, mode), rounds=1, iterations=1)
    assert r["finite"], r  # exact norms at every layer, far beyond float64's range at 10^6
    per_layer = r["seconds"] / L
    benchmark.extra_info.update(case=f"deep-{mode}-L{L}-n{N}-B{B}", impl=f"{r['backend']} (auto)", kind="deep",
                                family="deep", dtype="float64", activation="tanh", batch_norm=False,
                                residual=0, threads={})
    benchmark.extra_info.update(L=L, n=N, B=B, mode=mode, backend=r["backend"], seconds=r["seconds"],
                                us_per_layer=1e6 * per_layer, peak_rss_mib=r["maxrss_mib"],
                                log10_grad_first=r["log10_first"], log10_grad_last=r["log10_last"],
                                flops=6 * B * N * N * L)
    if mode == "plain":
        _plain[(N, B)] = per_layer
    elif (N, B) in _plain:
        ratio = per_layer / _plain[(N, B)]
        benchmark.extra_info["time_per_layer_vs_plain"] = ratio
    if not benchmark.disabled and mode == "stats":
        assert r["maxrss_mib"] < 1024, f"peak memory {r['maxrss_mib']:.0f} MiB >= 1 GiB"
    assert math.isfinite(per_layer)
