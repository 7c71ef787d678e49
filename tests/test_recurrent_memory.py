"""Checkpointing through time: 10^6 steps at hidden 64, batch 64 in under 1 GiB."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import gradbench as gb
from gradbench.recurrent.engine import memory_estimate, plan_run


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_million_steps_plan_under_one_gib(cell):
    rnn = gb.Recurrent(cell=cell, steps=1_000_000, hidden=64, input_dim=64)
    plan = plan_run(rnn, 64, stats_only=True, generated=True, available=64 * 2**30)
    assert plan.recompute and 900 <= plan.segment <= 1100
    assert plan.estimate < 0.7 * 2**30, plan
    plain = memory_estimate(rnn, 64)
    assert plain > 10 * 2**30  # what it would take without checkpointing


def test_refused_when_it_cannot_fit():
    rnn = gb.Recurrent(cell="lstm", steps=1_000_000, hidden=64)
    with pytest.raises(MemoryError, match="it fits with checkpoint=1000"):
        plan_run(rnn, 64, checkpoint=None, memory_budget=2**30)
    with pytest.raises(MemoryError, match="reduce steps, hidden or batch"):
        plan_run(rnn, 64, memory_budget=2**20)


def test_refusal_names_the_leanest_checkpoint_when_sqrt_t_does_not_fit():
    """k ~ sqrt(T) (2000 steps: 2.54 GiB) is not the leanest segment of an LSTM (the states at
    segment starts against 6 saved numbers per step: 1076 steps, 2.17 GiB): the refusal named no
    checkpoint ("reduce steps, hidden or batch") when that one fits."""
    from gradbench.plan import PlanRefused
    from gradbench.recurrent.engine import leanest_segment

    rnn = gb.Recurrent(cell="lstm", steps=4_000_000, hidden=256)
    assert leanest_segment(rnn, 64, generated=True) == 1076
    with pytest.raises(PlanRefused, match=r"checkpoint=2000\) needs about 2.54 GiB .* it fits with checkpoint=1076 "
                                          r"\(about 2.17 GiB\)") as info:
        plan_run(rnn, 64, generated=True, stats_only=True, memory_budget=2.3 * 2**30)
    assert (info.value.checkpoint, info.value.fits) == (2000, 1076) and info.value.need > info.value.limit
    plan = plan_run(rnn, 64, checkpoint=1076, generated=True, memory_budget=2.3 * 2**30)
    assert plan.recompute and plan.segment == 1076 and plan.estimate <= 2.3 * 2**30


def test_estimate_tracks_a_real_run():
    """The estimate against the peak memory of a checkpointed run (tracemalloc of NumPy)."""
    import tracemalloc

    rnn = gb.Recurrent(cell="lstm", steps=4000, hidden=32, input_dim=8)
    params = gb.init_params(rnn, 0)
    xs = gb.GeneratedSequence(rnn, 16, 0)
    backend = "c" if "c" in gb.recurrent.backends.backends() else "numpy"
    gb.backprop(rnn, params, xs, backend=backend, stats_only=True)  # imports and first allocations
    from gradbench import buffers

    buffers.release()  # the arrays the engine keeps for the next call of these shapes
    tracemalloc.start()
    res = gb.backprop(rnn, params, xs, backend=backend, stats_only=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    est = res.extras["memory_estimate"]
    assert res.extras["segments"] > 1 and 0.5 * est < peak < 1.5 * est, (peak, est)


# the CLI, then the process's own peak resident memory on its last line of stderr (gradbench/_procstat.py)
_MILLION = """
import sys
from gradbench._procstat import own_peak_bytes
from gradbench.cli import main
code = main(sys.argv[1:])
print(own_peak_bytes(), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow
def test_a_million_lstm_steps_run_under_one_gib():
    """The whole run (minutes): peak resident memory of the process < 1 GiB."""
    proc = subprocess.run([sys.executable, "-c", _MILLION, "run", "--cell", "lstm", "--steps", "1000000", "--hidden",
                           "64", "--batch", "64"], capture_output=True, text=True, timeout=3600,
                          env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stderr.split()[-1])
    assert peak < 2**30, f"peak RSS {peak / 2**30:.2f} GiB"
    assert "1000000 steps" in proc.stdout and "VANISHING" in proc.stdout


@pytest.mark.parametrize("kind", [np.float32, np.float16, float, int])
def test_memory_budget_takes_numpy_floating_scalars(kind):
    # as gb.backprop of a stack: np.float32(1e9) was "not a positive number of bytes"
    rnn = gb.Recurrent(cell="gru", steps=6, hidden=4, input_dim=2)
    params, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=2, seed=1)
    ref = gb.backprop(rnn, params, xs, backend="numpy")
    res = gb.backprop(rnn, params, xs, backend="numpy", memory_budget=kind(60000))
    assert res.loss == ref.loss
    with pytest.raises(MemoryError, match=r"memory_budget"):
        gb.backprop(rnn, params, xs, backend="numpy", memory_budget=kind(2))
    with pytest.raises(ValueError, match="memory_budget must be a positive number of bytes"):
        gb.backprop(rnn, params, xs, backend="numpy", memory_budget=np.bool_(True))


@pytest.mark.parametrize("bad", ["x", 3, True])
def test_a_progress_that_is_not_callable_is_refused_before_any_work(monkeypatch, bad):
    # it failed with "'str' object is not callable" after the first segment
    from gradbench.recurrent import engine

    rnn = gb.Recurrent(cell="lstm", steps=6, hidden=4, input_dim=2)
    params, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=2, seed=1)
    planned = []
    monkeypatch.setattr(engine, "plan_run", lambda *a, **k: planned.append(1))
    with pytest.raises(TypeError, match=r"progress must be a callable progress\(done, total\) or None"):
        gb.backprop(rnn, params, xs, backend="numpy", progress=bad)
    assert planned == []
