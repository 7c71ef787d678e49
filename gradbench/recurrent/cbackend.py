"""The C backend of the recurrent cells: thin wrappers over ``gb_<cell>_<direction>_<f64|f32>``.

Each function takes exactly the arguments of :mod:`gradbench.recurrent.reference` (the tables of
:mod:`gradbench.recurrent.abi`), validates them with :func:`gradbench.abi.check`, fills one
``gb_recurrent_arrays`` struct of pointers (``ffi.from_buffer``, never copied) and makes one C
call (cffi releases the GIL). From width :data:`BLAS_MIN_WIDTH` on the matrix products go to
NumPy's BLAS (or SciPy's; :func:`gradbench.cbackend.make_opts`), below it to the kernels' own tiles.
"""

from __future__ import annotations

from gradbench import abi
from gradbench.cbackend import check, ffi, lib, make_opts, pointer, suffix  # noqa: F401  (ImportError without C)
from gradbench.recurrent.abi import TABLES

_FIELD_TYPE = {name: field.type for name, field in ffi.typeof("gb_recurrent_arrays").fields}
# Cells from this width on give their products to BLAS: the recurrent kernels' own register tiles
# (4 x 16 doubles, no cache blocking, W_hh^T packed once per call) win below it, BLAS above
# (measured, float64, one thread: the whole LSTM pass 1.3x faster with the own tiles at N = 128,
# B = 32; 1.45x faster with BLAS at N = 512, B = 64). The stack kernels' tiles are tuned apart
# (gradbench.cbackend.BLAS_MIN_WIDTH).
BLAS_MIN_WIDTH = 256
_OPTS = make_opts(blas_min_width=BLAS_MIN_WIDTH)


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
