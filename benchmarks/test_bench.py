"""Benchmarks: every implementation of gradbench's registry and every installed peer, per case.

One test per (case, implementation); ``benchmark.group`` is the case id, so a group compares all
implementations on the same work. The case's weights are drawn once and shared; JIT-compiled
implementations (Numba, JAX) and the peers first run once untimed (compilation, allocator);
then every implementation runs once to measure peak memory and to check its numbers against
the NumPy reference (the reference's own run becomes the reference), and only then is timed.

Under ``make test`` (``--benchmark-disable``) every test runs once on a tiny stand-in of its
case (:meth:`Case.tiny`) and still checks against the reference. ``make bench-quick`` runs the
cases marked quick, ``make bench`` all of them (cases outside the quick set carry the
``bench_full`` marker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import gradbench as gb
from gradbench import peers
from gradbench.backends import REGISTRY

from bench_cases import CASES, SMALL_ROUNDS, Case
from bench_harness import check_backend, inputs, measure, reference, rounds_for, threads_info, tolerance

# The registry drives the benchmarks: the reference first, then every other registered backend.
BACKENDS = ["numpy"] + [name for name in REGISTRY if name != "numpy"]
JIT = {"numba"}  # backends whose first call may compile
PEER_VARIANTS = {"numpy-loop": ("numpy-loop", {}), "torch": ("torch", {}), "jax": ("jax", {}),
                 "torch-ftz": ("torch", {"flush_denormal": True})}


def implementations(case: Case) -> list[str]:
    names = BACKENDS + ["numpy-loop", "torch", "jax"]
    if case.family == "subnormal":
        names.append("torch-ftz")  # torch.set_flush_denormal(True) around the pass
    return names


PARAMS = [
    pytest.param(case, impl, id=f"{case.id}-{impl}", marks=() if case.quick else pytest.mark.bench_full)
    for case in CASES
    for impl in implementations(case)
]


def _info(benchmark, case: Case, work: Case, impl: str, kind: str, **more) -> None:
    benchmark.extra_info.update(
        case=case.id, impl=impl, kind=kind, family=case.family, regime=case.regime, L=work.depth, n=work.width,
        B=work.batch, dtype=work.dtype, activation=work.activation, batch_norm=work.batch_norm,
        residual=work.residual, flops=work.flops, threads=threads_info(), **more,
    )


def _most_rounds(case: Case) -> int:
    """The grid's 20 rounds; a small call's case many more (a minimum over ~1 s of calls)."""
    return SMALL_ROUNDS if case.family == "small" else 20


def _subnormal_layers(ref, dtype) -> int:
    """Layers whose exact ||dL/dh_l|| lies in the subnormal range of ``dtype``."""
    info = np.finfo(dtype)
    lg = ref.signal_norm.log10()
    return int(np.sum((lg < np.log10(float(info.tiny))) & (lg >= np.log10(float(info.smallest_subnormal)))))


@pytest.mark.parametrize("case, impl", PARAMS)
def test_backprop(benchmark, case: Case, impl: str):
    work = case.tiny() if benchmark.disabled else case
    benchmark.group = case.id
    if impl in REGISTRY:
        status = gb.backend_status()[impl]
        if status != "available":
            pytest.skip(f"backend {impl!r} is registered but not available: {status}")
        _bench_backend(benchmark, case, work, impl)
    else:
        base, options = PEER_VARIANTS[impl]
        status = peers.peer_status()[base]
        if status != "available":
            pytest.skip(f"peer {impl!r}: {status}")
        _bench_peer(benchmark, case, work, impl, base, options)


def _bench_backend(benchmark, case: Case, work: Case, impl: str) -> None:
    stack, params, x = inputs(work)

    def run():
        return gb.backprop(stack, params, x, backend=impl)

    first = None
    if impl in JIT:
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
    res, seconds, mem = measure(run, trace_numpy=True, memory=not benchmark.disabled)
    ref = reference(work, res if impl == "numpy" else None)
    check_backend(impl, work, res, ref)  # before timing: no one wins by doing less
    del res
    rounds = rounds_for(seconds, benchmark.disabled, _most_rounds(case))
    _info(benchmark, case, work, impl, "backend", first_call_s=first,
          checked_call_s=seconds, rounds=rounds, check="reference", rtol=tolerance(work), **mem,
          **({"plain_subnormal_layers": _subnormal_layers(ref, work.dtype)} if case.family == "subnormal" else {}))
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    _record_gflops(benchmark, work)


def _bench_peer(benchmark, case: Case, work: Case, impl: str, base: str, options: dict) -> None:
    stack, params, x = inputs(work)
    why = peers.unsupported(stack)
    if why:
        pytest.skip(f"{impl}: {why}")
    ref = reference(work)
    partial = case.family == "subnormal"
    if not partial:
        why = peers.representable(stack, ref)
        if why:
            pytest.skip(f"{impl} runs the plain chain, not comparable here: {why}")
    run = peers.prepare(base, stack, params, x, **options)
    t0 = time.perf_counter()
    run()  # warm-up: JAX traces and compiles here, torch warms its allocator
    first = time.perf_counter() - t0
    got, seconds, mem = measure(run, trace_numpy=False, memory=not benchmark.disabled)
    peers.check(impl, stack, got, ref, rtol=tolerance(work), partial=partial)
    rounds = rounds_for(seconds, benchmark.disabled, _most_rounds(case))
    more = {}
    if partial:  # what the plain chain gave at the bottom: exact zeros, or tiny (subnormal) norms
        tiny = float(np.finfo(work.dtype).tiny)
        more = dict(plain_zero_layers=int(np.sum(got.grad_norm == 0)),
                    plain_below_normal_layers=int(np.sum((got.grad_norm > 0) & (got.grad_norm < tiny * work.width))))
    _info(benchmark, case, work, impl, "peer", first_call_s=first, checked_call_s=seconds, rounds=rounds,
          check="partial: layers in the normal float range" if partial else "reference",
          rtol=tolerance(work), **mem, **more)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    _record_gflops(benchmark, work)


def _record_gflops(benchmark, work: Case) -> None:
    """GF/s = 6 B N^2 L / time, from the minimum and the median over the rounds."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and stats.min > 0:
        benchmark.extra_info["gflops_min_time"] = round(work.flops / stats.min / 1e9, 4)
        benchmark.extra_info["gflops_median_time"] = round(work.flops / stats.median / 1e9, 4)


# ------------------------------------------------------------------ compilation, timed apart
COMPILE_SCRIPT = r"""
import json, time
t0 = time.perf_counter()
import gradbench as gb
out = {"import_s": time.perf_counter() - t0, "first_s": {}, "second_s": {}}
for dt in ("float64", "float32"):
    for name, kw in (("tanh", {}), ("relu-bn-res2", dict(activation="relu", batch_norm=True, residual=2))):
        s = gb.Stack(depth=4, width=8, dtype=dt, **kw)
        p, x = gb.init_params(s, 0), gb.gaussian_input(s, 4, 1)
        for key in ("first_s", "second_s"):
            t = time.perf_counter()
            gb.backprop(s, p, x, backend="numba")
            out[key][f"{name}-{dt}"] = time.perf_counter() - t
print("RESULT " + json.dumps(out))
"""


def _compile_run(cache_dir) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise AssertionError(f"numba compile subprocess failed:\n{proc.stderr[-3000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    out["wall_s"] = wall
    out["compile_s"] = out["import_s"] + sum(out["first_s"].values()) - sum(out["second_s"].values())
    return out


def test_numba_cold_compile(benchmark, tmp_path):
    """Cold compile of the Numba backend (fresh NUMBA_CACHE_DIR, in a subprocess), then cached."""
    status = gb.backend_status()["numba"]
    if status != "available":
        pytest.skip(f"backend 'numba' is registered but not available: {status}")
    if benchmark.disabled:
        pytest.skip("cold-compile timing runs only with benchmarks enabled (make bench-quick / make bench)")
    benchmark.group = "compile"
    runs = []

    def setup():
        d = tmp_path / f"cache{len(runs)}"
        d.mkdir()
        return (d,), {}

    def cold(d):
        runs.append(_compile_run(d))

    benchmark.pedantic(cold, setup=setup, rounds=1, iterations=1)
    cached = _compile_run(tmp_path / "cache0")
    benchmark.extra_info.update(
        case="compile", impl="numba", kind="compile", cold=runs[-1], cached=cached,
        cold_compile_s=round(runs[-1]["compile_s"], 3), cached_load_s=round(cached["compile_s"], 3),
    )
