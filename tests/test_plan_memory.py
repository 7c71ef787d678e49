"""plan.memory_estimate against the memory a run really takes: the growth of the peak resident
set (VmHWM, reset through /proc/self/clear_refs) of a fresh process, from just before the run to
its end, plus the bytes of the weights, input and targets it was given (counted by the estimate;
drawing them is not the run's: init_params of a float32 stack draws float64 first).

The estimate is an upper bound, close to the peak: before, a wide stats_only run on the C
backend was estimated at 1.8 times its peak (the NumPy histogram's temporaries, which the
compiled fill does not make) and a head of 3000 outputs at 1.3-2 times it, while a float32 bce
head was under it (its float64 temporaries counted at 4 bytes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

MEASURE = r"""
import json, sys
import numpy as np
import gradbench as gb
from gradbench._procstat import reset_peak, status_bytes
from gradbench.histograms import DEFAULT_BINS
from gradbench.plan import memory_estimate


case = json.loads(sys.argv[1])
kw = {"activation": "tanh", "init": "he_normal", **case["kw"]}
run = dict(backend=case["backend"], stats_only=case["stats_only"], checkpoint="auto")

def inputs(stack, B):
    p = gb.GeneratedParams(stack, 0) if case["generated"] else gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, B, 1)
    rng = np.random.default_rng(0)
    t = None  # touched targets: the estimate counts them, and untouched zeros take no memory
    if stack.loss == "softmax_ce":
        t = rng.integers(0, stack.output_dim, B)
    elif stack.has_head:
        t = rng.uniform(0, 1, (B, stack.output_dim)).astype(stack.np_dtype)
    return p, x, t

def warm_up(small, B):  # imports and compiled kernels of this mode
    p, x, t = inputs(small, B)
    res = gb.backprop(small, p, x, t, **run)
    if case.get("diagnose"):  # gradbench.diagnose as the command line calls it: with the weights given
        gb.diagnose(res, p, bins=DEFAULT_BINS)

small = gb.Stack(depth=2, width=case["width"], **kw)
for _ in range(2):
    warm_up(small, case["batch"])
stack = gb.Stack(depth=case["depth"], width=case["width"], **kw)
p, x, t = inputs(stack, case["batch"])
given = [x, t] + [getattr(p, k) for k in ("W_in", "b_in", "W_out", "b_out")]
if not case["generated"]:
    given += [getattr(p, k) for k in ("W", "b", "gamma", "beta", "slope")]
assert reset_peak()  # VmHWM := VmRSS
before = status_bytes("VmRSS")
res = gb.backprop(stack, p, x, t, **run)
estimate = res.extras["memory_estimate"]
if case.get("diagnose"):  # the run's plan with the diagnosis counted, as the command line plans it
    gb.diagnose(res, p, bins=DEFAULT_BINS)
    same = dict(checkpoint=res.extras["checkpoint"], stats_only=case["stats_only"], generated=case["generated"],
                keep_weights=res.extras["weights_kept"], backend=case["backend"])
    assert memory_estimate(stack, case["batch"], **same) == estimate
    estimate = memory_estimate(stack, case["batch"], diagnose_bins=DEFAULT_BINS, **same)
peak = status_bytes("VmHWM") - before + sum(a.nbytes for a in given if a is not None)
print(json.dumps({"estimate": estimate, "peak": peak}))
"""


def _measure(**case) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(case)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "GRADBENCH_C_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    return got["estimate"], got["peak"]


@pytest.mark.parametrize("case", [
    # wide stats_only runs: generated weights, two segments of gradients; the compiled histogram
    # fill holds one layer's temporaries, NumPy's 17 bytes per entry of a segment
    dict(depth=600, width=512, batch=8, generated=True, stats_only=True, backend="c", kw={}),
    dict(depth=300, width=512, batch=8, generated=True, stats_only=True, backend="numpy", kw={}),
    dict(depth=600, width=512, batch=8, generated=True, stats_only=True, backend="c", kw=dict(dtype="float32")),
    # heads of 3000 outputs: the loss's float64 temporaries
    dict(depth=20, width=64, batch=1500, generated=False, stats_only=False, backend="c",
         kw=dict(loss="softmax_ce", output_dim=3000)),
    dict(depth=20, width=64, batch=1500, generated=False, stats_only=False, backend="c",
         kw=dict(loss="mse", output_dim=3000, input_dim=3000)),
    dict(depth=20, width=64, batch=1500, generated=False, stats_only=False, backend="c",
         kw=dict(loss="bce", output_dim=3000, dtype="float32")),
    # parameter-gradient clipping: the clipped copy and its temporaries
    dict(depth=400, width=256, batch=8, generated=False, stats_only=False, backend="c",
         kw=dict(clip="value", clip_on="layer", clip_threshold=1e-3)),
    dict(depth=600, width=512, batch=8, generated=True, stats_only=True, backend="c",
         kw=dict(clip="value", clip_on="layer", clip_threshold=1e-3)),
    # a deep, narrow stats_only run: its O(L) vectors (the Result's copies of five were not
    # counted: 0.87 of the peak), and its diagnosis (16 vectors a layer counted, ~37 used: 0.91)
    dict(depth=300_000, width=8, batch=4, generated=True, stats_only=True, backend="c", kw={}, diagnose=True),
    # a float32 diagnosis of stored weights: log10 ||W_l|| took a float64 copy of all of W (0.58)
    dict(depth=100, width=512, batch=16, generated=False, stats_only=False, backend="c", kw=dict(dtype="float32"),
         diagnose=True),
    # B = N: the pre-activations live in the gradients' dW (plan.z_in_gradients; 1.004 measured)
    dict(depth=400, width=256, batch=256, generated=False, stats_only=False, backend="c", kw={}),
], ids=["stats-only-c", "stats-only-numpy", "stats-only-c-f32", "softmax-ce-head", "mse-head-and-input-layer",
        "bce-head-f32", "value-clipping", "stats-only-value-clipping", "deep-stats-only-diagnosed",
        "f32-weights-diagnosed", "z-in-gradients"])
def test_memory_estimate_bounds_the_measured_peak(case):
    estimate, peak = _measure(**case)
    # an upper bound (but for a few MB of page rounding and small arrays) of every measured peak
    assert peak <= 1.02 * estimate, (estimate / peak, estimate, peak)
    # the diagnosis's vectors are counted at the most measured (tracemalloc, gradbench.plan), which a
    # deep run's resident set stays below: 1.19 of its peak at 300,000 layers
    close = 1.3 if (case["stats_only"] and "clip" in case["kw"]) or case.get("diagnose") else 1.15
    if estimate > close * peak:
        # and close to the peak. A run's measured growth (VmHWM over VmRSS before) is at times
        # ~10 % below its usual: stats-only value clipping gave estimate / peak 1.03-1.05 in
        # 12 of 14 runs and 1.16-1.18 in the other two on a Zen 5 VM, and 1.157 in each of 4 on
        # a Zen 4 one. The estimate counts the previous segment's clipped copy, which the helper
        # thread's histograms may still be reading when the next is made; where they are done
        # first it is freed before, and the peak is lower by it: hence 1.3 for that case (1.24
        # since value clipping holds no float64 temporaries beside its copy).
        # The larger of two measurements is held to it.
        again, peak2 = _measure(**case)
        assert again == estimate and peak2 <= 1.02 * estimate, (estimate / peak2, estimate, peak2)
        peak = max(peak, peak2)
    assert estimate <= close * peak, (estimate / peak, estimate, peak)


def test_a_wide_c_run_peaks_the_same_every_time():
    """The C forward's W^T, allocated and freed once per segment, fragmented glibc's heap: the
    peak of this run was 247-268 MB over eight runs (the bytes live: 244). Kept for the run
    (csrc/workspace.c), the block leaves the peak the same to a few pages. Fragmentation raises
    a peak; a run now and then measures a few MiB less (231.4 MiB against 234.8-236.9 in ten
    runs, the file-backed pages unchanged; 242.6 MB against 247.9-248.0 in a make test; the
    cause was not pinned down). So the two highest of three runs must agree to a few pages, and
    the third may be up to 8 MiB lower."""
    case = dict(depth=600, width=512, batch=8, generated=True, stats_only=True, backend="c", kw={})
    peaks = sorted(_measure(**case)[1] for _ in range(3))
    assert peaks[2] - peaks[1] <= 2**20 and peaks[2] - peaks[0] <= 8 * 2**20, peaks


def test_init_params_refuses_parameters_beyond_the_available_memory(monkeypatch):
    """init_params of a stack whose weights alone exceed the memory raised NumPy's bare
    MemoryError ("Unable to allocate 1.19 PiB", naming no way out) or, just below the physical
    memory, drew them into swap; it is refused first, naming GeneratedParams."""
    import gradbench as gb
    import gradbench.plan as plan

    st = gb.Stack(depth=100, width=64)
    assert 100 * 64 * 64 * 8 > 2**21  # W alone: 3.3 MB in float64
    monkeypatch.setattr(plan, "available_memory", lambda: 2**21)
    with pytest.raises(MemoryError, match=r"init_params: .*depth 100, width 64.*GeneratedParams\(stack, seed\)"):
        gb.init_params(st, 0)
    small = gb.Stack(depth=2, width=8)  # 2 * 8 * 8 * 8 bytes: fits
    assert gb.init_params(small, 0).W.shape == (2, 8, 8)
