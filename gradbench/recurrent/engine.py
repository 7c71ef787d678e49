"""The recurrent engine: validates, plans, runs a backend's cell forward and backward segment by
segment through time, and gathers a :class:`~gradbench.recurrent.RecurrentResult`.

Written once for every backend: validation (before any kernel runs), memory planning and
checkpointing through time (a segment of steps per backend call; with ``checkpoint=k`` only the
states at segment starts are kept and each segment's forward is recomputed in the backward pass,
O(T/k + k) memory), the loss and its head (NumPy), clipping of parameter gradients. Backends
implement only the cell functions over the arrays of :mod:`gradbench.recurrent.abi`. A segment
[s, e) of steps passes ``H[s:e+1]`` (``H[s]`` its initial state), ``fexp[s:e+1]``,
``sig_e[s:e+1]`` (``sig_e[e]`` the exponent of the top signal, which the segment above has
already normalised and clipped, and whose ``clip_acted[e]`` it wrote; the top's is :func:`_top`'s)
and the gradient accumulators, which every segment extends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from gradbench import abi
from gradbench.activations import saturation_uncountable
from gradbench.buffers import WORKSPACE, held, take_internal
from gradbench.clipping import _clip_value, _scale_rows, row_norms
from gradbench.engine import underflowed_entries
from gradbench.inputs import check_array, check_param_arrays, check_progress, check_targets
from gradbench.logscaled import LogScaled, ldexp
from gradbench import loss as head_rows
from gradbench.loss import head_gradient
from gradbench.params import origin_words
from gradbench.plan import AUTO_FRACTION, LIMIT_FRACTION, PlanRefused, available_memory, check_memory_budget, size_text
from gradbench.recurrent import abi as rabi
from gradbench.recurrent.backends import get_backend, resolve
from gradbench.recurrent.params import GeneratedSequence, RecurrentParams, expected_shapes
from gradbench.recurrent.results import RecurrentGrads, RecurrentResult
from gradbench.recurrent.spec import Recurrent
from gradbench.reference import rescale_stats, signal_rows, sumsq_scaled

# What a step saves for the backward pass (arrays of the forward table), per cell.
SAVED = {"rnn": ("H", "Z"), "lstm": ("H", "C", "Z"), "gru": ("H", "Z", "HN")}
_STAT_NAMES = ("act_mean", "act_std", "saturation", "gate_mean", "gate_low")


def can_rescale_forward(rnn: Recurrent) -> bool:
    """The forward state carries power-of-two exponents: a vanilla cell with identity, relu or
    leaky_relu and the sum_squares probe (a head needs the true state)."""
    return rnn.homogeneous and not rnn.has_head


# ------------------------------------------------------------------ validation
def _check_array(name, a, shape, dtype, finite=True) -> np.ndarray:
    return check_array(name, a, shape, dtype, owner="net", kind="Recurrent", finite=finite)


def check_inputs(rnn, params, xs, targets=None, h0=None, c0=None):
    """Check everything before any kernel runs; return contiguous params, xs, targets, h0, c0."""
    if not isinstance(rnn, Recurrent):
        raise TypeError(f"rnn must be a gradbench.Recurrent, got {type(rnn).__name__}")
    if not isinstance(params, RecurrentParams):
        raise TypeError("params must be gradbench.RecurrentParams (from gb.init_params(rnn, seed)), "
                        f"got {type(params).__name__}")
    dt = rnn.np_dtype
    params = RecurrentParams(**check_param_arrays(params, expected_shapes(rnn), dt, owner="net",
                                                  unused="has no head", kind="Recurrent"), origin=params.origin,
                             drawn=params.drawn)
    T, D = rnn.steps, rnn.d_in
    if isinstance(xs, GeneratedSequence):
        if xs.rnn != rnn:
            raise ValueError("the GeneratedSequence was made for a different net: pass GeneratedSequence(rnn, batch, seed)")
    else:
        if not isinstance(xs, np.ndarray):
            raise TypeError(f"xs must be a numpy.ndarray of shape (steps={T}, batch, input_dim={D}) or a "
                            f"GeneratedSequence, got {type(xs).__name__}")
        if xs.ndim != 3 or xs.shape[0] != T or xs.shape[2] != D or xs.shape[1] < 1:
            raise ValueError(f"xs has shape {xs.shape}, expected (steps={T}, batch, input_dim={D}) with batch >= 1")
        xs = _check_array("xs", xs, None, dt)
    B, N = xs.shape[1], rnn.hidden
    if h0 is not None:
        h0 = _check_array("h0", h0, (B, N), dt)
    if c0 is not None:
        if rnn.cell != "lstm":
            raise ValueError(f"c0 is given but cell={rnn.cell!r} has no cell state (lstm only)")
        c0 = _check_array("c0", c0, (B, N), dt)
    return params, xs, _check_targets(rnn, targets, B), h0, c0


def _check_targets(rnn: Recurrent, t, B: int):
    lead = (rnn.steps, B) if rnn.loss_on == "every" else (B,)
    return check_targets(rnn, t, lead, where=f" on loss_on={rnn.loss_on!r}", owner="net", kind="Recurrent")


# ------------------------------------------------------------------ memory planning
def saved_per_step(rnn: Recurrent, batch: int) -> int:
    """Numbers a step saves for the backward pass: B*N times 2 (rnn), 6 (lstm), 5 (gru)."""
    return batch * rnn.hidden * {"rnn": 2, "lstm": 6, "gru": 5}[rnn.cell]


def default_segment(rnn: Recurrent) -> int:
    """About sqrt(T) steps per segment."""
    return max(1, min(rnn.steps, round(math.sqrt(rnn.steps))))


def memory_estimate(rnn: Recurrent, batch: int, *, checkpoint: int | None = None, generated: bool = False) -> int:
    """Bytes a run allocates besides the caller's input (an estimate).

    Plain: every step's saved values (:func:`saved_per_step`) and its (T+1) states. ``checkpoint=k``:
    one segment's worth and the states at the T/k segment starts. Per step ~11 statistics
    (float64/int64 each); a generated input holds one segment; the every-step head one segment
    of dL/dh and logits.
    """
    T, N, B = rnn.steps, rnn.hidden, batch
    item = rnn.np_dtype.itemsize
    seg = T if checkpoint is None else min(checkpoint, T)
    states = 0 if checkpoint is None else (T // seg + 2) * B * N * (2 if rnn.cell == "lstm" else 1)
    acts = seg * saved_per_step(rnn, B) + 2 * B * N
    work = 8 * B * rnn.gates * N + 2 * rnn.gates * N * (N + rnn.d_in)
    if generated:
        work += seg * B * rnn.d_in
    if rnn.has_head and rnn.loss_on == "every":
        work += seg * B * (N + 3 * rnn.output_dim)
    stats = 8 * 11 * (T + 1)
    return item * (states + acts + work) + stats


def leanest_segment(rnn: Recurrent, batch: int, *, generated: bool = False) -> int:
    """The segment length (a whole number of chunks, as the plan rounds it) whose checkpointed run
    needs the least memory: T/k kept states against k steps of saved values, k ~ sqrt(T c / s)
    for c numbers per state and s per step (:func:`memory_estimate`)."""
    T, K = rnn.steps, rabi.chunk_steps(batch)
    state = batch * rnn.hidden * (2 if rnn.cell == "lstm" else 1)
    per_step = saved_per_step(rnn, batch) + (batch * rnn.d_in if generated else 0)
    if rnn.has_head and rnn.loss_on == "every":
        per_step += batch * (rnn.hidden + 3 * rnn.output_dim)
    k0 = math.sqrt(T * state / per_step)
    near = {max(1, math.floor(k0 / K) + d) * K for d in (-1, 0, 1, 2)}
    candidates = sorted({min(T, k) for k in near} | {min(T, -(-default_segment(rnn) // K) * K)})
    return min(candidates, key=lambda k: (memory_estimate(rnn, batch, checkpoint=k, generated=generated), -k))


def fitting_segment(rnn: Recurrent, batch: int, limit: float, *, generated: bool = False) -> int | None:
    """A segment length whose checkpointed run fits in ``limit`` bytes: the default (about
    sqrt(T)) when it does, else the leanest (:func:`leanest_segment`); None when none does."""
    for k in (default_segment(rnn), leanest_segment(rnn, batch, generated=generated)):
        if memory_estimate(rnn, batch, checkpoint=k, generated=generated) <= limit:
            return k
    return None


@dataclass(frozen=True)
class Plan:
    segment: int
    recompute: bool
    estimate: int

    @property
    def checkpoint(self) -> int | None:
        return self.segment if self.recompute else None


def plan_run(rnn: Recurrent, batch: int, *, checkpoint="auto", stats_only=False, generated=False,
             memory_budget=None, available: int | None = None) -> Plan:
    """Segment length and recomputation, before anything is allocated.

    A run that would not fit is refused with :class:`gradbench.plan.PlanRefused` (a
    MemoryError: ``need``, ``limit``, ``budget`` in bytes and words, ``checkpoint`` the refused
    one, ``fits`` a checkpoint that fits or None), naming the checkpoint that fits if one does."""
    if not (checkpoint is None or (isinstance(checkpoint, str) and checkpoint == "auto")):
        if isinstance(checkpoint, bool) or not isinstance(checkpoint, (int, np.integer)):
            raise TypeError(f"checkpoint must be 'auto', None or an int, got {type(checkpoint).__name__} {checkpoint!r}")
        if checkpoint < 1:
            raise ValueError(f"checkpoint={checkpoint} must be a positive number of steps")
    memory_budget = check_memory_budget(memory_budget)
    avail = available_memory() + held() if available is None else available
    auto_budget = memory_budget if memory_budget is not None else AUTO_FRACTION * avail
    limit = memory_budget if memory_budget is not None else LIMIT_FRACTION * avail
    budget = "memory_budget" if memory_budget is not None else f"{LIMIT_FRACTION:.0%} of the available RAM"
    k_auto = default_segment(rnn)

    def est(ck):
        return memory_estimate(rnn, batch, checkpoint=ck, generated=generated)

    if isinstance(checkpoint, str):
        ck = k_auto if stats_only or est(None) > auto_budget else None
    else:
        ck = None if checkpoint is None else min(int(checkpoint), rnn.steps)
    need = est(ck)
    if need > limit:
        fits = fitting_segment(rnn, batch, limit, generated=generated)
        hint = f"; it fits with checkpoint={fits} (about {size_text(est(fits))})" if (
            fits is not None and fits != ck) else "; reduce steps, hidden or batch"
        exc = PlanRefused(
            f"this run ({rnn.cell}, {rnn.steps} step{'s' if rnn.steps != 1 else ''}, hidden {rnn.hidden}, batch {batch}, checkpoint={ck}) needs "
            f"about {size_text(need)} but the budget is {size_text(limit)} ({budget}){hint}",
            need=need, limit=limit, budget=budget)
        exc.checkpoint, exc.fits = ck, (fits if fits != ck else None)
        raise exc
    if ck is None:
        return Plan(rnn.steps, False, need)
    K = rabi.chunk_steps(batch)  # whole chunks per segment: the gradients are bitwise the plain run's
    ck = min(rnn.steps, -(-ck // K) * K)
    return Plan(ck, ck < rnn.steps, memory_estimate(rnn, batch, checkpoint=ck, generated=generated))


# ------------------------------------------------------------------ the head
def head_loss(rnn: Recurrent, h: np.ndarray, W_out, b_out, t, count: int, exact: bool = True):
    """The head on rows ``h`` (R, N): returns (loss share, the share as a LogScaled, dL/dh (R, N),
    dW_out, db_out).

    The loss is a mean over ``count`` samples (the batch for the last step, steps x batch for
    every step) and, for mse and bce, over the O outputs: mse (y - t)^2, bce softplus(y) - t y
    (from logits, stable), softmax_ce logsumexp(y) - y[t]. Computed in float64; dL/dy is rounded
    to the net's dtype. dL/dy without cancellation (:func:`gradbench.loss.head_gradient`), not
    scaled: it joins the signal of its step in plain float64 (the every-step head; the last
    step's alone is scaled, :func:`_last_head`). The share as a LogScaled is exact
    where the float under- or overflows (mse's squares of differences beyond 1e154 too; ``exact``
    False: the float's, for a caller that needs only the gradients).
    """
    y = (h @ W_out.T + b_out).astype(np.float64)
    loss, loss_exact, dy, _ = head_gradient(rnn.loss, y, t, count, scale=False, exact=exact)
    dy = dy.astype(h.dtype)
    return loss, loss_exact, dy @ W_out, (dy.T @ h).astype(np.float64), dy.sum(axis=0, dtype=np.float64)


def _last_head(rnn: Recurrent, h: np.ndarray, f: int, params, t):
    """The head on the last state h_{T-1} = h 2^f alone (``loss_on="last"``): the stacks' head
    (:func:`gradbench.loss.head_loss`), dL/dy carrying a power of two per sample: a confident
    right answer's 1e-48 in float32, or e^-760 in float64, is carried, not flushed to 0 (it read
    0 at every step, and "stable"), nor a sample right by a margin of 800 beside one that is
    wrong. Returns (loss, loss as LogScaled, dL/dh mantissas, their exponents (B,), dW_out and its
    exponent, db_out and its exponent); the loss is a mean over the batch, the rows of ``h``."""
    loss, loss_exact, G, E, dW_out, e_w, db_out, e_b = head_rows.head_loss(rnn, h, f, params, t)
    return loss, loss_exact, G, E, dW_out.astype(np.float64), e_w, db_out.astype(np.float64), e_b


def _add_exact(a: LogScaled, b: LogScaled) -> LogScaled:
    """a + b of two scalar LogScaled values, each brought to the larger exponent first (the
    residual-add rule; a zero term is skipped): the every-step loss's sum over its shares."""
    ma, mb = float(a.mantissa), float(b.mantissa)
    if mb == 0:
        return a
    if ma == 0:
        return b
    ea, eb = int(a.exponent), int(b.exponent)
    top = max(ea, eb)
    m, e = np.frexp(float(ldexp(np.float64(ma), np.int64(ea - top))) + float(ldexp(np.float64(mb), np.int64(eb - top))))
    return LogScaled(np.array(m), np.array(int(e) + top))


# ------------------------------------------------------------------ the pass
def backprop(rnn: Recurrent, params: RecurrentParams, xs, targets=None, *, backend: str = "auto", h0=None, c0=None,
             checkpoint="auto", stats_only: bool = False, memory_budget: int | None = None,
             progress=None, carried: bool | None = None) -> RecurrentResult:
    """Forward and backward through time, exact at any length (see ``gradbench.backprop``).

    Parameters
    ----------
    rnn : Recurrent
    params : RecurrentParams
        From :func:`gradbench.init_params` (or trained), of the net's dtype.
    xs : ndarray (T, B, D) or GeneratedSequence
    targets : ndarray, optional
        With a head: (B, O) (or class labels (B,)) for ``loss_on="last"``, (T, B, O) (or (T, B))
        for ``"every"``.
    backend : {"numpy", "numba", "c", "auto"}
    h0, c0 : ndarray (B, N), optional
        Initial state (c0: LSTM only); zeros by default.
    checkpoint : "auto", int or None
        Steps per segment whose forward is recomputed in the backward pass (keeping only the
        states at segment starts), rounded up to a multiple of ceil(256 / B) (the chunk of steps
        whose gradient products the Numba and C backends batch: then every result is bitwise the
        plain run's). "auto": only when the plain run would need more than ``memory_budget``
        (default half of the available RAM), with k ~ sqrt(T).
    stats_only : bool
        Segment the run by default (k ~ sqrt(T)) even when it would fit: for 10^5-10^6 steps.
        The parameter gradients are kept (they are small); no per-step arrays are.
    memory_budget : int, optional
    progress : callable, optional
        ``progress(done, total)`` after every segment of both passes (and of the carried one).
    carried : bool, optional
        With ``loss_on="every"`` (default True there): a second backward pass from the last
        step's loss alone, the gradient that the recurrence carries back
        (``carried_signal_norm``, ``carried_grad_norm``). ||dL/dh_t|| of the every-step loss is
        mostly step t's own loss term and stays flat however fast the carried part vanishes;
        how far back credit reaches is the carried part's. False skips it (a third less work),
        and :func:`gradbench.diagnose` then refuses the result (its verdict would be read from the
        flat every-step ||dL/dh_t||). True needs ``loss_on="every"``; False is accepted for any net.
    """
    t_start = time.perf_counter()
    params, xs, targets, h0, c0 = check_inputs(rnn, params, xs, targets, h0, c0)
    if not isinstance(stats_only, (bool, np.bool_)):
        raise TypeError(f"stats_only must be a bool, got {stats_only!r}")
    check_progress(progress)
    every = rnn.has_head and rnn.loss_on == "every"
    if carried is None:
        carried = every
    elif not isinstance(carried, (bool, np.bool_)):
        raise TypeError(f"carried must be a bool or None, got {carried!r}")
    elif carried and not every:
        raise ValueError("carried=True needs a head with loss_on='every' (with one loss at the last step, "
                         "signal_norm is already the carried gradient)")
    name = resolve(backend)
    impl = get_backend(name)
    B = xs.shape[1]
    plan = plan_run(rnn, B, checkpoint=checkpoint, stats_only=stats_only,
                    generated=isinstance(xs, GeneratedSequence), memory_budget=memory_budget)
    run = _Run(rnn, params, xs, targets, impl, plan, progress, B, carried=bool(carried))
    try:
        with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
            run.start(h0, c0)
            _forward(run)
            _top(run)
            T = rnn.steps
            top = (run.G.copy(), None if run.GC is None else run.GC.copy(), int(run.sig_e[T]), int(run.clip_acted[T]),
                   run.row_e.copy())
            _backward(run)
            if run.carried:
                _carried(run, top, T)
            return _assemble(run, name, t_start)
    finally:  # the saved values and checkpoints (never returned) serve the next call of these shapes
        WORKSPACE.give(getattr(run, "internal", []))


@dataclass(eq=False)
class _Run:
    rnn: Recurrent
    params: RecurrentParams
    xs: object
    targets: object
    impl: object
    plan: Plan
    progress: object
    B: int
    carried: bool = False
    seconds: dict = field(default_factory=lambda: dict(forward=0.0, backward=0.0))

    def start(self, h0, c0):
        rnn, B = self.rnn, self.B
        T, N, D, GN, dt = rnn.steps, rnn.hidden, rnn.d_in, rnn.gates * rnn.hidden, rnn.np_dtype
        k = self.plan.segment
        self.segments = [(s, min(s + k, T)) for s in range(0, T, k)]
        self.fwd_name, self.bwd_name = rabi.CELL_FUNCTIONS[rnn.cell]
        self.rescale = can_rescale_forward(rnn)
        self.icfg, self.fcfg = rabi.kernel_config(rnn, self.rescale, B)
        kept = k if self.plan.recompute else T
        # internal arrays (the saved values, the checkpoints; never returned) come from the
        # stacks' workspace (gradbench.buffers): small pages, reused by the next call of these shapes
        contract = abi.CONTRACTS[self.fwd_name]
        dims = dict(T=kept, B=B, N=N, D=D, GN=GN)
        self.internal = []
        self.saved = {a.name: self._take(abi.shape_of(a, dims, contract.consts), dt)
                      for a in contract.args if a.name in SAVED[rnn.cell]}
        lstm = rnn.cell == "lstm"
        nck = len(self.segments) + 1 if self.plan.recompute else 0
        self.ckpt_h = self._take((nck, B, N), dt)
        self.ckpt_c = self._take((nck, B, N), dt) if lstm else None
        first_h = self.ckpt_h[0] if self.plan.recompute else self.saved["H"][0]
        first_h[...] = 0 if h0 is None else h0
        if lstm:
            first_c = self.ckpt_c[0] if self.plan.recompute else self.saved["C"][0]
            first_c[...] = 0 if c0 is None else c0
        self.fexp = np.zeros(T + 1, dtype=np.int64)
        self.stats = {n: np.empty(T) for n in _STAT_NAMES}
        # sigmoid cell state entries that underflowed (engine.underflowed_entries)
        self.flushed = np.zeros(T, dtype=np.int64) if rnn.cell == "rnn" and rnn.act == "sigmoid" else None
        self.sig_m, self.csig_m = np.empty(T + 1), np.full(T + 1, np.nan)
        self.sig_e = np.zeros(T + 1, dtype=np.int64)
        self.gnorm_m = np.empty(T)
        self.gnorm_e = np.zeros(T, dtype=np.int64)
        self.clip_acted = np.zeros(T + 1, dtype=np.int64)  # per state dL/dH[j]: did its signal clip act
        self.info = np.full(abi.INFO_SIZE, -1, dtype=np.int64)
        self.work = (3 if self.carried else 2) * len(self.segments)
        self.carried_norms = None
        self.loss_every = 0.0
        self.loss_every_exact = LogScaled(np.array(0.0), np.array(0))  # its exact sum (where the float is not)
        self.e_out = (0, 0)  # the powers of two of a last-step head's dW_out and db_out (_last_head)
        self.row_e = np.zeros(B, dtype=np.int64)  # the backward state's rows: 2**(sig_e + row_e) each
        self.x_buf = np.empty((k, B, D), dtype=dt) if isinstance(self.xs, GeneratedSequence) else None

    def _take(self, shape, dtype) -> np.ndarray:
        return take_internal(shape, dtype, self.internal)

    def tick(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, self.work)

    def x(self, s: int, e: int) -> np.ndarray:
        if self.x_buf is not None:
            return self.xs.steps(s, e, out=self.x_buf[: e - s])
        return self.xs[s:e]

    def seg_saved(self, s: int, e: int) -> dict:
        """The saved arrays of segment [s, e) (views)."""
        if self.plan.recompute:
            m = e - s
            return {n: (a[: m + 1] if n in ("H", "C") else a[:m]) for n, a in self.saved.items()}
        return {n: (a[s:e + 1] if n in ("H", "C") else a[s:e]) for n, a in self.saved.items()}

    @property
    def h_top(self) -> np.ndarray:
        return self.ckpt_h[-1] if self.plan.recompute else self.saved["H"][self.rnn.steps]


def _call(fn, table_name: str, arrays: dict) -> None:
    fn(**{a.name: arrays[a.name] for a in abi.CONTRACTS[table_name].args})


def _segment_forward(run: _Run, j: int, stats: dict, info: np.ndarray) -> dict:
    """One backend forward call over segment j (its initial state set from the checkpoints)."""
    s, e = run.segments[j]
    seg = run.seg_saved(s, e)
    if run.plan.recompute:
        seg["H"][0] = run.ckpt_h[j]
        if run.ckpt_c is not None:
            seg["C"][0] = run.ckpt_c[j]
    p = run.params
    arrays = dict(seg, icfg=run.icfg, fcfg=run.fcfg, X=run.x(s, e), W_ih=p.W_ih, W_hh=p.W_hh, b_ih=p.b_ih,
                  b_hh=p.b_hh, fexp=run.fexp[s:e + 1], info=info, **stats)
    _call(getattr(run.impl, run.fwd_name), run.fwd_name, arrays)
    rescale_stats(stats["act_mean"], stats["act_std"], seg["H"])  # sums or squares beyond float64, as for the stacks
    return seg


def _uncountable_fractions(run: _Run, s: int, e: int, Z: np.ndarray) -> None:
    """NaN for ``saturation`` and ``gate_low`` of the segment's steps whose entries the kernels
    cannot count, in place (the stacks' :func:`gradbench.engine._uncountable_fractions`).

    The kernels count |phi'(z)| < 1 % of its largest value and gates below 0.1, comparisons that read a NaN
    as False: a step of NaN pre-activations showed "0.0 %" saturated. Such a step's saturation is
    NaN; and so is a swish or GELU cell's with a z = -inf, whose phi' the kernels evaluate as
    inf * 0 = NaN though its limit is 0. Other infinite z count by their limits. Both give a NaN
    in h_t, so only steps whose act_mean or act_std is NaN are looked at. ``gate_low`` is NaN
    where a gate is, i.e. where ``gate_mean`` is (sigmoid gates are never infinite).
    """
    st = run.stats
    np.copyto(st["gate_low"][s:e], np.nan, where=np.isnan(st["gate_mean"][s:e]))
    act = run.rnn.act if run.rnn.cell == "rnn" else "tanh"  # the gated cells' tanh: limits count
    for i in np.flatnonzero(np.isnan(st["act_mean"][s:e]) | np.isnan(st["act_std"][s:e])):
        if saturation_uncountable(Z[i], act):
            st["saturation"][s + i] = np.nan


def _forward(run: _Run) -> None:
    t = time.perf_counter()
    rnn, T = run.rnn, run.rnn.steps
    seg_info = np.full(abi.INFO_SIZE, -1, dtype=np.int64)
    every = rnn.has_head and rnn.loss_on == "every"
    for j, (s, e) in enumerate(run.segments):
        if j:
            run.tick(j)
        seg_info[abi.INFO_FORWARD] = -1
        seg = _segment_forward(run, j, {n: a[s:e] for n, a in run.stats.items()}, seg_info)
        _uncountable_fractions(run, s, e, seg["Z"])
        if run.flushed is not None:
            # a sigmoid cell's state entries that underflowed (extras["flushed_states"])
            run.flushed[s:e] = underflowed_entries(seg["H"][1:e - s + 1], run.stats["saturation"][s:e])
        if run.info[abi.INFO_FORWARD] < 0 <= seg_info[abi.INFO_FORWARD]:
            run.info[abi.INFO_FORWARD] = s + seg_info[abi.INFO_FORWARD]
        if run.plan.recompute:
            run.ckpt_h[j + 1] = seg["H"][e - s]
            if run.ckpt_c is not None:
                run.ckpt_c[j + 1] = seg["C"][e - s]
        if every:  # the loss of steps s..e-1 (their states are H[1:] of the segment), chunk by chunk
            for a, b in _chunks(run, s, e):
                h = seg["H"][a - s + 1:b - s + 1].reshape(-1, rnn.hidden)
                share, share_exact = head_loss(rnn, h, run.params.W_out, run.params.b_out,
                                               _rows(rnn, run.targets[a:b]), T * run.B)[:2]
                run.loss_every += share
                run.loss_every_exact = _add_exact(run.loss_every_exact, share_exact)
    run.seconds["forward"] = time.perf_counter() - t


def _chunks(run: _Run, s: int, e: int, top_down: bool = False):
    """[a, b) pieces of [s, e) cut at the multiples of the chunk size K: the every-step head sums
    its loss and gradients piece by piece, in an order that does not depend on the segments
    (which start at multiples of K), so checkpointed runs give the plain run's bits."""
    K = int(run.icfg[rabi.RI_CHUNK])
    cuts = [s] + list(range((s // K + 1) * K, e, K)) + [e]
    pieces = [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    return pieces[::-1] if top_down else pieces


def _rows(rnn: Recurrent, t: np.ndarray) -> np.ndarray:
    """Every-step targets (m, B, ...) as rows (m*B, ...)."""
    return t.reshape((-1,) + t.shape[2:])


def _top(run: _Run) -> None:
    """The loss, dL/dh_{T-1} (and the part of dL/dc_{T-1} carried back from a c_T: 0) into run.G,
    run.GC, normalised and clipped once (whether the clip acted into run.clip_acted[T])."""
    rnn, T, N, B = run.rnn, run.rnn.steps, run.rnn.hidden, run.B
    hT, p = run.h_top, run.params
    run.dW_out = run.db_out = None
    if not rnn.has_head:  # 0.5 ||h_T||^2 with no square lost (the plain sum's bits where it is safe)
        s, es = sumsq_scaled(hT)
        m, e = np.frexp(0.5 * s)
        run.loss_exact = LogScaled(np.array(m), np.array(int(e) + 2 * (es + int(run.fexp[T]))))
        run.loss = float(run.loss_exact.to_float(warn=False))
        G, e_top = hT.copy(), int(run.fexp[T])
    else:
        every = rnn.loss_on == "every"
        t = run.targets[T - 1] if every else run.targets
        if every:
            loss, loss_exact, G, run.dW_out, run.db_out = head_loss(rnn, hT, p.W_out, p.b_out, t, T * B)
            e_top = 0
        else:  # one head at the end: its dL/dy carries a power of two per sample, as a stack's head does
            loss, loss_exact, G, e_top, run.dW_out, e_w, run.db_out, e_b = _last_head(rnn, hT, int(run.fexp[T]), p, t)
            run.e_out = (e_w, e_b)
        run.loss = run.loss_every if every else loss
        run.loss_exact = loss_exact
        if every:  # the float sum where it is a normal float, else the exact sum of the shares
            tiny_ok = np.finfo(np.float64).tiny <= run.loss < np.inf or run.loss != run.loss
            run.loss_exact = LogScaled.from_float(run.loss) if tiny_ok else run.loss_every_exact
        G = np.ascontiguousarray(G, dtype=rnn.np_dtype)
    GC = np.zeros((B, N), dtype=rnn.np_dtype) if rnn.cell == "lstm" else None
    g = G if GC is None else np.concatenate([G, GC], axis=1)
    r = np.zeros(B, dtype=np.int64) + e_top
    e, run.clip_acted[T] = signal_rows(g, r, int(run.icfg[rabi.RI_CLIP]), rnn.clip_threshold)
    if GC is not None:
        G, GC = np.ascontiguousarray(g[:, :N]), np.ascontiguousarray(g[:, N:])
    run.G, run.GC = G, GC
    run.sig_e[T] = e
    run.row_e[:] = r - e
    run.live_top = _live_rows(G)  # samples with a gradient at the top (lost_samples)
    if not np.all(np.isfinite(g)):
        run.info[abi.INFO_BACKWARD] = T


def _lost_samples(run: _Run) -> int | None:
    """Samples whose backward state is non-zero at the top and exactly zero at the initial state
    (dL/dh_{-1} and the LSTM's dL/dc_{-1}): dead units, or an exact zero of the sample's own
    chain (each row carries its own exponent: never flushed by the batch's larger samples). With
    a loss at every step, whose gradients enter at every step, those of the carried pass (the
    last step's loss alone, :func:`_carried`), None without it."""
    if run.rnn.has_head and run.rnn.loss_on == "every":
        return getattr(run, "carried_lost", None)  # the last step's loss alone (the carried pass)
    return int(np.count_nonzero(run.live_top & ~_live_rows(run.G, run.GC)))


def _live_rows(G: np.ndarray, GC: np.ndarray | None = None) -> np.ndarray:
    """Whether each sample's backward state (a row of G, and of the LSTM's GC) has an entry other
    than 0 (NaN counts)."""
    live = np.logical_or.reduce(G, axis=1)
    return live if GC is None else live | np.logical_or.reduce(GC, axis=1)


def _backward(run: _Run, inject: bool = True) -> None:
    """The backward pass through time; ``inject=False``: without the every-step loss's own
    gradients at each step (the carried pass, :func:`_carried`), which runs after the first."""
    t0 = time.perf_counter()
    rnn, T, B, N, dt = run.rnn, run.rnn.steps, run.B, run.rnn.hidden, run.rnn.np_dtype
    GN, D = rnn.gates * N, rnn.d_in
    run.grads = dict(dW_ih=np.zeros((GN, D), dt), dW_hh=np.zeros((GN, N), dt), db_ih=np.zeros(GN, dt),
                     db_hh=np.zeros(GN, dt))
    run.dexp = np.full(rabi.DE_SIZE, rabi.EXP_EMPTY, dtype=np.int64)
    every = rnn.has_head and rnn.loss_on == "every"  # the kernels take T rows of DH then (zeros: carried)
    dh_unused = np.zeros((1, B, N), dtype=dt)
    seg_info = np.full(abi.INFO_SIZE, -1, dtype=np.int64)
    last = len(run.segments) - 1
    done = (1 if inject else 2) * len(run.segments)
    for j in range(last, -1, -1):
        run.tick(done + last - j)
        s, e = run.segments[j]
        # the top segment's values are still there after the forward, not after a backward
        if run.plan.recompute and (j != last or not inject):
            scratch = {n: np.empty(e - s) for n in _STAT_NAMES}
            seg = _segment_forward(run, j, scratch, np.full(abi.INFO_SIZE, -1, dtype=np.int64))
        else:
            seg = run.seg_saved(s, e)
        DH = dh_unused
        if every:  # the head's direct gradient at H[j], j = s..e-1 (H[0] = h_{-1} has none)
            DH = np.zeros((e - s, B, N), dtype=dt)
            for a, b in _chunks(run, max(s, 1), e, top_down=True) if inject else ():
                h = seg["H"][a - s:b - s].reshape(-1, N)
                _, _, dh, dW, db = head_loss(rnn, h, run.params.W_out, run.params.b_out,
                                             _rows(rnn, run.targets[a - 1:b - 1]), T * B, exact=False)
                DH[a - s:b - s] = dh.reshape(-1, B, N)
                run.dW_out += dW
                run.db_out += db
        seg_info[abi.INFO_BACKWARD] = -1
        arrays = dict(seg, icfg=run.icfg, fcfg=run.fcfg, X=run.x(s, e), W_hh=run.params.W_hh,
                      fexp=run.fexp[s:e + 1], DH=DH, G=run.G, GC=run.GC, row_e=run.row_e, dexp=run.dexp, sig_m=run.sig_m[s:e + 1],
                      sig_e=run.sig_e[s:e + 1], csig_m=run.csig_m[s:e + 1], gnorm_m=run.gnorm_m[s:e],
                      gnorm_e=run.gnorm_e[s:e], clip_acted=run.clip_acted[s:e + 1], info=seg_info,
                      **run.grads)
        _call(getattr(run.impl, run.bwd_name), run.bwd_name, arrays)
        if run.info[abi.INFO_BACKWARD] < 0 <= seg_info[abi.INFO_BACKWARD]:
            run.info[abi.INFO_BACKWARD] = s + seg_info[abi.INFO_BACKWARD]
    run.seconds["backward" if inject else "carried"] = time.perf_counter() - t0


def _carried(run: _Run, top: tuple, T: int) -> None:
    """The backward pass again from the last step's loss alone (``top``: dL/dh_{T-1}, dL/dc_{T-1},
    their exponent, whether the clip acted on them and their rows' exponents, as :func:`_top`
    left them), into
    run.carried_norms: what the recurrence carries back, without the every-step loss's own
    gradients, and where the signal clip acted on it. The first pass's results stay."""
    first = {k: getattr(run, k) for k in ("G", "GC", "row_e", "sig_m", "sig_e", "csig_m", "gnorm_m", "gnorm_e", "grads",
                                          "dexp", "clip_acted")}
    info = int(run.info[abi.INFO_BACKWARD])
    run.G, run.GC, run.row_e = top[0], top[1], top[4]
    run.sig_m, run.csig_m = np.empty(T + 1), np.full(T + 1, np.nan)
    run.sig_e = np.zeros(T + 1, dtype=np.int64)
    run.sig_e[T] = top[2]
    run.clip_acted = np.zeros(T + 1, dtype=np.int64)
    run.clip_acted[T] = top[3]  # the same top state as the first pass's, clipped once by _top
    run.gnorm_m, run.gnorm_e = np.empty(T), np.zeros(T, dtype=np.int64)
    live = _live_rows(top[0], top[1])  # (before the pass: run.G is top[0], written in place)
    try:
        _backward(run, inject=False)
        run.carried_lost = int(np.count_nonzero(live & ~_live_rows(run.G, run.GC)))
        run.carried_norms = (LogScaled(run.sig_m[1:].copy(), run.sig_e[1:].copy()), LogScaled(run.gnorm_m, run.gnorm_e),
                             LogScaled(run.csig_m[1:].copy(), run.sig_e[1:].copy()) if run.rnn.cell == "lstm" else None,
                             run.clip_acted.astype(bool))
    finally:
        for k, v in first.items():
            setattr(run, k, v)
        run.info[abi.INFO_BACKWARD] = info


# ------------------------------------------------------------------ parameter-gradient clipping
def clip_param_grads(rnn: Recurrent, grads: dict[str, LogScaled]) -> dict[str, LogScaled]:
    """``clip`` on ``clip_on="matrix"`` (each gradient on its own) or ``"global"`` (all by one
    factor c / total when the total norm exceeds c), on exact values; value clipping is the
    same for both (every entry to [-c, c])."""
    c = rnn.clip_threshold
    rows = {k: LogScaled(g.mantissa[None], np.atleast_1d(g.exponent)) for k, g in grads.items()}
    if rnn.clip == "value":
        return {k: _clip_value(g, c)[0] for k, g in rows.items()}
    norms = {k: row_norms(g) for k, g in rows.items()}
    out = {}
    if rnn.clip_on == "matrix":
        for k, g in rows.items():
            n = norms[k]
            over = ldexp(n.mantissa, n.exponent) > c
            factor = np.where(over, c / np.where(over, n.mantissa, 1.0), 1.0)
            out[k] = _scale_rows(g, factor, np.where(over, -n.exponent, 0))[0]
        return out
    em = int(max(n.exponent[0] for n in norms.values()))
    total = math.sqrt(sum(float(ldexp(n.mantissa, n.exponent - em)[0]) ** 2 for n in norms.values()))
    if not ldexp(np.float64(total), np.int64(em)) > c:
        return dict(grads)
    return {k: _scale_rows(g, np.array([c / total]), np.array([-em]))[0] for k, g in rows.items()}


def _assemble(run: _Run, name: str, t_start: float) -> RecurrentResult:
    rnn, T, fexp, sig_e = run.rnn, run.rnn.steps, run.fexp, run.sig_e
    dexp = np.where(run.dexp == rabi.EXP_EMPTY, 0, run.dexp)
    g = {"W_ih": LogScaled(run.grads["dW_ih"], dexp[rabi.DE_W_IH]), "W_hh": LogScaled(run.grads["dW_hh"], dexp[rabi.DE_W_HH]),
         "b_ih": LogScaled(run.grads["db_ih"], dexp[rabi.DE_B_IH]), "b_hh": LogScaled(run.grads["db_hh"], dexp[rabi.DE_B_HH])}
    if rnn.has_head:
        dt = rnn.np_dtype
        e_w, e_b = (int(e) for e in run.e_out)
        g["W_out"] = LogScaled(run.dW_out.astype(dt), np.int64(e_w))
        g["b_out"] = LogScaled(run.db_out.astype(dt), np.int64(e_b))
    if rnn.clip is not None and rnn.clip_on != "signal":
        g = clip_param_grads(rnn, g)
    ffwd, fbwd = (int(run.info[i]) for i in (abi.INFO_FORWARD, abi.INFO_BACKWARD))
    lstm = rnn.cell == "lstm"
    clipped = bool(abi.signal_clip(rnn))  # a signal clip: the kernels' record of where it acted
    run.seconds["total"] = time.perf_counter() - t_start
    run.tick(run.work)
    st = run.stats
    return RecurrentResult(
        rnn=rnn, backend=name, loss=run.loss, loss_exact=run.loss_exact, grads=RecurrentGrads(**g),
        signal_norm=LogScaled(run.sig_m[1:].copy(), sig_e[1:].copy()),
        cell_signal_norm=LogScaled(run.csig_m[1:].copy(), sig_e[1:].copy()) if lstm else None,
        grad_norm=LogScaled(run.gnorm_m, run.gnorm_e),
        h0_grad=LogScaled(run.G, sig_e[0] + run.row_e),  # one exponent per sample
        c0_grad=LogScaled(run.GC, sig_e[0] + run.row_e) if lstm else None,
        output=LogScaled(run.h_top.copy(), fexp[T]),
        act_mean=LogScaled(st["act_mean"], fexp[1:].copy()), act_std=LogScaled(st["act_std"], fexp[1:].copy()),
        saturation=st["saturation"], gate_mean=st["gate_mean"], gate_low=st["gate_low"],
        first_nonfinite_forward=None if ffwd < 0 else ffwd,
        first_nonfinite_backward=None if fbwd < 0 else fbwd - 1,
        forward_rescaled=run.rescale,
        extras=dict(checkpoint=run.plan.checkpoint, segments=len(run.segments), memory_estimate=run.plan.estimate,
                    seconds=run.seconds, weights=origin_words(run.params, rnn), lost_samples=_lost_samples(run),
                    **({"carried_cell_signal_norm": run.carried_norms[2]} if run.carried_norms and lstm else {}),
                    **({"flushed_states": run.flushed} if run.flushed is not None else {})),
        carried_signal_norm=run.carried_norms[0] if run.carried_norms else None,
        carried_grad_norm=run.carried_norms[1] if run.carried_norms else None,
        signal_clip_acted=run.clip_acted.astype(bool) if clipped else None,
        carried_signal_clip_acted=run.carried_norms[3] if run.carried_norms and clipped else None,
    )
