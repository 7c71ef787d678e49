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

import numpy as np
import pytest

import gradbench as gb

torch = pytest.importorskip("torch")

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
