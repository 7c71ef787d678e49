"""The per-step norm of dW_hh's term, ||dz^T h_{t-1}||_F, with an inf in the state: inf or NaN as
the reference says, every backend, from the B x B Gram matrices or from the product directly.

The reference forms dz^T h_{t-1} in float64 (unscaled when a side is not finite): the norm is inf,
or NaN where an entry of the product is (inf * 0, inf - inf). Two ways to get it wrong, both seen:
the Gram sum sum((dz dz^T) o (h h^T)) meets infs of both signs in its cross terms where dz^T h
has none (NaN for inf: one inf in h_{t-1} was enough), and a float32 product's finite terms
overflow (+inf - inf for an entry whose float64 sum is finite: NaN for inf). The backward is
called directly on the reference's forward, with the state edited at the step under test:

* ``inf``, ``-inf``, ``nan``: one entry of h_{t-1} at the top step and at a middle one;
* ``overflow``: at the top step, one entry of the product whose positive terms dz[b, i] h[b, j]
  overflow float32 (not float64) before its last term, -inf (a vanilla cell with phi = identity:
  dz = the entry state, chosen; an LSTM: c_{t-1} and h_{t-1} at 1e30; a GRU: h_{t-1} at 1e30,
  which is in dz too).

The batch picks the path: the Gram matrices where B (GN + N) < 2 GN N (B = 4), else the product
(B = 64), in both backends.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi
from gradbench.recurrent import abi as rabi
from gradbench.recurrent import backends as rbackends
from tests.helpers import TOL, assert_true_values, recurrent_reference_forward

STEPS, HIDDEN, D = 9, 5, 3
BATCH = {"gram": 4, "direct": 64}
SCENARIOS = ("inf", "-inf", "nan", "overflow")
TOP = STEPS - 1  # the step whose dz is the entry state's (rnn) or is set from it
MIDDLE = 4


def _net(cell, dtype):
    fields = dict(activation="identity", recurrent_init="normal", sigma_w=0.5) if cell == "rnn" else {}
    return gb.Recurrent(steps=STEPS, hidden=HIDDEN, input_dim=D, dtype=dtype, cell=cell, **fields)


def _problem(rnn, B, scenario):
    """The reference's forward on a batch of B, then the state edited: (backward name, arrays)."""
    p = gb.init_params(rnn, 3)
    bwd, dims, arrays = recurrent_reference_forward(rnn, p, np.array(gb.sequence_input(rnn, B, 4)))
    N, dt = HIDDEN, rnn.np_dtype
    rng = np.random.default_rng(11)
    G = rng.standard_normal((B, N))
    G = np.ldexp(G, -np.frexp(np.max(np.abs(G), axis=1))[1][:, None])  # rows' maxima in [0.5, 1)
    GC = (0.5 * rng.standard_normal((B, N))).clip(-0.99, 0.99) if rnn.cell == "lstm" else None
    H = arrays["H"]  # H[t] = h_{t-1}, read by step t's norm
    if scenario in ("inf", "-inf", "nan"):
        for t in (TOP, MIDDLE):
            H[t][1, 2] = float(scenario)
    else:  # one entry of dz^T h_{t-1}: terms dz[b, 0 or N] h[b, 0] > 0 whose float32 sum overflows, then -inf
        alt = (-1.0) ** np.arange(B)  # +1, -1, +1, ...
        if rnn.cell == "rnn":  # dz_top = G: terms 2.7e38 (float32: two overflow)
            G[:, 0] = 0.9 * alt
            H[TOP][:, 0] = alt * 3e38
            H[TOP][B - 1, 0] = -alt[B - 1] * np.inf
        elif rnn.cell == "lstm":  # the forget gate's dz = dc c_{t-1} sigma': 1.8e29 (dc's sign is GC's)
            G[:, 0] = 0.01
            GC[:, 0] = 0.9
            arrays["C"][TOP][:, 0] = 1e30
            H[TOP][:, 0] = 1e30  # terms 1.8e59
            H[TOP][B - 1, 0] = -np.inf
        else:  # the update gate's dz = g (h_{t-1} - n) sigma': 1e29 with h_{t-1} at 1e30, -inf with g < 0 at inf
            G[:, 0] = 0.9
            G[B - 1, 0] = -0.9
            H[TOP][:, 0] = 1e30
            H[TOP][B - 1, 0] = np.inf
    T, GN = STEPS, dims["GN"]
    arrays.update(DH=np.zeros((dims["S"], B, N), dt), G=G.astype(dt),
                  row_e=np.zeros(B, dtype=np.int64), dW_ih=np.zeros((GN, D), dt), dW_hh=np.zeros((GN, N), dt),
                  db_ih=np.zeros(GN, dt), db_hh=np.zeros(GN, dt),
                  dexp=np.full(rabi.DE_SIZE, rabi.EXP_EMPTY, dtype=np.int64), sig_m=np.empty(T + 1),
                  sig_e=np.zeros(T + 1, dtype=np.int64), gnorm_m=np.empty(T), gnorm_e=np.zeros(T, dtype=np.int64),
                  clip_acted=np.zeros(T + 1, dtype=np.int64), info=np.full(abi.INFO_SIZE, -1, dtype=np.int64))
    arrays["sig_e"][T] = 5
    if GC is not None:
        arrays.update(GC=GC.astype(dt), csig_m=np.full(T + 1, np.nan))
    return bwd, arrays


def _run(backend, bwd, arrays):
    out = {k: v.copy() for k, v in arrays.items()}
    with np.errstate(all="ignore"):
        getattr(rbackends.get_backend(backend), bwd)(**out)
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("path", list(BATCH))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("backend", [b for b in rbackends.backends() if b != "numpy"])
def test_step_norms_with_an_inf_in_the_state_are_the_references(backend, cell, dtype, path, scenario):
    rnn = _net(cell, dtype)
    B = BATCH[path]
    GN = rnn.gates * HIDDEN
    assert (B * (GN + HIDDEN) < 2 * GN * HIDDEN) == (path == "gram")  # the kernels' choice
    bwd, arrays = _problem(rnn, B, scenario)
    ref = _run("numpy", bwd, arrays)
    got = _run(backend, bwd, arrays)
    m = ref["gnorm_m"]
    # not vacuous: the edited step's norm is inf (NaN for a NaN), and the steps above are finite
    assert (np.isnan if scenario == "nan" else np.isinf)(m[TOP]), m
    assert np.all(np.isfinite(m[TOP + 1:]))
    label = f"{cell} {dtype} {path} {scenario} gnorm"
    assert_true_values(backend, label, got["gnorm_m"], got["gnorm_e"], m, ref["gnorm_e"], TOL[dtype]["stack"])
    np.testing.assert_array_equal(np.isnan(got["gnorm_m"]), np.isnan(m), err_msg=label)
    np.testing.assert_array_equal(np.isinf(got["gnorm_m"]), np.isinf(m), err_msg=label)
