"""Diagnosis and CLI of stats-only runs (generated weights, streaming histograms)."""

import json

import numpy as np

import gradbench as gb
from gradbench.cli import main
from gradbench.histograms import histograms


def test_diagnosis_of_a_stats_only_run_equals_the_full_run():
    stack = gb.Stack(depth=40, width=16, activation="tanh", init="he_normal")
    params = gb.GeneratedParams(stack, seed=3)
    x = gb.gaussian_input(stack, 8, seed=4)
    full = gb.backprop(stack, params, x, backend="numpy")
    lean = gb.backprop(stack, params, x, backend="numpy", stats_only=True, checkpoint=8)
    assert lean.grads is None
    # one common bin per fine bin (1/4 decade): the streaming counts must be the exact counts
    lo, hi = -12, 4
    bins = (hi - lo) * lean.grad_hist.per_decade
    d_full = gb.diagnose(full, bins=bins, hist_range=(lo, hi))
    d_lean = gb.diagnose(lean, bins=bins, hist_range=(lo, hi))
    edges, counts, zeros, _, outside = histograms(full.grads.W, bins, (lo, hi))
    np.testing.assert_array_equal(d_lean.hist_counts, counts)
    np.testing.assert_array_equal(d_lean.hist_outside, outside)
    np.testing.assert_array_equal(d_lean.hist_zeros, zeros)
    np.testing.assert_array_equal(d_lean.grad_log10, d_full.grad_log10)
    assert d_lean.verdict == d_full.verdict
    assert d_lean.hist_counts.sum() + d_lean.hist_outside.sum() == 40 * 16 * 16


def test_cli_stats_only_run_writes_exact_norms(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["run", "--depth", "3000", "--width", "8", "--batch", "4", "--activation", "sigmoid",
               "--stats-only", "--checkpoint", "50", "--backend", "numpy", "--out", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())["diagnosis"]
    g = np.array(d["grad_log10"], dtype=float)
    assert len(g) == 3000 and np.all(np.isfinite(g)) and g[0] < -1000  # beyond float64, exact
    # the same stack with the same generated weights, unsegmented, as the independent check
    stack = gb.Stack(depth=3000, width=8, activation="sigmoid")
    x = gb.gaussian_input(stack, 4, seed=np.random.default_rng([0, 1]))
    ref = gb.backprop(stack, gb.GeneratedParams(stack, 0), x, backend="numpy", checkpoint=None)
    np.testing.assert_allclose(g, ref.grad_norm.log10(), rtol=0, atol=1e-9)
    assert main(["run", "--depth", "10", "--width", "4", "--stats-only", "--checkpoint", "3",
                 "--residual", "2"]) == 2  # checkpoint not a multiple of the residual group


def test_streamed_json_is_the_same_document():
    import io

    stack = gb.Stack(depth=300, width=8, activation="relu", init="he_normal")
    params = gb.init_params(stack, 0)
    params.b[5] = -1e3  # a dead layer: -inf norms below it, written as "-inf"
    res = gb.backprop(stack, params, gb.gaussian_input(stack, 4, 1), backend="numpy")
    d = gb.diagnose(res, params)
    buf = io.StringIO()
    d.write_json(buf, chunk=7)  # many chunks, rows of the (L, bins) histograms included
    assert json.loads(buf.getvalue()) == json.loads(d.to_json())
    back = type(d).from_json(buf.getvalue())
    np.testing.assert_array_equal(back.hist_counts, d.hist_counts)
    np.testing.assert_array_equal(back.grad_log10, d.grad_log10)


def test_a_c_stats_only_run_at_10_to_the_minus_1e18_fills_its_histograms(capsys):
    """`gradbench run --depth 300 --width 8 --activation gelu --sigma-w 3 --batch 1 --stats-only
    --seed 228` stopped with "internal error: ValueError: gb_histogram_fill: bad argument" on the C
    backend (numpy and numba ran it): its gradients lie near 10^-1.4e18, whose quarter-decade bin
    index passes 2^62, which the C fill refuses. The run's norms are mpmath's plain chain's (to
    float64's resolution of a log10 that large), and every entry of every layer is counted once."""
    import pytest

    pytest.importorskip("gradbench.cbackend", reason="C extension not built", exc_type=ImportError)
    import mpmath as mp
    import naive_mp

    stack = gb.Stack(depth=300, width=8, activation="gelu", sigma_w=3.0)
    params = gb.GeneratedParams(stack, 228)
    x = gb.gaussian_input(stack, 1, np.random.default_rng([228, 1]))  # the command line's probe
    res = gb.backprop(stack, params, x, stats_only=True, backend="c")
    _, gW, _ = naive_mp.chain("gelu", mp.mpf(1), params.materialize().W, x)
    want = np.asarray(gW)
    assert np.all(want < -1e18)  # bins beyond 2^62 at 4 a decade
    np.testing.assert_allclose(res.grad_norm.log10(), want, rtol=1e-13)
    h = res.grad_hist
    per_layer = np.asarray(h.counts).sum(axis=1) + h.below + h.zeros + h.nonfinite
    np.testing.assert_array_equal(per_layer, np.full(300, 8 * 8))
    assert main(["run", "--depth", "300", "--width", "8", "--activation", "gelu", "--sigma-w", "3", "--batch", "1",
                 "--stats-only", "--seed", "228", "--backend", "c"]) == 0
    assert "VANISHING" in capsys.readouterr().out
