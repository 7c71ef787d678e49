"""What every benchmark does around the timed call: inputs, the reference, checks, memory.

- The weights and the input of a case are drawn once (``gb.init_params(stack, 0)``,
  ``gb.gaussian_input(stack, B, 1)``) and given to every implementation.
- The reference of a case is the NumPy backend's Result, kept as a small summary (loss and
  per-layer norms), computed once per case.
- Peak memory of one untimed call: the growth of the resident set (VmHWM after the call minus
  VmRSS before, with the peak reset through /proc/self/clear_refs and free memory returned by
  malloc_trim first) for every implementation, and tracemalloc's peak of the NumPy allocations
  for gradbench's backends.
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

import gradbench as gb
from gradbench._procstat import reset_peak, status_bytes
from gradbench.logscaled import LogScaled

from bench_cases import Case

# Relative tolerance of an implementation's loss and ||dL/dW_l|| against the reference, and its
# growth with depth: rounding differences accumulate through the chain. At L = 100,000 (N = 8)
# float32 runs of numpy, numba and c differ from the float64 truth by 4-8 % at the bottom
# layers (0.2 % at L = 10,000), so float32 gets max(2e-2, 1.5e-6 * L).
RTOL = {"float64": 1e-7, "float32": 2e-2}
DRIFT = {"float64": 1e-13, "float32": 1.5e-6}


def tolerance(case: Case) -> float:
    """The relative tolerance of the checks for ``case``."""
    return max(RTOL[case.dtype], DRIFT[case.dtype] * case.depth)


@dataclass(frozen=True)
class Reference:
    """The part of the reference Result that checks need (duck-types gradbench.Result)."""

    loss: float
    grad_norm: LogScaled
    signal_norm: LogScaled
    act_std: LogScaled
    extras: dict  # only what peers.representable reads (bn_sumsq_log10)

    @classmethod
    def of(cls, res) -> "Reference":
        keep = {k: v for k, v in (res.extras or {}).items() if k == "bn_sumsq_log10"}
        return cls(res.loss, res.grad_norm, res.signal_norm, res.act_std, keep)


_inputs: dict = {}       # only the current case: big cases hold GBs of weights
_references: dict = {}   # case -> Reference (small)


def inputs(case: Case):
    """(stack, params, x) of ``case``, drawn once and shared by every implementation."""
    if case not in _inputs:
        big = any(p.W.nbytes > 2**26 for _, p, _ in _inputs.values())
        _inputs.clear()
        if big:
            gc.collect()
        stack = case.stack()
        _inputs[case] = (stack, gb.init_params(stack, 0), gb.gaussian_input(stack, case.batch, 1))
    return _inputs[case]


def reference(case: Case, computed=None) -> Reference:
    """The NumPy reference of ``case`` (``computed``: a numpy-backend Result already at hand)."""
    if case not in _references:
        if computed is None:
            stack, params, x = inputs(case)
            computed = gb.backprop(stack, params, x, backend="numpy")
        _references[case] = Reference.of(computed)
    return _references[case]


def check_backend(name: str, case: Case, res, ref: Reference) -> None:
    """Raise AssertionError unless a gradbench backend's Result matches the reference."""
    rtol = tolerance(case)
    if not np.isclose(res.loss, ref.loss, rtol=rtol, atol=0) and not (res.loss == ref.loss):
        raise AssertionError(f"{name} on {case.id}: loss {res.loss!r} != reference {ref.loss!r}")
    got, want = res.grad_norm.log10(), ref.grad_norm.log10()
    bad = np.flatnonzero(~(np.abs(got - want) <= rtol / np.log(10)) & ~(got == want))
    if bad.size:
        l = int(bad[0])
        raise AssertionError(f"{name} on {case.id}: log10 ||dL/dW_l|| differs at {bad.size} layers, "
                             f"first l={l}: got {got[l]:.9f}, reference {want[l]:.9f} (rtol {rtol})")


# ------------------------------------------------------------------ memory
def _reset_peak() -> bool:
    gc.collect()
    from gradbench import buffers

    buffers.release()  # what gradbench keeps for later calls would otherwise not count as growth
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return reset_peak()


def measure(fn, trace_numpy: bool, memory: bool = True):
    """Run ``fn`` once; return (its value, seconds, memory info dict).

    ``memory=False`` (tiny stand-ins under ``make test``) skips the memory bookkeeping, whose
    gc.collect and malloc_trim cost more than the tiny call itself.
    """
    if not memory:
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0, {}
    can_reset = _reset_peak()
    rss0 = status_bytes("VmRSS")
    if trace_numpy:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = fn()
        seconds = time.perf_counter() - t0
        mem = {}
        if trace_numpy:
            mem["traced_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 3)
    finally:
        if trace_numpy:
            tracemalloc.stop()
    if can_reset and rss0 >= 0:
        mem["peak_rss_mib"] = round(max(status_bytes("VmHWM") - rss0, 0) / 2**20, 3)
    return out, seconds, mem


def rounds_for(seconds: float, disabled: bool, most: int = 20) -> int:
    """Rounds so that a case takes about GRADBENCH_BENCH_BUDGET seconds (1..``most``; the small
    calls' cases allow more, bench_cases.SMALL_ROUNDS)."""
    if disabled:
        return 1
    budget = float(os.environ.get("GRADBENCH_BENCH_BUDGET", "3"))
    least = 2 if seconds < 5 else 1  # a minimum over at least two rounds unless a call is slow
    return int(min(most, max(least, round(budget / max(seconds, 1e-6)))))


def threads_info() -> dict:
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "XLA_FLAGS")
    return {k: os.environ[k] for k in keys if k in os.environ}
