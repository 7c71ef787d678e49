"""``Result.signal_clip_acted``: where signal clipping changed dL/dh_l, against an independent count.

The expected flags come from a plain float64 backward written here from tests/naive.py (its
forward, phi' and the same clipped chain as ``naive.backward``, no rescaling, no gradbench code):
before each clip, the signal's largest |entry| (value) or its norm (norm) is compared with the
threshold. Thresholds are chosen so that no layer lies near it (``_margin``), so the float32 runs,
whose chain differs from the float64 one by rounding, decide the same. Every backend, both modes,
float32, checkpointed, stats_only and generated-weight runs, and the C drivers on one and two
threads must give exactly these flags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi
from gradbench.backends import backends, get_backend

from tests import naive
from tests.helpers import assert_clip_record_refused, backward_arrays, forward_arrays, run_backward, run_forward

BACKENDS = backends()
HAS_C = "c" in BACKENDS


# ------------------------------------------------------------------ the independent count
def _plain(params) -> dict:
    return {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}


def naive_flags(stack, P, x):
    """(flags (L+1,), ratios (L+1,)): whether the clip's test fires on the plain float64 signal
    dL/dh_l (l = 0 .. L; L the top), and max|g| / c or ||g|| / c before that clip: the clipped
    chain of ``naive.backward`` (sum_squares loss, optional residual groups), which records them."""
    sizes = np.zeros(stack.depth + 1)
    naive.backward(stack, P, np.asarray(x, np.float64), sizes=sizes)
    return sizes > stack.clip_threshold, sizes / stack.clip_threshold


def _margin(ratios) -> float:
    """How far the closest layer lies from the threshold (relative)."""
    return float(np.min(np.abs(np.log(ratios))))


# (activation, init options, what the flags look like)
KINDS = {
    # sigmoid' <= 1/4: only the top signal exceeds c, every one below is far smaller
    "vanishing": (dict(activation="sigmoid", init="xavier_normal"), "top only"),
    # He-gain ReLU at twice the variance: the signal grows ~sqrt 2 a layer towards the input
    "exploding": (dict(activation="relu", init="normal", sigma_w=2.0), "below"),
    # tanh above the edge of chaos, c near the middle of its signal sizes
    "tanh": (dict(activation="tanh", init="normal", sigma_w=1.6), "mixed"),
    # residual groups of 2: the skip's add before the clip
    "residual": (dict(activation="tanh", init="normal", sigma_w=1.3, residual=2), "mixed"),
}
BASE = {"vanishing": 0.5, "exploding": 6.0, "tanh": 3.0, "residual": 3.0}  # c / the top signal's size


# How far (relative) every layer's pre-clip size must lie from the threshold: far beyond the
# rounding by which a backend's chain differs from the plain float64 one (float32: ~L 1e-7).
MARGIN = {"float64": 1e-8, "float32": 3e-3}


def problem(kind, mode, dtype="float64", depth=24, width=16, batch=8, seed=0, generated=False):
    """A clipped stack of ``kind`` whose threshold lies clear of every layer's signal
    (:data:`MARGIN`), its weights (``generated``: GeneratedParams), input and the naive flags."""
    opts, _ = KINDS[kind]
    stack = gb.Stack(depth=depth, width=width, dtype=dtype, clip=mode, clip_on="signal", clip_threshold=1.0,
                     **opts)
    params = gb.GeneratedParams(stack, seed) if generated else gb.init_params(stack, seed)
    x = gb.gaussian_input(stack, batch, seed + 1)
    P = _plain(params.materialize() if generated else params)
    _, s = naive.forward(stack, P, np.asarray(x, np.float64))
    top = s["hs"][-1]
    size = np.max(np.abs(top)) if mode == "value" else np.linalg.norm(top)
    clear = MARGIN[dtype]
    for k in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8):
        stack = stack.replace(clip_threshold=float(BASE[kind] * size * 1.037**k))
        flags, ratios = naive_flags(stack, P, x)
        if _margin(ratios) > clear:
            return stack, gb.GeneratedParams(stack, seed) if generated else params, x, flags
    raise AssertionError(f"no threshold clear of the signal for {kind} {mode}")


def _check_shape(kind, flags):
    L = len(flags) - 1
    what = KINDS[kind][1]
    if what == "top only":
        assert flags[L] and not flags[:L].any(), flags
    elif what == "below":  # the top does not act, layers below do
        assert not flags[L] and flags[:L].any(), flags
    else:
        assert flags.any() and not flags.all(), flags


# ------------------------------------------------------------------ the engine, every backend
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_flags_are_the_naive_chains(backend, mode, kind):
    stack, params, x, want = problem(kind, mode)
    _check_shape(kind, want)
    res = gb.backprop(stack, params, x, backend=backend)
    got = res.signal_clip_acted
    assert got.dtype == bool and got.shape == (stack.depth + 1,)
    np.testing.assert_array_equal(got, want, err_msg=f"{backend} {kind} {mode}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("kind", ["vanishing", "exploding", "tanh"])
def test_float32_flags_are_the_naive_chains(backend, mode, kind):
    stack, params, x, want = problem(kind, mode, dtype="float32")
    _check_shape(kind, want)
    got = gb.backprop(stack, params, x, backend=backend).signal_clip_acted
    np.testing.assert_array_equal(got, want, err_msg=f"{backend} float32 {kind} {mode}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", ["value", "norm"])
def test_segmented_stats_only_and_generated_runs_flag_as_the_plain_run(backend, dtype, mode):
    stack, params, x, want = problem("tanh", mode, dtype=dtype, depth=30)
    plain = gb.backprop(stack, params, x, backend=backend).signal_clip_acted
    np.testing.assert_array_equal(plain, want)
    for label, kw in (("checkpoint=4", dict(checkpoint=4)), ("checkpoint=7", dict(checkpoint=7)),
                      ("stats_only", dict(stats_only=True)),
                      ("stats_only, checkpoint=5", dict(stats_only=True, checkpoint=5))):
        got = gb.backprop(stack, params, x, backend=backend, **kw)
        np.testing.assert_array_equal(got.signal_clip_acted, plain, err_msg=f"{backend} {dtype} {mode} {label}")
    # generated weights: their own network, counted by the naive chain on the same weights
    stack, gen, x, want_gen = problem("tanh", mode, dtype=dtype, depth=30, seed=3, generated=True)
    _check_shape("tanh", want_gen)
    for kw in (dict(), dict(checkpoint=6), dict(stats_only=True, checkpoint=6)):
        got = gb.backprop(stack, gen, x, backend=backend, **kw).signal_clip_acted
        np.testing.assert_array_equal(got, want_gen, err_msg=f"{backend} {dtype} {mode} generated {kw}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_signal_clip_records_none(backend):
    base = dict(depth=6, width=8, activation="tanh")
    for stack in (gb.Stack(**base), gb.Stack(**base, clip="norm", clip_on="layer"),
                  gb.Stack(**base, clip="value", clip_on="global")):
        res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1), backend=backend)
        assert res.signal_clip_acted is None, stack


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_clip_that_never_acts_records_all_false(backend):
    stack = gb.Stack(depth=10, width=8, activation="tanh", clip="norm", clip_threshold=1e300)
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1), backend=backend)
    np.testing.assert_array_equal(res.signal_clip_acted, np.zeros(11, bool))


def test_head_loss_top_flag():
    """A head's dL/dh_L: its clip is the engine's (loss.top_signal), the same on every backend."""
    stack = gb.Stack(depth=8, width=8, activation="tanh", loss="mse", output_dim=2, clip="value",
                     clip_threshold=1e-4)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 4, 1)
    t = np.random.default_rng(2).standard_normal((4, 2))
    _, s = naive.forward(stack, _plain(params), x, t)
    dy = 2 * (s["y"] - t) / t.size
    assert np.max(np.abs(dy @ params.W_out)) > 1e-4  # the top acts
    flags = [gb.backprop(stack, params, x, t, backend=b).signal_clip_acted for b in BACKENDS]
    assert flags[0][-1]
    for f in flags[1:]:
        np.testing.assert_array_equal(f, flags[0])


# ------------------------------------------------------------------ the C drivers on 1 and 2 threads
@pytest.mark.skipif(not HAS_C, reason="the C backend is not built")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("kind", ["exploding", "tanh", "residual"])
def test_c_driver_flags_on_one_and_two_threads(kind, mode, dtype):
    from gradbench import cbackend as cb
    from gradbench import reference as ref

    stack, params, x, want = problem(kind, mode, dtype=dtype, batch=16)
    L = stack.depth
    fwd = run_forward(ref, forward_arrays(stack, params, np.asarray(x, stack.np_dtype)))  # plain forward
    G = fwd["H"][L].copy()
    e_top, acted = ref.top_signal_acted(G, int(fwd["fexp"][L]), abi.signal_clip(stack), stack.clip_threshold)
    got = {}
    for nth in (1, 2):
        opts = cb.make_opts(nthreads=nth, par_min_work=0, par_min_total=0)
        assert cb.threads_for(L, x.shape[0], stack.width, stack.np_dtype, opts) == nth
        arrays = backward_arrays(stack, fwd, G, e_top)
        arrays["clip_acted"][L] = acted
        cb.backward_with(opts, *(arrays[k] for k in abi.names(abi.BACKWARD)))
        got[nth] = arrays["clip_acted"].copy()
    np.testing.assert_array_equal(got[1].astype(bool), want)
    np.testing.assert_array_equal(got[2], got[1])
    want_ref = run_backward(ref, backward_arrays(stack, fwd, G, e_top))["clip_acted"]
    np.testing.assert_array_equal(got[1][:L], want_ref[:L])


_SCRIPT = r"""
import json, sys
import numpy as np
import gradbench as gb
from gradbench import cbackend as cb
stack = gb.Stack(**json.loads(sys.argv[1]))
params = gb.init_params(stack, 0)
x = gb.gaussian_input(stack, 16, 1)
assert cb.threads() == int(sys.argv[2]) and cb.threads_for(stack.depth, 16, stack.width) == int(sys.argv[2])
out = {}
for label, kw in (("plain", {}), ("ckpt", dict(checkpoint=5)), ("stats", dict(stats_only=True, checkpoint=5))):
    out[label] = gb.backprop(stack, params, x, backend="c", **kw).signal_clip_acted.tolist()
gstack = gb.Stack(**json.loads(sys.argv[3]))
gen, gx = gb.GeneratedParams(gstack, 3), gb.gaussian_input(gstack, 16, 4)
for label, kw in (("gen", {}), ("gen stats", dict(stats_only=True, checkpoint=5))):
    out[label] = gb.backprop(gstack, gen, gx, backend="c", **kw).signal_clip_acted.tolist()
print(json.dumps(out))
"""


@pytest.mark.skipif(not HAS_C, reason="the C backend is not built")
@pytest.mark.parametrize("mode", ["value", "norm"])
def test_engine_flags_with_gradbench_c_threads_1_and_2(mode):
    """GRADBENCH_C_THREADS=1 against 2 (teams forced for these small layers), every kind of run."""
    stack, params, x, want = problem("tanh", mode, depth=30, batch=16)
    gstack, gen, gx, want_gen = problem("tanh", mode, depth=30, batch=16, seed=3, generated=True)
    _check_shape("tanh", want)
    _check_shape("tanh", want_gen)

    def spec(st):
        return json.dumps({k: getattr(st, k) for k in ("depth", "width", "activation", "init", "sigma_w", "clip",
                                                      "clip_threshold", "clip_on", "dtype")})

    runs = {}
    for nth in (1, 2):
        env = dict(os.environ, GRADBENCH_C_THREADS=str(nth), GRADBENCH_C_PAR_MIN_WORK="0",
                   GRADBENCH_C_PAR_MIN_TOTAL="0")
        out = subprocess.run([sys.executable, "-c", _SCRIPT, spec(stack), str(nth), spec(gstack)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        runs[nth] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs[1] == runs[2]
    for label in ("plain", "ckpt", "stats"):
        np.testing.assert_array_equal(np.array(runs[1][label]), want, err_msg=label)
    for label in ("gen", "gen stats"):
        np.testing.assert_array_equal(np.array(runs[1][label]), want_gen, err_msg=label)


# ------------------------------------------------------------------ the contract and the frame
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [0, 1, 2])  # L - 1 .. L + 1 entries: only L + 1 passes
def test_clip_acted_of_the_wrong_size_is_refused_before_any_kernel(backend, size):
    stack, params, x, _ = problem("tanh", "value", depth=6)
    L = stack.depth
    ref = get_backend("numpy")
    fwd = run_forward(ref, forward_arrays(stack, params, np.asarray(x, stack.np_dtype)))
    arrays = backward_arrays(stack, fwd, fwd["H"][L].copy(), 0)
    arrays["clip_acted"] = np.full(L + size, 7, np.int64)
    call = lambda: get_backend(backend).stack_backward(*(arrays[k] for k in abi.names(abi.BACKWARD)))  # noqa: E731
    if size == 1:
        call()
        assert set(np.unique(arrays["clip_acted"][:L])) <= {0, 1} and arrays["clip_acted"][L] == 7
        return
    assert_clip_record_refused(call, arrays, "stack_backward", L + 1)


def test_to_frame_has_the_flags_and_the_top_in_attrs():
    pytest.importorskip("pandas")
    stack, params, x, want = problem("exploding", "value")
    df = gb.backprop(stack, params, x, backend="numpy").to_frame()
    np.testing.assert_array_equal(df["signal_clip_acted"].to_numpy(), want[:-1])
    assert df["signal_clip_acted"].dtype == bool
    assert df.attrs["signal_clip_acted_top"] is bool(want[-1])
    plain = gb.Stack(depth=4, width=4)
    df = gb.backprop(plain, gb.init_params(plain, 0), gb.gaussian_input(plain, 2, 1), backend="numpy").to_frame()
    assert "signal_clip_acted" not in df.columns and "signal_clip_acted_top" not in df.attrs
