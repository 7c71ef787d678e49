"""Figures' layout: legends off the tick labels, the phase diagram's colour bar in a caller's figure,
loss curves told apart without colour. Each is checked on the drawn figure (boxes after a draw)
or on the artists, the plotted values unchanged."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import gradbench as gb
from gradbench import plot

LONG = ("depth 40, width 16, leaky_relu (slope 0.2), he_normal, sigma_w=1.3, sigma_b=0.1, batch norm, "
        "residual every 2 (scale 0.5), clip value 1 on signal")


def _drawn(fig):
    """The figure drawn on an Agg canvas; its renderer."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _tick_label_boxes(ax, renderer):
    """The boxes of the tick labels drawn (get_ticklabels also has those of ticks outside the view)."""
    boxes = []
    for axis in (ax.xaxis, ax.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        for loc, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels()):
            if lo - 1e-9 * (hi - lo) <= loc <= hi + 1e-9 * (hi - lo) and t.get_visible() and t.get_text():
                boxes.append(t.get_window_extent(renderer))
    return boxes


def _assert_legend_clear_of_tick_labels(ax, renderer):
    box = ax.get_legend().get_window_extent(renderer)
    ticks = _tick_label_boxes(ax, renderer)
    assert ticks
    hit = [b for b in ticks if box.overlaps(b)]
    assert not hit, f"legend {box} covers tick labels {hit}"
    # and it is inside the axes, or under them, past the x axis's tick labels and label
    frame = ax.get_window_extent(renderer)
    inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    under = box.y1 <= min([ax.xaxis.label.get_window_extent(renderer).y0]
                          + [b.y0 for b in _tick_label_boxes(ax, renderer) if b.y1 <= frame.y0 + 1])
    assert inside or under, f"legend {box} reaches out of the axes {frame}"


def _diag(**kw):
    stack = gb.Stack(depth=12, width=8, **kw)
    return gb.diagnose(gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1), backend="numpy"))


def test_a_long_single_run_legend_does_not_cover_tick_labels():
    """`gradbench run --plot` labels its one line with the whole configuration, the verdict and both
    rates: the legend, at matplotlib's "best" place inside the axes, was wider than them and lay
    over the y tick labels (and off the figure's left edge)."""
    d = _diag(activation="tanh")
    fig = plot.gradient_flow({LONG: d})
    ax = fig.axes[0]
    renderer = _drawn(fig)
    _assert_legend_clear_of_tick_labels(ax, renderer)
    (label,) = [t.get_text() for t in ax.get_legend().get_texts()]
    assert label.startswith(LONG) and "dec/layer" in label  # the information kept
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), d.grad_log10)  # the values unchanged


def test_a_short_single_run_legend_stays_inside_the_axes():
    fig = plot.gradient_flow({"tanh": _diag(activation="tanh")})
    ax = fig.axes[0]
    renderer = _drawn(fig)
    assert ax.get_window_extent(renderer).contains(*ax.get_legend().get_window_extent(renderer).get_points()[0])
    _assert_legend_clear_of_tick_labels(ax, renderer)


def test_recurrent_gradient_through_time_long_label_clear_of_tick_labels():
    """The same for `gradbench compare --cells ... --plot`'s figure: one net, its label long."""
    from gradbench.recurrent.diagnose import diagnose
    from gradbench.recurrent.plot import signal_vs_steps_back

    rnn = gb.Recurrent(cell="rnn", steps=20, hidden=4)
    d = diagnose(gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 0), backend="numpy"))
    fig = signal_vs_steps_back({LONG: d})
    ax = fig.axes[0]
    _assert_legend_clear_of_tick_labels(ax, _drawn(fig))
    assert ax.get_legend().get_texts()[0].get_text().startswith(LONG)


@pytest.fixture(scope="module")
def trained():
    X, y = gb.datasets.moons(40, seed=0)
    out = []
    for depth, act in ((3, "sigmoid"), (3, "relu"), (4, "tanh")):
        stack = gb.Stack(depth=depth, width=6, input_dim=2, loss="bce", activation=act)
        out.append(gb.train(stack, X, y, epochs=30, batch_size=20, lr=0.1, backend="numpy"))
    return out


def test_ten_loss_curves_differ_in_more_than_colour(trained):
    """The demo's loss.png (10 runs) told its runs apart by colour alone: in greyscale, or to a
    reader who does not tell the colours apart, they were one kind of line. Each curve now has
    its own (line style, marker) pair, with markers drawn; the losses plotted are unchanged."""
    runs = {f"run {i}": trained[i % len(trained)] for i in range(10)}
    fig = plot.loss_curves(runs)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    lines = [ln for ln in lines if ln.get_label().startswith("run ")]
    assert len(lines) == 10
    cues = {(ln.get_linestyle(), ln.get_marker()) for ln in lines}
    assert len(cues) == 10, cues
    assert len({ln.get_linestyle() for ln in lines}) > 1 and len({ln.get_marker() for ln in lines}) == 10
    assert all(ln.get_marker() not in ("None", "", None, " ") for ln in lines)
    assert "--" not in {ln.get_linestyle() for ln in lines}  # dashed is the chance line's
    for i, ln in enumerate(lines):
        want = np.asarray(trained[i % len(trained)].eval_loss)  # before training and after each epoch
        np.testing.assert_array_equal(ln.get_ydata(), want)
        np.testing.assert_array_equal(ln.get_xdata(), np.arange(len(want)))
    # the legend shows each entry's marker too
    handles = ax.get_legend().legend_handles
    assert {h.get_marker() for h in handles if h.get_label().startswith("run ")} == {ln.get_marker() for ln in lines}


@pytest.mark.parametrize("figsize", [(6.4, 4.8), (12.0, 5.0)])
def test_phase_diagram_colour_bar_label_clear_of_the_callers_axes(figsize):
    """phase_diagram(table, ax=[ax1, ax2]) on a plain figure (plt.figure(), no layout engine):
    the colour bar's label lay over the scatter's y label and tick labels."""
    from gradbench.plot_sweep import phase_diagram
    from tests.test_sweep import _synthetic_table

    table = _synthetic_table(("tanh",))
    fig = Figure(figsize=figsize)
    a1, a2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    assert phase_diagram(table, ax=[a1, a2]) is fig
    renderer = _drawn(fig)
    bar = a1.collections[0].colorbar
    label = bar.ax.yaxis.label.get_window_extent(renderer)
    assert label.width > 0
    assert not label.overlaps(a2.get_tightbbox(renderer)), "colour bar label over the scatter panel"
    assert not label.overlaps(a1.get_window_extent(renderer)), "colour bar label over the heat map"
    for t in bar.ax.yaxis.get_ticklabels():
        if t.get_text():
            assert not t.get_window_extent(renderer).overlaps(a2.get_tightbbox(renderer))
    # the legends under the panels are on the figure, not cut off below it
    for a in (a1, a2):
        assert a.get_legend().get_window_extent(renderer).y0 >= 0
    # the values drawn are the table's
    values = np.ma.filled(a1.collections[0].get_array(), np.nan).ravel()
    assert np.isfinite(values).all()


def test_recurrent_training_runs_are_never_dashed_like_the_chance_line():
    # memory-lstm and exploding-rnn-clipped (the second run) were dashed beside "dashed: ln 2"
    from gradbench.recurrent.plot import training_figure
    from gradbench.recurrent.train import first_symbol, train_recurrent

    X, y = first_symbol(6, 16, seed=0)
    runs = {}
    for i, cell in enumerate(("rnn", "lstm", "gru", "rnn")):
        rnn = gb.Recurrent(cell=cell, steps=6, hidden=4, input_dim=2, loss="bce")
        runs[f"{cell} {i}"] = train_recurrent(rnn, X, y, X, y, epochs=1, backend="numpy")
    ax = training_figure(runs).axes[0]
    styles = {ln.get_label(): ln.get_linestyle() for ln in ax.get_lines() if ln.get_label() in runs}
    assert len(styles) == 4 and "--" not in styles.values(), styles
    assert [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]  # the chance line, alone dashed


def test_a_recurrent_run_figure_keeps_coinciding_curves_visible_and_says_why_step_0_is_zero():
    """An rnn's ||dL/dh_t|| lay exactly under its dW_hh terms (same width): invisible; the exact
    zero of step 0's term (h_{-1} = 0) was a triangle with no word."""
    from gradbench.recurrent.plot import run_figure

    rnn = gb.Recurrent(cell="rnn", steps=300, hidden=8)
    fig = run_figure(gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1)))
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("||")]
    assert [ln.get_label() for ln in lines] == ["||dL/dh_t||", "||step t's dW_hh term|| (0 at step 0 from h_{-1} = 0)"]
    assert lines[0].get_linewidth() > lines[1].get_linewidth()  # the one drawn first is wider
