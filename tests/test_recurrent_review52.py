"""Review 52 (an mpmath stress test of the recurrent cells): what the diagnosis says of states
that underflow, of step terms that read 0, of values beyond float64, and the documented limits
of one forward exponent per step and of the Gram-matrix step norms.

Each check compares with an independent computation: the plain chain rule in mpmath
(tests/naive_mp.py), a plain NumPy forward, or the same sample run alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradbench as gb
from tests.naive_mp import gru_chain, recurrent_grads, rnn_chain
from tests.test_recurrent_far_rows import _log10_norm

BACKENDS = gb.backends()


def _words(res) -> str:
    return " ".join(gb.diagnose(res).explanation.split())


def _plain_gelu_states(rnn, P, X):
    """h_t of a vanilla GELU cell in plain float64 (scipy-free erfc form), (T, B, N)."""
    from math import erfc
    h, out = np.zeros((X.shape[1], rnn.hidden)), []
    for t in range(rnn.steps):
        z = X[t] @ P.W_ih.T + P.b_ih + h @ P.W_hh.T + P.b_hh
        h = z * 0.5 * np.vectorize(erfc)(-z / math.sqrt(2.0))
        out.append(h)
    return np.array(out)


def test_a_gelu_cell_state_that_underflows_is_named():
    """GELU(z) underflows below z ~ -38.6; the cell carries no forward exponent: the state reads 0
    at steps 2 and 5 and so do the loss and every gradient (mpmath: loss 10^-13768.5). The words
    blamed "an all-zero loss gradient, or every path from the loss cut"."""
    rnn = gb.Recurrent(cell="rnn", steps=6, hidden=2, activation="gelu", recurrent_init="normal", sigma_w=100.0,
                       sigma_b=0.3)
    P, X = gb.init_params(rnn, 11), gb.sequence_input(rnn, 1, 1)
    loss, _, _ = rnn_chain("gelu", 0.0, P.W_ih, P.W_hh, P.b_ih.astype(np.float64) + P.b_hh, X)
    assert -14000 < loss < -13000  # the exact loss is tiny, not 0
    plain = _plain_gelu_states(rnn, P, X)
    assert [t for t in range(rnn.steps) if not plain[t].any()] == [2, 5]
    res = gb.backprop(rnn, P, X)
    words = _words(res)
    assert ("the forward state h_t is exactly 0 in every unit at steps 2 and 5: gelu(z) underflowed float64"
            in words), words
    assert "an all-zero loss gradient" not in words


def test_a_gru_state_that_underflows_is_named():
    """A GRU with update-gate bias 800: 1 - z_t = sigmoid(-800) underflows, the state stays 0;
    mpmath's loss is 10^-694.7."""
    rnn = gb.Recurrent(cell="gru", steps=5, hidden=2, recurrent_init="normal", sigma_w=1.0, sigma_b=0.3,
                       update_bias=800.0)
    P, X = gb.init_params(rnn, 0), gb.sequence_input(rnn, 1, 1)
    loss, _, _ = gru_chain(P.W_ih, P.W_hh, P.b_ih, P.b_hh, X)
    assert -700 < loss < -690
    words = _words(gb.backprop(rnn, P, X))
    assert ("exactly 0 in every unit at every step: the update gate's 1 - z_t or the candidate state underflowed"
            in words)
    assert "a GRU's forward state carries no exponent" in words


def _plain_sigmoid_count(rnn, P, X):
    h, out = np.zeros((X.shape[1], rnn.hidden)), []
    with np.errstate(over="ignore", under="ignore"):
        for t in range(rnn.steps):
            h = 1 / (1 + np.exp(-(X[t] @ P.W_ih.T + P.b_ih + h @ P.W_hh.T + P.b_hh)))
            out.append(int(np.count_nonzero(h < np.finfo(np.float64).tiny)))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_cell_entries_that_underflow_are_flagged(backend):
    """Some units of a sigmoid cell's state underflow beside others: the numbers that read them
    are thousands of decades off (||dL/dh_1|| 10^-5522.57, mpmath 10^-1995.82), and the words say so."""
    rnn = gb.Recurrent(cell="rnn", activation="sigmoid", steps=3, hidden=2, recurrent_init="normal", sigma_w=1e4)
    P, X = gb.init_params(rnn, 2), gb.sequence_input(rnn, 1, 1)
    _, gh, _ = rnn_chain("sigmoid", 0.0, P.W_ih, P.W_hh, P.b_ih.astype(np.float64) + P.b_hh, X)
    res = gb.backprop(rnn, P, X, backend=backend)
    assert abs(float(res.signal_norm.log10()[1]) - gh[1]) > 1000  # what the words say is true
    assert round(float(res.signal_norm.log10()[1]), 2) == -5522.57 and round(gh[1], 2) == -1995.82  # README
    np.testing.assert_array_equal(res.extras["flushed_states"], _plain_sigmoid_count(rnn, P, X))
    assert "not exact here: 1 entry of the state h_t at step 2 underflowed float64" in _words(res)
    calm = gb.Recurrent(cell="rnn", activation="sigmoid", steps=3, hidden=2, recurrent_init="normal", sigma_w=3.0)
    res = gb.backprop(calm, gb.init_params(calm, 2), X, backend=backend)
    assert not res.extras["flushed_states"].any() and "not exact here" not in _words(res)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_terms_beside_a_far_larger_sample_are_kept(backend):
    """One sample's state 10^200 above the other's, whose own gates saturated (its dz is 0): every
    step term read 0 (the Gram matrices and the reference's plain sum of squares squared the small
    sample's share, 10^-213, to 0) while dL/dW_hh, their sum, was 10^-12.24, and the words blamed
    underflowed gates. The terms are the small sample's alone (mpmath: 10^-13.15 .. 10^-12.67)."""
    rnn = gb.Recurrent(cell="gru", steps=4, hidden=2, recurrent_init="normal", sigma_w=1.0, update_bias=30.0)
    P, X = gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1)
    h0 = np.array([[1e200, 1e200], [1.0, 0.5]])
    res = gb.backprop(rnn, P, X, h0=h0, backend=backend)
    alone = gb.backprop(rnn, P, X[:, 1:].copy(), h0=h0[1:], backend=backend)
    np.testing.assert_allclose(res.grad_norm.log10(), alone.grad_norm.log10(), rtol=0, atol=1e-9)
    assert np.all(np.isfinite(res.grad_norm.log10()))
    assert "reads 0 while their sum" not in _words(res)


def _cancelling_pair():
    """One input sequence twice, mse targets y + 1 and y - 1: the two samples' step terms (~10^0
    each) cancel to ~10^-16."""
    rnn = gb.Recurrent(cell="rnn", steps=6, hidden=8, recurrent_init="normal", sigma_w=1.0, sigma_b=0.2, loss="mse")
    P, X = gb.init_params(rnn, 0), gb.sequence_input(rnn, 1, 1)
    X = np.concatenate([X, X], axis=1)
    h = gb.backprop(rnn, P, X, np.zeros((2, 1)), backend="numpy").output.to_float()
    y = float((h[0] @ P.W_out.T + P.b_out)[0])
    return rnn, P, X, np.array([[y + 1.0], [y - 1.0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_terms_that_cancel_across_the_batch_are_not_rounding_noise(backend):
    """The Gram sum of such terms is a difference of O(1) numbers: numba and C read sqrt of its
    rounding, 10^-8.6 .. 10^-7.4 or 0, where the product dz^T h (the reference's) gives 10^-16.3
    .. 10^-15.5 and mpmath 10^-16.4 .. 10^-15.5. A Gram sum that keeps less than 2^-26 of its
    terms' magnitudes is now taken again from the product."""
    rnn, P, X, tg = _cancelling_pair()
    ref = gb.backprop(rnn, P, X, tg, backend="numpy").grad_norm.log10()[1:]
    got = gb.backprop(rnn, P, X, tg, backend=backend).grad_norm.log10()[1:]
    alone = gb.backprop(rnn, P, X[:, :1].copy(), tg[:1], backend=backend).grad_norm.log10()[1:]
    assert np.all(alone > -1) and np.all(ref < -15)  # the samples' own terms ~10^0 cancel to ~10^-16
    assert np.all(np.isfinite(got)) and np.all(np.abs(got - ref) < 1.0), (got, ref)


def test_values_beyond_float64_are_said():
    """An identity cell on inputs of 1e200: loss 10^399.4 (mpmath) and dL/dW_hh beyond float64;
    the words named only float32's ||dL/dh_t||."""
    rnn = gb.Recurrent(cell="rnn", activation="identity", steps=3, hidden=2, recurrent_init="identity", sigma_w=1.0)
    P, X = gb.init_params(rnn, 0), gb.sequence_input(rnn, 1, 1) * 1e200
    loss, _, _ = rnn_chain("identity", 0.0, P.W_ih, P.W_hh, P.b_ih.astype(np.float64) + P.b_hh, X)
    words = _words(gb.backprop(rnn, P, X))
    assert loss > 308.26
    assert f"plain float32 and float64 would overflow the loss (10^{loss:.1f}: inf)" in words, words
    assert "plain float32 and float64 would overflow dL/dW_hh" in words


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_forward_exponent_per_step_loses_a_sample_far_below(backend):
    """README: the identity cell's forward exponent is one per step for the whole batch: inputs of
    1e200 and 1e-200 in one batch, the second sample's h0_grad reads 0; alone, 10^-201.03."""
    rnn = gb.Recurrent(cell="rnn", activation="identity", steps=3, hidden=2, recurrent_init="identity", sigma_w=1.0)
    P = gb.init_params(rnn, 0)
    X = gb.sequence_input(rnn, 2, 1)
    X[:, 0] *= 1e200
    X[:, 1] *= 1e-200
    _, gh, _ = rnn_chain("identity", 0.0, P.W_ih, P.W_hh, P.b_ih.astype(np.float64) + P.b_hh, X[:, 1:])
    res = gb.backprop(rnn, P, X, backend=backend)
    alone = gb.backprop(rnn, P, X[:, 1:].copy(), backend=backend)
    g = res.h0_grad.log10()
    assert np.all(g[1] == -np.inf) and np.all(np.isfinite(g[0]))
    m, e = alone.h0_grad.mantissa[0], int(alone.h0_grad.exponent[0])
    assert abs(np.log10(np.linalg.norm(m)) + e * np.log10(2.0) - (-201.03)) < 0.01
    assert gh[0] < -200  # mpmath: step 0's signal for that sample alone (dL/dh_0 = dL/dh_-1 here)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, bias, gain", [("float64", -400.0, 1e-200), ("float32", -60.0, 1e-30)])
def test_the_state_signal_under_tiny_recurrent_weights(backend, dtype, bias, gain):
    """A sigmoid cell with biases of -400 (float32 -60) and W_hh of 1e-200 (1e-30): dz_t =
    dL/dh_t sigmoid'(z_t) is 10^-174 (10^-26) of the normalised state, and dz W_hh flushed to 0,
    so dL/dh_1 read 0 where mpmath gives 10^-547.01 (until 2026-12-08: the vanilla cell's dz rows
    far from 1 now meet W_hh in [0.5, 1)). Every step's ||dL/dh_t||, the step terms and the
    totals against the plain chain rule in mpmath; two samples, four steps."""
    rnn = gb.Recurrent(cell="rnn", steps=4, hidden=2, activation="sigmoid", recurrent_init="normal",
                       sigma_w=gain, dtype=dtype)
    P, X = gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1)
    P.b_ih[:] = bias
    b = P.b_ih.astype(np.float64) + P.b_hh
    _, gh, gw = rnn_chain("sigmoid", 0.0, P.W_ih, P.W_hh, b, X)
    ref = recurrent_grads("rnn", "sigmoid", 0.0, P.W_ih, P.W_hh, P.b_ih, P.b_hh, X)
    res = gb.backprop(rnn, P, X, backend=backend)
    tol = 1e-9 if dtype == "float64" else 1e-4
    assert gh[1] < (-547 if dtype == "float64" else -80)  # beyond the dtype: plain arithmetic reads 0
    np.testing.assert_allclose(res.signal_norm.log10(), gh, rtol=0, atol=tol)
    np.testing.assert_allclose(res.grad_norm.log10(), gw, rtol=0, atol=tol)
    for name in ("W_hh", "W_ih", "b_ih", "b_hh"):
        assert abs(_log10_norm(getattr(res.grads, name)) - ref[name]) < tol, name



@pytest.mark.parametrize("backend", BACKENDS)
def test_the_readme_case_reads_mpmaths_value(backend):
    """README: that sigmoid cell (three steps, one sample) reads ||dL/dh_1|| = 10^-547.01, as
    mpmath, where it read 0."""
    rnn = gb.Recurrent(cell="rnn", steps=3, hidden=2, activation="sigmoid", recurrent_init="normal", sigma_w=1e-200)
    P, X = gb.init_params(rnn, 0), gb.sequence_input(rnn, 1, 1)
    P.b_ih[:] = -400.0
    _, gh, _ = rnn_chain("sigmoid", 0.0, P.W_ih, P.W_hh, P.b_ih.astype(np.float64) + P.b_hh, X)
    got = gb.backprop(rnn, P, X, backend=backend).signal_norm.log10()[1]
    assert round(gh[1], 2) == -547.01 and abs(got - gh[1]) < 1e-9

def test_learning_that_reaches_one_step_is_said_so():
    """The sigmoid cell above: mpmath's step terms of dL/dW_hh lie ~374 decades apart, so only the
    last step is within 8 decades of the largest. The words said "learning reaches over 1 step,
    from step 3, the largest contribution ..., down to step 3"."""
    rnn = gb.Recurrent(cell="rnn", steps=4, hidden=2, activation="sigmoid", recurrent_init="normal", sigma_w=1e-200)
    P, X = gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1)
    P.b_ih[:] = -400.0
    _, _, gw = rnn_chain("sigmoid", 0.0, P.W_ih, P.W_hh, P.b_ih.astype(np.float64) + P.b_hh, X)
    top = int(np.nanargmax(gw))
    assert top == 3 and gw[2] < gw[3] - 8  # mpmath: the step before lies more than 8 decades below
    words = _words(gb.backprop(rnn, P, X))
    assert (f"learning reaches only step 3, the largest contribution to dL/dW_hh (10^{gw[3]:.4g}): the steps next "
            "to it are not within 8 decades of it") in words, words
    assert "over 1 step" not in words
