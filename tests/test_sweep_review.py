"""Findings of an outside review of sweeps, each checked against a computation written out here
(SciPy's regression, group norms summed in NumPy, hand-made rows files), never the code's own
output."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import gradbench as gb
from gradbench.sweep import run_one
from gradbench.sweep.worker import rate_se
from gradbench.verdict import grad_rate
from tests.helpers import Tripwire


def _fit(x, y):
    """SciPy's least-squares line through the finite points: (rate going down, its SE)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y)
    fit = stats.linregress(x[ok], y[ok])
    return -fit.slope, fit.stderr


def _group_norms(g, k):
    """log10 of the root sum of squares of each group's ||dW_l||, summed in plain NumPy."""
    return np.log10(np.sqrt((10.0 ** (2 * np.asarray(g, float))).reshape(-1, k).sum(axis=1)))


# ---------------------------------------------------------------- 1. the SE is that of the rate's own fit
def test_the_se_of_a_residual_stack_is_that_of_the_group_fit_its_rate_comes_from():
    # the review's case: tanh, batch norm, residual groups of 2, depth 8, width 8, batch 4, seed 0;
    # the row said SE 0.0443 (a per-layer fit's, slope 0.0431) beside the group fit's rate 0.0345
    stack = gb.Stack(depth=8, width=8, activation="tanh", batch_norm=True, residual=2)
    row = run_one(stack, 4, 0)
    params = gb.GeneratedParams(stack, 0).materialize()
    x = gb.gaussian_input(stack, 4, seed=np.random.default_rng([0, 1]))
    g = gb.diagnose(gb.backprop(stack, params, x)).grad_log10
    rate, se = _fit(np.arange(4), _group_norms(g, 2))
    assert row["decades_per_layer"] == pytest.approx(rate / 2, rel=1e-9)  # the rate is the group fit's
    assert row["decades_per_layer_se"] == pytest.approx(se / 2, rel=1e-9)  # and so is its SE now
    per_layer = _fit(np.arange(8), g)[1]
    assert abs(per_layer - se / 2) > 0.01  # what the row held (0.0443 against 0.0722)


def test_the_se_leaves_out_the_points_the_rate_leaves_out():
    rng = np.random.default_rng(3)
    layers = np.arange(40)
    g = -0.05 * layers + rng.normal(0, 0.2, 40)
    g[17] -= 400.0  # a dead branch's layer: isolated, out of the rate's fit
    keep = layers != 17
    rate, se = _fit(layers[keep], g[keep])
    assert grad_rate(g)[0] == pytest.approx(rate, rel=1e-12)
    assert rate_se(g) == pytest.approx(se, rel=1e-12)
    # residual groups of 4: one group 150 decades below its neighbours is left out as a whole
    g = -0.05 * layers + rng.normal(0, 0.2, 40)
    g[20:24] -= 150.0
    norms = _group_norms(g, 4)
    groups = np.arange(10)
    rate, se = _fit(groups[groups != 5], norms[groups != 5])
    assert grad_rate(g, 4)[0] == pytest.approx(rate / 4, rel=1e-12)
    assert rate_se(g, 4) == pytest.approx(se / 4, rel=1e-12)
    assert math.isnan(rate_se(g[:8], 4))  # two groups: a line through two points has no SE


# ---------------------------------------------------------------- resuming an out directory
def _write_sweep(out, grid, fixed, seeds=(0,)):
    """A sweep directory made without Dask: the manifest, then the runs of the worker's own
    task function in this process, in one rows file; returns the plan."""
    from gradbench.sweep.grid import plan
    from gradbench.sweep.store import frame, open_out, write_rows
    from gradbench.sweep.worker import run_task

    p = plan(grid, fixed, seeds, "auto")
    open_out(out, p, lambda: pd)
    rows = run_task([(r.key, r.config, r.batch, r.seed) for r in p.runs()], "auto")
    write_rows(str(out), frame(rows, p, pd))
    return p


def test_a_default_named_or_a_number_spelled_otherwise_is_the_same_sweep(tmp_path):
    # the review: --sigma-b 0 (the default, given) was "differs in fixed field sigma_b", and
    # {'sigma_w': [1, 2]} on a directory of --sigma-w 1,2 was "differs in axis sigma_w" (1 vs 1.0)
    from gradbench.sweep.store import check_out
    from gradbench.sweep.grid import plan

    out = tmp_path / "s"
    _write_sweep(out, {"sigma_w": [1.0, 2.0]}, dict(depth=6, width=4, batch=4))
    first = pd.read_parquet(next(out.glob("rows-*.parquet")))
    same = plan({"sigma_w": [2, 1]}, dict(depth=6, width=4, batch=4, sigma_b=0, activation="tanh",
                                          init="glorot_normal"), (0,))
    assert check_out(out, same) is True
    table = gb.sweep({"sigma_w": [1, 2]}, seeds=(0,), out=out, client=Tripwire(), depth=6, width=4, batch=4,
                     sigma_b=0, init="glorot_normal")
    assert table.attrs["sweep"]["resumed"] == 2 and table.attrs["sweep"]["computed"] == 0
    assert table["sigma_w"].tolist() == [1, 2] and (table["sigma_b"] == 0).all()  # as this call names them
    assert (table["init"] == "glorot_normal").all()
    np.testing.assert_array_equal(table["signal_decades_per_layer"], first["signal_decades_per_layer"])
    # a real difference names the field and both values
    other = plan({"sigma_w": [1, 2]}, dict(depth=6, width=4, batch=4, sigma_b=0.1), (0,))
    with pytest.raises(ValueError, match=r"differs in fixed field sigma_b: 0\.0 in the directory, 0\.1 here\)"):
        check_out(out, other)
    other = plan({"sigma_w": [1, 3]}, dict(depth=6, width=4, batch=4), (0,))
    with pytest.raises(ValueError, match=r"axis sigma_w: the axis \[1\.0, 2\.0\] in the directory, "
                                         r"the axis \[1\.0, 3\.0\] here"):
        check_out(out, other)
    other = plan({"sigma_b": [0.0, 0.1]}, dict(depth=6, width=4, batch=4, sigma_w=1.0), (0,))
    with pytest.raises(ValueError, match=r"axis sigma_b: 0\.0 in the directory, the axis \[0\.0, 0\.1\] here; "
                                         r"axis sigma_w: the axis \[1\.0, 2\.0\] in the directory, 1\.0 here"):
        check_out(out, other)


def test_rows_written_with_integer_keys_are_the_runs_of_their_floats(tmp_path):
    # rows files of a gradbench that wrote ["sigma_w", 1] for sigma_w=1 (gb.sweep({'sigma_w': [1, 2]}))
    out = tmp_path / "s"
    _write_sweep(out, {"sigma_w": [1.0, 2.0]}, dict(depth=6, width=4, batch=4))
    path = next(out.glob("rows-*.parquet"))
    rows = pd.read_parquet(path)
    rows["run_key"] = ['[[["sigma_w", 1]], 0]', '[[["sigma_w", 2]], 0]']
    rows.to_parquet(path, index=False)
    table = gb.sweep({"sigma_w": [1.0, 2.0]}, seeds=(0,), out=out, client=Tripwire(), depth=6, width=4, batch=4)
    assert table.attrs["sweep"]["resumed"] == 2
    np.testing.assert_array_equal(table["decades_per_layer"], rows["decades_per_layer"])


def test_the_command_line_resumes_a_sweep_with_a_default_named_and_shows_both_values_of_a_difference(
        tmp_path, capsys):
    from gradbench import cli

    out = str(tmp_path / "s")
    base = ["sweep", "--sigma-w", "1,2", "--depth", "6", "--width", "4", "--batch", "4", "--out", out]
    _write_sweep(out, {"sigma_w": [1.0, 2.0]}, dict(depth=6, width=4, batch=4))
    assert cli.main(base + ["--sigma-b", "0", "--activation", "tanh", "--init", "glorot_normal"]) == 0
    assert "(2 resumed from" in capsys.readouterr().out
    assert cli.main(base + ["--sigma-b", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs in --sigma-b: 0.0 in the directory, 0.1 here" in err[0], err
    assert cli.main(base[:2] + ["1,3"] + base[3:] + ["--clip", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs in --sigma-w: the axis 1.0,2.0 in the directory, the axis 1.0,3.0 here" \
        in err[0], err


# ---------------------------------------------------------------- 2. one gradbench version per table
def test_a_directory_of_another_gradbench_version_or_schema_is_refused(tmp_path, monkeypatch, capsys):
    import json

    from gradbench import cli
    from gradbench.cli import output
    from gradbench.sweep.store import MANIFEST

    out = tmp_path / "s"
    monkeypatch.setattr(output, "__version__", "0.1.9")  # the version that writes the directory
    _write_sweep(out, {"sigma_w": [1.0, 2.0]}, dict(depth=6, width=4, batch=4))
    assert json.loads((out / MANIFEST).read_text())["gradbench"] == "0.1.9"
    monkeypatch.setattr(output, "__version__", "0.2.1")  # a later one resumes it
    with pytest.raises(ValueError, match=r"holds a sweep of gradbench 0\.1\.9 \(schema 2, rows 2\) and this is "
                                         r"gradbench 0\.2\.1 \(schema 2, rows 2\): .*; give out a new directory"):
        gb.sweep({"sigma_w": [1.0, 2.0]}, out=out, client=Tripwire(), depth=6, width=4, batch=4)
    argv = ["sweep", "--sigma-w", "1,2", "--depth", "6", "--width", "4", "--batch", "4", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gradbench 0.1.9 (schema 2, rows 2) and this is gradbench 0.2.1" in err[0] \
        and "give --out a new directory" in err[0], err
    monkeypatch.setattr(output, "SCHEMA", 3)  # the same version string, another schema
    monkeypatch.setattr(output, "__version__", "0.1.9")
    with pytest.raises(ValueError, match=r"gradbench 0\.1\.9 \(schema 2, rows 2\) and this is gradbench 0\.1\.9 "
                                         r"\(schema 3, rows 2\)"):
        gb.sweep({"sigma_w": [1.0, 2.0]}, out=out, client=Tripwire(), depth=6, width=4, batch=4)
    monkeypatch.setattr(output, "SCHEMA", 2)
    assert gb.sweep({"sigma_w": [1.0, 2.0]}, out=out, client=Tripwire(), depth=6, width=4,
                    batch=4).attrs["sweep"]["resumed"] == 2


def test_a_directory_of_rows_computed_before_the_se_fix_is_refused(tmp_path):
    """A sweep.json of this version and schema without ``rows`` was written before a residual
    stack's decades_per_layer_se became the SE of the fit its rate comes from (rows 1): resuming
    it would put the old SEs beside the new ones; with ``rows`` 2 it resumes."""
    import json

    from gradbench.sweep.store import MANIFEST

    out = tmp_path / "s"
    grid, fixed = {"residual": [0, 2]}, dict(depth=8, width=4, batch=4, activation="tanh", batch_norm=True)
    _write_sweep(out, grid, fixed)
    doc = json.loads((out / MANIFEST).read_text())
    assert doc["rows"] == 2
    del doc["rows"]
    (out / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"gradbench {gb.__version__} \(schema 2, rows 1\) and this is gradbench "
                                         rf"{gb.__version__} \(schema 2, rows 2\)"):
        gb.sweep(grid, out=out, client=Tripwire(), **fixed)
    (out / MANIFEST).write_text(json.dumps({**doc, "rows": 2}))
    assert gb.sweep(grid, out=out, client=Tripwire(), **fixed).attrs["sweep"]["resumed"] == 2


# ---------------------------------------------------------------- 7. a sweep that never started
def test_a_directory_of_a_sweep_that_never_started_is_taken_over_by_another_grid(tmp_path, capsys):
    import json

    from gradbench import cli
    from gradbench.sweep.store import MANIFEST

    out = tmp_path / "s"
    base = ["--depth", "6", "--width", "4", "--out", str(out), "--scheduler", "tcp://127.0.0.1:1"]  # refused at once
    assert cli.main(["sweep", "--sigma-w", "1,2"] + base) == 2
    assert "cannot reach the scheduler" in capsys.readouterr().err
    assert (out / MANIFEST).exists() and not list(out.glob("rows-*"))
    # another grid: not "a different grid", the directory is this sweep's now
    assert cli.main(["sweep", "--sigma-w", "1,3"] + base) == 2
    err = capsys.readouterr().err
    assert "cannot reach the scheduler" in err and "different grid" not in err, err
    assert json.loads((out / MANIFEST).read_text())["axes"] == {"sigma_w": [1.0, 3.0]}
    # once rows are there, the directory is that sweep's
    _write_sweep(out, {"sigma_w": [1.0, 3.0]}, dict(depth=6, width=4))
    assert cli.main(["sweep", "--sigma-w", "1,2"] + base) == 2
    assert "different grid" in capsys.readouterr().err


# ---------------------------------------------------------------- 8. one run, two different rows
def test_a_run_with_different_rows_in_two_files_is_refused_naming_the_run_and_the_files(tmp_path, capsys):
    from gradbench import cli
    from gradbench.sweep.store import ConflictingRows

    out = tmp_path / "s"
    _write_sweep(out, {"sigma_w": [1.0, 2.0]}, dict(depth=6, width=4, batch=4))
    mine = next(out.glob("rows-*.parquet"))
    rows = pd.read_parquet(mine)
    # the same runs from another machine: other timings only, then another number for sigma_w = 2
    rows.assign(seconds=rows.seconds + 1.0).to_parquet(out / "rows-0000000000000000.parquet", index=False)
    table = gb.sweep({"sigma_w": [1.0, 2.0]}, out=out, client=Tripwire(), depth=6, width=4, batch=4)
    assert len(table) == 2  # identical duplicates: silent, each run once
    theirs = rows.copy()
    theirs.loc[1, "decades_per_layer"] += 1e-12
    theirs.to_parquet(out / "rows-ffffffffffffffff.parquet", index=False)
    key = rows.run_key[1]
    assert key == '[[["sigma_w", 2.0]], 0]'
    with pytest.raises(ConflictingRows) as info:
        gb.sweep({"sigma_w": [1.0, 2.0]}, out=out, client=Tripwire(), depth=6, width=4, batch=4)
    text = str(info.value)
    # the first file of that run (by name) against the one that differs
    was, now = float(rows.decades_per_layer[1]), float(theirs.decades_per_layer[1])
    assert f"run {key} in rows-0000000000000000.parquet and rows-ffffffffffffffff.parquet (differs in " \
           f"decades_per_layer: {was!r} and {now!r})" in text
    assert mine.name not in text  # its numbers are those of the first file
    assert cli.main(["sweep", "--sigma-w", "1,2", "--depth", "6", "--width", "4", "--batch", "4",
                     "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the sweep did not start" in err[0] and key in err[0], err


# ---------------------------------------------------------------- 9. the command line's words
@pytest.mark.parametrize("args,says,not_says", [
    (["--clip", "value,clamp"], "--clip='clamp' is not one of 'value', 'norm', none (at grid point clip='clamp')",
     "None"),
    (["--init", "he_normal,kaiming_normal"], "--init names one scheme twice: 'he_normal' and 'kaiming_normal'",
     "grid["),
    (["--sigma-w", "1,1.0"], "--sigma-w has repeated values 1.0", "grid["),
    (["--batch-norm", "true", "--batch", "1"], "--batch-norm=true needs a batch of at least 2, got --batch=1", "True"),
])
def test_command_line_errors_use_the_command_lines_words(args, says, not_says, capsys):
    from gradbench import cli

    assert cli.main(["sweep", "--depth", "4", "--width", "4"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and not_says not in err[0], err


def test_api_errors_keep_pythons_words():
    with pytest.raises(ValueError, match=r"grid\['init'\] names one scheme twice"):
        gb.sweep({"init": ["he_normal", "kaiming_normal"]}, depth=4, width=4, client=Tripwire())
    with pytest.raises(ValueError, match=r"clip='clamp' is not one of 'value', 'norm', None"):
        gb.sweep({"clip": ["value", "clamp"]}, depth=4, width=4, client=Tripwire())


# ---------------------------------------------------------------- 3-5. the phase diagram
def _plot_table() -> pd.DataFrame:
    """A sweep-shaped table over sigma_w (0.5, 1.4, 3, 1e3: the review's slivers) x sigma_b x 3
    seeds, with runs of every kind: rates, seeds without gradient, overflows."""
    rows = []
    for sw in (0.5, 1.4, 3.0, 1e3):
        for sb in (0.0, 0.1):
            for seed in range(3):
                rate, verdict, first = -0.1 * seed + sw / 10 + sb, "vanishing", None
                if sw == 0.5 and seed > 0:  # two of three seeds without any gradient
                    rate, verdict = math.nan, "no gradient"
                if sw == 1.4 and sb == 0.1 and seed == 2:  # one overflow among finite seeds
                    rate, verdict, first = math.nan, "exploding", 7
                if sw == 1e3:  # every seed: an overflow at sigma_b 0, no gradient at 0.1
                    rate, verdict, first = (math.nan, "exploding", 3) if sb == 0 else (math.nan, "no gradient", None)
                rows.append(dict(activation="relu", sigma_w=sw, sigma_b=sb, depth=20, seed=seed,
                                 decades_per_layer=rate, signal_decades_per_layer=rate, first_nonfinite=first,
                                 verdict=verdict, theory_decades_per_layer=0.0))
    return pd.DataFrame(rows).astype({"first_nonfinite": "Int64"})


def test_the_cells_count_the_seeds_behind_each_mean_and_why_the_others_have_none():
    from gradbench.plot_sweep import cells

    table = _plot_table()
    c = cells(table, "sigma_w", "sigma_b", "signal_decades_per_layer")
    assert c.xs.tolist() == [0.5, 1.4, 3.0, 1e3] and c.ys.tolist() == [0.0, 0.1]
    for i, sb in enumerate(c.ys):
        for j, sw in enumerate(c.xs):
            runs = [r for r in table.to_dict("records") if r["sigma_w"] == sw and r["sigma_b"] == sb]
            rates = [r["signal_decades_per_layer"] for r in runs if math.isfinite(r["signal_decades_per_layer"])]
            assert c.runs[i, j] == len(runs) == 3 and c.finite[i, j] == len(rates)
            if rates:
                assert c.mean[i, j] == pytest.approx(sum(rates) / len(rates), rel=1e-15)
            else:
                assert math.isnan(c.mean[i, j])
    assert c.kind().tolist() == [["partial", "rate", "rate", "non-finite"],
                                 ["partial", "partial", "rate", "no gradient"]]


def test_the_phase_diagram_marks_partial_cells_and_tells_no_gradient_from_overflow(tmp_path):
    from matplotlib.collections import PatchCollection

    from gradbench.plot_sweep import phase_diagram

    fig = phase_diagram(_plot_table(), path=tmp_path / "p.png")
    heat = fig.axes[0]
    marks = {c.get_label(): c for c in heat.collections if isinstance(c, PatchCollection)}
    zero = next(c for name, c in marks.items() if name.startswith("no gradient"))
    over = next(c for name, c in marks.items() if name.startswith("non-finite"))
    partial = next(c for name, c in marks.items() if "k of n seeds" in name)
    assert len(zero.get_paths()) == len(over.get_paths()) == 1 and len(partial.get_paths()) == 3
    assert tuple(zero.get_facecolor()[0]) != tuple(over.get_facecolor()[0]) and over.get_hatch()
    assert partial.get_hatch()
    legend = [t.get_text() for t in heat.get_legend().get_texts()]
    assert any(t.startswith("no gradient") for t in legend) and any(t.startswith("non-finite") for t in legend)
    assert any("k of n seeds" in t for t in legend)
    notes = sorted(t.get_text() for t in heat.texts)
    assert notes == ["1/3", "1/3", "2/3"]  # sigma_w 0.5 (both sigma_b), sigma_w 1.4 at sigma_b 0.1


def test_an_axis_spanning_decades_is_not_drawn_linearly():
    from gradbench.plot_sweep import _Axis, phase_diagram

    # the review's sigma_w = 0.5, 1.4, 3, 1e3 (uneven in log too): one cell per value, labelled
    fig = phase_diagram(_plot_table())
    heat = fig.axes[0]
    mesh = heat.collections[0]
    xs = np.unique(mesh.get_coordinates()[..., 0])
    np.testing.assert_array_equal(xs, [-0.5, 0.5, 1.5, 2.5, 3.5])  # every cell one unit wide
    assert [t.get_text() for t in heat.get_xticklabels()] == ["0.5", "1.4", "3", "1000"]
    # ReLU's critical sigma_w = sqrt 2 drawn between the cells of 1.4 and 3, where it lies
    line = next(ln for ln in heat.lines if "chi_1" in ln.get_label())
    assert line.get_xdata()[0] == pytest.approx(1 + (math.sqrt(2) - 1.4) / (3.0 - 1.4), rel=1e-9)
    assert heat.get_xscale() == "linear" and heat.get_yscale() == "linear"  # sigma_b 0, 0.1: linear
    # evenly spaced in log: a log axis; with a 0 among them: one cell per value; otherwise linear
    assert _Axis(np.geomspace(0.5, 50, 7)).kind == "log"
    assert _Axis(np.array([0.0, 0.01, 0.1, 1.0])).kind == "index"
    assert _Axis(np.linspace(0.6, 2.0, 8)).kind == "linear"
    assert _Axis(np.array([0.0, 0.1, 0.3])).kind == "linear"
    table = _plot_table()
    table = table[table.sigma_w < 100].assign(sigma_w=lambda t: t.sigma_w.map({0.5: 0.1, 1.4: 1.0, 3.0: 10.0}))
    heat = phase_diagram(table).axes[0]
    assert heat.get_xscale() == "log" and heat.get_xlabel() == "sigma_w (log scale)"


def test_the_se_column_is_the_fits_not_the_spread_across_seeds():
    """decades_per_layer_se is the textbook SE of one run's line (the docs say so); the rates of
    other seeds lie several times farther, as the docs warn (8-23x at depth 300 by hand): the
    spread of 20 seeds against their median SE, sigmoid at width 16."""
    stack = gb.Stack(depth=300, width=16, activation="sigmoid", init="normal")
    rows = [run_one(stack, 16, seed) for seed in range(20)]
    rates = np.array([r["decades_per_layer"] for r in rows])
    se = np.median([r["decades_per_layer_se"] for r in rows])
    assert np.std(rates, ddof=1) > 5 * se, (np.std(rates, ddof=1), se)


def test_a_scatter_without_a_finite_run_says_why_and_warns_nothing(recwarn):
    """Review 51: a sweep whose every run had no gradient drew an empty 0-1 box, with matplotlib's
    "No artists with labels found to put in legend" on stderr."""
    table = _plot_table()
    table["signal_decades_per_layer"] = math.nan
    table["decades_per_layer"] = math.nan
    table["verdict"] = "no gradient"
    from gradbench.plot_sweep import phase_diagram

    scatter = next(a for a in phase_diagram(table).axes if a.get_title() == "measured vs predicted, every run")
    texts = " ".join(t.get_text() for t in scatter.texts)
    assert "no run has both a finite measured rate" in texts, texts
    assert scatter.get_legend() is None
    assert not [w for w in recwarn if "No artists with labels" in str(w.message)]
