"""The "plain float32 / float64 would ..." sentences of the report (gradbench.report._limit_sentence,
the limits of gradbench.verdict.float_limits), against independent computations: mpmath on the
run's own weights, plain torch forwards."""

import math

import mpmath as mp
import numpy as np
import pytest

import gradbench as gb

F64_TINY_LOG10 = math.log10(np.finfo(np.float64).tiny)


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
