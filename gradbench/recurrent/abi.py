"""The backend contract of the recurrent cells: one table of arrays per function, and the codes.

Every backend (the NumPy reference, the Numba kernels, the C kernels) implements six functions,
``rnn_forward``/``rnn_backward``, ``lstm_forward``/``lstm_backward`` and ``gru_forward``/
``gru_backward``, over the arrays listed below (in that order, which is also the order of the
positional arguments). They are registered in :data:`gradbench.abi.CONTRACTS` beside the
stack's, so :func:`gradbench.abi.check` validates them (one check for every backend) and
:func:`gradbench.abi.allocate` creates them; the C side declares ``gb_recurrent_arrays`` in
``csrc/gradbench.h`` with the same field names (``tests/test_recurrent_abi.py`` compares them).

Dimension letters: T steps (of the segment the call covers), B batch, N hidden units, D input
features, GN = G * N rows of the weights (G = 1, 4, 3 gates), S rows of ``DH`` (T when the
head reads every step, else 1 and unused). Dtype kinds: ``T`` the net's dtype, ``f8``, ``i8``.

Indexing: ``H[0]`` is h_{-1} (the initial state), ``H[t + 1]`` = h_t is written by step t;
``sig_m[j] * 2**sig_e[j]`` = ||dL/dH[j]|| for j = 0..T. The backward state carries one power of
two per row (sample): row i at ``2**(sig_e[j] + r_i)``, ``sig_e[j]`` the largest non-zero row's
(``row_e``: the rows' r on entry and exit). A sum over the batch (step t's parameter-gradient
terms) is taken at the largest exponent of the rows it adds (for dW_ih and dW_hh, of the rows
whose partner x_t or h_{t-1} is non-zero too; plus ``fexp[t]`` for dW_hh, whose term is dz_t^T
h_{t-1}; a vanilla row rescued in log form, every unit saturated beyond the dtype, carries its
power of two); the norm of its dW_hh term is ``gnorm_m[t] * 2**gnorm_e[t]``. For the sums
themselves (not the norm) a row far from 1 is first brought to [0.5, 1) by a power of two, added
to its exponent (``gradbench.reference.far_rows``; the GRU's rows for W_ih and for W_hh each on
their own), so that dz_t^T h_{t-1} does not underflow where its value is representable. ``clip_acted[j]``
(j < T) records whether the backward's signal clip changed the state at H[j] (the caller clips
the top, H[T], and keeps its own).
"""

from __future__ import annotations

from gradbench import abi
from gradbench.abi import INFO_SIZE, Arg, Contract, _arg, config_args, info_arg

# ------------------------------------------------------------------ codes shared with C
# Layout of icfg (int64) and fcfg (float64) of the recurrent drivers (GB_RI_* / GB_RF_* in C).
RI_ACT, RI_CLIP, RI_RESCALE_FWD, RI_LOSS_EVERY, RI_CHUNK, RI_SIZE = range(6)
RF_ACT_PARAM, RF_CLIP, RF_SAT, RF_SAT_GATE, RF_GATE_LOW, RF_SIZE = range(6)
# Steps per chunk of the parameter-gradient products of the Numba and C backwards (K B rows per
# product): fixed by the batch alone, so that segments of a multiple of it (the engine rounds
# checkpoint intervals up) chunk the steps exactly as the one-piece run does.
CHUNK_ROWS = 256


def chunk_steps(batch: int) -> int:
    """K = ceil(256 / B) steps per chunk."""
    return max(1, -(-CHUNK_ROWS // int(batch)))


# The exponents of the four gradient accumulators (GB_DE_* in C).
DE_W_IH, DE_W_HH, DE_B_IH, DE_B_HH, DE_SIZE = range(5)
# The exponent of an accumulator that holds nothing yet (GB_EXP_EMPTY): any term replaces it.
EXP_EMPTY = -(2**62)

CELL_FUNCTIONS = {cell: (f"{cell}_forward", f"{cell}_backward") for cell in ("rnn", "lstm", "gru")}
CONSTS = {"RI_SIZE": RI_SIZE, "RF_SIZE": RF_SIZE, "DE_SIZE": DE_SIZE, "INFO_SIZE": INFO_SIZE}

# ------------------------------------------------------------------ the tables
_ICFG, _FCFG = config_args("R")
_X = _arg("X", "T,B,D", "T", "r", "the inputs x_t")
_W_IH = _arg("W_ih", "GN,D", "T", "r", "input weights, gate blocks in torch's order")
_W_HH = _arg("W_hh", "GN,N", "T", "r", "recurrent weights")
_B_IH = _arg("b_ih", "GN", "T", "r", "input bias")
_B_HH = _arg("b_hh", "GN", "T", "r", "recurrent bias")
_H_FWD = _arg("H", "T+1,B,N", "T", "rw", "H[0] = h_{-1} read (mantissa); h_t written to H[t+1]")
_H_BWD = _arg("H", "T+1,B,N", "T", "r", "the forward's H")
_Z_FWD = _arg("Z", "T,B,GN", "T", "w", "gate pre-activations (lstm i,f,g,o; gru r, z and z_n = u_n + r hn)")
_Z_BWD = _arg("Z", "T,B,GN", "T", "r", "the forward's Z")
_STATS = (
    _arg("act_mean", "T", "f8", "w", "mean of h_t (true value times 2**fexp[t+1])"),
    _arg("act_std", "T", "f8", "w", "standard deviation of h_t (likewise)"),
    _arg("saturation", "T", "f8", "w", "fraction of activation entries with |phi'| < 1% of its largest value"),
    _arg("gate_mean", "T", "f8", "w", "mean forget gate f (lstm), update gate z (gru); NaN (rnn)"),
    _arg("gate_low", "T", "f8", "w", "fraction of those gates below fcfg[RF_GATE_LOW]; NaN (rnn)"),
)
_INFO = info_arg("step")
_DH = _arg("DH", "S,B,N", "T", "r", "the head's direct dL/dH[j] for j = 0..T-1 (every-step loss; else unused)")
_G = _arg("G", "B,N", "T", "rw", "dL/dH[T] on entry, dL/dH[0] on exit: one power of two per row (row_e)")
_ROW_E = _arg("row_e", "B", "i8", "rw", "row i of G (and of the lstm's GC) is G[i] * 2**(sig_e[T] + row_e[i]) on "
              "entry and G[i] * 2**(sig_e[0] + row_e[i]) on exit; on exit each row is normalised (max over G[i] "
              "and GC[i] in [0.5, 1), or all 0 with row_e[i] = 0) and max(row_e) = 0")
_GRADS = (
    _arg("dW_ih", "GN,D", "T", "rw", "accumulated dL/dW_ih mantissa (exponent dexp[DE_W_IH])"),
    _arg("dW_hh", "GN,N", "T", "rw", "accumulated dL/dW_hh mantissa (exponent dexp[DE_W_HH])"),
    _arg("db_ih", "GN", "T", "rw", "accumulated dL/db_ih mantissa (exponent dexp[DE_B_IH])"),
    _arg("db_hh", "GN", "T", "rw", "accumulated dL/db_hh mantissa (exponent dexp[DE_B_HH])"),
    _arg("dexp", "DE_SIZE", "i8", "rw", "the accumulators' exponents (EXP_EMPTY: nothing yet)"),
)
_SIG = (
    _arg("sig_m", "T+1", "f8", "w", "||dL/dH[j]|| = sig_m[j] * 2**sig_e[j]"),
    _arg("sig_e", "T+1", "i8", "rw", "signal exponents; sig_e[T] read"),
)
_GNORM = (
    _arg("gnorm_m", "T", "f8", "w", "||dz_t^T h_{t-1}|| = gnorm_m[t] * 2**gnorm_e[t]"),
    _arg("gnorm_e", "T", "i8", "w", "the W_hh term's exponent (its rows' largest, plus fexp[t]) plus the norm's own"),
)
_CLIP_ACTED = _arg("clip_acted", "T+1", "i8", "w", "1 where signal clipping changed the backward state at H[j] (its own "
                   "test: some |entry| > c, or its norm > c, of dL/dH[j] and the lstm's carried part of dL/dC[j], "
                   "clipped together), else 0; written for j < T, clip_acted[T] (the top, clipped by the caller) "
                   "left as it is")

RNN_FORWARD: tuple[Arg, ...] = (
    _ICFG, _FCFG, _X, _W_IH, _W_HH, _B_IH, _B_HH, _H_FWD,
    _arg("Z", "T,B,GN", "T", "w", "z_t, the pre-activation (times 2**-max(0, fexp[t]) under forward rescaling)"),
    _arg("fexp", "T+1", "i8", "rw", "forward exponents: h_t = H[t+1] * 2**fexp[t+1]; fexp[0] read"),
    *_STATS, _INFO,
)
RNN_BACKWARD: tuple[Arg, ...] = (
    _ICFG, _FCFG, _X, _W_HH, _H_BWD, _arg("Z", "T,B,GN", "T", "r", "the forward's Z"),
    _arg("fexp", "T+1", "i8", "r", "the forward's exponents"),
    _DH, _G, _ROW_E, *_GRADS, *_SIG, *_GNORM, _CLIP_ACTED, _INFO,
)
LSTM_FORWARD: tuple[Arg, ...] = (
    _ICFG, _FCFG, _X, _W_IH, _W_HH, _B_IH, _B_HH, _H_FWD,
    _arg("C", "T+1,B,N", "T", "rw", "C[0] = c_{-1} read; c_t written to C[t+1]"),
    _Z_FWD, *_STATS, _INFO,
)
LSTM_BACKWARD: tuple[Arg, ...] = (
    _ICFG, _FCFG, _X, _W_HH, _H_BWD,
    _arg("C", "T+1,B,N", "T", "r", "the forward's C"),
    _Z_BWD, _DH, _G,
    _arg("GC", "B,N", "T", "rw", "the part of dL/dc_{T-1} carried back through c_T on entry (row i at G[i]'s exponent, "
         "sig_e + row_e[i]), dL/dc_{-1} on exit"),
    _ROW_E, *_GRADS, *_SIG,
    _arg("csig_m", "T+1", "f8", "w", "||dL/dC[j]|| = csig_m[j] * 2**sig_e[j], the total (through H[j] and C[j+1])"),
    *_GNORM, _CLIP_ACTED, _INFO,
)
GRU_FORWARD: tuple[Arg, ...] = (
    _ICFG, _FCFG, _X, _W_IH, _W_HH, _B_IH, _B_HH, _H_FWD, _Z_FWD,
    _arg("HN", "T,B,N", "T", "w", "h_{t-1} W_hn^T + b_hn (what r multiplies)"),
    *_STATS, _INFO,
)
GRU_BACKWARD: tuple[Arg, ...] = (
    _ICFG, _FCFG, _X, _W_HH, _H_BWD, _Z_BWD,
    _arg("HN", "T,B,N", "T", "r", "the forward's HN"),
    _DH, _G, _ROW_E, *_GRADS, *_SIG, *_GNORM, _CLIP_ACTED, _INFO,
)

TABLES = {
    "rnn_forward": RNN_FORWARD, "rnn_backward": RNN_BACKWARD,
    "lstm_forward": LSTM_FORWARD, "lstm_backward": LSTM_BACKWARD,
    "gru_forward": GRU_FORWARD, "gru_backward": GRU_BACKWARD,
}
_GATE_COUNT = {"rnn": 1, "lstm": 4, "gru": 3}


def _check_config(function: str, arrays, dims) -> None:
    from gradbench.recurrent.spec import RNN_ACTIVATIONS
    from gradbench.spec import ACTIVATIONS

    cell = function.split("_")[0]
    G, N, GN = _GATE_COUNT[cell], dims["N"], dims["GN"]
    if GN != G * N:
        raise ValueError(f"{function}: W_hh has {GN} rows, expected {G} gates x N={N} = {G * N}")
    icfg = arrays["icfg"]
    act, clip, every = int(icfg[RI_ACT]), int(icfg[RI_CLIP]), int(icfg[RI_LOSS_EVERY])
    if cell == "rnn" and not (0 <= act < len(ACTIVATIONS) and ACTIVATIONS[act] in RNN_ACTIVATIONS):
        raise ValueError(f"{function}: icfg[RI_ACT]={act} is not an rnn activation code")
    abi.check_clip_code(function, "RI_CLIP", clip)
    if int(icfg[RI_CHUNK]) < 1:
        raise ValueError(f"{function}: icfg[RI_CHUNK]={int(icfg[RI_CHUNK])} must be >= 1 (steps per chunk)")
    if int(icfg[RI_RESCALE_FWD]) not in (0, 1) or (cell != "rnn" and int(icfg[RI_RESCALE_FWD])):
        raise ValueError(f"{function}: icfg[RI_RESCALE_FWD]={int(icfg[RI_RESCALE_FWD])} must be 0 or 1 (1: rnn only)")
    if "S" in dims:
        want = dims["T"] if every else 1
        if every not in (0, 1) or dims["S"] != want:
            raise ValueError(f"{function}: DH has {dims['S']} rows, expected {want} "
                             f"(icfg[RI_LOSS_EVERY]={every}: T rows for an every-step loss, else 1)")


def _register(function: str, args: tuple[Arg, ...]) -> Contract:
    dims = {"T": ("X", 0), "B": ("X", 1), "D": ("X", 2), "GN": ("W_hh", 0), "N": ("W_hh", 1)}
    if any(a.name == "DH" for a in args):
        dims["S"] = ("DH", 0)
    return abi.register(Contract(function, args, dims, CONSTS, _check_config, dtype_from="W_hh"))


for _name, _table in TABLES.items():
    _register(_name, _table)


def field_names() -> list[str]:
    """The fields of ``gb_recurrent_arrays``: every array of the six tables, in order of first
    appearance, then the dimensions."""
    out: list[str] = []
    for table in TABLES.values():
        for a in table:
            if a.name not in out:
                out.append(a.name)
    return out + ["T", "B", "N", "D", "GN", "S"]


# ------------------------------------------------------------------ the net as codes
def kernel_config(rnn, rescale_forward: bool, batch: int = 1):
    """Integer and float configuration arrays of the recurrent drivers.

    ``icfg``: activation code (rnn), signal clip mode, forward rescaling (0/1), every-step loss
    (0/1), steps per chunk of the gradient products (:func:`chunk_steps` of ``batch``).
    ``fcfg``: activation parameter, clip threshold, saturation threshold of the rnn
    activation (0.01 max phi'; for lstm/gru that of tanh, 0.01), of the sigmoid gates
    (0.0025), and the "low gate" threshold 0.1 of ``gate_low``.
    """
    import numpy as np

    from gradbench.abi import ACT_CODE, saturation_threshold, signal_clip

    icfg = np.zeros(RI_SIZE, dtype=np.int64)
    icfg[RI_ACT] = ACT_CODE[rnn.act]
    icfg[RI_CLIP] = signal_clip(rnn)
    icfg[RI_RESCALE_FWD] = int(bool(rescale_forward))
    icfg[RI_LOSS_EVERY] = int(rnn.has_head and rnn.loss_on == "every")
    icfg[RI_CHUNK] = chunk_steps(batch)
    fcfg = np.zeros(RF_SIZE, dtype=np.float64)
    fcfg[RF_ACT_PARAM] = rnn.act_param
    fcfg[RF_CLIP] = rnn.clip_threshold
    fcfg[RF_SAT] = saturation_threshold(rnn.act, rnn.act_param, rnn.np_dtype)
    fcfg[RF_SAT_GATE] = saturation_threshold("sigmoid", 0.0, rnn.np_dtype)
    fcfg[RF_GATE_LOW] = 0.1
    return icfg, fcfg
