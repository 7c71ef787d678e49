"""gradbench.plot: the figures exist, are real images, and show the numbers they claim to."""

import math
import os

import numpy as np
import pytest

import gradbench as gb
from gradbench import plot
from tests import naive

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def diag(depth=20, width=8, **kw):
    stack = gb.Stack(depth=depth, width=width, **kw)
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1), backend="numpy")
    return gb.diagnose(res)


@pytest.fixture(scope="module")
def diags():
    return {
        "sigmoid": diag(activation="sigmoid"),
        "relu, He": diag(activation="relu", init="he_normal"),
        "tanh, N(0,1)": diag(activation="tanh", init="normal", sigma_w=np.sqrt(8)),
    }


@pytest.fixture(scope="module")
def runs():
    X, y = gb.datasets.moons(60, seed=0)
    out = {}
    for name, kw in {"deep": dict(depth=6, activation="sigmoid"), "relu": dict(depth=6, activation="relu",
                                                                                init="he_normal")}.items():
        stack = gb.Stack(width=8, input_dim=2, loss="bce", **kw)
        out[name] = gb.train(stack, X, y, epochs=8, batch_size=20, lr=0.1, backend="numpy")
    stack = gb.Stack(depth=10, width=16, input_dim=2, loss="bce", activation="relu", init="normal", sigma_w=4.0)
    out["exploding"] = gb.train(stack, X, y, epochs=8, batch_size=10, lr=0.3, backend="numpy")
    assert out["exploding"].diverged_epoch is not None
    return out


def is_png(path, min_bytes=10_000):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == PNG_MAGIC and os.path.getsize(path) >= min_bytes


def no_temp_files(directory):
    return not [f for f in os.listdir(directory) if f.startswith(".gradbench-")]


def test_gradient_flow_png_shows_the_exact_norms(tmp_path, diags):
    path = tmp_path / "flow.png"
    fig = plot.gradient_flow(diags, path, title="flow")
    assert is_png(path) and no_temp_files(tmp_path)
    ax = fig.axes[0]
    assert ax.get_title() == "flow" and "layer" in ax.get_xlabel() and "log" in ax.get_ylabel()
    lines = [ln for ln in ax.lines if len(ln.get_xdata()) == 20]
    assert len(lines) == 3
    np.testing.assert_allclose(lines[0].get_ydata(), diags["sigmoid"].grad_log10)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("sigmoid" in t and "vanishing" in t for t in labels)


def test_gradient_flow_accepts_results_and_draws_float_limits(tmp_path):
    stack = gb.Stack(depth=700, width=4, activation="sigmoid")
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1), backend="auto")
    fig = plot.gradient_flow(res, tmp_path / "deep.svg")
    text = (tmp_path / "deep.svg").read_text()
    assert "<svg" in text and len(text) > 10_000
    ax = fig.axes[0]
    ys = [ln.get_ydata()[0] for ln in ax.lines if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == 0]
    assert any(abs(y - (-307.65)) < 0.01 for y in ys)  # float64's smallest normal is inside the range
    assert min(ax.get_ylim()) < -400


def test_gradient_flow_marks_exactly_zero_gradients(tmp_path):
    d = diag(depth=12, width=3, activation="sigmoid")
    d = gb.Diagnosis.from_dict({**d.to_dict(), "grad_log10": ["-inf"] * 4 + list(d.grad_log10[4:])})
    fig = plot.gradient_flow({"dead": d}, tmp_path / "dead.png")
    assert is_png(tmp_path / "dead.png", 5_000)
    marks = [ln for ln in fig.axes[0].lines if ln.get_marker() == "v"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [0, 1, 2, 3]


def test_histogram_heatmap(tmp_path, diags):
    fig = plot.histogram_heatmap(diags["sigmoid"], tmp_path / "hist.png", relative=False)
    assert is_png(tmp_path / "hist.png")
    ax = fig.axes[0]
    assert "log" in ax.get_xlabel() and "layer" in ax.get_ylabel() and ax.get_title()
    assert len(fig.axes) == 2  # with a colour bar
    mesh = ax.collections[0]
    shown = np.ma.filled(mesh.get_array(), 0.0).reshape(diags["sigmoid"].hist_counts.shape)
    np.testing.assert_allclose(shown, diags["sigmoid"].hist_counts / 64.0)  # fraction of 8x8 entries


def test_loss_and_update_ratio_curves(tmp_path, runs):
    fig = plot.loss_curves(runs, tmp_path / "loss.png")
    assert is_png(tmp_path / "loss.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "epoch (0: before training)" and ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "deep" in labels and any("diverged" in t for t in labels)
    deep_line = next(ln for ln in ax.lines if ln.get_label() == "deep")
    # the whole data set's loss before training and after each epoch, as the summary prints it (the
    # mean of an epoch's mini-batch losses was drawn: 0.081 where the batchnorm demo printed 0.0168)
    np.testing.assert_allclose(deep_line.get_ydata(), runs["deep"].eval_loss)
    np.testing.assert_allclose(deep_line.get_xdata(), np.arange(len(runs["deep"].eval_loss)))
    assert runs["deep"].final_loss == deep_line.get_ydata()[-1]
    assert ax.get_ylabel().startswith("loss on the whole data set, mean per sample")
    assert any(abs(ln.get_ydata()[0] - np.log(2)) < 1e-12 for ln in ax.lines if len(ln.get_ydata()) == 2)

    fig = plot.update_ratio_curves({k: runs[k] for k in ("deep", "relu")}, tmp_path / "ratio.pdf")
    assert (tmp_path / "ratio.pdf").read_bytes()[:4] == b"%PDF"
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "%" in ax.get_ylabel()
    first = next(ln for ln in ax.lines if ln.get_label() == "deep: first layer")
    np.testing.assert_allclose(first.get_ydata(), runs["deep"].first_layer_ratio)
    assert no_temp_files(tmp_path)


def test_update_ratio_curves_show_a_diverged_run_as_diverged(runs):
    """A run that diverged had two legend entries ('exploding: first layer', '... top layer')
    and nothing drawn. Now its epoch of divergence (where its loss first turned non-finite) is
    a vertical line with a legend entry that says so, and a curve without a finite point has
    no legend entry."""
    r = runs["exploding"]
    epoch = int(np.flatnonzero(~np.isfinite(r.loss))[0]) + 1
    ax = plot.update_ratio_curves(runs).axes[0]
    (mark,) = [ln for ln in ax.lines if "diverged" in ln.get_label()]
    assert list(mark.get_xdata()) == [epoch, epoch] and mark.get_label().startswith("exploding: diverged in epoch")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"exploding: diverged in epoch {epoch} (no ratio from there on)" in labels
    for ln in ax.lines:
        if ln.get_label() in labels and ln is not mark:
            assert np.isfinite(np.asarray(ln.get_ydata(), dtype=float)).any(), ln.get_label()


def test_save_rejects_unknown_formats_and_leaves_nothing(tmp_path, diags):
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        plot.gradient_flow(diags, tmp_path / "flow.jpeg")
    assert os.listdir(tmp_path) == []


def test_save_is_atomic_when_rendering_fails(tmp_path, diags, monkeypatch):
    path = tmp_path / "flow.png"
    path.write_bytes(b"old")
    fig = plot.gradient_flow(diags)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError):
        plot.save(fig, path)
    assert path.read_bytes() == b"old" and no_temp_files(tmp_path)


# ---------------------------------------------------------------- pictures at depth (issue 13)
def _mesh_rows(fig) -> np.ndarray:
    mesh = fig.axes[0].collections[0]
    return np.ma.filled(mesh.get_array(), 0.0).reshape(len(mesh.get_coordinates()) - 1, -1)


def test_histograms_at_depth_are_relative_to_each_layers_norm(tmp_path):
    """3000 sigmoid layers span ~2000 decades: on common bins each layer would fill one bin (a
    staircase); relative to its own norm every layer shows its whole distribution."""
    stack = gb.Stack(depth=3000, width=8, activation="sigmoid")
    gp = gb.GeneratedParams(stack, 0)
    x = gb.gaussian_input(stack, 8, 1)
    for res in (gb.backprop(stack, gp, x, stats_only=True, checkpoint=60),
                gb.backprop(stack, gp.materialize(), x)):
        span = np.ptp(res.grad_norm.log10())
        assert span > 1500
        fig = plot.histogram_heatmap(res, tmp_path / "h.png")
        assert is_png(tmp_path / "h.png")
        rows = _mesh_rows(fig)
        assert rows.shape[0] == 1500  # at most 2000 rows: here groups of 2 layers
        spread = (rows > 0).sum(axis=1)
        assert np.median(spread) >= 6  # each row a distribution, not one bin
        np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=0.02)  # fractions of each layer's entries
        assert "relative" in fig.axes[0].get_title() or "norm" in fig.axes[0].get_title()
        assert fig.axes[0].get_xlim()[1] <= 0.01  # |entry| <= ||dW||: nothing above 0


def test_exact_zero_markers_one_legend_entry_and_visible(tmp_path):
    base = diag(depth=12, width=3, activation="sigmoid").to_dict()
    dead = {k: gb.Diagnosis.from_dict({**base, "grad_log10": ["-inf"] * 4 + list(base["grad_log10"][4:])})
            for k in ("a", "b")}
    fig = plot.gradient_flow(dead, tmp_path / "dead.png")
    ax = fig.axes[0]
    marks = [ln for ln in ax.lines if ln.get_marker() == "v"]
    assert len(marks) == 2 and all(not m.get_clip_on() for m in marks)
    ya, yb = (_display_y(m) for m in marks)
    assert ya[0] != yb[0]  # both visible, not one on the other
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum("exact zero" in t for t in labels) == 1


def _display_y(line) -> np.ndarray:
    """The line's points' heights on the canvas (pixels from the bottom)."""
    xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
    return line.get_transform().transform(xy)[:, 1]


def _plain_grads(stack, params, x):
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    with np.errstate(all="ignore"):
        return naive.backward(stack, P, np.asarray(x, dtype=np.float64))


def test_exact_zero_markers_lie_under_the_axis_not_at_a_gradient():
    """A ReLU stack whose layer 5 is dead: ||dW_l|| = 0 exactly for layers 0-6. Their markers sat
    at y = 1.84 on the log10 axis, 0.12 decades under live layers at 10^1.97..10^2.04, as if
    they were gradients of 10^1.84. Now they lie in a strip between the x axis and its tick
    labels, at the same place whatever the y range, with a legend entry that says what they are."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    stack = gb.Stack(depth=10, width=8, activation="relu", init="he_normal", sigma_b=0.5)
    params = gb.init_params(stack, 0)
    params.b[:] = np.abs(params.b) + 0.5
    params.b[5] = -100.0
    x = gb.gaussian_input(stack, 4, 1)
    _, grads, _ = _plain_grads(stack, params, x)
    zero = np.flatnonzero(np.linalg.norm(grads["W"].reshape(10, -1), axis=1) == 0)
    assert list(zero) == list(range(7))
    fig = plot.gradient_flow(gb.diagnose(gb.backprop(stack, params, x, backend="numpy"), params))
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    (marks,) = [ln for ln in ax.lines if ln.get_marker() == "v"]
    np.testing.assert_array_equal(marks.get_xdata(), zero)
    y = _display_y(marks)
    bottom = ax.transAxes.transform((0, 0))[1]
    labels_top = max(t.get_window_extent().y1 for t in ax.get_xticklabels() if t.get_text())
    half = marks.get_markersize() / 2 * fig.dpi / 72  # points to pixels
    assert np.all(y < bottom) and np.all(y - half > labels_top)
    ax.set_ylim(-100, 100)  # no data value: the y range does not move them
    np.testing.assert_array_equal(_display_y(marks), y)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum("exact zero gradient" in t and "below the axis" in t for t in labels) == 1


def test_non_finite_gradients_are_marked_and_no_nan_rate_is_printed():
    """Layers whose ||dW_l|| is NaN or inf were drawn as nothing (a gap, or an empty frame), and
    the legend read 'exploding, +nan decades/layer'. Now they have their own markers in the
    strip (one legend entry) and the label prints only finite rates."""
    base = diag(depth=12, width=3, activation="sigmoid").to_dict()
    g = list(base["grad_log10"])
    g[2], g[3], g[7] = "nan", "inf", "-inf"
    part = gb.Diagnosis.from_dict({**base, "grad_log10": g})
    gone = gb.Diagnosis.from_dict({**base, "grad_log10": ["nan"] * 12, "decades_per_layer": "nan",
                                   "signal_decades_per_layer": "nan", "verdict": "exploding"})
    ax = plot.gradient_flow({"part": part, "gone": gone}).axes[0]
    crosses = [ln for ln in ax.lines if ln.get_marker() == "x"]
    assert [list(c.get_xdata()) for c in crosses] == [[2, 3], list(range(12))]
    assert [list(v.get_xdata()) for v in ax.lines if v.get_marker() == "v"] == [[7]]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any("nan" in t for t in labels)
    assert sum("non-finite gradient" in t for t in labels) == 1
    assert "gone  (exploding)" in labels


def test_the_legend_gives_the_signal_rate_that_made_the_verdict():
    """ReLU with N(0, 1) weights (compare's 'relu'): ||dW_l|| is flat (-0.01 decades per layer)
    while the backward signal grows by +0.58 decades per layer going down, which makes it
    exploding; the legend showed only '-0.01 dec/layer' beside 'exploding'. Now it gives both
    rates; the signal's, fitted here to an independent plain backward, has the verdict's sign."""
    import re

    stack = gb.Stack(depth=50, width=32, activation="relu", init="normal", sigma_w=np.sqrt(32))
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 16, 0)
    _, grads, signal = _plain_grads(stack, params, x)
    signal_rate = -np.polyfit(np.arange(50), np.log10(signal), 1)[0]
    grad_rate = -np.polyfit(np.arange(50), np.log10(np.linalg.norm(grads["W"].reshape(50, -1), axis=1)), 1)[0]
    assert signal_rate > 0.5 and abs(grad_rate) < 0.05
    ax = plot.gradient_flow({"relu": gb.backprop(stack, params, x)}).axes[0]
    (label,) = [t.get_text() for t in ax.get_legend().get_texts()]
    m = re.fullmatch(r"relu  \(exploding; signal ([-+][0-9.e-]+), \|\|dW\|\| ([-+][0-9.e-]+) dec/layer\)", label)
    assert m, label
    assert float(m.group(1)) == pytest.approx(signal_rate, rel=0.01)
    assert float(m.group(2)) == pytest.approx(grad_rate, abs=0.0005 + 0.05 * abs(grad_rate))  # 3 decimals printed


def test_legend_rates_are_printed_as_the_compare_table_prints_them():
    """The legend gave '%+.3g' (-0.00323) while `gradbench compare`'s table gives 3 decimals
    (-0.003), and its docstring said they matched. Now both print the same text."""
    from gradbench.cli.compare import compare_table

    stack = gb.Stack(depth=50, width=32, activation="relu", init="normal", sigma_w=np.sqrt(32))
    d = gb.diagnose(gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 16, 0)))
    row = compare_table({"relu": d}, [0]).splitlines()[2].split()
    assert row[0] == "relu" and row[1] == d.verdict
    (label,) = [t.get_text() for t in plot.gradient_flow({"relu": d}).axes[0].get_legend().get_texts()]
    assert label == f"relu  ({d.verdict}; signal {row[2]}, ||dW|| {row[3]} dec/layer)"


def _bare_run():
    """A stats_only run with hist_bins=0 (as a sweep's runs): norms, no gradients, no histograms."""
    stack = gb.Stack(depth=20, width=8, activation="tanh")
    gp = gb.GeneratedParams(stack, 0)
    x = gb.gaussian_input(stack, 4, 1)
    return stack, gp, x, gb.backprop(stack, gp, x, stats_only=True, hist_bins=0)


def test_a_stats_only_run_without_histograms_plots_its_flow():
    """gradient_flow refused such a run: it asked for a diagnosis, which needs histograms,
    where the flow needs only the norms, the rates and the verdict."""
    stack, gp, x, res = _bare_run()
    _, grads, _ = _plain_grads(stack, gp.materialize(), x)
    ax = plot.gradient_flow(res).axes[0]
    (line,) = [ln for ln in ax.lines if len(ln.get_xdata()) == 20]
    np.testing.assert_allclose(line.get_ydata(), np.log10(np.linalg.norm(grads["W"].reshape(20, -1), axis=1)),
                               rtol=0, atol=1e-10)


def test_the_heatmap_of_a_run_without_histograms_says_to_run_with_hist_bins():
    """histogram_heatmap crashed on such a run with an AttributeError ('NoneType' object has no
    attribute 'top'); now a ValueError names hist_bins, for both heat maps."""
    res = _bare_run()[3]
    for relative in (True, False):
        with pytest.raises(ValueError, match="hist_bins >= 1"):
            plot.histogram_heatmap(res, relative=relative)


@pytest.mark.usefixtures("plain_biased_forward")
def test_heatmaps_count_non_finite_entries():
    """A run whose forward overflows: every dW entry is NaN. Both heat maps were empty with no
    word of the 3,840 entries; now the note under the axis counts them (as an independent plain
    backward does)."""
    stack = gb.Stack(depth=60, width=8, activation="leaky_relu", sigma_w=1e6, sigma_b=1e-3)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1)
    _, grads, _ = _plain_grads(stack, params, x)
    bad = int(np.sum(~np.isfinite(grads["W"])))
    assert bad == grads["W"].size
    with np.errstate(all="ignore"):
        res = gb.backprop(stack, params, x)
        d = gb.diagnose(res, params)
    for fig in (plot.histogram_heatmap(res), plot.histogram_heatmap(d, relative=False)):
        assert f"not shown: {bad} non-finite entries" in fig.axes[0].get_xlabel()


def test_coinciding_lines_stay_distinguishable(diags):
    same = {"first": diags["sigmoid"], "second": diags["sigmoid"], "third": diags["sigmoid"]}
    ax = plot.gradient_flow(same).axes[0]
    lines = [ln for ln in ax.lines if len(ln.get_xdata()) == 20]
    looks = {(ln.get_linestyle(), ln.get_marker(), round(ln.get_linewidth(), 2)) for ln in lines}
    assert len(lines) == 3 and len(looks) == 3
    assert len({ln.get_linestyle() for ln in lines}) == 3 and len({ln.get_marker() for ln in lines}) == 3


def _synthetic(g) -> gb.Diagnosis:
    base = diag(depth=4, width=3).to_dict()
    g = np.asarray(g, dtype=float)
    return gb.Diagnosis.from_dict({**base, "grad_log10": list(g), "weight_log10": []})


def test_float_limits_only_where_visible():
    from matplotlib.patches import Rectangle

    def limit_lines(ax):
        return [ln for ln in ax.lines if list(ln.get_xdata()) == [0, 1]]

    small = plot.gradient_flow(_synthetic(np.linspace(-10, 0, 50))).axes[0]
    assert limit_lines(small) == []  # no float limit inside [-10, 0]
    deep = plot.gradient_flow(_synthetic(np.linspace(-64000, 0, 1000))).axes[0]
    assert limit_lines(deep) == []  # four limits within 700 of 64,000 decades: one band
    bands = [p for p in deep.patches if isinstance(p, Rectangle)]
    assert len(bands) == 1 and sum("limits" in t.get_text() for t in deep.texts) == 1
    # each dtype's own limits (review 51: the band's text gave float64's ends as both dtypes')
    text = next(t.get_text() for t in deep.texts if "limits" in t.get_text())
    assert "float64 10^-307.7 ... 10^308.3" in text and "float32 10^-37.9 ... 10^38.5" in text, text
    mid = plot.gradient_flow(_synthetic(np.linspace(-400, 0, 100))).axes[0]
    assert sorted(round(ln.get_ydata()[0], 1) for ln in limit_lines(mid)) == [-307.7, -37.9]


def test_every_plot_function_draws_into_a_given_axes(diags, runs):
    import inspect

    from matplotlib.figure import Figure

    stack = gb.Stack(depth=10, width=4, activation="tanh")
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1), backend="numpy")
    calls = {
        "gradient_flow": lambda ax: plot.gradient_flow(diags, ax=ax),
        "histogram_heatmap": lambda ax: plot.histogram_heatmap(res, ax=ax),
        "loss_curves": lambda ax: plot.loss_curves(runs, ax=ax),
        "update_ratio_curves": lambda ax: plot.update_ratio_curves(runs, ax=ax),
        "theory_vs_simulation": lambda ax: plot.theory_vs_simulation(res, -0.1, ax=ax),
    }
    public = {n for n, f in inspect.getmembers(plot, inspect.isfunction)
              if f.__module__ == plot.__name__ and not n.startswith("_") and n != "save"}
    assert public == set(calls)
    for name, call in calls.items():
        assert "ax" in inspect.signature(getattr(plot, name)).parameters and "dpi" in inspect.signature(
            getattr(plot, name)).parameters
        fig = Figure()
        left, right = fig.subplots(1, 2)
        assert call(right) is fig, name
        assert right.has_data() and not left.has_data(), name


def test_histogram_notes_do_not_cover_the_cells(tmp_path):
    """'not shown: N exact zeros' was drawn inside the axes, over the heat map's lower right cells."""
    stack = gb.Stack(depth=6, width=4, activation="relu", init="he_normal")
    params = gb.init_params(stack, 0)
    res = gb.backprop(stack, params, gb.gaussian_input(stack, 2, 1))
    d = gb.diagnose(res, params)
    assert d.hist_zeros.sum() > 0  # dead units: exact zeros in dW
    for fig in (plot.histogram_heatmap(res, tmp_path / "r.png"), plot.histogram_heatmap(d, relative=False)):
        ax = fig.axes[0]
        assert not [t for t in ax.texts if "not shown" in t.get_text()]
        assert "not shown" in ax.get_xlabel()


@pytest.mark.parametrize("L", [7, 2000, 2001, 4001, 10_007])
def test_row_groups_sum_consecutive_layers_without_a_padded_copy(L):
    """plot._row_groups: at most 2000 rows, each the sum of g consecutive layers (the last
    group shorter), against a loop over the groups."""
    a = np.random.default_rng(L).integers(0, 1000, (L, 3))
    rows, g = plot._row_groups(a)
    assert g == max(1, math.ceil(L / 2000)) and rows.shape == (math.ceil(L / g), 3)
    for r in range(rows.shape[0]):
        np.testing.assert_array_equal(rows[r], a[r * g:(r + 1) * g].sum(axis=0))
    assert rows.dtype == a.dtype  # integer counts stay exact


def _visible_ticks(axis) -> np.ndarray:
    """The major tick positions an axis shows (inside its view), after a draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(axis.axes.figure).draw()
    lo, hi = sorted(axis.get_view_interval())
    ticks = np.asarray(axis.get_majorticklocs(), dtype=float)
    return ticks[(ticks >= lo - 1e-9) & (ticks <= hi + 1e-9)]


@pytest.mark.parametrize("depth", [1, 2, 3, 7])
def test_layer_axes_of_shallow_stacks_tick_whole_layers_only(depth):
    """A depth-3 stack's layer axis read 'layer -0.5, 0.0, 0.5, 1.0, 1.5': no layer 0.5 exists."""
    stack = gb.Stack(depth=depth, width=4, activation="tanh")
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1), backend="numpy")
    axes = [plot.gradient_flow(res).axes[0].xaxis, plot.histogram_heatmap(res).axes[0].yaxis,
            plot.histogram_heatmap(gb.diagnose(res), relative=False).axes[0].yaxis,
            plot.theory_vs_simulation(res, 0.0).axes[0].xaxis]
    for axis in axes:
        ticks = _visible_ticks(axis)
        assert ticks.size >= 1
        np.testing.assert_array_equal(ticks, np.round(ticks), err_msg=axis.get_label_text())


def test_epoch_and_step_axes_tick_whole_numbers_only(runs):
    """Epochs 2.5, 7.5 and 'step t = 12.5' (8 epochs of training, a 20-step recurrent run)."""
    from gradbench.recurrent import plot as rplot
    from gradbench.recurrent.diagnose import diagnose

    rnn = gb.Recurrent(cell="rnn", steps=20, hidden=4)
    d = diagnose(gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 0), backend="numpy"))
    axes = [plot.update_ratio_curves(runs).axes[0].xaxis, rplot.run_figure(d).axes[1].xaxis,
            rplot.signal_vs_steps_back({"rnn": d}).axes[0].xaxis]
    for axis in axes:
        ticks = _visible_ticks(axis)
        assert ticks.size >= 2
        np.testing.assert_array_equal(ticks, np.round(ticks), err_msg=axis.get_label_text())


def test_theory_figure_title_names_the_gain_and_bias_it_predicts_for(tmp_path, monkeypatch, capsys):
    """`gradbench theory --activation tanh --sigma-w 1.5 --sigma-b 0.1 --depth 200 --width 128 --plot`
    was titled 'tanh, depth 200, width 128': nothing on the figure said which sigma_w and sigma_b the
    prediction (a function of them) was for."""
    from gradbench import cli

    seen = []
    real = plot.theory_vs_simulation
    monkeypatch.setattr(plot, "theory_vs_simulation", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    assert cli.main(["theory", "--activation", "tanh", "--sigma-w", "1.5", "--sigma-b", "0.1", "--depth", "20",
                     "--width", "16", "--plot", str(tmp_path / "t.png")]) == 0
    capsys.readouterr()
    (fig,) = seen
    title = fig.axes[0].get_title()
    assert "tanh" in title and "sigma_w 1.5" in title and "sigma_b 0.1" in title, title
    assert "depth 20" in title and "width 16" in title, title


def test_update_ratio_curves_show_a_run_whose_weights_stopped_moving():
    """`gradbench train --depth 6 --width 4 --activation relu --init he_normal --sigma-b 1 --lr 1
    --epochs 10 --ratio-plot r.png`: STOPPED after epoch 1 (a layer died). Its ratio figure was blank:
    epoch 1's ratios (one finite point each, no neighbour) drew nothing, epochs 2-10 (ratio exactly
    0) were dropped without a mark, and the axis showed epoch 1 alone."""
    X, y = gb.datasets.moons(200, seed=0)
    stack = gb.Stack(depth=6, width=4, input_dim=2, loss="bce", activation="relu", init="he_normal", sigma_b=1.0)
    p0 = gb.init_params(stack, 0)
    kw = dict(batch_size=20, lr=1.0, backend="numpy")
    r10 = gb.train(stack, X, y, epochs=10, params=p0.copy(), **kw)
    r1 = gb.train(stack, X, y, epochs=1, params=p0.copy(), **kw)
    # independently: the weights after epoch 1 are those after epoch 10, so epochs 2-10 moved nothing
    np.testing.assert_array_equal(r1.params.W_in, r10.params.W_in)
    np.testing.assert_array_equal(r1.params.W[-1], r10.params.W[-1])
    moved = {"first layer": 100 * np.linalg.norm(r1.params.W_in - p0.W_in) / np.linalg.norm(p0.W_in),
             "top layer": 100 * np.linalg.norm(r1.params.W[-1] - p0.W[-1]) / np.linalg.norm(p0.W[-1])}
    assert all(v > 0 for v in moved.values())

    ax = plot.update_ratio_curves({"stopped": r10}).axes[0]
    lo, hi = ax.get_xlim()
    assert lo <= 1 and hi >= 10  # every epoch on the axis
    for what, value in moved.items():
        (line,) = [ln for ln in ax.lines if ln.get_label() == f"stopped: {what}"]
        # epoch 1's ratio is drawn, visibly (a marker: a line through one point draws nothing)
        dots = [ln for ln in ax.lines if ln.get_color() == line.get_color() and ln.get_marker() == "o"
                and list(ln.get_xdata()) == [1] and np.isclose(ln.get_ydata()[0], value, rtol=1e-9)]
        assert dots, what
    zeros = _markers_below(ax, "v")
    assert sorted(sorted(map(int, ln.get_xdata())) for ln in zeros) == [list(range(2, 11))] * 2
    assert any(t.get_text().startswith("exact zero ratio") for t in ax.get_legend().get_texts())


def test_update_ratio_curves_of_weights_that_never_moved_say_so():
    """Every ratio exactly 0 (no gradient reaches any weight: layer 0 dead): the figure showed an
    empty log axis 1e-3 ... 1e-2 with two legend entries and no epoch but '0'."""
    X, y = gb.datasets.moons(60, seed=0)
    stack = gb.Stack(depth=4, width=8, input_dim=2, loss="bce", activation="relu", init="he_normal")
    p0 = gb.init_params(stack, 0)
    p0.b[0] = -100.0
    r = gb.train(stack, X, y, epochs=6, batch_size=20, lr=0.1, params=p0.copy(), backend="numpy")
    np.testing.assert_array_equal(r.params.W_in, p0.W_in)  # independently: nothing moved
    np.testing.assert_array_equal(r.params.W[-1], p0.W[-1])
    ax = plot.update_ratio_curves({"dead": r}).axes[0]
    assert any("no weight moved" in t.get_text() for t in ax.texts)
    assert len(ax.get_yticks()) == 0
    zeros = _markers_below(ax, "v")
    assert sorted(sorted(map(int, ln.get_xdata())) for ln in zeros) == [list(range(1, 7))] * 2


def _markers_below(ax, marker):
    """The strip's marker rows of ``marker`` (drawn under the x axis, at no y value)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(ax.figure).draw()
    bottom = ax.transAxes.transform([(0, 0)])[0][1]
    rows = [ln for ln in ax.lines if ln.get_marker() == marker and ln.get_linestyle() == "None"]
    for ln in rows:
        py = ln.get_transform().transform(np.column_stack([ln.get_xdata(), ln.get_ydata()]).astype(float))[:, 1]
        assert np.all(py < bottom)
    return rows


def test_heatmap_colour_bar_says_when_fractions_lie_below_its_floor():
    """Rows of 3 layers of width 64 hold 12,288 entries: one entry is 8.1e-5 of its row, below the
    colour scale's floor of 1e-4, and was drawn in the floor's colour with nothing on the bar saying
    so (the 100,000-layer run's heat map: rows of 50 layers of 256 entries)."""
    stack = gb.Stack(depth=4001, width=64, activation="tanh")
    res = gb.backprop(stack, gb.GeneratedParams(stack, 0), gb.gaussian_input(stack, 4, 1), stats_only=True)
    fig = plot.histogram_heatmap(res)
    mesh = fig.axes[0].collections[0]
    frac = np.ma.filled(mesh.get_array(), np.nan).astype(float)
    one_entry = 1 / (3 * 64 * 64)
    assert np.isclose(np.nanmin(frac[frac > 0]), one_entry) and one_entry < mesh.norm.vmin
    (bar_ax,) = [a for a in fig.axes if a is not fig.axes[0]]
    assert bar_ax._colorbar.extend == "min"
    # and a heat map whose every fraction is on the scale keeps a plain bar
    fig = plot.histogram_heatmap(diag(depth=10, width=8, activation="tanh"))
    assert fig.axes[1]._colorbar.extend == "neither"


def test_a_count_of_one_not_shown_is_singular():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    plot._not_shown(ax, {"exact zeros": np.array([1, 0]), "non-finite entries (NaN or inf)": np.array([0, 2]),
                         "or more entries below 10^-7 of the norm": np.array([1])})
    assert ax.get_xlabel().endswith("not shown: 1 exact zero, 2 non-finite entries (NaN or inf), "
                                     "1 or more entries below 10^-7 of the norm")
    plt.close(fig)


def test_a_one_layer_flow_has_no_rate_in_its_legend(tmp_path):
    # the text says "no trend to fit"; the legend said "+0.000 dec/layer"
    st = gb.Stack(depth=1, width=4)
    p = gb.init_params(st, 0)
    d = gb.diagnose(gb.backprop(st, p, gb.gaussian_input(st, 2, 1)), p)
    assert "no trend to fit" in d.explanation
    fig = plot.gradient_flow(d, tmp_path / "one.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels and not any("dec/layer" in t for t in labels), labels


def test_a_small_rate_is_not_read_as_zero_in_the_legend(tmp_path):
    """An orthogonal tanh stack at width 8 over 3,000 layers climbs ~1.3 decades at -0.00042 a
    layer; its legend read "||dW|| +0.000 dec/layer". A rate that is rounding's (below
    report.VISIBLE_RATE) still reads +0.000."""
    from gradbench.report import fmt_rate

    assert (fmt_rate(-0.00042), fmt_rate(-9.4e-6), fmt_rate(-0.00042, 4)) == ("-4.2e-04", "-9.4e-06", "-0.0004")
    assert fmt_rate(-1e-16) == fmt_rate(3e-7) == "+0.000" and fmt_rate(-0.1234) == "-0.123"
    st = gb.Stack(depth=3000, width=8, activation="tanh", init="orthogonal")
    p = gb.init_params(st, 0)
    d = gb.diagnose(gb.backprop(st, p, gb.gaussian_input(st, 16, 1)), p)
    assert 1e-6 < abs(d.decades_per_layer) < 5e-4
    fig = plot.gradient_flow(d, tmp_path / "small.png")
    label = fig.axes[0].get_legend().get_texts()[0].get_text()
    assert f"||dW|| {d.decades_per_layer:+.1e} dec/layer" in label, label


def test_the_gradient_flow_draws_the_signal_whose_rate_the_verdict_reads(tmp_path):
    """A zero-bias ReLU stack's ||dW_l|| is flat while its signal explodes: the demo's flow.png drew
    one flat line labelled "exploding". The figure now has the signal ||dL/dh_l|| in a panel of
    its own; one Axes given takes ||dW_l|| alone, a pair both."""
    from matplotlib.figure import Figure

    st = gb.Stack(depth=60, width=32, activation="relu", init="normal", sigma_w=2.0)
    p = gb.init_params(st, 0)
    d = gb.diagnose(gb.backprop(st, p, gb.gaussian_input(st, 16, 1)), p)
    assert d.verdict == "exploding" and abs(d.decades_per_layer) < 0.02 < d.signal_decades_per_layer
    fig = plot.gradient_flow({"relu": d}, tmp_path / "flow.png")
    assert is_png(tmp_path / "flow.png") and len(fig.axes) == 2
    (dw,) = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("relu")]
    (sig,) = [ln for ln in fig.axes[1].lines if ln.get_label().startswith("relu")]
    np.testing.assert_array_equal(dw.get_ydata(), d.grad_log10)
    np.testing.assert_array_equal(sig.get_ydata(), d.signal_log10)
    assert "partial h_l" in fig.axes[1].get_ylabel() and "verdict" in fig.axes[1].get_title()
    one = Figure().add_subplot()
    assert plot.gradient_flow(d, ax=one).axes == [one]  # one Axes: ||dW_l|| alone, as before
    pair = Figure().subplots(1, 2)
    fig2 = plot.gradient_flow(d, ax=pair)
    assert len(fig2.axes) == 2 and [ln.get_label() for ln in pair[1].lines][0].startswith("exploding")
    with pytest.raises(ValueError, match="give one Axes .* or two .*, got 3"):
        plot.gradient_flow(d, ax=Figure().subplots(1, 3))
    assert len(plot.gradient_flow(d, signal=False).axes) == 1


def test_a_flow_wholly_beyond_a_dtypes_range_says_so():
    # a float32 run at 10^98 everywhere showed no limit line (none inside the range) and no word
    st = gb.Stack(depth=400, width=16, activation="relu", init="he_normal", sigma_w=2.0, dtype="float32")
    p = gb.init_params(st, 0)
    d = gb.diagnose(gb.backprop(st, p, gb.gaussian_input(st, 4, 1)), p)
    assert np.min(d.grad_log10) > 38.6  # float32's largest is 10^38.53
    texts = [t.get_text() for t in plot.gradient_flow(d).axes[0].texts]
    assert "every value lies above float32's largest (10^38.5)" in texts, texts
    calm = gb.Stack(depth=5, width=8)
    q = gb.init_params(calm, 0)
    texts = [t.get_text() for t in plot.gradient_flow(gb.diagnose(gb.backprop(calm, q, gb.gaussian_input(calm, 4, 1)),
                                                                  q)).axes[0].texts]
    assert not any(t.startswith("every value lies") for t in texts), texts


def test_a_no_gradient_flow_says_its_norms_are_rounding():
    """Batch norm over two samples passes no gradient in exact arithmetic; the computed norms
    (10^-17, 10^-19) were drawn as a slope on an axis labelled "(exact)" with "(no gradient)"."""
    st = gb.Stack(depth=2, width=2, batch_norm=True, activation="sigmoid", sigma_w=2.0, sigma_b=0.1, clip="value",
                  clip_threshold=0.05)
    p = gb.init_params(st, 0)
    d = gb.diagnose(gb.backprop(st, p, gb.gaussian_input(st, 2, 1)), p)
    assert d.verdict == "no gradient" and np.isfinite(d.grad_log10).all()
    labels = [t.get_text() for t in plot.gradient_flow(d).axes[0].get_legend().get_texts()]
    assert labels[0] == "no gradient; the norms drawn are rounding of an exact 0", labels


def test_loss_curves_label_fits_the_axes_height():
    """Review 51: the loss axis's label (what, the log scale and the chance line) ran off the top
    of a default-size figure in one line: it is two lines, each shorter than the axes are tall."""
    r = gb.run_demo("deep-sigmoid", epochs=2)
    fig = plot.loss_curves({"deep-sigmoid": r})
    ax = fig.axes[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    label = ax.yaxis.label
    assert "\n" in label.get_text() and "dashed: ln 2" in label.get_text()
    assert label.get_window_extent(renderer).height <= ax.get_window_extent(renderer).height
