"""Validation of what a user passes to :func:`gradbench.backprop`, before any kernel runs."""

from __future__ import annotations

import functools

import numpy as np

from gradbench import spec
from gradbench.abi import misaligned
from gradbench.params import GeneratedParams, Params, expected_shapes
from gradbench.spec import Stack


def check_array(name: str, a, shape, dtype, *, owner: str = "stack", kind: str = "Stack",
                finite: bool = True) -> np.ndarray:
    """``a`` as a C-contiguous array after checking its type, dtype, shape and (``finite``) values.

    ``owner`` names what the dtype belongs to in the messages ("stack", "net") and ``kind`` the
    class to build with another dtype ("Stack", "Recurrent"). Non-contiguous input, and the
    dtype in the other byte order (the same values), are accepted and copied; a misaligned array
    (a view at an odd byte offset of a buffer) is refused (:func:`check_aligned`).
    """
    if type(a) is not np.ndarray:  # a plain ndarray (the usual case) is neither of these
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
        refuse_masked(name, a)
    check_aligned(name, a)
    if a.dtype != dtype and a.dtype.newbyteorder("=") == dtype:  # big-endian float64: the same values, swapped
        a = a.astype(dtype)
    if a.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {a.dtype}, the {owner}'s dtype is {dtype}: "
            f"pass {name}.astype({str(dtype)!r}) or a {kind} with dtype={a.dtype.name!r}"
            if a.dtype.name in spec.DTYPES
            else f"{name} has dtype {a.dtype}; supported dtypes are {', '.join(spec.DTYPES)}, and the {owner}'s is "
                 f"{dtype}: pass {name}.astype({str(dtype)!r})"
        )
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{name} has shape {a.shape}, expected {tuple(shape)}")
    a = np.ascontiguousarray(a)
    if finite and not all_finite(a):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})")
    return a


def refuse_masked(name: str, a: np.ndarray) -> None:
    """Refuse a ``numpy.ma.MaskedArray`` given as ``name``: its mask would be dropped and the
    masked entries' hidden values computed with (a masked x read the loss of x.data)."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray: gradbench reads no masks (the masked entries' "
                        f"hidden values would be used); pass {name}.filled(value) with the value you mean, or an array "
                        "without a mask")


def check_aligned(name: str, a: np.ndarray) -> None:
    """Refuse the array ``a`` (argument ``name``) unless its address is a multiple of its dtype's
    alignment: the C kernels load whole floats (a misaligned load is undefined behaviour), and
    every backend refuses what one does. Checked on the array as given, before any copy."""
    if not a.flags.aligned:
        raise ValueError(misaligned(name, a))


# From this many entries the check runs in the C kernels (gradbench.cbackend.all_finite: one
# pass on the kernels' threads; np.all(np.isfinite(W)) took 2.9 ms of a 43 ms backprop call at
# L = 10^4, N = 32), below it in NumPy (the call costs more than it saves).
C_CHECK_FROM = 1 << 18


def all_finite(a: np.ndarray) -> bool:
    """Whether every entry of ``a`` is finite (large float arrays: one pass in the C kernels)."""
    if (a.size >= C_CHECK_FROM and a.dtype in (np.float64, np.float32) and a.flags.c_contiguous
            and a.flags.aligned):
        try:
            from gradbench import cbackend
        except ImportError:  # no C extension built: NumPy's check
            pass
        else:
            return cbackend.all_finite(a)
    return bool(np.logical_and.reduce(np.isfinite(a), axis=None))  # no ndarray.all wrapper: small arrays


def check_param_arrays(params, shapes, dtype, *, owner: str = "stack", unused: str = "has no use for it",
                       kind: str = "Stack") -> dict[str, np.ndarray]:
    """The arrays of ``params`` checked against ``shapes`` (name -> shape, or None where the
    ``owner`` takes no such array, which must then be absent; ``unused`` says why); returns
    name -> contiguous array for those present."""
    checked = {}
    for name, shape in shapes.items():
        a = getattr(params, name)
        if shape is None:
            if a is not None:
                raise ValueError(f"params.{name} is given but the {owner} {unused} (mismatched params/{owner})")
            continue
        if a is None:
            raise ValueError(f"params.{name} is missing: the {owner} needs shape {shape} (mismatched params/{owner})")
        checked[name] = check_array(f"params.{name}", a, shape, dtype, owner=owner, kind=kind)
    return checked


def check_progress(progress) -> None:
    """``progress`` is None or a callable ``progress(done, total)`` (checked before any work: a
    string failed only after the first segment's)."""
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable progress(done, total) or None, got "
                        f"{type(progress).__name__} {progress!r}")


def check_stored_params(stack: Stack, params, what: str) -> None:
    """``params`` as ``what`` (training, pretraining) needs them: :class:`~gradbench.Params`
    whose arrays have the stack's shapes and dtype and are finite."""
    if isinstance(params, GeneratedParams):
        raise TypeError(f"params=GeneratedParams(...) generates its weights without storing them, and {what} updates "
                        "stored weights: pass params.materialize(), or leave params out (init_params(stack, seed))")
    if not isinstance(params, Params):
        raise TypeError(f"params must be gradbench.Params (from gb.init_params or gb.pretrain), got {type(params).__name__}")
    check_param_arrays(params, expected_shapes(stack), stack.np_dtype)


# The parameters' shapes of a stack, worked out once per stack (a Stack is frozen and hashable; the
# dict is shared by the calls: read, never changed)
_expected_shapes = functools.lru_cache(maxsize=256)(expected_shapes)


def check_inputs(stack: Stack, params: Params | GeneratedParams, x, targets=None):
    """Check everything before any kernel runs; return contiguous params, x and targets."""
    if not isinstance(stack, Stack):
        raise TypeError(f"stack must be a gradbench.Stack, got {type(stack).__name__}")
    if isinstance(params, GeneratedParams):
        if params.stack != stack:
            diff = [f"{k}={getattr(params.stack, k)!r} vs {getattr(stack, k)!r}"
                    for k in stack.__dataclass_fields__ if getattr(params.stack, k) != getattr(stack, k)]
            raise ValueError("GeneratedParams was made for a different stack (" + ", ".join(diff)
                             + "): pass GeneratedParams(stack, seed) for this stack")
        x, targets = _check_x(stack, x, targets)
        return params, x, targets
    if not isinstance(params, Params):
        raise TypeError("params must be gradbench.Params (from gb.init_params) or "
                        f"gradbench.GeneratedParams, got {type(params).__name__}")
    checked = check_param_arrays(params, _expected_shapes(stack), stack.np_dtype)
    x, targets = _check_x(stack, x, targets)
    if type(params) is Params and all(a is getattr(params, name) for name, a in checked.items()):
        return params, x, targets  # nothing copied: the same arrays (and words), no new Params to build
    return Params(**checked, origin=params.origin, drawn=params.drawn), x, targets


# Why batch norm needs two samples (the API's and the command line's refusals say it alike).
BN_ONE_SAMPLE = "the batch statistics of one sample are degenerate (z - mean = 0 everywhere); PyTorch refuses it too"


def _check_x(stack: Stack, x, targets):
    dt = stack.np_dtype
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray of shape (batch, {stack.d_in}), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != stack.d_in or x.shape[0] < 1:
        raise ValueError(f"x has shape {x.shape}, expected (batch, {stack.d_in}) with batch >= 1")
    if stack.batch_norm and x.shape[0] < 2:
        raise ValueError(f"batch_norm=True needs a batch of at least 2 (x has 1 sample): {BN_ONE_SAMPLE}")
    x = check_array("x", x, None, dt)
    targets = check_targets(stack, targets, (x.shape[0],))
    return x, targets


def check_targets(net, t, lead: tuple, *, where: str = "", owner: str = "stack", kind: str = "Stack"):
    """The targets of ``net`` (a Stack or a Recurrent) checked for its loss: None without a head;
    integer labels of shape ``lead`` for softmax_ce; else an array ``lead + (output_dim,)`` of
    the net's dtype (in [0, 1] for bce). ``where`` qualifies the softmax_ce message, ``owner``
    and ``kind`` are as in :func:`check_array`."""
    if not net.has_head:
        if t is not None:
            raise ValueError("targets are given but loss='sum_squares' takes none")
        return None
    if t is None:
        raise ValueError(f"loss={net.loss!r} needs targets")
    if not isinstance(t, np.ndarray):
        raise TypeError(f"targets must be a numpy.ndarray, got {type(t).__name__}")
    check_aligned("targets", t)
    if net.loss == "softmax_ce":
        if t.shape != lead or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"targets for softmax_ce{where} must be integer class labels of shape {lead}, "
                             f"got {t.dtype} {t.shape}")
        if t.min() < 0 or t.max() >= net.output_dim:
            raise ValueError(f"targets must lie in [0, {net.output_dim}) (output_dim), got [{t.min()}, {t.max()}]")
        return np.ascontiguousarray(t, dtype=np.int64)
    t = check_array("targets", t, lead + (net.output_dim,), net.np_dtype, owner=owner, kind=kind)
    if net.loss == "bce" and (t.min() < 0 or t.max() > 1):
        raise ValueError("targets for bce must lie in [0, 1]")
    return t
