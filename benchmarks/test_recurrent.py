"""Benchmarks of the recurrent cells: every backend of gradbench.recurrent and torch.nn.RNN/LSTM/GRU.

One test per (case, implementation), ``benchmark.group`` the case id. A gradbench backend runs
forward + backward + the per-step norms (``gb.backprop``); torch runs its module's forward and
autograd backward to every parameter (the per-step norms are extra work it does not do).
Every implementation is checked against the NumPy reference (loss and gradients) before it is
timed. GF/s from FLOPs = 2 T B GN (3 N + 2 D): the recurrent product forward, dz W_hh and
dz^T h_{t-1} backward, and the input projection with its dW_ih (no dL/dx).

Under ``make test`` (``--benchmark-disable``) each test runs once on a tiny stand-in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import pytest

import gradbench as gb
from gradbench.recurrent import backends as rbackends
from gradbench.recurrent import peers as rpeers
from gradbench.peers import peer_status

from bench_harness import measure, rounds_for, threads_info


@dataclass(frozen=True)
class RCase:
    cell: str
    steps: int
    hidden: int
    batch: int
    input_dim: int = 32
    dtype: str = "float64"

    @property
    def id(self) -> str:
        return f"{self.cell}-T{self.steps}-H{self.hidden}-B{self.batch}-{'f64' if self.dtype == 'float64' else 'f32'}"

    @property
    def flops(self) -> int:
        G = {"rnn": 1, "lstm": 4, "gru": 3}[self.cell]
        return 2 * self.steps * self.batch * G * self.hidden * (3 * self.hidden + 2 * self.input_dim)

    def rnn(self) -> gb.Recurrent:
        # tanh at the edge of its own memory: orthogonal W_hh (the default), Xavier W_ih
        return gb.Recurrent(cell=self.cell, steps=self.steps, hidden=self.hidden, input_dim=self.input_dim,
                            dtype=self.dtype)

    def tiny(self) -> "RCase":
        return replace(self, steps=12, hidden=8, batch=4, input_dim=3)


SIZES = [(1000, 32, 16), (1000, 128, 32), (100, 512, 64)]
CASES = [RCase(cell, T, H, B) for T, H, B in SIZES for cell in ("rnn", "lstm", "gru")]
IMPLS = ["numpy", "numba", "c", "torch"]

_inputs: dict = {}
_refs: dict = {}


def _inputs_of(case: RCase):
    if case not in _inputs:
        _inputs.clear()
        rnn = case.rnn()
        _inputs[case] = (rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, case.batch, 1))
    return _inputs[case]


def _reference(case: RCase, computed=None):
    if case not in _refs:
        rnn, p, xs = _inputs_of(case)
        _refs[case] = computed if computed is not None else gb.backprop(rnn, p, xs, backend="numpy")
    return _refs[case]


RTOL = {"float64": 1e-9, "float32": 1e-3}


@pytest.mark.parametrize("case, impl", [pytest.param(c, i, id=f"{c.id}-{i}") for c in CASES for i in IMPLS])
def test_recurrent(benchmark, case: RCase, impl: str):
    if benchmark.disabled and (case.steps, case.hidden, case.batch) != SIZES[0]:
        pytest.skip("benchmarks disabled: the tiny stand-in of this cell already ran with the first size")
    work = case.tiny() if benchmark.disabled else case
    benchmark.group = f"recurrent {case.id}"
    rnn, p, xs = _inputs_of(work)
    if impl == "torch":
        status = peer_status()["torch"]
        if status != "available":
            pytest.skip(f"peer 'torch': {status}")
        if benchmark.disabled:  # tiny stand-ins: torch's thread pool costs ~1 s a call on a loaded 2-core machine
            import torch

            torch.set_num_threads(1)
        run = rpeers.prepare(rnn, p, xs)
        kind = "peer"
    else:
        status = rbackends.backend_status()[impl]
        if status != "available":
            pytest.skip(f"backend {impl!r} is not available for recurrent cells: {status}")

        def run():
            return gb.backprop(rnn, p, xs, backend=impl, checkpoint=None)

        kind = "backend"
    t0 = time.perf_counter()
    first = run()  # warm-up (Numba compiles, torch warms its allocator)
    first_s = time.perf_counter() - t0
    got, seconds, mem = measure(run, trace_numpy=False, memory=not benchmark.disabled)
    ref = _reference(work, got if impl == "numpy" else None)
    if impl == "torch":
        rpeers.check(impl, got, ref, RTOL[work.dtype])
    else:
        for name, g in ref.grads.items():
            a, b = getattr(got.grads, name).to_float(warn=False), g.to_float(warn=False)
            assert np.max(np.abs(a - b)) <= RTOL[work.dtype] * np.max(np.abs(b)), f"{impl}: grads.{name}"
        assert np.allclose(got.signal_norm.log10(), ref.signal_norm.log10(), rtol=0, atol=1e-9)
    del first, got
    rounds = rounds_for(seconds, benchmark.disabled)
    benchmark.extra_info.update(
        case=f"recurrent {case.id}", impl=impl, kind=kind, family="recurrent", L=work.steps, n=work.hidden,
        B=work.batch, dtype=work.dtype, activation=work.cell, flops=work.flops, threads=threads_info(),
        first_call_s=first_s, checked_call_s=seconds, rounds=rounds, check="reference", **mem)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and stats.min > 0:
        benchmark.extra_info["gflops_min_time"] = round(work.flops / stats.min / 1e9, 4)
