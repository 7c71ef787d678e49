"""Bit-level properties of the C drivers that the tolerance tests do not see.

* Residual groups of one layer with several threads: the skip of layer l is added at the
  exponent of h_l, which every thread knows; threads other than 0 once read it from fexp[l]
  before thread 0 had written it (a race: results changed from run to run with 3 threads).
* The vector activations' few FMA contractions are fixed in the source (csrc/activations.h,
  GB_OPAQUE), so the forward's phi' (saturation count) and the backward's phi' of the same
  pre-activations are each the same whichever row function computes them: checked here as
  "every thread count and every hand-over point gives the same bits" for every activation.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi
from gradbench import reference as ref
from tests import test_c
from tests.helpers import team_opts

cb = pytest.importorskip("gradbench.cbackend", reason="C extension not built", exc_type=ImportError)

ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "swish", "gelu"]


def _run(opts, stack, params, x):
    """Every array the two drivers write (sum_squares loss), as tests/test_c.py runs them."""
    o = _forward(opts, stack, params, x)
    _backward(opts, stack, params, o)
    return o


def _forward(opts, stack, params, x):
    L, N, B, dt = stack.depth, stack.width, x.shape[0], stack.np_dtype
    rescale = gb.engine.can_rescale_forward(stack, params)
    icfg, fcfg = abi.kernel_config(stack, rescale)
    o = dict(H=np.empty((L + 1, B, N), dt), Z=np.empty((L, B, N), dt), bn_mean=np.zeros((L, N), dt),
             bn_rstd=np.ones((L, N), dt), fexp=np.zeros(L + 1, np.int64), frow=np.zeros((L + 1, B), np.int64), act_mean=np.empty(L),
             act_std=np.empty(L), saturation=np.empty(L), dead=np.empty(L), info=np.full(2, -1, np.int64))
    o["H"][0] = x
    cb.forward_with(opts, icfg, fcfg, params.W, params.b, params.gamma, params.beta, params.slope, o["H"],
                    o["Z"], o["bn_mean"], o["bn_rstd"], o["fexp"], o["frow"], o["act_mean"], o["act_std"],
                    o["saturation"], o["dead"], o["info"])
    return o


def _backward(opts, stack, params, o):
    L, N, dt = stack.depth, stack.width, stack.np_dtype
    rescale = gb.engine.can_rescale_forward(stack, params)
    icfg, fcfg = abi.kernel_config(stack, rescale)
    o.update(G=o["H"][L].copy(), row_e=np.zeros(o["H"].shape[1], np.int64), dW=np.empty((L, N, N), dt), db=np.empty((L, N), dt),
             dgamma=np.empty((L, N), dt), dbeta=np.empty((L, N), dt), dslope=np.empty(L, dt),
             sig_m=np.empty(L + 1), sig_e=np.zeros(L + 1, np.int64), gnorm_m=np.empty(L),
             gnorm_e=np.zeros(L, np.int64), dz_e=np.zeros(L, np.int64), dw_e=np.zeros(L, np.int64), clip_acted=np.zeros(L + 1, np.int64))
    with np.errstate(all="ignore"):
        o["sig_e"][L] = ref.top_signal(o["G"], int(o["fexp"][L]), abi.signal_clip(stack), stack.clip_threshold)
    cb.backward_with(opts, icfg, fcfg, params.W, params.gamma, params.beta, params.slope, o["H"], o["Z"],
                     o["bn_rstd"], o["fexp"], o["frow"], o["G"], o["row_e"], o["dW"], o["db"], o["dgamma"], o["dbeta"], o["dslope"],
                     o["sig_m"], o["sig_e"], o["gnorm_m"], o["gnorm_e"], o["dz_e"], o["dw_e"], o["clip_acted"], o["info"])


def _problem(stack, batch, seed):
    params = gb.init_params(stack, seed=seed)
    rng = np.random.default_rng(seed)
    if stack.activation == "prelu":
        params.slope[...] = rng.uniform(0.05, 0.5, stack.depth).astype(stack.dtype)
    if stack.batch_norm:  # as training leaves them, not the init's 1 and 0
        params.gamma[...] = rng.uniform(0.5, 1.5, params.gamma.shape).astype(stack.dtype)
        params.beta[...] = rng.uniform(-0.5, 0.5, params.beta.shape).astype(stack.dtype)
    return params, gb.gaussian_input(stack, batch=batch, seed=seed + 1)


def _same(runs):
    for other in runs[1:]:
        for name, a in runs[0].items():
            np.testing.assert_array_equal(other[name], a, err_msg=name)


def _teams(configs, **options):
    """team_opts for each (threads, solo_after) of configs; on more than one thread both ways
    of the forward's W^T (a copy per thread, column shares of one: own_wt 1 and -1)."""
    return [team_opts(t, solo_after=s, own_wt=w, **options)
            for t, s in configs for w in ((1, -1) if t > 1 else (0,))]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", ["gelu", "leaky_relu", "tanh"])
def test_residual_groups_of_one_layer_do_not_race(act, dtype):
    """residual=1 with zero biases (the forward carries exponents): 2 and 3 threads, several
    times, give the one-thread bits (B = 13 and 19: three threads own 4, 4 and 5 or 11 rows)."""
    for width, batch in ((15, 13), (39, 19)):
        stack = gb.Stack(depth=17, width=width, activation=act, init="normal", sigma_w=1.0, residual=1,
                         residual_scale=0.5, dtype=dtype)
        params, x = _problem(stack, batch, 11)
        one = _run(team_opts(1), stack, params, x)
        runs = [one] + [_run(o, stack, params, x) for o in _teams([(t, 0) for t in (3, 2, 3, 3, 2, 3)])]
        _same(runs)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("scale", [0.6, 0.0])
def test_rows_of_zeros_same_bits_for_any_thread_count(scale, dtype):
    """A sample whose every ReLU unit is dead at layer m has a signal of zeros below m, and such
    a row takes the layer's exponent, which only the whole team knows (after the layer's barrier,
    csrc/stack_impl.h gb_finish_rows); the exponents are the reference's. Weights near the identity and biases of -0.01 kill
    sample r near layer x_r / 0.01, so the rows die at many layers, on some threads and not
    others (scale 0: every row is zero from the start). 1, 2 and 3 threads and hand-overs give
    the same bits."""
    L, N, B = 60, 4, 13
    stack = gb.Stack(depth=L, width=N, activation="relu", init="he_normal", dtype=dtype)
    params, _ = _problem(stack, B, 4)
    rng = np.random.default_rng(9)
    params.W[...] = np.eye(N) + 0.01 * rng.standard_normal((L, N, N))
    params.b[...] = -0.01
    x = (scale * rng.uniform(0.02, 1.0, (B, 1)) * np.ones((1, N))).astype(dtype)
    one = _run(team_opts(1), stack, params, x)
    dead = np.all(one["H"][1:] == 0, axis=2)  # (L, B): every unit of the row dead after layer l
    first = [int(np.argmax(dead[:, r])) if dead[:, r].any() else L for r in range(B)]
    if scale:
        assert len(set(first) - {0, L}) >= 6, f"rows die at layers {first}: too few to test"
    else:
        assert first == [0] * B
    # the exponents of the rows of zeros as the reference gives them, on one thread too
    want = test_c._run(ref.stack_forward, ref.stack_backward, stack, params, x)
    test_c._compare(one, want, stack, "one thread")
    runs = [one] + [_run(o, stack, params, x) for o in _teams(((2, 0), (3, 0), (2, 2), (3, 3)))]
    _same(runs)


ISAS = [i for i in (1, 3, 4) if i <= cb.isa()]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", ACTS)
def test_every_activation_same_bits_for_any_thread_count(act, isa):
    """Each activation, rescaled (zero biases) and not, with residuals: 1, 2 and 3 threads and a
    hand-over to one thread give the same bits at each instruction set (the activation rows run
    on different rows per thread; their vector code must not depend on the caller)."""
    for sigma_b in ((0.0, 0.3) if act != "sigmoid" else (0.3,)):
        stack = gb.Stack(depth=12, width=37, activation=act, init="normal", sigma_w=1.3, sigma_b=sigma_b,
                         residual=3, residual_scale=0.5)
        params, x = _problem(stack, 18, 5)
        runs = [_run(o, stack, params, x) for o in _teams(((1, 0), (2, 0), (3, 0), (2, 5)), isa=isa)]
        _same(runs)



def _exact_float32_problem(act, width, sigma_b, seed, nan=False):
    """A float32 stack whose forward and signal products are exact: each W_l permutes the units
    and scales them by +-2^k (one term of each sum is not zero, whatever the summation order; few
    signs flipped, so that ReLU keeps a signal), biases 0 or 1/4; an input with +-0, float32
    subnormals, entries near the smallest normal and far above 1, and every sign; nan: a NaN in
    row 7 (every later layer's row 7 NaN, and dW, db)."""
    L = 7
    stack = gb.Stack(depth=L, width=width, activation=act, init="normal", sigma_w=1.0, sigma_b=sigma_b,
                     dtype="float32")
    params = gb.init_params(stack, seed=seed)
    rng = np.random.default_rng(seed)
    for l in range(L):
        W = np.zeros((width, width))
        signs = rng.choice([-1.0, 1.0], width, p=[0.1, 0.9])
        W[np.arange(width), rng.permutation(width)] = signs * 2.0 ** rng.integers(-2, 3, width)
        params.W[l] = W
    params.b[...] = sigma_b and 0.25
    B = 9
    x = rng.standard_normal((B, width))
    x[1, ::3] = 0.0
    x[1, 1::3] = -0.0
    x[2] = rng.choice([-1.0, 1.0], width) * 2.0 ** rng.integers(-149, -126, width)  # subnormal
    x[3] = rng.choice([-1.0, 1.0], width) * 2.0 ** rng.integers(-126, -120, width)  # near the smallest normal
    x[4] = rng.choice([-1.0, 1.0], width) * 2.0 ** rng.integers(100, 106, width)  # far above 1
    x[5] = 0.0
    x[6, :5] = [np.float32(1.5), -0.0, np.float32(2.0 ** -149), np.float32(-(2.0 ** -149)), 0.0]
    if nan:
        x[7, 4] = np.nan
    return stack, params, x.astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("width, nan", [(37, False), (64, False), (37, True)])
@pytest.mark.parametrize("sigma_b", [0.0, 0.25])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "identity"])
def test_float32_float_lanes_give_the_references_bits(act, sigma_b, width, nan, isa):
    """float32 ReLU and the identity (forward and backward) and leaky ReLU (backward) run in float
    lanes in C (csrc/stack_impl.h gb_vf_lin; docs/design.md section 2), said to give the very bits
    of the double evaluation. Where every product is exact (_exact_float32_problem), C and the
    NumPy reference must then agree bit for bit on H, Z, the signal (dh = dz W: dz's bits), every
    exponent, flag and count (rows at their own exponents with zero biases; one exponent per layer
    with 1/4), at each instruction set, on whole float vectors and the tail (width 37), and with
    a NaN row. dW, db and the double statistics add many terms (their order is each backend's):
    the tolerance comparison of tests/test_c.py; with the NaN row they are NaN, the same NaN
    entries on both sides."""
    stack, params, x = _exact_float32_problem(act, width, sigma_b, seed=3 + width, nan=nan)
    want = test_c._run(ref.stack_forward, ref.stack_backward, stack, params, x)
    got = _run(team_opts(1, isa=isa), stack, params, x)
    live = np.delete(want["H"], 7, axis=1)
    assert np.isfinite(live).all() and np.any(live[-1] != 0), "the problem lost its signal"
    assert np.isnan(want["H"][1:, 7]).all() == nan
    exact = ("H", "Z", "G", "fexp", "frow", "sig_e", "row_e", "gnorm_e", "dz_e", "dw_e", "clip_acted", "info",
             "saturation", "dead")
    for name in want if nan else exact:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{act} isa {isa}: {name}")
    if not nan:
        test_c._compare(got, want, stack, f"{act} isa {isa}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act, sigma_w", [("tanh", 1e4), ("sigmoid", 3e3), ("tanh", 1e3)])
def test_rescued_layers_same_bits_for_any_thread_count(act, sigma_w, dtype):
    """Each row is rescued on its own (its max|dz| below the bound), before dh = dz W, by the
    thread that owns it: 1, 2 and 3 threads and hand-overs give the same bits, with and without
    residuals, on stacks where rows are rescued (gnorm exponents far below the type's range) and
    where the rows of only some threads are below the rescue threshold (B = 13: rows 4/4/5 on
    three threads; sigma_w / 3: fewer rows rescued, more near the threshold)."""
    rescued = 0
    for residual, sw in ((0, sigma_w), (2, sigma_w), (0, sigma_w / 3)):
        stack = gb.Stack(depth=24, width=16, activation=act, init="normal", sigma_w=sw, sigma_b=0.0,
                         residual=residual, dtype=dtype)
        params, x = _problem(stack, 13, 3)
        runs = [_run(o, stack, params, x) for o in _teams(((1, 0), (2, 0), (3, 0), (2, 3), (3, 8)))]
        _same(runs)
        rescued += int((runs[0]["gnorm_e"] < (-1100 if dtype == "float64" else -160)).sum())
    assert rescued > 0


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", ["tanh", "relu", "prelu", "gelu"])
def test_batch_norm_same_bits_for_any_thread_count(act, dtype, isa):
    """Batch norm on several threads: the rows' products and activations per thread, the batch
    statistics (forward) and the batch-norm backward's sums per block of 4 rows, each thread its
    own, added in block order after barriers. 1, 2 and 3 threads and hand-overs give the
    one-thread bits, with and without residuals (N = 37: dW's row blocks 12/12/13 on three
    threads; B = 18: rows 4/4/10, the last block of 2 rows)."""
    for residual in (0, 2):
        stack = gb.Stack(depth=12, width=37, activation=act, init="normal", sigma_w=1.3, sigma_b=0.2,
                         batch_norm=True, residual=residual, residual_scale=0.5, dtype=dtype)
        params, x = _problem(stack, 18, 7)
        params.gamma[...] = np.random.default_rng(8).uniform(0.5, 1.5, params.gamma.shape).astype(dtype)
        params.beta[...] = np.random.default_rng(9).normal(0.0, 0.3, params.beta.shape).astype(dtype)
        runs = [_run(o, stack, params, x) for o in _teams(((1, 0), (2, 0), (3, 0), (2, 5), (3, 9)), isa=isa)]
        _same(runs)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype, sigma_w", [("float64", 1e170), ("float32", 1e25)])
def test_batch_norm_far_columns_same_bits_for_any_thread_count(dtype, sigma_w, isa):
    """Columns whose squared deviations overflow (tests/test_bn_far.py): every thread recomputes
    them from all B rows, and waits for the others before normalising its rows of z in place (a
    thread that went on at once could overwrite rows another is still reading)."""
    stack = gb.Stack(depth=6, width=37, activation="tanh", init="normal", sigma_w=sigma_w, sigma_b=0.2,
                     batch_norm=True, dtype=dtype)
    params, x = _problem(stack, 18, 7)
    runs = [_run(o, stack, params, x) for o in _teams(((1, 0), (2, 0), (3, 0), (2, 3)), isa=isa)]
    assert np.all(np.isfinite(runs[0]["bn_rstd"])) and np.all(runs[0]["bn_rstd"] > 0)
    _same(runs)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("clip, threshold", [("value", 0.01), ("norm", 0.05), ("norm", 1e6)])
def test_signal_clipping_same_bits_for_any_thread_count(clip, threshold, dtype, isa):
    """Clipping the backpropagated signal on several threads: each thread clips and normalises
    its rows, the whole batch's max|g| and ||g|| come from the threads' slots and the rows' sums
    after a barrier. 1, 2 and 3 threads and hand-overs give the one-thread bits, with and
    without residuals and batch norm; the thresholds clip at most layers (0.01, 0.05) or none."""
    clipped = 0
    for residual, bn in ((0, False), (2, False), (0, True)):
        stack = gb.Stack(depth=14, width=29, activation="tanh", init="normal", sigma_w=2.5, sigma_b=0.1,
                         residual=residual, batch_norm=bn, clip=clip, clip_threshold=threshold, dtype=dtype)
        params, x = _problem(stack, 18, 4)
        runs = [_run(team_opts(t, isa=isa, solo_after=s), stack, params, x)
                for t, s in ((1, 0), (2, 0), (3, 0), (2, 7), (3, 12))]
        _same(runs)
        free = gb.Stack(depth=14, width=29, activation="tanh", init="normal", sigma_w=2.5, sigma_b=0.1,
                        residual=residual, batch_norm=bn, dtype=dtype)
        unclipped = _run(team_opts(1, isa=isa), free, params, x)
        clipped += int(not np.array_equal(runs[0]["dW"], unclipped["dW"]))
    assert clipped > 0 or threshold > 1e5


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("clip", ["value", "norm"])
def test_signal_clipping_decided_on_the_whole_batch(clip, dtype):
    """The first 8 samples 10^4 times smaller than the rest (the first thread's rows on 2 and 3
    threads): their rows alone are below the clip threshold, the batch is not. Every thread
    must clip (a thread deciding on its own rows would keep its exponent: other bits)."""
    stack = gb.Stack(depth=10, width=21, activation="tanh", init="normal", sigma_w=1.0, sigma_b=0.0,
                     clip=clip, clip_threshold=1e-3, dtype=dtype)
    params, x = _problem(stack, 18, 6)
    x[:8] *= 1e-4
    runs = [_run(team_opts(t), stack, params, x) for t in (1, 2, 3)]
    _same(runs)


@pytest.mark.usefixtures("plain_biased_forward")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_forward_hands_over_at_its_judging_barriers(act, dtype):
    """A forward without batch norm or rescaling (nonzero biases) has no barrier of its own but
    one every 16 layers, where the team may go solo (a starved partner): handing over there,
    at the 2nd, 3rd or 4th of them (solo_after; the first is the team's start), keeps the
    one-thread bits, with W^T copies per thread and with the shares of the layers in flight."""
    stack = gb.Stack(depth=70, width=24, activation=act, init="normal", sigma_w=1.2, sigma_b=0.3, dtype=dtype)
    params, x = _problem(stack, 16, 2)
    assert not gb.engine.can_rescale_forward(stack, params)
    runs = [_run(o, stack, params, x) for o in _teams(((1, 0), (2, 0), (2, 2), (3, 3), (2, 4)))]
    _same(runs)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts the threads in /proc")
@pytest.mark.parametrize("variant", [dict(batch_norm=True), dict(clip="norm", clip_threshold=0.5)])
def test_batch_norm_and_clipping_backward_run_on_the_team(variant):
    """The backward of a batch-norm or clipped stack runs on the drivers' helper thread too (it
    ran on one thread before): the helper's CPU clock moves during the call, and not at all
    during the same call on one thread. (Not a share of the work: on a loaded machine the team
    may rightly go solo after its first barriers.)"""
    stack = gb.Stack(depth=300, width=64, activation="tanh", init="normal", sigma_w=1.3, sigma_b=0.2, **variant)
    params, x = _problem(stack, 64, 3)
    opts = team_opts(2)
    o = _forward(opts, stack, params, x)
    one = cb.make_opts(nthreads=1, blas=False)
    alone = _team_cpu(_backward, one, stack, params, o)
    shared = _team_cpu(_backward, opts, stack, params, o)
    assert alone < 1e-4, f"the helper ran {alone * 1e3:.3f} ms during a one-thread call"
    assert shared > 1e-4, f"the helper ran {shared * 1e3:.3f} ms during a two-thread call"


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the helpers' clocks in /proc")
def test_helpers_sleep_between_calls():
    """The pool's helpers outlive a call but spin at most ~0.2 ms after it (README: nothing of
    gradbench spins while the user's NumPy or Python runs): 60 ms after a two-thread call their
    CPU clocks stand still (a helper that kept spinning would add ~60 ms)."""
    stack = gb.Stack(depth=40, width=24, activation="tanh", init="normal", sigma_w=1.2, sigma_b=0.3)
    params, x = _problem(stack, 16, 5)
    _run(team_opts(2), stack, params, x)
    idle = _team_cpu(time.sleep, 0.06)
    assert idle < 5e-3, f"the helpers ran {idle * 1e3:.2f} ms while the process slept 60 ms"


def _team_cpu(fn, *args) -> float:
    """CPU seconds the drivers' helper threads (named cbackend.HELPER_NAME, csrc/team.c) spend
    while ``fn(*args)`` runs, from their thread CPU clocks; they are asleep before (a helper
    spins at most ~0.2 ms after a team)."""
    def cpu() -> float:
        total = 0.0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm", "rb") as f:
                    if f.read().strip() != cb.HELPER_NAME:
                        continue
                # the thread's CPU clock: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED) of linux/posix-timers.h
                clock = ((~int(tid)) << 3 | 6) & 0xFFFFFFFF
                total += time.clock_gettime(clock - (1 << 32) if clock >= 1 << 31 else clock)
            except OSError:  # the thread has ended
                continue
        return total

    time.sleep(0.01)
    before = cpu()
    fn(*args)
    return cpu() - before


def _spin(seconds: float) -> None:
    """Keep a CPU busy without the GIL (hashlib releases it for large inputs)."""
    import hashlib

    data, end = b"x" * (1 << 20), time.perf_counter() + seconds
    while time.perf_counter() < end:
        hashlib.sha256(data).digest()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread states in /proc")
def test_calls_take_only_the_cpus_other_threads_leave(monkeypatch):
    """With the library's own thread count, a call that would run a team counts the threads of
    the process that are running (another library's BLAS worker, gradbench's helpers; here a
    thread hashing without the GIL) and takes only the CPUs they leave; a call too small for a
    team does not look; an explicit thread count is kept."""
    monkeypatch.setattr(cb, "_OPTS", cb.make_opts(nthreads=2))
    monkeypatch.setattr(cb, "available_cpus", lambda: 2)
    monkeypatch.setattr(cb, "_EXPLICIT_THREADS", False)
    big, small = 1 << 20, int(cb._OPTS.par_min_work) - 1
    spinner = threading.Thread(target=_spin, args=(1.0,))
    spinner.start()
    try:
        time.sleep(0.05)
        seen = [(cb.busy_threads(), int(cb.call_opts(big).nthreads)) for _ in range(20)]
        assert any(b >= 1 and n == 1 for b, n in seen), seen
        assert cb.call_opts(small) is cb._OPTS
        monkeypatch.setattr(cb, "_EXPLICIT_THREADS", True)
        assert cb.call_opts(big) is cb._OPTS
        monkeypatch.setattr(cb, "_EXPLICIT_THREADS", False)
    finally:
        spinner.join()
    # both CPUs again once no other thread of the process runs: within 2 s (a loaded machine
    # keeps a helper of an earlier test, e.g. the prefaulter, runnable for a while)
    deadline = time.monotonic() + 2.0
    while int(cb.call_opts(big).nthreads) != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert int(cb.call_opts(big).nthreads) == 2, cb.running_threads()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread states in /proc")
def test_a_call_that_outlasts_a_blas_spin_keeps_its_team(monkeypatch):
    """A call from SPIN_LAYER per layer and SPIN_TOTAL in all (float32: twice each) runs every
    thread beside a running thread (a BLAS worker stops spinning long before it ends; one that
    keeps running is the team's judge's to see); one below either looks and takes one CPU."""
    monkeypatch.setattr(cb, "_OPTS", cb.make_opts(nthreads=2))
    monkeypatch.setattr(cb, "available_cpus", lambda: 2)
    monkeypatch.setattr(cb, "_EXPLICIT_THREADS", False)
    layer, total = int(cb.SPIN_LAYER), int(cb.SPIN_TOTAL)
    assert layer >= cb._OPTS.par_min_work and total >= cb._OPTS.par_min_total
    assert cb.outlasts_a_spin(layer, total) and cb.outlasts_a_spin(2 * layer, 2 * total, itemsize=4)
    assert not cb.outlasts_a_spin(layer - 1, total) and not cb.outlasts_a_spin(layer, total - 1)
    assert not cb.outlasts_a_spin(layer, total, itemsize=4) and not cb.outlasts_a_spin(None, total)
    spinner = threading.Thread(target=_spin, args=(1.0,))
    spinner.start()
    try:
        time.sleep(0.05)
        seen = [(cb.busy_threads(), int(cb.call_opts(layer, total).nthreads),
                 int(cb.call_opts(layer, total, 4).nthreads), int(cb.call_opts(layer // 2, total).nthreads))
                for _ in range(20)]
    finally:
        spinner.join()
    assert all(long == 2 for _, long, _, _ in seen), seen
    assert any(b >= 1 and f32 == 1 and narrow == 1 for b, _, f32, narrow in seen), seen


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread states in /proc")
def test_a_spinning_blas_worker_is_seen():
    """The case the check is for: NumPy's OpenBLAS keeps its worker threads spinning for a while
    after a product (~0.1 s), where the drivers' second thread would share a CPU with one."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pools = [p for p in threadpoolctl.threadpool_info() if p.get("internal_api") == "openblas"]
    if not pools or max(p["num_threads"] for p in pools) < 2:
        pytest.skip("NumPy's BLAS runs one thread here")
    a = np.ones((512, 512))
    seen = []
    for _ in range(5):
        a @ a
        seen.append(cb.busy_threads())
    assert max(seen) >= 1, seen


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_small_calls_and_small_layers_run_on_one_thread(dtype):
    """A team's start and end made stacks of up to ~16 width-64 layers slower on two threads than
    on one: the drivers start a team only from PAR_MIN_WORK per layer and PAR_MIN_TOTAL per call
    (both measured on this project's 2-CPU machine), and never where BLAS runs the products."""
    opts = cb.make_opts(nthreads=2, blas=False)
    total, layer = int(opts.par_min_total), int(opts.par_min_work)
    N, B = 64, 64
    deep = -(-total // (B * N * N))  # the fewest layers that reach PAR_MIN_TOTAL
    assert B * N * N >= layer
    assert cb.threads_for(deep, B, N, dtype, opts) == 2
    assert cb.threads_for(deep - 1, B, N, dtype, opts) == 1
    assert cb.threads_for(10, B, N, dtype, opts) == 1  # the slow case the rule is for
    assert cb.threads_for(10**6, 16, 32, dtype, opts) == 1  # a layer below PAR_MIN_WORK
    assert cb.threads_for(deep, B, N, dtype, cb.make_opts(nthreads=1, blas=False)) == 1
    assert cb.threads_for(deep, B, N, dtype, cb.make_opts(nthreads=2, blas=False, par_min_total=0)) == 2
    wide = cb.make_opts(nthreads=2, blas=True, blas_min_width=64)
    assert cb.threads_for(10**4, B, N, dtype, wide) == 1  # BLAS has threads of its own
    assert cb.blas_for(N, dtype, wide) and not cb.blas_for(N - 1, dtype, wide) and not cb.blas_for(N, dtype, opts)
    # the Python side does not look for busy threads when the call will not start a team
    assert cb.call_opts(B * N * N, (deep - 1) * B * N * N) is cb._OPTS


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread states in /proc")
def test_busy_threads_leave_out_the_drivers_own_helpers():
    """The drivers' helpers spin ~0.2 ms after a team so that the next call finds them awake;
    busy_threads must not count them as competitors (the backward after a two-thread forward
    would then run on one thread). A spinning thread given their name is left out, the same
    thread under another name counted."""
    import ctypes

    libc = ctypes.CDLL(None)
    counted = {}

    def spin_named(name: bytes) -> None:
        libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME: this thread's comm
        _spin(0.5)

    for name in (cb.HELPER_NAME, b"someone-else"):
        t = threading.Thread(target=spin_named, args=(name,))
        t.start()
        time.sleep(0.05)
        counted[name] = sum(t.native_id in cb.running_threads() for _ in range(20))
        t.join()
    assert counted[cb.HELPER_NAME] == 0 and counted[b"someone-else"] >= 1, counted


def test_concurrent_team_calls_share_the_pool_or_start_their_own():
    """Calls from several Python threads at once (cffi releases the GIL): one at a time holds
    the drivers' pool of helpers, the others start helpers of their own and join them
    (csrc/team.c); 2- and 3-thread teams alternate, so the pool grows and some of its helpers
    sit a team out. Every result has the one-thread bits."""
    stack = gb.Stack(depth=40, width=24, activation="tanh", init="normal", sigma_w=1.2, sigma_b=0.3)
    params, x = _problem(stack, 16, 5)
    want = _run(cb.make_opts(nthreads=1, blas=False), stack, params, x)
    opts = [team_opts(t) for t in (2, 3)]
    out, errors = [], []

    def call(o):
        try:
            for _ in range(5):
                out.append(_run(o, stack, params, x))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(opts[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(out) == 20
    _same([want] + out)


@pytest.mark.parametrize("act", ["gelu", "swish"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_forwards_tail_rescue_keeps_the_bits_on_every_thread_count(act, dtype):
    """A first layer deep in phi's tail (every z_0 near -80 for GELU, -900 for swish) is taken
    from ln|phi| behind two barriers of its own (the tail flags, the max ell): 2 and 3 threads,
    and a hand-over to one thread mid-call, give the one-thread bits."""
    stack = gb.Stack(depth=12, width=8, activation=act, dtype=dtype)
    q = gb.init_params(stack, 0)
    W = q.W.copy()
    W[0] = np.full((8, 8), (-60.0 if act == "gelu" else -700.0) / 8, dtype=stack.np_dtype)
    params = gb.Params(W=W, b=q.b, gamma=q.gamma, beta=q.beta, slope=q.slope)
    x = (np.abs(np.random.default_rng(3).standard_normal((19, 8))) + 0.5).astype(stack.np_dtype)
    one = _run(team_opts(1), stack, params, x)
    assert np.all(np.isfinite(one["H"])) and np.any(one["H"][1] != 0)  # the tail layer was carried
    runs = [one] + [_run(team_opts(t, solo_after=s), stack, params, x) for t in (2, 3) for s in (0, 3)]
    _same(runs)


PIECE_CASES = {
    "tanh": dict(depth=24, width=8, activation="tanh", init="he_normal", sigma_b=0.3),
    "relu, batch norm, residual 3": dict(depth=24, width=8, activation="relu", batch_norm=True, residual=3),
    "prelu, residual 2": dict(depth=24, width=8, activation="prelu", residual=2, sigma_b=0.2),
    "clip norm on the signal": dict(depth=24, width=8, activation="tanh", sigma_w=2.0, clip="norm",
                                    clip_threshold=1e-3),
    "a non-finite forward": dict(depth=12, width=4, activation="identity", sigma_w=1e40, sigma_b=1.0),
}


def _on_two_cpus(monkeypatch, stack, x):
    """A team of two on two CPUs, nothing else running: the call of ``stack`` on ``x`` as one
    piece on the whole team (the reference of the pieces)."""
    monkeypatch.setattr(cb, "_OPTS", team_opts(2))
    monkeypatch.setattr(cb, "available_cpus", lambda: 2)
    monkeypatch.setattr(cb, "_EXPLICIT_THREADS", False)
    monkeypatch.setattr(cb, "busy_threads", lambda: 0)
    return gb.backprop(stack, gb.init_params(stack, 0), x, backend="c")


def _in_pieces(monkeypatch, stack, x, group: int):
    """The call in pieces of two residual groups (``group`` layers each; RELOOK_TOTAL), each
    pass's pieces checked: one thread, one thread, then the rest on the team."""
    monkeypatch.setattr(cb, "RELOOK_TOTAL", len(x) * stack.width**2 * 2 * group)
    calls = []
    driver = cb._driver

    def watch(function, opts, arrays):
        calls.append((function, int(opts.nthreads), int(arrays[2].shape[0])))
        driver(function, opts, arrays)

    monkeypatch.setattr(cb, "_driver", watch)
    got = gb.backprop(stack, gb.init_params(stack, 0), x, backend="c")
    for function in ("stack_forward", "stack_backward"):
        pieces = [(n, layers) for f, n, layers in calls if f == function]
        assert [n for n, _ in pieces] == [1, 1, 2], pieces
        assert [layers for _, layers in pieces[:2]] == [2 * group, 2 * group], pieces
        assert sum(layers for _, layers in pieces) == stack.depth
    return got


@pytest.mark.usefixtures("plain_biased_forward")
@pytest.mark.parametrize("case", sorted(PIECE_CASES))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_call_beside_running_threads_runs_in_pieces_that_look_again(monkeypatch, case):
    """A call that found another thread running takes fewer CPUs; one of at least twice
    RELOOK_TOTAL runs in pieces of whole residual groups and looks again before each, and runs the
    rest on the whole team once the CPUs are free. The pieces give the bits of one call: checked
    against the same call on the whole team at once, the first non-finite layers included."""
    from tests.test_checkpoint import assert_bitwise

    stack = gb.Stack(**PIECE_CASES[case])
    x = gb.gaussian_input(stack, 5, 1)
    whole = _on_two_cpus(monkeypatch, stack, x)
    # busy at the start of each pass and at its first look again, free at the second
    looks = [1, 1, 0, 1, 1, 0]
    monkeypatch.setattr(cb, "busy_threads", lambda: looks.pop(0))
    k = max(1, stack.residual)
    got = _in_pieces(monkeypatch, stack, x, k)
    assert not looks, "every look taken"
    assert_bitwise(got, whole)
    if case == "a non-finite forward":  # found in a piece after the first: its offset added
        assert whole.first_nonfinite_forward is not None and whole.first_nonfinite_forward >= 2 * k


def test_a_first_call_beside_the_prefaulter_takes_the_whole_team_once_its_pages_are_in(monkeypatch):
    """A pass that leaves a CPU to the prefaulter (a first call's fresh pages) runs in pieces too,
    and once the prefaulter has less than PREFAULT_SHARE_FROM left the rest runs on every thread:
    the prefaulter stops when its pages are in, as a spinning BLAS worker does. Same bits as one
    call on the whole team."""
    from tests.test_checkpoint import assert_bitwise

    stack = gb.Stack(depth=24, width=8, activation="tanh", init="he_normal", sigma_b=0.3)
    x = gb.gaussian_input(stack, 5, 1)
    whole = _on_two_cpus(monkeypatch, stack, x)
    monkeypatch.setattr(cb, "_OPTS_SHARED", team_opts(1))
    # the bytes the prefaulter has left at the start of each pass and at each look again
    left = [cb.PREFAULT_SHARE_FROM, cb.PREFAULT_SHARE_FROM, 0] * 2
    monkeypatch.setattr(cb.buffers.PREFAULTER, "pending", lambda: left.pop(0) if left else 0)
    got = _in_pieces(monkeypatch, stack, x, 1)
    assert not left, "every look taken"
    assert_bitwise(got, whole)
