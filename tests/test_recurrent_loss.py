"""The recurrent nets' loss where float64 cannot hold it: the sum_squares probe 0.5 ||h_{T-1}||^2
and the heads (mse, bce, softmax_ce; last and every step), on every backend, against mpmath.

The probe once summed plain float64 squares: a GELU cell whose state reached 10^160 read
``loss_exact`` = inf (its squares overflow), a state of 10^-200 read 0, and a head's loss was the
float's ``LogScaled.from_float`` (mse's squares of differences beyond 1e154: inf; a confident
bce head: 0). ``loss`` stays the float (inf or 0 there); ``loss_exact`` is exact. The gradients
never depended on it (dL/dh_{T-1} = h_{T-1} for the probe, never squared): the signal norms
equal mpmath's plain chain too.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

import gradbench as gb
from gradbench.recurrent import backends as rbackends
from gradbench.recurrent.engine import head_loss
from tests.naive_mp import phi as mp_phi
from tests.naive_mp import rnn_chain

BACKENDS = rbackends.backends()  # numpy included: the loss is the engine's, the state the backend's
F64_MAX = math.log10(np.finfo(np.float64).max)
F64_TINY = math.log10(np.finfo(np.float64).tiny)


def _mp(a) -> list:
    return [mp.mpf(float(v)) for v in np.ravel(a)]


def _half_sumsq(h):
    """0.5 sum h^2 in mpmath (no exponent range), h an ndarray of floats."""
    return mp.fsum(v * v for v in _mp(h)) / 2


def _rel(got: gb.LogScaled, want) -> float:
    """|got - want| / want, ``got`` a scalar LogScaled, ``want`` an mpmath number."""
    return float(abs(mp.ldexp(mp.mpf(float(got.mantissa)), int(got.exponent)) - want) / want)


def _states_mp(rnn, p, xs, h0=None):
    """The vanilla cell's states h_0 .. h_{T-1} in mpmath (h_{-1} = h0 or 0): rows (B, N) per step."""
    T, B, N = xs.shape[0], xs.shape[1], rnn.hidden
    Wi = [_mp(row) for row in p.W_ih]
    Wh = [_mp(row) for row in p.W_hh]
    b = [mp.mpf(float(u)) + mp.mpf(float(v)) for u, v in zip(p.b_ih, p.b_hh)]
    h = [[mp.mpf(0)] * N for _ in range(B)] if h0 is None else [_mp(row) for row in h0]
    out = []
    for t in range(T):
        x = [_mp(row) for row in xs[t]]
        h = [[mp_phi(rnn.act, mp.fsum([b[i]] + [x[r][k] * Wi[i][k] for k in range(len(x[r]))]
                                      + [h[r][k] * Wh[i][k] for k in range(N)]), rnn.act_param)
              for i in range(N)] for r in range(B)]
        out.append(h)
    return out


def _head_loss_mp(kind, hs, W_out, b_out, targets, count):
    """Sum over the rows of the head's loss terms on states ``hs`` (lists of (B, N) rows), divided by
    ``count`` (and O for mse and bce), in mpmath: the share of every row in ``hs``."""
    W, b = [_mp(row) for row in W_out], _mp(b_out)
    O = len(b)
    total = []
    for h, t in zip(hs, targets):
        for r, row in enumerate(h):
            y = [mp.fsum([b[o]] + [row[k] * W[o][k] for k in range(len(row))]) for o in range(O)]
            if kind == "mse":
                total += [(y[o] - mp.mpf(float(t[r][o]))) ** 2 for o in range(O)]
            elif kind == "bce":  # softplus(y) - t y = (1 - t) softplus(y) + t softplus(-y)
                total += [(1 - mp.mpf(float(t[r][o]))) * mp.log1p(mp.exp(y[o]))
                          + mp.mpf(float(t[r][o])) * mp.log1p(mp.exp(-y[o])) for o in range(O)]
            else:  # logsumexp(y) - y_t = log1p(sum_{j != t} exp(y_j - y_t))
                c = int(t[r])
                total.append(mp.log1p(mp.fsum(mp.exp(y[j] - y[c]) for j in range(O) if j != c)))
    return mp.fsum(total) / (count * (1 if kind == "softmax_ce" else O))


def _gelu_net(**fields):
    """A GELU cell at gain 10: its state grows ~1.28 decades per step, 10^160 at step 249."""
    rnn = gb.Recurrent(cell="rnn", steps=250, hidden=3, input_dim=2, activation="gelu", sigma_w=10.0, **fields)
    return rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=2, seed=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_whose_squares_overflow_equals_mpmath(backend):
    """The bug: the state reaches 10^160, its squares overflow, and loss_exact read inf. Now the
    loss equals mpmath's plain chain (10^320.3) and 0.5 sum h^2 of the returned state; every
    signal norm and dW_hh term equals mpmath's too, the top one ||dL/dh_{T-1}|| = ||h_{T-1}||."""
    rnn, p, xs = _gelu_net()
    lo, gh, gW = rnn_chain("gelu", rnn.act_param, p.W_ih, p.W_hh, p.b_ih.astype(np.float64) + p.b_hh, xs)
    assert lo > F64_MAX  # beyond float64
    res = gb.backprop(rnn, p, xs, backend=backend)
    assert res.loss == math.inf and res.first_nonfinite_forward is None and res.first_nonfinite_backward is None
    got = float(res.loss_exact.log10())
    assert abs(got - lo) < 1e-12, (got, lo)
    h = res.output.to_float()
    assert _rel(res.loss_exact, _half_sumsq(h)) < 1e-15
    s = res.signal_norm.log10()
    assert _rel(res.signal_norm[-1], mp.sqrt(2 * _half_sumsq(h))) < 1e-15  # dL/dh_{T-1} = h_{T-1}
    np.testing.assert_allclose(s, gh, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.grad_norm.log10()[1:], gW[1:], rtol=0, atol=1e-12)
    d = gb.diagnose(res)
    assert abs(d.loss_log10 - lo) < 1e-12 and d.loss == math.inf
    assert f"loss 10^{lo:.2f};" in str(d) and "loss inf" not in str(d)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell, x_scale, h0_scale", [
    ("rnn", 1e-200, None), ("lstm", 1e-200, None), ("gru", 1.0, 1e200), ("gru", 1e-200, None)],
    ids=["rnn-tiny", "lstm-tiny", "gru-huge-h0", "gru-tiny"])
def test_probe_of_every_cell_beyond_float64_equals_mpmath(backend, cell, x_scale, h0_scale):
    """Each cell's state beyond the square's range: a tanh cell, an LSTM and a GRU driven by inputs
    of 1e-200 (zero biases: states ~1e-200, loss ~1e-400, once 0), a GRU from h_{-1} = 1e200 (its
    update gate keeps part of it: loss ~1e400, once inf). The loss against 0.5 sum h^2 of the
    returned state in mpmath; the top signal is h_{T-1} itself."""
    rnn = gb.Recurrent(cell=cell, steps=20, hidden=4, input_dim=3)
    p = gb.init_params(rnn, 0)
    xs = gb.sequence_input(rnn, batch=3, seed=1) * x_scale
    h0 = None if h0_scale is None else np.random.default_rng(5).standard_normal((3, 4)) * h0_scale
    res = gb.backprop(rnn, p, xs, backend=backend, h0=h0)
    h = res.output.to_float()
    want = _half_sumsq(h)
    assert not F64_TINY < float(mp.log10(want)) < F64_MAX  # the float cannot hold it
    assert res.loss == (0.0 if want < 1 else math.inf)
    assert _rel(res.loss_exact, want) < 1e-15, (res.loss_exact, want)
    # ||dL/dh_{T-1}|| = ||h_{T-1}|| = sqrt(2 loss)
    assert _rel(res.signal_norm[-1], mp.sqrt(2 * want)) < 1e-15


def test_probe_inside_float64_keeps_the_plain_sum_bits():
    """Where the plain sum of squares is safe the loss is that sum, bit for bit (as before)."""
    rnn = gb.Recurrent(cell="lstm", steps=30, hidden=5, input_dim=2)
    p, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=3, seed=1)
    for backend in BACKENDS:
        res = gb.backprop(rnn, p, xs, backend=backend)
        h = res.output.to_float()
        assert res.loss == 0.5 * float(np.sum(np.square(h))), backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_on", ["last", "every"])
def test_mse_head_whose_squares_overflow_equals_mpmath(backend, loss_on):
    """An mse head on a state of 10^160: differences of 10^160, squares beyond float64. The loss
    (the last step's, or the mean over every step's, whose shares are summed at their exponents)
    against mpmath's states and head; the top signal against mpmath's dL/dh_{T-1}."""
    rnn, p, xs = _gelu_net(loss="mse", loss_on=loss_on, output_dim=2)
    T, B = rnn.steps, xs.shape[1]
    lead = (T, B) if loss_on == "every" else (B,)
    t = np.random.default_rng(2).uniform(0, 1, lead + (2,))
    hs = _states_mp(rnn, p, xs)
    if loss_on == "every":
        want = _head_loss_mp("mse", hs, p.W_out, p.b_out, t, T * B)
    else:
        want = _head_loss_mp("mse", [hs[-1]], p.W_out, p.b_out, [t], B)
    assert mp.log10(want) > F64_MAX
    res = gb.backprop(rnn, p, xs, t, backend=backend)
    assert res.loss == math.inf and res.first_nonfinite_backward is None
    assert _rel(res.loss_exact, want) < 1e-11, (res.loss_exact, want)
    # dL/dh_{T-1} = 2 (y - t) W_out / (count O) (+ nothing from above): finite, as mpmath's
    count = (T * B if loss_on == "every" else B) * 2
    W, b = [_mp(row) for row in p.W_out], _mp(p.b_out)
    tl = t[-1] if loss_on == "every" else t
    g = []
    for r, row in enumerate(hs[-1]):
        dy = [2 * (mp.fsum([b[o]] + [row[k] * W[o][k] for k in range(3)]) - mp.mpf(float(tl[r][o]))) / count
              for o in range(2)]
        g += [mp.fsum(dy[o] * W[o][k] for o in range(2)) for k in range(3)]
    assert _rel(res.signal_norm[-1], mp.sqrt(mp.fsum(v * v for v in g))) < 1e-11


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_on", ["last", "every"])
def test_confident_bce_head_below_float64_equals_mpmath(backend, loss_on):
    """A bce head right by margins of thousands (W_out scaled by 1e6, targets the sign of y): its
    loss, exp(-margin), lies far below float64 (the float reads 0, and loss_exact did)."""
    rnn = gb.Recurrent(cell="rnn", activation="gelu", steps=6, hidden=3, input_dim=2, loss="bce",
                       loss_on=loss_on, output_dim=2)
    p, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=2, seed=1)
    p.W_out[...] *= 1e6
    hs = _states_mp(rnn, p, xs)
    W = [_mp(row) for row in p.W_out]
    y = np.array([[[float(mp.fsum([mp.mpf(float(p.b_out[o]))] + [row[k] * W[o][k] for k in range(3)]))
                    for o in range(2)] for row in h] for h in hs])
    t = (y > 0).astype(np.float64)
    assert np.min(np.abs(y)) > 800  # every term below float64
    T, B = rnn.steps, 2
    if loss_on == "last":
        t = t[-1]
        want = _head_loss_mp("bce", [hs[-1]], p.W_out, p.b_out, [t], B)
    else:
        want = _head_loss_mp("bce", hs, p.W_out, p.b_out, t, T * B)
    assert mp.log10(want) < F64_TINY
    res = gb.backprop(rnn, p, xs, t, backend=backend)
    assert res.loss == 0.0
    assert _rel(res.loss_exact, want) < 1e-8, (res.loss_exact, want)  # y's rounding (~1e-10) in exp(-y)


@pytest.mark.parametrize("kind, scale", [("mse", 1e160), ("mse", 1e-170), ("bce", 1e307), ("bce", 3e3),
                                         ("softmax_ce", 1e307), ("softmax_ce", 3e3)])
def test_head_share_beyond_float64_equals_mpmath(kind, scale):
    """The recurrent head's share of the loss (``engine.head_loss``) where its float sum over- or
    underflows: mse's squares of differences of 1e160 and 1e-170; bce's and softmax_ce's terms of
    ~1e307 (wrong by logits of 1e307), whose sum overflows; their terms exp(-3000) (right by
    logits of 3000). dL/dh is float64's as before (not scaled: it joins its step's signal)."""
    rng = np.random.default_rng(3)
    R, N, O = 64, 3, 2
    h = rng.uniform(0.5, 1.0, (R, N)) * scale
    W_out = np.abs(rng.standard_normal((O, N))) * 0.5
    W_out[1] = -W_out[1]  # y_0 > 0 > y_1
    b_out = np.zeros(O)
    y = h @ W_out.T + b_out
    if kind == "mse":
        t = rng.uniform(0, 1, (R, O)) * scale * 1e-3
    elif kind == "bce":  # t = 1 where y < 0: wrong at 1e307; right at 3000
        t = (y < 0 if scale > 1e300 else y > 0).astype(np.float64)
    else:
        t = np.full(R, 1 if scale > 1e300 else 0)
    rnn = gb.Recurrent(cell="rnn", loss=kind, output_dim=O, hidden=N, input_dim=1, steps=1)
    loss, loss_exact, dh, dW, db = head_loss(rnn, h, W_out, b_out, t, R)
    want = _head_loss_mp(kind, [[_mp(row) for row in h]], W_out, b_out, [t], R)
    assert np.all(np.isfinite(y))
    if want > 1:  # the plain sum of the terms overflows (bce's and softmax_ce's are at least |y|)
        with np.errstate(over="ignore"):
            assert np.sum(np.square(y - t) if kind == "mse" else np.abs(y)) == math.inf
    else:
        assert float(mp.log10(want)) < F64_TINY
    assert _rel(loss_exact, want) < 1e-11, (loss_exact, want)
    if want > 1:  # inf only where the mean itself overflows
        assert loss == math.inf if want > np.finfo(np.float64).max else abs(loss - float(want)) <= 1e-11 * loss
    else:
        assert loss < np.finfo(np.float64).tiny


# ------------------------------------------------------------------ a confident head at the last step
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_confident_float32_head_carries_its_gradient_as_float64_does(cell):
    """bce with b_out = 110 and targets 1: dL/dy = -sigmoid(-y) / B ~ 1e-48, below float32. It was
    rounded to float32 unscaled: every ||dL/dh_t|| and dW_hh read 0 and the verdict said
    "stable". The float64 twin (the same weights; 1e-48 is a normal float64) is the independent
    computation: each step's signal agrees to float32's precision."""
    from gradbench.recurrent.diagnose import diagnose

    r32 = gb.Recurrent(cell=cell, steps=20, hidden=4, loss="bce", output_dim=1, dtype="float32")
    r64 = r32.replace(dtype="float64")
    p32 = gb.init_params(r32, 0)
    p32.b_out[:] = 110.0
    from gradbench.recurrent.params import RecurrentParams

    p64 = RecurrentParams(**{k: np.asarray(getattr(p32, k), np.float64) for k in ("W_ih", "W_hh", "b_ih", "b_hh",
                                                                            "W_out", "b_out")})
    xs = gb.sequence_input(r32, 2, 1)
    got = gb.backprop(r32, p32, xs, np.ones((2, 1), np.float32))
    want = gb.backprop(r64, p64, xs.astype(np.float64), np.ones((2, 1)))
    s32, s64 = got.signal_norm.log10(), want.signal_norm.log10()
    assert np.all(np.isfinite(s32)) and s64[-1] < -45
    np.testing.assert_allclose(s32, s64, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.grads.W_hh.log10().max(), want.grads.W_hh.log10().max(), atol=1e-4)
    assert diagnose(got).verdict == diagnose(want).verdict


def test_a_margin_beyond_float64_scales_every_gradient_by_its_exponential():
    """float64, bce, targets 1, b_out = m: for y >> 1, dL/dy = -e^-y / B, so every gradient of the
    net at m = 760 is that at m = 60 times e^-700 (to ~e^-60 relative): a closed form. It read 0
    everywhere at 760."""
    rnn = gb.Recurrent(cell="gru", steps=10, hidden=4, loss="bce", output_dim=1)
    p, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1)
    got = {}
    for m in (60.0, 760.0):
        p.b_out[:] = m
        r = gb.backprop(rnn, p, xs, np.ones((2, 1)))
        got[m] = (r.signal_norm.log10(), float(np.max(r.grads.W_hh.log10())), float(r.loss_exact.log10()))
    shift = -700 * math.log10(math.e)
    np.testing.assert_allclose(got[760.0][0] - got[60.0][0], shift, rtol=0, atol=1e-9)
    assert abs(got[760.0][1] - got[60.0][1] - shift) < 1e-9 and abs(got[760.0][2] - got[60.0][2] - shift) < 1e-9


def test_a_net_with_no_gradient_at_any_step_is_not_stable():
    """A bce head right by a margin of 1e30: loss and dL/dy below 2^(-2^62), every ||dL/dh_t|| is 0;
    the verdict read "stable"."""
    from gradbench.recurrent.diagnose import diagnose

    rnn = gb.Recurrent(cell="lstm", steps=5, hidden=3, loss="bce", output_dim=1)
    p = gb.init_params(rnn, 0)
    p.b_out[:] = 1e30
    r = gb.backprop(rnn, p, gb.sequence_input(rnn, 2, 1), np.ones((2, 1)))
    d = diagnose(r)
    assert np.all(r.signal_norm.log10() == -np.inf) and d.verdict == "no gradient"
    assert "below 2^(-2^62)" in " ".join(d.explanation.split())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_std_beyond_1e154_is_exact(backend):
    """An ELU cell at gain 8 grows to |h| ~ 1e237 over 400 steps: the state's std squared plain
    floats and read inf for 141 steps while the state and the loss (10^471) were finite. The last
    step's std against mpmath on the returned state h_{T-1} (Result.output, exact)."""
    import mpmath as mp

    rnn = gb.Recurrent(cell="rnn", activation="elu", recurrent_init="normal", sigma_w=8.0, steps=400, hidden=8)
    r = gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1), backend=backend)
    a = r.act_std.log10()
    assert r.first_nonfinite_forward is None and np.all(np.isfinite(a)) and a[-1] > 200
    h = [mp.mpf(float(v)) for v in r.output.to_float(np.float64, warn=False).ravel()]
    mean = mp.fsum(h) / len(h)
    want = mp.log10(mp.sqrt(mp.fsum((v - mean) ** 2 for v in h) / len(h)))
    assert abs(a[-1] - float(want)) < 1e-9, (a[-1], want)
