"""Review of the recurrent diagnosis's report (gradbench/recurrent/diagnose.py, cli.py), each
sentence checked against an independent computation (torch float64 autograd, a plain float32 chain
in torch), never against the code's own numbers alone.

1. a loss at every step without the carried pass (``backprop(..., carried=False)``) is refused by
   diagnose: its ||dL/dh_t|| is flat by construction and read STABLE where the carried gradient
   vanishes at 0.535 decades a step;
2. the float-limit sentence: a plain chain that overflows is inf or NaN at every earlier step (it
   said "at steps 0-594 and 599-601"), and an rnn's or GRU's state of zeros stays zero (it named
   only the steps below the smallest normal, as if the chain came back);
3. the saturated-zero sentence names the cell's own activation; ``--rows 1`` shows the last step;
   "1 step".
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import gradbench as gb
from gradbench.report import index_runs
from tests.test_recurrent_far_rows import _log10_norm

torch = pytest.importorskip("torch")

F32_MAX = math.log10(float(np.finfo(np.float32).max))
F32_TINY = math.log10(float(np.finfo(np.float32).tiny))


def _fit_back(y):
    """Least-squares slope of y against the step (the diagnosis' decades_per_step, the change going
    back, is its negative)."""
    t = np.arange(len(y), dtype=np.float64)
    return float(np.polyfit(t, y, 1)[0])


# ------------------------------------------------------------------ 1. carried=False
def _readme_every_step():
    rnn = gb.Recurrent(cell="rnn", steps=200, hidden=16, recurrent_init="normal", sigma_w=0.5, loss="mse",
                       loss_on="every")
    xs, y = gb.sequence_input(rnn, 16, 1), np.random.default_rng(0).normal(size=(200, 16, 1))
    return rnn, gb.init_params(rnn, 0), xs, y


def _torch_last_step_loss(p, xs, y):
    """log10 ||dL_{T-1}/dh_t|| in torch float64: the last step's share of the every-step mse (1/T
    of its own mean), carried back through a tanh RNN."""
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64))
    W_ih, W_hh, b, W_out, b_out = t(p.W_ih), t(p.W_hh), t(p.b_ih + p.b_hh), t(p.W_out), t(p.b_out)
    X = t(xs)
    T, B, _ = xs.shape
    h = torch.zeros(B, W_hh.shape[0], dtype=torch.float64, requires_grad=True)
    hs = []
    for s in range(T):
        h = torch.tanh(X[s] @ W_ih.T + h @ W_hh.T + b)
        h.retain_grad()
        hs.append(h)
    loss = ((h @ W_out.T + b_out - t(y[-1])) ** 2).mean() / T
    loss.backward()
    return np.log10([x.grad.norm().item() for x in hs])


def test_every_step_loss_without_the_carried_pass_is_refused():
    rnn, p, xs, y = _readme_every_step()
    carried = _torch_last_step_loss(p, xs, y)
    rate = -_fit_back(carried)  # going back: negative = vanishing
    assert rate < -0.5  # torch: the recurrence loses over half a decade a step
    # with the carried pass the diagnosis reads torch's chain
    d = gb.diagnose(gb.backprop(rnn, p, xs, y))
    assert d.verdict == "vanishing" and d.decades_per_step == pytest.approx(rate, abs=1e-9)
    # without it there is nothing to read the verdict from: it said STABLE, -0.0001 decades a step
    off = gb.backprop(rnn, p, xs, y, carried=False)
    with pytest.raises(ValueError, match=r"carried=False.*carried=True"):
        gb.diagnose(off)
    from gradbench.recurrent.plot import signal_vs_steps_back

    with pytest.raises(ValueError, match="carried=True"):
        signal_vs_steps_back({"x": off})  # the plot diagnoses results too
    # the whole loss's norms are still there, flat as torch's every-step total would be
    assert np.ptp(off.signal_norm.log10()) < 1


def test_carried_false_is_still_diagnosed_where_it_changes_nothing():
    # with the loss at the last step ||dL/dh_t|| is the carried gradient: carried=False is accepted
    rnn, _, xs, y = _readme_every_step()
    last = rnn.replace(loss_on="last", steps=40)
    p = gb.init_params(last, 0)
    d = gb.diagnose(gb.backprop(last, p, xs[:40], y[39], carried=False))
    ref = _torch_last_step_loss(p, xs[:40], y[39:40])  # a scale of 1/T moves no ratio
    assert d.verdict == "vanishing" and d.ratio_log10 == pytest.approx(ref[0] - ref[-1], abs=1e-9)


# ------------------------------------------------------------------ 2. float limits
def _linear_case():
    """A linear rnn (identity activation: the Jacobian is W_hh whatever the trajectory, so torch's
    float64 chain agrees with gradbench to rounding) whose W_hh = r R(1) diag(s, 1/s) makes
    ||dL/dh_t|| wobble by +-0.3 decades around a growth of 0.05 a step: it crosses float32's
    largest finite number back and forth."""
    T = 80
    r, sk, th = 10 ** 0.05, 10 ** 0.3, 1.0
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    W = r * R @ np.diag([sk, 1 / sk])
    rnn = gb.Recurrent(cell="rnn", activation="identity", steps=T, hidden=2, input_dim=2)
    p = gb.RecurrentParams(W_ih=np.eye(2) * 10 ** 31.47, W_hh=W, b_ih=np.zeros(2), b_hh=np.zeros(2))
    xs = np.random.default_rng(0).normal(size=(T, 1, 2))
    return rnn, p, xs


def _torch_chain(p, xs, act, dtype=torch.float64, dact=None):
    """The forward in torch float64 and the backward of 0.5 ||h_{T-1}||^2 as a plain chain in
    ``dtype``: g_{t-1} = (g_t * phi'(z_t)) W_hh, with phi'(z_t) computed in float64 and rounded to
    ``dtype``. Returns log10 ||g_t|| (float64 from the entries) and whether every entry of g_t is
    finite."""
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64))
    W_ih, W_hh, b = t(p.W_ih), t(p.W_hh), t(p.b_ih + p.b_hh)
    X = t(xs)
    T, B, _ = xs.shape
    h = torch.zeros(B, W_hh.shape[0], dtype=torch.float64)
    zs = []
    for s in range(T):
        z = X[s] @ W_ih.T + h @ W_hh.T + b
        zs.append(z)
        h = act(z)
    g = h.to(dtype)
    W = W_hh.to(dtype)
    norms, finite = np.zeros(T), np.zeros(T, dtype=bool)
    for s in range(T - 1, -1, -1):
        with np.errstate(divide="ignore"):
            norms[s] = np.log10(np.linalg.norm(g.double().numpy())) if torch.isfinite(g).all() else math.inf
        finite[s] = bool(torch.isfinite(g).all())
        if s:
            g = (g * dact(zs[s]).to(dtype)) @ W
    return norms, finite


def _plain(d):
    return [w for w in d.explanation.rstrip(".").split("; ") if w.startswith("plain ")]


def test_overflow_is_from_the_highest_step_down():
    rnn, p, xs = _linear_case()
    ident = lambda z: z
    one = lambda z: torch.ones_like(z)
    exact, _ = _torch_chain(p, xs, ident, dact=one)
    over = np.flatnonzero(exact > F32_MAX)
    top = int(over.max())
    assert len(index_runs(over.tolist())) > 1  # the exact norm dips back into range below the top
    _, finite32 = _torch_chain(p, xs, ident, torch.float32, one)
    lost = np.flatnonzero(~finite32)
    # the plain float32 chain: inf from about the top step down, at every step below, gaps included
    assert lost.tolist() == list(range(int(lost.max()) + 1)) and abs(int(lost.max()) - top) <= 1
    assert not finite32[[t for t in range(top) if t not in over]].any()
    d = gb.diagnose(gb.backprop(rnn, p, xs))
    np.testing.assert_allclose(d.signal_log10, exact, atol=1e-9)
    words = _plain(d)
    assert words[0] == (f"plain float32 would have overflowed ||dL/dh_t|| from step {top} down "
                        f"({rnn.steps - 1 - top} steps back)"), d.explanation
    # and the loss and dL/dW_hh beyond float32 (not float64), at torch float64 autograd's values
    loss, dw = _torch_loss_and_dw(p, xs)
    assert loss > F32_MAX and dw > F32_MAX
    assert _overflow_values(words[1:]) == pytest.approx({"the loss": loss, "dL/dW_hh": dw}, abs=6e-3), d.explanation


def _torch_loss_and_dw(p, xs):
    """log10 of 0.5 ||h_{T-1}||^2 and of ||dL/dW_hh|| for the identity cell, torch float64
    autograd (neither overflows float64 here)."""
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64))
    W_ih, W_hh, b = t(p.W_ih), t(p.W_hh).requires_grad_(True), t(p.b_ih + p.b_hh)
    X = t(xs)
    h = torch.zeros(xs.shape[1], p.W_hh.shape[0], dtype=torch.float64)
    for s in range(xs.shape[0]):
        h = X[s] @ W_ih.T + h @ W_hh.T + b
    loss = 0.5 * (h ** 2).sum()
    loss.backward()
    return math.log10(loss.item()), math.log10(W_hh.grad.norm().item())


def _overflow_values(words):
    """{"the loss" | "dL/dW_hh": log10 value} of the words "plain float32 would overflow X (10^v:
    inf)"; any other word fails."""
    out = {}
    for w in words:
        m = re.fullmatch(r"plain float32 would overflow (the loss|dL/dW_hh) \(10\^([-0-9.]+): inf\)", w)
        assert m, w
        out[m.group(1)] = float(m.group(2))
    return out


def test_the_reviewed_tanh_overflow_reads_from_one_step_down():
    # the review's case: "at steps 0-594 and 599-601". Chaotic (the trajectory is float64's
    # rounding's), so torch's steps are not gradbench's; but torch's plain float32 chain on these
    # weights has no finite step below its first inf, which the sentence now says.
    rnn = gb.Recurrent(cell="rnn", steps=1000, hidden=32, recurrent_init="normal", sigma_w=3.0)
    p, xs = gb.init_params(rnn, 0), gb.GeneratedSequence(rnn, 16, 0).materialize()
    _, finite32 = _torch_chain(p, xs, torch.tanh, torch.float32, lambda z: 1 - torch.tanh(z) ** 2)
    lost = np.flatnonzero(~finite32)
    assert lost.size and lost.tolist() == list(range(int(lost.max()) + 1))
    res = gb.backprop(rnn, p, xs)
    d = gb.diagnose(res)
    over = np.flatnonzero(np.asarray(d.signal_log10) > F32_MAX)
    assert len(index_runs(over.tolist())) > 1  # the exact norm dips back below float32's largest
    words = _plain(d)
    assert words[0].startswith(
        f"plain float32 would have overflowed ||dL/dh_t|| from step {int(over.max())} down"), d.explanation
    # dL/dW_hh beyond float32 too (the loss, 0.5 ||h||^2 <= 256 with |tanh| <= 1, is not), at the
    # norm of the gradient's own entries
    dw = _log10_norm(res.grads.W_hh)
    assert dw > F32_MAX and _overflow_values(words[1:]) == pytest.approx({"dL/dW_hh": dw}, abs=6e-3), d.explanation


def _pinned(p, xs, at, m):
    """Set the input of step ``at`` so that every unit's z is +-m (W_ih = I, no bias)."""
    h = np.zeros(p.W_hh.shape[0])
    for s in range(at):
        h = np.tanh(p.W_ih @ xs[s, 0] + p.W_hh @ h)
    xs[at, 0] = m * np.sign(xs[at, 0]) - p.W_hh @ h


def test_an_rnn_state_of_zeros_stays_zero():
    # a tanh RNN whose steps 101 and 100 saturate every unit (|z| = 16 and 43: tanh' = 10^-13.3 and
    # 10^-36.7, both normal float32 numbers) takes ||dL/dh_99|| below half float32's smallest
    # subnormal; the chain grows back into float32's normal range at step 36 and below 35. It read
    # "at steps 35 and 37-99", as if a float32 chain came back: its state is all 0 there, and 0
    # stays 0.
    T, N = 130, 32
    rnn = gb.Recurrent(cell="rnn", steps=T, hidden=N, input_dim=N, recurrent_init="normal", sigma_w=3.0)
    p = gb.RecurrentParams(W_ih=np.eye(N), W_hh=gb.init_params(rnn, 0).W_hh, b_ih=np.zeros(N), b_hh=np.zeros(N))
    xs = np.random.default_rng(1).normal(size=(T, 1, N))
    _pinned(p, xs, 100, 43.0)
    _pinned(p, xs, 101, 16.0)
    dtanh = lambda z: 1 / torch.cosh(z) ** 2  # (1 - tanh^2 rounds to 0 at |z| = 43 even in float64)
    exact, _ = _torch_chain(p, xs, torch.tanh, dact=dtanh)
    plain32, _ = _torch_chain(p, xs, torch.tanh, torch.float32, dtanh)
    h, low = np.zeros(N), 0.0
    for s in range(T):
        z = xs[s, 0] + p.W_hh @ h
        h = np.tanh(z)
        low = min(low, float(np.log10(1 / np.cosh(z) ** 2).min()))
    assert low > F32_TINY  # every derivative is a normal float32 number: the state underflows, not phi'
    assert exact[99] < -150 * math.log10(2) and np.any(exact[:99] > F32_TINY)  # below 2^-150, then back
    assert np.all(plain32[:100] == -math.inf) and np.all(np.isfinite(plain32[100:]))
    d = gb.diagnose(gb.backprop(rnn, p, xs))
    np.testing.assert_allclose(d.signal_log10, exact, atol=1e-3)  # (the forward at gain 3 is mildly chaotic)
    assert _plain(d) == ["plain float32 would have lost ||dL/dh_t|| to underflow from step 99 down (30 steps back)"], \
        d.explanation


# ------------------------------------------------------------------ 3. words
@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_a_saturated_cell_names_its_own_activation(act):
    # sigmoid cells said "(e.g. tanh at |z| ~ 1e19)"; the |z| named is where mpmath's ln phi'(z)
    # crosses -2^62 ln 2 (2^(-2^62), beyond any int64 exponent)
    import warnings

    import mpmath as mp

    rnn = gb.Recurrent(cell="rnn", steps=50, hidden=4, activation=act, sigma_w=1e100)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        d = gb.diagnose(gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 16, 0)))
    e = d.explanation
    assert d.verdict == "vanishing" and f"its {act}'(z) lies below 2^(-2^62)" in e, e
    other = {"sigmoid": "tanh", "tanh": "sigmoid"}[act]
    assert other not in e, e
    m = re.search(rf"as {act}' does at \|z\| ~ ([\d.]+e\d+)\)", e)
    assert m, e
    mp.mp.dps = 30
    floor = -(mp.mpf(2) ** 62) * mp.log(2)
    lnd = {"sigmoid": lambda z: -z - 2 * mp.log1p(mp.exp(-z)),
           "tanh": lambda z: mp.log(4) - 2 * z - 2 * mp.log1p(mp.exp(-2 * z))}[act]
    z = mp.findroot(lambda z: lnd(z) - floor, mp.mpf(1e18))
    assert float(m.group(1)) == pytest.approx(float(z), rel=0.05)


def test_one_step_and_one_epoch_are_singular(capsys):
    from gradbench.cli import main

    assert main(["train", "--demo", "memory-rnn", "--steps", "1", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "rnn, 1 step, hidden 16" in out and "batch 32, 1 epoch, seed" in out and "after 1 epoch 10^" in out, out
    assert not re.search(r"\b1 (steps|epochs)\b", out), out
