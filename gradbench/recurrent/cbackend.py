"""The C backend of the recurrent cells: thin wrappers over ``gb_<cell>_<direction>_<f64|f32>``.

Each function takes exactly the arguments of :mod:`gradbench.recurrent.reference` (the tables of
:mod:`gradbench.recurrent.abi`), validates them with :func:`gradbench.abi.check`, fills one
``gb_recurrent_arrays`` struct of pointers (``ffi.from_buffer``, never copied) and makes one C
call (cffi releases the GIL). From width :data:`BLAS_MIN_WIDTH` on the matrix products go to
NumPy's BLAS (or SciPy's; :func:`gradbench.cbackend.make_opts`), below it to the kernels' own tiles.
"""

from __future__ import annotations

import numpy as np

from gradbench import abi, blas
from gradbench._env import env_int
from gradbench.cbackend import NO_BLAS, check, ffi, lib, make_opts, pointer, suffix  # noqa: F401  (ImportError without C)
from gradbench.recurrent.abi import TABLES

_FIELD_TYPE = {name: field.type for name, field in ffi.typeof("gb_recurrent_arrays").fields}
# The widths from which the cells give their products to BLAS where the OpenBLAS they call runs
# one thread (float64, float32; NO_BLAS: never): the own products on one thread against it
# (MEASURED).
ONE_THREAD_BLAS_FROM = {False: NO_BLAS, True: 512}


def default_blas_min_width(f32: bool = False, blas_threads: int | None = None) -> int:
    """The width from which the recurrent drivers of float32 (``f32``) or float64 call BLAS: from
    :data:`ONE_THREAD_BLAS_FROM` where the OpenBLAS they call runs one thread (``blas_threads``,
    default: as threadpoolctl reads it at import), else never (NO_BLAS); the stacks' rule
    (gradbench.cbackend.default_blas_min_width).

    One thread, because OpenBLAS splits each of a run's thousands of per-step products over its
    threads and waits for the slowest: on a shared machine one of them is often without a CPU
    (MEASURED). The own products' team notices such waits and finishes on one thread
    (csrc/team.c)."""
    blas_threads = blas.gemm_threads() if blas_threads is None else blas_threads
    return ONE_THREAD_BLAS_FROM[bool(f32)] if blas_threads == 1 else NO_BLAS


BLAS_MIN_WIDTH = env_int("GRADBENCH_C_RECURRENT_BLAS_MIN_WIDTH", default_blas_min_width(False), low=0)
BLAS_MIN_WIDTH_F32 = env_int("GRADBENCH_C_RECURRENT_BLAS_MIN_WIDTH_F32", default_blas_min_width(True), low=0)
# B N GN of a step from which the own products run on several threads (csrc/recurrent_impl.h:
# the helpers take shares of each product while thread 0 does the element-wise work between
# them), and T B N GN of a call (MEASURED)
PAR_MIN_WORK = env_int("GRADBENCH_C_RECURRENT_PAR_MIN_WORK", 1 << 20, low=0)
PAR_MIN_TOTAL = env_int("GRADBENCH_C_RECURRENT_PAR_MIN_TOTAL", 1 << 23, low=0)
_OPTS = make_opts(par_min_work=PAR_MIN_WORK, par_min_total=PAR_MIN_TOTAL)
_OPTS.blas_min_width, _OPTS.blas_min_width_f32 = BLAS_MIN_WIDTH, BLAS_MIN_WIDTH_F32


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
