"""A float32 stack's head in float64 (gradbench.loss.head_dy): h_L W_out^T + b_out past float32's
3.4e38 read the loss inf and every gradient NaN on every backend, where float64 holds it (a
review's `run --dtype float32 --depth 168 --width 16 --activation relu --sigma-w 2.5 --loss
mse`: inf and NaN where the loss is 4.09e76). Checked against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb

N, B, O = 16, 2, 2
X = 3e37  # h_L = x: y = N x = 4.8e38 per output, past float32's largest 3.4e38


def _run(loss, backend, bias=0.5):
    """bias 0.5: no forward exponent, h_L as it is (the review's case); 0: h_L a mantissa at its
    exponent. x + 0.5 rounds to x in float32."""
    st = gb.Stack(depth=1, width=N, activation="identity", loss=loss, output_dim=O, sigma_b=bias, dtype="float32")
    p = gb.init_params(st, 0)
    p.W[...] = np.eye(N)
    p.b[...] = bias
    p.W_out[...] = 1.0
    p.b_out[...] = 0.0
    x = np.full((B, N), X, np.float32)
    targets = {"mse": np.zeros((B, O), np.float32), "bce": np.zeros((B, O), np.float32),
               "softmax_ce": np.zeros(B, np.int64)}[loss]
    return gb.backprop(st, p, x, targets=targets, backend=backend), float(np.float32(X))


@pytest.mark.parametrize("bias", [0.5, 0.0])
@pytest.mark.parametrize("backend", ["numpy", "numba", "c"])
def test_mse_head_past_float32(backend, bias):
    r, h = _run("mse", backend, bias)
    y = N * h  # every output of every sample
    assert r.loss == pytest.approx(y * y, rel=1e-6)  # mean of y^2: 2.304e77
    dy = 2 * y / (B * O)
    np.testing.assert_allclose(r.grads.W_out.to_float(warn=False), np.full((O, N), B * dy * h), rtol=1e-6)
    np.testing.assert_allclose(r.grads.b_out.to_float(warn=False), np.full(O, B * dy), rtol=1e-6)
    # dL/dx = dL/dh_1 = O dy per entry (identity layer, W = I): 4.8e38, past float32, carried
    np.testing.assert_allclose(r.input_grad.to_float(warn=False), np.full((B, N), O * dy), rtol=1e-6)
    assert np.all(np.isfinite(r.grad_norm.log10()))


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_bce_and_softmax_heads_past_float32(backend):
    r, h = _run("bce", backend)
    y = N * h  # softplus(y) - 0 y = y for y = 4.8e38
    assert r.loss == pytest.approx(y, rel=1e-6)
    np.testing.assert_allclose(r.grads.W_out.to_float(warn=False), np.full((O, N), B * h / (B * O)), rtol=1e-6)
    r, h = _run("softmax_ce", backend)
    # equal outputs: logsumexp(y) - y_t = ln O, dL/dy = 1/O - [t] over the batch's mean
    assert r.loss == pytest.approx(np.log(O), rel=1e-6)
    want = np.full((O, N), B * (1 / O) * h / B)
    want[0] = B * (1 / O - 1) * h / B
    np.testing.assert_allclose(r.grads.W_out.to_float(warn=False), want, rtol=1e-6)
