"""The engine: validates, allocates, runs a backend's forward and backward, gathers a Result.

Everything that is the same for every backend lives here, written once: input validation,
the optional input layer and the loss head (one matrix product each, in NumPy), the top
signal (normalised and, with signal clipping, clipped once here: :func:`top_signal`), clipping
of parameter gradients (per layer or global), memory planning and the assembly of
:class:`Result`. Backends implement only the stack's forward and backward (see
:mod:`gradbench.reference`), and the engine calls them on segments of layers.

Memory (DESIGN section 5)
-------------------------
A plain run stores every activation: (2L+1) B N numbers, plus weights and gradients 2 L N^2.
``checkpoint=k`` stores only h_0, h_k, h_2k, ... and, in the backward pass, recomputes each
segment of k layers from its checkpoint (one extra forward pass), then runs the backend's
backward on that segment: O(L/k + k) B N memory; k ~ sqrt(L) by default, a multiple of the
residual group size so that no group straddles two segments. Segments are passed to the
backends as slices of the layer arrays (``W[s:e]``, ``H[s:e+1]``, ``fexp[s:e+1]``,
``sig_e[s:e+1]``, ...): ``fexp[s]`` is the input exponent of a segment's forward,
``sig_e[e]`` the exponent of its top signal, which the segment above has already normalised
and clipped. The gradients are bitwise those of the one-piece run, for every backend.
``stats_only=True`` keeps per-layer statistics (norms, activation statistics, histograms of
log10 |dW|) and no gradient arrays; :class:`~gradbench.weights.GeneratedParams` regenerates the
weights per segment instead of storing them. Together they run 10^6 layers in O(sqrt(L) B N)
memory plus O(L) statistics. A run that does not fit is refused before it starts, with the
estimate and the options that would fit.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from gradbench import reference, spec
from gradbench.backends import get_backend, resolve
from gradbench.logscaled import LOG10_2, LogScaled
from gradbench.params import Params, expected_shapes
from gradbench.spec import Stack
from gradbench.weights import GeneratedParams


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
class GradHistogram:
    """Per-layer histograms of log10 |dL/dW_l| entries on a fixed grid, exact at any depth.

    Bin ``j`` (an integer, the same grid for every layer) holds the entries with
    ``j <= log10|dW| * per_decade < j + 1``, computed from mantissa and int64 exponent (no
    underflow; bin assignment is as exact as float64 log10, about 1e-12 decades at 10^5
    decades). Each layer keeps the ``bins`` bins ending at its largest entry: ``counts[l, i]``
    is bin ``top[l] - bins + 1 + i``; ``below[l]`` counts non-zero finite entries under the
    window, ``zeros[l]`` and ``nonfinite[l]`` the rest. Layers with no non-zero finite entry
    have ``top = 0`` and empty counts.
    """

    per_decade: int
    bins: int
    top: np.ndarray
    counts: np.ndarray
    below: np.ndarray
    zeros: np.ndarray
    nonfinite: np.ndarray

    def edges(self, layer: int) -> np.ndarray:
        """The bins + 1 bin edges (log10 units) of layer ``layer``."""
        lo = int(self.top[layer]) - self.bins + 1
        return np.arange(lo, lo + self.bins + 1) / self.per_decade

    def dense(self, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All layers on the common grid [lo, hi) (log10 units, rounded out to the bin grid).

        Returns edges (nb + 1,), counts (L, nb) and outside (L,): non-zero finite entries not
        in [lo, hi), including those under each layer's window.
        """
        j0, j1 = math.floor(lo * self.per_decade), math.ceil(hi * self.per_decade)
        nb = max(j1 - j0, 1)
        L = len(self.top)
        out = np.zeros((L, nb), dtype=np.int64)
        first = self.top - self.bins + 1 - j0  # column of counts[:, 0] on the dense grid
        for i in range(self.bins):
            col = first + i
            ok = (col >= 0) & (col < nb)
            out[np.nonzero(ok)[0], col[ok]] += self.counts[ok, i]
        total = self.counts.sum(axis=1, dtype=np.int64) + self.below
        return np.arange(j0, j0 + nb + 1) / self.per_decade, out, total - out.sum(axis=1)


@dataclass(frozen=True, eq=False)
class Result:
    """What one forward + backward pass through a stack gives (DESIGN section 6).

    Attributes
    ----------
    loss : float
        The loss as a float (inf or 0 if it does not fit; ``loss_exact`` holds it exactly).
    grads : Grads or None
        dL/dparams, after parameter-gradient clipping when the stack asks for it; ``None`` for
        ``stats_only=True`` runs, which keep the per-layer statistics only.
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
    extras : dict
        How the run was done: ``checkpoint`` (segment length or None), ``segments``,
        ``stats_only``, ``generated`` (weights), ``memory_estimate`` (bytes) and ``seconds``
        spent in forward, backward (including recomputation), weight generation and statistics.
    grad_hist : GradHistogram or None
        Histograms of log10 |dW_l| (``stats_only=True`` runs; otherwise ``None``: use
        ``gradbench.diagnose`` on ``grads``).
    """

    stack: Stack
    backend: str
    loss: float
    loss_exact: LogScaled
    grads: Grads | None
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
    grad_hist: GradHistogram | None = None

    def to_frame(self):
        """One row per layer as a pandas DataFrame (:func:`gradbench.frames.result_frame`)."""
        from gradbench.frames import result_frame

        return result_frame(self)


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


def validate(stack: Stack, params: Params | GeneratedParams, x, targets=None):
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
                        f"gradbench.weights.GeneratedParams, got {type(params).__name__}")
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
    x, targets = _check_x(stack, x, targets)
    return Params(**checked), x, targets


def _check_x(stack: Stack, x, targets):
    dt = stack.np_dtype
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray of shape (batch, {stack.d_in}), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != stack.d_in or x.shape[0] < 1:
        raise ValueError(f"x has shape {x.shape}, expected (batch, {stack.d_in}) with batch >= 1")
    x = _check_array("x", x, None, dt)
    targets = _check_targets(stack, targets, x.shape[0])
    return x, targets


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


def can_rescale_forward(stack: Stack, params: Params | GeneratedParams) -> bool:
    """The forward pass is positively homogeneous and can carry power-of-two exponents too.

    True for identity/ReLU-family stacks with zero biases, no batch norm and no head.
    """
    zero_bias = params.zero_bias if isinstance(params, GeneratedParams) else not np.any(params.b)
    return (
        stack.activation in spec.HOMOGENEOUS
        and not stack.batch_norm
        and not stack.has_head
        and zero_bias
    )


def default_segment(stack: Stack) -> int:
    """The default checkpoint interval: about sqrt(L), a multiple of the residual group size."""
    L, r = stack.depth, stack.residual or 1
    k = max(1, round(math.sqrt(L)))
    k = max(r, round(k / r) * r)
    return min(k, L)


def memory_estimate(stack: Stack, batch: int, *, checkpoint: int | None = None, stats_only: bool = False,
                    generated: bool = False, hist_bins: int = 40) -> int:
    """Bytes a run allocates (an estimate, within a few per cent at large depth).

    With the defaults, a plain run: activations H, Z (2L+1)*B*N, weights and gradients 2*L*N^2
    and the per-layer vectors. ``checkpoint=k``: the L/k checkpoints and one segment's H, Z
    instead of all activations. ``stats_only``: no gradient arrays (one segment's worth) and
    O(L) statistics. ``generated``: one segment of weights (two buffers) instead of all of them.
    """
    L, N = stack.depth, stack.width
    item = stack.np_dtype.itemsize
    B = batch
    seg = checkpoint if checkpoint is not None else (default_segment(stack) if stats_only or generated else L)
    layer_vectors = 4 * N + 1  # b, gamma, beta (L, N) and slope (L,)
    if checkpoint is None:
        acts = (2 * L + 1) * B * N + 2 * L * N
    else:
        acts = (L // checkpoint + 2) * B * N + (2 * seg + 1) * B * N + 2 * seg * N
    if generated:
        weights = 2 * seg * (N * N + layer_vectors)
    else:
        weights = L * (N * N + layer_vectors)
    grads = seg if stats_only else L
    grads *= N * N + layer_vectors
    stats = 8 * L * 12  # norms, exponents, activation statistics, info (float64/int64 each)
    if stats_only:
        stats += L * (8 * 4 + hist_bins * (2 if N * N < 2**16 else 4))
        stats += 8 * 4 * seg * N * N  # the histogram's temporaries on one segment of dW
    return item * (acts + weights + grads) + stats


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


# ------------------------------------------------------------------ the top signal
def top_signal(stack: Stack, G: np.ndarray, e: int) -> tuple[int, float]:
    """Normalise and (signal clipping) clip the true top gradient dL/dh_L = G * 2**e in place.

    Done once, here, with the reference's :func:`~gradbench.reference.normalise` and
    :func:`~gradbench.reference.clip_signal` (:func:`gradbench.reference.top_signal`); the
    backends' ``stack_backward`` only normalise their top signal. Returns the new exponent
    and the norm of the mantissas.
    """
    e = reference.top_signal(G, e, stack.signal_clip, stack.clip_threshold)
    return e, float(np.sqrt(np.sum(np.square(G, dtype=np.float64))))


# ------------------------------------------------------------------ planning
@dataclass(frozen=True)
class Plan:
    """How a run is done: segment length, recomputation, what is kept, the memory estimate."""

    segment: int           # layers per backend call
    recompute: bool        # activations are checkpointed every `segment` layers and recomputed
    stats_only: bool
    generated: bool
    estimate: int          # bytes

    @property
    def checkpoint(self) -> int | None:
        return self.segment if self.recompute else None


def _check_checkpoint(stack: Stack, checkpoint) -> None:
    if checkpoint is None or (isinstance(checkpoint, str) and checkpoint == "auto"):
        return
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, (int, np.integer)):
        raise TypeError(f"checkpoint must be 'auto', None or an int, got {type(checkpoint).__name__} {checkpoint!r}")
    r = stack.residual or 1
    if checkpoint < 1 or checkpoint % r:
        raise ValueError(
            f"checkpoint={checkpoint} must be a positive multiple of the residual group size {r} "
            "(a residual group must not straddle two segments)"
        )


def plan_run(stack: Stack, batch: int, *, checkpoint="auto", stats_only: bool = False, generated: bool = False,
             memory_budget: int | None = None, hist_bins: int = 40, available: int | None = None) -> Plan:
    """Choose segment length and checkpointing; raise MemoryError if the run would not fit.

    ``checkpoint="auto"`` checkpoints only when the plain run needs more than the budget
    (``memory_budget`` bytes, default half of the available RAM). A run whose estimate exceeds
    ``memory_budget`` (default 90 % of the available RAM) is refused with the options that fit.
    """
    _check_checkpoint(stack, checkpoint)
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float, np.integer))
                                      or not memory_budget > 0):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    avail = _available_memory() if available is None else available
    auto_budget = memory_budget if memory_budget is not None else 0.5 * avail
    limit = memory_budget if memory_budget is not None else 0.9 * avail
    L = stack.depth
    k_auto = default_segment(stack)

    def est(ck, so=stats_only, gen=generated):
        return memory_estimate(stack, batch, checkpoint=ck, stats_only=so, generated=gen, hist_bins=hist_bins)

    if isinstance(checkpoint, str):  # "auto"
        ck = None if est(None) <= auto_budget else k_auto
    else:
        ck = None if checkpoint is None else min(int(checkpoint), L)
    need = est(ck)
    if need > limit:
        options = []
        for so, gen, label in ((False, generated, ""), (True, generated, "stats_only=True"),
                               (True, True, "stats_only=True and params=gradbench.weights.GeneratedParams(stack, seed)")):
            for c2 in (k_auto, None):
                if (so, gen, c2) == (stats_only, generated, ck):
                    continue
                if est(c2, so, gen) <= limit:
                    opt = f"checkpoint={c2}" + (f", {label}" if label else "")
                    options.append(f"{opt} (about {est(c2, so, gen) / 2**30:.2f} GiB)")
                    break
            if options:
                break
        hint = ("; it fits with " + options[0]) if options else "; reduce depth, width or batch"
        raise MemoryError(
            f"this run (depth {L}, width {stack.width}, batch {batch}, checkpoint={ck}, stats_only={stats_only}, "
            f"{'generated' if generated else 'stored'} weights) needs about {need / 2**30:.2f} GiB but the "
            f"budget is {limit / 2**30:.2f} GiB "
            f"({'memory_budget' if memory_budget is not None else '90% of the available RAM'}){hint}"
        )
    segment = ck if ck is not None else (k_auto if stats_only or generated else L)
    return Plan(segment=segment, recompute=ck is not None, stats_only=bool(stats_only), generated=generated,
                estimate=need)


# ------------------------------------------------------------------ per-segment parameters
# Generated weights of the next segment are drawn in a helper thread while the backend runs
# the current one (NumPy's generators and the backends release the GIL); results are the same.
PREFETCH = True


class _Layers:
    """The parameters of layers [s, e): views of stored Params, or generated into buffers.

    Generated weights use two buffers: :meth:`prefetch` fills the spare one in a helper thread
    (one thread, so generation never runs twice at once) while the caller computes with the
    other; :meth:`get` waits for it. ``seconds`` is the time the caller waited for generation,
    ``cpu_seconds`` the time spent generating.
    """

    def __init__(self, params, stack: Stack, seg: int):
        self.params = params
        self.generated = isinstance(params, GeneratedParams)
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.pool = None
        if self.generated:
            N, dt = stack.width, stack.np_dtype
            self.buffers = [(np.empty((seg, N, N), dtype=dt), np.empty((seg, N), dtype=dt)) for _ in range(2)]
            self.spans = [None, None]  # the (s, e) each buffer holds (or will hold: pending)
            self.current = 0
            self.pending = None  # (buffer index, future)
            self.consts = None

    def _fill(self, i: int, s: int, e: int) -> None:
        t = time.perf_counter()
        W, b = self.buffers[i]
        self.params.weights(s, e, out=W[:e - s])
        self.params.biases(s, e, out=b[:e - s])
        self.cpu_seconds += time.perf_counter() - t

    def _wait(self) -> None:
        if self.pending is not None:
            t = time.perf_counter()
            self.pending[1].result()
            self.seconds += time.perf_counter() - t
            self.pending = None

    def prefetch(self, s: int, e: int) -> None:
        """Start generating layers [s, e) into the buffer not in use (no-op for stored params)."""
        if not (self.generated and PREFETCH):
            return
        self._wait()
        i = 1 - self.current
        if self.spans[i] == (s, e):
            return
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="gradbench-weights")
        self.spans[i] = (s, e)
        self.pending = (i, self.pool.submit(self._fill, i, s, e))

    def get(self, s: int, e: int):
        p = self.params
        if not self.generated:
            return p.W[s:e], p.b[s:e], p.gamma[s:e], p.beta[s:e], p.slope[s:e]
        m = e - s
        self._wait()
        if self.spans[self.current] != (s, e):  # the forward's last segment is the backward's first
            i = 1 - self.current
            if self.spans[i] != (s, e):  # not prefetched
                t = time.perf_counter()
                self._fill(i, s, e)
                self.seconds += time.perf_counter() - t
                self.spans[i] = (s, e)
            self.current = i
        if self.consts is None or len(self.consts[2]) != m:
            self.consts = p.constants(0, m)
        W, b = self.buffers[self.current]
        gamma, beta, slope = self.consts
        return W[:m], b[:m], gamma, beta, slope

    def close(self) -> None:
        if self.generated:
            self._wait()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


# ------------------------------------------------------------------ streaming statistics
def _histogram(dW: np.ndarray, e: np.ndarray, per_decade: int, bins: int, top, counts, below, zeros, nonfinite):
    """Fill the GradHistogram rows of the layers of dW (m, N, N) with exponents e (m,).

    bin = floor(log10|m| * per_decade + e * log10(2) * per_decade), from the mantissa m and
    the int64 exponent e, so nothing underflows; one log10 per entry, in place.
    """
    m = dW.shape[0]
    a = np.abs(dW.reshape(m, -1), dtype=np.float64)
    amax = a.max(axis=1)
    if not np.all(np.isfinite(amax)):
        return _histogram_nonfinite(a, e, per_decade, bins, top, counts, below, zeros, nonfinite)
    n = a.shape[1]
    zeros[:] = n - np.count_nonzero(a, axis=1)
    nonfinite[:] = 0
    with np.errstate(divide="ignore"):
        np.log10(a, out=a)  # zeros give -inf
    a *= per_decade
    a += (e * (LOG10_2 * per_decade))[:, None]
    np.floor(a, out=a)
    t = a.max(axis=1)
    t[~np.isfinite(t)] = 0.0  # layers of zeros only
    top[:] = t.astype(np.int64)
    a -= (t - bins)[:, None]  # column 1..bins inside the window, <= 0 below it (zeros: -inf)
    np.clip(a, 0, bins, out=a)
    idx = a.astype(np.int64)
    idx += (np.arange(m, dtype=np.int64) * (bins + 1))[:, None]
    c = np.bincount(idx.ravel(), minlength=m * (bins + 1)).reshape(m, bins + 1)
    counts[:] = c[:, 1:]
    below[:] = c[:, 0] - zeros


def _histogram_nonfinite(a, e, per_decade, bins, top, counts, below, zeros, nonfinite):
    """:func:`_histogram` for segments with NaN or Inf entries (which are counted apart)."""
    m = a.shape[0]
    zeros[:] = np.count_nonzero(a == 0, axis=1)
    fin = np.isfinite(a)
    nonfinite[:] = a.shape[1] - np.count_nonzero(fin, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.log10(a)
        v *= per_decade
        v += (e * (LOG10_2 * per_decade))[:, None]
        idx = np.floor(v)
    ok = np.isfinite(idx)  # excludes zeros (-inf) and non-finite entries
    t = np.max(idx, axis=1, where=ok, initial=-np.inf)
    has = np.isfinite(t)
    t = np.where(has, t, 0.0)
    top[:] = t.astype(np.int64)
    rel = idx - (t - bins + 1)[:, None]
    inside = ok & (rel >= 0)
    below[:] = np.count_nonzero(ok, axis=1) - np.count_nonzero(inside, axis=1)
    rows = np.broadcast_to(np.arange(m)[:, None], a.shape)
    flat = rows[inside] * bins + rel[inside].astype(np.int64)
    counts[:] = np.bincount(flat, minlength=m * bins).reshape(m, bins)


# ------------------------------------------------------------------ the pass
def backprop(stack: Stack, params: Params | GeneratedParams, x: np.ndarray, targets=None, *,
             backend: str = "auto", checkpoint="auto", stats_only: bool = False,
             memory_budget: int | None = None, hist_bins: int = 40, hist_per_decade: int = 4,
             progress=None) -> Result:
    """Forward and backward through ``stack``, exact at any depth.

    Parameters
    ----------
    stack : Stack
    params : Params or GeneratedParams
        From :func:`gradbench.init_params` (or trained), arrays of the stack's dtype; or
        :class:`gradbench.weights.GeneratedParams` (weights generated per layer, never stored).
    x : ndarray (B, D)
        The input batch, of the stack's dtype.
    targets : ndarray, optional
        (B, O) for mse and bce, integer labels (B,) for softmax_ce; none for sum_squares.
    backend : str
        ``"numpy"`` (the reference), ``"numba"``, ``"c"`` or ``"auto"`` (fastest available).
    checkpoint : "auto", int or None
        Store every k-th activation and recompute the segments in the backward pass
        (a multiple of the residual group size). ``"auto"``: only when the plain run would
        need more than ``memory_budget``, with k ~ sqrt(L). The gradients are bitwise those of
        the plain run.
    stats_only : bool
        Keep per-layer statistics only (``grad_norm``, ``signal_norm``, activation statistics,
        saturation, dead units, ``grad_hist``); ``Result.grads`` is then ``None``. Parameter
        gradient clipping per layer is applied to the statistics; ``clip_on="global"`` needs
        every gradient and is refused.
    memory_budget : int, optional
        Bytes. Default: half of the available RAM for the "auto" decision, 90 % as the limit
        beyond which a run is refused (MemoryError naming the options that fit).
    hist_bins, hist_per_decade : int
        The window and resolution of ``grad_hist`` (stats_only); ``hist_bins=0`` skips it.
    progress : callable, optional
        Called as ``progress(done, total)`` after every segment of the forward and the backward
        pass (``total`` = twice the number of segments), e.g. to drive a progress bar.

    Returns
    -------
    Result
        The loss, exact gradients (:class:`LogScaled`) and per-layer statistics.
    """
    t_start = time.perf_counter()
    params, x, targets = validate(stack, params, x, targets)
    for name, v, low in (("hist_bins", hist_bins, 0), ("hist_per_decade", hist_per_decade, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if not isinstance(stats_only, (bool, np.bool_)):
        raise TypeError(f"stats_only must be a bool, got {stats_only!r}")
    if stats_only and stack.clip == "norm" and stack.clip_on == "global":
        raise ValueError("stats_only=True cannot apply clip='norm' with clip_on='global' (it scales every layer's "
                         "gradient by one factor known only at the end): use clip_on='layer' or keep the gradients")
    name = resolve(backend)
    impl = get_backend(name)
    B = x.shape[0]
    generated = isinstance(params, GeneratedParams)
    plan = plan_run(stack, B, checkpoint=checkpoint, stats_only=stats_only, generated=generated,
                    memory_budget=memory_budget, hist_bins=hist_bins)
    rescale = can_rescale_forward(stack, params)
    layers = _Layers(params, stack, plan.segment)
    try:
        # overflow in an exploding stack is a finding, reported as first_nonfinite_forward/backward
        with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
            return _run(stack, params, x, targets, impl, name, plan, layers, rescale, hist_bins,
                        hist_per_decade, t_start, progress)
    finally:
        layers.close()


def _run(stack, params, x, targets, impl, name, plan, layers, rescale, hist_bins, hist_per_decade, t_start,
         progress=None):
    """The pass itself (:func:`backprop` has validated and planned)."""
    L, N, B = stack.depth, stack.width, x.shape[0]
    seg = plan.segment
    segments = [(s, min(s + seg, L)) for s in range(0, L, seg)]
    dt = stack.np_dtype
    icfg, fcfg = spec.kernel_config(stack, rescale)
    seconds = dict(forward=0.0, backward=0.0, generate=0.0, stats=0.0)
    generated = isinstance(params, GeneratedParams)

    # ---------------------------------------------------------------- forward
    t = time.perf_counter()
    h0 = x if params.W_in is None else x @ params.W_in.T + params.b_in
    fexp = np.zeros(L + 1, dtype=np.int64)
    act_mean, act_std = np.empty(L), np.empty(L)
    saturation, dead = np.empty(L), np.empty(L)
    info = np.full(4, -1, dtype=np.int64)
    seg_info = np.full(4, -1, dtype=np.int64)
    if plan.recompute:
        ckpt = np.empty((len(segments) + 1, B, N), dtype=dt)  # h at every segment start, and h_L
        ckpt[0] = h0
        H = np.empty((seg + 1, B, N), dtype=dt)
        Z = np.empty((seg, B, N), dtype=dt)
        bn_mean, bn_rstd = np.zeros((seg, N), dtype=dt), np.ones((seg, N), dtype=dt)
    else:
        H = np.empty((L + 1, B, N), dtype=dt)
        H[0] = h0
        Z = np.empty((L, B, N), dtype=dt)
        bn_mean, bn_rstd = np.zeros((L, N), dtype=dt), np.ones((L, N), dtype=dt)

    def seg_arrays(j, s, e):
        """H, Z, bn_mean, bn_rstd of segment j (views)."""
        if plan.recompute:
            m = e - s
            return H[:m + 1], Z[:m], bn_mean[:m], bn_rstd[:m]
        return H[s:e + 1], Z[s:e], bn_mean[s:e], bn_rstd[s:e]

    n_work = 2 * len(segments)
    for j, (s, e) in enumerate(segments):
        if progress is not None and j:
            progress(j, n_work)
        W, b, gamma, beta, slope = layers.get(s, e)
        if j + 1 < len(segments):
            layers.prefetch(*segments[j + 1])
        Hs, Zs, ms, rs = seg_arrays(j, s, e)
        if plan.recompute:
            Hs[0] = ckpt[j]
        impl.stack_forward(icfg, fcfg, W, b, gamma, beta, slope, Hs, Zs, ms, rs, fexp[s:e + 1],
                           act_mean[s:e], act_std[s:e], saturation[s:e], dead[s:e], seg_info)
        if info[0] < 0 <= seg_info[0]:
            info[0] = s + seg_info[0]
        if plan.recompute:
            ckpt[j + 1] = Hs[e - s]
    hL = ckpt[-1] if plan.recompute else H[L]
    seconds["forward"] = time.perf_counter() - t

    # ---------------------------------------------------------------- loss and dL/dh_L
    extra_grads: dict[str, LogScaled] = {}
    sig_e = np.zeros(L + 1, dtype=np.int64)
    sig_m = np.empty(L + 1)
    zero_exp = np.zeros(1, dtype=np.int64)
    if stack.has_head:
        loss, G, dW_out, db_out = _head_loss(stack, hL, params, targets)
        G = np.ascontiguousarray(G, dtype=dt)
        loss_exact = LogScaled.from_float(loss)
        extra_grads["W_out"] = LogScaled(dW_out[None], zero_exp)
        extra_grads["b_out"] = LogScaled(db_out[None], zero_exp)
        e_top = 0
    else:
        m, e = np.frexp(0.5 * float(np.sum(np.square(hL, dtype=np.float64))))
        loss_exact = LogScaled(np.array(m), np.array(int(e) + 2 * int(fexp[L])))
        loss = float(loss_exact.to_float(warn=False))
        G = hL.copy()
        e_top = int(fexp[L])
    sig_e[L], sig_m[L] = top_signal(stack, G, e_top)
    if not np.all(np.isfinite(G)):
        info[1] = L

    # ---------------------------------------------------------------- backward, segment by segment
    t = time.perf_counter()
    gnorm_m = np.empty(L)
    keep = not plan.stats_only
    if keep:
        dW = np.empty((L, N, N), dtype=dt)
        db, dgamma, dbeta = (np.empty((L, N), dtype=dt) for _ in range(3))
        dslope = np.empty(L, dtype=dt)
    else:
        dW = np.empty((seg, N, N), dtype=dt)
        db, dgamma, dbeta = (np.empty((seg, N), dtype=dt) for _ in range(3))
        dslope = np.empty(seg, dtype=dt)
        hist = None
        if hist_bins:
            cdt = np.uint16 if N * N < 2**16 else np.uint32
            hist = dict(top=np.zeros(L, dtype=np.int64), counts=np.zeros((L, hist_bins), dtype=cdt),
                        below=np.zeros(L, dtype=np.int64), zeros=np.zeros(L, dtype=np.int64),
                        nonfinite=np.zeros(L, dtype=np.int64))
        # parameter-gradient clipping that acts layer by layer (value clipping is the same globally)
        layer_clip = stack.clip is not None and stack.clip_on != "signal"
        # the exponents of the (clipped) dW rows: per-layer clipping may move them
        e_grad = sig_e[1:] + fexp[:-1] if layer_clip else None
    scratch = None
    last = len(segments) - 1
    for j in range(last, -1, -1):
        if progress is not None:
            progress(len(segments) + last - j, n_work)
        s, e = segments[j]
        m = e - s
        W, b, gamma, beta, slope = layers.get(s, e)
        if j > 0:
            layers.prefetch(*segments[j - 1])
        Hs, Zs, ms, rs = seg_arrays(j, s, e)
        if plan.recompute and j != last:  # the top segment's activations are still in H, Z
            if scratch is None:
                scratch = [np.empty(seg) for _ in range(4)]
            Hs[0] = ckpt[j]
            impl.stack_forward(icfg, fcfg, W, b, gamma, beta, slope, Hs, Zs, ms, rs, fexp[s:e + 1].copy(),
                               *(a[:m] for a in scratch), np.full(4, -1, dtype=np.int64))
        if keep:
            grads_seg = (dW[s:e], db[s:e], dgamma[s:e], dbeta[s:e], dslope[s:e])
        else:
            grads_seg = (dW[:m], db[:m], dgamma[:m], dbeta[:m], dslope[:m])
        seg_info[1] = -1
        impl.stack_backward(icfg, fcfg, W, gamma, beta, slope, Hs, Zs, rs, fexp[s:e + 1], G, *grads_seg,
                            sig_m[s:e + 1], sig_e[s:e + 1], gnorm_m[s:e], seg_info)
        if info[1] < 0 <= seg_info[1]:
            info[1] = s + seg_info[1]
        if not keep:
            ts = time.perf_counter()
            e_w = sig_e[s + 1:e + 1] + fexp[s:e]
            if layer_clip:
                e_p = sig_e[s + 1:e + 1]
                g = {"W": LogScaled(grads_seg[0], e_w), "b": LogScaled(grads_seg[1], e_p),
                     "gamma": LogScaled(grads_seg[2], e_p), "beta": LogScaled(grads_seg[3], e_p),
                     "slope": LogScaled(grads_seg[4], e_w)}
                cw = clip_param_grads(stack.replace(clip_on="layer"), g)["W"]
                gm, e_w = cw.mantissa, cw.exponent
                gnorm_m[s:e] = _row_norms(cw).mantissa
                e_grad[s:e] = e_w
            else:
                gm = grads_seg[0]
            if hist is not None:
                _histogram(gm, e_w, hist_per_decade, hist_bins, hist["top"][s:e], hist["counts"][s:e],
                           hist["below"][s:e], hist["zeros"][s:e], hist["nonfinite"][s:e])
            seconds["stats"] += time.perf_counter() - ts
    seconds["backward"] = time.perf_counter() - t - seconds["stats"]
    seconds["generate"] = layers.seconds
    seconds["generate_cpu"] = layers.cpu_seconds

    # ---------------------------------------------------------------- the Result
    e_param, e_weight = sig_e[1:], sig_e[1:] + fexp[:-1]
    input_grad = G
    grad_hist = None
    if keep:
        grads = {
            "W": LogScaled(dW, e_weight),
            "b": LogScaled(db, e_param),
            "gamma": LogScaled(dgamma, e_param),
            "beta": LogScaled(dbeta, e_param),
            "slope": LogScaled(dslope, e_weight),
        }
        if params.W_in is not None:
            grads["W_in"] = LogScaled((G.T @ x)[None], sig_e[:1])
            grads["b_in"] = LogScaled(G.sum(axis=0)[None], sig_e[:1])
        grads.update(extra_grads)
        grad_norm = LogScaled(gnorm_m, e_weight.copy())
        if stack.clip is not None and stack.clip_on != "signal":
            grads = clip_param_grads(stack, grads)
            grad_norm = _row_norms(grads["W"])
        grads = Grads(**{k: (g if k in _LAYER_GROUPS[0] else g[0]) for k, g in grads.items()})
    else:
        grads = None
        grad_norm = LogScaled(gnorm_m, e_weight.copy() if e_grad is None else e_grad)
        if hist is not None:
            grad_hist = GradHistogram(per_decade=hist_per_decade, bins=hist_bins, **hist)
    if params.W_in is not None:
        input_grad = G @ params.W_in

    ffwd, fbwd = int(info[0]), int(info[1])
    seconds["total"] = time.perf_counter() - t_start
    extras = dict(checkpoint=plan.checkpoint, segments=len(segments), stats_only=plan.stats_only,
                  generated=generated, memory_estimate=plan.estimate, seconds=seconds)
    if progress is not None:
        progress(n_work, n_work)
    return Result(
        stack=stack,
        backend=name,
        loss=loss,
        loss_exact=loss_exact,
        grads=grads,
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
        extras=extras,
        grad_hist=grad_hist,
    )
