"""Plots that left exact zeros, non-finite values or a divergence off without a word (review of
the plots): each is now marked where gradbench marks such values (a strip of markers under the
x axis, in the line's colour: triangles for exact zeros, crosses for NaN/inf) and said in words.

Every test computes what should be marked from the numbers with NumPy (or from an independent
plain backward pass) and reads the figure's artists."""

import dataclasses
import json
import math

import numpy as np
import pytest

import gradbench as gb
from gradbench import cli, plot
from gradbench.cli.theory import fit_window
from tests import naive

LN2 = math.log(2)


def _markers(ax, marker):
    return [ln for ln in ax.lines if ln.get_marker() == marker and ln.get_linestyle() == "None"]


def _below_axis(ax, line) -> bool:
    """Every point of ``line`` is drawn under the axes' bottom edge (at no y value of the scale),
    between its left and right edges."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(ax.figure).draw()
    xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
    px, py = line.get_transform().transform(xy).T
    (left, bottom), (right, _) = ax.transAxes.transform([(0, 0), (1, 1)])
    return bool(np.all(py < bottom) and np.all((left <= px) & (px <= right)))


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _capture(monkeypatch, module, name):
    """Wrap ``module.name`` (a plot function the CLI calls) to keep its arguments and figure."""
    real, seen = getattr(module, name), []

    def wrapper(*args, **kw):
        fig = real(*args, **kw)
        seen.append((args, kw, fig))
        return fig

    monkeypatch.setattr(module, name, wrapper)
    return seen


def _ranges(layers) -> str:
    """'0-21' for consecutive layers (the tests' own spelling of a contiguous block)."""
    layers = list(layers)
    assert layers == list(range(layers[0], layers[-1] + 1)), layers
    return f"{layers[0]}-{layers[-1]}"


# ------------------------------------------------------------------ 1. theory --plot
def test_theory_says_and_marks_its_exactly_zero_layers_and_the_layers_it_fitted(tmp_path, monkeypatch, capsys):
    """The review's case: the simulated signal is exactly 0 at layers 0-21, yet the text and the
    band said 'fitted layers 4-35' while the slope came from layers 22-35, and the zero layers
    had no marker (the line just started at 22)."""
    seen = _capture(monkeypatch, plot, "theory_vs_simulation")
    code = cli.main(["theory", "--activation", "relu", "--sigma-w", "1.4", "--sigma-b", "1", "--depth", "40",
                     "--width", "3", "--batch", "2", "--seed", "2", "--plot", str(tmp_path / "x.png"),
                     "--out", str(tmp_path / "x.json")])
    out = capsys.readouterr().out
    assert code == 0
    ((res, *_), _, fig), = seen
    s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
    zero = np.flatnonzero(s == -np.inf)
    lo, hi = fit_window(40)
    used = np.array([l for l in range(lo, hi) if np.isfinite(s[l])])
    assert list(zero) == list(range(22)) and (lo, hi) == (4, 36) and list(used) == list(range(22, 36))  # the case
    # the text: the layers fitted (both lines) and the layers exactly 0
    assert f"fitted over layers {_ranges(used)} as the simulation" in out
    assert f"fitted over layers {_ranges(used)} (prediction" in out
    assert f"exactly 0 at layers {_ranges(zero)}" in out and "layers 4-35" not in out
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["along_stack"]["fit_layers"] == [int(used[0]), int(used[-1])]
    assert data["simulated_decades_per_layer"] == pytest.approx(-np.polyfit(used, s[used], 1)[0], rel=1e-12)
    # the plot: a triangle under the axis at each zero layer, the band over the layers fitted
    ax = fig.axes[0]
    (marks,) = _markers(ax, "v")
    np.testing.assert_array_equal(marks.get_xdata(), zero)
    assert _below_axis(ax, marks)
    labels = _legend(ax)
    assert f"fitted layers {_ranges(used)}" in labels
    assert any(t.startswith("exact zero") and "below the axis" in t for t in labels)


def test_theory_plot_band_and_markers_from_an_independent_backward():
    """Called with a window that starts among exactly-zero layers, the plot names the layers of
    the window that have a signal, and marks the zero ones (from a plain NumPy backward)."""
    stack = gb.Stack(depth=12, width=8, activation="relu", init="he_normal", sigma_b=0.5)
    params = gb.init_params(stack, 0)
    params.b[:] = np.abs(params.b) + 0.5
    params.b[5] = -100.0  # layer 5 dead: no signal reaches layers 0-4
    x = gb.gaussian_input(stack, 4, 1)
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    with np.errstate(all="ignore"):
        _, _, signal = naive.backward(stack, P, np.asarray(x, dtype=np.float64))
    zero = np.flatnonzero(np.asarray(signal) == 0)
    assert len(zero) >= 3 and zero[0] == 0
    res = gb.backprop(stack, params, x, backend="numpy")
    ax = plot.theory_vs_simulation(res, -0.01, window=(1, 11)).axes[0]
    (marks,) = _markers(ax, "v")
    np.testing.assert_array_equal(marks.get_xdata(), zero)
    first = zero[-1] + 1
    assert f"fitted layers {first}-10" in _legend(ax)


def test_a_fit_needs_three_layers_with_a_signal():
    from gradbench.cli.theory import fitted_layers

    s = np.full(40, -np.inf)
    s[30:32] = 0.5  # two finite layers inside the window 4-35: no slope worth the name
    assert fitted_layers(s, 40).size == 0
    s[29] = 0.4
    assert list(fitted_layers(s, 40)) == [29, 30, 31]


# ------------------------------------------------------------------ 2. compare --plot (recurrent)
def test_compare_plot_marks_the_steps_whose_signal_is_exactly_zero(tmp_path, monkeypatch, capsys):
    """The review's case: the relu rnn's signal is exactly 0 at 93 steps; its line just ended."""
    from gradbench.recurrent import plot as rplot

    seen = _capture(monkeypatch, rplot, "signal_vs_steps_back")
    code = cli.main(["compare", "--cells", "rnn,gru", "--activation", "relu", "--hidden", "2", "--batch", "1",
                     "--steps", "200", "--seed", "0", "--plot", str(tmp_path / "c.png")])
    capsys.readouterr()
    assert code == 0
    ((diags, *_), _, fig), = seen
    s = np.asarray(diags["rnn"].signal_log10, dtype=np.float64)
    back = 199 - np.arange(200)
    zero_back = np.sort(back[s == -np.inf])
    assert zero_back.size == 93
    ax = fig.axes[0]
    (marks,) = _markers(ax, "v")
    np.testing.assert_array_equal(np.sort(marks.get_xdata()), zero_back)
    assert _below_axis(ax, marks)
    rnn_line = next(ln for ln in ax.lines if ln.get_label().startswith("rnn"))
    assert marks.get_color() == rnn_line.get_color()
    labels = _legend(ax)
    assert any(t.startswith("rnn") and "93 steps exactly 0" in t for t in labels)
    assert any(t.startswith("exact zero") and "below the axis" in t for t in labels)
    # the rate as the table prints it: 4 decimals
    rate = diags["rnn"].decades_per_step
    assert any(f"{rate:+.4f} dec/step" in t for t in labels if t.startswith("rnn"))


# ------------------------------------------------------------------ 3. train --demo (recurrent)
@pytest.fixture(scope="module")
def demos():
    from gradbench.recurrent.train import run_recurrent_demo

    return {n: run_recurrent_demo(n, epochs=3, backend="numpy") for n in ("exploding-rnn", "exploding-rnn-clipped")}


def test_training_figure_shows_the_diverged_run_as_diverged(demos):
    """The diverged run was a one-point line (nothing drawn) with no marker and no word."""
    from gradbench.recurrent import plot as rplot

    r = demos["exploding-rnn"]
    assert r.diverged_epoch is not None
    loss = np.asarray(r.eval_loss, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(loss))
    fig = rplot.training_figure(demos)
    ax = fig.axes[0]
    line = next(ln for ln in ax.lines if ln.get_label().startswith("exploding-rnn ") or ln.get_label() == "exploding-rnn")
    assert f"diverged in epoch {r.diverged_epoch + 1}" in line.get_label()
    assert any("diverged" in t for t in _legend(ax))
    (cross,) = _markers(ax, "x")
    assert list(cross.get_xdata()) == [r.diverged_epoch + 1] and _below_axis(ax, cross)
    assert cross.get_color() == line.get_color()
    # its one finite point (before training) is visible: a marker of its colour there
    assert finite.size == 1
    dots = [ln for ln in _markers(ax, "o") if ln.get_color() == line.get_color()]
    assert [(float(d.get_xdata()[0]), float(d.get_ydata()[0])) for d in dots] == [(finite[0], loss[finite[0]])]
    # a title, and the axes' words
    assert fig._suptitle is not None and fig._suptitle.get_text()
    assert ax.get_title() and fig.axes[1].get_title()


def _hlines(ax):
    return [float(ln.get_ydata()[0]) for ln in ax.lines
            if len(ln.get_ydata()) == 2 and ln.get_ydata()[0] == ln.get_ydata()[1] and ln.get_linestyle() != "None"]


def test_training_figure_draws_the_chance_level_of_the_loss_it_has(demos):
    """The line at ln 2 was drawn whatever the loss. bce (the demos'): ln 2, p = 1/2 knows
    nothing; mse: no level without the targets' mean, so no line."""
    from gradbench.recurrent import plot as rplot

    assert {r.rnn.loss for r in demos.values()} == {"bce"}
    ax = rplot.training_figure(demos).axes[0]
    assert any(abs(y - LN2) < 1e-12 for y in _hlines(ax)) and "ln 2" in ax.get_ylabel()
    mse = {n: dataclasses.replace(r, rnn=dataclasses.replace(r.rnn, loss="mse")) for n, r in demos.items()}
    ax = rplot.training_figure(mse).axes[0]
    assert not any(abs(y - LN2) < 1e-12 for y in _hlines(ax)) and "ln 2" not in ax.get_ylabel()


# ------------------------------------------------------------------ 4b. loss_curves' divergence cross
def test_loss_curves_divergence_cross_has_no_height_on_the_loss_scale():
    """The cross of a run whose first epoch diverged was drawn at its held-out loss before
    training (eval_loss[0]) on the mini-batch loss axis. Now it lies under the axis at the
    epoch where the loss is not finite."""
    X, y = gb.datasets.moons(60, seed=0)
    stack = gb.Stack(depth=10, width=16, input_dim=2, loss="bce", activation="relu", init="normal", sigma_w=4.0)
    r = gb.train(stack, X, y, epochs=4, batch_size=10, lr=0.3, backend="numpy")
    e = int(np.flatnonzero(~np.isfinite(r.loss))[0])
    assert r.diverged_epoch == e
    ax = plot.loss_curves({"exploding": r}).axes[0]
    crosses = [ln for ln in ax.lines if ln.get_marker() in ("x", "X")]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [e + 1]
    assert _below_axis(ax, crosses[0])
    assert any(f"diverged in epoch {e + 1}" in t for t in _legend(ax))


# ------------------------------------------------------------------ 4c. nothing finite to show
def _dead_top():
    stack = gb.Stack(depth=6, width=4, activation="relu", init="he_normal")
    params = gb.init_params(stack, 0)
    params.b[5] = -100.0  # the top layer dead: dW_l = 0 at every layer
    return stack, params, gb.backprop(stack, params, gb.gaussian_input(stack, 4, 1), backend="numpy")


def test_a_run_without_a_finite_gradient_says_so_instead_of_inventing_a_range():
    stack, params, res = _dead_top()
    g = np.asarray(res.grad_norm.log10(), dtype=np.float64)
    assert np.all(g == -np.inf)
    ax = plot.gradient_flow(res).axes[0]
    assert len(ax.get_yticks()) == 0
    assert any("no finite" in t.get_text() for t in ax.texts)
    (marks,) = _markers(ax, "v")
    np.testing.assert_array_equal(marks.get_xdata(), np.arange(6))


def test_a_heatmap_without_a_finite_entry_says_so_instead_of_a_colour_bar():
    """Its colour bar read -0.1 ... 0.1, a range of nothing."""
    stack, params, res = _dead_top()
    assert np.all(np.asarray(res.grad_norm.log10(), dtype=np.float64) == -np.inf)
    fig = plot.histogram_heatmap(res)
    assert len(fig.axes) == 1  # no colour bar over a made-up range
    assert any("no finite" in t.get_text() for t in fig.axes[0].texts)


# ------------------------------------------------------------------ 4d. float32 in the titles
def test_float32_runs_say_so_in_the_title():
    stack = gb.Stack(depth=8, width=4, activation="tanh", dtype="float32")
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1), backend="numpy")
    assert "float32" in plot.gradient_flow({"tanh": res}, title="Gradient flow, depth 8").axes[0].get_title()
    assert "float32" in plot.histogram_heatmap(res).axes[0].get_title()
    d = gb.diagnose(res)
    assert "float32" in plot.histogram_heatmap(d, relative=False).axes[0].get_title()
    s64 = gb.Stack(depth=8, width=4, activation="tanh")
    r64 = gb.backprop(s64, gb.init_params(s64, 0), gb.gaussian_input(s64, 4, 1), backend="numpy")
    ax = plot.gradient_flow({"a": res, "b": r64}).axes[0]
    assert "float32" not in ax.get_title() and "a, float32" in " ".join(_legend(ax))


# ------------------------------------------------------------------ 4e. line markers unlike the strip's
def test_line_markers_do_not_look_like_the_non_finite_cross():
    """Line 6 of a flow plot had the marker 'X', the non-finite cross 'x' drawn bolder."""
    base = gb.diagnose(gb.backprop(gb.Stack(depth=6, width=3), gb.init_params(gb.Stack(depth=6, width=3), 0),
                                   gb.gaussian_input(gb.Stack(depth=6, width=3), 2, 1), backend="numpy"))
    ax = plot.gradient_flow({str(i): base for i in range(10)}).axes[0]
    line_markers = {ln.get_marker() for ln in ax.lines if ln.get_linestyle() != "None"}
    assert len(line_markers) == 10 and not line_markers & {"x", "X", "v", "+"}


def test_a_refused_fit_names_the_dead_layer_that_stops_the_signal(tmp_path, monkeypatch, capsys):
    """ReLU at width 2: the signal is exactly 0 at every layer because the top layer is dead; the
    sentence named the lowest dead layer (2), which stops nothing above it."""
    import re

    seen = _capture(monkeypatch, plot, "theory_vs_simulation")
    code = cli.main(["theory", "--activation", "relu", "--width", "2", "--depth", "200", "--plot",
                     str(tmp_path / "d.png")])
    out = capsys.readouterr().out
    assert code == 0
    ((res, *_), _, fig), = seen
    s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
    zero = np.flatnonzero(s == -np.inf)
    m = re.search(r"every unit of layer (\d+) is dead \(z <= 0 for the whole batch\), so the signal is exactly 0 "
                  r"from layer (\d+) down", out)
    assert m, out
    named, top = int(m.group(1)), int(m.group(2))
    assert top == zero.max() and named >= top and np.asarray(res.dead)[named] >= 1
    labels = _legend(fig.axes[0])
    assert not any(t.startswith("fitted layers") for t in labels)  # nothing was fitted: no band
    (marks,) = _markers(fig.axes[0], "v")
    np.testing.assert_array_equal(marks.get_xdata(), zero)
    assert _below_axis(fig.axes[0], marks)  # inside the x range (it was -0.055..0.055, the marks far right)
    assert any("no finite" in t.get_text() for t in fig.axes[0].texts)


def test_a_refused_fit_names_the_layer_where_the_forward_pass_died(capsys):
    """A ReLU stack whose forward dies at layer 19 has every layer above it dead on h = 0; the
    refusal named only layer 59 (the top dead layer, which zeroes the signal first), not the
    cause. The lowest all-dead layer is found here with tests/naive.py's plain forward."""
    stack = gb.Stack(depth=60, width=4, activation="relu", sigma_w=1.4142)
    P = {k: np.asarray(v, dtype=np.float64) for k, v in gb.GeneratedParams(stack, 1).materialize().items()}
    x = np.asarray(gb.gaussian_input(stack, 2, seed=np.random.default_rng([1, 1])), dtype=np.float64)
    _, saved = naive.forward(stack, P, x)
    dead = [l for l, z in enumerate(saved["zs"]) if np.all(z <= 0)]
    first = dead[0]
    assert 0 < first < 59 and all(np.all(h == 0) for h in saved["hs"][first + 1:])
    code = cli.main(["theory", "--depth", "60", "--width", "4", "--activation", "relu", "--sigma-w", "1.4142",
                     "--batch", "2", "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0 and f"the forward pass died first: every unit of layer {first} is dead" in out


def test_chi1_along_the_stack_does_not_claim_the_simulations_layers_when_they_have_a_gap(monkeypatch, capsys):
    """The simulation fits its finite layers only; chi_1 along the stack is fitted over their
    span, which is 'as the simulation' only when no layer between was left out."""
    from gradbench.cli import theory as cli_theory

    argv = ["theory", "--activation", "tanh", "--sigma-w", "1.5", "--depth", "40", "--width", "16", "--batch", "4"]
    assert cli.main(argv) == 0
    assert "fitted over layers 4-35 as the simulation" in capsys.readouterr().out
    monkeypatch.setattr(cli_theory, "fitted_layers", lambda s, depth: np.r_[4:10, 20:36])
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "as the simulation" not in out and "fitted over layers 4-35 (the span of the simulation's" in out


# ------------------------------------------------------------------ 2b. run --cell --plot (recurrent)
def _plain_relu_rnn_signal(p, xs):
    """||dL/dh_t|| of a vanilla relu RNN under 0.5 ||h_(T-1)||^2, by a plain float64 loop (no
    rescaling: its exact zeros are the dead units' own, nothing here comes near underflow)."""
    h, zs, hs = np.zeros((xs.shape[1], p.W_hh.shape[0])), [], []
    for x in xs:
        z = x @ p.W_ih.T + p.b_ih + h @ p.W_hh.T + p.b_hh
        h = np.maximum(z, 0.0)
        zs.append(z)
        hs.append(h)
    g, norms = hs[-1].copy(), np.empty(len(xs))
    for t in range(len(xs) - 1, -1, -1):
        norms[t] = np.linalg.norm(g)
        g = (g * (zs[t] > 0)) @ p.W_hh
    return norms


@pytest.mark.parametrize("seed", [0, 3])  # seed 0: 20 of 30 steps exactly 0; seed 3: every step
def test_run_figure_marks_the_steps_whose_norms_are_exactly_zero(seed):
    """`gradbench run --cell rnn --activation relu ... --plot`: the steps whose ||dL/dh_t|| is exactly
    0 were dropped from the line without a mark or a word, and a run without any finite norm drew an
    empty panel over a made-up range (-0.04 ... 0.04)."""
    from gradbench.recurrent import plot as rplot
    from gradbench.recurrent.diagnose import diagnose

    rnn = gb.Recurrent(cell="rnn", steps=30, hidden=2, activation="relu", recurrent_init="normal")
    p, xs = gb.init_params(rnn, seed), gb.sequence_input(rnn, 1, seed)
    plain = _plain_relu_rnn_signal(p, xs)
    assert np.all((plain == 0) | (plain > 1e-200))
    zero_steps = np.flatnonzero(plain == 0)
    assert zero_steps.size == (20 if seed == 0 else 30)
    ax = rplot.run_figure(diagnose(gb.backprop(rnn, p, xs))).axes[0]
    signal = next(ln for ln in ax.lines if ln.get_label() == "||dL/dh_t||")
    marks = [ln for ln in _markers(ax, "v") if ln.get_color() == signal.get_color()]
    assert len(marks) == 1
    np.testing.assert_array_equal(np.sort(marks[0].get_xdata()), zero_steps)
    assert _below_axis(ax, marks[0])
    # every step is either on the line or marked: none left out without a word
    drawn = np.flatnonzero(np.isfinite(np.asarray(signal.get_ydata(), dtype=float)))
    np.testing.assert_array_equal(np.sort(np.r_[drawn, zero_steps]), np.arange(30))
    assert any(t.startswith("exact zero") and "below the axis" in t for t in _legend(ax))
    if zero_steps.size == 30:
        assert len(ax.get_yticks()) == 0
        assert any("no finite" in t.get_text() for t in ax.texts)


def test_float32_recurrent_runs_say_so_in_the_title():
    """`compare --cells rnn,lstm,gru --dtype float32 --plot` and `run --cell gru --dtype float32 --plot`
    said float32 nowhere (the stacks' figures put it in the title); a mixed pair says it per line."""
    from gradbench.recurrent import plot as rplot
    from gradbench.recurrent.diagnose import diagnose

    def run(dtype):
        rnn = gb.Recurrent(cell="gru", steps=12, hidden=4, dtype=dtype)
        return diagnose(gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 0), backend="numpy"))

    f32, f64 = run("float32"), run("float64")
    assert "float32" in rplot.signal_vs_steps_back({"gru": f32}).axes[0].get_title()
    assert "float32" in rplot.run_figure(f32).axes[0].get_title()
    assert "float32" not in rplot.signal_vs_steps_back({"gru": f64}).axes[0].get_title()
    ax = rplot.signal_vs_steps_back({"a": f32, "b": f64}).axes[0]
    labels = _legend(ax)
    assert any(t.startswith("a, float32") for t in labels) and not any("float32" in t for t in labels if t.startswith("b"))
