"""An LSTM's gradient-through-time figure and compare --cells table show the curve its verdict and
rate read: the backward state's norm sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2), checked against torch
autograd and a plain NumPy least-squares fit (review 41, item 1)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import gradbench as gb
from gradbench.cli import main

torch = pytest.importorskip("torch")


def _reviewer_case():
    rnn = gb.Recurrent(cell="lstm", steps=30, hidden=6, input_dim=3, forget_bias=8.0, sigma_w=1e-3)
    p = gb.init_params(rnn, seed=0)
    xs = gb.sequence_input(rnn, batch=5, seed=1)
    return rnn, p, xs


def _torch_norms(p, xs):
    """log10 ||dL/dh_t|| and ||dL/dc_t|| (the totals) per step, L = 0.5 ||h_{T-1}||^2, by an
    LSTMCell loop in float64 with retain_grad on every h_t and c_t."""
    T, B, D = xs.shape
    N = p.W_hh.shape[1]
    cell = torch.nn.LSTMCell(D, N, dtype=torch.float64)
    with torch.no_grad():
        for ours, theirs in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
            getattr(cell, theirs).copy_(torch.from_numpy(np.asarray(getattr(p, ours), dtype=np.float64)))
    h = torch.zeros(B, N, dtype=torch.float64)
    c = torch.zeros(B, N, dtype=torch.float64)
    hs, cs = [], []
    for t in range(T):
        h, c = cell(torch.from_numpy(np.asarray(xs[t], dtype=np.float64)), (h, c))
        h.retain_grad()
        c.retain_grad()
        hs.append(h)
        cs.append(c)
    (0.5 * (h ** 2).sum()).backward()
    return (np.log10([float(x.grad.norm()) for x in hs]), np.log10([float(x.grad.norm()) for x in cs]))


def _slope_back(y):
    """Least-squares change of y per step going back from the last step (np.polyfit)."""
    return -np.polyfit(np.arange(len(y)), y, 1)[0]


def test_the_drawn_lstm_curve_is_the_one_its_legend_rate_is_fitted_to():
    from gradbench.recurrent import plot as rplot

    rnn, p, xs = _reviewer_case()
    d = gb.diagnose(gb.backprop(rnn, p, xs, backend="numpy"))
    h, c = _torch_norms(p, xs)
    pair = np.log10(np.sqrt(10.0 ** (2 * h) + 10.0 ** (2 * c)))
    fig = rplot.signal_vs_steps_back({"lstm": d})
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.lines if not ln.get_label().startswith("_")]
    back, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata(), dtype=np.float64)
    drawn = y[np.argsort(-back)]  # step t = T-1-back
    # the drawn curve is the pair's, not ||dL/dh_t|| (torch: 10^0.41 at step 29, 10^-3.23 at 28)
    np.testing.assert_allclose(drawn, pair, atol=1e-9)
    assert abs(h[28] - (-3.23)) < 0.01 and abs(drawn[28] - h[28]) > 2.7
    rate = float(re.search(r"([+-]\d\.\d{4}) dec/step", line.get_label()).group(1))
    assert rate == round(_slope_back(pair), 4) == -0.0057  # the legend's rate is the drawn curve's fit
    assert "||(dL/dh_t, dL/dc_t)||" in ax.get_ylabel() and "sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2)" in ax.get_title()


def test_a_single_lstm_diagnosis_is_taken_without_a_dict():
    from gradbench.recurrent import plot as rplot

    rnn, p, xs = _reviewer_case()
    d = gb.diagnose(gb.backprop(rnn, p, xs, backend="numpy"))
    label = [ln.get_label() for ln in rplot.signal_vs_steps_back(d).axes[0].lines][0]
    assert label.startswith("stable, -0.0057 dec/step")


def test_compare_cells_columns_are_the_verdicts_curve(tmp_path, capsys):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    assert main(["compare", "--cells", "lstm,gru", "--steps", "30", "--hidden", "6", "--forget-bias", "8",
                 "--sigma-w", "1e-3", "--out", str(out), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    diags = json.loads(out.read_text())["diagnoses"]
    for cell in ("lstm", "gru"):
        d = diags[cell]
        h = np.array(d["signal_log10"], dtype=np.float64)
        want = h
        if cell == "lstm":  # the pair by plain NumPy from the two exact norms the file holds
            c = np.array(d["cell_log10"], dtype=np.float64)
            want = np.log10(np.sqrt(10.0 ** (2 * h) + 10.0 ** (2 * c)))
        row = next(r for r in text.splitlines() if r.startswith(cell + " "))
        cols = [float(v) for v in re.findall(r"10\^(-?\d+\.\d+)", row)]
        assert cols == [round(want[29 - b], 2) for b in (0, 1, 10, 29)], (cell, row)
        assert float(row.split()[2]) == round(_slope_back(want), 4)
    # the lstm row read "back 1 10^-3.07" (its ||dL/dh_t||) beside the pair's "stable -0.0049"
    assert "lstm: log10 ||(dL/dh_t, dL/dc_t)||" in " ".join(text.split())


def test_run_figure_draws_the_pair_its_title_verdict_reads():
    from gradbench.recurrent import plot as rplot

    rnn, p, xs = _reviewer_case()
    d = gb.diagnose(gb.backprop(rnn, p, xs, backend="numpy"))
    h, c = _torch_norms(p, xs)
    ax = rplot.run_figure(d).axes[0]
    assert ax.get_title().endswith(": stable")
    (line,) = [ln for ln in ax.lines if ln.get_label() == "||(dL/dh_t, dL/dc_t)||: the verdict's"]
    np.testing.assert_allclose(line.get_ydata(), np.log10(np.sqrt(10.0 ** (2 * h) + 10.0 ** (2 * c))), atol=1e-9)


def test_tensorboard_has_the_lstm_state_curve_its_verdict_text_reads(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from gradbench.tensorboard_io import write_diagnosis

    rnn, p, xs = _reviewer_case()
    write_diagnosis(gb.diagnose(gb.backprop(rnn, p, xs, backend="numpy")), tmp_path / "tb")
    acc = ea.EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    got = np.array([e.value for e in sorted(acc.Scalars("time/state_log10"), key=lambda e: e.step)])
    h, c = _torch_norms(p, xs)
    pair = np.log10(np.sqrt(10.0 ** (2 * h) + 10.0 ** (2 * c)))
    np.testing.assert_allclose(got, pair, rtol=1e-6, atol=1e-6)  # float32 scalars
    assert round(_slope_back(got), 4) == -0.0057  # the verdict text's rate is this curve's
