"""One power of two per sample in the recurrent cells' backward pass (``row_e``), every backend.

The backward through time is row-separable except for its sums over the batch (the parameter
gradients, the norms) and a clip by norm: a call on a batch must give each row (sample) the
state dL/dh_{-1} (with the LSTM's dL/dc_{-1}) that row has alone, however far apart the rows
lie, and the batch's dW, db and per-step norms must be the rows' own added up. Rows enter
2^2000 apart (float32: 2^300), beyond any one exponent's reach; with one exponent per step for
the batch the lower rows were flushed to 0. The kernels are called directly (the forward by the
reference), against the same call on each row alone and against the reference on the batch.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi
from gradbench.recurrent import abi as rabi
from gradbench.recurrent import backends as rbackends
from tests.helpers import TOL, assert_true_values, recurrent_reference_forward

ROW_E = {"float64": [0, -2000, -1, -37], "float32": [0, -300, -1, -20]}
SIG_E_TOP = 5
CASES = {
    "rnn-tanh": dict(cell="rnn", sigma_w=1.5),
    "rnn-tanh-every": dict(cell="rnn", loss="mse", loss_on="every", output_dim=2),
    "rnn-tanh-value-clip": dict(cell="rnn", sigma_w=1.5, clip="value", clip_threshold=1e-3),
    "rnn-relu-rescaled": dict(cell="rnn", activation="relu", recurrent_init="identity", sigma_w=1.5),
    "rnn-identity": dict(cell="rnn", activation="identity", recurrent_init="normal", sigma_w=0.5),
    "lstm": dict(cell="lstm"),
    "lstm-every": dict(cell="lstm", loss="mse", loss_on="every", output_dim=2),
    "lstm-value-clip": dict(cell="lstm", clip="value", clip_threshold=1e-3),
    "gru": dict(cell="gru", sigma_b=0.3),
    "gru-every": dict(cell="gru", loss="mse", loss_on="every", output_dim=2),
}
NORM_CLIP = {  # the batch's norm couples the rows: against the reference only
    "rnn-tanh-norm-clip": dict(cell="rnn", clip="norm", clip_threshold=1e-3),
    "lstm-norm-clip": dict(cell="lstm", clip="norm", clip_threshold=1e-3),
    "gru-norm-clip": dict(cell="gru", clip="norm", clip_threshold=1e-3),
}
STEPS, HIDDEN, D, B = 23, 5, 3, 4


def _net(fields, dtype):
    return gb.Recurrent(steps=STEPS, hidden=HIDDEN, input_dim=D, dtype=dtype, **fields)


def _forward(rnn):
    """The reference's forward on a batch of B: (arrays of the backward table but G/row_e, icfg)."""
    p = gb.init_params(rnn, 3)
    xs = np.array(gb.sequence_input(rnn, B, 4))
    xs[5, [0, 2, 3]] = 0  # at step 5 only the lowest row has an input: dW_ih's sum is at its exponent, and the
    # rows above it (2^2000: 2^300) must add exactly 0, not inf * 0 = NaN (the reference scaled them up)
    bwd, dims, out = recurrent_reference_forward(rnn, p, xs)
    rng = np.random.default_rng(7)
    out["DH"] = rng.standard_normal((dims["S"], B, HIDDEN)).astype(rnn.dtype)
    return bwd, dims, out


def _entry(rnn, row_e):
    """The top state: each row normalised, rows at 2**(SIG_E_TOP + row_e[i])."""
    rng = np.random.default_rng(11)
    G = rng.standard_normal((B, HIDDEN))
    G = np.ldexp(G, -np.frexp(np.max(np.abs(G), axis=1))[1][:, None]).astype(rnn.dtype)
    GC = (0.5 * rng.standard_normal((B, HIDDEN))).clip(-0.99, 0.99).astype(rnn.dtype) if rnn.cell == "lstm" else None
    return G, GC, np.array(row_e, dtype=np.int64)


def _call(backend, bwd, dims, fwd, G, GC, row_e, rows=None):
    """One backward call of ``backend`` on the batch (or on ``rows`` of it); returns its outputs."""
    sl = slice(None) if rows is None else rows
    n = B if rows is None else len(range(*rows.indices(B)))
    T = dims["T"]
    arrays = dict(fwd)
    for k in ("H", "Z", "C", "HN", "DH"):
        if k in arrays:
            arrays[k] = np.ascontiguousarray(arrays[k][:, sl])
    arrays["X"] = np.ascontiguousarray(fwd["X"][:, sl])
    if rows is not None:  # the chunk of steps follows the batch: as the engine sets it
        arrays["icfg"] = fwd["icfg"].copy()
        arrays["icfg"][rabi.RI_CHUNK] = rabi.chunk_steps(n)
    GN, N = fwd["W_hh"].shape
    dt = G.dtype
    out = dict(G=G[sl].copy(), row_e=row_e[sl].copy(),  # written in place
               dW_ih=np.zeros((GN, D), dt), dW_hh=np.zeros((GN, N), dt), db_ih=np.zeros(GN, dt),
               db_hh=np.zeros(GN, dt), dexp=np.full(rabi.DE_SIZE, rabi.EXP_EMPTY, dtype=np.int64),
               sig_m=np.empty(T + 1), sig_e=np.zeros(T + 1, dtype=np.int64), gnorm_m=np.empty(T),
               gnorm_e=np.zeros(T, dtype=np.int64), clip_acted=np.zeros(T + 1, dtype=np.int64),
               info=np.full(abi.INFO_SIZE, -1, dtype=np.int64))
    out["sig_e"][T] = SIG_E_TOP
    if GC is not None:
        out["GC"] = GC[sl].copy()
        out["csig_m"] = np.full(T + 1, np.nan)
    getattr(rbackends.get_backend(backend), bwd)(**arrays, **out)
    return out


def _true(m, e):
    """Mantissas with one exponent per leading index as float64 at a common exponent (the
    largest): far smaller rows underflow to 0, as plain arithmetic at that exponent gives."""
    e = np.asarray(e, dtype=np.int64)
    top = int(e.max())
    shift = np.clip(e - top, -4000, 0).reshape(e.shape + (1,) * (m.ndim - e.ndim))
    return np.ldexp(np.asarray(m, dtype=np.float64), shift.astype(np.int32)), top


def _grad(out, name, k):
    e = out["dexp"][k]
    return out[name], (0 if e == rabi.EXP_EMPTY else int(e))


GRADS = (("dW_ih", rabi.DE_W_IH), ("dW_hh", rabi.DE_W_HH), ("db_ih", rabi.DE_B_IH), ("db_hh", rabi.DE_B_HH))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", rbackends.backends())
def test_each_row_has_the_chain_it_has_alone(backend, name, dtype):
    rnn = _net(CASES[name], dtype)
    bwd, dims, fwd = _forward(rnn)
    G, GC, row_e = _entry(rnn, ROW_E[dtype])
    got = _call(backend, bwd, dims, fwd, G, GC, row_e)
    rtol = TOL[dtype]["stack"]
    # the contract on exit: rows normalised, max(row_e) = 0
    state = got["G"] if GC is None else np.concatenate([got["G"], got["GC"]], axis=1)
    m = np.max(np.abs(state), axis=1)
    live = m > 0  # (a relu row may die: all 0, at row_e 0)
    assert np.all((m[live] >= 0.5) & (m[live] < 1)) and not np.any(got["row_e"][~live]), (m, got["row_e"])
    assert got["row_e"].max() == 0
    alone = [_call(backend, bwd, dims, fwd, G, GC, row_e, slice(i, i + 1)) for i in range(B)]
    e_batch = got["sig_e"][0] + got["row_e"]
    for i, a in enumerate(alone):
        e_alone = np.array([a["sig_e"][0] + a["row_e"][0]])
        assert_true_values(backend, f"{name} dL/dh_-1 row {i}", got["G"][i:i + 1], e_batch[i:i + 1], a["G"], e_alone,
                           rtol)
        if GC is not None:
            assert_true_values(backend, f"{name} dL/dc_-1 row {i}", got["GC"][i:i + 1], e_batch[i:i + 1], a["GC"],
                               e_alone, rtol)
    # the lowest row lies beyond the dtype's range below the top one: it was flushed before (an
    # every-step loss brings each row to its own loss's scale at every step)
    assert rnn.has_head or e_batch[1] < e_batch[0] - (1100 if dtype == "float64" else 160) and np.any(got["G"][1])
    # the sums over the batch are the rows' own sums: dW, db; and the norms' squares
    for g, k in GRADS:
        mb, eb = _grad(got, g, k)
        parts = [_grad(a, g, k) for a in alone]
        top = max(e for _, e in parts)
        total = sum(np.ldexp(m.astype(np.float64), max(e - top, -4000)) for m, e in parts)
        assert_true_values(backend, f"{name} {g}", mb[None], np.array([eb]), total[None], np.array([top]), rtol)
    for j in range(STEPS + 1):
        sq, top = _true(np.array([a["sig_m"][j] for a in alone]), np.array([a["sig_e"][j] for a in alone]))
        want = np.sqrt(np.sum(sq ** 2))
        assert_true_values(backend, f"{name} ||dL/dH[{j}]||", got["sig_m"][j:j + 1], got["sig_e"][j:j + 1],
                           np.array([want]), np.array([top]), rtol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES) + list(NORM_CLIP))
@pytest.mark.parametrize("backend", [b for b in rbackends.backends() if b != "numpy"])
def test_rows_far_apart_match_the_reference(backend, name, dtype):
    rnn = _net({**CASES, **NORM_CLIP}[name], dtype)
    bwd, dims, fwd = _forward(rnn)
    G, GC, row_e = _entry(rnn, ROW_E[dtype])
    got = _call(backend, bwd, dims, fwd, G, GC, row_e)
    ref = _call("numpy", bwd, dims, fwd, G, GC, row_e)
    rtol = TOL[dtype]["stack"]
    for k in ("G", "GC"):
        if k in ref:
            assert_true_values(backend, f"{name} {k}", got[k], got["sig_e"][0] + got["row_e"], ref[k],
                               ref["sig_e"][0] + ref["row_e"], rtol)
    for g, k in GRADS:
        mg, eg = _grad(got, g, k)
        mr, er = _grad(ref, g, k)
        assert_true_values(backend, f"{name} {g}", mg[None], np.array([eg]), mr[None], np.array([er]), rtol)
    assert_true_values(backend, f"{name} sig", got["sig_m"], got["sig_e"], ref["sig_m"], ref["sig_e"], rtol)
    assert_true_values(backend, f"{name} gnorm", got["gnorm_m"], got["gnorm_e"], ref["gnorm_m"], ref["gnorm_e"], rtol)
    if "csig_m" in ref:
        assert_true_values(backend, f"{name} csig", got["csig_m"], got["sig_e"], ref["csig_m"], ref["sig_e"], rtol)
    np.testing.assert_array_equal(got["clip_acted"], ref["clip_acted"])
