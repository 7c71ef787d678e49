"""C backend only: its threads and its instruction-set instances, on preallocated arrays.

Groups (``benchmark.group``) compare, on the same work (tanh at the edge of chaos, as in
bench_cases.py):
- ``c-threads-*``: the C drivers (forward + backward) with one thread, two threads and the
  library default (``GRADBENCH_C_THREADS``/cores; BLAS off, so the own kernels and their
  threads are what is timed). Issue 14: two threads >= 1.7x one at N = 64, B = 64 and wider;
  the default never slower than one thread. Three variants: the plain stack, batch norm (its
  sums per block of 4 rows, each thread its own, added in order after a barrier) and signal
  clipping by norm (the whole batch's norm from the rows' sums).
- ``c-isa-*``: the baseline instance (what a ``-march``-less build runs on any x86-64) against
  the best one this CPU runs (AVX2 or AVX-512, chosen at run time).
Every variant's outputs are checked bit for bit against the one-thread run first (results do
not depend on the thread count); instances are checked against each other to 1e-12.
Under ``make test`` (benchmarks disabled) tiny stand-ins run once.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi, engine

cb = pytest.importorskip("gradbench.cbackend", reason="C extension not built", exc_type=ImportError)

SIZES = [(1000, 64, 64), (200, 512, 256)]
TINY = (4, 16, 8)


VARIANTS = {"plain": {}, "bn": dict(batch_norm=True), "clip": dict(clip="norm", clip_threshold=0.5)}


def _arrays(L, N, B, **variant):
    stack = gb.Stack(depth=L, width=N, activation="tanh", init="normal", sigma_w=1.76 ** 0.5,
                     sigma_b=0.05 ** 0.5, **variant)
    params = gb.init_params(stack, 0)
    icfg, fcfg = abi.kernel_config(stack, engine.can_rescale_forward(stack, params))
    params_names = ("icfg", "fcfg", "W", "b", "gamma", "beta", "slope")
    dims = dict(L=L, B=B, N=N)
    fwd = abi.allocate("stack_forward", dims, np.float64, skip=params_names,
                       fill=dict(fexp=0, frow=0, info=-1, bn_mean=0.0, bn_rstd=1.0))
    bwd = abi.allocate("stack_backward", dims, np.float64, skip=params_names + ("H", "Z", "bn_rstd", "fexp", "frow", "info"),
                       fill=dict(sig_e=0, row_e=0))
    fwd["H"][0] = gb.gaussian_input(stack, B, 1)
    return stack, params, icfg, fcfg, fwd, bwd


def _call(opts, stack, params, icfg, fcfg, fwd, bwd, keep=True):
    """Forward and backward; the outputs checked (copies) where ``keep``, else None (timed: a
    copy of dW, 32 MB at L = 1,000, N = 64, is not the drivers' work)."""
    cb.forward_with(opts, icfg, fcfg, params.W, params.b, params.gamma, params.beta, params.slope,
                    *(fwd[a.name] for a in abi.FORWARD[7:]))
    L = stack.depth
    bwd["G"][...] = fwd["H"][L]
    bwd["sig_e"][L] = fwd["fexp"][L]
    bwd["row_e"][...] = 0  # the call writes dL/dh_0's row exponents into it
    arrays = {**fwd, **bwd}
    cb.backward_with(opts, icfg, fcfg, params.W, params.gamma, params.beta, params.slope,
                     *(arrays[a.name] for a in abi.BACKWARD[6:]))
    return {k: v.copy() for k, v in bwd.items() if k in ("dW", "G", "sig_m", "sig_e", "gnorm_m")} if keep else None


def _bench(benchmark, group, work, opts, check, variant="plain"):
    L, N, B = TINY if benchmark.disabled else work
    problem = _arrays(L, N, B, **VARIANTS[variant])
    got = _call(opts, *problem)
    check(got, problem)
    benchmark.group = f"{group}-L{L}-n{N}-B{B}-f64" if variant == "plain" else f"{group}-{variant}-L{L}-n{N}-B{B}-f64"
    benchmark.extra_info.update(flops=6 * B * N * N * L, isa=cb.isa(opts), nthreads=int(opts.nthreads))
    rounds = 1 if benchmark.disabled else 7
    benchmark.pedantic(lambda: _call(opts, *problem, keep=False), rounds=rounds, iterations=1, warmup_rounds=0)
    if not benchmark.disabled:
        benchmark.extra_info["gflops_min_time"] = round(6 * B * N * N * L / benchmark.stats.stats.min / 1e9, 3)


@pytest.mark.parametrize("threads", ["1", "2", "default"])
@pytest.mark.parametrize("work", SIZES, ids=[f"L{L}-n{N}-B{B}" for L, N, B in SIZES])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_c_threads(benchmark, variant, work, threads):
    nthreads = None if threads == "default" else int(threads)
    opts = cb.make_opts(nthreads=nthreads, blas=False)

    def same_as_one_thread(got, problem):
        want = _call(cb.make_opts(nthreads=1, blas=False), *problem)
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], v, err_msg=f"{threads} threads: {k}")

    _bench(benchmark, "c-threads", work, opts, same_as_one_thread, variant)


@pytest.mark.parametrize("isa", ["baseline", "best"])
def test_c_instruction_sets(benchmark, isa):
    opts = cb.make_opts(nthreads=1, blas=False, isa=1 if isa == "baseline" else 0)

    def close_to_the_other(got, problem):
        other = _call(cb.make_opts(nthreads=1, blas=False, isa=0 if isa == "baseline" else 1), *problem)
        np.testing.assert_array_equal(got["sig_e"], other["sig_e"])
        np.testing.assert_allclose(got["gnorm_m"], other["gnorm_m"], rtol=1e-12)

    _bench(benchmark, "c-isa", SIZES[0], opts, close_to_the_other)
