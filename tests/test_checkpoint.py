"""Checkpointed and segmented backprop (issue 8): bitwise equal to the one-piece run, per backend.

Every comparison is against the plain run (``checkpoint=None``, one backend call per direction)
of the same backend, or against an independent computation from its full gradients; never
against the checkpointed code's own output.
"""

import math

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi, engine, histograms, loss, plan, reference
from gradbench.backends import backends, get_backend
from gradbench.logscaled import LOG10_2

BACKENDS = backends()


def _backward_top(module, G):
    """Run ``module.stack_backward`` on a 2-layer norm-clipped stack from the top signal G;
    return (sig_m[L], sig_e[L])."""
    stack = gb.Stack(depth=2, width=4, clip="norm", clip_threshold=1e-3)
    params = gb.init_params(stack, 0)
    icfg, fcfg = abi.kernel_config(stack, False)
    H = np.zeros((3, 2, 4))
    H[0] = gb.gaussian_input(stack, 2, 1)
    Z = np.empty((2, 2, 4))
    fexp, info = np.zeros(3, dtype=np.int64), np.full(2, -1, dtype=np.int64)
    frow = np.zeros((3, 2), dtype=np.int64)
    reference.stack_forward(icfg, fcfg, params.W, params.b, params.gamma, params.beta, params.slope, H, Z,
                            np.zeros((2, 4)), np.ones((2, 4)), fexp, frow, *(np.empty(2) for _ in range(4)), info)
    sig_e, sig_m = np.zeros(3, dtype=np.int64), np.empty(3)
    module.stack_backward(icfg, fcfg, params.W, params.gamma, params.beta, params.slope, H, Z, np.ones((2, 4)),
                          fexp, frow, np.array(G, dtype=np.float64), np.zeros(2, dtype=np.int64), np.empty((2, 4, 4)),
                          *(np.empty((2, 4)) for _ in range(3)), np.empty(2), sig_m, sig_e, np.empty(2),
                          np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64),
                          np.zeros(3, dtype=np.int64), info)
    return sig_m[2], sig_e[2]


# A normalised top signal of norm sqrt(8) * 0.75 > c = 1e-3: the old contract clipped it.
_TOP = np.full((2, 4), 0.75)
# Backends whose stack_backward still clips its top signal (the contract before issue 8).
TOP_CLIPPING = {b for b in BACKENDS if _backward_top(get_backend(b), _TOP) != (np.sqrt(8 * 0.75**2), 0)}


def _same(a, b, what):
    """Bitwise equality of LogScaled values or arrays (NaN equal to NaN)."""
    if isinstance(a, gb.LogScaled):
        np.testing.assert_array_equal(a.exponent, b.exponent, err_msg=f"{what}: exponents")
        a, b = a.mantissa, b.mantissa
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: differs at {np.argwhere(a != b)[:3].tolist()}"


def assert_bitwise(got, ref, grads=True):
    assert got.loss == ref.loss or (np.isnan(got.loss) and np.isnan(ref.loss))
    for name in ("loss_exact", "grad_norm", "signal_norm", "input_grad", "output", "act_mean", "act_std",
                 "saturation", "dead"):
        _same(getattr(got, name), getattr(ref, name), name)
    assert got.first_nonfinite_forward == ref.first_nonfinite_forward
    assert got.first_nonfinite_backward == ref.first_nonfinite_backward
    if grads:
        for name, g in ref.grads.items():
            _same(getattr(got.grads, name), g, f"grads.{name}")


CASES = {
    "tanh": (dict(depth=24, width=8, activation="tanh", init="he_normal", sigma_b=0.3), (1, 5, 7, 24)),
    "residual-bn": (dict(depth=24, width=6, activation="relu", batch_norm=True, residual=3, residual_scale=0.5,
                         init="he_normal"), (3, 6, 9)),
    "rescaled-relu": (dict(depth=60, width=8, activation="relu", init="he_normal", sigma_w=0.6), (7, 13)),
    "prelu-head-input": (dict(depth=12, width=6, activation="prelu", input_dim=4, loss="mse", output_dim=3,
                              clip="norm", clip_on="layer", clip_threshold=1e-3), (4, 5)),
    "value-clip": (dict(depth=30, width=6, activation="tanh", init="normal", sigma_w=3.0, clip="value",
                        clip_threshold=1e-3, residual=2), (4, 10)),
    "sigmoid-f32": (dict(depth=20, width=7, activation="sigmoid", dtype="float32", batch_norm=True), (3, 8)),
}


def _problem(kw, batch=5):
    stack = gb.Stack(**kw)
    params = gb.init_params(stack, seed=3)
    x = gb.gaussian_input(stack, batch, seed=4)
    t = None
    if stack.loss == "mse":
        t = np.random.default_rng(5).standard_normal((batch, stack.output_dim)).astype(stack.dtype)
    return stack, params, x, t


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_checkpointed_equals_plain_bitwise(backend, case):
    kw, ks = CASES[case]
    stack, params, x, t = _problem(kw)
    ref = gb.backprop(stack, params, x, t, backend=backend, checkpoint=None)
    assert ref.extras["checkpoint"] is None and ref.extras["segments"] == 1
    if case == "rescaled-relu":
        assert ref.forward_rescaled and np.all(ref.output.exponent != 0)  # the forward exponents cross segments
    for k in ks:
        got = gb.backprop(stack, params, x, t, backend=backend, checkpoint=k)
        assert got.extras["checkpoint"] == k
        assert got.extras["segments"] == -(-stack.depth // k)
        assert_bitwise(got, ref)


def _norm_clip_problem():
    # Every layer's signal is far above c, so it is norm-clipped at every layer and at every
    # segment boundary: g * (c / ||g||) is left with a norm of c(1 +- 1 ulp) about half the time.
    stack = gb.Stack(depth=150, width=16, activation="tanh", init="normal", sigma_w=4.0, clip="norm",
                     clip_threshold=1e-6)
    return stack, gb.init_params(stack, seed=3), gb.gaussian_input(stack, 4, seed=4)


@pytest.mark.parametrize("backend", [
    pytest.param(b, marks=pytest.mark.xfail(
        b in TOP_CLIPPING, strict=True,
        reason=f"the {b} backend's stack_backward still clips its top signal (old contract); a signal "
               "norm-clipped by the segment above can be clipped again at the boundary"))
    for b in BACKENDS])
def test_checkpointed_norm_signal_clipping_bitwise(backend):
    stack, params, x = _norm_clip_problem()
    ref = gb.backprop(stack, params, x, backend=backend, checkpoint=None)
    for k in (1, 7):
        assert_bitwise(gb.backprop(stack, params, x, backend=backend, checkpoint=k), ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_norm_clip_problem_really_lands_above_c(backend):
    """The case above is a real test: some clipped signals have a computed norm above c."""
    stack, params, x = _norm_clip_problem()
    ref = gb.backprop(stack, params, x, backend=backend, checkpoint=None)
    norms = ref.signal_norm.mantissa * 2.0 ** ref.signal_norm.exponent.astype(float)
    assert np.all(norms <= 1e-6 * (1 + 1e-12))
    assert np.sum(norms > 1e-6) >= 5, "too few signal norms above c: the bitwise test would not exercise the boundary"


def test_top_signal_is_clipped_once_by_the_engine():
    """The engine clips dL/dh_L; the reference's stack_backward no longer clips its top."""
    stack, params, x = _norm_clip_problem()
    res = gb.backprop(stack, params, x, backend="numpy", checkpoint=None)
    top = 0.5 * np.sum(res.output.to_float() ** 2)
    assert top > 1e-6  # so the true top gradient h_L is clipped
    G = res.output.mantissa.copy()
    e, _, _, row_e = loss.top_signal(stack, G, res.output.exponent)
    assert np.sqrt(np.sum(np.ldexp(G.astype(float), row_e[:, None]) ** 2)) * 2.0 ** e <= 1e-6 * (1 + 1e-15)
    # backward on a segment whose top is already clipped: the top is left as it is
    fwd_res = gb.backprop(stack, params, x, backend="numpy", checkpoint=1)
    _same(fwd_res.signal_norm, res.signal_norm, "signal_norm")


@pytest.mark.parametrize("backend", BACKENDS)
def test_stats_only_equals_plain_statistics(backend):
    stack, params, x, _ = _problem(dict(depth=30, width=8, activation="tanh", init="he_normal", residual=2))
    ref = gb.backprop(stack, params, x, backend=backend, checkpoint=None)
    for ck in (None, 6):
        got = gb.backprop(stack, params, x, backend=backend, checkpoint=ck, stats_only=True)
        assert got.grads is None
        assert_bitwise(got, ref, grads=False)
        _check_histogram(got.grad_hist, ref.grads.W)


def _check_histogram(h, W, per_decade=4, bins=40):
    """The streamed histograms against an independent count from the full gradients."""
    with np.errstate(invalid="ignore"):
        v = W.log10().reshape(len(W), -1)  # exact log10 |dW| from mantissa and exponent
    for l in range(len(W)):
        finite = np.isfinite(v[l])
        assert h.nonfinite[l] == np.sum(~np.isfinite(W.mantissa[l]))
        if not finite.any():
            assert h.top[l] == 0 and h.counts[l].sum() == 0 and h.below[l] == 0
            continue
        j = np.floor(v[l][finite] * per_decade).astype(np.int64)
        top = j.max()
        assert h.top[l] == top
        lo = top - bins + 1
        counts = np.bincount(j[j >= lo] - lo, minlength=bins)
        np.testing.assert_array_equal(h.counts[l], counts)
        assert h.below[l] == np.sum(j < lo)
        assert h.zeros[l] == np.sum(W.mantissa[l] == 0)
        np.testing.assert_allclose(h.edges(l)[[0, -1]], [lo / per_decade, (top + 1) / per_decade])


@pytest.mark.usefixtures("plain_biased_forward")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sigma_w", [1e12, 1.5])
def test_histogram_with_nonfinite_and_zero_gradients(backend, sigma_w):
    # relu, a bias, batch 1: dead units give exact zeros in dW; with a huge init the forward
    # overflows and every gradient turns NaN
    stack = gb.Stack(depth=40, width=6, activation="relu", init="he_normal", sigma_w=sigma_w, sigma_b=1.0)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 1, 1)
    ref = gb.backprop(stack, params, x, backend=backend)
    got = gb.backprop(stack, params, x, backend=backend, stats_only=True, checkpoint=8)
    if sigma_w > 1e6:
        assert ref.first_nonfinite_forward is not None and np.all(np.isnan(ref.grads.W.mantissa))
    else:
        assert np.all(np.isfinite(ref.grads.W.mantissa)) and np.sum(ref.grads.W.mantissa == 0) > 100
    assert_bitwise(got, ref, grads=False)
    _check_histogram(got.grad_hist, ref.grads.W)


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "numba"])
def test_histogram_of_a_segment_with_every_kind_of_entry(compiled):
    from gradbench.kernels import histogram_fill

    rng = np.random.default_rng(0)
    m = rng.standard_normal((5, 6, 6)) * 10.0 ** rng.uniform(-20, 0, (5, 6, 6))
    m[1, 0, :3] = [np.nan, np.inf, -np.inf]
    m[2] = 0.0
    m[3, 2] = 0.0
    m[4, 0, 0] = 5e-324  # subnormal
    W = gb.LogScaled(m, np.array([0, -3000, 7, 10**6, -(10**6)]))
    h = {k: np.zeros(5, np.int64) for k in ("top", "below", "zeros", "nonfinite")}
    counts = np.zeros((5, 40), np.uint16)
    histograms.fill_streaming(m, W.exponent, 4, 40, h["top"], counts, h["below"], h["zeros"], h["nonfinite"],
                              kernel=histogram_fill if compiled else None)
    _check_histogram(gb.GradHistogram(per_decade=4, bins=40, counts=counts, **h), W)
    assert list(h["nonfinite"]) == [0, 3, 0, 0, 0] and list(h["zeros"]) == [0, 0, 36, 6, 0]
    assert h["below"][4] >= 1
    # the same finite layers alone take the fast path (no NaN/Inf in the segment)
    h2 = {k: np.zeros(3, np.int64) for k in ("top", "below", "zeros", "nonfinite")}
    c2 = np.zeros((3, 40), np.uint16)
    histograms.fill_streaming(m[2:], W.exponent[2:], 4, 40, h2["top"], c2, h2["below"], h2["zeros"], h2["nonfinite"],
                              kernel=histogram_fill if compiled else None)
    np.testing.assert_array_equal(c2, counts[2:])
    for k in h2:
        np.testing.assert_array_equal(h2[k], h[k][2:], err_msg=k)


def test_histogram_dense_grid_and_underflowing_gradients():
    # 3000 sigmoid layers: dW underflows float64 by thousands of decades; the histogram does not
    stack = gb.Stack(depth=3000, width=4, activation="sigmoid")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 3, 1)
    ref = gb.backprop(stack, params, x, backend="numpy")
    got = gb.backprop(stack, params, x, backend="numpy", stats_only=True, hist_bins=12, hist_per_decade=2)
    assert ref.grad_norm.log10()[0] < -1000
    _check_histogram(got.grad_hist, ref.grads.W, per_decade=2, bins=12)
    lo, hi = np.floor(ref.grads.W.log10().min()), np.ceil(ref.grads.W.log10().max())
    edges, counts, outside = got.grad_hist.dense(lo - 3, hi)
    assert counts.sum() + outside.sum() == 3000 * 16 - got.grad_hist.zeros.sum()
    assert edges[0] == lo - 3 and edges[-1] == hi


def test_stats_only_with_layer_clipping_matches_clipped_grads():
    stack, params, x, t = _problem(CASES["prelu-head-input"][0])
    ref = gb.backprop(stack, params, x, t, backend="numpy")
    got = gb.backprop(stack, params, x, t, backend="numpy", stats_only=True, checkpoint=4)
    _same(got.grad_norm, ref.grad_norm, "grad_norm after per-layer clipping")
    _check_histogram(got.grad_hist, ref.grads.W)
    with pytest.raises(ValueError, match="clip_on='layer'"):
        s2 = stack.replace(clip_on="global")
        gb.backprop(s2, params, x, t, backend="numpy", stats_only=True)


# ---------------------------------------------------------------- planning and refusal
def test_auto_checkpoints_only_beyond_the_budget():
    stack, params, x, _ = _problem(dict(depth=64, width=8, residual=4))
    plain = gb.backprop(stack, params, x, backend="numpy")
    assert plain.extras["checkpoint"] is None
    need = plan.memory_estimate(stack, 5)
    got = gb.backprop(stack, params, x, backend="numpy", memory_budget=need - 1)
    assert got.extras["checkpoint"] == plan.default_segment(stack) == 8
    assert_bitwise(got, plain)
    assert plan.default_segment(gb.Stack(depth=120, width=4, residual=3)) == 12  # round(sqrt(120)/3)*3
    assert plan.default_segment(gb.Stack(depth=10**6, width=4)) == 1000

def test_stats_only_checkpoints_unless_small(monkeypatch):
    """Statistics only: "auto" keeps every activation of a run that takes at most
    SMALL_RUN_BYTES of them (no recomputed forward), and checkpoints beyond that whatever the
    budget (nothing stored is returned); the statistics are the same bits either way."""
    assert plan.SMALL_RUN_BYTES == 64 * 2**20  # what README and docs/design.md state
    stack, params, x, _ = _problem(dict(depth=64, width=8, residual=4))
    acts = (2 * 64 + 1) * 5 * 8 * 8
    monkeypatch.setattr(plan, "SMALL_RUN_BYTES", acts)
    small = gb.backprop(stack, params, x, backend="numpy", stats_only=True)
    assert small.extras["checkpoint"] is None and small.extras["segments"] == 8
    monkeypatch.setattr(plan, "SMALL_RUN_BYTES", acts - 1)
    so = gb.backprop(stack, params, x, backend="numpy", stats_only=True)
    assert so.extras["checkpoint"] == 8
    assert_bitwise(small, so, grads=False)
    _same(small.grad_hist.counts, so.grad_hist.counts, "grad_hist")
    big = plan.plan_run(gb.Stack(depth=10**4, width=64), 64, stats_only=True, generated=True)
    assert big.recompute and big.segment == 100 and not big.keep_weights


def test_backprop_docstring_says_what_auto_does_for_a_stats_only_run():
    # before: "always for stats_only runs", though a small one keeps every activation
    doc = " ".join(gb.backprop.__doc__.split())
    assert "always for ``stats_only``" not in doc and "SMALL_RUN_BYTES` (64 MiB" in doc
    stack = gb.Stack(depth=20, width=8, residual=2)
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 3, 1), stats_only=True)
    assert (2 * 20 + 1) * 3 * 8 * 8 <= plan.SMALL_RUN_BYTES and res.extras["checkpoint"] is None


def test_refused_before_it_starts_with_the_option_that_fits():
    stack = gb.Stack(depth=10**6, width=64, activation="tanh", init="he_normal")
    x = gb.gaussian_input(stack, 64, 1)
    from gradbench.params import GeneratedParams
    gp = GeneratedParams(stack, seed=0)
    with pytest.raises(MemoryError) as err:
        gb.backprop(stack, gp, x, checkpoint=None, memory_budget=2**30)
    msg = str(err.value)
    assert "GiB" in msg and "checkpoint=1000" in msg and "stats_only=True" in msg
    with pytest.raises(MemoryError, match="GeneratedParams"):
        plan.plan_run(stack, 64, checkpoint="auto", generated=False, memory_budget=2**30)
    p = plan.plan_run(stack, 64, checkpoint="auto", stats_only=True, generated=True, memory_budget=2**30)
    assert p.recompute and p.segment == 1000 and p.estimate < 2**30


def test_bad_checkpoint_arguments():
    stack, params, x, _ = _problem(dict(depth=12, width=4, residual=3))
    with pytest.raises(ValueError, match="multiple of the residual group size 3"):
        gb.backprop(stack, params, x, checkpoint=4)
    with pytest.raises(TypeError, match="checkpoint must be"):
        gb.backprop(stack, params, x, checkpoint=2.5)
    none = r"; None keeps every layer in memory \(the command line's --checkpoint 0\)$"
    with pytest.raises(ValueError, match=r"group size 3 \(a residual group must not straddle two segments\)" + none):
        gb.backprop(stack, params, x, checkpoint=0)
    with pytest.raises(ValueError, match="memory_budget"):
        gb.backprop(stack, params, x, memory_budget=-1)
    plain, params, x, _ = _problem(dict(depth=12, width=4))  # no residual groups: no "group size 1"
    with pytest.raises(ValueError, match=r"^checkpoint=0 must be a positive int \(layers per segment\), 'auto' or None" + none):
        gb.backprop(plain, params, x, checkpoint=0)
    with pytest.raises(ValueError, match=r"^checkpoint=-3 must be a positive int \(layers per segment\), 'auto' or None$"):
        gb.backprop(plain, params, x, checkpoint=-3)


def test_reference_backward_leaves_a_clipped_top_alone():
    """The new contract at the kernel level: the reference normalises its top, never clips it."""
    assert _backward_top(reference, _TOP) == (np.sqrt(8 * 0.75**2), 0)
    assert "numpy" not in TOP_CLIPPING
    # ... but it does normalise it
    m, e = _backward_top(reference, 4 * _TOP)
    assert (m, e) == (np.sqrt(8 * 0.75**2), 2)


def _histogram_by_log10(m, exps, per_decade, bins):
    """Counts, top and below per layer from Python's math.log10 entry by entry (libm's log10, the
    one the compiled histogram promises to agree with bin for bin)."""
    L = len(exps)
    counts, top, below = np.zeros((L, bins), np.int64), np.zeros(L, np.int64), np.zeros(L, np.int64)
    for l in range(L):
        shift = float(exps[l]) * LOG10_2
        js = [math.floor((math.log10(abs(float(v))) + shift) * per_decade)
              for v in m[l].ravel() if v != 0 and math.isfinite(v)]
        if not js:
            continue
        top[l] = max(js)
        for j in js:
            if j < top[l] - bins + 1:
                below[l] += 1
            else:
                counts[l, j - top[l] + bins - 1] += 1
    return counts, top, below


@pytest.mark.parametrize("per_decade, bins", [(4, 40), (1, 3), (3, 7), (7, 12), (10, 1), (25, 60)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_histogram_bins_boundary_entries_by_log10(per_decade, bins, dtype):
    """Entries on and a few ulps around the bin boundaries (where the compiled kernel's table of
    boundaries must hand over to log10), at layer exponents up to 10^15, far below the window,
    subnormal: the compiled counts equal a per-entry math.log10 binning, and the NumPy reference's
    except where its vectorised log10 rounds the other way at a boundary."""
    from gradbench.kernels import histogram_fill

    rng = np.random.default_rng(per_decade * 100 + bins)
    exps = np.array([0, -3000, 7, 10**6, -(10**6), 10**15, -(10**15) + 3, 1])
    L, M = len(exps), 600
    m = np.empty((L, M))
    for l, e in enumerate(exps):
        shift = e * LOG10_2
        top = math.floor((0.0 + shift) * per_decade)  # around the bin of 1.0 * 2^e
        j = top - rng.integers(0, bins + 3, M // 2)
        v = 10.0 ** (j / per_decade - shift)  # boundaries, as nearly as float64 can say
        ulps = rng.integers(-3, 4, M // 2)
        v = np.array([np.nextafter(a, np.inf if u > 0 else 0.0) if u else a for a, u in zip(v, ulps)])
        m[l, : M // 2] = v * rng.choice([-1.0, 1.0], M // 2)
        m[l, M // 2:] = rng.standard_normal(M // 2) * 10.0 ** rng.uniform(-bins / per_decade - 3, 0.5, M // 2)
    m[1, :4] = [5e-324, 1e-310, 2.2250738585072014e-308, 0.0]  # subnormals, the smallest normal, zero
    m[2, :3] = [np.nan, -np.inf, 1e-300]  # non-finite; far below the window
    m = m.astype(dtype)
    got, ref = ({k: np.zeros(L, np.int64) for k in ("top", "below", "zeros", "nonfinite")} for _ in range(2))
    c_got, c_ref = np.zeros((L, bins), np.uint32), np.zeros((L, bins), np.uint32)
    for h, c, compiled in ((got, c_got, True), (ref, c_ref, False)):
        histograms.fill_streaming(m.reshape(L, 20, 30), exps, per_decade, bins, h["top"], c, h["below"],
                                  h["zeros"], h["nonfinite"], kernel=histogram_fill if compiled else None)
    want, top, below = _histogram_by_log10(m, exps, per_decade, bins)
    np.testing.assert_array_equal(c_got, want)
    np.testing.assert_array_equal(got["top"], top)
    np.testing.assert_array_equal(got["below"], below)
    for k in ("zeros", "nonfinite"):
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert want.sum() > L * M // 4 or bins < 7  # wide windows: most entries inside, on boundaries
    # the NumPy reference differs at most by a few entries on boundaries, each moved to a neighbour
    diff = c_ref.astype(np.int64) - want
    np.testing.assert_array_equal(diff.sum(axis=1), below - ref["below"])
    assert np.abs(diff).sum() <= L * M // 50
    assert np.all(np.abs(np.cumsum(diff, axis=1)) <= np.abs(diff).sum(axis=1, keepdims=True))
