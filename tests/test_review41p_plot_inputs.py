"""Plot functions refuse input of the wrong kind or out of range with a TypeError/ValueError naming
the parameter and what it takes, before drawing anything (review 41, item 5): they were raw
AttributeErrors, a NumPy ufunc or broadcast error, a line that was not drawn beside "+nan decades
per layer", and windows cut or ignored in silence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

import gradbench as gb
from gradbench import plot
from gradbench.recurrent import plot as rplot


@pytest.fixture(scope="module")
def runs():
    stack = gb.Stack(depth=10, width=4)
    p = gb.init_params(stack, 0)
    res = gb.backprop(stack, p, gb.gaussian_input(stack, 3, 1))
    rnn = gb.Recurrent(cell="lstm", steps=8, hidden=3, input_dim=2)
    rres = gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1))
    return dict(res=res, diag=gb.diagnose(res, p), rres=rres, rdiag=gb.diagnose(rres))


def _refused(call, error, *words):
    fig = Figure()
    ax = fig.add_subplot()
    with pytest.raises(error) as info:
        call(ax)
    text = str(info.value)
    for w in words:
        assert w in text, text
    assert not ax.lines and not ax.collections  # nothing drawn first
    return text


def test_wrong_kinds_are_type_errors_naming_the_parameter(runs):
    r = runs
    _refused(lambda ax: plot.gradient_flow(r["rdiag"], ax=ax), TypeError, "data must be a Diagnosis or Result",
             "RecurrentDiagnosis", "signal_vs_steps_back")
    _refused(lambda ax: plot.gradient_flow({"a": r["diag"], "b": r["rres"]}, ax=ax), TypeError,
             "data['b'] must be a Diagnosis or Result", "RecurrentResult")
    _refused(lambda ax: plot.histogram_heatmap(r["rres"], ax=ax), TypeError,
             "item must be a Result, Diagnosis or RelativeHistograms", "RecurrentResult")
    _refused(lambda ax: plot.loss_curves(r["res"], ax=ax), TypeError, "data must be a TrainResult", "got Result")
    _refused(lambda ax: plot.update_ratio_curves(r["diag"], ax=ax), TypeError, "data must be a TrainResult",
             "got Diagnosis")
    _refused(lambda ax: plot.theory_vs_simulation(r["diag"], 0.1, ax=ax), TypeError, "res must be a Result",
             "got Diagnosis")
    with pytest.raises(TypeError, match=r"^d must be a RecurrentDiagnosis or RecurrentResult .*got Diagnosis"):
        rplot.run_figure(r["diag"])
    with pytest.raises(TypeError, match=r"^data must be a RecurrentDiagnosis or RecurrentResult .*got Diagnosis"):
        rplot.signal_vs_steps_back(r["diag"])
    with pytest.raises(ValueError, match="data is an empty dict"):
        rplot.signal_vs_steps_back({})
    with pytest.raises(ValueError, match="data is empty"):
        plot.gradient_flow({})


def test_one_recurrent_item_is_taken_alone(runs):
    """signal_vs_steps_back of one diagnosis or result, as gradient_flow takes one item; run_figure of
    a result: the drawn lines are the diagnosis's ||dL/dh_t|| and ||dL/dc_t|| by a plain log10 of the
    result's norms."""
    r = runs
    for item in (r["rdiag"], r["rres"]):
        (line,) = [ln for ln in rplot.signal_vs_steps_back(item).axes[0].lines]
        assert line.get_label().startswith(r["rdiag"].verdict)
    ax = rplot.run_figure(r["rres"]).axes[0]
    h = np.log10(r["rres"].signal_norm.to_float())
    np.testing.assert_allclose(ax.lines[0].get_ydata(), h, rtol=1e-12)


def test_theory_vs_simulation_refuses_bad_numbers(runs):
    res = runs["res"]
    _refused(lambda ax: plot.theory_vs_simulation(res, "0.1", ax=ax), TypeError, "prediction must be a real number",
             "'0.1'")
    _refused(lambda ax: plot.theory_vs_simulation(res, math.nan, ax=ax), ValueError, "prediction must be finite")
    _refused(lambda ax: plot.theory_vs_simulation(res, -0.1, curve=np.zeros(7), ax=ax), ValueError,
             "curve must have shape (10,)", "(7,)")
    _refused(lambda ax: plot.theory_vs_simulation(res, -0.1, curve="abc", ax=ax), TypeError, "curve must be an array")
    for window in ((3, 99), (7, 2), (-5, 4), (3, 3), (1.0, 5), (1, 2, 3), "0-5"):
        _refused(lambda ax: plot.theory_vs_simulation(res, -0.1, window=window, ax=ax), ValueError,
                 "window must be None or a pair of whole numbers (lo, hi)", "0 <= lo < hi <= 10", repr(window))


def test_a_valid_window_places_the_prediction_by_least_squares_over_it(runs):
    """The window (3, 10) is taken as given: the drawn prediction's mean over layers 3-9 is the
    simulation's there (plain NumPy from the result's log10 ||dL/dh_l||), its slope the prediction."""
    res = runs["res"]
    fig = plot.theory_vs_simulation(res, -0.1, window=(3, 10))
    ax = fig.axes[0]
    s = np.log10(res.signal_norm.to_float())
    theory = next(ln for ln in ax.lines if ln.get_label().startswith("theory"))
    y = np.asarray(theory.get_ydata(), dtype=np.float64)
    assert abs(y[3:].mean() - s[3:].mean()) < 1e-12 and np.allclose(np.diff(y), 0.1)
    assert any(p.get_label() == "fitted layers 3-9" for p in ax.patches)
