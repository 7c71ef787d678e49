"""The recurrent contract: one table per cell function (gradbench.recurrent.abi), the same
validation in every backend, and a C struct (gb_recurrent_arrays) with the same fields and codes."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi
from gradbench.recurrent import abi as rabi
from gradbench.recurrent import backends as rbackends
from tests.helpers import wrong_arrays

BACKENDS = rbackends.backends()


def _arrays(function: str, T=3, B=2, N=4, D=3, dtype="float64") -> dict:
    cell = function.split("_")[0]
    rnn = gb.Recurrent(cell=cell, steps=T, hidden=N, input_dim=D, dtype=dtype)
    p = gb.init_params(rnn, 0)
    icfg, fcfg = rabi.kernel_config(rnn, False, B)
    dims = dict(T=T, B=B, N=N, D=D, GN=rnn.gates * N, S=1)
    a = abi.allocate(function, dims, dtype, fill=dict(sig_e=0, row_e=0, fexp=0, info=-1, dexp=rabi.EXP_EMPTY))
    for k, v in a.items():
        if v.dtype.kind == "f" and k not in ("icfg", "fcfg"):
            v[...] = np.random.default_rng(1).standard_normal(v.shape) * 0.5
    a.update(icfg=icfg, fcfg=fcfg, X=gb.sequence_input(rnn, B, 1))
    a.update({k: v for k, v in p.items() if k in a})
    return a


FUNCTIONS = list(rabi.TABLES)


def _wrong_inputs(function: str):
    return wrong_arrays(_arrays(function), abi.CONTRACTS[function].args)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_backend_rejects_every_bad_array_with_the_same_message(function):
    """Numba does no bounds checks: nothing reaches a kernel unchecked, and every backend says
    the same thing before its kernel runs (nothing written)."""
    if len(BACKENDS) < 2:
        pytest.skip("needs two backends to compare")
    cases = list(_wrong_inputs(function))
    for label, name, bad in cases:
        messages = {}
        for backend in BACKENDS:
            arrays = _arrays(function)
            before = {k: v.copy() for k, v in arrays.items()}
            arrays[name] = bad
            with pytest.raises((TypeError, ValueError)) as err:
                getattr(rbackends.get_backend(backend), function)(**arrays)
            messages[backend] = (type(err.value).__name__, str(err.value))
            for k, v in before.items():
                if k != name:
                    np.testing.assert_array_equal(arrays[k], v, err_msg=f"[{backend}] {label}: {k} was written")
        assert len(set(messages.values())) == 1, f"{label}: backends disagree: {messages}"
        text = next(iter(messages.values()))[1]
        # an array whose last axis defines a dimension (X: D, W_hh: N) makes its partners wrong
        defines = any(src == name for src, _ in abi.CONTRACTS[function].dims.values())
        assert text.startswith(f"{function}: ") and (name in text or (defines and "expected" in text)), f"{label}: {text}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_codes(backend):
    impl = rbackends.get_backend(backend)
    good = _arrays("gru_forward")
    a = abi.allocate("gru_forward", dict(T=3, B=2, N=4, D=3, GN=8), "float64", fill=dict(fexp=0, info=-1))  # 2 gates
    a.update(icfg=good["icfg"], fcfg=good["fcfg"], X=good["X"])
    with pytest.raises(ValueError, match=r"W_hh has 8 rows, expected 3 gates x N=4 = 12"):
        impl.gru_forward(**a)
    a = _arrays("rnn_forward")
    a["icfg"] = a["icfg"].copy()
    a["icfg"][rabi.RI_ACT] = abi.ACT_CODE["prelu"]
    with pytest.raises(ValueError, match="not an rnn activation code"):
        impl.rnn_forward(**a)
    a = _arrays("lstm_backward")
    a["icfg"] = a["icfg"].copy()
    a["icfg"][rabi.RI_LOSS_EVERY] = 1  # DH has 1 row, the every-step loss needs T
    with pytest.raises(ValueError, match=r"DH has 1 rows, expected 3"):
        impl.lstm_backward(**a)
    a["icfg"][rabi.RI_LOSS_EVERY] = 0
    a["icfg"][rabi.RI_CHUNK] = 0
    with pytest.raises(ValueError, match=r"RI_CHUNK"):
        impl.lstm_backward(**a)


def test_c_struct_declares_the_tables_and_the_codes():
    cb = pytest.importorskip("gradbench.recurrent.cbackend", reason="C extension not built")
    ffi, lib = cb.ffi, cb.lib
    fields = dict(ffi.typeof("gb_recurrent_arrays").fields)
    assert list(fields) == rabi.field_names(), "gb_recurrent_arrays differs from gradbench.recurrent.abi"
    want_c = {"T": "void", "f8": "double", "i8": "int64_t"}
    seen = {}
    for table in rabi.TABLES.values():
        for arg in table:
            seen.setdefault(arg.name, arg)
    for name, arg in seen.items():
        assert fields[name].type.kind == "pointer", name
        assert ffi.getctype(fields[name].type.item) == want_c[arg.kind], name
    for name in ("T", "B", "N", "D", "GN", "S"):
        assert ffi.getctype(fields[name].type) == "int64_t", name
    for c in ("RI_ACT", "RI_CLIP", "RI_RESCALE_FWD", "RI_LOSS_EVERY", "RI_CHUNK", "RI_SIZE", "RF_ACT_PARAM", "RF_CLIP",
              "RF_SAT", "RF_SAT_GATE", "RF_GATE_LOW", "RF_SIZE", "DE_W_IH", "DE_W_HH", "DE_B_IH", "DE_B_HH", "DE_SIZE",
              "EXP_EMPTY"):
        assert getattr(lib, f"GB_{c}") == getattr(rabi, c), c


def test_valid_arrays_pass_and_give_dims():
    for function in FUNCTIONS:
        for dtype in ("float64", "float32"):
            dims = abi.check(function, _arrays(function, T=5, B=3, N=2, D=7, dtype=dtype))
            assert {k: dims[k] for k in ("T", "B", "N", "D")} == dict(T=5, B=3, N=2, D=7)
