"""Dense products that overflow: one definition (reference.dense_fix), the same values everywhere.

An entry of z = h W^T + b whose products overflow one by one (or whose sum does) while h's row,
W's row and the bias are finite is recomputed exactly scaled, in one fixed order, by the same
operations in every backend: +-inf where the exact sum overflows, a finite value where the
products cancel, never NaN or the sign of a summation order.

* ``test_dense_fix_exact``: the layer functions of every backend against Python's exact
  arithmetic (``fractions.Fraction``) on rows built to overflow with mixed signs: the sign, and
  whether the result is infinite, are those of the exact sum; the three backends give the same bits.
* ``test_prelu_saturation_per_layer``: PReLU's saturation threshold is 1 % of max(1, |slope_l|)
  of each layer's slope (trained or imported), in every backend.
* ``test_random_stacks_agree``: random dense stacks that overflow (identity, ReLU, leaky ReLU,
  ELU; float64 and float32; width 2-16, batch 1-9; with and without residual and batch norm)
  give the reference's first non-finite layers, forward and backward, and its per-layer
  statistics on every layer up to that one on every backend (NaN == NaN, +-inf by sign, finite
  ones within ``TOL``). Above it rows of h hold +-inf: products of an infinite and a finite
  factor are not recomputed, and may still depend on the order where a finite product overflows
  beside them.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import gradbench as gb
from gradbench import engine
from gradbench import reference as R
from gradbench.backends import get_backend
from tests.helpers import TOL, assert_fractions, assert_true_values, forward_arrays, other_backends, run_forward

# the forwards here are meant to overflow: biased stacks run without exponents (conftest)
pytestmark = pytest.mark.usefixtures("plain_biased_forward")

BACKENDS = other_backends()
LAYER_BACKENDS = [b for b in ("numba", "c") if b in gb.backends()]


# ------------------------------------------------------------------ one layer against exact arithmetic
def _overflowing_layer(rng, dtype, B, N):
    """h (B,N), W (N,N), b (N,) whose products are near the largest float with random signs."""
    big = float(np.finfo(dtype).max)
    h = rng.uniform(0.3, 1.0, (B, N)) * rng.choice([-1.0, 1.0], (B, N)) * big / 2
    W = rng.uniform(0.5, 6.0, (N, N)) * rng.choice([-1.0, 1.0], (N, N))
    b = rng.standard_normal(N)
    h[0, 0] = np.inf if B > 1 else h[0, 0]  # a row that is not finite: left as the product made it
    return h.astype(dtype), W.astype(dtype), b.astype(dtype)


def _exact(hr, w, c):
    return sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(hr, w)), Fraction(0)) + Fraction(float(c))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", range(6))
def test_dense_fix_exact(dtype, seed):
    rng = np.random.default_rng(seed)
    B, N = int(rng.integers(2, 10)), int(rng.integers(2, 17))
    h, W, b = _overflowing_layer(rng, dtype, B, N)
    big = Fraction(float(np.finfo(dtype).max))
    eps = float(np.finfo(np.float64).eps)
    ref = np.empty((B, N), dtype=dtype)
    with np.errstate(all="ignore"):
        R.dense_forward(ref, h, W, b)
    checked = 0
    for r in range(1, B):
        for j in range(N):
            exact = _exact(h[r], W[j], b[j])
            bound = sum(abs(Fraction(float(x)) * Fraction(float(y))) for x, y in zip(h[r], W[j]))
            slack = bound * Fraction(2 * N * eps)  # the scaled float64 sum's rounding, at most
            where = f"{dtype} seed {seed} z[{r}, {j}] = {ref[r, j]!r}, exact {float(exact / big):.6g} x the largest float"
            assert not np.isnan(ref[r, j]), where
            if abs(exact) - slack > big * (1 + Fraction(float(np.finfo(dtype).eps))):
                assert np.isinf(ref[r, j]) and np.sign(ref[r, j]) == (1 if exact > 0 else -1), where
                checked += 1
            elif abs(exact) + slack < big:
                assert np.isfinite(ref[r, j]), where
                assert abs(Fraction(float(ref[r, j])) - exact) <= slack + abs(exact) * Fraction(float(np.finfo(dtype).eps)), where
                checked += 1
    assert checked > 0
    for name in LAYER_BACKENDS:
        got = np.empty_like(ref)
        with np.errstate(all="ignore"):
            get_backend(name).dense_forward(got, h, W, b)
        fixed = ~np.isfinite(got) | ~np.isfinite(ref)
        fixed[0] = False  # the non-finite row: any order's answer
        np.testing.assert_array_equal(got[fixed], ref[fixed], err_msg=f"[{name}] not the reference's bits")


def test_reviewer_stack():
    """z_256 unit 0 sums products +inf, -inf, -inf when each is rounded alone; exactly -3.26e308."""
    s = gb.Stack(depth=300, width=3, activation="identity", sigma_w=15, sigma_b=0.1, residual=3, residual_scale=2.0)
    P = gb.GeneratedParams(s, 0).materialize()
    x = gb.gaussian_input(s, 1, 0)
    with np.errstate(all="ignore"):
        runs = {b: gb.backprop(s, P, x, backend=b) for b in ["numpy", *BACKENDS]}
    ref = runs["numpy"]
    l = ref.first_nonfinite_forward
    assert l == 256 and ref.act_mean.mantissa[l] == -np.inf  # h_257 = [-inf, -inf, -inf]
    for b, r in runs.items():
        assert r.first_nonfinite_forward == l, b
        assert r.act_mean.mantissa[l] == -np.inf, b  # before the fix: +inf (C), NaN (Numba)


# ------------------------------------------------------------------ random stacks
def _case(seed):
    rng = np.random.default_rng(1000 + seed)
    act = ("identity", "relu", "leaky_relu", "elu")[seed % 4]
    dtype = ("float64", "float32")[(seed // 4) % 2]
    bn = bool((seed // 8) % 2)
    residual = (0, 2, 3)[seed % 3]
    N, B = int(rng.integers(2, 17)), int(rng.integers(2 if bn else 1, 10))
    return dict(act=act, dtype=dtype, bn=bn, residual=residual, N=N, B=B, seed=seed)


CASES = [_case(s) for s in range(32)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_random_stacks_agree(backend, case):
    dtype, bn, N, B = case["dtype"], case["bn"], case["N"], case["B"]
    depth = 300 if dtype == "float64" else 42  # residual 2 or 3 divides it
    stack = gb.Stack(depth=depth, width=N, activation=case["act"], sigma_w=12.0, sigma_b=0.1, batch_norm=bn,
                     residual=case["residual"], residual_scale=2.0 if case["residual"] else 1.0, dtype=dtype)
    params = gb.init_params(stack, case["seed"])
    x = gb.gaussian_input(stack, B, case["seed"])
    if bn or case["act"] != "identity":  # batch norm keeps h O(1), ReLU units die: overflow at once
        x = (x * (float(np.finfo(dtype).max) / 8)).astype(dtype)
    with np.errstate(all="ignore"):
        ref = gb.backprop(stack, params, x, backend="numpy")
        got = gb.backprop(stack, params, x, backend=backend)
    assert ref.first_nonfinite_forward is not None, "the stack was meant to overflow forward"
    for name in ("first_nonfinite_forward", "first_nonfinite_backward"):
        assert getattr(got, name) == getattr(ref, name), \
            f"[{backend}] {name}: got {getattr(got, name)}, reference {getattr(ref, name)}"
    # every layer up to the first non-finite one; above it rows of h hold +-inf, whose products
    # are left as the backend's order made them (dense_fix recomputes finite rows only)
    top = ref.first_nonfinite_forward + 1
    rtol = TOL[dtype]["stack"] * 1e3 if dtype == "float64" else 1e-3
    for name in ("act_mean", "act_std"):
        g, r = getattr(got, name), getattr(ref, name)
        assert_true_values(backend, name, g.mantissa[:top], g.exponent[:top], r.mantissa[:top], r.exponent[:top], rtol)
    assert_fractions(backend, "saturation", got.saturation[:top], ref.saturation[:top], B * N, TOL[dtype]["flips"])
    assert_fractions(backend, "dead", got.dead[:top], ref.dead[:top], N, 0)


# ------------------------------------------------------------------ PReLU: the saturation threshold of the slopes that ran
@pytest.mark.parametrize("backend", ["numpy", *BACKENDS])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bn", [False, True])
def test_prelu_saturation_per_layer(backend, dtype, bn):
    """|phi'| < 1 % of the largest |phi'| = max(1, |slope_l|), with the slope of each layer (trained
    or imported), not the Stack's initial one: P.slope = 200 saturates every z <= 0 (phi' = 1)."""
    L, B, N = 8, 16, 12
    stack = gb.Stack(depth=L, width=N, activation="prelu", batch_norm=bn, dtype=dtype)
    params = gb.init_params(stack, 0)
    params.slope[:] = np.array([200.0, -50.0, 0.5, 3.0, 0.001, -0.004, 100.0, 1.0])[:L].astype(dtype)
    x = gb.gaussian_input(stack, B, 0)
    got = gb.backprop(stack, params, x, backend=backend)
    arrays = forward_arrays(stack, params, x, rescale=engine.can_rescale_forward(stack, params))
    run_forward(get_backend(backend), arrays)  # the backend's own z
    want = np.empty(L)
    for l in range(L):
        Z = arrays["Z"][l]
        z = params.gamma[l] * Z + params.beta[l] if bn else Z
        s = float(params.slope[l])
        d = np.where(z > 0, 1.0, s).astype(dtype)  # phi' as the dtype holds it
        thr = np.dtype(dtype).type(0.01 * max(1.0, abs(s)))
        want[l] = np.mean(np.abs(d) < thr)
    assert want[0] > 0.3  # slope 200: the negative side is saturated (the Stack's slope: none)
    np.testing.assert_array_equal(got.saturation, want, err_msg=f"[{backend}] saturation per layer")
