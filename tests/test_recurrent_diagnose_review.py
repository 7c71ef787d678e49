"""Review of the recurrent diagnosis's sentences (gradbench/recurrent/diagnose.py) and of the
options it refuses: each sentence checked against an independent computation (an mpmath LSTM,
plain NumPy BPTT), never against the code's own numbers alone.

1. exact zeros inside the chain (an LSTM in float32 whose ||dL/dh_1|| and step 2's dW_hh term
   read 0, exactly 10^-65.9 and 10^-68.6) are named, and "falls to" names the true lowest point;
2. the float-limit sentence names the steps below float32's range, not "from step 1 down" when
   step 0 is back in range;
3. reach_decades and clip_threshold refuse what no computation can use;
4. "1 step has none"; an every-step loss over one step has no later steps;
5. a value clip of the last step alone can change the rates going back.
"""

from __future__ import annotations

import math
import re

import mpmath as mp
import numpy as np
import pytest

import gradbench as gb
from gradbench.recurrent import backends as rbackends
from tests.helpers import perturbation_moves

LSTM_CASE = dict(cell="lstm", steps=6, hidden=3, sigma_w=1000.0, recurrent_init="normal")


def _mp_lstm(rnn, p, xs):
    """log10 ||dL/dh_t||, log10 of step t's dW_hh term and log10 of the backward state's norm
    sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2) (dL/dc_t the total, through h_t and c_{t+1}) of an LSTM
    with sum_squares loss, in mpmath at 60 digits (torch's gate order i, f, g, o; h_{-1} = c_{-1} = 0)."""
    mp.mp.dps = 60
    T, B, _ = xs.shape
    N = rnn.hidden
    f64 = lambda a: [[mp.mpf(float(v)) for v in row] for row in np.atleast_2d(a)]
    Wih, Whh = f64(p.W_ih), f64(p.W_hh)
    bias = [mp.mpf(float(a)) + mp.mpf(float(b)) for a, b in zip(p.b_ih, p.b_hh)]
    sig = lambda z: 1 / (1 + mp.e ** (-z))
    H = [[[mp.mpf(0)] * N for _ in range(B)]]
    C = [[[mp.mpf(0)] * N for _ in range(B)]]
    Z = []
    for t in range(T):
        zs, hs, cs = [], [], []
        for b in range(B):
            x = [mp.mpf(float(v)) for v in xs[t, b]]
            z = [sum(Wih[k][j] * x[j] for j in range(len(x))) + bias[k]
                 + sum(Whh[k][j] * H[-1][b][j] for j in range(N)) for k in range(4 * N)]
            i, f = [sig(z[k]) for k in range(N)], [sig(z[N + k]) for k in range(N)]
            g, o = [mp.tanh(z[2 * N + k]) for k in range(N)], [sig(z[3 * N + k]) for k in range(N)]
            c = [f[k] * C[-1][b][k] + i[k] * g[k] for k in range(N)]
            zs.append(z), cs.append(c), hs.append([o[k] * mp.tanh(c[k]) for k in range(N)])
        Z.append(zs), H.append(hs), C.append(cs)
    gh = [list(H[-1][b]) for b in range(B)]
    gc = [[mp.mpf(0)] * N for _ in range(B)]
    s, w, st = [None] * T, [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        s[t] = mp.sqrt(sum(v ** 2 for b in range(B) for v in gh[b]))
        dW = [[mp.mpf(0)] * N for _ in range(4 * N)]
        ngh, ngc = [], []
        for b in range(B):
            z, c, cp = Z[t][b], C[t + 1][b], C[t][b]
            i, f = [sig(z[k]) for k in range(N)], [sig(z[N + k]) for k in range(N)]
            g, o = [mp.tanh(z[2 * N + k]) for k in range(N)], [sig(z[3 * N + k]) for k in range(N)]
            dc = [gc[b][k] + gh[b][k] * o[k] * mp.sech(c[k]) ** 2 for k in range(N)]
            dz = ([dc[k] * g[k] * i[k] * (1 - i[k]) for k in range(N)]
                  + [dc[k] * cp[k] * f[k] * (1 - f[k]) for k in range(N)]
                  + [dc[k] * i[k] * mp.sech(z[2 * N + k]) ** 2 for k in range(N)]
                  + [gh[b][k] * mp.tanh(c[k]) * o[k] * (1 - o[k]) for k in range(N)])
            for k in range(4 * N):
                for j in range(N):
                    dW[k][j] += dz[k] * H[t][b][j]
            ngh.append([sum(dz[k] * Whh[k][j] for k in range(4 * N)) for j in range(N)])
            ngc.append([dc[k] * f[k] for k in range(N)])
            st[t] = (st[t] or 0) + sum(v ** 2 for v in dc)
        st[t] = mp.sqrt(st[t] + s[t] ** 2)
        w[t] = mp.sqrt(sum(v ** 2 for row in dW for v in row))
        gh, gc = ngh, ngc
    l10 = lambda v: float(mp.log10(v)) if v != 0 else -math.inf
    return np.array([l10(v) for v in s]), np.array([l10(v) for v in w]), np.array([l10(v) for v in st])


@pytest.fixture(scope="module")
def lstm_case():
    """The review's LSTM (gain 1000, batch 2, seed 0): float32 and float64 diagnoses and the
    mpmath truth (the parameters and inputs are drawn the same for both dtypes)."""
    out = {}
    for dt in ("float32", "float64"):
        rnn = gb.Recurrent(**LSTM_CASE, dtype=dt)
        p = gb.init_params(rnn, 0)
        xs = gb.GeneratedSequence(rnn, 2, 0).materialize()
        res = gb.backprop(rnn, p, xs, backend="numpy")
        out[dt] = (res, gb.diagnose(res))
        if dt == "float64":
            out["mp"] = _mp_lstm(rnn, p, xs)
    return out


def test_lstm_float32_names_the_exact_zeros_inside_the_chain(lstm_case):
    s_true, w_true, _ = lstm_case["mp"]
    res, d = lstm_case["float32"]
    s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
    w = np.asarray(res.grad_norm.log10(), dtype=np.float64)
    # the case as reviewed: float32 reads 0 where the exact values are tiny (mpmath), step 0 is back
    assert s[1] == -math.inf and math.isfinite(s[0]) and s_true[1] == pytest.approx(-65.90, abs=0.01)
    assert w[2] == -math.inf and w_true[2] == pytest.approx(-68.57, abs=0.01)
    assert d.verdict == "vanishing"
    e = d.explanation
    assert "||dL/dh_t|| is exactly 0 at step 1 (4 steps back)" in e, e
    assert "one exponent per step" in e and "the exact value is tiny, not 0" in e, e
    assert "step 2's contribution to dL/dW_hh reads exactly 0" in e and "the true contribution is tiny, not 0" in e, e


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_falls_to_names_the_true_lowest_point(lstm_case, dtype):
    """Of the LSTM's backward state (dL/dh_t and dL/dc_t together): dL/dh_1 is 10^-65.9, but
    dL/dc_1 carries the gradient past it."""
    s_true, _, state_true = lstm_case["mp"]
    e = lstm_case[dtype][1].explanation
    low = int(np.argmin(state_true))
    assert state_true[low] > s_true[1] + 60  # the cell's path, not dL/dh_1's 10^-65.9
    for m in re.finditer(r"falls to 10\^(-?[\d.]+) of the last step's at step (\d+)", e):
        assert int(m.group(2)) == low, (dtype, e)
        assert float(m.group(1)) == pytest.approx(state_true[low] - state_true[-1], abs=0.01), (dtype, e)
    if dtype == "float64":
        assert "falls to" in e, e


def test_float_limit_names_only_the_steps_below_float32(lstm_case):
    s_true = lstm_case["mp"][0]
    e = lstm_case["float64"][1].explanation
    lo32 = math.log10(np.finfo(np.float32).tiny)
    under = np.flatnonzero(s_true < lo32)
    assert under.tolist() == [1] and s_true[0] > lo32  # step 0 is back at 10^-6.6: float32 holds it
    assert "plain float32 would have lost ||dL/dh_t|| to underflow at step 1 (4 steps back)" in e, e
    assert "from step 1 down" not in e, e


def _limit_sentence(s):
    from gradbench.recurrent.diagnose import _limit_words

    return _limit_words(np.asarray(s, dtype=np.float64), len(s))


def test_float_limit_runs():
    # a run down to step 0 keeps "from step t down"; gaps are named as runs
    assert _limit_sentence([-50, -45, -40, -1, 0]) == [
        "plain float32 would have lost ||dL/dh_t|| to underflow from step 2 down (2 steps back)"]
    assert _limit_sentence([-1, -50, -45, -40, -1, -60, 0])[0].endswith("at steps 1-3 and 5")


@pytest.mark.parametrize("bad", [math.nan, -1.0, 0.0, math.inf])
def test_reach_decades_refused(lstm_case, bad):
    with pytest.raises(ValueError, match="reach_decades must be a finite number > 0"):
        gb.diagnose(lstm_case["float64"][0], reach_decades=bad)


@pytest.mark.parametrize("bad", [-1.0, 0.0, math.nan])
def test_clip_threshold_checked_without_clip(bad):
    # as Stack: clip_threshold without clip is kept for .replace(clip=...), but must be usable
    with pytest.raises(ValueError, match="clip_threshold"):
        gb.Recurrent(steps=3, hidden=2, clip_threshold=bad)
    with pytest.raises(ValueError, match="clip_threshold"):
        gb.Stack(depth=3, width=2, clip_threshold=bad)


def test_one_step_has_none():
    """A relu rnn whose step 1 is all dead: only step 0 gets no gradient (plain NumPy BPTT)."""
    rnn = gb.Recurrent(cell="rnn", activation="relu", steps=4, hidden=2, input_dim=2)
    p = gb.init_params(rnn, 0)
    inv = np.linalg.inv(p.W_ih)
    xs = np.stack([inv @ np.full(2, k) for k in (1.0, -1e3, 1.0, 1.0)])[:, None, :]  # z_t = W_ih x_t + ...
    H, Z = [np.zeros((1, 2))], []
    for t in range(4):
        Z.append(xs[t] @ p.W_ih.T + p.b_ih + H[-1] @ p.W_hh.T + p.b_hh)
        H.append(np.maximum(Z[-1], 0))
    g, norms = H[-1].copy(), []
    for t in range(3, -1, -1):
        norms.append(np.linalg.norm(g))
        g = (g * (Z[t] > 0)) @ p.W_hh
    zero = sum(n == 0 for n in norms)
    assert zero == 1 and norms[-1] == 0  # step 0 alone
    d = gb.diagnose(gb.backprop(rnn, p, xs, backend="numpy"))
    assert "no gradient reaches step 0 (exactly zero; 1 step has none)" in d.explanation, d.explanation


def test_every_step_loss_over_one_step_has_no_later_steps():
    rnn = gb.Recurrent(cell="rnn", steps=1, hidden=3, loss="mse", loss_on="every")
    p = gb.init_params(rnn, 0)
    xs = gb.sequence_input(rnn, 2, 1)
    y = np.random.default_rng(0).normal(size=(1, 2, 1))
    # its own loss term, by hand: L = mean_b (y_b - t_b)^2, dL/dh_0 = 2 (y - t) / B W_out
    h = np.tanh(xs[0] @ p.W_ih.T + p.b_ih + p.b_hh)
    dh = 2 * (h @ p.W_out.T + p.b_out - y[0]) / 2 @ p.W_out
    e = gb.diagnose(gb.backprop(rnn, p, xs, y, backend="numpy")).explanation
    assert "later step" in e and "every later step's carried back" not in e and "over 1 step" not in e, e
    assert f"||dL/dh_0|| (10^{math.log10(np.linalg.norm(dh)):.4g}) is its own loss term" in e, e


def test_value_clip_of_the_last_step_can_change_the_rates():
    """Every-step MSE, tanh, gain 3, T = 60, value clip at 1e-4: the clip acts at the last step
    only, and turns the carried chain's direction: plain NumPy BPTT of the last step's loss moves
    the ratio from 10^-95.08 to 10^-95.45."""
    T, c = 60, 1e-4
    kw = dict(cell="rnn", steps=T, hidden=3, loss="mse", loss_on="every", recurrent_init="normal", sigma_w=3.0)
    rnn = gb.Recurrent(**kw, clip="value", clip_threshold=c)
    p = gb.init_params(rnn, 0)
    xs = gb.sequence_input(rnn, 2, 1)
    y = np.random.default_rng(0).normal(size=(T, 2, 1))
    H = [np.zeros((2, 3))]
    for t in range(T):
        H.append(np.tanh(xs[t] @ p.W_ih.T + p.b_ih + H[-1] @ p.W_hh.T + p.b_hh))

    def ratio(clip):
        g = 2 * (H[-1] @ p.W_out.T + p.b_out - y[-1]) / (T * 2) @ p.W_out  # the last step's term of the mean
        norms, acted = [], []
        for t in range(T - 1, -1, -1):
            if clip and np.abs(g).max() > c:
                g, _ = np.clip(g, -c, c), acted.append(t)
            norms.append(np.linalg.norm(g))
            g = (g * (1 - H[t + 1] ** 2)) @ p.W_hh
        return math.log10(norms[-1] / norms[0]), acted

    free, (clipped, acted) = ratio(False)[0], ratio(True)
    assert acted == [T - 1] and abs(clipped - free) > 0.3  # -95.08 -> -95.45
    d = gb.diagnose(gb.backprop(rnn, p, xs, y, backend="numpy"))
    assert d.ratio_log10 == pytest.approx(clipped, abs=0.01)
    e = d.explanation
    assert ("but before the last step the clip changed nothing (||dL_{T-1}/dh_t|| at most 10^" in e
            and "it clipped only the last step's gradient dL_{T-1}/dh_{T-1}" in e), e
    assert "its rates are the loss derivative's" not in e, e
    assert "can turn the direction the chain starts in" in e, e


@pytest.mark.parametrize("bad", [math.nan, -1.0, 0.0, math.inf])
def test_threshold_refused(lstm_case, bad):
    """threshold=inf read every net as stable; the stacks' diagnose refuses it too."""
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        gb.diagnose(lstm_case["float64"][0], threshold=bad)


def test_a_sigmoid_state_that_underflows_is_said():
    """Biases of -400 in a float32 sigmoid cell: every h_t rounds to 0, so the loss is 0 and no
    gradient is left, where float64 holds h_t ~ 10^-173. The diagnosis said only "an all-zero loss
    gradient, or every path from the loss cut"."""
    runs = {}
    for dtype in ("float32", "float64"):
        rnn = gb.Recurrent(cell="rnn", activation="sigmoid", hidden=8, steps=12, dtype=dtype)
        p = gb.init_params(rnn, 0)
        p.b_ih[...] = -400
        x = gb.sequence_input(rnn, 4, seed=0)
        # plain NumPy in the dtype: sigmoid of the first step's z is 0 in float32, not in float64
        z = x[0].astype(np.float64) @ p.W_ih.T.astype(np.float64) + p.b_ih + p.b_hh
        assert (np.all(1 / (1 + np.exp(-z.astype(dtype))) == 0)) == (dtype == "float32")
        runs[dtype] = gb.diagnose(gb.backprop(rnn, p, x))
    assert "the forward state h_t is exactly 0 in every unit at every step: sigmoid(z) underflowed float32" \
        in runs["float32"].explanation
    assert "forward state h_t is exactly 0" not in runs["float64"].explanation


@pytest.mark.parametrize("backend", ["numpy", "numba", "c"])
def test_only_the_initial_states_gradient_non_finite_is_named_so(backend):
    """A one-step identity cell whose W_hh entries are 1e308: dL/dh_{-1} = dz_0 W_hh overflows
    (plain float64: every entry a sum of positive terms past the float range), while the one row
    of the table, step 0, is finite. The report said "the backward signal turned non-finite at
    step -1"; it names the initial state's gradient."""
    rnn = gb.Recurrent(cell="rnn", activation="identity", steps=1, hidden=4, input_dim=2)
    p = gb.init_params(rnn, 0)
    p.W_hh[...], p.W_ih[...] = 1e308, 1.0
    xs = np.ones((1, 3, 2))
    h = xs[0] @ p.W_ih.T + p.b_ih + p.b_hh  # h_0 from h_{-1} = 0; the sum_squares loss's dL/dh_0 = h_0
    with np.errstate(over="ignore"):
        assert not np.isfinite(h @ p.W_hh).any() and np.isfinite(h).all()  # the truth, independently
    res = gb.backprop(rnn, p, xs, backend=backend)
    assert res.first_nonfinite_backward == -1 and np.isfinite(res.signal_norm.log10()).all()
    text = str(gb.diagnose(res))
    assert "step -1" not in text
    assert "non-finite only at the initial state: dL/dh_{-1}" in " ".join(text.split())


def _row_log10(g, i: int) -> float:
    """log10 ||row i|| of a LogScaled (B, N) with one exponent per row."""
    return float(np.log10(np.linalg.norm(g.mantissa[i].astype(np.float64))) + g.exponent[i] * np.log10(2.0))


def test_samples_far_below_the_others_keep_their_own_chain_back_through_time():
    """A GELU cell at gain 10 (300 steps, hidden 3, batch 3; a reviewer's finding): with one
    exponent per step for the batch, samples 0 and 2 (10^-30984 and 10^-25339 alone, far more
    than 2^-1074 below sample 1) reached the initial state as exactly 0 and were counted as lost.
    With one exponent per sample each keeps its chain: every row of h0_grad equals its sample's
    batch-1 run, and sample 0's ||dL/dh_0|| alone is mpmath's; the batch's norm at step 0 (the
    largest sample's) is mpmath's too, and nothing is lost or said lost."""
    from tests.naive_mp import rnn_chain

    rnn = gb.Recurrent(cell="rnn", activation="gelu", recurrent_init="orthogonal", sigma_w=10.0, steps=300, hidden=3)
    p, xs = gb.init_params(rnn, 2), gb.sequence_input(rnn, 3, 2)
    _, gh, _ = rnn_chain("gelu", rnn.act_param, p.W_ih, p.W_hh, p.b_ih + p.b_hh, xs)
    _, gh0, _ = rnn_chain("gelu", rnn.act_param, p.W_ih, p.W_hh, p.b_ih + p.b_hh, np.ascontiguousarray(xs[:, :1]))
    assert round(gh0[0], 2) == -30984.45  # the README's numbers
    assert [round(gh[0], 2), round(rnn_chain("gelu", rnn.act_param, p.W_ih, p.W_hh, p.b_ih + p.b_hh,
                                             np.ascontiguousarray(xs[:, 2:]))[1][0], 2)] == [-24125.47, -25339.48]
    for backend in rbackends.backends():
        res = gb.backprop(rnn, p, xs, backend=backend)
        alone = [gb.backprop(rnn, p, np.ascontiguousarray(xs[:, i:i + 1]), backend=backend) for i in range(3)]
        assert res.extras["lost_samples"] == 0 and np.all(np.logical_or.reduce(res.h0_grad.mantissa, axis=1))
        for i in range(3):
            assert _row_log10(res.h0_grad, i) == pytest.approx(_row_log10(alone[i].h0_grad, 0), abs=1e-9), backend
        assert _row_log10(res.h0_grad, 0) < _row_log10(res.h0_grad, 1) - 1000  # beyond 2^-1074 below: was flushed
        assert res.signal_norm.log10()[0] == pytest.approx(gh[0], abs=1e-9), backend
        assert alone[0].signal_norm.log10()[0] == pytest.approx(gh0[0], abs=1e-9), backend
        assert "lose their gradient" not in " ".join(str(gb.diagnose(res)).split())


def test_gb_diagnose_of_a_recurrent_result_with_a_stacks_arguments_says_what_it_takes():
    # gb.diagnose(res, params), as the README's stack examples call it, raised Python's bare
    # "diagnose() takes 1 positional argument but 2 were given" for a recurrent result (and
    # "unexpected keyword argument 'bins'" for a stack's option): now it says what it takes
    rnn = gb.Recurrent(cell="gru", steps=4, hidden=2)
    p = gb.init_params(rnn, 0)
    res = gb.backprop(rnn, p, gb.sequence_input(rnn, 2, 1), backend="numpy")
    with pytest.raises(TypeError, match=r"takes the result alone .*threshold=, reach_decades="):
        gb.diagnose(res, p)
    for kw in ("bins", "hist_range", "tiny"):
        with pytest.raises(TypeError, match=rf"threshold=, reach_decades= only, got {kw}="):
            gb.diagnose(res, **{kw: 10})
    # the keywords it takes still work: a 4-step GRU moves ||dL/dh_t|| by far less than 100 decades
    assert gb.diagnose(res, threshold=100, reach_decades=3).verdict == "stable"


def test_readers_of_the_other_kind_or_a_missing_name_say_what_the_file_holds(tmp_path):
    """A helper's findings: Diagnosis.from_dict of a recurrent diagnosis's dict raised a bare
    KeyError 'stack'; RecurrentDiagnosis.from_npz(path, name='lstm') of a file holding only 'rnn'
    said "pass name=" though a name was passed."""
    from gradbench.frames import write_npz
    from gradbench.recurrent.diagnose import RecurrentDiagnosis

    rnn = gb.Recurrent(cell="rnn", hidden=3, steps=4, input_dim=2)
    p = gb.init_params(rnn, 0)
    d = gb.diagnose(gb.backprop(rnn, p, gb.sequence_input(rnn, 2, 1)))
    with pytest.raises(ValueError, match="a recurrent net's diagnosis: read it with .*RecurrentDiagnosis.from_dict"):
        gb.Diagnosis.from_dict(d.to_dict())
    with pytest.raises(ValueError, match="no field 'stack'"):
        gb.Diagnosis.from_dict({"verdict": "stable"})
    path = write_npz({"rnn": d}, tmp_path / "c.npz")
    with pytest.raises(ValueError, match=r"has no diagnosis 'lstm': it holds rnn"):
        RecurrentDiagnosis.from_npz(path, name="lstm")
    with pytest.raises(ValueError, match=r"holds the diagnoses rnn: pass name= one of them"):
        RecurrentDiagnosis.from_npz(path)
    np.testing.assert_array_equal(RecurrentDiagnosis.from_npz(path, name="rnn").grad_log10, d.grad_log10)
    one = write_npz(d, tmp_path / "one.npz")
    with pytest.raises(ValueError, match="it holds one, unnamed: read it without name="):
        RecurrentDiagnosis.from_npz(one, name="rnn")


@pytest.mark.parametrize("cell, sigma_w, chaotic", [("rnn", 3.0, True), ("rnn", 1.5, False), ("lstm", 3.0, False)])
def test_a_chaotic_recurrence_is_said_where_a_last_bit_of_w_hh_moves_the_gradients(cell, sigma_w, chaotic):
    """As for stacks (verdict.rounding_share): a vanilla tanh cell at gain 3 over 300 steps
    amplifies rounding (estimate 10^11.3 of the loss); one unit in the last place of one entry of
    W_hh moves its per-step norms by decades on the reference backend. Gain 1.5 and an LSTM at
    gain 3 do not (moved by ~1e-14), and nothing is said."""
    rnn = gb.Recurrent(cell=cell, steps=300, hidden=32, recurrent_init="normal", sigma_w=sigma_w)
    p, x = gb.init_params(rnn, 0), gb.sequence_input(rnn, 8, 1)
    said = "the forward pass is chaotic" in str(gb.diagnose(gb.backprop(rnn, p, x)))
    assert said == chaotic
    moved = perturbation_moves(rnn, p, x, "W_hh", (0, 0))
    assert (moved > 1e-3) if chaotic else (moved < 1e-6), moved


def test_a_lone_sample_that_loses_its_gradient_is_not_told_to_run_alone():
    """A batch-1 ReLU cell whose single unit dies at some step: h0_grad exactly 0 (a plain loop
    over the steps shows a step with z <= 0). The diagnosis said to run such samples one at a time
    (batch 1), which this run is; it now names the dead unit."""
    rnn = gb.Recurrent(cell="rnn", activation="relu", steps=20, hidden=1, recurrent_init="normal")
    p, x = gb.init_params(rnn, 0), gb.sequence_input(rnn, 1, 0)
    res = gb.backprop(rnn, p, x)
    h, died = np.zeros((1, 1)), False
    for t in range(20):  # z_t = x_t W_ih^T + b_ih + h W_hh^T + b_hh
        z = x[t] @ p.W_ih.T + p.b_ih + h @ p.W_hh.T + p.b_hh
        died |= bool(np.all(z <= 0))
        h = np.maximum(z, 0)
    assert died and not np.any(res.h0_grad.mantissa) and res.extras["lost_samples"] == 1
    text = " ".join(gb.diagnose(res).explanation.split())
    assert "exactly 0 at the initial state: dead units (z <= 0) at some step" in text
    assert "one at a time" not in text


def test_an_lstm_whose_forward_state_underflowed_is_not_said_to_have_a_zero_loss_gradient():
    """An LSTM at recurrent gain 1e4 (a reviewer's case): the output gate underflows float64 at
    step 5, h_5 reads 0, the loss 0 and every gradient 0. The words read "no gradient at all ...
    (an all-zero loss gradient, or every path from the loss cut)"; mpmath's chain is non-zero at
    every step (||dL/dh_5|| ~ 10^-669). They now name the underflow and the step, as they did
    for the sigmoid cell only."""
    from tests.naive_mp import lstm_chain

    rnn = gb.Recurrent(cell="lstm", steps=6, hidden=3, sigma_w=1e4, recurrent_init="normal")
    p, xs = gb.init_params(rnn, 1), gb.sequence_input(rnn, 1, 1)
    gh, _ = lstm_chain(p.W_ih, p.W_hh, p.b_ih + p.b_hh, xs)
    assert all(math.isfinite(v) for v in gh) and gh[5] < -300  # the true gradient: tiny, not 0
    d = gb.diagnose(gb.backprop(rnn, p, xs))
    text = " ".join(d.explanation.split())
    assert np.all(np.asarray(d.signal_log10) == -np.inf)  # what float64's forward leaves
    assert "an all-zero loss gradient" not in text, text
    assert "the forward state h_t is exactly 0 in every unit at step 5 (the last step)" in text, text
    assert "output gate sigmoid(z) or the cell state c_t underflowed float64" in text, text


def test_an_lstm_whose_dh_reads_zero_from_step_0_beside_its_dc_is_said_so():
    """An LSTM with W_hh of gain 1e-290 (a reviewer's case): ||dL/dh_t|| reads 0 at steps 0-4 beside
    ||dL/dc_t|| = 10^-4.6, beyond the shared exponent's reach (mpmath: 10^-409.8), and the words said
    nothing of it (zeros inside the chain were named; zeros from step 0 were not). With W_hh = 0
    the same zeros are exact, so the sentence names both causes."""
    from tests.naive_mp import lstm_chain

    rnn = gb.Recurrent(cell="lstm", steps=6, hidden=2, sigma_w=1e-290, sigma_b=300.0, recurrent_init="normal")
    p, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, 1, 1)
    gh, _ = lstm_chain(p.W_ih, p.W_hh, p.b_ih + p.b_hh, xs)
    assert all(math.isfinite(v) and v < -400 for v in gh[:5])  # tiny, not 0
    d = gb.diagnose(gb.backprop(rnn, p, xs))
    assert np.all(np.asarray(d.signal_log10)[:5] == -np.inf)
    text = " ".join(d.explanation.split())
    assert "||dL/dh_t|| reads 0 at steps 0-4 while dL/dc_t there (10^-4.609" in text, text
    assert "either it is exactly 0 (W_hh = 0 passes nothing back through h_t)" in text, text
    assert "it lay more than about 324 decades below dL/dc_t" in text, text


def test_a_sequence_stable_by_its_length_says_so():
    """STABLE at 0.19 decades lost a step over 8 steps (or 0.88 over 3), which a longer sequence
    through the same net reads VANISHING, said nothing of it (the stacks' verdict now says it)."""
    import math

    def run(steps):
        rnn = gb.Recurrent(cell="rnn", steps=steps, hidden=32, recurrent_init="normal")
        return gb.diagnose(gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 4, 1)))

    d = run(8)
    r = d.decades_per_step
    assert d.verdict == "stable" and r < -0.1
    reach = 2.0 / abs(r) + 1
    assert (f"stable by the sequence's length, not by its rate: at {r:+.3g} decades per step the gradient would "
            f"change by the threshold's 2 decades over a sequence of {reach:.1f} steps, so a longer sequence through "
            "this net would be vanishing") in d.explanation
    assert run(math.ceil(reach) + 2).verdict == "vanishing"
    calm = gb.Recurrent(cell="rnn", steps=8, hidden=8, activation="identity", recurrent_init="orthogonal")
    c = gb.diagnose(gb.backprop(calm, gb.init_params(calm, 0), gb.sequence_input(calm, 4, 1)))
    assert c.verdict == "stable" and "stable by the sequence's length" not in c.explanation
