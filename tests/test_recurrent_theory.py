"""Theory beside simulation at T = 10^4 steps: the per-step rate of ||dL/dh_t|| going back."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradbench as gb
from gradbench.recurrent import backends as rbackends
from gradbench.recurrent.theory import measured_rate, predicted_rate

BACKEND = "c" if "c" in rbackends.backends() else "numpy"


def _run(steps=10_000, hidden=16, batch=4, **fields):
    rnn = gb.Recurrent(cell="rnn", steps=steps, hidden=hidden, input_dim=4, **fields)
    params = gb.init_params(rnn, 0)
    res = gb.backprop(rnn, params, gb.sequence_input(rnn, batch, 1), backend=BACKEND)
    return rnn, params, res


@pytest.mark.parametrize("init, gain", [("normal", 1.0), ("normal", 1.3), ("xavier_normal", 0.8)])
def test_linear_cell_rate_is_the_log_spectral_radius(init, gain):
    """A tied W_hh: the rate is log10 rho(W_hh) exactly (not Newman's lambda_1 of untied products)."""
    rnn, params, res = _run(activation="identity", recurrent_init=init, sigma_w=gain)
    pred = predicted_rate(rnn, params)
    got = measured_rate(res)
    assert abs(got - pred.decades_per_step) <= 1e-3, (got, pred)
    assert res.forward_rescaled and np.all(np.isfinite(res.signal_norm.log10()))


@pytest.mark.parametrize("init", ["orthogonal", "identity"])
def test_norm_preserving_linear_cells_have_rate_zero(init):
    rnn, params, res = _run(activation="identity", recurrent_init=init)
    assert predicted_rate(rnn).decades_per_step == 0.0
    s = res.signal_norm.log10()
    # orthogonal / identity W_hh preserve ||dL/dh|| exactly at every step (to rounding)
    assert np.max(np.abs(np.diff(s))) <= 1e-12
    assert abs(measured_rate(res)) <= 1e-14


def test_newman_is_the_untied_rate_not_the_tied_one():
    """For contrast: the same W_hh at every step has the rate log10 rho(W) of that draw, which varies
    from draw to draw at small width; Newman's lambda_1 (independent draws) is one number."""
    rates, newman = [], set()
    for seed in range(4):
        rnn = gb.Recurrent(cell="rnn", activation="identity", recurrent_init="normal", steps=5000, hidden=8,
                           input_dim=4)
        params = gb.init_params(rnn, seed)
        res = gb.backprop(rnn, params, gb.sequence_input(rnn, 2, 1), backend=BACKEND)
        pred = predicted_rate(rnn, params)
        assert abs(measured_rate(res) - pred.decades_per_step) <= 2e-3
        rates.append(pred.decades_per_step)
        newman.add(pred.newman_untied)
    assert len(newman) == 1 and max(rates) - min(rates) > 0.01


@pytest.mark.parametrize("gain, init", [(0.5, "normal"), (1.0, "normal"), (1.0, "orthogonal"), (2.0, "normal")])
def test_tanh_cell_rate_against_mean_field(gain, init):
    """Mean field (chi_1 with sigma_w on W_hh, the input as the bias) at N = 64: within 15 %."""
    rnn, params, res = _run(activation="tanh", recurrent_init=init, sigma_w=gain, hidden=64, batch=2)
    pred = predicted_rate(rnn, params).decades_per_step
    got = measured_rate(res)
    assert (pred < 0) == (got < 0) == (gain < 1.5)  # vanishing below the edge of chaos, exploding above
    assert abs(got - pred) <= 0.15 * abs(pred) + 0.005, (got, pred)


def test_gated_cells_have_no_closed_form():
    p = predicted_rate(gb.Recurrent(cell="lstm", steps=5, hidden=3))
    assert p.decades_per_step is None and "lstm" in p.method


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_identity_w_hh_gets_no_mean_field_prediction(act):
    """Mean field describes a random W_hh; W_hh = I (relu: h_t = relu(h_{t-1} + input), tied and
    deterministic) is not covered. It predicted -0.15 decades per step for relu (chi_1 = 0.5 at
    gain 1) while the measured rate is ~0: no number, the reason instead."""
    rnn, params, res = _run(activation=act, recurrent_init="identity", hidden=16, steps=2000, batch=2)
    for p in (predicted_rate(rnn, params), predicted_rate(rnn)):
        assert p.decades_per_step is None and "identity" in p.method and "orthogonal" in p.method
    if act == "relu":
        assert abs(measured_rate(res)) < 0.01  # far from the mean-field -0.150515 it used to print


def test_random_inits_keep_their_mean_field_prediction():
    for init in ("normal", "orthogonal", "he_normal"):
        p = predicted_rate(gb.Recurrent(cell="rnn", activation="relu", recurrent_init=init, steps=5, hidden=8))
        assert p.decades_per_step is not None and "mean field" in p.method


@pytest.mark.parametrize("act, gain", [("gelu", 1.5), ("swish", 1.6)])
def test_bistable_cells_start_from_the_first_steps_input_variance(act, gain):
    """h_{-1} = 0: the first pre-activation is the input term alone (std 0.23 with 2 inputs into 64
    units), below the point between GELU's / swish's two attractors at these gains: vanishing.
    Started from q0 = 1 GELU read +0.0256 (exploding); from gain^2 + std^2 swish read +0.0536."""
    rnn = gb.Recurrent(cell="rnn", steps=2000, hidden=64, input_dim=2, activation=act, recurrent_init="normal",
                       sigma_w=gain)
    params = gb.init_params(rnn, 0)
    res = gb.backprop(rnn, params, gb.sequence_input(rnn, 4, 1), backend=BACKEND)
    pred = predicted_rate(rnn, params)
    from gradbench import theory

    two = theory.bistability(act, gain, pred.input_std)
    assert two is not None and pred.input_std**2 < two.q_separatrix < gain**2  # (gelu: < 1 too)
    assert pred.decades_per_step < 0 and measured_rate(res) < -0.05
    assert abs(measured_rate(res) - pred.decades_per_step) < 0.04  # tied W_hh: mean field within ~40 %


def test_theory_plot_draws_the_prediction_and_calls_one_number_measured(tmp_path, monkeypatch, capsys):
    """`gradbench theory --cell rnn ... --plot`: the prediction was only in the title, and the title's
    'measured' rate (fitted away from both ends) sat beside a legend entry 'measured (..., -0.0616
    dec/step)', another fit of the same curve (tanh, gain 1.5, hidden 32: -0.06207 and -0.0616). A
    linear cell with W_hh = 0.9 x orthogonal multiplies ||dL/dh|| by exactly 0.9 a step: log10 0.9."""
    import re

    from gradbench import cli
    from gradbench.recurrent import plot as rplot

    figs = []
    real = rplot.save
    monkeypatch.setattr(rplot, "save", lambda fig, path, dpi=120: figs.append(fig) or real(fig, path, dpi))
    T = 100
    assert cli.main(["theory", "--cell", "rnn", "--activation", "identity", "--recurrent-init", "orthogonal",
                     "--sigma-w", "0.9", "--hidden", "8", "--steps", str(T), "--plot", str(tmp_path / "t.png")]) == 0
    capsys.readouterr()
    (fig,) = figs
    ax = fig.axes[0]
    rate = math.log10(0.9)
    (dashed,) = [ln for ln in ax.lines if ln.get_linestyle() == "--" and len(ln.get_xdata()) == T]
    np.testing.assert_allclose(np.polyfit(dashed.get_xdata(), dashed.get_ydata(), 1)[0], rate, rtol=1e-9)
    (sim,) = [ln for ln in ax.lines if ln.get_label().startswith("simulated")]
    back, s = np.asarray(sim.get_xdata(), dtype=float), np.asarray(sim.get_ydata(), dtype=float)
    skip = T // 20
    window = (back >= skip) & (back <= T - 1 - skip)
    # the prediction sits on the simulated norms over the fitted steps (the same mean there)
    np.testing.assert_allclose(np.mean(np.asarray(dashed.get_ydata())[window]), np.mean(s[window]), atol=1e-9)
    # the title's measured rate is the fit of the drawn curve over those steps
    measured = float(re.search(r"measured ([-+0-9.e]+)", ax.get_title()).group(1))
    fitted = np.polyfit(back[window], s[window], 1)[0]
    assert abs(measured - fitted) < 1e-3 and abs(fitted - rate) < 1e-9
    assert not any("measured" in t.get_text() for t in ax.get_legend().get_texts())


def test_theory_plot_of_a_cell_without_a_prediction_says_so(tmp_path, monkeypatch, capsys):
    import re

    # the title read "lstm: measured -0.08 (steps back 10-189) vs predicted none dec/step"
    from gradbench import cli
    from gradbench.recurrent import plot as rplot

    figs = []
    real = rplot.save
    monkeypatch.setattr(rplot, "save", lambda fig, path, dpi=120: figs.append(fig) or real(fig, path, dpi))
    assert cli.main(["theory", "--cell", "lstm", "--hidden", "8", "--steps", "200", "--plot", str(tmp_path / "t.png")]) == 0
    assert "prediction: none: no closed form for the lstm cell" in capsys.readouterr().out
    title = figs[0].axes[0].get_title()
    assert "vs no prediction for the lstm cell\n" in title and "none" not in title, title
    assert re.search(r"measured [-+0-9.e]+ dec/step \(steps back 10-189\)", title), title
