"""The "plain float32 / float64 would ..." sentences of the report (gradbench.report._limit_sentence,
the limits of gradbench.verdict.float_limits), against independent computations: mpmath on the
run's own weights, plain NumPy forwards."""

import math

import mpmath as mp
import numpy as np
import pytest

import gradbench as gb

F64_TINY_LOG10 = math.log10(np.finfo(np.float64).tiny)
F64_MAX_LOG10 = math.log10(np.finfo(np.float64).max)


def _mp_sigmoid_grads(W, x, digits: int = 50) -> list[float]:
    """log10 ||dL/dW_l|| of a zero-bias sigmoid stack with the probe loss 0.5 ||h_L||^2, in mpmath
    at ``digits`` digits on the given (float32) weights and input, a plain loop."""
    with mp.workdps(digits):
        L, N = W.shape[0], W.shape[1]
        Wm = [[[mp.mpf(float(W[l, i, j])) for j in range(N)] for i in range(N)] for l in range(L)]
        hs = [[[mp.mpf(float(v)) for v in row] for row in x]]
        zs = []
        for l in range(L):
            z = [[mp.fsum(Wm[l][i][j] * h[j] for j in range(N)) for i in range(N)] for h in hs[-1]]
            zs.append(z)
            hs.append([[1 / (1 + mp.exp(-v)) for v in row] for row in z])
        g = [row[:] for row in hs[-1]]  # dL/dh_L = h_L
        out = [0.0] * L
        for l in range(L - 1, -1, -1):
            s = [[1 / (1 + mp.exp(-v)) for v in row] for row in zs[l]]
            dz = [[g[b][i] * s[b][i] * (1 - s[b][i]) for i in range(N)] for b in range(len(g))]
            dW = [[mp.fsum(dz[b][i] * hs[l][b][j] for b in range(len(g))) for j in range(N)] for i in range(N)]
            norm = mp.sqrt(mp.fsum(v * v for row in dW for v in row))
            out[l] = float(mp.log10(norm)) if norm != 0 else -math.inf
            g = [[mp.fsum(Wm[l][i][j] * dz[b][i] for i in range(N)) for j in range(N)] for b in range(len(g))]
        return out


@pytest.mark.parametrize("case", ["cli seed 11, sigma_w 200", "api seed 0, sigma_w 300"])
def test_a_float32_sigmoid_run_does_not_infer_a_float64_underflow_from_its_own_flushed_outputs(case):
    """A float32 sigmoid stack whose outputs underflow to 0 in float32 (z below ~ -104) read every
    gradient that depends on them 0, and said "plain float64 would underflow the gradient at layer 2"
    from that zero. mpmath at 50 digits on the same float32 weights puts every ||dW_l|| far inside
    float64's range (10^-53.97, 10^-52.00, 10^-58.48 for the command line's seed 11): the sentence now
    says float64's is not known there, and still says float32 loses it."""
    if case.startswith("cli"):  # gradbench run --dtype float32 --depth 3 --width 2 --batch 1 --activation sigmoid
        stack = gb.Stack(depth=3, width=2, activation="sigmoid", sigma_w=200, dtype="float32")  # --sigma-w 200 --seed 11
        params = gb.GeneratedParams(stack, 11)
        x = gb.gaussian_input(stack, 1, seed=np.random.default_rng([11, 1]))
        W = np.asarray(params.weights(0, 3))
    else:
        stack = gb.Stack(depth=3, width=2, activation="sigmoid", sigma_w=300, dtype="float32")
        params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 1, 1)
        W = np.asarray(params.W)
    truth = _mp_sigmoid_grads(W, x)
    assert all(F64_TINY_LOG10 < t < 0 for t in truth), truth  # float64 holds every one of them
    if case.startswith("cli"):
        assert np.allclose(truth, [-58.48, -52.00, -53.97], atol=0.01), truth
    d = gb.diagnose(gb.backprop(stack, params, x))
    text = str(d)
    assert "plain float64 would underflow" not in text, text
    f64 = d.float_limits["float64"]
    assert f64["underflow_layer"] is None and 2 in f64["underflow_unknown_layers"]
    assert all(l in f64["underflow_unknown_layers"] for l in range(3) if d.grad_log10[l] == -math.inf)
    assert "plain float64: not known for the gradient at layer" in text
    # float32's own zero is the documented limit: said as before
    assert d.float_limits["float32"]["underflow_layer"] == 2
    assert "plain float32 would underflow the gradient at layer 2" in text
    # compare's column: float64 not known there, float32 lost
    from gradbench.cli.compare import _float_failures
    fails = _float_failures(d)
    assert "f64 not known @2" in fails and "f64 under" not in fails and "f32 under @2" in fails, fails


def _plain_forward(stack, params, x, dtype):
    """Each layer's output h_{l+1} of a plain NumPy forward on the given weights (zero-bias stacks
    also with biases), in ``dtype`` (float32: inf where an entry passes its largest number)."""
    act = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}[stack.activation]
    W = np.asarray(params.W if hasattr(params, "W") else params.weights(0, stack.depth), dtype=np.float64)
    b = np.asarray(getattr(params, "b", np.zeros((stack.depth, stack.width))), dtype=np.float64)
    h = np.asarray(x, dtype=dtype)
    out = []
    with np.errstate(over="ignore", invalid="ignore"):
        for l in range(stack.depth):
            h = act(h @ W[l].astype(dtype).T + b[l].astype(dtype)).astype(dtype)
            out.append(h.copy())
    return out


def test_the_forward_overflow_is_bracketed_by_what_the_statistics_prove():
    """gradbench run --dtype float32 --depth 1000 --width 16 --activation relu --sigma-w 2 --batch 4
    said float32 overflows the forward "by layer 322 at the latest (...; the largest entries may do
    so a layer or two earlier)": a float64 NumPy forward on the same weights has its first entry
    beyond float32's largest at layer 313, and a float32 NumPy forward turns non-finite there. The
    limit is now a range whose ends the statistics prove: the root mean square passes at 322, the
    bound on the largest entry (mean, spread, B N entries) at 309; each layer's largest |h| from
    that forward lies between the two."""

    from gradbench.verdict import largest_entry_bound, rms_log10

    stack = gb.Stack(depth=1000, width=16, activation="relu", sigma_w=2, dtype="float32")
    params = gb.GeneratedParams(stack, 0)
    x = gb.gaussian_input(stack, 4, seed=np.random.default_rng([0, 1]))
    d = gb.diagnose(gb.backprop(stack, params, x))
    f32max = float(np.finfo(np.float32).max)
    largest = np.array([float(np.abs(h).max()) for h in _plain_forward(stack, params, x, np.float64)])
    first = int(np.flatnonzero(largest > f32max)[0])
    plain32 = _plain_forward(stack, params, x, np.float32)
    assert first == 313 and int(next(l for l, h in enumerate(plain32) if not np.isfinite(h).all())) == first
    lim = d.float_limits["float32"]
    assert lim["forward_overflow_earliest"] <= first <= lim["forward_overflow_layer"]
    assert (lim["forward_overflow_earliest"], lim["forward_overflow_layer"]) == (309, 322)
    # the bounds hold at every layer (to float64 rounding of a max of up to 10^115)
    lg = np.log10(largest)
    assert np.all(lg >= rms_log10(d.act_mean_log10, d.act_std_log10) - 1e-9)
    assert np.all(lg <= largest_entry_bound(d.act_mean_log10, d.act_std_log10, 4 * 16) + 1e-9)
    text = str(d)
    assert "a layer or two" not in text
    assert "plain float32 would overflow the forward activations at a layer from 309 to 322" in text
    # a diagnosis written before the bound (no forward_judged_on): its std-based layer, said as a latest one only
    old = d.to_dict()
    for lim_old in old["float_limits"].values():
        for key in ("forward_judged_on", "forward_overflow_earliest", "forward_underflow_all_layer",
                    "forward_underflow_stays", "underflow_unknown_layers", "forward_flushed_layer"):
            lim_old.pop(key)
    text = str(gb.Diagnosis.from_dict(old))
    assert "a layer or two" not in text
    assert ("plain float32 would overflow the forward activations by layer 322 at the latest (their spread passes "
            "10^38.53 there; the largest entries may do so earlier)") in text


@pytest.mark.usefixtures("plain_biased_forward")
def test_a_run_that_overflowed_in_its_own_dtype_names_that_layer():
    """A float32 ReLU stack with biases (no forward exponents) overflows in its own forward: that
    layer is float32's limit, no range (every entry below it was a finite float32); a plain NumPy
    float32 forward on the same weights turns non-finite at the same layer."""

    stack = gb.Stack(depth=200, width=8, activation="relu", sigma_w=3, sigma_b=1, dtype="float32")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 16, 1)
    with np.errstate(all="ignore"):
        d = gb.diagnose(gb.backprop(stack, params, x))
    plain32 = _plain_forward(stack, params, x, np.float32)
    first = next(l for l, h in enumerate(plain32) if not np.isfinite(h).all())
    lim = d.float_limits["float32"]
    assert lim["forward_overflow_earliest"] == lim["forward_overflow_layer"] == first
    assert f"plain float32 would overflow the forward activations at layer {first} (" in str(d)


def test_the_forward_underflow_layers_are_where_half_and_every_entry_are_gone():
    """The forward underflow was judged on the spread alone ("most entries 0 or subnormal from there
    up"), which proves nothing of the entries (a layer whose mean lies far above a tiny spread has
    no subnormal entry). Now by the root mean square r below the smallest normal over sqrt(2) (more
    than half the entries 0 or subnormal there: at most B N r^2 / tiny^2 are not) and by the bound on
    the largest entry (every one): a float64 NumPy forward on the same weights (float32 tanh,
    sigma_w 0.5, width 32, batch 16) has its first subnormal entry at layer 112, more than half at
    123, all at 127; the limits say 125 (where the spread said it too) and 129, and the words say
    single entries can go earlier."""

    stack = gb.Stack(depth=300, width=32, activation="tanh", init="normal", sigma_w=0.5, dtype="float32")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 16, 1)
    d = gb.diagnose(gb.backprop(stack, params, x))
    tiny = float(np.finfo(np.float32).tiny)
    gone = np.array([float((np.abs(h) < tiny).mean()) for h in _plain_forward(stack, params, x, np.float64)])
    lim = d.float_limits["float32"]
    at, every = lim["forward_underflow_layer"], lim["forward_underflow_all_layer"]
    assert (int(np.flatnonzero(gone > 0)[0]), int(np.flatnonzero(gone > 0.5)[0]), int(np.flatnonzero(gone == 1)[0])) \
        == (112, 123, 127)
    assert (at, every) == (125, 129)
    assert np.all(gone[at:] > 0.5) and np.all(gone[every:] == 1.0)
    text = str(d)
    assert (f"plain float32 would lose the forward activations by layer {at} at the latest" in text
            and "most entries 0 or subnormal from there up; single entries can go earlier, "
                f"every entry by layer {every} at the latest" in text)


@pytest.mark.usefixtures("plain_biased_forward")
def test_a_float32_run_whose_own_dw_overflowed_says_nothing_of_float64():
    """`run --dtype float32 --depth 168 --width 16 --activation relu --sigma-w 2.5 --sigma-b 0.1
    --loss mse --seed 1`: h_167 reaches 1.9e38 and the run's float32 dW_167 = dz^T h_167 overflows
    (||dW_167|| inf), where float64 on the same weights holds it (a plain float64 loop here:
    10^78.2). It said "plain float64 would overflow the gradient at layer 167"; now not known."""
    from gradbench.cli.compare import _float_failures
    from gradbench.params import random_targets

    stack = gb.Stack(depth=168, width=16, activation="relu", sigma_w=2.5, sigma_b=0.1, loss="mse", dtype="float32")
    params = gb.GeneratedParams(stack, 1)
    x = gb.gaussian_input(stack, 16, seed=np.random.default_rng([1, 1]))
    t = random_targets(stack, 16, 1)
    d = gb.diagnose(gb.backprop(stack, params, x, targets=t))
    P = params.materialize()
    h = [np.asarray(x, np.float64)]
    for l in range(stack.depth):  # the plain float64 forward on the float32 weights
        h.append(np.maximum(h[-1] @ P.W[l].astype(np.float64).T + P.b[l], 0.0))
    y = h[-1] @ P.W_out.astype(np.float64).T + P.b_out
    dy = 2 * (y - t) / y.size
    dz = (dy @ P.W_out.astype(np.float64)) * (h[-1] > 0)
    top = math.log10(np.linalg.norm(dz.T @ h[-2]))
    assert 70 < top < F64_MAX_LOG10, top  # finite in float64, far past float32
    assert d.grad_log10[-1] == math.inf  # the run's own float32 arithmetic
    f64 = d.float_limits["float64"]
    assert f64["overflow_layer"] is None and f64["overflow_unknown_layers"] == [167]
    text = str(d)
    assert "plain float64 would overflow the gradient" not in text, text
    assert "plain float64: not known for the gradient at layer 167" in text
    assert "f64 not known @167" in _float_failures(d)
