"""Rows of a step's dz far from 1 (reference.far_rows, the stacks' rule) through time: brought to
[0.5, 1) by a power of two, their exponents into the rows', before they meet h_{t-1} and x_t in
the parameter-gradient products (all three backends).

Review 52 (an mpmath BPTT): dL/dW_hh read exactly 0 on every backend where each step's
dz_t^T h_{t-1} lay below float64's range, although dz_t and h_{t-1} were both normal floats and
the step norms (from scaled copies) were right. The state is normalised after every step, but
the gate or activation derivative then multiplies it: a GRU at update_bias = 400 has rows of dz
~ 2^-577 (1 - z and z' ~ 1e-174) against h_{t-1} ~ 1e-174, and the product underflowed (mpmath
||dW_hh|| = 10^-521.006). Likewise a sigmoid vanilla cell at b_ih = -400 (10^-520.53), an LSTM
with input-gate biases -400 (10^-522.85), a float32 GRU at update_bias = 60 (10^-78.03), and an
ELU cell with alpha = 1e-200 (numpy 10^-1801.9, numba and C 0, mpmath 10^-600.73). The GRU's
dz rows for W_hh differ from those for W_ih in the n block (times r): each set is normalised on
its own (a GRU with r and z closed and tiny inputs has dzx ~ 1 but dzh ~ r ~ 1e-174).
Checked against tests/naive_mp.recurrent_grads (the totals, plain in mpmath).
"""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench.recurrent import backends as rbackends
from tests.naive_mp import recurrent_grads

BACKENDS = rbackends.backends()  # numpy included: the reference had it too
TOL = {"float64": 1e-10, "float32": 1e-4}
NAMES = ("W_hh", "W_ih", "b_ih", "b_hh")


def _gru(update_bias, dtype="float64"):
    rnn = gb.Recurrent(cell="gru", steps=3, hidden=2, recurrent_init="normal", sigma_w=1.0, sigma_b=0.3,
                       update_bias=update_bias, dtype=dtype)
    return rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 1, 1)


def _sigmoid():
    rnn = gb.Recurrent(cell="rnn", steps=3, hidden=2, activation="sigmoid", recurrent_init="normal", sigma_w=1.0)
    params = gb.init_params(rnn, 0)
    params.b_ih[:] = -400.0
    return rnn, params, gb.sequence_input(rnn, 1, 1)


def _lstm():
    rnn = gb.Recurrent(cell="lstm", steps=3, hidden=2, recurrent_init="normal", sigma_w=1.0)
    params = gb.init_params(rnn, 0)
    params.b_ih[:2] = -400.0  # the input gate closed: c_t, h_t ~ 1e-174
    return rnn, params, gb.sequence_input(rnn, 1, 1)


def _elu():
    rnn = gb.Recurrent(cell="rnn", activation="elu", activation_param=1e-200, steps=60, hidden=2,
                       recurrent_init="orthogonal", sigma_w=1.0, sigma_b=0.2)
    return rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1)


def _gru_closed(dtype, bias, scale):
    """r and z closed (biases ``bias``), n's biases 0 and inputs times ``scale``: h ~ n ~ the
    input, dzx's n block ~ 1, dzh's ~ r (the W_hh rows far below the W_ih rows)."""
    rnn = gb.Recurrent(cell="gru", steps=3, hidden=2, recurrent_init="normal", sigma_w=1.0, dtype=dtype)
    params = gb.init_params(rnn, 0)
    params.b_ih[:4] = bias
    params.b_hh[:4] = 0.0
    params.b_ih[4:] = 0.0
    params.b_hh[4:] = 0.0
    x = (gb.sequence_input(rnn, 2, 1) * np.asarray(scale, dtype=dtype)).astype(dtype)
    return rnn, params, x


CASES = {
    "gru update_bias=400": lambda: _gru(400.0),
    "sigmoid b_ih=-400": _sigmoid,
    "lstm input gate -400": _lstm,
    "gru float32 update_bias=60": lambda: _gru(60.0, "float32"),
    "elu alpha=1e-200 T=60 B=2": _elu,
    "gru r,z closed, inputs 1e-200": lambda: _gru_closed("float64", -400.0, 1e-200),
    "gru float32 r,z closed, inputs 1e-20": lambda: _gru_closed("float32", -60.0, 1e-20),
}
_MP: dict = {}


def _case(name):
    rnn, params, x = CASES[name]()
    if name not in _MP:
        _MP[name] = recurrent_grads(rnn.cell, rnn.act, rnn.act_param if rnn.cell == "rnn" else 0.0, params.W_ih,
                                    params.W_hh, params.b_ih, params.b_hh, x)
    return rnn, params, x, _MP[name]


def _log10_norm(g) -> float:
    """log10 ||g|| of a LogScaled gradient (mantissa array, one exponent), no square lost."""
    m = np.asarray(g.mantissa, dtype=np.float64)
    top = float(np.max(np.abs(m)))
    if top == 0:
        return float("-inf")
    return float(np.log10(np.linalg.norm(m / top) * top) + int(g.exponent) * np.log10(2.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_parameter_gradients_below_the_range_are_exact(name, backend):
    rnn, params, x, want = _case(name)
    res = gb.backprop(rnn, params, x, backend=backend)
    for k in NAMES:
        got = _log10_norm(getattr(res.grads, k))
        assert np.isfinite(want[k]), (k, want[k])
        assert abs(got - want[k]) <= TOL[rnn.dtype], f"{name} {backend} ||dL/d{k}|| 10^{got} vs mpmath 10^{want[k]}"


def test_cases_lie_below_the_range():
    """Each case's true ||dL/dW_hh|| is far below what a plain product of the dtype holds, while
    the inputs to it are normal floats: what the test above checks is the rows' exponents."""
    for name in CASES:
        rnn, _, _, want = _case(name)
        assert want["W_hh"] < np.log10(np.finfo(rnn.dtype).smallest_subnormal), (name, want["W_hh"])


def _wide(cell, dtype):
    """The far cases at hidden 24, batch 13, 12 steps: the C team's rows split 6/7 and 4/4/5."""
    extra = dict(update_bias=400.0 if dtype == "float64" else 60.0) if cell == "gru" else {}
    if cell == "rnn":
        extra["activation"] = "sigmoid"
    rnn = gb.Recurrent(cell=cell, steps=12, input_dim=3, hidden=24, recurrent_init="normal", sigma_w=1.0,
                       sigma_b=0.3, dtype=dtype, **extra)
    params = gb.init_params(rnn, 0)
    if cell == "rnn":
        params.b_ih[:] = -400.0 if dtype == "float64" else -60.0
    elif cell == "lstm":
        params.b_ih[:24] = -400.0 if dtype == "float64" else -60.0
    return rnn, params, gb.sequence_input(rnn, 13, 1)


@pytest.mark.skipif("c" not in BACKENDS, reason="C extension not built")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_c_far_rows_keep_the_bits_on_any_thread_count(cell, dtype):
    """The rows far from 1 are normalised on thread 0 (gb_step_done): 1, 2 and 3 threads and a
    team gone solo mid-call give the same bits, and the parameter gradients are not 0."""
    from tests.test_recurrent_threads import _assert_same_bits, _opts, _run

    rnn, params, xs = _wide(cell, dtype)
    one = _run(rnn, params, xs, _opts(1))
    assert np.any(one["bwd.dW_hh"]) and np.any(one["bwd.dW_ih"])
    for opts, what in ((_opts(2), "2 threads"), (_opts(3), "3 threads"), (_opts(2, solo_after=5), "solo mid-call")):
        _assert_same_bits(_run(rnn, params, xs, opts), one, what)
    res = gb.backprop(rnn, params, xs, backend="c")
    ref = gb.backprop(rnn, params, xs, backend="numpy")
    for k in NAMES:
        got, want = _log10_norm(getattr(res.grads, k)), _log10_norm(getattr(ref.grads, k))
        assert np.isfinite(want) and abs(got - want) <= TOL[dtype] * 10, (k, got, want)
