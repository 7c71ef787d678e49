"""A run that keeps every layer and returns its gradients holds its pre-activations Z in the
first L B N entries of its dW when B <= N (gradbench.plan.z_in_gradients): the backward reads
z_l before it writes dW_l, from the top down. Checked against the same run with Z in an array of
its own, bit for bit, on every backend."""

import numpy as np
import pytest

import gradbench as gb
from gradbench import engine, plan
from gradbench.backends import backends
from tests.test_checkpoint import _problem, assert_bitwise

BACKENDS = backends()

CASES = {  # (stack, batch): B = N, B < N, and every path of the backward that reads z
    "tanh B = N": (dict(depth=30, width=6, activation="tanh", init="he_normal", sigma_b=0.3), 6),
    "sigmoid saturated (the rescue)": (dict(depth=40, width=8, activation="sigmoid", init="normal", sigma_w=6.0), 8),
    "relu bn residual": (dict(depth=24, width=8, activation="relu", batch_norm=True, residual=3), 5),
    "prelu (slopes from z)": (dict(depth=20, width=8, activation="prelu", sigma_b=0.2, input_dim=3, loss="mse",
                                   output_dim=2), 8),
    "gelu biased, rescaled forward": (dict(depth=60, width=8, activation="gelu", init="he_normal", sigma_w=0.5,
                                           sigma_b=0.1), 4),
    "swish value clip f32": (dict(depth=30, width=7, activation="swish", dtype="float32", clip="value",
                                  clip_threshold=1e-3, residual=2), 7),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_z_in_the_gradients_gives_the_bits_of_z_apart(monkeypatch, backend, case):
    kw, batch = CASES[case]
    stack, params, x, t = _problem(kw, batch)
    seen = []
    forward = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda run: (seen.append(np.shares_memory(run.Z, run.grads["dW"])),
                                                         forward(run)))
    got = gb.backprop(stack, params, x, t, backend=backend)
    assert seen == [True]
    seen.clear()
    monkeypatch.setattr(engine, "_forward", lambda run: (seen.append(run.grads is None), forward(run)))
    monkeypatch.setattr(engine, "z_in_gradients", lambda *a, **k: False)  # Z apart, as the engine had it
    ref = gb.backprop(stack, params, x, t, backend=backend)
    assert seen == [True]
    assert_bitwise(got, ref)


@pytest.mark.parametrize("batch, kwargs, shared", [
    (8, {}, True), (9, {}, False), (8, dict(checkpoint=5), False), (8, dict(stats_only=True), False),
])
def test_where_z_lives_in_the_gradients(monkeypatch, batch, kwargs, shared):
    """B <= N, every layer kept and the gradients returned; a batch wider than the layers, a
    checkpointed run (one segment's Z, recomputed) and a stats_only run (no gradients returned)
    keep Z apart."""
    stack = gb.Stack(depth=12, width=8, activation="tanh")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, batch, 1)
    seen = []
    forward = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda run: (seen.append(
        run.grads is not None and np.shares_memory(run.Z, run.grads["dW"])), forward(run)))
    gb.backprop(stack, params, x, **kwargs)
    assert seen == [shared]
    checkpoint = kwargs.get("checkpoint")
    assert plan.z_in_gradients(batch, 8, checkpoint=checkpoint, stats_only=kwargs.get("stats_only", False)) == shared


def test_the_memory_estimate_counts_z_once(monkeypatch):
    """With Z in dW the estimate is lower by Z's L B N entries, and only then (the peak is the
    backward's, where dW is whole)."""
    stack = gb.Stack(depth=100, width=64, activation="tanh")
    cases = [(32, {}), (64, {}), (65, {}), (32, dict(checkpoint=10)), (32, dict(stats_only=True))]
    shared = [plan.memory_estimate(stack, b, **kw) for b, kw in cases]
    monkeypatch.setattr(plan, "z_in_gradients", lambda *a, **k: False)
    apart = [plan.memory_estimate(stack, b, **kw) for b, kw in cases]
    assert [a - s for a, s in zip(apart, shared)] == [8 * 100 * 32 * 64, 8 * 100 * 64 * 64, 0, 0, 0]
