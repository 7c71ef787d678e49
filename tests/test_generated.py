"""Generated weights (issue 8): counter-based, per layer, the same in every backend and segment.

The generator is checked against its documented definition written out here with plain NumPy,
its distribution against scipy.stats, and runs with it against runs with the same weights
stored as ordinary Params (and against the reference backend).
"""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from scipy import stats

import gradbench as gb
from gradbench.backends import backends
from gradbench.params import KIND_B, KIND_W, GeneratedParams

BACKENDS = backends()


def _documented(seed, layer, kind):
    """The stream of the module docstring, written out independently."""
    return np.random.Generator(np.random.Philox(key=seed, counter=layer * 2**64 + kind * 2**128))


# ---------------------------------------------------------------- the generator
def test_layer_weights_follow_the_documented_generator():
    stack = gb.Stack(depth=7, width=5, init="he_normal", sigma_b=0.5)
    gp = GeneratedParams(stack, seed=2**100 + 12345)
    W, b = gp.weights(0, 7), gp.biases(0, 7)
    for l in (0, 3, 6):
        np.testing.assert_array_equal(W[l], np.sqrt(2.0) / np.sqrt(5) * _documented(gp.seed, l, KIND_W).standard_normal((5, 5)))
        np.testing.assert_array_equal(b[l], 0.5 * _documented(gp.seed, l, KIND_B).standard_normal(5))


@pytest.mark.parametrize("init", ["he_normal", "xavier_uniform", "orthogonal"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_layer_is_the_same_whatever_the_segments(init, dtype):
    stack = gb.Stack(depth=30, width=6, init=init, sigma_b=0.1, dtype=dtype)
    gp = GeneratedParams(stack, seed=7)
    whole = gp.weights(0, 30)
    assert whole.dtype == np.dtype(dtype) and whole.flags.c_contiguous
    for cuts in ([0, 1, 30], [0, 7, 14, 21, 28, 30], [0, 29, 30]):
        parts = np.concatenate([gp.weights(a, b) for a, b in zip(cuts[:-1], cuts[1:])])
        np.testing.assert_array_equal(parts, whole)
    # backwards, one layer at a time, into a reused buffer
    buf = np.empty((1, 6, 6), dtype=dtype)
    for l in range(29, -1, -1):
        np.testing.assert_array_equal(gp.weights(l, l + 1, out=buf)[0], whole[l])
    np.testing.assert_array_equal(np.concatenate([gp.biases(a, a + 5) for a in range(0, 30, 5)]), gp.biases(0, 30))
    assert not np.array_equal(GeneratedParams(stack, seed=8).weights(0, 1), whole[:1])
    assert not np.array_equal(whole[0], whole[1])


NORMAL = ["normal", "xavier_normal", "he_normal", "lecun_normal"]


@pytest.mark.parametrize("init", NORMAL + ["xavier_uniform", "he_uniform"])
def test_distribution_matches_the_init(init):
    N, L = 32, 40
    stack = gb.Stack(depth=L, width=N, init=init)
    w = GeneratedParams(stack, seed=11).weights(0, L).ravel()
    var = (2.0 if init.startswith("he_") else 1.0) / N  # gain^2 / fan_in (xavier: 2 / (2N) = 1/N)
    std = np.sqrt(var)
    dist = stats.norm(0, std) if init in NORMAL else stats.uniform(-std * np.sqrt(3), 2 * std * np.sqrt(3))
    assert stats.kstest(w, dist.cdf).pvalue > 1e-3
    n = w.size
    assert abs(w.mean()) < 5 * std / np.sqrt(n)
    assert abs(w.var() / var - 1) < 5 * np.sqrt(2.0 / n) * (1 if init in NORMAL else 0.6)
    # and a wrong scale is rejected by the same test
    assert stats.kstest(w, stats.norm(0, 1.1 * std).cdf).pvalue < 1e-6
    # layers are independent: correlation of two layers' entries ~ N(0, 1/N^2)
    W = w.reshape(L, -1)
    assert abs(np.corrcoef(W[0], W[1])[0, 1]) < 5 / N


def test_orthogonal_and_biases():
    stack = gb.Stack(depth=5, width=16, init="orthogonal", sigma_w=1.3, sigma_b=0.2)
    gp = GeneratedParams(stack, seed=1)
    for W in gp.weights(0, 5):
        np.testing.assert_allclose(W @ W.T, 1.3**2 * np.eye(16), atol=1e-12)
    b = GeneratedParams(stack.replace(depth=200), seed=1).biases(0, 200).ravel()
    assert stats.kstest(b, stats.norm(0, 0.2).cdf).pvalue > 1e-3
    gamma, beta, slope = GeneratedParams(gb.Stack(depth=3, width=2, activation="prelu"), 0).constants(0, 3)
    np.testing.assert_array_equal(slope, [0.25] * 3)
    assert np.all(gamma == 1) and np.all(beta == 0)


def test_validation():
    stack = gb.Stack(depth=4, width=3)
    x = gb.gaussian_input(stack, 2, 1)
    with pytest.raises(ValueError, match=r"different stack \(depth=4 vs 5\)"):
        gb.backprop(stack.replace(depth=5), GeneratedParams(stack, 0), x)
    with pytest.raises(ValueError, match="2\\*\\*128"):
        GeneratedParams(stack, seed=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        GeneratedParams(stack, seed=1.5)
    with pytest.raises(TypeError, match="Stack"):
        GeneratedParams("stack", seed=1)
    with pytest.raises(TypeError, match="GeneratedParams"):
        gb.backprop(stack, {"W": 1}, x)
    with pytest.raises(ValueError, match="inside"):
        GeneratedParams(stack, 0).weights(2, 5)
    with pytest.raises(TypeError, match="start must be an int"):
        GeneratedParams(stack, 0).weights(2.5, 4)  # was layers [2, 4)
    biased = GeneratedParams(stack.replace(sigma_b=0.1), 0)
    frozen = np.zeros((3, 3))
    frozen.flags.writeable = False
    for out in (np.zeros((5, 3)), np.zeros((3, 3), np.float32), frozen):
        with pytest.raises(ValueError, match="out must be a writeable float64 array of shape"):
            biased.biases(0, 3, out=out)  # (5, 3) kept its last rows, float32 came back float32
    with pytest.raises(ValueError, match="out must be"):
        GeneratedParams(stack, 0).biases(0, 3, out=np.empty((2, 3)))  # sigma_b = 0 too


def test_materialized_params_are_copies_of_the_kept_layers():
    # editing a materialized copy in place changed the generator's input layer and head: the
    # next run with GeneratedParams(stack, seed) used the edited weights
    stack = gb.Stack(depth=3, width=8, input_dim=2, loss="bce", output_dim=1)
    gp = GeneratedParams(stack, 0)
    first = gp.materialize()
    for name in ("W_in", "b_in", "W_out", "b_out"):
        getattr(first, name)[...] *= 2
    again = GeneratedParams(stack, 0).materialize()
    for name in ("W_in", "b_in", "W_out", "b_out"):
        np.testing.assert_array_equal(getattr(gp, name), getattr(again, name))


# ---------------------------------------------------------------- runs with generated weights
CASES = {
    "tanh-he": dict(depth=40, width=8, activation="tanh", init="he_normal"),
    "relu-res-bias": dict(depth=36, width=6, activation="relu", init="he_uniform", residual=3, sigma_b=0.1),
    "head-input-orth": dict(depth=12, width=6, activation="gelu", init="orthogonal", input_dim=3, loss="bce",
                            output_dim=2, batch_norm=True),
}


def _run(kw, backend, params=None, **opts):
    stack = gb.Stack(**kw)
    gp = GeneratedParams(stack, seed=5)
    x = gb.gaussian_input(stack, 4, seed=6)
    t = None
    if stack.loss == "bce":
        t = np.random.default_rng(0).uniform(size=(4, stack.output_dim))
    return gb.backprop(stack, gp if params is None else params(gp), x, t, backend=backend, **opts)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_generated_run_equals_stored_run_bitwise(backend, case):
    """Generated per segment (checkpointed, stats only) = the same weights stored, plain run."""
    from test_checkpoint import assert_bitwise

    kw = CASES[case]
    ref = _run(kw, backend, params=lambda gp: gp.materialize(), checkpoint=None)
    assert_bitwise(_run(kw, backend, checkpoint=None), ref)
    k = 6 if kw.get("residual") else 5
    got = _run(kw, backend, checkpoint=k)
    assert got.extras["generated"] and got.extras["checkpoint"] == k
    assert_bitwise(got, ref)
    assert_bitwise(_run(kw, backend, checkpoint=k, stats_only=True), ref, grads=False)
    # "auto" on a run this small: every weight kept (drawn once), stats_only without recomputation
    for stats_only in (False, True):
        got = _run(kw, backend, stats_only=stats_only)
        assert got.extras["weights_kept"] and got.extras["checkpoint"] is None
        assert_bitwise(got, ref, grads=not stats_only)


def test_small_runs_draw_each_layer_once(monkeypatch):
    """With checkpoint="auto", generated weights that fit in SMALL_RUN_BYTES are drawn once per
    layer (the backward takes the forward's); beyond it, two segments are kept and the other
    layers are drawn again for the backward. The statistics are the same bits."""
    from test_checkpoint import assert_bitwise

    from gradbench import plan

    drawn = []
    weights = GeneratedParams.weights
    monkeypatch.setattr(GeneratedParams, "weights",
                        lambda self, start, stop, out=None: drawn.extend(range(start, stop)) or weights(self, start, stop, out))
    kw = dict(depth=50, width=8, activation="tanh", init="he_normal")
    kept = _run(kw, "auto", stats_only=True)
    assert kept.extras["weights_kept"] and kept.extras["segments"] == 8
    assert sorted(drawn) == list(range(50))
    drawn.clear()
    monkeypatch.setattr(plan, "SMALL_RUN_BYTES", (2 * 50 + 1) * 4 * 8 * 8 - 1)  # under H, Z and under W, b
    again = _run(kw, "auto", stats_only=True)
    assert not again.extras["weights_kept"] and again.extras["checkpoint"] == 7
    # the backward finds the forward's last two segments ([42, 49) and [49, 50)) still in the buffers
    assert sorted(drawn) == sorted([*range(50), *range(42)])
    assert_bitwise(kept, again, grads=False)


@pytest.mark.parametrize("spare", [False, True])
def test_without_a_spare_cpu_the_caller_draws_the_weights(monkeypatch, spare):
    """No CPU spare when the run starts (gradbench._env.spare_cpu: the workers of a sweep that
    fills the machine): no helper thread draws weights or fills histograms; with one, the next
    segment is drawn in the helper. The results are the stored run's bits either way."""
    import threading

    from test_checkpoint import assert_bitwise

    from gradbench import supply

    by = []
    weights = GeneratedParams.weights
    monkeypatch.setattr(GeneratedParams, "weights", lambda self, start, stop, out=None:
                        by.append(threading.current_thread().name) or weights(self, start, stop, out))
    monkeypatch.setattr(supply, "spare_cpu", lambda: spare)
    kw = CASES[next(iter(CASES))]
    ref = _run(kw, "auto", params=lambda gp: gp.materialize(), checkpoint=None)
    for opts in (dict(checkpoint=5), dict(stats_only=True), dict(checkpoint=5, stats_only=True)):
        by.clear()
        got = _run(kw, "auto", **opts)
        assert_bitwise(got, ref, grads=not opts.get("stats_only"))
        helpers = {name for name in by if name != threading.main_thread().name}
        assert helpers == ({"gradbench-weights_0"} if spare else set()), (opts, by)


@pytest.mark.parametrize("helper", [False, True])
def test_an_error_in_the_supply_s_work_is_raised_by_its_future(helper):
    """LayerSupply.background: with a helper thread or without, fn's result and fn's error come
    out of the returned future's result(), not out of the call that queued it."""
    from gradbench.supply import LayerSupply

    s = LayerSupply(None, gb.Stack(**CASES["tanh-he"]), 1, helper=helper)

    def fail(x):
        raise ValueError(f"bad {x}")

    try:
        assert s.background(lambda x: x + 1, 41).result() == 42
        fut = s.background(fail, 7)
        with pytest.raises(ValueError, match="bad 7"):
            fut.result()
    finally:
        s.close()


def test_no_cpu_is_spare_while_every_cpu_runs_a_thread():
    """spare_cpu() against processes that keep every CPU busy (and one CPU of affinity)."""
    from gradbench._env import runnable_threads, spare_cpu

    n = os.cpu_count() or 1
    spin = [subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
            for _ in range(n)]
    try:
        time.sleep(0.5)
        assert runnable_threads() >= n + 1  # the spinners and this thread
        assert not spare_cpu()
    finally:
        for p in spin:
            p.kill()
            p.wait()
    if hasattr(os, "sched_setaffinity"):
        cpus = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, {min(cpus)})
            assert not spare_cpu()
        finally:
            os.sched_setaffinity(0, cpus)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_backend_agrees_with_the_reference_on_generated_weights(backend, case):
    ref = _run(CASES[case], "numpy", checkpoint=7 if "res" not in case else 6, stats_only=True)
    got = _run(CASES[case], backend, checkpoint=7 if "res" not in case else 6, stats_only=True)
    for name in ("grad_norm", "signal_norm", "act_mean", "act_std"):
        a, b = getattr(got, name), getattr(ref, name)
        np.testing.assert_array_equal(a.exponent, b.exponent, err_msg=name)
        np.testing.assert_allclose(a.mantissa, b.mantissa, rtol=1e-10, atol=1e-300, err_msg=name)
    np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-12)


def test_deep_generated_stats_only_run_in_bounded_memory():
    """4000 layers, width 32: weights would be 32 MiB; only one segment of them ever exists."""
    stack = gb.Stack(depth=4000, width=32, activation="tanh", init="he_normal")
    gp = GeneratedParams(stack, seed=0)
    x = gb.gaussian_input(stack, 16, 1)
    res = gb.backprop(stack, gp, x, stats_only=True, checkpoint=64, backend="auto")
    assert res.grads is None and res.extras["segments"] == 63
    assert res.extras["memory_estimate"] < 8 * 2**20
    g = res.grad_norm.log10()
    assert np.all(np.isfinite(g)) and res.grad_hist.counts.shape == (4000, 40)
    assert res.grad_hist.counts.sum(axis=1).max() <= 32 * 32


@pytest.mark.slow
def test_1e5_layers_peak_memory_in_a_subprocess():
    code = textwrap.dedent("""
        import gradbench as gb
        from gradbench._procstat import own_peak_bytes
        from gradbench.params import GeneratedParams
        st = gb.Stack(depth=100000, width=64, activation="tanh", init="he_normal")
        r = gb.backprop(st, GeneratedParams(st, 0), gb.gaussian_input(st, 64, 1), stats_only=True,
                        memory_budget=2**30)  # "auto" checkpoints because the plain run needs more
        assert r.extras["checkpoint"] == 316, r.extras
        print(own_peak_bytes())  # this process's own peak (not ru_maxrss: gradbench/_procstat.py)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert int(out.stdout.split()[-1]) < 2**30
