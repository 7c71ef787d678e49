"""The gradient an every-step loss's recurrence carries back (``carried_signal_norm``), and the
diagnosis that reads it: against a net with one loss at the last step, an independent pass.

With ``loss_on="every"``, ||dL/dh_t|| is mostly step t's own loss term: a tanh RNN at gain 0.5
read STABLE (-0.0001 decades a step, "learning reaches over the whole sequence") where the same
weights with the loss at the last step lose 0.535 decades a step and reach 15 steps back.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import gradbench as gb
from gradbench.recurrent.diagnose import RecurrentDiagnosis

T, B = 60, 4


def _pair(cell, **kw):
    rnn = gb.Recurrent(cell=cell, steps=T, hidden=8, recurrent_init="normal", sigma_w=0.7, loss="mse", loss_on="every", **kw)
    p = gb.init_params(rnn, 0)
    xs = gb.sequence_input(rnn, B, 1)
    y = np.random.default_rng(0).normal(size=(T, B, 1))
    return rnn, p, xs, y


@pytest.mark.parametrize("backend", ["numpy", "numba", "c"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("checkpoint", [None, 16])
def test_carried_is_the_last_steps_loss_alone(cell, backend, checkpoint):
    """L_{T-1} of the every-step loss is (1/T) of the last-step loss on the same targets: its
    signal and dW_hh contributions are the last-step net's, divided by T, at every step."""
    if backend != "numpy":
        pytest.importorskip("numba" if backend == "numba" else "cffi")
    rnn, p, xs, y = _pair(cell)
    res = gb.backprop(rnn, p, xs, y, backend=backend, checkpoint=checkpoint)
    last = gb.backprop(rnn.replace(loss_on="last"), p, xs, y[-1], backend=backend)
    a, b = res.carried_signal_norm.log10(), last.signal_norm.log10() - math.log10(T)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
    ga, gb_ = res.carried_grad_norm.log10(), last.grad_norm.log10() - math.log10(T)
    np.testing.assert_allclose(ga[1:], gb_[1:], rtol=0, atol=1e-13)
    assert res.grad_norm.log10()[0] == -math.inf and ga[0] == -math.inf  # h_{-1} = 0: step 0's term is 0


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("checkpoint", [None, 16])
def test_the_carried_pass_leaves_the_results_as_they_were(backend, checkpoint):
    rnn, p, xs, y = _pair("lstm")
    on = gb.backprop(rnn, p, xs, y, backend=backend, checkpoint=checkpoint)
    off = gb.backprop(rnn, p, xs, y, backend=backend, checkpoint=checkpoint, carried=False)
    assert off.carried_signal_norm is None and off.carried_grad_norm is None
    np.testing.assert_array_equal(on.saturation, off.saturation)
    for name in ("signal_norm", "cell_signal_norm", "grad_norm", "h0_grad", "c0_grad", "loss_exact", "output",
                 "act_mean", "act_std"):
        x, z = getattr(on, name), getattr(off, name)
        np.testing.assert_array_equal(x.mantissa, z.mantissa)
        np.testing.assert_array_equal(x.exponent, z.exponent)
    for k in ("W_ih", "W_hh", "b_ih", "b_hh", "W_out", "b_out"):
        np.testing.assert_array_equal(getattr(on.grads, k).mantissa, getattr(off.grads, k).mantissa)


def test_every_step_loss_is_diagnosed_by_what_the_recurrence_carries():
    rnn = gb.Recurrent(cell="rnn", steps=200, hidden=16, recurrent_init="normal", sigma_w=0.5, loss="mse", loss_on="every")
    p, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, 16, 1)
    y = np.random.default_rng(0).normal(size=(200, 16, 1))
    d = gb.diagnose(gb.backprop(rnn, p, xs, y))
    ref = gb.diagnose(gb.backprop(rnn.replace(loss_on="last"), p, xs, y[-1]))
    assert ref.verdict == d.verdict == "vanishing"
    assert np.ptp(d.signal_log10) < 1  # the total is flat: each step's own loss term
    assert d.decades_per_step == pytest.approx(ref.decades_per_step, abs=1e-12) and d.decades_per_step < -0.5
    assert d.ratio_log10 == pytest.approx(ref.ratio_log10, abs=1e-12) and d.reach == ref.reach == 15
    np.testing.assert_allclose(d.carried_log10, np.asarray(ref.signal_log10) - math.log10(200), atol=1e-12)
    np.testing.assert_allclose(d.carried_grad_log10, np.asarray(ref.grad_log10) - math.log10(200), atol=1e-12)
    assert "with a loss at every step, ||dL/dh_t|| is mostly step t's own loss term and its near successors'" in d.explanation
    assert f"reaching step 0 is 10^{ref.ratio_log10:.4g} of the one at step 199" in d.explanation
    assert "carried" in str(d)  # the table's column


def test_carried_is_refused_where_it_means_nothing():
    rnn, p, xs, y = _pair("rnn")
    with pytest.raises(ValueError, match="carried=True needs a head with loss_on='every'"):
        gb.backprop(rnn.replace(loss_on="last"), p, xs, y[-1], carried=True)
    with pytest.raises(TypeError, match="carried must be a bool"):
        gb.backprop(rnn, p, xs, y, carried="yes")
    assert gb.backprop(rnn.replace(loss_on="last"), p, xs, y[-1], carried=False).carried_signal_norm is None


def test_the_diagnosis_file_keeps_the_carried_signal(tmp_path):
    rnn, p, xs, y = _pair("gru")
    d = gb.diagnose(gb.backprop(rnn, p, xs, y))
    path = tmp_path / "d.npz"
    from gradbench.frames import write_npz

    write_npz(d, path)
    back = RecurrentDiagnosis.from_npz(path)
    np.testing.assert_array_equal(back.carried_log10, d.carried_log10)
    np.testing.assert_array_equal(back.carried_grad_log10, d.carried_grad_log10)
    assert back.to_json() == d.to_json() and len(d.carried_log10) == len(d.carried_grad_log10) == T
    assert {"carried_log10", "carried_grad_log10"} <= set(d.to_frame().columns)
    assert json.loads(d.to_json())["carried_grad_log10"][1:] == [float(v) for v in d.carried_grad_log10[1:]]


def test_frames_and_plots_show_the_carried_signal(tmp_path):
    pytest.importorskip("pandas")
    rnn, p, xs, y = _pair("rnn")
    res = gb.backprop(rnn, p, xs, y)
    df = res.to_frame()
    np.testing.assert_array_equal(df["carried_signal_log10"], res.carried_signal_norm.log10())
    np.testing.assert_array_equal(df["carried_grad_exponent"], res.carried_grad_norm.exponent)
    from gradbench.recurrent import plot

    d = gb.diagnose(res)
    fig = plot.signal_vs_steps_back({"every": d})
    (line,) = fig.axes[0].get_lines()
    np.testing.assert_array_equal(line.get_ydata(), np.where(np.isfinite(d.carried_log10), d.carried_log10, np.nan))
    assert "carried" in line.get_label()
    labels = [ln.get_label() for ln in plot.run_figure(d).axes[0].get_lines()]
    assert "||dL_{T-1}/dh_t|| (carried back)" in labels


@pytest.mark.parametrize("backend", ["numpy", "numba", "c"])
@pytest.mark.parametrize("cell, dtype, steps", [("rnn", "float64", 800), ("lstm", "float64", 3000),
                                                ("gru", "float64", 1500), ("rnn", "float32", 200)])
def test_the_carried_pass_is_exact_below_the_float_range(cell, dtype, steps, backend):
    """The carried pass adds no loss gradient (dh = 0) at each step, and the every-step sum was
    taken at the exponent max(e, 0): a carried G of 2^-1100 was scaled by 2^-1100 and read 0, so
    the carried gradient stopped at float64's floor (-inf below step 330 of a tanh RNN at gain 0.3:
    "no gradient reaches step 0") where the last-step net's is 10^-548. Now it is that net's / T
    at every step, on every backend, also in float32 (whose floor is 10^-38)."""
    if backend != "numpy":
        pytest.importorskip("numba" if backend == "numba" else "cffi")
    kw = dict(cell=cell, steps=steps, hidden=8, loss="mse", sigma_w=0.3, dtype=dtype)
    rnn = gb.Recurrent(loss_on="every", **kw)
    p, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, 4, 1)
    y = np.random.default_rng(2).standard_normal((steps, 4, 1)).astype(dtype)
    res = gb.backprop(rnn, p, xs, y, backend=backend)
    last = gb.backprop(gb.Recurrent(loss_on="last", **kw), p, xs, y[-1], backend=backend)
    a, b = np.asarray(res.carried_signal_norm.log10()), np.asarray(last.signal_norm.log10())
    floor = math.log10(np.finfo(dtype).tiny)
    assert b[0] < floor - 30 and np.isfinite(b).all()  # far below the dtype's range: exponents needed
    np.testing.assert_allclose(a, b - math.log10(steps), rtol=0, atol=1e-12 if dtype == "float64" else 2e-5)
    assert "no gradient reaches step 0" not in gb.diagnose(res).explanation


@pytest.mark.parametrize("init, sigma_w, verdict", [("normal", 0.5, "vanishing"), ("orthogonal", 3.0, "exploding"),
                                                    ("normal", 3.0, "stable")])
def test_the_every_step_sentence_says_which_terms_make_the_total(init, sigma_w, verdict):
    """||dL/dh_t|| of an every-step loss was called 'mostly step t's own loss term' also where the
    recurrence explodes: a tanh RNN at gain 3 had 10^1.43 at step 0, whose own term is 10^-1.29.
    The own terms, 2 (y_t - target_t) W_out / (T B O), are computed here from a plain forward."""
    T, B = 30, 5
    rnn = gb.Recurrent(cell="rnn", steps=T, hidden=8, recurrent_init=init, sigma_w=sigma_w, loss="mse",
                       loss_on="every")
    p, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, B, 1)
    y = np.random.default_rng(0).normal(size=(T, B, 1))
    res = gb.backprop(rnn, p, xs, y, backend="numpy")
    h, own = np.zeros((B, 8)), np.empty(T)
    for t in range(T):
        h = np.tanh(np.asarray(xs[t]) @ p.W_ih.T + p.b_ih + h @ p.W_hh.T + p.b_hh)
        own[t] = np.linalg.norm(2 * (h @ p.W_out.T + p.b_out - y[t]) @ p.W_out / (T * B))
    share = own / 10.0 ** np.asarray(res.signal_norm.log10())  # the own term's share of ||dL/dh_t||
    d = gb.diagnose(res)
    assert d.verdict == verdict
    text = " ".join(d.explanation.split())
    if verdict == "vanishing":
        assert np.median(share) > 0.5 and "is mostly step t's own loss term and its near successors'" in text
    elif verdict == "exploding":
        assert np.median(share) < 0.01 and "is mostly the later steps' loss terms, grown on the way back" in text
    else:
        assert "is the sum of step t's own loss term and every later step's carried back" in text


def test_with_a_loss_at_every_step_the_carried_chains_lost_samples_are_counted():
    """extras["lost_samples"] was None with loss_on="every"; it now counts the samples whose last
    step's loss alone (the carried pass) reaches the initial state as exactly 0. Checked sample by
    sample against runs of batch 1 with that loss only (loss_on="last", no exponent shared with
    other samples): a ReLU cell of 2 units, whose dead steps cut some samples' chains."""
    rnn = gb.Recurrent(cell="rnn", activation="relu", steps=40, hidden=2, input_dim=2, loss="mse", loss_on="every",
                       output_dim=1, recurrent_init="normal", sigma_w=1.0)
    p, xs = gb.init_params(rnn, 2), gb.sequence_input(rnn, 8, 3)
    t = np.random.default_rng(4).uniform(0, 1, (40, 8, 1))
    res = gb.backprop(rnn, p, xs, t)
    last = rnn.replace(loss_on="last")
    cut = 0
    for b in range(8):
        one = gb.backprop(last, p, np.ascontiguousarray(xs[:, b:b + 1]), t[-1, b:b + 1])
        cut += not np.any(one.h0_grad.mantissa)
    assert 0 < cut < 8 and res.extras["lost_samples"] == cut
    assert f"{cut} of 8 samples lose the last step's loss's gradient on the way back" in " ".join(
        gb.diagnose(res).explanation.split())
    assert gb.backprop(rnn, p, xs, t, carried=False).extras["lost_samples"] is None


def test_report_table_and_run_figure_show_the_carried_terms_the_reach_reads():
    """The reach sentence is the carried pass's (dL_{T-1}/dW_hh) while the table's and the figure's
    dW_hh terms were the whole loss's only (flat at 10^-2 where the reach said 16 steps): the table's
    carried column and the figure's curve are the last-step net's terms / T (the NumPy reference)."""
    from gradbench.recurrent.plot import run_figure

    rnn, p, xs, y = _pair("rnn")
    res = gb.backprop(rnn, p, xs, y)
    last = gb.backprop(rnn.replace(loss_on="last"), p, xs, y[-1], backend="numpy")
    want = last.grad_norm.log10() - math.log10(T)
    lines = str(gb.diagnose(res)).splitlines()
    head = next(i for i, line in enumerate(lines) if "carried term" in line)
    col = 4  # step, ||dL/dh_t||, carried, ||dW_hh term||, carried term, saturated
    rows = [line.split() for line in lines[head + 2:] if line.split() and line.split()[0].isdigit()]
    assert len(rows) == 12
    for row in rows:
        t, shown = int(row[0]), row[col]
        assert shown == ("0" if t == 0 else f"10^{want[t]:.2f}"), (t, shown, want[t])
    fig = run_figure(gb.diagnose(res))
    curve = [ln for ln in fig.axes[0].get_lines() if "dL_{T-1}/dW_hh" in ln.get_label()]
    assert len(curve) == 1
    np.testing.assert_allclose(curve[0].get_ydata()[1:], want[1:], rtol=0, atol=1e-12)
