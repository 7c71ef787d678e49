"""The C backend of the recurrent cells: thin wrappers over ``gb_<cell>_<direction>_<f64|f32>``.

Each function takes exactly the arguments of :mod:`gradbench.recurrent.reference` (the tables of
:mod:`gradbench.recurrent.abi`), validates them with :func:`gradbench.abi.check`, fills one
``gb_recurrent_arrays`` struct of pointers (``ffi.from_buffer``, never copied) and makes one C
call (cffi releases the GIL). The matrix products run on the drivers' own kernels (the stacks'
register tiles, csrc/gemm_impl.h, over W_hh packed once per call), on a team of
``gradbench.cbackend.threads()`` threads from :data:`PAR_MIN_WORK` per step (csrc/recurrent_impl.h:
the results do not depend on the thread count); NumPy's BLAS (or SciPy's) only where the OpenBLAS
called runs one thread and was faster there (:func:`default_blas_min_width`), the stacks' rule.
"""
from __future__ import annotations

import numpy as np

from gradbench import abi, blas
from gradbench._env import env_int
from gradbench.cbackend import NO_BLAS, check, ffi, lib, make_opts, pointer, suffix  # noqa: F401  (ImportError without C)
from gradbench.recurrent.abi import TABLES

_FIELD_TYPE = {name: field.type for name, field in ffi.typeof("gb_recurrent_arrays").fields}
# The widths from which the cells give their products to BLAS where the OpenBLAS they call runs
# one thread (float64, float32; NO_BLAS: never). Measured on the 2-core Zen 4 VM, pinned to one
# core, one thread each, forward + backward (gb.backprop), minima of 3 processes, own / BLAS (s):
# float64 GRU N = 256, B = 32, T = 300 0.332 / 0.365; LSTM 512, B = 64, T = 100 1.146 / 1.192;
# RNN 512, B = 64, T = 300 0.763 / 0.850; LSTM 1024, B = 64, T = 20 0.85 / 0.86 (OpenBLAS's
# AVX-512 kernels). float32: GRU 256 0.268 / 0.255, LSTM 512 0.731 / 0.666, LSTM 1024 0.505 /
# 0.498: BLAS from 256.
ONE_THREAD_BLAS_FROM = {False: NO_BLAS, True: 256}


def default_blas_min_width(f32: bool = False, blas_threads: int | None = None) -> int:
    """The width from which the recurrent drivers of float32 (``f32``) or float64 call BLAS: from
    :data:`ONE_THREAD_BLAS_FROM` where the OpenBLAS they call runs one thread (``blas_threads``,
    default: as threadpoolctl reads it at import), else never (NO_BLAS); the stacks' rule
    (gradbench.cbackend.default_blas_min_width).

    One thread, because OpenBLAS splits each of a run's thousands of per-step products over its
    threads and waits for the slowest: on a shared machine one of them is often without a CPU. The
    own products' team notices such waits and finishes on one thread (csrc/team.c). Measured on
    the 2-core Zen 4 VM beside one busy loop, default threads, minima of 3 processes, BLAS on 2
    threads from 256 (before) / the own kernels then (one thread) / the team (s): GRU N = 256,
    B = 32, T = 300 0.80 / 0.41 / 0.35; LSTM 512, B = 64, T = 100 1.81 / 1.71 / 1.18; RNN 512,
    B = 64, T = 300 1.74 / 1.14 / 0.76. Quiet, BLAS on 2 threads / the team: 0.256 / 0.235,
    0.689 / 0.681, 0.513 / 0.483."""
    blas_threads = blas.gemm_threads() if blas_threads is None else blas_threads
    return ONE_THREAD_BLAS_FROM[bool(f32)] if blas_threads == 1 else NO_BLAS


BLAS_MIN_WIDTH = env_int("GRADBENCH_C_RECURRENT_BLAS_MIN_WIDTH", default_blas_min_width(False), low=0)
BLAS_MIN_WIDTH_F32 = env_int("GRADBENCH_C_RECURRENT_BLAS_MIN_WIDTH_F32", default_blas_min_width(True), low=0)
# B N GN of a step from which the own products run on several threads (csrc/recurrent_impl.h:
# the helpers take shares of each product, of each step's element-wise work and of the step
# norms' Gram matrices), and T B N GN of a call, as the stacks' PAR_MIN_TOTAL (a team's start and
# end). Re-measured 2026-12-05 (Zen 4 VM, 2 CPUs, quiet) once that element-wise work had moved to
# the team: gb.backprop on C, minima of 9 calls, three alternating processes each, ms, the
# thresholds then (2^18, 2^23) against a lower one. Steps of 2^16-2^17.6 gain from the team: GRU
# N = 64, B = 16 (2^17.6) 22.1-23.2 / 18.4-19.4; GRU 32, B = 32 (2^16.6) 36.0-37.4 / 28.2-29.1;
# GRU 32, B = 24 (2^16.2) 34.2-34.9 / 28.6-29.5; LSTM 64, B = 8 (2^17) 26.5-27.8 / 22.5-25.0;
# LSTM 64, B = 4 (2^16) 21.4-23.1 / 19.9-20.4; vanilla 128, B = 4 (2^16) 17.6-18.2 / 14.5-16.2;
# vanilla 64, B = 32 (2^17) 26.0-26.2 / 24.5-24.6. Steps of 2^13.6-2^15 do not: GRU 16, B = 16
# 11.6-11.9 / 12.4-13.3; LSTM 32, B = 8 16.3-16.9 / 17.2-17.5; vanilla 32, B = 32 17.4-17.9 /
# 17.0-17.6. Calls: at T B N GN of 2^21-2^23 the team gains (GRU 64, B = 16, T = 40 3.1-3.6 /
# 2.7-2.9; vanilla 128, B = 16, T = 10 1.07-1.10 / 0.92-0.97); at 2^20 it does not (0.77-0.78
# / 0.79-0.85 for GRU 64, B = 16, T = 6), and in some processes every call of vanilla 128, B = 4,
# T = 16 took 3.3-3.5 ms against 0.67 (a helper thread slow to wake on an idle VM CPU): 2^22
# keeps a factor of 4 from there. The element-wise rows go to the team only with two a thread.
PAR_MIN_WORK = env_int("GRADBENCH_C_RECURRENT_PAR_MIN_WORK", 1 << 16, low=0)
PAR_MIN_TOTAL = env_int("GRADBENCH_C_RECURRENT_PAR_MIN_TOTAL", 1 << 22, low=0)
_OPTS = make_opts(blas_min_width=BLAS_MIN_WIDTH, blas_min_width_f32=BLAS_MIN_WIDTH_F32, par_min_work=PAR_MIN_WORK,
                  par_min_total=PAR_MIN_TOTAL)


def threads_for(T: int, B: int, N: int, gates: int, dtype=np.float64, opts=None) -> int:
    """The threads a recurrent driver call of T steps, batch B, width N and ``gates`` gate blocks
    starts with under ``opts`` (default: the library's; csrc/recurrent_dispatch.c)."""
    f32 = np.dtype(dtype) == np.float32
    return int(lib.gb_recurrent_threads(opts if opts is not None else _OPTS, int(T), int(B), int(N), int(gates),
                                        int(f32)))


def _driver(function: str, opts, arrays: tuple) -> None:
    """Fill a gb_recurrent_arrays with the (checked) arrays of ``function`` and call its C driver."""
    table = TABLES[function]
    named = {arg.name: a for arg, a in zip(table, arrays)}
    st = ffi.new("gb_recurrent_arrays *")
    for arg, a in zip(table, arrays):
        setattr(st, arg.name, pointer(a, _FIELD_TYPE[arg.name]))
    X, W_hh = named["X"], named["W_hh"]
    st.T, st.B, st.D = X.shape
    st.GN, st.N = W_hh.shape
    st.S = named["DH"].shape[0] if "DH" in named else 0
    name = f"gb_{function}_{suffix(W_hh)}"
    check(getattr(lib, name)(st, opts), name)  # `arrays` keeps every buffer alive during the call


def _kernel(function: str):
    def kernel(*arrays):
        _driver(function, _OPTS, arrays)

    kernel.__name__ = f"{function}_kernel"
    return kernel


rnn_forward = abi.checked("rnn_forward", _kernel("rnn_forward"))
rnn_backward = abi.checked("rnn_backward", _kernel("rnn_backward"))
lstm_forward = abi.checked("lstm_forward", _kernel("lstm_forward"))
lstm_backward = abi.checked("lstm_backward", _kernel("lstm_backward"))
gru_forward = abi.checked("gru_forward", _kernel("gru_forward"))
gru_backward = abi.checked("gru_backward", _kernel("gru_backward"))


def call_with(function: str, opts, *args, **kwargs) -> None:
    """``function`` with explicit options from :func:`gradbench.cbackend.make_opts` (tests: no BLAS)."""
    arrays = abi.bind(function, args, kwargs)
    abi.check(function, arrays)
    _driver(function, opts, tuple(arrays.values()))
