"""Per-layer statistics of stacks whose forward overflows: every backend gives the reference's.

Where h_{l+1} is not finite (all +inf, all -inf, +inf beside -inf, inf beside finite entries,
NaN) act_mean and act_std are NumPy's mean and two-pass standard deviation of it (-inf and NaN
for all -inf; the engine takes every non-finite one again from H, ``reference.rescale_stats``),
saturation and dead count infinite z by their limits and are NaN for a NaN z (docs/formats.md).
Non-finite entries must be the same in every backend (NaN == NaN); finite ones within ``TOL``.

Two kinds of stacks:

* ``test_elementwise_overflow``: diagonal weights (sizes around sigma_w; random signs for
  identity, positive for the ReLU family, whose units would die otherwise) and a huge input or
  a few hundred layers of growth, so every entry of z is one product plus the bias, whatever
  the order or the fusing of the sum (the zeros add nothing; inf * 0 is NaN everywhere):
  every backend computes the same non-finite entries, and every per-layer statistic (act_mean,
  act_std, saturation, dead, the signal and gradient norms, the first non-finite layers) must
  equal the reference's on every layer. It includes a residual add whose branch times
  ``residual_scale`` overflows while the sum with the skip would not: the reference rounds the
  product on its own (inf); the C loop fused it into the sum (finite) before the fix.
* ``test_dense_overflow_statistics``: random weights (the reviewer's width-3 identity stack among
  them). A dot product whose partial sums overflow with mixed signs would be +inf, -inf or NaN
  depending on the order of its sum and on fused multiply-adds (NumPy's BLAS, the C tiles and
  the Numba loops sum differently); on rows of finite h every backend recomputes it the same way
  (reference.dense_fix, tests/test_dense_fix.py), but above the first overflowing layer a row of
  h holding +-inf beside finite entries is left as the order made it, so h may differ there;
  the statistics must still be the reference's formulas of the backend's own forward values,
  on every layer.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi, engine
from gradbench import reference as R
from gradbench.activations import dphi, saturation_uncountable
from gradbench.backends import get_backend
from gradbench.spec import RELU_FAMILY
from tests.helpers import TOL, assert_fractions, assert_ls, assert_true_values, forward_arrays, other_backends, run_forward

# the forwards here are meant to overflow: biased stacks run without exponents (conftest)
pytestmark = pytest.mark.usefixtures("plain_biased_forward")

BACKENDS = other_backends()
ACTS = ("identity", "relu", "leaky_relu")
DTYPES = ("float64", "float32")
SHAPES = ((1, 3), (9, 12))  # (batch, width): one row and 3 units; 8 rows + 1 and 8 lanes + 4


# ------------------------------------------------------------------ elementwise stacks
def _layer0_input(pattern, dtype, B, N, rng):
    """h_0 and the diagonal of W_0 of a pattern (the other layers grow by sigma_w)."""
    big = float(np.finfo(dtype).max)
    if pattern == "grow":  # gaussian input, overflow after a few hundred (float32: dozens) layers
        return rng.standard_normal((B, N)), None
    if pattern == "cancel":  # the residual add: set up in _elementwise_problem
        return np.full((B, N), -big / 1.05), None
    x = np.tile(np.linspace(0.5, 1.0, N), (B, 1)) * big / 4 * np.linspace(1, 0.5, B)[:, None]
    w = np.full(N, 32.0)  # |z| >= 2 * the largest float
    if pattern == "all+inf":
        pass
    elif pattern == "all-inf":
        x = -x
    elif pattern == "mixed":  # +inf beside -inf
        w[1::2] = -32.0
    elif pattern == "inf+finite":
        w[1:] = 1e-3
    return x, w


def _elementwise_problem(act, pattern, dtype, bn, residual, residual_scale, B, N, depth, seed=0):
    stack = gb.Stack(depth=depth, width=N, activation=act, sigma_w=6.0, sigma_b=0.1, batch_norm=bn,
                     residual=residual, residual_scale=residual_scale, dtype=dtype)
    p = gb.init_params(stack, seed)
    rng = np.random.default_rng(seed + 1)
    W = np.zeros_like(p.W)
    diag = rng.uniform(0.75, 1.25, (depth, N)) * 6.0
    if act == "identity":  # the ReLU family grows on positive weights only (else every unit dies)
        diag *= rng.choice([-1.0, 1.0], (depth, N))
    idx = np.arange(N)
    W[:, idx, idx] = diag
    b = p.b.copy()
    x, w0 = _layer0_input(pattern, dtype, B, N, rng)
    if w0 is not None:
        W[0, idx, idx] = w0
        b[0] = 0
    if pattern == "cancel":
        # h_k = h_0 + scale * phi(z_{k-1}), with scale * phi(z) just above the largest float and
        # h_0 of the other sign: the reference rounds the product (inf), a fused add would not
        k = residual
        W[:k] = 0
        W[:k, idx, idx] = 1.0
        W[0, idx, idx] = -1.0
        W[k - 1, idx, idx] = -0.95 if k == 1 else 0.95
        b[:k] = 0
    params = gb.Params(W=W, b=b, gamma=p.gamma, beta=p.beta, slope=p.slope)
    return stack, params, np.ascontiguousarray(x, dtype=dtype)


def _elementwise_cases():
    for act, pattern, dtype, (B, N) in itertools.product(
            ACTS, ("grow", "all+inf", "all-inf", "mixed", "inf+finite", "cancel"), DTYPES, SHAPES):
        if pattern == "cancel":
            opts = [(False, 1, 2.0), (False, 2, 2.0)]
        elif pattern == "grow":
            opts = [(False, 0, 1.0), (False, 2, 1.0), (False, 2, 2.0)]  # batch norm keeps h O(1)
        else:
            opts = [(False, 0, 1.0), (True, 0, 1.0), (False, 2, 2.0), (True, 2, 2.0)]
        for bn, res, rs in opts:
            Bc = max(B, 2) if bn else B  # batch norm needs two samples
            yield pytest.param(act, pattern, dtype, bn, res, rs, Bc, N,
                               id=f"{act}-{pattern}-{dtype}-{'bn' if bn else 'plain'}-res{res}x{rs:g}-B{Bc}N{N}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act,pattern,dtype,bn,residual,residual_scale,B,N", list(_elementwise_cases()))
def test_elementwise_overflow(backend, act, pattern, dtype, bn, residual, residual_scale, B, N):
    depth = (420 if dtype == "float64" else 60) if pattern == "grow" else 6
    stack, params, x = _elementwise_problem(act, pattern, dtype, bn, residual, residual_scale, B, N, depth)
    with np.errstate(all="ignore"):
        ref = gb.backprop(stack, params, x, backend="numpy")
        got = gb.backprop(stack, params, x, backend=backend)
    if pattern in ("grow", "cancel"):
        assert ref.first_nonfinite_forward is not None, "the stack was meant to overflow forward"
    assert not ref.forward_rescaled
    rtol, flips, count = TOL[dtype]["stack"], TOL[dtype]["flips"], B * N
    for name in ("act_mean", "act_std", "grad_norm", "signal_norm"):
        assert_ls(backend, name, getattr(got, name), getattr(ref, name), rtol)
    assert_fractions(backend, "saturation", got.saturation, ref.saturation, count, flips)
    assert_fractions(backend, "dead", got.dead, ref.dead, N, 0)
    for name in ("first_nonfinite_forward", "first_nonfinite_backward"):
        assert getattr(got, name) == getattr(ref, name), \
            f"[{backend}] {name}: got {getattr(got, name)}, reference {getattr(ref, name)}"


# ------------------------------------------------------------------ random weights
def _reference_statistics(stack, H, Z, fcfg, gamma, beta, slope):
    """The reference's statistics (reference.stack_forward_kernel, then the engine's
    rescale_stats and _uncountable_fractions) of given forward values H, Z."""
    L = Z.shape[0]
    code = abi.ACT_CODE[stack.activation]
    mean, std, sat, dead = (np.empty(L) for _ in range(4))
    for l in range(L):
        h = H[l + 1].astype(np.float64)
        mean[l] = h.mean()
        std[l] = np.sqrt(((h - mean[l]) ** 2).mean())
        z = gamma[l] * Z[l] + beta[l] if stack.batch_norm else Z[l]
        p = slope[l] if stack.activation == "prelu" else fcfg[abi.F_ACT_PARAM]
        thr = abi.saturation_threshold("prelu", p, stack.dtype) if stack.activation == "prelu" else fcfg[abi.F_SAT]
        sat[l] = np.mean(np.abs(dphi(z, code, p)) < thr)  # PReLU: 1 % of max(1, |slope_l|) per layer
        dead[l] = np.mean(np.all(z <= 0, axis=0))
        if saturation_uncountable(z, stack.activation):
            sat[l] = np.nan
        if np.isnan(z).any():
            dead[l] = np.nan
    R.rescale_stats(mean, std, H)
    return mean, std, sat, dead


DENSE_CASES = [
    # the reviewer's stack: h_257 is [-inf, -inf, -inf] in NumPy, [+inf, -inf, -inf] in C and
    # [nan, -inf, -inf] in Numba (z_256 sums +inf, -inf and -inf products)
    dict(depth=300, width=3, activation="identity", sigma_w=15, sigma_b=0.1, residual=3, residual_scale=2.0),
]
for _act, _bn, _res, _dt in itertools.product(ACTS, (False, True), (0, 2), DTYPES):
    DENSE_CASES.append(dict(depth=400 if _dt == "float64" else 60, width=4, activation=_act, sigma_w=12.0,
                            sigma_b=0.1, batch_norm=_bn, residual=_res, residual_scale=2.0 if _res else 1.0,
                            dtype=_dt))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_dense_overflow_statistics(backend, case):
    stack = gb.Stack(**case)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 3 if case["width"] == 4 else 1, 0)
    if stack.batch_norm or (stack.activation in RELU_FAMILY and not stack.residual):
        # batch norm keeps h O(1), and 4 ReLU units die: overflow from the first layer on instead
        x = (x * (float(np.finfo(stack.dtype).max) / 8)).astype(stack.dtype)
    rescale = engine.can_rescale_forward(stack, params)
    arrays = forward_arrays(stack, params, x, rescale=rescale)
    with np.errstate(all="ignore"):
        got = gb.backprop(stack, params, x, backend=backend)
        run_forward(get_backend(backend), arrays)  # the same kernel on the same input: its H and Z
        ref = _reference_statistics(stack, arrays["H"], arrays["Z"], arrays["fcfg"], params.gamma,
                                    params.beta, params.slope)
    assert got.first_nonfinite_forward is not None, "the stack was meant to overflow forward"
    np.testing.assert_array_equal(got.output.mantissa, arrays["H"][-1], err_msg=f"{backend}: not the same forward")
    rtol, flips = TOL[stack.dtype]["stack"], TOL[stack.dtype]["flips"]
    B, N = x.shape
    zero = np.zeros(stack.depth, dtype=np.int64)
    for name, r in zip(("act_mean", "act_std"), ref[:2]):
        assert_true_values(backend, name, getattr(got, name).mantissa, getattr(got, name).exponent, r, zero, rtol)
    assert_fractions(backend, "saturation", got.saturation, ref[2], B * N, flips)
    dead = ref[3] if stack.activation in RELU_FAMILY else np.full(stack.depth, np.nan)
    assert_fractions(backend, "dead", got.dead, dead, N, 0)
    bad = [l for l in range(stack.depth) if not np.all(np.isfinite(arrays["H"][l + 1]))]
    assert got.first_nonfinite_forward == bad[0]
