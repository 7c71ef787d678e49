"""The engine: validates, allocates, runs a backend's forward and backward, gathers a Result.

Everything that is the same for every backend lives here, written once: input validation,
the optional input layer and the loss head (one matrix product each, in NumPy), clipping of
parameter gradients (per layer or global) and the assembly of :class:`Result`. Backends
implement only the stack's forward and backward (see :mod:`gradbench.reference`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from gradbench import spec
from gradbench.backends import get_backend, resolve
from gradbench.logscaled import LogScaled
from gradbench.params import Params, expected_shapes
from gradbench.spec import Stack


# ------------------------------------------------------------------ results
@dataclass(frozen=True, eq=False)
class Grads:
    """Gradients of the loss, exact at any depth, one :class:`LogScaled` per parameter.

    ``W`` (L, N, N), ``b``/``gamma``/``beta`` (L, N), ``slope`` (L,), each with one exponent per
    layer; ``W_in``, ``b_in``, ``W_out``, ``b_out`` when the stack has them (one exponent).
    """

    W: LogScaled
    b: LogScaled
    gamma: LogScaled
    beta: LogScaled
    slope: LogScaled
    W_in: LogScaled | None = None
    b_in: LogScaled | None = None
    W_out: LogScaled | None = None
    b_out: LogScaled | None = None

    def items(self):
        for name in ("W", "b", "gamma", "beta", "slope", "W_in", "b_in", "W_out", "b_out"):
            value = getattr(self, name)
            if value is not None:
                yield name, value


@dataclass(frozen=True, eq=False)
class Result:
    """What one forward + backward pass through a stack gives (DESIGN section 6).

    Attributes
    ----------
    loss : float
        The loss as a float (inf or 0 if it does not fit; ``loss_exact`` holds it exactly).
    grads : Grads
        dL/dparams, after parameter-gradient clipping when the stack asks for it.
    grad_norm : LogScaled (L,)
        ||dL/dW_l||_F of ``grads.W``.
    signal_norm : LogScaled (L,)
        ||dL/dh_l||_F, the backpropagated signal at the input of layer l (after signal clipping).
    act_mean, act_std : LogScaled (L,)
        Mean and standard deviation of h_{l+1} over batch and units.
    saturation : ndarray (L,)
        Fraction of z_l entries with phi'(z) < 0.01 * max phi'.
    dead : ndarray (L,)
        Fraction of units with z <= 0 for every sample of the batch.
    first_nonfinite_forward, first_nonfinite_backward : int or None
        First layer whose output (forward) or backpropagated signal (backward) is not finite.
    """

    stack: Stack
    backend: str
    loss: float
    loss_exact: LogScaled
    grads: Grads
    grad_norm: LogScaled
    signal_norm: LogScaled
    input_grad: LogScaled
    output: LogScaled
    act_mean: LogScaled
    act_std: LogScaled
    saturation: np.ndarray
    dead: np.ndarray
    first_nonfinite_forward: int | None
    first_nonfinite_backward: int | None
    forward_rescaled: bool
    extras: dict = field(default_factory=dict)


# ------------------------------------------------------------------ validation
def _check_array(name: str, a, shape, dtype) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {a.dtype}, the stack's dtype is {dtype}: "
            f"pass {name}.astype({str(dtype)!r}) or a Stack with dtype={a.dtype.name!r}"
            if a.dtype.name in spec.DTYPES
            else f"{name} has dtype {a.dtype}; supported dtypes are {', '.join(spec.DTYPES)}"
        )
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{name} has shape {a.shape}, expected {tuple(shape)}")
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})")
    return np.ascontiguousarray(a)  # non-contiguous input is accepted and copied


def validate(stack: Stack, params: Params, x, targets=None) -> tuple[Params, np.ndarray, np.ndarray | None]:
    """Check everything before any kernel runs; return contiguous params, x and targets."""
    if not isinstance(stack, Stack):
        raise TypeError(f"stack must be a gradbench.Stack, got {type(stack).__name__}")
    if not isinstance(params, Params):
        raise TypeError(f"params must be gradbench.Params (from gb.init_params), got {type(params).__name__}")
    dt = stack.np_dtype
    checked = {}
    for name, shape in expected_shapes(stack).items():
        a = getattr(params, name)
        if shape is None:
            if a is not None:
                raise ValueError(f"params.{name} is given but the stack has no use for it (mismatched params/stack)")
            continue
        if a is None:
            raise ValueError(f"params.{name} is missing: the stack needs shape {shape} (mismatched params/stack)")
        checked[name] = _check_array(f"params.{name}", a, shape, dt)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray of shape (batch, {stack.d_in}), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != stack.d_in or x.shape[0] < 1:
        raise ValueError(f"x has shape {x.shape}, expected (batch, {stack.d_in}) with batch >= 1")
    x = _check_array("x", x, None, dt)
    targets = _check_targets(stack, targets, x.shape[0])
    return Params(**checked), x, targets


def _check_targets(stack: Stack, t, batch: int):
    if not stack.has_head:
        if t is not None:
            raise ValueError("targets are given but loss='sum_squares' takes none")
        return None
    if t is None:
        raise ValueError(f"loss={stack.loss!r} needs targets")
    if not isinstance(t, np.ndarray):
        raise TypeError(f"targets must be a numpy.ndarray, got {type(t).__name__}")
    if stack.loss == "softmax_ce":
        if t.shape != (batch,) or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"targets for softmax_ce must be integer class labels of shape ({batch},), got {t.dtype} {t.shape}")
        if t.min() < 0 or t.max() >= stack.output_dim:
            raise ValueError(f"targets must lie in [0, {stack.output_dim}) (output_dim), got [{t.min()}, {t.max()}]")
        return np.ascontiguousarray(t, dtype=np.int64)
    t = _check_array("targets", t, (batch, stack.output_dim), stack.np_dtype)
    if stack.loss == "bce" and (t.min() < 0 or t.max() > 1):
        raise ValueError("targets for bce must lie in [0, 1]")
    return t


def can_rescale_forward(stack: Stack, params: Params) -> bool:
    """The forward pass is positively homogeneous and can carry power-of-two exponents too.

    True for identity/ReLU-family stacks with zero biases, no batch norm and no head.
    """
    return (
        stack.activation in spec.HOMOGENEOUS
        and not stack.batch_norm
        and not stack.has_head
        and not np.any(params.b)
    )


def memory_estimate(stack: Stack, batch: int) -> int:
    """Bytes a plain run allocates: activations H, Z (2L+1)*B*N, weights and gradients 2*L*N^2."""
    L, N = stack.depth, stack.width
    item = stack.np_dtype.itemsize
    return item * ((2 * L + 1) * batch * N + 2 * L * N * N + 6 * L * N)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# ------------------------------------------------------------------ loss heads
def _head_loss(stack: Stack, h: np.ndarray, params: Params, t) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Loss of the head on top of h_L; returns (loss, dL/dh_L, dW_out, db_out).

    mse: mean over elements of (y - t)^2; bce: mean of softplus(y) - t*y (from logits);
    softmax_ce: mean over the batch of logsumexp(y) - y[t].
    """
    y = h @ params.W_out.T + params.b_out
    B, O = y.shape
    y64 = y.astype(np.float64)
    if stack.loss == "mse":
        diff = y64 - t
        loss = float(np.mean(diff * diff))
        dy = 2.0 * diff / (B * O)
    elif stack.loss == "bce":
        loss = float(np.mean(np.maximum(y64, 0) - y64 * t + np.log1p(np.exp(-np.abs(y64)))))
        dy = (_sigmoid64(y64) - t) / (B * O)
    else:
        shifted = y64 - y64.max(axis=1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=1))
        loss = float(np.mean(lse - shifted[np.arange(B), t]))
        p = np.exp(shifted - lse[:, None])
        p[np.arange(B), t] -= 1.0
        dy = p / B
    dy = dy.astype(h.dtype)
    return loss, dy @ params.W_out, dy.T @ h, dy.sum(axis=0)


def _sigmoid64(y):
    e = np.exp(-np.abs(y))
    return np.where(y >= 0, 1 / (1 + e), e / (1 + e))


# ------------------------------------------------------------------ clipping of parameter gradients
# Inside the engine every gradient carries a leading "layer" axis with one exponent per row:
# (L, ...) for the stack's parameters, (1, ...) for the input layer and the head.
_LAYER_GROUPS = (("W", "b", "gamma", "beta", "slope"), ("W_in", "b_in"), ("W_out", "b_out"))


def _row_norms(g: LogScaled) -> LogScaled:
    m = g.mantissa.reshape(len(g.exponent), -1)
    return LogScaled(np.sqrt(np.sum(np.square(m, dtype=np.float64), axis=1)), g.exponent)


def _ldexp(m, e):
    return np.ldexp(m, np.clip(e, -4000, 4000).astype(np.int32))


def _combine_norms(norms: list[LogScaled]) -> LogScaled:
    """Row-wise sqrt(sum of squares) of several row norms, at the largest exponent."""
    em = np.max(np.stack([n.exponent for n in norms]), axis=0)
    total = np.sqrt(sum(_ldexp(n.mantissa, n.exponent - em) ** 2 for n in norms))
    return LogScaled(total, em)


def _scale_rows(g: LogScaled, factor: np.ndarray, shift: np.ndarray) -> LogScaled:
    """g * factor * 2**shift, row by row."""
    fm = np.asarray(factor).reshape((-1,) + (1,) * (g.mantissa.ndim - 1))
    return LogScaled((g.mantissa * fm).astype(g.mantissa.dtype), g.exponent + shift)


def _clip_value(g: LogScaled, c: float) -> LogScaled:
    """Elementwise clip of the true values to [-c, c]; rows that need it move to c's exponent."""
    ec = int(np.frexp(c)[1])
    t = np.ldexp(c, -ec)  # c = t * 2**ec
    shift = (g.exponent - ec).reshape((-1,) + (1,) * (g.mantissa.ndim - 1))
    scaled = _ldexp(g.mantissa.astype(np.float64), shift)
    rows = np.any(np.abs(scaled) > t, axis=tuple(range(1, g.mantissa.ndim)))
    m, e = g.mantissa.copy(), g.exponent.copy()
    m[rows] = np.clip(scaled[rows], -t, t)
    e[rows] = ec
    return LogScaled(m, e)


def clip_param_grads(stack: Stack, grads: dict[str, LogScaled]) -> dict[str, LogScaled]:
    """Apply ``clip`` with ``clip_on`` = "layer" or "global" to the parameter gradients.

    value: every entry to [-c, c] (per layer and global are the same). norm, layer: each
    layer's gradients (W, b, gamma, beta, slope of layer l together; the input layer and the
    head count as one layer each) scaled to norm <= c. norm, global: all gradients scaled by
    one factor to a total norm <= c (as ``torch.nn.utils.clip_grad_norm_``).
    """
    c = stack.clip_threshold
    if stack.clip == "value":
        return {k: _clip_value(g, c) for k, g in grads.items()}
    groups = [[k for k in keys if k in grads] for keys in _LAYER_GROUPS]
    groups = [keys for keys in groups if keys]
    norms = [_combine_norms([_row_norms(grads[k]) for k in keys]) for keys in groups]
    out = dict(grads)
    if stack.clip_on == "layer":
        for keys, n in zip(groups, norms):
            over = _ldexp(n.mantissa, n.exponent) > c
            factor = np.where(over, c / np.where(over, n.mantissa, 1.0), 1.0)
            shift = np.where(over, -n.exponent, 0)
            for k in keys:
                out[k] = _scale_rows(grads[k], factor, shift)
        return out
    m = np.concatenate([n.mantissa for n in norms])
    e = np.concatenate([n.exponent for n in norms])
    em = int(e.max())
    total_m = float(np.sqrt(np.sum(_ldexp(m, e - em) ** 2)))
    if not _ldexp(total_m, em) > c:
        return out
    for k, g in grads.items():
        rows = len(g.exponent)
        out[k] = _scale_rows(g, np.full(rows, c / total_m), np.full(rows, -em))
    return out


# ------------------------------------------------------------------ the pass
def backprop(stack: Stack, params: Params, x: np.ndarray, targets=None, *, backend: str = "auto") -> Result:
    """Forward and backward through ``stack``, exact at any depth.

    Parameters
    ----------
    stack : Stack
    params : Params
        From :func:`gradbench.init_params` (or trained); arrays of the stack's dtype.
    x : ndarray (B, D)
        The input batch, of the stack's dtype.
    targets : ndarray, optional
        (B, O) for mse and bce, integer labels (B,) for softmax_ce; none for sum_squares.
    backend : str
        ``"numpy"`` (the reference), ``"numba"``, ``"c"`` or ``"auto"`` (fastest available).

    Returns
    -------
    Result
        The loss, exact gradients (:class:`LogScaled`) and per-layer statistics.
    """
    params, x, targets = validate(stack, params, x, targets)
    name = resolve(backend)
    impl = get_backend(name)
    L, N, B = stack.depth, stack.width, x.shape[0]
    need = memory_estimate(stack, B)
    avail = _available_memory()
    if need > 0.9 * avail:
        raise MemoryError(
            f"this run needs about {need / 2**30:.2f} GiB (activations {2 * L + 1} x {B} x {N}, "
            f"weights and gradients {L} x {N} x {N}) but {avail / 2**30:.2f} GiB is available: "
            "reduce depth, width or batch"
        )
    dt = stack.np_dtype
    rescale = can_rescale_forward(stack, params)
    icfg, fcfg = spec.kernel_config(stack, rescale)

    H = np.empty((L + 1, B, N), dtype=dt)
    H[0] = x if params.W_in is None else x @ params.W_in.T + params.b_in
    Z = np.empty((L, B, N), dtype=dt)
    bn_mean, bn_rstd = np.zeros((L, N), dtype=dt), np.ones((L, N), dtype=dt)
    fexp = np.zeros(L + 1, dtype=np.int64)
    act_mean, act_std = np.empty(L), np.empty(L)
    saturation, dead = np.empty(L), np.empty(L)
    info = np.full(4, -1, dtype=np.int64)
    W, b, gamma, beta, slope = params.W, params.b, params.gamma, params.beta, params.slope
    impl.stack_forward(icfg, fcfg, W, b, gamma, beta, slope, H, Z, bn_mean, bn_rstd, fexp,
                       act_mean, act_std, saturation, dead, info)

    # loss and dL/dh_L
    extra_grads: dict[str, LogScaled] = {}
    sig_e = np.zeros(L + 1, dtype=np.int64)
    hL = H[L]
    zero_exp = np.zeros(1, dtype=np.int64)
    if stack.has_head:
        loss, G, dW_out, db_out = _head_loss(stack, hL, params, targets)
        G = np.ascontiguousarray(G, dtype=dt)
        loss_exact = LogScaled.from_float(loss)
        extra_grads["W_out"] = LogScaled(dW_out[None], zero_exp)
        extra_grads["b_out"] = LogScaled(db_out[None], zero_exp)
    else:
        m, e = np.frexp(0.5 * float(np.sum(np.square(hL, dtype=np.float64))))
        loss_exact = LogScaled(np.array(m), np.array(int(e) + 2 * int(fexp[L])))
        loss = float(loss_exact.to_float(warn=False))
        G = hL.copy()
        sig_e[L] = fexp[L]

    dW = np.empty((L, N, N), dtype=dt)
    db, dgamma, dbeta = (np.empty((L, N), dtype=dt) for _ in range(3))
    dslope = np.empty(L, dtype=dt)
    sig_m, gnorm_m = np.empty(L + 1), np.empty(L)
    impl.stack_backward(icfg, fcfg, W, gamma, beta, slope, H, Z, bn_rstd, fexp, G, dW, db,
                        dgamma, dbeta, dslope, sig_m, sig_e, gnorm_m, info)

    e_param, e_weight = sig_e[1:], sig_e[1:] + fexp[:-1]
    grads = {
        "W": LogScaled(dW, e_weight),
        "b": LogScaled(db, e_param),
        "gamma": LogScaled(dgamma, e_param),
        "beta": LogScaled(dbeta, e_param),
        "slope": LogScaled(dslope, e_weight),
    }
    input_grad = G
    if params.W_in is not None:
        grads["W_in"] = LogScaled((G.T @ x)[None], sig_e[:1])
        grads["b_in"] = LogScaled(G.sum(axis=0)[None], sig_e[:1])
        input_grad = G @ params.W_in
    grads.update(extra_grads)
    grad_norm = LogScaled(gnorm_m, e_weight.copy())
    if stack.clip is not None and stack.clip_on != "signal":
        grads = clip_param_grads(stack, grads)
        grad_norm = _row_norms(grads["W"])
    grads = {k: (g if k in _LAYER_GROUPS[0] else g[0]) for k, g in grads.items()}

    ffwd, fbwd = int(info[0]), int(info[1])
    return Result(
        stack=stack,
        backend=name,
        loss=loss,
        loss_exact=loss_exact,
        grads=Grads(**grads),
        grad_norm=grad_norm,
        signal_norm=LogScaled(sig_m[:L].copy(), sig_e[:L].copy()),
        input_grad=LogScaled(input_grad[None], sig_e[:1])[0],
        output=LogScaled(hL[None], fexp[L:])[0],
        act_mean=LogScaled(act_mean, fexp[1:].copy()),
        act_std=LogScaled(act_std, fexp[1:].copy()),
        saturation=saturation,
        dead=dead,
        first_nonfinite_forward=None if ffwd < 0 else ffwd,
        first_nonfinite_backward=None if fbwd < 0 else fbwd,
        forward_rescaled=rescale,
    )
