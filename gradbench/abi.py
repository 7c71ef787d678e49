"""The backend contract, written once: every array a stack kernel reads or writes, and the codes.

Every backend (the NumPy reference, the Numba kernels, the C kernels) implements the same two
functions, ``stack_forward`` and ``stack_backward``, over the arrays listed in :data:`FORWARD`
and :data:`BACKWARD` (in that order, which is also the order of the positional arguments).
Each entry names the array, its shape in dimension letters, its dtype kind and whether the
kernel reads it, writes it, or both; a :class:`Contract` adds where each dimension is read
from, and :data:`CONTRACTS` holds every registered one (recurrent cells register theirs the same
way). From this one table come

- :func:`check`, the one validation every backend wrapper calls before its kernel runs (type,
  dtype, shape, C-contiguity, writeability), with the same message whatever the backend;
- :func:`allocate`, the arrays the engine and the tests create;
- the C side's ``gb_stack_arrays`` struct in ``csrc/gradbench.h`` (a struct of pointers with
  the same field names; ``tests/test_abi.py`` compares it with this table, and the integer
  codes below with the header's ``GB_*`` constants).

Dimension letters: L layers (of the segment the call covers), B batch, N width. Dtype kinds:
``T`` the stack's dtype (float64 or float32), ``f8`` float64 whatever T (statistics, norms),
``i8`` int64 (exponents, codes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gradbench.spec import ACTIVATIONS, Stack

# ------------------------------------------------------------------ codes shared with C
# Activation codes: the position in gradbench.spec.ACTIVATIONS (GB_IDENTITY ... GB_GELU in C).
ACT_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}

# Signal clipping modes inside the backward kernels (GB_CLIP_* in C).
CLIP_NONE, CLIP_VALUE, CLIP_NORM = 0, 1, 2

# Layout of the configuration arrays icfg (int64) and fcfg (float64) (GB_I_* / GB_F_* in C).
I_ACT, I_BN, I_RESIDUAL, I_CLIP, I_RESCALE_FWD, I_SIZE = range(6)
F_ACT_PARAM, F_RES_SCALE, F_CLIP, F_BN_EPS, F_SAT, F_SIZE = range(6)

# Error codes of the C kernels (GB_OK, GB_EBADACT, GB_EBADARG, GB_ENOMEM in C).
OK, EBADACT, EBADARG, ENOMEM = 0, 1, 2, 3

# Exponent differences are clamped to +-EXP_CLAMP before ldexp (GB_EXP_CLAMP in C): beyond it
# every float is 0 or inf already, and NumPy's ldexp takes int32 exponents.
EXP_CLAMP = 4000

#: Batch norm sums the batch in blocks of BN_ROWS rows (GB_BN_ROWS in C;
#: :func:`gradbench.reference.batchnorm_mean`): the compiled kernels' threads share a batch in
#: whole blocks, each summing its own, so the bits do not depend on the thread count.
BN_ROWS = 4

# info[INFO_FORWARD] / info[INFO_BACKWARD]: first layer whose output / backpropagated signal is
# not finite (-1: none).
INFO_FORWARD, INFO_BACKWARD, INFO_SIZE = 0, 1, 2

FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Arg:
    """One array of the contract: ``shape`` in dimension letters, ``kind`` T/f8/i8, ``access``
    r (read), w (written) or rw."""

    name: str
    shape: tuple[str, ...]
    kind: str
    access: str
    doc: str


def _arg(name: str, shape: str, kind: str, access: str, doc: str) -> Arg:
    return Arg(name, tuple(shape.split(",")), kind, access, doc)


def config_args(prefix: str = "") -> tuple[Arg, Arg]:
    """The configuration arrays ``icfg`` ({prefix}I_SIZE int64) and ``fcfg`` ({prefix}F_SIZE
    float64) of a table: ``prefix`` "" for the stack, "R" for the recurrent cells."""
    return (_arg("icfg", f"{prefix}I_SIZE", "i8", "r", f"integer options ({prefix}I_* indices, kernel_config)"),
            _arg("fcfg", f"{prefix}F_SIZE", "f8", "r", f"float options ({prefix}F_* indices, kernel_config)"))


def info_arg(unit: str) -> Arg:
    """The ``info`` array of a table: the first non-finite ``unit`` (layer, step) of each pass."""
    return _arg("info", "INFO_SIZE", "i8", "rw",
                f"first non-finite {unit}: [forward (written by forward), backward (by backward)]")


_ICFG, _FCFG = config_args()
_W = _arg("W", "L,N,N", "T", "r", "weights W_l")
_GAMMA = _arg("gamma", "L,N", "T", "r", "batch-norm scale")
_BETA = _arg("beta", "L,N", "T", "r", "batch-norm shift")
_SLOPE = _arg("slope", "L", "T", "r", "PReLU slope per layer")
_INFO = info_arg("layer")

FORWARD: tuple[Arg, ...] = (
    _ICFG, _FCFG, _W,
    _arg("b", "L,N", "T", "r", "biases b_l"),
    _GAMMA, _BETA, _SLOPE,
    _arg("H", "L+1,B,N", "T", "rw", "h_0 read (mantissa); h_1..h_L written"),
    _arg("Z", "L,B,N", "T", "w", "pre-activation z_l (xhat_l under batch norm) for the backward"),
    _arg("bn_mean", "L,N", "T", "w", "batch-norm mean per unit"),
    _arg("bn_rstd", "L,N", "T", "w", "batch-norm 1/std per unit"),
    _arg("fexp", "L+1", "i8", "rw", "forward exponents: the layer's, its largest non-zero row's; fexp[0] read"),
    _arg("frow", "L+1,B", "i8", "rw", "row i of h_l is H[l, i] * 2**(fexp[l] + frow[l, i]); frow[0] read; "
                                      "written rows normalised (max|H[l, i]| in [0.5, 1)), max over non-zero "
                                      "rows 0, rows of zeros 0; without rescaling all 0"),
    _arg("act_mean", "L", "f8", "w", "mean of h_{l+1} (true value times 2**fexp[l+1])"),
    _arg("act_std", "L", "f8", "w", "standard deviation of H[l+1] (likewise)"),
    _arg("saturation", "L", "f8", "w", "fraction of z_l with |phi'(z)| < fcfg[F_SAT] (prelu: of slope[l])"),
    _arg("dead", "L", "f8", "w", "fraction of units with z <= 0 for the whole batch"),
    _INFO,
)

BACKWARD: tuple[Arg, ...] = (
    _ICFG, _FCFG, _W, _GAMMA, _BETA, _SLOPE,
    _arg("H", "L+1,B,N", "T", "r", "the forward's H"),
    _arg("Z", "L,B,N", "T", "r", "the forward's Z"),
    _arg("bn_rstd", "L,N", "T", "r", "the forward's bn_rstd"),
    _arg("fexp", "L+1", "i8", "r", "the forward's exponents"),
    _arg("frow", "L+1,B", "i8", "r", "the forward's row exponents"),
    _arg("G", "B,N", "T", "rw", "dL/dh_L on entry, dL/dh_0 on exit: one power of two per row (row_e)"),
    _arg("row_e", "B", "i8", "rw", "row i of G is G[i] * 2**(sig_e[L] + row_e[i]) on entry and "
                                   "G[i] * 2**(sig_e[0] + row_e[i]) on exit; on exit each row is normalised "
                                   "(max|G[i]| in [0.5, 1), or all 0 with row_e[i] = 0) and max(row_e) = 0"),
    _arg("dW", "L,N,N", "T", "w", "dL/dW_l mantissa (exponent dw_e[l] + fexp[l])"),
    _arg("db", "L,N", "T", "w", "dL/db_l mantissa (exponent dz_e[l])"),
    _arg("dgamma", "L,N", "T", "w", "dL/dgamma_l mantissa (exponent dz_e[l])"),
    _arg("dbeta", "L,N", "T", "w", "dL/dbeta_l mantissa (exponent dz_e[l])"),
    _arg("dslope", "L", "T", "w", "dL/dslope_l mantissa (exponent dw_e[l] + fexp[l])"),
    _arg("sig_m", "L+1", "f8", "w", "||dL/dh_l|| = sig_m[l] * 2**sig_e[l]"),
    _arg("sig_e", "L+1", "i8", "rw", "signal exponents; sig_e[L] read"),
    _arg("gnorm_m", "L", "f8", "w", "||dL/dW_l|| = gnorm_m[l] * 2**gnorm_e[l] (scaled: no square underflows)"),
    _arg("gnorm_e", "L", "i8", "w", "the exponent of ||dL/dW_l||"),
    _arg("dz_e", "L", "i8", "w", "exponent of dL/dz_l: the largest of its non-zero rows' (their signal's "
                                 "plus the saturated-derivative rescue's shift); db/dgamma/dbeta carry dz_e[l]"),
    _arg("dw_e", "L", "i8", "w", "dW/dslope carry dw_e[l] + fexp[l]: dw_e[l] the largest r_i + frow[l, i] "
                                 "over rows i where both dL/dz_l (row at r_i) and h_l are non-zero (none: "
                                 "dz_e[l])"),
    _arg("clip_acted", "L+1", "i8", "w", "1 where signal clipping changed dL/dh_l (its own test: some "
                                         "|entry| > c, or ||dL/dh_l|| > c), else 0; written for l < L, "
                                         "clip_acted[L] (the top, clipped by the caller) left as it is"),
    _INFO,
)


@dataclass(frozen=True)
class Contract:
    """One backend function: its arrays (in argument order), where each dimension letter is
    read from (array name, axis; every other array is checked against it), named constant
    dimensions, and an optional check of the configuration arrays' codes."""

    name: str
    args: tuple[Arg, ...]
    dims: Mapping[str, tuple[str, int]]
    consts: Mapping[str, int]
    check_config: Callable | None = None
    dtype_from: str = "W"  # the array whose dtype is T


CONTRACTS: dict[str, Contract] = {}
_STACK_CONSTS = {"I_SIZE": I_SIZE, "F_SIZE": F_SIZE, "INFO_SIZE": INFO_SIZE}
_KIND_DTYPE = {"f8": np.dtype(np.float64), "i8": np.dtype(np.int64)}


def register(contract: Contract) -> Contract:
    """Add a contract (the stack's two below; recurrent cells add theirs)."""
    CONTRACTS[contract.name] = contract
    _expected.cache_clear()
    _layout.cache_clear()
    _arg_names.cache_clear()
    return contract


def names(table: tuple[Arg, ...]) -> tuple[str, ...]:
    """The argument names of a table, in order."""
    return tuple(a.name for a in table)


@functools.lru_cache(maxsize=64)
def _arg_names(function: str) -> tuple[str, ...]:
    """:func:`names` of a registered function's table (keyed by its name: hashing the table's
    Args on every call cost more than building the names)."""
    return names(CONTRACTS[function].args)


def shape_of(arg: Arg, dims: Mapping[str, int], consts: Mapping[str, int] | None = None) -> tuple[int, ...]:
    """The concrete shape of ``arg`` for dimensions ``dims`` (``{"L": .., "B": .., "N": ..}``)."""
    consts = _STACK_CONSTS if consts is None else consts
    out = []
    for d in arg.shape:
        if d in consts:
            out.append(consts[d])
        elif d.endswith("+1"):
            out.append(dims[d[:-2]] + 1)
        else:
            out.append(dims[d])
    return tuple(out)


def dtype_of(arg: Arg, dtype) -> np.dtype:
    return np.dtype(dtype) if arg.kind == "T" else _KIND_DTYPE[arg.kind]


@functools.lru_cache(maxsize=256)
def _expected(function: str, dims: tuple, T: np.dtype) -> tuple:
    """(arg, dtype, shape, written) of every array of a call to ``function`` with dimensions
    ``dims`` and float dtype ``T``: what :func:`check` compares, worked out once per segment
    shape (an engine run calls the same few shapes once per segment)."""
    contract = CONTRACTS[function]
    d = dict(dims)
    return tuple((arg, dtype_of(arg, T), shape_of(arg, d, contract.consts), "w" in arg.access)
                 for arg in contract.args)


@functools.lru_cache(maxsize=256)
def _layout(function: str, dims: tuple, dtype: np.dtype, skip: tuple) -> tuple:
    """(name, shape, dtype) of the arrays :func:`allocate` makes (once per call shape)."""
    contract = CONTRACTS[function]
    d = dict(dims)
    return tuple((arg.name, shape_of(arg, d, contract.consts), dtype_of(arg, dtype))
                 for arg in contract.args if arg.name not in skip)


def _stack_contract(name: str, args: tuple[Arg, ...]) -> Contract:
    return register(Contract(name, args, {"L": ("W", 0), "N": ("W", 1), "B": ("H", 1)}, _STACK_CONSTS,
                             lambda f, a, d: _check_stack_config(f, a, d)))


_stack_contract("stack_forward", FORWARD)
_stack_contract("stack_backward", BACKWARD)


# ------------------------------------------------------------------ validation
def bind(function: str, args: tuple, kwargs: dict) -> dict[str, object]:
    """Arguments of a call to ``function`` (positional in table order, or by name) as a dict."""
    want = _arg_names(function)
    if not kwargs and len(args) == len(want):  # the engine's calls: every array, in order
        return dict(zip(want, args))
    if len(args) > len(want):
        raise TypeError(f"{function}() takes {len(want)} arrays ({', '.join(want)}), got {len(args)}")
    out = dict(zip(want, args))
    for k, v in kwargs.items():
        if k not in want:
            raise TypeError(f"{function}() got an unexpected array {k!r}; it takes {', '.join(want)}")
        if k in out:
            raise TypeError(f"{function}() got array {k!r} twice")
        out[k] = v
    missing = [k for k in want if k not in out]
    if missing:
        raise TypeError(f"{function}() is missing {', '.join(missing)}")
    return {k: out[k] for k in want}


def check(function: str, arrays: Mapping[str, object]) -> dict[str, int]:
    """Validate the arrays of a call to ``function`` before any kernel runs; return the dims.

    Every array must be a C-contiguous, aligned ``numpy.ndarray`` of its table dtype (T: float64
    or float32, the dtype of ``W``) and shape; written arrays must be writeable. Raises
    ``TypeError``/``ValueError`` naming the function, the array, the expected and the actual
    value; the configuration arrays are checked for valid codes too. A kernel behind this never
    reads or writes out of bounds.
    """
    contract = CONTRACTS[function]
    table = contract.args
    for arg in table:
        a = arrays[arg.name]
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{function}: {arg.name} must be a numpy.ndarray, got {type(a).__name__}")
    T = arrays[contract.dtype_from].dtype
    if T not in FLOAT_DTYPES:
        raise TypeError(f"{function}: {contract.dtype_from} has dtype {T}; supported dtypes are float64 and float32")
    dims = {}
    for d, (name, axis) in contract.dims.items():
        a = arrays[name]
        if a.ndim <= axis:
            raise ValueError(f"{function}: {name} has shape {a.shape}, expected "
                             f"({', '.join(_arg_of(table, name).shape)})")
        dims[d] = int(a.shape[axis])
    if min(dims.values()) < 1:
        raise ValueError(f"{function}: every dimension must be >= 1, got {_fmt_dims(dims)}")
    for arg, want_dt, want, writes in _expected(function, tuple(dims.items()), T):
        a = arrays[arg.name]
        flags = a.flags
        if (a.dtype != want_dt or a.shape != want or not flags.c_contiguous or not flags.aligned
                or (writes and not flags.writeable)):
            check_array(function, arg.name, a, (want_dt,), want, writes,  # raises, naming what is wrong
                        dtype_note=f" (the dtype of {contract.dtype_from})" if arg.kind == "T" else "",
                        shape_note=f" = ({', '.join(arg.shape)}) with {_fmt_dims(dims)}")
    if contract.check_config is not None:
        contract.check_config(function, arrays, dims)
    return dims


def check_array(function: str, name: str, a, dtypes: tuple, shape: tuple, writes: bool, *, dtype_note: str = "",
                shape_note: str = "") -> None:
    """Refuse ``a`` (argument ``name`` of ``function``) unless it is a C-contiguous, aligned
    ``numpy.ndarray`` of one of ``dtypes`` and of ``shape``, writeable when the kernel writes it
    (:func:`check`'s rule for each array of a contract, and of calls outside them such as
    :func:`check_layer` and :func:`check_histogram_fill`); the message names the
    function, the array, the expected and the actual value."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{function}: {name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in dtypes:
        raise TypeError(f"{function}: {name} has dtype {a.dtype}, expected {' or '.join(map(str, dtypes))}{dtype_note}")
    if a.shape != shape:
        raise ValueError(f"{function}: {name} has shape {a.shape}, expected {shape}{shape_note}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{function}: {name} must be C-contiguous (pass np.ascontiguousarray({name}))")
    if not a.flags.aligned:
        raise ValueError(f"{function}: {misaligned(name, a)}")
    if writes and not a.flags.writeable:
        raise ValueError(f"{function}: {name} must be writeable (the kernel writes into it)")


def misaligned(name: str, a: np.ndarray, fix: str | None = None) -> str:
    """Why ``a`` (argument ``name``), whose address is not a multiple of its dtype's alignment
    (a view at an odd byte offset of a buffer), is refused: the kernels load whole values (a
    misaligned load is undefined behaviour in C), and NumPy's ascontiguousarray keeps such an
    array as it is. ``fix``: what to pass instead (default: an aligned copy)."""
    fix = fix or f"np.require({name}, requirements='AC') (an aligned C-contiguous copy)"
    return (f"{name} is not aligned to its dtype ({a.dtype} needs an address that is a multiple of "
            f"{a.dtype.alignment} bytes): pass {fix}")


# ------------------------------------------------------------------ the layer functions
# The layer functions with the reference's names and arguments (outputs first), which the Numba
# (gradbench.kernels) and C (gradbench.cbackend) backends export for tests and users: each array's
# shape in letters of the first array's axes (B rows, N columns; "*": the first array's shape,
# whatever it is) and whether the function writes it. Every array is checked against it
# (:func:`check_layer`) before a kernel runs, which reads and writes exactly those entries.
LAYER_ARGS = {
    "dense_forward": (("z", "B,N", True), ("h", "B,N", False), ("W", "N,N", False), ("b", "N", False)),
    "dense_backward": (("dh", "B,N", True), ("dW", "N,N", True), ("db", "N", True), ("dz", "B,N", False),
                       ("h", "B,N", False), ("W", "N,N", False)),
    "batchnorm_forward": (("y", "B,N", True), ("xhat", "B,N", True), ("mean", "N", True), ("rstd", "N", True),
                          ("z", "B,N", False), ("gamma", "N", False), ("beta", "N", False)),
    "batchnorm_backward": (("dz", "B,N", True), ("dgamma", "N", True), ("dbeta", "N", True), ("dy", "B,N", False),
                           ("xhat", "B,N", False), ("rstd", "N", False), ("gamma", "N", False)),
    "activation_forward": (("a", "*", True), ("z", "*", False)),
    "activation_backward": (("dz", "*", True), ("da", "*", False), ("z", "*", False)),
    "normalise": (("g", "*", True),),
    "add_aligned": (("a", "*", True), ("s", "*", False)),
    "clip_signal": (("g", "B,N", True),),
}


def check_layer(function: str, *arrays) -> None:
    """Refuse the arrays of layer function ``function`` (all of them, in the order of
    :data:`LAYER_ARGS`; the caller leaves out its scalars) unless each is a C-contiguous, aligned
    float64 or float32 array of the first one's dtype and its shape, writeable where written, and
    none is empty (B and N at least 1: the kernels read a first entry, as C's gates refuse): a
    ValueError or TypeError naming the function, before any kernel runs."""
    table = LAYER_ARGS[function]
    if len(arrays) != len(table):
        raise TypeError(f"{function} takes {len(table)} arrays ({', '.join(t[0] for t in table)}), got {len(arrays)}")
    first, (name, letters, _) = arrays[0], table[0]
    if not isinstance(first, np.ndarray):
        raise TypeError(f"{function}: {name} must be a numpy.ndarray, got {type(first).__name__}")
    check_array(function, name, first, FLOAT_DTYPES, first.shape, False)  # the dtype of them all
    axes = letters.split(",")
    if letters != "*" and first.ndim != len(axes):
        raise ValueError(f"{function}: {name} has shape {first.shape}, expected ({letters})")
    if first.size == 0:
        raise ValueError(f"{function}: {name} has shape {first.shape}, expected every axis at least 1 "
                         "(a layer of no rows or no units)")
    dims = dict(zip(axes, first.shape))
    for (name, letters, writes), a in zip(table, arrays):
        shape = first.shape if letters == "*" else tuple(dims[d] for d in letters.split(","))
        check_array(function, name, a, (first.dtype,), shape, writes)


# ------------------------------------------------------------------ histogram_fill
HIST_COUNTS_DTYPES = (np.dtype(np.uint16), np.dtype(np.uint32))  # uint16: layers of at most 65,535 entries
_INT64 = np.dtype(np.int64)


def check_histogram_fill(dW, e, per_decade, bins, top, counts, below, zeros, nonfinite) -> tuple[int, int]:
    """Refuse the arguments of ``histogram_fill`` (the streaming histograms of the m layers of dW,
    Numba's kernels/histogram.py and C's csrc/histogram.c) unless ``dW`` is a float64 or float32
    array (m, ...), ``e`` int64 (m,), ``per_decade`` and ``bins`` ints in 1 .. 2**31 - 3,
    ``counts`` uint16 (layers of at most 65,535 entries) or uint32 (m, bins), ``top``, ``below``,
    ``zeros`` and ``nonfinite`` int64 (m,), all C-contiguous and aligned, the outputs writeable:
    a TypeError or ValueError naming the function, before any kernel runs. Returns m and the
    entries of a layer."""
    what = "histogram_fill"
    if not isinstance(dW, np.ndarray) or dW.ndim < 1:
        raise TypeError(f"{what}: dW must be a numpy.ndarray of one row per layer, got {type(dW).__name__}")
    check_array(what, "dW", dW, FLOAT_DTYPES, dW.shape, False)
    m = dW.shape[0]
    size = int(np.prod(dW.shape[1:], dtype=np.int64))
    for name, v in (("per_decade", per_decade), ("bins", bins)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 2**31 - 3:
            raise ValueError(f"{what}: {name} must be an int in 1 .. 2**31 - 3, got {v!r}")
    check_array(what, "e", e, (_INT64,), (m,), False)
    check_array(what, "counts", counts, HIST_COUNTS_DTYPES, (m, int(bins)), True)
    for name, a in (("top", top), ("below", below), ("zeros", zeros), ("nonfinite", nonfinite)):
        check_array(what, name, a, (_INT64,), (m,), True)
    if counts.dtype == np.uint16 and size > np.iinfo(np.uint16).max:
        raise ValueError(f"{what}: uint16 counts hold at most 65,535 entries per bin and the layers have {size}: "
                         "pass uint32 counts")
    return m, size


def _check_stack_config(function: str, arrays, dims) -> None:
    icfg, L = arrays["icfg"], dims["L"]
    act, k, clip = int(icfg[I_ACT]), int(icfg[I_RESIDUAL]), int(icfg[I_CLIP])
    if not 0 <= act < len(ACTIVATIONS):
        raise ValueError(f"{function}: icfg[I_ACT]={act} is not an activation code (0..{len(ACTIVATIONS) - 1})")
    if k < 0 or (k > 0 and L % k):
        raise ValueError(f"{function}: icfg[I_RESIDUAL]={k} must be 0 or divide the {L} layers of the call")
    check_clip_code(function, "I_CLIP", clip)


def check_clip_code(function: str, index: str, clip: int) -> None:
    """Raise ``ValueError`` unless ``clip`` (``icfg[index]`` of a call to ``function``) is a clip mode."""
    if clip not in (CLIP_NONE, CLIP_VALUE, CLIP_NORM):
        raise ValueError(f"{function}: icfg[{index}]={clip} is not a clip mode (0, 1, 2)")


def _arg_of(table, name) -> Arg:
    return next(a for a in table if a.name == name)


def _fmt_dims(dims) -> str:
    return ", ".join(f"{k}={v}" for k, v in dims.items())


def checked(function: str, kernel: Callable) -> Callable:
    """``function`` of a backend: bind the arguments, :func:`check` them, call ``kernel``.

    ``kernel`` receives the arrays positionally in table order and trusts them.
    """

    @functools.wraps(kernel, updated=())
    def entry(*args, **kwargs):
        arrays = bind(function, args, kwargs)
        check(function, arrays)
        return kernel(*arrays.values())

    entry.__name__ = function
    entry.__qualname__ = function
    return entry


# ------------------------------------------------------------------ allocation
def allocate(function: str, dims: Mapping[str, int], dtype, *, skip=(), fill=None,
             empty: Callable = np.empty) -> dict[str, np.ndarray]:
    """Arrays for ``function``: ``empty(shape, dtype)`` (default ``np.empty``), then filled where
    ``fill`` maps the name to a value. Names in ``skip`` (typically the parameters, which the
    caller passes) are left out.
    """
    fill = fill or {}
    out = {}
    for name, shape, dt in _layout(function, tuple(dims.items()), np.dtype(dtype), tuple(skip)):
        a = empty(shape, dt)
        if name in fill:
            a[...] = fill[name]
        out[name] = a
    return out


# ------------------------------------------------------------------ the stack as codes
def kernel_config(stack: Stack, rescale_forward: bool) -> tuple[np.ndarray, np.ndarray]:
    """Integer and float configuration arrays, the only view of the stack a kernel gets.

    ``icfg``: activation code, batch norm (0/1), residual group size, signal clip mode,
    forward rescaling (0/1). ``fcfg``: activation parameter, residual scale, clip threshold,
    batch-norm eps, saturation threshold (:func:`saturation_threshold`).
    """
    icfg = np.zeros(I_SIZE, dtype=np.int64)
    icfg[I_ACT] = ACT_CODE[stack.activation]
    icfg[I_BN] = int(bool(stack.batch_norm))
    icfg[I_RESIDUAL] = stack.residual
    icfg[I_CLIP] = signal_clip(stack)
    icfg[I_RESCALE_FWD] = int(bool(rescale_forward))
    fcfg = np.zeros(F_SIZE, dtype=np.float64)
    fcfg[F_ACT_PARAM] = stack.act_param
    fcfg[F_RES_SCALE] = stack.residual_scale
    fcfg[F_CLIP] = stack.clip_threshold
    fcfg[F_BN_EPS] = stack.bn_eps
    fcfg[F_SAT] = saturation_threshold(stack.activation, stack.act_param, stack.np_dtype)
    return icfg, fcfg


def saturation_threshold(activation: str, param: float, dtype) -> float:
    """The bound below which |phi'| counts as saturated: 1 % of the largest |phi'|, rounded to
    ``dtype`` (the kernels compare phi' as the dtype holds it: a float32 leaky ReLU's slope 0.01
    is float32(0.01), just below the float64 0.01, and is no more saturated than in float64).
    PReLU's comes from the slope of each layer (``param`` = slope[l], trained or imported), in every
    backend's forward; fcfg[F_SAT] holds the Stack's initial slope's and is not read for it."""
    from gradbench.activations import dphi_max

    return float(np.dtype(dtype).type(0.01 * dphi_max(activation, param)))


def signal_clip(stack) -> int:
    """The clip code of the backpropagated signal of a :class:`Stack` or a
    :class:`~gradbench.Recurrent`: CLIP_NONE unless ``clip_on="signal"``."""
    if stack.clip is None or stack.clip_on != "signal":
        return CLIP_NONE
    return CLIP_VALUE if stack.clip == "value" else CLIP_NORM
