"""gb.diagnose: slopes, verdicts, float limits, histograms and JSON, against independent numbers."""

import dataclasses
import json
import math

import numpy as np
import pytest

import gradbench as gb
from gradbench.diagnose import Diagnosis
from gradbench.verdict import FLOAT_LIMITS, classify, decades_per_layer, float_limits
from gradbench.histograms import histograms
from tests import naive

LOG10_2 = math.log10(2.0)


def small_result(depth=6, width=4, batch=3, **kw):
    stack = gb.Stack(depth=depth, width=width, **kw)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, batch, 1)
    return gb.backprop(stack, params, x, backend="numpy")


def with_chain(res, exponents, mantissa=0.75):
    """A Result whose ||dW_l|| is mantissa * 2**exponents[l] exactly (built by hand)."""
    L = len(exponents)
    e = np.asarray(exponents, dtype=np.int64)
    grad_norm = gb.LogScaled(np.full(L, mantissa), e)
    W = res.grads.W
    grads = dataclasses.replace(res.grads, W=gb.LogScaled(W.mantissa, e))
    return dataclasses.replace(res, grad_norm=grad_norm, grads=grads)


# ---------------------------------------------------------------- slope against a closed-form chain
@pytest.mark.parametrize("k", [1, -1, 7, 1000, -1500])
def test_slope_of_a_hand_built_exponential_chain(k):
    # ||dW_l|| = 0.75 * 2**(k*l - offset): exactly k*log10(2) decades per layer, at any size
    L = 40
    res = with_chain(small_result(depth=L), k * np.arange(L) - 20000)
    d = gb.diagnose(res)
    # going down the stack the norm changes by -k log10(2) per layer: negative = vanishing
    assert d.decades_per_layer == pytest.approx(-k * LOG10_2, rel=1e-12)
    expect = math.log10(0.75) + LOG10_2 * (k * np.arange(L) - 20000)
    np.testing.assert_allclose(d.grad_log10, expect, rtol=1e-13)
    assert d.intercept == pytest.approx(expect[0], rel=1e-12)
    # every ||dW_l|| at most 2^-18500 for a loss of order 1: whatever the trend, no weight can
    # move the loss (rule 4 gives way to the elasticity rule: "vanishing")
    assert d.verdict == "vanishing"
    # the same chain with its largest norm of order 1: the trend decides
    top = max(k * (L - 1), 0)
    d = gb.diagnose(with_chain(res, k * np.arange(L) - top))
    assert d.decades_per_layer == pytest.approx(-k * LOG10_2, rel=1e-12)
    assert d.verdict == ("vanishing" if k > 0 else "exploding")


def test_rate_fit_matches_numpy_polyfit_with_noise(rng):
    y = 0.3 * np.arange(50) + rng.normal(0, 0.5, 50)
    rate, intercept = decades_per_layer(y)
    ref = np.polyfit(np.arange(50), y, 1)
    # the rate is per layer going DOWN (towards l = 0): minus polyfit's slope in l
    assert rate == pytest.approx(-ref[0], rel=1e-10) and intercept == pytest.approx(ref[1], rel=1e-10)
    # non-finite entries are left out of the fit
    y2 = y.copy()
    y2[[3, 10]] = -np.inf
    keep = np.isfinite(y2)
    ref2 = np.polyfit(np.arange(50)[keep], y2[keep], 1)
    assert decades_per_layer(y2)[0] == pytest.approx(-ref2[0], rel=1e-10)
    assert decades_per_layer(np.array([2.0])) == (0.0, 2.0)
    assert all(math.isnan(v) for v in decades_per_layer(np.array([np.nan, np.nan])))


def test_sigmoid_stack_slope_against_a_plain_independent_backward():
    stack = gb.Stack(depth=30, width=8, activation="sigmoid", init="xavier_normal")
    params = gb.init_params(stack, 3)
    x = gb.gaussian_input(stack, 5, 4)
    d = gb.diagnose(gb.backprop(stack, params, x, backend="numpy"))
    P = {k: v.astype(np.float64) for k, v in params.items()}
    _, grads, signal = naive.backward(stack, P, x)
    ref = np.log10(np.linalg.norm(grads["W"].reshape(30, -1), axis=1))
    np.testing.assert_allclose(d.grad_log10, ref, atol=1e-10)
    np.testing.assert_allclose(d.signal_log10, np.log10(signal), atol=1e-10)
    assert d.decades_per_layer == pytest.approx(-np.polyfit(np.arange(30), ref, 1)[0], rel=1e-9)
    # sigmoid' <= 1/4: at least ~0.6 decades per layer lost with Xavier's unit gain
    assert d.decades_per_layer < -0.5
    assert d.verdict == "vanishing"
    assert "vanish" in d.explanation


# ---------------------------------------------------------------- verdict thresholds
def test_verdict_thresholds_on_constructed_inputs():
    L = 11  # change over the stack = slope * 10
    l = np.arange(L)
    assert classify(0.201 * l, threshold=2.0) == "vanishing"
    assert classify(0.199 * l, threshold=2.0) == "stable"
    assert classify(-0.201 * l, threshold=2.0) == "exploding"
    assert classify(-0.199 * l, threshold=2.0) == "stable"
    assert classify(0.199 * l, threshold=1.0) == "vanishing"
    assert classify(np.zeros(L)) == "stable"
    # an exactly zero gradient below a non-zero one: vanishing (dead units block the chain)
    g = np.zeros(L)
    g[:3] = -np.inf
    assert classify(g) == "vanishing"
    # zero only at the top (nothing flows at all) is not called vanishing by the trend
    # non-finite gradients: exploding
    g = np.zeros(L)
    g[2] = np.nan
    assert classify(g) == "exploding"
    g[2] = np.inf
    assert classify(g) == "exploding"
    # flat: a magnitude without a trend is the loss's scale (stable) until plain float64 cannot
    # hold it: above its largest 10^308.25 exploding, below its smallest normal 10^-307.65 vanishing
    assert classify(np.full(L, 7.0)) == "stable" and classify(np.full(L, 300.0)) == "stable"
    assert classify(np.full(L, 308.3)) == "exploding" and classify(np.full(L, 308.2)) == "stable"
    assert classify(np.full(L, -307.7)) == "vanishing" and classify(np.full(L, -307.6)) == "stable"
    # one layer: no trend
    assert classify(np.array([0.3])) == "stable"


@pytest.mark.parametrize("act,init,sigma_w,verdict", [
    ("sigmoid", "xavier_normal", None, "vanishing"),
    ("relu", "he_normal", None, "stable"),
    ("tanh", "xavier_normal", None, "stable"),
    ("tanh", "normal", math.sqrt(16), "exploding"),
    ("relu", "normal", math.sqrt(16), "exploding"),
])
def test_verdicts_of_the_classic_stacks(act, init, sigma_w, verdict):
    stack = gb.Stack(depth=40, width=16, activation=act, init=init, sigma_w=sigma_w)
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 16, 1), backend="numpy")
    d = gb.diagnose(res)
    assert d.verdict == verdict, d.explanation
    assert d.verdict.upper() in str(d)


def test_threshold_must_be_positive_and_bins_an_int():
    res = small_result()
    with pytest.raises(ValueError, match="threshold"):
        gb.diagnose(res, threshold=0)
    with pytest.raises(ValueError, match="bins"):
        gb.diagnose(res, bins=0)


# ---------------------------------------------------------------- float limits
def test_float_limit_layers_by_hand():
    assert FLOAT_LIMITS["float64"][0] == pytest.approx(-307.6527, abs=1e-3)
    assert FLOAT_LIMITS["float64"][1] == pytest.approx(308.2547, abs=1e-3)
    assert FLOAT_LIMITS["float32"][0] == pytest.approx(-37.929, abs=1e-3)
    assert FLOAT_LIMITS["float32"][1] == pytest.approx(38.531, abs=1e-3)
    L = 101
    g = -4.0 * (L - 1 - np.arange(L))  # 0 at the top, -400 at layer 0, 4 decades per layer
    lim = float_limits(g, -4.0)
    # first layer from the top below -307.65: -4 * (100 - l) < -307.65  <=>  l < 23.09  -> l = 23
    assert lim["float64"]["underflow_layer"] == 23
    # below -37.93: 100 - l > 9.48  ->  l = 90
    assert lim["float32"]["underflow_layer"] == 90
    assert lim["float64"]["overflow_layer"] is None
    # exploding the other way round
    lim = float_limits(-g, 4.0)
    assert lim["float64"]["overflow_layer"] == 22  # 4 * (100 - l) > 308.25  <=>  l < 22.94
    assert lim["float32"]["overflow_layer"] == 90  # 4 * (100 - l) > 38.53  <=>  l < 90.37
    # never reached: extrapolated from the top at the fitted rate
    lim = float_limits(np.array([-2.0, -1.0, 0.0]), -1.0)
    assert lim["float64"]["underflow_layer"] is None
    assert lim["float64"]["layers_to_underflow"] == math.ceil(307.6527 / 1.0)
    assert lim["float32"]["layers_to_underflow"] == 38


def test_the_extrapolated_float_range_is_where_a_deeper_stack_gets():
    """'at this rate its gradient would underflow after ~N layers': a deeper stack of the same
    kind does get there (sigmoid), and the sentence is not made where ||dW_l||'s rate within the
    stack says nothing about depth. A zero-bias ReLU stack at sigma_w = 3 (exploding: its level
    grows 0.6 decades per layer of depth through h_L) read 'would underflow after ~43562 layers'
    at depth 50 and 'would overflow after ~591871' at depth 200; it overflows near 500."""
    def limits(depth, **kw):
        stack = gb.Stack(depth=depth, width=16, **kw)
        res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1), backend="auto")
        return gb.diagnose(res).float_limits["float64"]

    n = limits(50, activation="sigmoid", init="xavier_normal")["layers_to_underflow"]
    assert n is not None and 300 < n < 800
    deeper = limits(int(1.3 * n), activation="sigmoid", init="xavier_normal")
    assert deeper["underflow_layer"] is not None
    relu = dict(activation="relu", init="he_normal", sigma_w=3.0)
    for depth in (50, 200):
        lim = limits(depth, **relu)
        assert lim["layers_to_underflow"] is None and lim["layers_to_overflow"] is None, lim
    assert limits(1000, **relu)["overflow_layer"] is not None


def test_deep_exact_chain_reports_where_plain_float_would_fail():
    L = 1200
    stack = gb.Stack(depth=L, width=8, activation="sigmoid", init="xavier_normal")
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1), backend="auto")
    d = gb.diagnose(res)
    assert np.all(np.isfinite(d.grad_log10))
    assert d.grad_log10[0] < -600  # far below float64, still exact
    u64 = d.float_limits["float64"]["underflow_layer"]
    u32 = d.float_limits["float32"]["underflow_layer"]
    assert u64 is not None and u32 is not None and u64 < u32 < L
    assert d.grad_log10[u64] < FLOAT_LIMITS["float64"][0] <= d.grad_log10[u64 + 1:].min()
    # the plain chain really does underflow there: the float conversion of the same gradients is 0
    plain = res.grads.W.to_float(warn=False)
    assert np.all(plain[: u64 - 40] == 0)  # 26 decades below: past the subnormals too
    assert np.all(plain[u64 + 1:] != 0)
    text = str(d)
    assert f"underflow the gradient at layer {u64}" in text
    assert "VANISHING" in text


# ---------------------------------------------------------------- histograms
def test_histograms_match_numpy_when_representable(rng):
    W = gb.LogScaled.from_float(rng.standard_normal((5, 6, 6)) * 10.0 ** rng.uniform(-8, 2, (5, 6, 6)))
    # from_float gives one exponent per entry; fold to one per layer as the engine does
    m = W.to_float()
    e = np.zeros(5, dtype=np.int64)
    layer = gb.LogScaled(m, e)
    edges, counts, zeros, nonfinite, outside = histograms(layer, bins=12)
    for l in range(5):
        ref, _ = np.histogram(np.log10(np.abs(m[l])), bins=edges)
        np.testing.assert_array_equal(counts[l], ref)
    assert counts.sum() == m.size and not zeros.any() and not nonfinite.any() and not outside.any()
    assert edges[0] == math.floor(np.log10(np.abs(m)).min()) and edges[-1] == math.ceil(np.log10(np.abs(m)).max())


def test_histograms_are_exact_at_huge_exponents(rng):
    m = rng.uniform(0.5, 1.0, (3, 4, 4)) * rng.choice([-1, 1], (3, 4, 4))
    m[1, 0, 0] = 0.0
    e = np.array([-200000, -100000, 5], dtype=np.int64)
    edges, counts, zeros, nonfinite, outside = histograms(gb.LogScaled(m, e), bins=50)
    with np.errstate(divide="ignore"):
        v = np.log10(np.abs(m)) + LOG10_2 * e[:, None, None]
    for l in range(3):
        ok = m[l] != 0
        ref, _ = np.histogram(v[l][ok], bins=edges)
        np.testing.assert_array_equal(counts[l], ref)
    assert zeros.tolist() == [0, 1, 0]
    assert edges[0] == math.floor(v[m != 0].min()) and edges[0] < -60205
    # a fixed range: values outside are counted apart
    edges, counts, zeros, nonfinite, outside = histograms(gb.LogScaled(m, e), bins=10, hist_range=(-40000, 10))
    assert outside.tolist() == [16, 0, 0] and counts[1].sum() == 15 and counts[2].sum() == 16
    with pytest.raises(ValueError, match="hist_range"):
        histograms(gb.LogScaled(m, e), hist_range=(1, 1))


@pytest.mark.parametrize("far", [2**45, -(2**61)])
def test_histograms_far_out_count_as_near_zero(rng, far):
    """Every layer near 10^(far log10 2) (a head right by a margin of 1e15 puts them at
    10^-4.3e14): float64 cannot tell one decade from the next there, and the default range
    collapsed to hi == lo (ZeroDivisionError). The counts are those of the same entries with
    every exponent moved by -far (an independent run of the near path), the edges moved by far."""
    m = rng.uniform(0.5, 1.0, (4, 5, 5)) * rng.choice([-1, 1], (4, 5, 5))
    m[2] = 0.0  # a layer with no entry (its exponent 0 must not decide the frame)
    m[0, 1, 1] = np.nan
    e = np.array([-37, -10, 5, 0], dtype=np.int64)  # the largest exponent with entries: 0
    near = histograms(gb.LogScaled(m, e), bins=9)
    e_far = e + far
    e_far[2] = 0
    got = histograms(gb.LogScaled(m, e_far), bins=9)
    for a, b in zip(near[1:], got[1:]):
        np.testing.assert_array_equal(a, b)
    assert near[1].sum() == 3 * 25 - 1 and near[0][-1] - near[0][0] > 9  # it does count something
    np.testing.assert_array_equal(got[0], near[0] + far * LOG10_2)


def test_diagnosis_counts_every_entry_once():
    res = small_result(depth=12, width=5, activation="relu", init="he_normal")
    d = gb.diagnose(res, bins=17)
    assert d.hist_counts.shape == (12, 17) and d.hist_edges.shape == (18,)
    total = d.hist_counts.sum(axis=1) + d.hist_zeros + d.hist_nonfinite + d.hist_outside
    np.testing.assert_array_equal(total, np.full(12, 25))


# ---------------------------------------------------------------- statistics passed through
def test_statistics_are_those_of_the_result():
    res = small_result(depth=8, width=6, activation="tanh", sigma_w=3.0, init="normal")
    d = gb.diagnose(res)
    np.testing.assert_array_equal(d.saturation, res.saturation)
    np.testing.assert_array_equal(d.dead, res.dead)
    np.testing.assert_allclose(d.act_mean, res.act_mean.to_float())
    np.testing.assert_allclose(d.act_std, res.act_std.to_float())
    assert d.first_nonfinite_forward is None and d.first_nonfinite_backward is None
    assert d.loss == res.loss and d.depth == 8
    assert d.stack["activation"] == "tanh" and d.backend == "numpy"


@pytest.mark.usefixtures("plain_biased_forward")
def test_nonfinite_forward_is_reported():
    # biases, run without exponents (plain_biased_forward): plain float64 overflows
    stack = gb.Stack(depth=6, width=4, activation="relu", init="normal", sigma_w=1e80, sigma_b=0.1, loss="mse")
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 3, 1)
    with np.errstate(all="ignore"):
        res = gb.backprop(stack, params, x, np.zeros((3, 1)), backend="numpy")
        d = gb.diagnose(res)
    assert d.first_nonfinite_forward is not None
    assert d.verdict == "exploding"
    assert f"first non-finite layer (forward): {d.first_nonfinite_forward}" in str(d)
    json.loads(d.to_json())  # still strict JSON


# ---------------------------------------------------------------- serialisation and text
def test_json_round_trip_is_strict_and_lossless():
    res = small_result(depth=9, width=4, activation="relu", init="normal", sigma_w=0.3)
    d = gb.diagnose(res)
    text = d.to_json()

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    raw = json.loads(text, parse_constant=no_constants)
    assert raw["verdict"] == d.verdict and len(raw["grad_log10"]) == 9
    back = Diagnosis.from_json(text)
    assert back.to_json() == text
    for f in dataclasses.fields(Diagnosis):
        a, b = getattr(d, f.name), getattr(back, f.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
            assert a.dtype.kind == b.dtype.kind, f.name
        else:
            assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), f.name


def test_json_keeps_zero_gradients_as_minus_infinity():
    res = with_chain(small_result(depth=5), [-3, -2, -1, 0, 1])
    res = dataclasses.replace(res, grad_norm=gb.LogScaled(np.array([0.0, 0.0, 0.5, 0.5, 0.5]), res.grad_norm.exponent))
    d = gb.diagnose(res)
    assert d.grad_log10[0] == -np.inf
    raw = json.loads(d.to_json())
    assert raw["grad_log10"][:2] == ["-inf", "-inf"]
    assert Diagnosis.from_json(d.to_json()).grad_log10[0] == -np.inf
    assert d.verdict == "vanishing" and "exactly zero gradient" in d.explanation


def test_str_reads_well():
    d = gb.diagnose(small_result(depth=40, width=4, activation="sigmoid"))
    text = str(d)
    lines = text.splitlines()
    assert lines[0].startswith("gradbench diagnosis: depth 40, width 4, sigmoid")
    assert "verdict: VANISHING" in text and "decades per layer" in text
    assert "plain float64" in text and "plain float32" in text
    # a selection of layers: both ends and some in between, marked with "..."
    assert any(line.split()[:1] == ["0"] for line in lines) and any(line.split()[:1] == ["39"] for line in lines)
    assert "..." in text
    assert max(len(line) for line in lines) <= 110


def test_relative_size_of_the_gradient_with_params():
    # flat but huge gradients: a ReLU stack with a large init and a bce head
    stack = gb.Stack(depth=10, width=16, activation="relu", init="he_normal", sigma_w=3.0, input_dim=2,
                     loss="bce")
    params = gb.init_params(stack, 0)
    X, y = gb.datasets.moons(200, seed=0)
    res = gb.backprop(stack, params, X, y[:, None].astype(float), backend="numpy")
    without = gb.diagnose(res)
    with_params = gb.diagnose(res, params)
    # ||dW_l|| is flat (zero-bias ReLU: forward and backward grow alike), the signal is not:
    # chi_1 = sigma_w^2 / 2 = 4.5, 0.33 decades per layer going down
    assert abs(without.decades_per_layer) < 0.05 and without.signal_decades_per_layer > 0.2
    assert without.verdict == "exploding" and "backward signal" in without.explanation
    ref = np.log10([np.linalg.norm(params.W[l]) for l in range(10)])
    np.testing.assert_allclose(with_params.weight_log10, ref, rtol=1e-12)
    # without the trend rule (a huge threshold) nothing is left: ||dW_l|| / ||W_l|| > 10 (an SGD step
    # at lr 0.1 would move W_l by > 100 %, the old rule 5) is the scale of the loss, which the
    # elasticity ||dW_l|| ||W_l|| / loss divides out; it is nowhere near 10^-8
    dW = np.array([np.linalg.norm(res.grads.W.to_float(warn=False)[l]) for l in range(10)])
    assert np.max(np.log10(dW) - ref) > 1
    elasticity = np.log10(dW) + ref - math.log10(res.loss)
    assert -1 < elasticity.min() and elasticity.max() < 4
    no_trend = gb.diagnose(res, params, threshold=100)
    assert no_trend.verdict == "stable", no_trend.explanation
    # the elasticity rule fires at tiny > -min(elasticity) (every e_l below 10^-tiny): never here
    assert gb.diagnose(res, params, threshold=100, tiny=0.01).verdict == "stable"
    back = Diagnosis.from_json(with_params.to_json())
    np.testing.assert_array_equal(back.weight_log10, with_params.weight_log10)
    with pytest.raises(ValueError, match="tiny"):
        gb.diagnose(res, params, tiny=0)
    # a large elasticity never hides a vanishing chain, and is not exploding by itself
    g = 0.5 * np.arange(11.0)
    assert classify(g, elasticity_log10=np.full(11, 3.0)) == "vanishing"
    assert classify(np.zeros(11), elasticity_log10=np.full(11, 30.0)) == "stable"
    # every e_l below 10^-8 (an unknown one, nan, does not count): vanishing everywhere
    assert classify(np.zeros(11), elasticity_log10=np.full(11, -8.01)) == "vanishing"
    assert classify(np.zeros(11), elasticity_log10=np.r_[np.full(10, -8.01), np.nan]) == "vanishing"
    assert classify(np.zeros(11), elasticity_log10=np.r_[np.full(10, -8.01), -7.99]) == "stable"
    assert classify(np.zeros(11), elasticity_log10=np.full(11, np.nan)) == "stable"


@pytest.mark.parametrize("kw", [dict(activation="sigmoid", depth=60), dict(activation="tanh", sigma_w=3.0, depth=80),
                                dict(activation="relu", init="he_normal", depth=40)])
def test_assess_is_the_verdict_of_diagnose_without_histograms(kw):
    """A stats_only run without histograms (hist_bins=0, a sweep's runs) has no diagnosis, but
    assess gives the rates and verdict that diagnose gives for the same run with them."""
    from gradbench.diagnose import assess

    stack = gb.Stack(width=16, **kw)
    params, x = gb.init_params(stack, 3), gb.gaussian_input(stack, 8, 4)
    bare = gb.backprop(stack, params, x, stats_only=True, hist_bins=0)
    assert bare.grad_hist is None
    with pytest.raises(ValueError, match="assess"):
        gb.diagnose(bare)
    d = gb.diagnose(gb.backprop(stack, params, x, stats_only=True), params)
    a = assess(bare, params)
    assert (a.verdict, a.rule is not None) == (d.verdict, True)
    for name in ("grad_log10", "signal_log10", "weight_log10"):
        np.testing.assert_array_equal(getattr(a, name), getattr(d, name), err_msg=name)
    for name in ("decades_per_layer", "intercept", "signal_decades_per_layer", "loss_log10"):
        assert getattr(a, name) == getattr(d, name), name


@pytest.mark.parametrize("chunk", [7, 8192])
def test_rebinned_streaming_histograms_match_a_bin_by_bin_loop(chunk):
    """gradbench.histograms.rebin_streaming (vectorised, ``chunk`` layers at a time) against a
    plain loop over every layer and fine bin: each fine bin goes whole into the common bin that
    holds its centre, or to ``outside``. 300 layers (not a multiple of 7), a range that cuts
    some layers' bins off on both sides."""
    from gradbench.histograms import rebin_streaming

    stack = gb.Stack(depth=300, width=6, activation="tanh", init="normal", sigma_w=1.1)
    res = gb.backprop(stack, gb.init_params(stack, 3), gb.gaussian_input(stack, 5, 4), stats_only=True)
    h = res.grad_hist
    g = res.grad_norm.log10()
    lo, hi, bins = math.floor(g.min()) - 1.0, math.ceil(g.max()) - 2.0, 13
    edges, counts, zeros, nonfinite, outside = rebin_streaming(h, bins, (lo, hi), chunk=chunk)
    want = np.zeros((300, bins), dtype=np.int64)
    want_out = np.array(h.below, dtype=np.int64)
    for l in range(300):
        for j in range(h.bins):
            c = int(h.counts[l, j])
            centre = (int(h.top[l]) - h.bins + 1 + j + 0.5) / h.per_decade
            col = math.floor((centre - lo) / (hi - lo) * bins)
            if 0 <= col < bins:
                want[l, col] += c
            else:
                want_out[l] += c
    assert outside.sum() > 0 and counts.sum() > 0  # the range cuts: both paths are exercised
    np.testing.assert_array_equal(counts, want)
    np.testing.assert_array_equal(outside, want_out)
    np.testing.assert_array_equal(edges, np.linspace(lo, hi, bins + 1))
    assert counts.dtype == np.int64 and np.array_equal(zeros, h.zeros)


@pytest.mark.parametrize("far", [2**44, -(2**62)])
def test_rebinned_streaming_histograms_far_out_count_as_near_zero(far):
    """Streaming histograms whose bins lie near index ``far`` (every layer at ~10^(far / 4)):
    the default range collapsed to hi == lo in float64. The counts are those of the same
    histograms near 0 (an independent run of the near path), the edges moved by far / 4."""
    import dataclasses

    from gradbench.histograms import rebin_streaming

    stack = gb.Stack(depth=40, width=6, activation="tanh", init="normal", sigma_w=1.1)
    h = gb.backprop(stack, gb.init_params(stack, 3), gb.gaussian_input(stack, 5, 4), stats_only=True).grad_hist
    assert h.top.max() > h.top.min()  # the layers' windows differ
    h = dataclasses.replace(h, top=h.top - int(h.top.max()))  # the largest at 0: the far path's frame
    near, got = rebin_streaming(h, 11), rebin_streaming(dataclasses.replace(h, top=h.top + far), 11)
    for a, b in zip(near[1:], got[1:]):
        np.testing.assert_array_equal(a, b)
    assert near[1].sum() > 0
    np.testing.assert_array_equal(got[0], np.linspace(*near[0][[0, -1]], 12) + far / h.per_decade)


@pytest.mark.usefixtures("plain_biased_forward")
def test_activation_std_beyond_1e154_is_exact_and_the_forward_overflow_is_where_it_happens():
    """A biased leaky-ReLU stack (sigma_w = 30, sigma_b = 1e-3) grows to 1e307 before it overflows
    at layer 250. The std squared plain floats and read inf from layer 126 on (activations of
    ~1e160), so "plain float64 would overflow the forward activations at layer 126" stood beside
    "first non-finite layer (forward): 250". Each layer's std against mpmath on an independent
    plain forward (tests/naive.py); the forward limit is the layer where it does overflow."""
    import mpmath as mp
    import naive

    stack = gb.Stack(depth=300, width=8, activation="leaky_relu", sigma_w=30.0, sigma_b=1e-3)
    params, x = gb.init_params(stack, 1), gb.gaussian_input(stack, 4, 2)
    with np.errstate(all="ignore"):
        d = gb.diagnose(gb.backprop(stack, params, x), params)
        _, saved = naive.forward(stack, {k: np.asarray(getattr(params, k), np.float64)
                                         for k in ("W", "b", "gamma", "beta", "slope")}, x)
    first = d.first_nonfinite_forward
    assert first is not None and first > 200
    for l in range(first):
        h = [mp.mpf(float(v)) for v in saved["hs"][l + 1].ravel()]
        mean = mp.fsum(h) / len(h)
        want = mp.sqrt(mp.fsum((v - mean) ** 2 for v in h) / len(h))
        assert abs(d.act_std_log10[l] - float(mp.log10(want))) < 1e-9, (l, d.act_std_log10[l], mp.log10(want))
        assert abs(d.act_mean_log10[l] - float(mp.log10(abs(mean)))) < 1e-9, (l, d.act_mean_log10[l])
    assert np.max(d.act_std_log10[:first]) > 300  # far beyond where squares overflow
    assert d.float_limits["float64"]["forward_overflow_layer"] == first


@pytest.mark.usefixtures("plain_biased_forward")
@pytest.mark.parametrize("backend", gb.backends())
def test_activation_mean_is_finite_wherever_the_activations_are(backend):
    """A biased ReLU stack at sigma_w = 3 reaches 1e307 before its forward overflows: the plain sum
    of a layer's 512 entries overflowed first, and act_mean read inf (exact, as documented, but for
    that) for the five layers before the first non-finite one. Each layer's mean against mpmath on
    an independent plain forward (tests/naive.py)."""
    import mpmath as mp
    import naive

    stack = gb.Stack(depth=1000, width=32, activation="relu", sigma_w=3.0, sigma_b=0.1)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 16, 1)
    res = gb.backprop(stack, params, x, backend=backend)
    with np.errstate(all="ignore"):
        _, saved = naive.forward(stack, {k: np.asarray(getattr(params, k), np.float64)
                                         for k in ("W", "b", "gamma", "beta", "slope")}, x)
    first = res.first_nonfinite_forward
    assert first is not None and first > 900
    got = res.act_mean.log10()
    for l in range(first - 10, first):
        h = saved["hs"][l + 1].ravel()
        want = mp.log10(abs(mp.fsum(mp.mpf(float(v)) for v in h) / len(h)))
        assert abs(got[l] - float(want)) < 1e-9, (l, got[l], want)
    assert np.sum(np.abs(saved["hs"][first - 1]), dtype=np.float64) == np.inf  # a plain sum overflows there


def test_no_extrapolation_where_the_stack_gets_there():
    """A 600-layer sigmoid stack underflows float64 at layer 121 and float32 at 539; the file also
    said layers_to_underflow 480 and 61 (documented: only when the stack never gets there)."""
    stack = gb.Stack(depth=600, width=16, activation="sigmoid")
    params = gb.init_params(stack, 0)
    d = gb.diagnose(gb.backprop(stack, params, gb.gaussian_input(stack, 8, 1)), params)
    for lim in d.float_limits.values():
        assert lim["underflow_layer"] is not None and lim["layers_to_underflow"] is None, lim
    short = gb.Stack(depth=50, width=16, activation="sigmoid")  # never gets there in float64: extrapolated
    ps = gb.init_params(short, 0)
    lim = gb.diagnose(gb.backprop(short, ps, gb.gaussian_input(short, 8, 1)), ps).float_limits["float64"]
    assert lim["underflow_layer"] is None and lim["layers_to_underflow"] > 50


def _plain_pre_activations(params, x, phi):
    """z_l of a stack with biases in plain float64 NumPy (no rescaling: the forward overflows)."""
    h, zs = np.asarray(x, dtype=np.float64), []
    for W, b in zip(params.W, params.b):
        zs.append(h @ W.T + b)
        h = phi(zs[-1])
    return zs


_SWISH_MAX = float(np.max((lambda s, z: s * (1 + z * (1 - s)))(1 / (1 + np.exp(-np.linspace(0, 5, 200001))),
                                                                   np.linspace(0, 5, 200001))))
_FORWARD = {  # phi, and the saturated entries (|phi'| < 1 % of its largest value) of finite z
    "relu": (lambda z: np.maximum(z, 0), lambda z: z <= 0),
    "leaky_relu": (lambda z: np.where(z > 0, z, 0.01 * z), lambda z: np.zeros(z.shape, bool)),
    "swish": (lambda z: z / (1 + np.exp(-z)),
              lambda z: np.abs((lambda s: s * (1 + z * (1 - s)))(1 / (1 + np.exp(-z)))) < 0.01 * _SWISH_MAX),
}


@pytest.mark.usefixtures("plain_biased_forward")
@pytest.mark.parametrize("stats_only", [False, True])
@pytest.mark.parametrize("backend", gb.backends())
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "swish"])
def test_layers_of_nan_pre_activations_have_no_saturation_or_dead_fraction(activation, backend, stats_only):
    """The forward overflows at layer 3 (sigma_w = 1e80, biases: no rescaling). From layer 4 on z
    holds NaN: the kernels' comparisons read it as False and the report said "dead 0.0 %"; those
    fractions are NaN now, and the table prints nan. Infinite z count by their limits (layer 3:
    ReLU units at -inf are dead, at +inf live; leaky ReLU's +inf and -inf make act_mean NaN
    without a NaN z), except swish's phi'(-inf), which the kernels evaluate as inf * 0. Expected
    values from a plain NumPy forward. Positive inputs and weights up to layer 3, whose weights
    have one sign per unit: its overflowing products never meet one of the other sign (a sum of
    +inf and -inf products is NaN in a plain loop, Numba's, but not with the fused multiply-adds
    of BLAS, which would make the backends differ there)."""
    stack = gb.Stack(depth=8, width=8, activation=activation, init="normal", sigma_w=1e80, sigma_b=0.1)
    params, x = gb.init_params(stack, 0), np.abs(gb.gaussian_input(stack, 4, 1))
    params.W[:3] = np.abs(params.W[:3])
    params.W[3] = np.abs(params.W[3]) * np.where(np.arange(8) < 4, -1.0, 1.0)[:, None]  # units 0-3: -inf
    phi, saturated = _FORWARD[activation]
    with np.errstate(all="ignore"):
        zs = _plain_pre_activations(params, x, phi)
        res = gb.backprop(stack, params, x, backend=backend, stats_only=stats_only,
                          checkpoint=2 if stats_only else None)
        text = str(gb.diagnose(res))
    nan = np.array([np.isnan(z).any() for z in zs])
    uncountable = nan | np.array([activation == "swish" and bool(np.any(z == -np.inf)) for z in zs])
    assert not nan[:4].any() and nan[4:].all() and np.all(np.isinf(zs[3]))  # the test means what it says
    want_sat = np.array([np.nan if u else np.mean(saturated(z)) for z, u in zip(zs, uncountable)])
    np.testing.assert_array_equal(res.saturation, want_sat)
    if activation == "leaky_relu":  # +inf and -inf in h_4: its mean is NaN, though no z is
        assert np.isnan(res.act_mean.mantissa[3]) and res.dead[3] == 0.5
    if activation != "swish":
        want_dead = np.array([np.nan if n else np.mean(np.all(z <= 0, axis=0)) for z, n in zip(zs, nan)])
        np.testing.assert_array_equal(res.dead, want_dead)
        rows = {int(line.split()[0]): line for line in text.splitlines() if line.strip()[:1].isdigit()}
        assert all(rows[l].endswith(" nan") for l in range(4, 8)) and "%" in rows[3], text
        # the sentence averages over the layers whose units can be counted, and says so
        assert np.nanmean(want_dead) > 0.1 and (f"{100 * np.nanmean(want_dead):.0f} % of the units of the 4 layers "
                                                "whose pre-activations are numbers are") in " ".join(text.split())


def test_the_loss_overflow_is_said_where_a_plain_float32_forward_prints_inf():
    """A ReLU stack with skip connections and no scaling grows its activations ~0.1 decades a
    layer; 0.5 ||h_L||^2 leaves float32's range long before h_L does. The
    diagnosis says so ("would overflow the loss") exactly where an independent plain float32
    forward (tests/naive.py) computes an infinite loss, and never for float64."""
    import naive

    seen = set()
    for depth in (60, 240):
        stack = gb.Stack(depth=depth, width=16, activation="relu", init="he_normal", residual=2)
        params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1)
        d = gb.diagnose(gb.backprop(stack, params, x), params)
        P = {k: np.asarray(getattr(params, k), np.float32) for k in ("W", "b", "gamma", "beta", "slope")}
        with np.errstate(over="ignore"):
            loss32, _ = naive.forward(stack, P, np.asarray(x, np.float32))
        over = bool(np.isinf(loss32))
        seen.add(over)
        assert d.float_limits["float32"]["loss_overflow"] == over, (depth, d.loss_log10, loss32)
        assert not d.float_limits["float64"]["loss_overflow"]
        assert ("plain float32 would overflow the loss" in gb.report.format_report(d)) == over
    assert seen == {True, False}


@pytest.mark.parametrize("kw,batch", [
    # two residual groups: a "trend" through two branches' norms (it said ~511391 layers to overflow)
    (dict(depth=100, width=32, activation="sigmoid", residual=50), 16),
    # a signal held by the clip at every layer (the rate is the clip's: it said ~42504 layers to underflow)
    (dict(depth=40, width=16, activation="tanh", init="normal", sigma_w=2.0, batch_norm=True, residual=4,
          residual_scale=0.3, clip="value", clip_threshold=0.01), 3),
])
def test_no_extrapolation_from_a_fit_that_is_not_the_chains_trend(kw, batch):
    stack = gb.Stack(**kw)
    d = gb.diagnose(gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, batch, 1)))
    for name in ("float64", "float32"):
        lim = d.float_limits[name]
        assert lim["layers_to_underflow"] is None and lim["layers_to_overflow"] is None, lim
    assert "at this rate" not in str(d)
    plain = gb.Stack(depth=30, width=32, activation="sigmoid")  # a trend of the chain: still extrapolated
    p = gb.diagnose(gb.backprop(plain, gb.init_params(plain, 0), gb.gaussian_input(plain, 16, 1)))
    assert p.float_limits["float64"]["layers_to_underflow"] is not None


def test_params_that_did_not_produce_the_result_are_refused():
    """Doubling W in place after backprop, then diagnose(res, params), gave a sigmoid sentence at
    sigma_w 1.97 beside a table measured at 1; another seed's params of the same shape were taken
    too. The result keeps a probe of its weights (each layer's first, middle and last row summed)."""
    stack = gb.Stack(depth=20, width=8, activation="sigmoid")
    p, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1)
    res = gb.backprop(stack, p, x)
    assert gb.diagnose(res, p).verdict == "vanishing"
    with pytest.raises(ValueError, match="params are not the weights the result ran with: layer 0's differ"):
        gb.diagnose(res, gb.init_params(stack, 1))
    for change in (lambda W: W.__setitem__((slice(None), slice(1, None)), 3 * W[:, 1:]),  # every row but the first
                   lambda W: W.__setitem__((3, slice(None), 5), 0.5), lambda W: W.__setitem__(3, 2 * W[3])):
        q = gb.init_params(stack, 0)  # the weights that ran, a fresh copy
        change(q.W)  # (the review's W[:, 1:, :] *= 3 passed the first row's probe)
        with pytest.raises(ValueError, match=r"layer (0|3)'s differ.*changed in place after the pass"):
            gb.diagnose(res, q)
    g = gb.GeneratedParams(stack, 3)
    made = gb.backprop(stack, g, x)
    assert gb.diagnose(made, g).verdict == gb.diagnose(made, g.materialize()).verdict
    with pytest.raises(ValueError, match="generated from seed 4, but the result ran with seed 3"):
        gb.diagnose(made, gb.GeneratedParams(stack, 4))


def test_generated_weights_that_did_not_produce_the_result_are_refused():
    """Where generated weights met stored ones, diagnose took them unchecked and reported their
    norms: another seed's GeneratedParams beside a result of stored weights (log10 ||W_0|| 0.6207
    where the run's was 0.6072), stored weights of another seed or sigma_w beside a result of
    generated ones ("sigma_w = 0.994 from the weights", the run's 0.987). Both are compared with
    the weights the seed generates; its own weights, stored (materialize) or generated, pass."""
    stack = gb.Stack(depth=12, width=8, activation="sigmoid")
    x = gb.gaussian_input(stack, 4, 1)
    stored, gen = gb.init_params(stack, 0), gb.GeneratedParams(stack, 5)
    res, made = gb.backprop(stack, stored, x), gb.backprop(stack, gen, x)
    with pytest.raises(ValueError, match=r"params \(generated from seed 3\) are not the weights the result ran "
                                         r"with: layer 0's differ \(and 11 more\)"):
        gb.diagnose(res, gb.GeneratedParams(stack, 3))
    for other in (gb.init_params(stack, 7), gb.init_params(stack.replace(sigma_w=5.0), 5), stored):
        with pytest.raises(ValueError, match=r"not the weights the result ran with \(generated from seed 5\)"):
            gb.diagnose(made, other)
    changed = gen.materialize()
    changed.W[4, 4] *= 2  # a probed row (the middle one, N // 2) of one layer
    with pytest.raises(ValueError, match=r"\(generated from seed 5\): layer 4's differ,"):
        gb.diagnose(made, changed)
    want = np.log10([np.linalg.norm(w) for w in gen.materialize().W])
    for params in (gen, gen.materialize()):  # the run's own weights: taken, their norms reported
        np.testing.assert_allclose(gb.diagnose(made, params).weight_log10, want, rtol=1e-12)
    from_stored = gb.backprop(stack, gen.materialize(), x)
    np.testing.assert_allclose(gb.diagnose(from_stored, gen).weight_log10, want, rtol=1e-12)


@pytest.mark.parametrize("stats_only", [False, True])
def test_bins_that_do_not_fit_in_memory_are_refused_before_any_work(monkeypatch, stats_only):
    """gb.diagnose(res, bins=10**9) ran out of memory (or on for minutes); the command line
    refuses such --bins in its plan. The refusal's suggestion fits."""
    import re

    from gradbench import plan

    monkeypatch.setattr(plan, "available_memory", lambda: 2**30)  # 1 GiB: half of it is the budget
    s = gb.Stack(depth=6, width=3)
    P = gb.init_params(s, 0)
    res = gb.backprop(s, P, gb.gaussian_input(s, 3, 0), stats_only=stats_only)
    with pytest.raises(ValueError, match=r"bins=100000000 needs about .* GiB for the histograms of 6 layers, more than "
                                         r"half the available memory \(512.00 MiB\): pass fewer bins") as e:
        gb.diagnose(res, P, bins=10**8)
    most = int(re.search(r"up to about ([\d,]+)", str(e.value)).group(1).replace(",", ""))
    assert 10**5 < most < 10**8
    d = gb.diagnose(res, P, bins=min(most, 10**6))  # the suggestion fits (and is not small)
    assert d.hist_counts.shape == (6, min(most, 10**6))


def test_the_diagnosis_keeps_where_the_clip_acted(tmp_path):
    """The table's `clipped` column and the files' `clip_acted` are the result's record
    (tests/test_clip_acted.py checks the record against a plain chain)."""
    from gradbench.frames import write_npz
    from gradbench.report import table_layers

    st = gb.Stack(depth=30, width=32, activation="tanh", init="normal", sigma_w=1.3, clip="norm", clip_threshold=5.0)
    p, x = gb.init_params(st, 0), gb.gaussian_input(st, 16, 1)
    res = gb.backprop(st, p, x)
    d = gb.diagnose(res)
    want = res.signal_clip_acted[:30]
    assert 0 < want.sum() < 30 and np.array_equal(d.clip_acted, want)
    assert np.array_equal(gb.Diagnosis.from_json(d.to_json()).clip_acted, want)
    write_npz(d, tmp_path / "d.npz")
    assert np.array_equal(gb.Diagnosis.from_npz(tmp_path / "d.npz").clip_acted, want)
    assert np.array_equal(d.to_frame()["clip_acted"].to_numpy(), want)
    lines = str(d).splitlines()
    head = next(i for i, s in enumerate(lines) if s.lstrip().startswith("layer"))
    assert lines[head].rstrip().endswith("clipped")
    rows = {int(s.split()[0]): s.split()[-1] for s in lines[head + 1:] if s.split() and s.split()[0].isdigit()}
    assert rows and all(v == ("yes" if want[l] else "-") for l, v in rows.items())
    assert set(rows) == set(table_layers(30, 12))
    plain = gb.diagnose(gb.backprop(st.replace(clip=None), p, x))
    plain_head = next(s for s in str(plain).splitlines() if s.lstrip().startswith("layer"))
    assert plain.clip_acted.size == 0 and "clipped" not in plain_head


def test_no_overflow_extrapolation_under_a_signal_clip_that_has_not_bound_yet():
    """40 tanh layers at sigma_w = 2.5 under a norm clip at 10^6 reach 10^4.6 without the clip
    acting, and the diagnosis said plain float64 "would overflow after ~3420 layers": a deeper
    stack's signal stops at the clip. Checked on the deeper stack itself (its signal norms at
    most the threshold, every gradient finite in plain float32 too); without the clip the
    extrapolation stays, and towards underflow a clip that does not bind leaves it alone."""
    kw = dict(width=32, activation="tanh", init="normal", sigma_w=2.5)
    for clip in ("norm", "value"):
        stack = gb.Stack(depth=40, clip=clip, clip_threshold=1e6, **kw)
        p = gb.init_params(stack, 0)
        d = gb.diagnose(gb.backprop(stack, p, gb.gaussian_input(stack, 16, 1)), p)
        assert d.verdict == "exploding" and not d.clip_acted.any()
        assert all(d.float_limits[n]["layers_to_overflow"] is None for n in ("float64", "float32")), d.float_limits
        assert "would overflow after" not in str(d)
    deep = gb.Stack(depth=400, clip="norm", clip_threshold=1e6, **kw)  # ~4x past where float32 "would overflow"
    r = gb.backprop(deep, gb.init_params(deep, 0), gb.gaussian_input(deep, 16, 1))
    assert r.signal_norm.log10().max() <= 6 + 1e-9 and r.grad_norm.log10().max() < 8  # float32 holds 10^38
    free = gb.Stack(depth=40, **kw)
    p = gb.init_params(free, 0)
    d = gb.diagnose(gb.backprop(free, p, gb.gaussian_input(free, 16, 1)), p)
    assert d.float_limits["float32"]["layers_to_overflow"] is not None
    sig = gb.Stack(depth=30, width=32, activation="sigmoid", clip="norm", clip_threshold=1e6)
    p = gb.init_params(sig, 0)
    d = gb.diagnose(gb.backprop(sig, p, gb.gaussian_input(sig, 16, 1)), p)
    assert d.verdict == "vanishing" and d.float_limits["float64"]["layers_to_underflow"] is not None


@pytest.mark.parametrize("c", [1e-20, 1e20, 1e150])
def test_the_magnitude_rule_without_params_uses_the_weights_that_ran(c):
    """A linear stack (identity, zero biases, batch 1) of orthogonal weights scaled by c: its
    elasticity ||dW_l|| ||W_l|| / loss is 2 sqrt(N) = 4 at every layer whatever c (closed form:
    ||dW_l|| = c^5 |x|^2, ||W_l|| = 2c, loss = c^6 |x|^2 / 2). diagnose(res) without the params
    took ||W_l|| as the init's sqrt(N) sigma_w: 20 or 150 decades off, and at c = 1e20 and 1e150
    said VANISHING ("changing any W_l by 100 % of itself would change the loss by at most 10^-19
    %"). It now reads the size the result recorded from the weights that ran; the verdict is
    the signal's trend, log10 c decades a layer."""
    from gradbench.diagnose import assess

    s = gb.Stack(depth=3, width=4, activation="identity", init="orthogonal", sigma_b=0.0)
    p = gb.init_params(s, 0)
    p.W[...] *= c
    x = np.random.default_rng(0).standard_normal((1, 4))
    for backend in ("numpy", "c"):
        a = assess(gb.backprop(s, p, x, backend=backend))
        np.testing.assert_allclose(a.elasticity_log10, math.log10(4.0), atol=1e-9)
        assert a.rule != "insensitive", (c, backend, a.verdict, a.rule)  # the elasticity rule's name
        # the signal ||dL/dh_l|| changes by log10 c a layer going down (its trend decides): 1e-20 vanishes
        assert a.verdict == ("vanishing" if c < 1 else "exploding"), (c, backend, a.verdict, a.rule)


def test_from_json_reads_an_out_files_text_and_refuses_a_path(tmp_path, capsys):
    """Diagnosis.from_json('r.json') failed with a bare JSONDecodeError ('Expecting value: line 1
    column 1'); the text of a `gradbench run --out r.json` file failed too (its diagnosis sits
    under "diagnosis"). Both kinds of diagnosis, against the file's own dict."""
    import json

    from gradbench.cli import main
    from gradbench.recurrent.diagnose import RecurrentDiagnosis

    for cls, argv in ((Diagnosis, ["run", "--depth", "5", "--width", "4"]),
                      (RecurrentDiagnosis, ["run", "--cell", "gru", "--steps", "5", "--hidden", "3"])):
        path = tmp_path / f"{cls.__name__}.json"
        assert main(argv + ["--backend", "numpy", "--out", str(path)]) == 0
        capsys.readouterr()
        with pytest.raises(ValueError, match=r"takes the JSON text, not a path .*from_json\(open\(path\)\.read\(\)\)"):
            cls.from_json(str(path))
        with pytest.raises(ValueError, match="not a path"):
            cls.from_json(path)
        d = cls.from_json(path.read_text())
        want = json.loads(path.read_text())["diagnosis"]
        assert d.verdict == want["verdict"] and np.allclose(d.signal_log10, np.array(want["signal_log10"], dtype=float))
        with pytest.raises(ValueError, match=r"not JSON \(Expecting value at line 1 column 1\)"):
            cls.from_json("no such file")


@pytest.mark.usefixtures("plain_biased_forward")
@pytest.mark.parametrize("backend", gb.backends())
def test_a_float32_forward_overflow_says_nothing_of_float64(backend):
    """A float32 ReLU stack at sigma_w = 3 overflows its forward at layer ~123; the same weights in
    float64 stay below 10^100 (an independent plain float64 forward, tests/naive.py). The float32
    run's NaN was read as an overflow in every dtype: "plain float64 would overflow the forward
    activations by layer 123", while the float64 run says float64 is fine. float64's line now says
    it is not known from that layer up, and names no overflow."""
    import naive

    stack = gb.Stack(depth=300, width=32, activation="relu", sigma_w=3.0, sigma_b=0.01, dtype="float32")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1)
    with np.errstate(all="ignore"):
        d = gb.diagnose(gb.backprop(stack, params, x, backend=backend), params)
        _, saved = naive.forward(stack, {k: np.asarray(getattr(params, k), np.float64)
                                         for k in ("W", "b", "gamma", "beta", "slope")}, x.astype(np.float64))
    top = max(float(np.max(np.abs(h))) for h in saved["hs"])
    assert np.isfinite(top) and top < 1e300  # float64 holds this forward everywhere
    f32 = next(l for l, h in enumerate(saved["hs"][1:]) if np.max(np.abs(h)) > np.finfo(np.float32).max)
    first = d.first_nonfinite_forward
    assert first is not None and abs(first - f32) <= 2  # where float32 itself overflows
    assert d.float_limits["float32"]["forward_overflow_layer"] == first
    f64 = d.float_limits["float64"]
    assert f64["forward_overflow_layer"] is None and f64["forward_unknown_layer"] == first
    text = str(d)
    assert "plain float64 would overflow" not in text and "plain float64 is fine" not in text
    assert f"plain float64: not known from layer {first} up" in text


@pytest.mark.parametrize("init_slope, slope, dead", [(0.0, 0.5, False), (0.25, 0.0, True)])
def test_prelu_units_are_dead_by_the_weights_slopes_not_the_stacks_init(init_slope, slope, dead):
    """A PReLU's slope is a parameter: a model's PReLU(init=0) trained to 0.5 has no dead units,
    and one whose slopes are 0 does, whatever ``activation_param`` (the init) says. The words and
    the table's column went by the init: "91 % of the units are dead" with every slope 0.5. Which
    units with z <= 0 for the whole batch pass a gradient: a plain float64 backward (tests/naive.py)."""
    import dataclasses
    import naive

    stack = gb.Stack(depth=10, width=8, activation="prelu", activation_param=init_slope, sigma_b=0.5)
    params = gb.init_params(stack, 0)
    params = dataclasses.replace(params, b=np.full_like(params.b, -0.5), slope=np.full(10, slope))
    x = gb.gaussian_input(stack, 8, 1)
    d = gb.diagnose(gb.backprop(stack, params, x), params)
    P = {k: np.asarray(getattr(params, k), np.float64) for k in ("W", "b", "gamma", "beta", "slope")}
    _, s = naive.forward(stack, P, x)
    neg = [np.all(z <= 0, axis=0) for z in s["zs"]]
    assert np.mean([n.mean() for n in neg]) > 0.5  # most units sit below zero for the whole batch
    # their dz: phi'(z) = slope there, so they pass a gradient exactly when the slope is not 0
    passes = [np.any(naive.dphi("prelu", z, slope)[:, n] != 0) for z, n in zip(s["zs"], neg) if n.any()]
    assert all(p != dead for p in passes)
    assert d.dead_below_zero is dead
    text = str(d)
    assert ("are dead (z <= 0" in text) is dead
    assert ("dead" if dead else "neg side") in text.splitlines()[next(i for i, l in enumerate(text.splitlines())
                                                                      if l.strip().startswith("layer"))]
    if not dead:
        assert "(a parameter: 0.5 in every layer)" in text
