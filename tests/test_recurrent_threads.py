"""The recurrent C drivers' own products on a team of threads (csrc/recurrent_impl.h, gb_rjob):
the bits do not depend on the thread count (1, 2, 3, a hand-over to one thread mid-call), they
agree with the NumPy reference, and the rules that choose BLAS and the threads
(gradbench/recurrent/cbackend.py, csrc/recurrent_dispatch.c)."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench import blas
from gradbench.recurrent import abi as rabi
from gradbench.recurrent import backends as rbackends
from tests.helpers import assert_true_values
from tests.test_recurrent_backends import problem, run_cell

cb = pytest.importorskip("gradbench.recurrent.cbackend", reason="C extension not built")
from gradbench.cbackend import NO_BLAS, make_opts  # noqa: E402


def _opts(nthreads: int, solo_after: int = 0):
    """Own products only, on nthreads threads whatever the size (par_min_* 0)."""
    return make_opts(nthreads=nthreads, blas=False, par_min_work=0, par_min_total=0, solo_after=solo_after)


class _With:
    """The cell functions of the C backend with explicit options (run_cell's module)."""

    def __init__(self, opts):
        self.opts = opts

    def __getattr__(self, name):
        return lambda **a: cb.call_with(name, self.opts, **a)


# N = 70: column panels of 64 and a remainder; GN = 280 > 256 rows of W_hh in the backward
# (the packed blocks of k, gemm_impl.h GB_KC); B = 7: rows in blocks of 4 and a remainder, chunks of
# ceil(256 / 7) = 37 steps, 259 rows of dW's products (> GB_KC: packed in each thread's scratch);
# T B = 280 rows of the input projection (split by rows where it has more rows than GN); the
# vanilla cell's ReLU rescales its forward (run_cell: a homogeneous cell without a head)
CASES = {"rnn": dict(hidden=70, activation="relu"), "lstm": dict(hidden=70), "gru": dict(hidden=70)}


def _problem(cell, dtype, **extra):
    rnn = gb.Recurrent(cell=cell, steps=40, input_dim=3, sigma_b=0.2, dtype=dtype, **{**CASES[cell], **extra})
    params, xs, _ = problem(rnn, 7)
    return rnn, params, xs


def _run(rnn, params, xs, opts):
    """Every array of the forward and backward but those the drivers leave as they are: DH (no
    every-step loss) and clip_acted[T] (the caller's record of the top)."""
    fwd, bwd = run_cell(_With(opts), rnn, params, xs)
    bwd = {k: v[:-1] if k == "clip_acted" else v for k, v in bwd.items() if k != "DH"}
    return {**{f"fwd.{k}": v for k, v in fwd.items()}, **{f"bwd.{k}": v for k, v in bwd.items()}}


def _assert_same_bits(got, ref, what):
    assert got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{what}: {k}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bits_do_not_depend_on_the_threads(cell, dtype):
    rnn, params, xs = _problem(cell, dtype)
    one = _run(rnn, params, xs, _opts(1))
    assert cb.threads_for(rnn.steps, 7, rnn.hidden, rnn.gates, dtype, _opts(3)) == 3  # the team runs
    for opts, what in ((_opts(2), "2 threads"), (_opts(3), "3 threads"), (_opts(2, solo_after=5), "solo mid-call")):
        _assert_same_bits(_run(rnn, params, xs, opts), one, what)


@pytest.mark.parametrize("batch", [1, 2, 13])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gate_rows_and_gram_on_the_team_keep_the_bits(cell, batch):
    """A step's element-wise gate work runs on the team by rows of the batch where each thread gets
    two at least (B = 13 on 2 and 3 threads: shares of 6/7 and 4/4/5; B = 2 and 1: thread 0 alone),
    the Gram matrices of the step norms by rows of their lower triangle (B = 2 on 3 threads: one
    thread with nothing to do): the one thread's bits every time."""
    rnn = gb.Recurrent(cell=cell, steps=12, input_dim=3, sigma_b=0.2, hidden=24)
    params, xs, _ = problem(rnn, batch)
    one = _run(rnn, params, xs, _opts(1))
    for n in (2, 3):
        _assert_same_bits(_run(rnn, params, xs, _opts(n)), one, f"{n} threads, batch {batch}")


@pytest.mark.parametrize("batch", [1, 2, 13])
@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
def test_vanilla_rows_on_the_team_keep_the_bits(activation, batch):
    """The vanilla cell's step rows on the team (phi, phi', the saturated count; the backward's
    dz and each row's max|dz|): tanh (the 8-lane gates.h code, a row's tail of 24 = 3 x 8: none;
    N = 21 below: a tail of 5), ReLU (the rescaled forward) and GELU (phi per element), B = 13 on
    2 and 3 threads (shares of 6/7 and 4/4/5), B = 2 and 1 (thread 0 alone): the one thread's bits."""
    for hidden in (24, 21):
        rnn = gb.Recurrent(cell="rnn", steps=12, input_dim=3, sigma_b=0.2, hidden=hidden, activation=activation)
        params, xs, _ = problem(rnn, batch)
        one = _run(rnn, params, xs, _opts(1))
        for n in (2, 3):
            _assert_same_bits(_run(rnn, params, xs, _opts(n)), one, f"{n} threads, N {hidden}, batch {batch}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_vanilla_rows_rescued_and_non_finite_keep_the_bits(dtype):
    """A saturated tanh cell (sigma_w = 3000: every step's dz below the rescue's bound, taken in log
    form on thread 0 after the team's rows) and a batch row gone NaN mid-sequence (each row's
    max|dz| ignores it, as the whole array's did): the one thread's bits on 2 and 3 threads."""
    rnn = gb.Recurrent(cell="rnn", steps=12, input_dim=3, hidden=24, sigma_w=3000.0, dtype=dtype)
    params, xs, _ = problem(rnn, 13)
    one = _run(rnn, params, xs, _opts(1))
    assert one["bwd.sig_e"][0] < one["bwd.sig_e"][-1] - 200  # rescued: far below the dtype's range
    for n in (2, 3):
        _assert_same_bits(_run(rnn, params, xs, _opts(n)), one, f"{n} threads, rescued")
    xs = xs.copy()
    xs[4, 5, :] = np.nan
    one = _run(rnn, params, xs, _opts(1))
    assert np.isnan(one["fwd.H"][-1, 5]).all() and np.isfinite(one["fwd.H"][-1, 4]).all()
    for n in (2, 3):
        _assert_same_bits(_run(rnn, params, xs, _opts(n)), one, f"{n} threads, a NaN row")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bits_under_a_clip(cell):
    """A signal clip and its record on the team (tanh cells): the one thread's bits."""
    rnn, params, xs = _problem(cell, "float64", clip="norm", clip_threshold=0.05, activation=None)
    one = _run(rnn, params, xs, _opts(1))
    assert one["bwd.clip_acted"].any()  # the clip acted somewhere: its record is compared
    _assert_same_bits(_run(rnn, params, xs, _opts(3)), one, "3 threads, clipped")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_team_agrees_with_the_reference(cell, dtype):
    rnn, params, xs = _problem(cell, dtype)
    fwd, rb = run_cell(rbackends.get_backend("numpy"), rnn, params, xs)
    gfwd, gbk = run_cell(_With(_opts(3)), rnn, params, xs)
    rt = 1e-12 if dtype == "float64" else 1e-4
    scale = np.max(np.abs(fwd["H"]))
    np.testing.assert_allclose(gfwd["H"], fwd["H"], rtol=0, atol=rt * scale)
    assert_true_values("c", "signal norm", gbk["sig_m"], gbk["sig_e"], rb["sig_m"], rb["sig_e"], rt)
    assert_true_values("c", "step norms", gbk["gnorm_m"], gbk["gnorm_e"], rb["gnorm_m"], rb["gnorm_e"], rt)
    for name, k in (("dW_ih", rabi.DE_W_IH), ("dW_hh", rabi.DE_W_HH), ("db_hh", rabi.DE_B_HH)):
        assert_true_values("c", name, gbk[name][None], gbk["dexp"][k:k + 1], rb[name][None], rb["dexp"][k:k + 1], rt)


def test_public_api_bits_do_not_depend_on_the_threads(monkeypatch):
    """gb.backprop on the C backend with the library's options at 1 and 3 threads (a width
    where the team runs by default): the same results, bit for bit."""
    rnn = gb.Recurrent(cell="gru", steps=12, hidden=130, input_dim=5)
    params, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, 16, 1)
    results = []
    for n in (1, 3):
        _library_opts(monkeypatch, n)
        results.append(gb.backprop(rnn, params, xs, backend="c"))
    a, b = results
    for name, g in a.grads.items():
        np.testing.assert_array_equal(getattr(b.grads, name).mantissa, g.mantissa, err_msg=name)
        np.testing.assert_array_equal(getattr(b.grads, name).exponent, g.exponent, err_msg=name)
    np.testing.assert_array_equal(b.signal_norm.mantissa, a.signal_norm.mantissa)


def _library_opts(monkeypatch, nthreads):
    """The C backend's options with nthreads own threads whatever the size, no BLAS."""
    opts = make_opts(nthreads=nthreads, par_min_work=0, par_min_total=0)
    opts.blas_min_width = opts.blas_min_width_f32 = NO_BLAS
    monkeypatch.setattr(cb, "_OPTS", opts)


def _same_result(a, b, what):
    for name in ("signal_norm", "grad_norm", "act_mean", "act_std"):
        x, y = getattr(a, name), getattr(b, name)
        np.testing.assert_array_equal(x.exponent, y.exponent, err_msg=f"{what}: {name}")
        assert x.mantissa.tobytes() == y.mantissa.tobytes(), f"{what}: {name}"


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_checkpointed_and_stats_only_runs_on_the_team_are_the_plain_run(cell, monkeypatch):
    """A checkpointed run and a stats-only run on 3 threads (the every-step loss's rows where
    there is a head): bitwise the plain run on one."""
    fields = dict(cell=cell, steps=61, hidden=40, input_dim=3, loss="mse", loss_on="every", output_dim=2)
    if cell == "rnn":
        fields.update(loss="sum_squares", loss_on="last")
    rnn = gb.Recurrent(**fields)
    params, xs, t = problem(rnn, 9)
    _library_opts(monkeypatch, 1)
    plain = gb.backprop(rnn, params, xs, t, backend="c", checkpoint=None)
    _library_opts(monkeypatch, 3)
    ck = gb.backprop(rnn, params, xs, t, backend="c", checkpoint=29)
    assert ck.extras["segments"] > 1
    _same_result(ck, plain, "checkpointed")
    for name, g in plain.grads.items():
        c = getattr(ck.grads, name)
        assert c.mantissa.tobytes() == g.mantissa.tobytes() and c.exponent == g.exponent, name
    _same_result(gb.backprop(rnn, params, xs, t, backend="c", stats_only=True), plain, "stats_only")


# ------------------------------------------------------------------ the rules
def test_blas_only_where_it_runs_one_thread():
    """BLAS only where the OpenBLAS called runs one thread (the stacks' rule), and there from
    the widths where it beat the own products on one thread."""
    for f32 in (False, True):
        assert cb.default_blas_min_width(f32, blas_threads=1) == cb.ONE_THREAD_BLAS_FROM[f32]
        for threads in (2, 4):
            assert cb.default_blas_min_width(f32, blas_threads=threads) == NO_BLAS
        # the default: the threads of the OpenBLAS this process calls (one under taskset -c 1)
        one = blas.gemm_threads() == 1
        assert cb.default_blas_min_width(f32) == (cb.ONE_THREAD_BLAS_FROM[f32] if one else NO_BLAS)
    assert cb.ONE_THREAD_BLAS_FROM == {False: NO_BLAS, True: 256}


def test_threads_rule():
    opts = make_opts(nthreads=2, blas=False, par_min_work=1 << 20, par_min_total=1 << 23)
    # B N GN of a step against par_min_work: LSTM N = 64, B = 64 is 2^20
    assert cb.threads_for(1000, 64, 64, 4, opts=opts) == 2
    assert cb.threads_for(1000, 63, 64, 4, opts=opts) == 1
    # T B N GN of the call against par_min_total
    assert cb.threads_for(8, 64, 64, 4, opts=opts) == 2
    assert cb.threads_for(7, 64, 64, 4, opts=opts) == 1
    # one thread asked for; BLAS for the products (from its width): one thread, BLAS's
    assert cb.threads_for(1000, 64, 64, 4, opts=make_opts(nthreads=1, blas=False, par_min_work=0)) == 1
    with_blas = make_opts(nthreads=2, blas_min_width=64, par_min_work=0, par_min_total=0)
    if with_blas.dgemm != cb.ffi.NULL:
        assert cb.threads_for(1000, 64, 64, 4, opts=with_blas) == 1
        assert cb.threads_for(1000, 64, 63, 4, opts=with_blas) == 2
    # at most the drivers' cap
    assert cb.threads_for(1000, 64, 64, 4, opts=make_opts(nthreads=200, blas=False, par_min_work=0)) == 64
