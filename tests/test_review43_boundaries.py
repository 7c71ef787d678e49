"""Review 43: the kernels' comparisons at their boundary values, where a ``>`` written as ``>=``
(or ``<=`` as ``<``) changed no earlier test.

- Clipping acts only when the signal's largest |entry| (value) or its norm (norm) is strictly
  above the threshold. An identity stack with W = I and b = 0 under the ``sum_squares`` loss
  carries dL/dh_l = h_L = x unchanged to every layer, so an input whose max |entry| or norm is
  the threshold exactly must leave every ``signal_clip_acted`` flag False (and the gradients
  unclipped); a threshold one part in 2**10 lower must set the top's flag, and the flags below
  (whose signal is the clipped one) must be the NumPy reference's.
- A ReLU unit is dead when its pre-activation is <= 0 in every row, so z = 0 exactly counts as
  dead. A row of zeros with b = 0 gives z = 0 in every layer; the dead fraction is checked
  against a NumPy forward written here, at a width (3) taken by the scalar paths and one (16)
  taken by the vector paths.
- SELU'(0) is lambda * alpha (the left derivative, as in the reference). Rows with z = 0
  exactly (a row of zeros with b = 0; identical rows under batch norm) must give the NumPy
  reference's gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench.backends import backends

BACKENDS = [b for b in ("numpy", "numba", "c") if b in backends()]
DTYPES = ("float64", "float32")


def _identity_stack(clip, c, dtype):
    s = gb.Stack(depth=3, width=4, activation="identity", clip=clip, clip_threshold=c, dtype=dtype)
    p = gb.init_params(s, seed=0)
    p.W[...] = np.eye(4)
    p.b[...] = 0
    return s, p


def _signal_input(clip):
    """Two rows; max |entry| 0.25 (value) or norm 0.5 (norm), both exact in binary."""
    x = np.zeros((2, 4))
    if clip == "value":
        x[0, 0] = 0.25
        return x, 0.25
    x[0, :] = 0.25
    return x, 0.5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip", ["value", "norm"])
def test_clip_at_threshold_exactly_does_not_act(backend, dtype, clip):
    x, c = _signal_input(clip)
    s, p = _identity_stack(clip, c, dtype)
    r = gb.backprop(s, p, x.astype(dtype), backend=backend)
    acted = np.asarray(r.signal_clip_acted, dtype=bool)
    assert not acted.any(), f"{clip} clip acted at signal == threshold {c}: {acted.tolist()}"
    # unclipped: dL/dW_l = dL/dh_l^T h_{l-1} = x^T x for every layer
    gW = np.asarray(r.grads.W.to_float(), dtype=np.float64)
    np.testing.assert_array_equal(gW, np.broadcast_to(x.T @ x, gW.shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip", ["value", "norm"])
def test_clip_just_below_threshold_acts(backend, dtype, clip):
    x, c = _signal_input(clip)
    s, p = _identity_stack(clip, c * (1 - 2.0**-10), dtype)
    r = gb.backprop(s, p, x.astype(dtype), backend=backend)
    acted = np.asarray(r.signal_clip_acted, dtype=bool)
    assert acted[-1], acted.tolist()  # the top's signal x is above the threshold
    ref = gb.backprop(s, p, x.astype(dtype), backend="numpy")
    assert acted.tolist() == np.asarray(ref.signal_clip_acted, dtype=bool).tolist()


def _dead_fraction(W, b, x):
    """Fraction of units with z <= 0 in every row, per layer, of a ReLU stack (no input layer)."""
    h, out = x, []
    for l in range(W.shape[0]):
        z = h @ W[l].T + b[l]
        out.append(np.mean(np.all(z <= 0, axis=0)))
        h = np.maximum(z, 0)
    return np.array(out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [3, 16])
def test_relu_unit_with_z_exactly_zero_is_dead(backend, dtype, N):
    s = gb.Stack(depth=3, width=N, activation="relu", dtype=dtype)
    p = gb.init_params(s, seed=0)
    assert not np.any(p.b)
    x = np.zeros((2, N))
    x[1] = -1.0  # row 0: z = b = 0 in every layer
    r = gb.backprop(s, p, x.astype(dtype), backend=backend)
    W = np.asarray(p.W, dtype=np.float64)
    want = _dead_fraction(W, np.asarray(p.b, dtype=np.float64), x)
    assert want[0] > 0  # some units dead in layer 0; the rest are decided by row 1 alone
    np.testing.assert_allclose(np.asarray(r.dead, dtype=np.float64), want, rtol=0, atol=1e-12)


def _grads(r, names):
    return np.concatenate([np.asarray(getattr(r.grads, n).to_float(), dtype=np.float64).ravel() for n in names])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [3, 16])
def test_selu_derivative_at_zero_rows_of_zeros(backend, dtype, N):
    s = gb.Stack(depth=3, width=N, activation="selu", loss="mse", output_dim=2, dtype=dtype)
    p = gb.init_params(s, seed=0)
    assert not np.any(p.b)
    x = np.zeros((2, N))
    x[1] = np.linspace(-1, 1, N)  # row 0: z = b = 0 in every layer
    t = np.ones((2, 2))
    want = _grads(gb.backprop(s, p, x.astype(dtype), t.astype(dtype), backend="numpy"), ("W", "b"))
    got = _grads(gb.backprop(s, p, x.astype(dtype), t.astype(dtype), backend=backend), ("W", "b"))
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.max(np.abs(want)))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_selu_derivative_at_zero_under_batch_norm(backend, dtype):
    s = gb.Stack(depth=2, width=3, activation="selu", batch_norm=True, loss="mse", output_dim=2, dtype=dtype)
    p = gb.init_params(s, seed=0)
    x = np.tile([[1.0, 0.5, -1.0]], (3, 1))  # identical rows: xhat = 0, z = beta = 0
    t = np.arange(6.0).reshape(3, 2)
    want = _grads(gb.backprop(s, p, x.astype(dtype), t.astype(dtype), backend="numpy"), ("W", "gamma"))
    got = _grads(gb.backprop(s, p, x.astype(dtype), t.astype(dtype), backend=backend), ("W", "gamma"))
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.max(np.abs(want)))
