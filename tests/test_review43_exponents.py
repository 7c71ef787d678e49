"""Review 43: kernel bugs of exponents and saturation that no other test caught. Each case is
checked against an independent computation (the NumPy reference backend or a hand-derived
value), never against the kernels' own output. (The histogram's bin edges at exponents of order
2^33-2^44, the same review's, are in tests/test_c_histogram.py.)

- dW's shared exponent ignores the samples whose input h_l is all zero (gb_backward_member): a
  sample with a huge loss gradient but h_l = 0 adds nothing to dW_l and must not scale the other
  samples' products down until they lose bits or flush to zero in float32.
- The dense fix-up of overflowed entries scales the bias by 2^-(eh + ew), the exponent of the
  products h W, not by 2^-eh alone (gb_dense_fix, and the NumPy and Numba dense_fix).
- first_nonfinite_backward is the first layer met walking backwards from the output (the
  highest non-finite index), not the lowest (gb_stack_backward).
- 1 - sigmoid of a saturated GRU update gate is taken as ds / s (no cancellation): with
  update_bias 40 (float64) or 18 (float32), 1 - s is ~1e-18 / ~1e-8 and the n-block of db_ih
  must keep the NumPy reference's magnitudes (C gb_one_minus, Numba _one_minus)."""

import numpy as np
import pytest

import gradbench as gb
from gradbench import reference as R

COMPILED = ("c", "numba")


def _backend(name):
    if name == "c":
        pytest.importorskip("gradbench.cbackend", reason="C extension not built", exc_type=ImportError)
    elif name == "numba":
        pytest.importorskip("numba")
    from gradbench.backends import get_backend

    return get_backend(name)


# --- dW's exponent ignores rows with h_l = 0 -------------------------------------------------

@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype,big", [("float32", 1e38), ("float64", 1e300)])
def test_dW_exponent_ignores_samples_whose_input_is_all_zero(backend, dtype, big):
    _backend(backend)
    s = gb.Stack(depth=2, width=4, activation="tanh", loss="mse", output_dim=2, dtype=dtype)
    p = gb.init_params(s, seed=0)
    x = np.zeros((2, 4), dtype)
    x[1] = [0.5, -0.3, 0.8, 0.1]  # sample 0: h_0 = 0, so it adds nothing to dW_0
    t = np.array([[big, big], [0.0, 0.0]], dtype)  # sample 0's loss gradient ~2^125 (2^997), sample 1's ~1
    want = gb.backprop(s, p, x, t, backend="numpy").grads.W.to_float()[0]
    got = gb.backprop(s, p, x, t, backend=backend).grads.W.to_float()[0]
    assert np.all(np.abs(want) > 0) and np.all(np.isfinite(want))
    np.testing.assert_allclose(got, want, rtol=2e-6 if dtype == "float32" else 1e-12)


# --- the bias's exponent in the dense fix-up -------------------------------------------------

@pytest.mark.parametrize("backend", ("numpy",) + COMPILED)
def test_dense_fix_scales_the_bias_by_the_products_exponent(backend):
    big = np.finfo(np.float64).max
    h = np.array([[0.75 * big, 0.25 * big]])
    W = np.array([[1.5, 1.0], [1.0, -1.0]])  # max|W[0]| = 1.5: ew = 1, so a bias scaled by 2^-eh only is doubled
    b = np.array([-0.5 * big, 0.25 * big])
    z = np.empty((1, 2))
    fwd = R.dense_forward if backend == "numpy" else _backend(backend).dense_forward
    with np.errstate(all="ignore"):
        fwd(z, h, W, b)
    # by hand: z0 = (0.75 * 1.5 + 0.25 * 1.0 - 0.5) big = 0.875 big, z1 = (0.75 - 0.25 + 0.25) big
    np.testing.assert_allclose(z / big, [[0.875, 0.75]], rtol=1e-15)


# --- the first non-finite backward layer -----------------------------------------------------

@pytest.mark.parametrize("backend", COMPILED)
def test_first_nonfinite_backward_is_the_highest_layer(backend):
    _backend(backend)
    s = gb.Stack(depth=3, width=4, activation="identity")
    p = gb.init_params(s, seed=0)
    rng = np.random.default_rng(1)
    p.W[...] = rng.uniform(0.5, 1.0, p.W.shape)
    p.W[0][0, :] = 0.0  # h_1[:, 0] = 0: the forward never meets column 0 of W_1
    p.W[1][:, 0] = 1e308  # dL/dh_1 = dz_1 W_1 overflows in the backward only, and stays so below
    p.b[...] = 0
    x = rng.uniform(0.5, 1.0, (2, 4))
    with np.errstate(all="ignore"):
        want = gb.backprop(s, p, x, backend="numpy")
        got = gb.backprop(s, p, x, backend=backend)
    assert want.first_nonfinite_forward is None
    assert want.first_nonfinite_backward is not None
    assert got.first_nonfinite_forward == want.first_nonfinite_forward
    assert got.first_nonfinite_backward == want.first_nonfinite_backward


# --- 1 - sigmoid of a saturated gate ---------------------------------------------------------

@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype,ub", [("float64", 40.0), ("float32", 18.0)])
def test_saturated_gru_update_gate_keeps_the_reference_db_ih(backend, dtype, ub):
    _backend(backend)
    rnn = gb.Recurrent(cell="gru", steps=5, hidden=4, input_dim=3, update_bias=ub, dtype=dtype)
    p = gb.init_params(rnn, seed=0)
    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(dtype)
    N = 4
    want = gb.backprop(rnn, p, x, backend="numpy").grads.b_ih.log10()[2 * N:]  # the n-block, ~ (1 - z)
    got = gb.backprop(rnn, p, x, backend=backend).grads.b_ih.log10()[2 * N:]
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(got, want, atol=1e-4)
