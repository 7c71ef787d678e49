"""Arrays at an address that is not a multiple of their dtype's alignment (a view one byte into a
buffer: C-contiguous, ``flags.aligned`` False) are refused at every public entry, on every backend,
before any kernel runs: the C kernels load whole floats, and a misaligned load is undefined
behaviour (an ASan/UBSan fuzz of the API found W, b, x, the recurrent arrays and
``GeneratedParams.weights(out=)`` reaching C so). The same values in an aligned array are accepted
and give the same result. The backend contracts' own check (``abi.check``, the last line before C)
is tested with the other bad arrays in tests/test_abi.py and tests/test_recurrent_abi.py."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import gradbench as gb
from gradbench.recurrent import backends as rbackends
from tests.helpers import misaligned

BACKENDS = gb.backends()
RECURRENT_BACKENDS = rbackends.backends()
DTYPES = ["float64", "float32"]


def _refused(label: str):
    return pytest.raises(ValueError, match="^" + re.escape(f"{label} is not aligned to its dtype"))


def _same(got, want) -> None:
    """Two results of one problem on one backend: bitwise the same loss and gradient norms."""
    assert got.loss == want.loss
    np.testing.assert_array_equal(got.grad_norm.mantissa, want.grad_norm.mantissa)
    np.testing.assert_array_equal(got.grad_norm.exponent, want.grad_norm.exponent)


# ------------------------------------------------------------------ stacks: gb.backprop
STACK_CASES = {  # the array, and a stack that reads it
    "W": dict(activation="tanh"),
    "b": dict(activation="tanh", sigma_b=0.1),
    "gamma": dict(batch_norm=True),
    "beta": dict(batch_norm=True),
    "slope": dict(activation="prelu"),
    "W_in": dict(input_dim=3),
    "b_in": dict(input_dim=3),
    "W_out": dict(loss="mse", output_dim=2),
    "b_out": dict(loss="mse", output_dim=2),
    "x": dict(input_dim=3),
    "targets": dict(loss="mse", output_dim=2),
    "labels": dict(loss="softmax_ce", output_dim=3),  # integer targets
}


def _stack_problem(name: str, dtype: str):
    stack = gb.Stack(depth=3, width=4, dtype=dtype, **STACK_CASES[name])
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 5, 1)
    t = None
    if stack.loss == "mse":
        t = np.random.default_rng(2).standard_normal((5, 2)).astype(dtype)
    elif stack.loss == "softmax_ce":
        t = np.random.default_rng(2).integers(0, 3, 5)
    return stack, params, x, t


def _with(name: str, params, x, t, make):
    """``params, x, t`` with the array ``name`` replaced by ``make(array)``; and its label."""
    if name == "x":
        return params, make(x), t, "x"
    if name in ("targets", "labels"):
        return params, x, make(t), "targets"
    return dataclasses.replace(params, **{name: make(getattr(params, name))}), x, t, f"params.{name}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(STACK_CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backprop_refuses_a_misaligned_array(backend, name, dtype):
    stack, params, x, t = _stack_problem(name, dtype)
    want = gb.backprop(stack, params, x, t, backend=backend)
    bad_params, bad_x, bad_t, label = _with(name, params, x, t, misaligned)
    with _refused(label):
        gb.backprop(stack, bad_params, bad_x, bad_t, backend=backend)
    # the fix the message names: an aligned copy of the same values
    fixed = _with(name, bad_params, bad_x, bad_t, lambda a: np.require(a, requirements="AC"))
    _same(gb.backprop(stack, *fixed[:3], backend=backend), want)


def test_training_refuses_misaligned_data_and_params():
    stack = gb.Stack(depth=2, width=4, input_dim=3, loss="softmax_ce", output_dim=3)
    X = np.random.default_rng(0).standard_normal((8, 3))
    y = np.random.default_rng(1).integers(0, 3, 8)
    with _refused("X"):
        gb.train(stack, misaligned(X), y, epochs=1, batch_size=4, backend="numpy")
    with _refused("y"):
        gb.train(stack, X, misaligned(y), epochs=1, batch_size=4, backend="numpy")
    params = gb.init_params(stack, 0)
    with _refused("params.W"):
        gb.train(stack, X, y, params=dataclasses.replace(params, W=misaligned(params.W)), epochs=1, batch_size=4,
                 backend="numpy")


# ------------------------------------------------------------------ recurrent nets
RECURRENT_NAMES = ["W_ih", "W_hh", "b_ih", "b_hh", "W_out", "b_out", "xs", "h0", "c0", "targets"]


def _recurrent_problem(cell: str, dtype: str):
    rnn = gb.Recurrent(cell=cell, steps=3, hidden=4, input_dim=3, loss="mse", output_dim=2, sigma_b=0.1, dtype=dtype)
    rng = np.random.default_rng(3)
    arrays = dict(xs=np.ascontiguousarray(gb.sequence_input(rnn, 2, 1)), h0=rng.standard_normal((2, 4)).astype(dtype),
                  targets=rng.uniform(0, 1, (2, 2)).astype(dtype))
    if cell == "lstm":
        arrays["c0"] = rng.standard_normal((2, 4)).astype(dtype)
    return rnn, gb.init_params(rnn, 0), arrays


def _run_recurrent(rnn, params, arrays, backend):
    a = dict(arrays)
    return gb.backprop(rnn, params, a.pop("xs"), a.pop("targets"), backend=backend, **a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("backend", RECURRENT_BACKENDS)
def test_recurrent_backprop_refuses_a_misaligned_array(backend, cell, dtype):
    rnn, params, arrays = _recurrent_problem(cell, dtype)
    want = _run_recurrent(rnn, params, arrays, backend)
    for name in RECURRENT_NAMES:
        if name == "c0" and cell != "lstm":
            continue
        if name in arrays:
            bad_params, bad = params, dict(arrays, **{name: misaligned(arrays[name])})
            label = name
        else:
            bad_params, bad = dataclasses.replace(params, **{name: misaligned(getattr(params, name))}), arrays
            label = f"params.{name}"
        with _refused(label):
            _run_recurrent(rnn, bad_params, bad, backend)
        aligned = {k: np.require(v, requirements="AC") for k, v in bad.items()}
        fixed = type(params)(**{k: np.require(v, requirements="AC") for k, v in bad_params.items()})
        _same(_run_recurrent(rnn, fixed, aligned, backend), want)


# ------------------------------------------------------------------ generated weights
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c_normals", [True, False])
def test_generated_params_refuse_a_misaligned_out(monkeypatch, dtype, c_normals):
    """``out=`` of weights (the C Philox generator writes into it), biases and segment."""
    from gradbench import params as P

    monkeypatch.setattr(P, "C_NORMALS", c_normals)
    stack = gb.Stack(depth=3, width=4, sigma_b=0.1, dtype=dtype)
    gen = gb.GeneratedParams(stack, 7)
    W, b = gen.weights(0, 3), gen.biases(0, 3)
    bad_W, bad_b = misaligned(np.zeros_like(W)), misaligned(np.zeros_like(b))
    for call in (lambda: gen.weights(0, 3, out=bad_W), lambda: gen.biases(0, 3, out=bad_b),
                 lambda: gen.segment(0, 3, out=(bad_W, np.empty_like(b))),
                 lambda: gen.segment(0, 3, out=(np.empty_like(W), bad_b))):
        with _refused("out"):
            call()
    assert not bad_W.any() and not bad_b.any()  # nothing was written
    out_W, out_b = np.require(bad_W, requirements="AC"), np.require(bad_b, requirements="AC")
    assert gen.weights(0, 3, out=out_W) is out_W and gen.biases(0, 3, out=out_b) is out_b
    np.testing.assert_array_equal(out_W, W)
    np.testing.assert_array_equal(out_b, b)
