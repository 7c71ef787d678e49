"""gradbench.histograms: a stats_only diagnosis's common bins and the histograms relative to each
layer's norm, against np.histogram of log10 |dW| from an independent plain backward (tests/naive.py)."""

import math

import numpy as np
import pytest

import gradbench as gb
from gradbench.histograms import RelativeHistograms
from tests import naive


def _plain(stack, params, x):
    """The plain float64 dW of every layer (L, N, N), from tests/naive.py."""
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    return naive.backward(stack, P, np.asarray(x, dtype=np.float64))[1]["W"]


def _log10_entries(dW_l):
    a = np.abs(dW_l).ravel()
    return np.log10(a[a > 0])


@pytest.mark.parametrize("kw", [dict(activation="tanh", depth=20), dict(activation="relu", depth=20),
                                dict(activation="sigmoid", sigma_b=0.1, depth=60)])
def test_stats_only_diagnosis_histograms_are_numpys_on_their_edges(kw):
    """The common bins of a stats_only diagnosis were 0.3 decades wide for 1/4-decade streaming
    bins, each moved whole by its centre: 763 of 5,120 entries of a tanh stack sat in another
    bin than np.histogram puts them on the reported edges (a comb), and the range ran down to the
    bottom of the 10-decade windows (-11) with the smallest entry at 10^-5. Now the edges lie on
    the 1/4-decade grid from the lowest occupied bin, and every count is np.histogram's."""
    stack = gb.Stack(width=16, **kw)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1)
    d = gb.diagnose(gb.backprop(stack, params, x, stats_only=True), params)
    dW = _plain(stack, params, x)
    edges = d.hist_edges
    np.testing.assert_array_equal(edges * 4, np.round(edges * 4))  # on the streaming grid
    assert len(edges) == 41
    smallest = min(_log10_entries(dW[l]).min() for l in range(stack.depth))
    assert edges[0] <= smallest < edges[0] + 0.25  # the lowest bin holds the smallest entry
    for l in range(stack.depth):
        v = _log10_entries(dW[l])
        want, _ = np.histogram(v, bins=edges)
        np.testing.assert_array_equal(d.hist_counts[l], want, err_msg=f"layer {l}")
        assert d.hist_outside[l] == len(v) - want.sum()
        assert d.hist_zeros[l] == 256 - len(v)


def test_stats_only_diagnosis_on_an_explicit_range_on_the_grid_is_exact():
    """hist_range (-8, 2) in 20 bins: half-decade bins, two whole streaming bins each."""
    stack = gb.Stack(depth=20, width=16, activation="tanh")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1)
    d = gb.diagnose(gb.backprop(stack, params, x, stats_only=True), params, bins=20, hist_range=(-8.0, 2.0))
    dW = _plain(stack, params, x)
    np.testing.assert_array_equal(d.hist_edges, np.linspace(-8, 2, 21))
    for l in range(20):
        want, _ = np.histogram(_log10_entries(dW[l]), bins=d.hist_edges)
        np.testing.assert_array_equal(d.hist_counts[l], want, err_msg=f"layer {l}")


def test_a_stats_only_diagnosis_off_the_grid_says_its_counts_are_not_exact(tmp_path):
    """hist_range (-8.1, 1.9) in 17 bins lies off the 1/4-decade streaming grid: each streaming
    bin goes whole into one common bin, so entries land a bin away from np.histogram's, while
    the absolute heat map still called its axis "(exact)". The diagnosis says which it is
    (hist_exact), the plot's axis too; gradients kept or on the grid: exact, as np.histogram."""
    from gradbench import plot

    stack = gb.Stack(depth=20, width=16, activation="tanh")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1)
    dW = _plain(stack, params, x)
    stats = gb.backprop(stack, params, x, stats_only=True)
    full = gb.backprop(stack, params, x)

    def differs(d):  # entries np.histogram puts in another bin on the diagnosis's own edges
        return sum(int(np.abs(np.histogram(_log10_entries(dW[l]), bins=d.hist_edges)[0] - d.hist_counts[l]).sum())
                   for l in range(stack.depth))

    off = gb.diagnose(stats, params, bins=17, hist_range=(-8.1, 1.9))
    assert differs(off) > 0 and not off.hist_exact
    assert "within one streaming bin" in plot.histogram_heatmap(off, tmp_path / "a.png", relative=False).axes[0].get_xlabel()
    for d in (gb.diagnose(stats, params, bins=20, hist_range=(-8.0, 2.0)), gb.diagnose(stats, params),
              gb.diagnose(full, params, bins=17, hist_range=(-8.1, 1.9))):
        assert differs(d) == 0 and d.hist_exact
        assert "(exact)" in plot.histogram_heatmap(d, tmp_path / "b.png", relative=False).axes[0].get_xlabel()
    assert not gb.Diagnosis.from_json(off.to_json()).hist_exact  # the files keep it
    off_npz = tmp_path / "off.npz"
    from gradbench.frames import write_npz

    write_npz(off, off_npz)
    assert not gb.Diagnosis.from_npz(off_npz).hist_exact


# ---------------------------------------------------------------- relative to each layer's norm
def _true_relative_bins(dW, edges):
    """Per layer, the relative bin of every non-zero entry of dW: -1 below the grid, else the
    bin of log10 |entry| - log10 ||dW_l|| on ``edges`` (|entry| = ||dW|| in the top bin)."""
    out = []
    for l in range(dW.shape[0]):
        rel = _log10_entries(dW[l]) - np.log10(np.linalg.norm(dW[l]))
        b = np.searchsorted(edges, rel, side="right") - 1
        out.append(np.minimum(b, len(edges) - 2))  # rel at 0 (or a rounding above): the top bin
    return out


def _assert_within_one_bin(rel: RelativeHistograms, true_bins, layers):
    """Each entry at most one bin from its own: the cumulative counts, with 'outside' as bin -1,
    lie between the true ones shifted by one bin either way; 'outside' only holds entries that
    are below the grid."""
    nb = rel.counts.shape[1]
    for l in layers:
        shown = np.concatenate([[rel.outside[l]], rel.counts[l]])
        true = np.bincount(true_bins[l] + 1, minlength=nb + 1)
        assert shown.sum() + rel.unplaced[l] == true.sum(), l
        cs, ct = np.cumsum(shown), np.cumsum(true)
        lower = np.concatenate([[0], ct[:-1]])
        upper = np.concatenate([ct[1:], [ct[-1]]])
        assert np.all(lower <= cs) and np.all(cs <= upper), (l, shown, true)
        assert rel.outside[l] <= true[0]  # nothing above the grid is called below it


def test_relative_view_of_a_coarse_diagnosis_is_refused_not_mislabelled():
    """200 sigmoid layers: the diagnosis's 40 common bins are 3.3 decades wide. Each went whole
    to its centre minus the norm, and 4,583 of 51,200 entries, every one within 10^-7 of its
    layer's norm, were drawn as 'below 10^-7 of the norm'. Now such a diagnosis is refused
    with what to pass instead; with bins of 1/2 decade, every entry is within one bin of its own."""
    from gradbench import plot

    stack = gb.Stack(depth=200, width=16, activation="sigmoid")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1)
    res = gb.backprop(stack, params, x)
    dW = _plain(stack, params, x)
    coarse = gb.diagnose(res, params)
    assert coarse.hist_edges[1] - coarse.hist_edges[0] > 3
    with pytest.raises(ValueError, match="Result.*bins >= .*relative=False"):
        plot.histogram_heatmap(coarse)
    d = gb.diagnose(res, params, bins=math.ceil(np.ptp(coarse.hist_edges) / 0.4))
    assert 0.25 < d.hist_edges[1] - d.hist_edges[0] <= 0.4
    rel = RelativeHistograms.from_diagnosis(d)
    np.testing.assert_allclose(np.diff(rel.edges), 0.5)
    assert rel.edges[-1] == 0 and rel.edges[0] <= -7 and not rel.exact
    _assert_within_one_bin(rel, _true_relative_bins(dW, rel.edges), range(200))
    assert rel.outside.sum() == 0 and rel.unplaced.sum() == 0  # none is below 10^-7 of its norm


def test_relative_view_of_a_stats_only_result_is_within_one_bin():
    stack = gb.Stack(depth=40, width=16, activation="tanh", sigma_b=0.2)
    params, x = gb.init_params(stack, 2), gb.gaussian_input(stack, 4, 3)
    rel = RelativeHistograms.from_result(gb.backprop(stack, params, x, stats_only=True))
    np.testing.assert_allclose(np.diff(rel.edges), 0.25)
    _assert_within_one_bin(rel, _true_relative_bins(_plain(stack, params, x), rel.edges), range(40))


def _one_entry_stack(offset):
    """A ReLU stack in which only unit 0 is alive (biases of -100 elsewhere, positive weights):
    dW_l of layers l >= 1 has a single non-zero entry, which therefore equals the layer's norm
    (relative value exactly 0). The input is scaled (the stack is homogeneous in it: no bias on
    unit 0) so that log10 |dW_1[0, 0]| lies ``offset`` decades above a multiple of 1/4."""
    stack = gb.Stack(depth=3, width=4, activation="relu")
    params = gb.init_params(stack, 0)
    params.W[:] = np.abs(params.W)
    params.b[:] = -100.0
    params.b[:, 0] = 0.0
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    v = math.log10(abs(_plain(stack, params, x)[1, 0, 0]))
    target = math.floor(v * 4) / 4 + offset
    x = x * 10 ** ((target - v) / 2)  # dW scales with the square of the input (loss 0.5 ||h_L||^2)
    dW = _plain(stack, params, x)
    assert np.count_nonzero(dW[1]) == 1 and np.count_nonzero(dW[2]) == 1
    assert math.log10(abs(dW[1, 0, 0])) == pytest.approx(target, abs=1e-9)
    return stack, params, x, dW


def test_an_entry_equal_to_the_norm_is_not_called_below_the_grid():
    """A source bin holding an entry at the norm reaches above 0 relative to it; by its centre it
    landed above the grid, and the heat map called it 'below 10^-6 of the norm'. Its entries
    cannot lie above the norm: it goes to the top bin. From a diagnosis (1/4-decade bins on the
    grid) and from a stats_only result, with the entry 0.05 decades into its bin."""
    from gradbench import plot

    stack, params, x, dW = _one_entry_stack(0.05)
    res = gb.backprop(stack, params, x)
    d = gb.diagnose(res, params, bins=160, hist_range=(-20.0, 20.0))
    for rel in (RelativeHistograms.from_diagnosis(d),
                RelativeHistograms.from_result(gb.backprop(stack, params, x, stats_only=True))):
        assert rel.counts[1, -1] == 1 and rel.counts[1].sum() == 1
        assert rel.outside.sum() == 0
        _assert_within_one_bin(rel, _true_relative_bins(dW, rel.edges), range(3))
    label = plot.histogram_heatmap(d).axes[0].get_xlabel()
    assert "below" not in label


def test_stats_only_histograms_are_quarter_decade_bins_regrouped_and_the_norms_the_same_bits():
    """The README: --stats-only keeps the same norms (bits) and counts its histograms on
    quarter-decade bins, whose edges differ from the plain run's even split of the range."""
    stack = gb.Stack(depth=3000, width=32, activation="tanh", init="he_normal")
    p, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 16, 1)
    plain, streamed = gb.diagnose(gb.backprop(stack, p, x)), gb.diagnose(gb.backprop(stack, p, x, stats_only=True))
    np.testing.assert_array_equal(plain.grad_log10, streamed.grad_log10)
    np.testing.assert_array_equal(plain.signal_log10, streamed.signal_log10)
    edges = np.asarray(streamed.hist_edges)
    np.testing.assert_allclose(edges * 4, np.round(edges * 4), atol=1e-9)  # whole quarter decades
    assert not np.allclose(np.asarray(plain.hist_edges), edges)


@pytest.mark.parametrize("seed", range(20))
def test_a_callers_range_counts_as_np_histogram_its_top_edge_closed(seed):
    """On a caller's hist_range, entries above the top edge are outside, as np.histogram leaves
    them: every entry in [hi, hi + one bin width) was counted in the last bin (a swish layer's
    10^-0.469 and 10^-0.417 in the bin below 10^-0.5) while hist_exact said True. An entry on
    the top edge itself still belongs to the last bin."""
    from gradbench.histograms import histograms
    from gradbench.logscaled import LogScaled

    rng = np.random.default_rng(seed)
    L, M = 4, 50
    lo, hi = sorted(rng.uniform(-3, 1, 2))
    bins = int(rng.integers(1, 8))
    v = 10.0 ** rng.uniform(lo - 0.5, hi + 0.5, (L, M)) * rng.choice([-1.0, 1.0], (L, M))
    v[:, 0] = 1.0  # log10 = 0: inside when hi > 0, else above
    v[0, 1] = 10.0 ** hi
    hi = float(np.log10(v[0, 1]))  # the top edge itself
    edges, counts, zeros, nonfinite, outside = histograms(LogScaled(v, np.zeros(L, dtype=np.int64)), bins, (lo, hi))
    np.testing.assert_allclose(edges, np.linspace(lo, hi, bins + 1), rtol=0, atol=1e-15)
    x = np.log10(np.abs(v))
    for l in range(L):
        want, _ = np.histogram(x[l], bins=bins, range=(lo, hi))
        np.testing.assert_array_equal(counts[l], want, err_msg=f"layer {l}")
        assert outside[l] == M - want.sum()
    assert counts[0, -1] >= 1  # 10^hi itself


def _one_layer(*values):
    """One layer holding ``values`` as a LogScaled with the layer's one exponent (that of its largest)."""
    from gradbench.logscaled import LogScaled

    v = np.array([values], dtype=np.float64)
    e = int(np.frexp(np.max(np.abs(v)))[1])
    return LogScaled(np.ldexp(v, -e), np.array([e], dtype=np.int64))


def test_entries_on_a_callers_edges_belong_to_the_range_as_in_np_histogram():
    """A range from one entry to another, (log10 x, log10 y): both are counted, as np.histogram
    counts them (log10 computed from mantissa and exponent differs from np.log10 by a few ulps:
    x = 9.73e11 on the top edge and 8.1e8 on the bottom one were counted outside)."""
    from gradbench.histograms import histograms

    rng = np.random.default_rng(5)
    for _ in range(500):
        x, y = np.sort(10.0 ** rng.uniform(-100, 100, 2))  # one layer, one exponent: both held exactly
        lo, hi = float(np.log10(x)), float(np.log10(y))
        if hi - lo < 1e-6:
            continue
        bins = int(rng.integers(1, 9))
        _, counts, _, _, outside = histograms(_one_layer(x, y), bins, (lo, hi))
        want, _ = np.histogram(np.log10([x, y]), bins=bins, range=(lo, hi))
        np.testing.assert_array_equal(counts[0], want, err_msg=f"{x!r}, {y!r}, {bins}")
        assert outside[0] == 0
    x, y = 425949069481.2051, 973478795507.7533  # the review's pair
    _, counts, _, _, outside = histograms(_one_layer(x, y), 7, (np.log10(x), np.log10(y)))
    assert counts[0].tolist() == [1, 0, 0, 0, 0, 0, 1] and outside[0] == 0


@pytest.mark.parametrize("stats_only", [False, True])
@pytest.mark.parametrize("bad", [(-np.inf, 0), (0, np.nan), (1e-320, 2e-320), (-1e308, 1e308), (3, 1), (1, 1),
                                 (1, 2, 3), "ab", (True, 2), (-10**400, 0), [0]])
def test_a_hist_range_that_loses_entries_is_refused(bad, stats_only):
    """(-inf, 0) gave NaN edges and (1e-320, 2e-320) an infinite bin scale: all 180 entries were
    counted nowhere; a string or three numbers failed inside the unpacking without the name."""
    st = gb.Stack(depth=5, width=6, activation="sigmoid")
    res = gb.backprop(st, gb.init_params(st, 0), gb.gaussian_input(st, 6, seed=0), stats_only=stats_only)
    with pytest.raises(ValueError, match="hist_range"):
        gb.diagnose(res, hist_range=bad)


def test_every_accepted_hist_range_counts_every_entry():
    """Conservation: bins + outside + zeros + non-finite = the entries of every layer, for ranges
    from wide to a few ulps per bin."""
    st = gb.Stack(depth=5, width=6, activation="sigmoid")
    res = gb.backprop(st, gb.init_params(st, 0), gb.gaussian_input(st, 6, seed=0))
    rng = np.random.default_rng(3)
    for _ in range(40):
        lo = rng.uniform(-6, 1)
        width = 10.0 ** rng.uniform(-13, 3)
        bins = int(rng.integers(1, 60))
        try:
            d = gb.diagnose(res, bins=bins, hist_range=(lo, lo + width))
        except ValueError as exc:  # too narrow for float64: refused, not lost
            assert "does not split into" in str(exc)
            continue
        total = d.hist_counts.sum(axis=1) + d.hist_outside + d.hist_zeros + d.hist_nonfinite
        assert np.all(total == 36), (lo, width, bins)


@pytest.mark.parametrize("name, bad", [("hist_bins", -1), ("hist_bins", 10**6 + 1), ("hist_bins", 2**31 - 3),
                                       ("hist_bins", 4.0), ("hist_bins", True), ("hist_per_decade", 0),
                                       ("hist_per_decade", np.int64(2**31 - 3)), ("hist_per_decade", 10**6 + 1)])
def test_histogram_options_out_of_range_are_refused_before_the_run(name, bad):
    """hist_bins = 2^31 - 3 passed and ran out of memory in the diagnosis; per decade of 2^31 made
    the C fill refuse a bin index only after the backward pass."""
    s = gb.Stack(depth=3, width=4, activation="tanh")
    calls = []
    with pytest.raises(ValueError, match=rf"{name} must be an int from \d+ to 1_000_000, got"):
        gb.backprop(s, gb.init_params(s, 0), gb.gaussian_input(s, 2, 1), stats_only=True,
                    progress=lambda done, total: calls.append(done), **{name: bad})
    assert calls == []  # not a segment ran


@pytest.mark.parametrize("backend", gb.backends())
def test_the_largest_histogram_options_bin_as_log10_says(backend):
    """hist_per_decade = 10^6 (the most): each layer's top bin is floor(10^6 log10 max|dW_l|) of
    the plain float64 dW, and a window of 10^6 bins holds every entry."""
    s = gb.Stack(depth=6, width=5, activation="tanh")
    p, x = gb.init_params(s, 0), gb.gaussian_input(s, 3, 1)
    dW = _plain(s, p, x)
    for kw in (dict(hist_per_decade=10**6, hist_bins=40), dict(hist_bins=10**6)):
        h = gb.backprop(s, p, x, backend=backend, stats_only=True, **kw).grad_hist
        want = np.floor(np.log10(np.abs(dW).max(axis=(1, 2))) * h.per_decade)
        assert np.all(np.abs(h.top - want) <= 1)  # float64 log10 at a bin's edge: one bin either way
        if h.bins == 10**6:
            assert np.all(h.counts.sum(axis=1) + h.below + h.zeros == 25) and not h.below.any()


def test_diagnosis_histograms_and_weight_norms_work_in_blocks_as_np_histogram_counts():
    """histograms() and frobenius_log10() take HIST_CHUNK entries at a time: whole layers, or slices
    of one layer. Over a whole (300, 256, 256) dW at once their temporaries were twice the gradients
    (gb.diagnose's traced peak 319 MiB there). The counts are np.histogram's of log10 |dW| on the
    returned edges whatever the blocks, and the norms np.linalg.norm's."""
    from gradbench.diagnose import frobenius_log10
    from gradbench.histograms import histograms

    rng = np.random.default_rng(3)
    m = rng.standard_normal((5, 6, 7)) * 10.0 ** rng.uniform(-20, 20, (5, 1, 1))
    m[1, 2] = 0.0
    e = np.array([0, -700, 3, 0, 1500], dtype=np.int64)  # true values m 2^e, beyond float64 in layer 4
    W = gb.LogScaled(m, e)
    for chunk in (1, 5, 41, 42, 10**6):  # slices of a layer, whole layers, everything at once
        edges, counts, zeros, nonfinite, outside = histograms(W, 9, chunk=chunk)
        for l in range(5):
            a = np.abs(m[l]).ravel()
            logs = np.log10(a[a > 0]) + e[l] * math.log10(2.0)
            np.testing.assert_array_equal(counts[l], np.histogram(logs, edges)[0])
            assert zeros[l] == np.count_nonzero(a == 0) and nonfinite[l] == 0 and outside[l] == 0
        w = m * 10.0 ** np.array([0, 250, -250, 0, 0])[:, None, None]  # a layer near 1e270, one near 1e-230
        want = [math.log10(np.linalg.norm(w[l] / np.abs(w[l]).max())) + math.log10(np.abs(w[l]).max())
                for l in range(5)]
        np.testing.assert_allclose(frobenius_log10(w, chunk=chunk), want, rtol=1e-14)


def test_a_diagnosis_holds_a_few_mib_beyond_the_gradients(monkeypatch):
    import tracemalloc

    from gradbench import buffers

    monkeypatch.setattr(buffers, "SMALL_PAGES_FROM", 2**62)  # every array through NumPy, traced
    stack = gb.Stack(depth=80, width=256, activation="tanh")  # dW and W: 40 MiB each
    params = gb.init_params(stack, 0)
    res = gb.backprop(stack, params, gb.gaussian_input(stack, 8, 1))
    tracemalloc.start()
    try:
        gb.diagnose(res, params)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, peak / 2**20  # 80 MiB when each pass took every layer at once
    buffers.release()
