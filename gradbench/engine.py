"""The engine: validates, plans, runs a backend's forward and backward segment by segment, and
gathers a :class:`~gradbench.Result`.

Everything that is the same for every backend lives here or in the modules it calls, written
once: input validation (:mod:`gradbench.inputs`), memory planning (:mod:`gradbench.plan`), the
optional input layer and the loss at the top (:mod:`gradbench.loss`, one matrix product each, in
NumPy), clipping of parameter gradients (:mod:`gradbench.clipping`) and the streaming
histograms (:mod:`gradbench.histograms`). Backends implement only the stack's forward and
backward over the arrays of :mod:`gradbench.abi`, and the engine calls them on segments of
layers: slices of the layer arrays (``W[s:e]``, ``H[s:e+1]``, ``fexp[s:e+1]``, ``sig_e[s:e+1]``,
...). ``fexp[s]`` is the input exponent of a segment's forward, ``sig_e[e]`` the exponent of its
top signal (row i of G at ``sig_e[e] + row_e[i]``: ``row_e`` (B,) goes whole to every segment, and
each segment leaves it relative to its ``sig_e[s]``), which the segment above has already
normalised and clipped (and whose ``clip_acted[e]``
it wrote; the top's is the engine's, :func:`gradbench.loss.top_signal`). The gradients are
bitwise those of the one-piece run, for every backend.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache, partial
from dataclasses import dataclass, field

import numpy as np

from gradbench import abi, reference
from gradbench.activations import dphi, saturation_uncountable
from gradbench.backends import get_backend, resolve
from gradbench.buffers import PREFAULTER, WORKSPACE, empty, held, take_internal
from gradbench.clipping import LAYER_GROUPS, clip_param_grads, row_norms
from gradbench.histograms import (DEFAULT_BINS, DEFAULT_PER_DECADE, MAX_BINS, MAX_PER_DECADE, GradHistogram,
                                  fill_streaming)
from gradbench.inputs import all_finite, check_inputs, check_progress
from gradbench.logscaled import LogScaled
from gradbench.loss import head_loss, top_signal
from gradbench.params import GeneratedParams, Params, origin_words, probe_and_size
from gradbench.plan import Plan, available_memory, plan_run, z_in_gradients
from gradbench.results import Grads, Result
from gradbench.spec import RELU_FAMILY, Stack, units_die
from gradbench.supply import LayerSupply, buffer_shapes


# Activations that can grow (or shrink) without bound under biases: rescaled with or without them.
# tanh and sigmoid are bounded; with biases they keep the forward signal O(1).
BIAS_ROWS = frozenset({"identity", "relu", "leaky_relu", "prelu", "elu", "selu", "swish", "gelu"})


def can_rescale_forward(stack: Stack, params: Params | GeneratedParams) -> bool:
    """Whether the forward pass carries power-of-two exponents (h_l = H[l] * 2**fexp[l]).

    True for stacks without batch norm whose activations can shrink or grow without bound:
    with zero biases every activation but sigmoid; with biases every one but sigmoid and tanh
    (:data:`BIAS_ROWS`). Only exponents keep these exact (positively homogeneous activations are
    rescaled exactly; tanh, ELU, SELU, swish and GELU through
    :func:`gradbench.activations.phi_scaled`). A bias enters each row at that row's exponent (b
    2^-f, :func:`gradbench.reference.bias_rows`), so an exploding stack with biases (ReLU at
    sigma_w = 3 grows ~0.32 decades a layer, past 10^308 at layer ~960) is exact as a zero-bias
    one is. A row more than ~2^1020 (float32 2^124) below the bias (inputs that tiny, a GELU or
    swish row deep in its negative tail) is first brought up to that floor
    (:func:`gradbench.reference.raise_rows`): its leading bits are kept down to the dtype's
    smallest subnormal there, as plain arithmetic keeps them beside the bias. Not rescaled:
    sigmoid (phi(0) = 1/2) and batch norm, which keep the forward signal O(1), and tanh with
    biases (bounded).

    Should a rescaled forward with biases still turn non-finite (a NaN), :func:`backprop` runs
    it again without rescaling, as plain arithmetic, and reports that run.
    """
    if stack.batch_norm or stack.activation == "sigmoid":
        return False
    return stack.activation in BIAS_ROWS or params.zero_bias  # the name first: zero_bias reads every bias


# ------------------------------------------------------------------ the pass
def backprop(stack: Stack, params: Params | GeneratedParams, x: np.ndarray, targets=None, *,
             backend: str = "auto", checkpoint="auto", stats_only: bool = False,
             memory_budget: int | None = None, hist_bins: int = DEFAULT_BINS,
             hist_per_decade: int = DEFAULT_PER_DECADE, progress=None) -> Result:
    """Forward and backward through ``stack``, exact at any depth.

    Parameters
    ----------
    stack : Stack
    params : Params or GeneratedParams
        From :func:`gradbench.init_params` (or trained), arrays of the stack's dtype; or
        :class:`gradbench.GeneratedParams` (weights generated per layer, never stored).
    x : ndarray (B, D)
        The input batch, of the stack's dtype.
    targets : ndarray, optional
        (B, O) for mse and bce, integer labels (B,) for softmax_ce; none for sum_squares.
    backend : str
        ``"numpy"`` (the reference), ``"numba"``, ``"c"`` or ``"auto"`` (fastest available).
    checkpoint : "auto", int or None
        Store every k-th activation and recompute the segments in the backward pass
        (a multiple of the residual group size). ``"auto"``: with k ~ sqrt(L), when the plain
        run would need more than ``memory_budget`` (default half of the available RAM), and
        for a ``stats_only`` run whose activations ((2L+1) B N numbers) take more than
        :data:`gradbench.plan.SMALL_RUN_BYTES` (64 MiB; the budget if it is smaller); a
        smaller ``stats_only`` run keeps them all, faster than the recomputed forward
        (:func:`gradbench.plan.plan_run`). The gradients are bitwise those of the plain run.
    stats_only : bool
        Keep per-layer statistics only (``grad_norm``, ``signal_norm``, activation statistics,
        saturation, dead units, ``grad_hist``); ``Result.grads`` is then ``None``. Clipping of
        parameter gradients by value (per layer or global) and by norm per layer is applied to
        the statistics; ``clip="norm"`` with ``clip_on="global"`` needs every gradient at once
        (one factor known only at the end) and is refused.
    memory_budget : int or float, optional
        Bytes (a positive Python or NumPy number). Default: half of the available RAM for the "auto" decision, 90 % as the limit
        beyond which a run is refused (MemoryError naming the options that fit).
    hist_bins, hist_per_decade : int
        The window and resolution of ``grad_hist`` (stats_only); ``hist_bins=0`` skips it. At
        most 10^6 each. A layer whose gradients lie so far out that their bin index leaves int64
        (10^-1.4e18 at 7 bins a decade) stops the run with a ValueError naming the finest
        ``hist_per_decade`` that holds them.
    progress : callable or None
        Called as ``progress(done, total)`` after every segment of the forward and the backward
        pass (``total`` = twice the number of segments), e.g. to drive a progress bar; anything
        else is refused before the run starts.

    Returns
    -------
    Result
        The loss, exact gradients (:class:`LogScaled`) and per-layer statistics.
    """
    t_start = time.perf_counter()
    params, x, targets = check_inputs(stack, params, x, targets)
    for name, v, low, high in (("hist_bins", hist_bins, 0, MAX_BINS),
                               ("hist_per_decade", hist_per_decade, 1, MAX_PER_DECADE)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= high:
            raise ValueError(f"{name} must be an int from {low} to {high:_}, got {v!r}")
    hist_bins, hist_per_decade = int(hist_bins), int(hist_per_decade)  # np.int16(30000) wrapped the estimate around
    if not isinstance(stats_only, (bool, np.bool_)):
        raise TypeError(f"stats_only must be a bool, got {stats_only!r}")
    check_progress(progress)
    if stats_only and stack.clip == "norm" and stack.clip_on == "global":
        raise ValueError("stats_only=True cannot apply clip='norm' with clip_on='global' (it scales every layer's "
                         "gradient by one factor known only at the end): use clip_on='layer' or keep the gradients")
    name = resolve(backend)
    impl = get_backend(name)
    # arrays the workspace keeps from an earlier call can be freed: they count as available
    plan = plan_run(stack, x.shape[0], checkpoint=checkpoint, stats_only=stats_only,
                    generated=isinstance(params, GeneratedParams), memory_budget=memory_budget,
                    hist_bins=hist_bins, available=lambda: available_memory() + held(), backend=name)
    run = _Run(stack, params, x, impl, plan, hist_bins, hist_per_decade, progress)
    try:
        # overflow in an exploding stack is a finding, reported as first_nonfinite_forward/backward
        with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
            _forward(run)
            if run.rescale and run.info[abi.INFO_FORWARD] >= 0 and not run.params.zero_bias:  # biases read last
                _forward_again_unscaled(run)
            loss, loss_exact, head_grads = _top(run, targets)
            _backward(run)
            return _assemble(run, name, loss, loss_exact, head_grads, t_start)
    finally:
        run.layers.close()
        if run.internal:  # a small call takes none (plain np.empty below buffers.WORKSPACE_FROM): nothing to give back
            WORKSPACE.give(run.internal)
        release = getattr(impl, "release_workspace", None)  # the C drivers' block, kept for the run
        if release is not None:
            release()


# ------------------------------------------------------------------ the state of one pass
@dataclass(eq=False)
class _Run:
    """The arrays of one pass and what the steps share (one object instead of many arguments)."""

    stack: Stack
    params: Params | GeneratedParams
    x: np.ndarray
    impl: object
    plan: Plan
    hist_bins: int
    hist_per_decade: int
    progress: object
    seconds: dict = field(default_factory=lambda: dict(forward=0.0, backward=0.0, generate=0.0, stats=0.0))

    def __post_init__(self):
        st, seg = self.stack, self.plan.segment
        L, N, B, dt = st.depth, st.width, self.x.shape[0], st.np_dtype
        self.B = B
        self.segments = [(s, min(s + seg, L)) for s in range(0, L, seg)]
        self.rescale = can_rescale_forward(st, self.params)
        self.icfg, self.fcfg = (a.copy() for a in _kernel_config(st, self.rescale))
        self.info = _no_info()
        # forward: every activation, or (recompute) one segment's worth and the checkpoints; the
        # internal arrays (never returned) come from the workspace (gradbench.buffers), and so
        # do the generated weights when the plan keeps them all
        kept = seg if self.plan.recompute else L
        # the returned gradients, made here when Z lives in their dW (plan.z_in_gradients), else
        # by the backward pass
        self.z_in_grads = z_in_gradients(B, N, checkpoint=self.plan.checkpoint, stats_only=self.plan.stats_only)
        self.grads = _gradient_arrays(L, B, N, dt) if self.z_in_grads else None
        shapes = {"H": (kept + 1, B, N), "bn_mean": (kept, N), "bn_rstd": (kept, N)}
        if not self.z_in_grads:
            shapes["Z"] = (kept, B, N)
        row_shapes = [(kept + 1, B)]  # frow: the rows' exponents of H (int64)
        if self.plan.recompute:  # and the rows' exponents there
            shapes["ckpt"] = (len(self.segments) + 1, B, N)
            row_shapes.append((len(self.segments) + 1, B))
        weight_shapes = buffer_shapes(st, L if self.plan.keep_weights else seg) if self.plan.generated else ()
        WORKSPACE.retain([(shape, dt) for shape in (*shapes.values(), *weight_shapes)]
                         + [(shape, np.int64) for shape in row_shapes])
        self.internal = []
        self.layers = LayerSupply(self.params, st, seg, keep=self.plan.keep_weights, empty=self.take)
        fwd = abi.allocate("stack_forward", dict(L=kept, B=B, N=N), dt,
                           skip=("icfg", "fcfg", "W", "b", "gamma", "beta", "slope", "fexp",
                                 "act_mean", "act_std", "saturation", "dead", "info")
                           + (("Z",) if self.z_in_grads else ()),
                           fill=dict(bn_mean=0.0, bn_rstd=1.0), empty=self.take)
        if self.z_in_grads:  # contiguous: the first L B N entries of dW
            fwd["Z"] = self.grads["dW"].reshape(-1)[:L * B * N].reshape(L, B, N)
        self.H, self.Z, self.bn_mean, self.bn_rstd = fwd["H"], fwd["Z"], fwd["bn_mean"], fwd["bn_rstd"]
        self.frow = fwd["frow"]  # row i of h_l at 2**(fexp[l] + frow[l, i]) (one exponent per sample)
        self.ckpt = self.take(shapes["ckpt"], dt) if self.plan.recompute else None
        self.ckpt_row = self.take(row_shapes[-1], np.int64) if self.plan.recompute else None
        self.fexp = np.zeros(L + 1, dtype=np.int64)
        self.act_mean, self.act_std, self.saturation, self.dead = (np.empty(L) for _ in range(4))
        self.bn_share = np.empty((L, 2)) if st.batch_norm else None  # median and largest, per layer
        self.bn_sumsq_log10 = np.empty(L) if st.batch_norm else None  # log10 of the largest B var_B, per layer
        self.flushed = np.zeros(L, dtype=np.int64) if st.activation == "sigmoid" else None  # (flushed_outputs)
        self.sig_e = np.zeros(L + 1, dtype=np.int64)
        self.row_e = np.zeros(B, dtype=np.int64)  # the backward signal's rows: 2**(sig_e + row_e) each
        self.sig_m = np.empty(L + 1)
        self.gnorm_m = np.empty(L)
        self.gnorm_e = np.zeros(L, dtype=np.int64)
        self.dz_e = np.zeros(L, dtype=np.int64)
        self.dw_e = np.zeros(L, dtype=np.int64)  # dW_l at 2**(dw_e[l] + fexp[l])
        self.clip_acted = np.zeros(L + 1, dtype=np.int64)  # per signal dL/dh_l: did its clip act
        self.bn_pair = None  # batch norm over 2 samples: bn_pair_difference of the top layer
        self.work = 2 * len(self.segments)

    def take(self, shape, dtype) -> np.ndarray:
        """An internal array (:func:`gradbench.buffers.take_internal`), handed back when the pass ends."""
        return take_internal(shape, dtype, self.internal)

    def seg_arrays(self, s: int, e: int):
        """H, Z, bn_mean, bn_rstd, frow of the segment [s, e) (views)."""
        if self.plan.recompute:
            m = e - s
            return self.H[:m + 1], self.Z[:m], self.bn_mean[:m], self.bn_rstd[:m], self.frow[:m + 1]
        return self.H[s:e + 1], self.Z[s:e], self.bn_mean[s:e], self.bn_rstd[s:e], self.frow[s:e + 1]

    def tick(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, self.work)

    @property
    def h_top(self) -> np.ndarray:
        return self.ckpt[-1] if self.plan.recompute else self.H[self.stack.depth]

    @property
    def h_top_exponents(self) -> np.ndarray:
        """(B,) int64: row i of h_L is h_top[i] * 2**(fexp[L] + its entry)."""
        rows = self.ckpt_row[-1] if self.plan.recompute else self.frow[self.stack.depth]
        return self.fexp[self.stack.depth] + rows


def _segment_forward(run: _Run, s: int, e: int, layer_params, fexp, stats, info) -> bool:
    """One backend forward call over the segment [s, e) (H[0] of the segment already set); returns
    whether the kernels' means and standard deviations (``stats[0]``, ``stats[1]``) were all finite."""
    Hs, Zs, ms, rs, qs = run.seg_arrays(s, e)
    run.impl.stack_forward(run.icfg, run.fcfg, *layer_params, Hs, Zs, ms, rs, fexp, qs, *stats, info)
    # the pass has written them itself (Z in dW: the rest of dW, B < N, is still to fault in)
    PREFAULTER.cancel(Hs, *((Zs,) if not run.z_in_grads or run.B == run.stack.width else ()))
    if all_finite(stats[0]) and all_finite(stats[1]):  # the usual case: rescale_stats would change nothing
        return True
    reference.rescale_stats(stats[0], stats[1], Hs, qs)  # sums or squares beyond float64: rare, so taken here
    return False


def _uncountable_fractions(run: _Run, s: int, e: int, layer_params) -> None:
    """NaN for ``saturation`` and ``dead`` of the segment's layers whose entries the kernels cannot
    count, in place.

    The kernels count |phi'(z)| < 1 % of its largest value and z <= 0, comparisons that read a NaN z as
    False: a layer of NaN pre-activations showed "0.0 %" dead (and not saturated). Such a layer's
    fractions are NaN; and so is the saturation of a swish or GELU layer with a z = -inf, whose
    phi' the kernels evaluate as inf * 0 = NaN (not saturated) though its limit is 0. Any other
    infinite z counts by its limit (tanh, sigmoid: saturated; ReLU: live at +inf, dead at -inf).
    Both kinds give a NaN in h_{l+1} (phi(NaN) = NaN, swish and GELU's phi(-inf) = -inf * 0), so
    only layers whose act_mean or act_std is NaN are looked at: nothing to do is one check.
    """
    suspect = np.flatnonzero(np.isnan(run.act_mean[s:e]) | np.isnan(run.act_std[s:e]))
    if not suspect.size:
        return
    Z = run.seg_arrays(s, e)[1]
    _, _, gamma, beta, _ = layer_params
    for i in suspect:  # the z the statistics saw: under batch norm gamma xhat + beta (Z holds xhat)
        z = gamma[i] * Z[i] + beta[i] if run.stack.batch_norm else Z[i]
        if saturation_uncountable(z, run.stack.activation):
            run.saturation[s + i] = np.nan
        if np.isnan(z).any():  # z <= 0 reads NaN as False too
            run.dead[s + i] = np.nan


def _forward(run: _Run) -> None:
    """The forward pass, segment by segment (first non-finite layer into run.info)."""
    t = time.perf_counter()
    p = run.params
    h0 = (run.ckpt if run.plan.recompute else run.H)[0]
    h0[...] = run.x if p.W_in is None else run.x @ p.W_in.T + p.b_in
    q0 = (run.ckpt_row if run.plan.recompute else run.frow)[0]
    q0[...] = 0
    if run.rescale:  # tiny or huge inputs too: row i of h_0 = H[0, i] * 2**(fexp[0] + frow[0, i]), normalised
        run.fexp[0], q0[...] = reference.layer_rows(h0, np.zeros(run.B, dtype=np.int64))
    seg_info = _no_info()
    for j, (s, e) in enumerate(run.segments):
        if j:
            run.tick(j)
        layer_params = run.layers.get(s, e)
        if j + 1 < len(run.segments):
            run.layers.prefetch(*run.segments[j + 1])
        if run.plan.recompute:
            run.H[0], run.frow[0] = run.ckpt[j], run.ckpt_row[j]
        stats = (run.act_mean[s:e], run.act_std[s:e], run.saturation[s:e], run.dead[s:e])
        if not _segment_forward(run, s, e, layer_params, run.fexp[s:e + 1], stats, seg_info):
            _uncountable_fractions(run, s, e, layer_params)  # only where a mean or std was not finite (a NaN)
        if run.flushed is not None:
            run.flushed[s:e] = flushed_outputs(run, s, e)
        if run.bn_share is not None:
            rstd = run.seg_arrays(s, e)[3]
            run.bn_share[s:e] = bn_shares(rstd, run.stack.bn_eps)
            run.bn_sumsq_log10[s:e] = bn_sumsq_log10(rstd, run.stack.bn_eps, run.B)
        if run.info[abi.INFO_FORWARD] < 0 <= seg_info[abi.INFO_FORWARD]:
            run.info[abi.INFO_FORWARD] = s + seg_info[abi.INFO_FORWARD]
        if run.plan.recompute:
            run.ckpt[j + 1], run.ckpt_row[j + 1] = run.H[e - s], run.frow[e - s]
    run.seconds["forward"] = time.perf_counter() - t


def _forward_again_unscaled(run: _Run) -> None:
    """The forward pass again without rescaling, after a rescaled one with biases turned non-finite.

    With exponents a stack's own arithmetic cannot overflow: what did is a bias at a row's
    exponent (b 2^-f past the dtype's range, a row of h ~2^1020 below it: tiny inputs beside a
    bias) or a true NaN. Plain arithmetic holds the first (the bias is that row's z) and gives the
    second as well; the rescaled pass's statistics and exponents are replaced (docs/design.md
    section 2)."""
    run.rescale = False
    run.icfg, run.fcfg = (a.copy() for a in _kernel_config(run.stack, False))
    run.info = _no_info()
    run.fexp[...] = 0
    _forward(run)


SHARE_CHUNK = 1 << 16  # entries of rstd that bn_shares partitions at once


def bn_shares(rstd: np.ndarray, eps: float) -> np.ndarray:
    """(layers, 2): the median (for an even width the upper one) and the largest over each
    layer's units of eps / (var_B + eps) = eps rstd^2 (``rstd`` (layers, N), batch norm's
    1 / sqrt(var_B + eps); the share grows with rstd, so they are taken from its median and largest).

    It is the factor by which batch norm's backward scales the part of a unit's gradient along
    its own output xhat, beyond the gamma rstd of every other part orthogonal to the batch mean
    (|xhat|^2 = B var_B / (var_B + eps)). Over a batch of 2 that part is a unit's whole gradient:
    xhat = +-d / sqrt(d^2 + eps) (d: half the difference of the two samples' z), whose derivative
    eps / (d^2 + eps)^(3/2) is rstd times this share (:func:`gradbench.verdict.small_batch_norm`).
    """
    out = np.empty((len(rstd), 2))
    mid = rstd.shape[1] // 2
    step = max(1, SHARE_CHUNK // max(1, rstd.shape[1]))
    for a in range(0, len(rstd), step):
        r = rstd[a : a + step]
        out[a : a + step, 0] = np.partition(r, mid, axis=1)[:, mid]
        out[a : a + step, 1] = np.max(r, axis=1)
    return eps * np.square(out)


def underflowed_entries(H: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """(len(H),): how many entries of each sigmoid output H[i] (a layer's h_{l+1}, a cell's h_t)
    are 0 or subnormal. sigmoid(z) > 0 for every z, and a sigmoid forward carries no exponent:
    each is sigmoid(z) underflowed (z below ~-708, float32 ~-87), whose true value, tiny, can carry
    the larger term of a gradient (its sigmoid' is larger than a unit near 1's;
    verdict.partial_underflow_words). Only an H[i] with a saturated unit (``saturation[i]`` > 0)
    can hold one: no pass where none is saturated."""
    out = np.zeros(len(H), dtype=np.int64)
    if not np.any(np.asarray(saturation) > 0):
        return out
    tiny = np.finfo(H.dtype).tiny
    with np.errstate(invalid="ignore"):
        low = np.flatnonzero(np.min(H.reshape(len(H), -1), axis=1) < tiny)  # NaN: not low
    for i in low:
        out[i] = np.count_nonzero(H[i] < tiny)
    return out


def flushed_outputs(run: _Run, s: int, e: int) -> np.ndarray:
    """(e - s,): :func:`underflowed_entries` of the segment's sigmoid layers. A residual group's
    output is the skip plus the branch, no sigmoid output, and is not counted."""
    out = underflowed_entries(run.seg_arrays(s, e)[0][1:], run.saturation[s:e])
    k = run.stack.residual
    if k:
        out[(np.arange(s, e) + 1) % k == 0] = 0
    return out


def bn_sumsq_log10(rstd: np.ndarray, eps: float, batch: int) -> np.ndarray:
    """(layers,): log10 of the largest sum of squared deviations from the batch mean over each
    layer's units, B var_B with var_B = 1 / rstd^2 - eps from its smallest ``rstd`` (layers, N),
    in float64 (inf where rstd is 0: the batch's deviations were not finite). Where it passes a
    dtype's largest number, a plain batch norm's sum of squares overflows (verdict.float_limits,
    peers.representable)."""
    r = np.min(rstd, axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.maximum(1.0 / np.square(r) - eps, 0.0)) + math.log10(batch)


def _top(run: _Run, targets):
    """The loss, dL/dh_L into run.G (normalised, clipped once) and the head's gradients."""
    stack, hL, f = run.stack, run.h_top, run.h_top_exponents  # row i of h_L: hL[i] 2^f[i]
    L = stack.depth
    head_grads: dict[str, LogScaled] = {}
    if stack.has_head:
        loss, loss_exact, G, e_top, dW_out, e_w, db_out, e_b = head_loss(stack, hL, f, run.params, targets)
        G = np.ascontiguousarray(G, dtype=stack.np_dtype)  # row i of dL/dh_L = G[i] 2^e_top[i]
        head_grads["W_out"] = LogScaled(dW_out[None], np.full(1, e_w, dtype=np.int64))
        head_grads["b_out"] = LogScaled(db_out[None], np.full(1, e_b, dtype=np.int64))
    else:
        # 0.5 ||h_L||^2 with no square lost, exact at any depth: the rows at the layer's exponent
        # (a row 2^-1074 below the largest adds nothing to the sum of squares)
        n, e = reference.norm_scaled(reference.scaled_rows(hL, f, int(run.fexp[L])))
        m, e2 = np.frexp(0.5 * n * n)
        loss_exact = LogScaled(np.array(m), np.array(int(e2) + 2 * (e + int(run.fexp[L]))))
        loss = float(loss_exact.to_float(warn=False))
        G = hL.copy()
        e_top = f
    run.sig_e[L], run.sig_m[L], run.clip_acted[L], run.row_e[:] = top_signal(stack, G, e_top)
    if not np.isfinite(G).all():
        run.info[abi.INFO_BACKWARD] = L
    run.G = G
    run.live_top = _rows_nonzero(G)  # samples with a gradient at the top (lost_samples)
    run.dies = units_die(stack, getattr(run.params, "slope", None))  # GeneratedParams: the stack's slope
    run.forward_lost = _forward_lost(stack, run.x, hL, run.dies)
    return loss, loss_exact, head_grads


def _forward_lost(stack: Stack, x: np.ndarray, hL: np.ndarray, dies: bool) -> int:
    """Samples whose top activations are exactly 0 though their input is not, in a batch (a batch
    of 1 has a layer of zeros, which the diagnosis names by itself): each sample carries its own
    exponent, so only its own chain can do it (GELU or swish below 2^(-2^62), an exact 0). Not
    counted where a row of zeros is a true value: units dead below zero (``dies``: ReLU, a PReLU
    whose slopes are 0), batch norm."""
    if len(x) < 2 or dies or stack.batch_norm:
        return 0
    return int(np.count_nonzero(_rows_nonzero(x) & ~_rows_nonzero(hL)))


def _backward(run: _Run) -> None:
    """The backward pass, segment by segment from the top (recomputing checkpointed segments)."""
    t = time.perf_counter()
    stack, L, N, dt, seg = run.stack, run.stack.depth, run.stack.width, run.stack.np_dtype, run.plan.segment
    keep = not run.plan.stats_only
    if keep:  # returned (made before the forward when Z lives in them)
        grad_sets = [run.grads if run.grads is not None else _gradient_arrays(L, run.B, N, dt)]
    else:  # stats_only: one segment's, internal; two sets, so that the helper thread can take
        grad_sets = [_gradient_arrays(seg, run.B, N, dt, run.take) for _ in range(2)]  # the histograms of one meanwhile
    busy = [None, None]  # the histogram job still reading each set
    run.grads = grad_sets[0] if keep else None
    run.hist = None if keep or not run.hist_bins else _new_histogram(L, N, run.hist_bins)
    # parameter-gradient clipping that acts layer by layer in stats_only runs (value clipping is
    # the same globally): it changes the clipped dW rows and their norms
    run.layer_clip = not keep and stack.clip is not None and stack.clip_on != "signal"
    if run.layer_clip:  # the norms before clipping (Result.grad_norm_unclipped)
        run.gnorm_raw_m, run.gnorm_raw_e = np.empty(L), np.zeros(L, dtype=np.int64)
    seg_info = _no_info()
    last = len(run.segments) - 1
    for j in range(last, -1, -1):
        run.tick(len(run.segments) + last - j)
        s, e = run.segments[j]
        layer_params = run.layers.get(s, e)
        if j > 0:
            run.layers.prefetch(*run.segments[j - 1])
        if run.plan.recompute and j != last:  # the top segment's activations are still in H, Z
            run.H[0], run.frow[0] = run.ckpt[j], run.ckpt_row[j]
            scratch = tuple(np.empty(e - s) for _ in range(4))
            _segment_forward(run, s, e, layer_params, run.fexp[s:e + 1].copy(), scratch,
                             _no_info())
        lo, hi = (s, e) if keep else (0, e - s)
        k = j % len(grad_sets)
        if busy[k] is not None:  # its histograms done first: then the set can be written again
            ts = time.perf_counter()
            busy[k].result()
            run.seconds["stats"] += time.perf_counter() - ts
        seg_grads = [grad_sets[k][name][lo:hi] for name in GRAD_NAMES]
        Hs, Zs, _, rs, qs = run.seg_arrays(s, e)
        W, _, gamma, beta, slope = layer_params
        if j == last and stack.batch_norm and run.B == 2:  # before the kernel overwrites G
            param = slope[-1] if stack.activation == "prelu" else run.fcfg[abi.F_ACT_PARAM]
            top = reference.scaled_rows(run.G, run.row_e, 0)  # the two rows at one exponent
            run.bn_pair = bn_pair_difference(top, Zs[-1], gamma[-1], beta[-1], int(run.icfg[abi.I_ACT]), param)
        seg_info[abi.INFO_BACKWARD] = -1
        run.impl.stack_backward(run.icfg, run.fcfg, W, gamma, beta, slope, Hs, Zs, rs, run.fexp[s:e + 1], qs,
                                run.G, run.row_e,
                                *seg_grads, run.sig_m[s:e + 1], run.sig_e[s:e + 1], run.gnorm_m[s:e],
                                run.gnorm_e[s:e], run.dz_e[s:e], run.dw_e[s:e], run.clip_acted[s:e + 1], seg_info)
        if run.info[abi.INFO_BACKWARD] < 0 <= seg_info[abi.INFO_BACKWARD]:
            run.info[abi.INFO_BACKWARD] = s + seg_info[abi.INFO_BACKWARD]
        if not keep:
            ts = time.perf_counter()
            busy[k] = _segment_statistics(run, s, e, seg_grads)
            run.seconds["stats"] += time.perf_counter() - ts
    PREFAULTER.cancel(*(a for grads in grad_sets for a in grads.values()))  # all written
    ts = time.perf_counter()
    for job in busy:
        if job is not None:
            job.result()
    run.seconds["stats"] += time.perf_counter() - ts  # stats: the caller's share (waits included)
    run.seconds["backward"] = time.perf_counter() - t - run.seconds["stats"]
    run.seconds["generate"] = run.layers.seconds
    run.seconds["generate_cpu"] = run.layers.cpu_seconds


def bn_pair_difference(G: np.ndarray, xhat: np.ndarray, gamma: np.ndarray, beta: np.ndarray, code: int,
                       param: float) -> float:
    """Over a batch of 2: how far apart the two samples' gradients into the top layer's batch norm
    are, the largest over its units of |dy_1 - dy_2| / (|dy_1| + |dy_2|), dy_i = G_i phi'(gamma
    xhat_i + beta) (G: dL/dh_L, clipped; in float64). Batch norm over two samples passes only
    (dy_1 - dy_2) / 2 (docs/design.md section 6), so where this is within rounding of 0 the exact
    gradient of every weight below is 0 (:func:`gradbench.verdict.bn_pair_cancels`). xhat is taken
    as exact arithmetic has it, +-(xhat_1 - xhat_2) / 2: the stored pair differs from that by the
    rounding of z - mean, which is not a difference of the samples' gradients. NaN where it is
    not defined: a non-finite entry, a unit whose dy is 0 for both samples though G is not
    (phi' below float64's range: the kernels rescue it), or G = 0 everywhere."""
    G64 = np.asarray(G, dtype=np.float64)
    half = 0.5 * (np.asarray(xhat[0], dtype=np.float64) - np.asarray(xhat[1], dtype=np.float64))
    g, b = np.asarray(gamma, dtype=np.float64), np.asarray(beta, dtype=np.float64)
    with np.errstate(all="ignore"):
        dy = G64 * dphi(np.stack([g * half + b, -g * half + b]), code, float(param))
        size = np.abs(dy[0]) + np.abs(dy[1])
        live = size > 0
        unresolved = ~live & np.any(G64 != 0, axis=0)  # phi' beyond float64 where G is not 0
        if not (np.all(np.isfinite(dy)) and np.all(np.isfinite(G64))) or unresolved.any() or not live.any():
            return math.nan
        return float(np.max(np.abs(dy[0] - dy[1])[live] / size[live]))


GRAD_NAMES = ("dW", "db", "dgamma", "dbeta", "dslope")
_NOT_GRADS = tuple(a.name for a in abi.BACKWARD if a.name not in GRAD_NAMES)  # the backward's other arrays


def _gradient_arrays(L: int, B: int, N: int, dt, alloc=partial(empty, prefault="descending")) -> dict[str, np.ndarray]:
    """The gradient arrays of L layers from ``alloc``; by default those a run returns: fresh (on
    small pages when large), faulted in from the top, the order the backward writes them."""
    return abi.allocate("stack_backward", dict(L=L, B=B, N=N), dt, skip=_NOT_GRADS, empty=alloc)


@lru_cache(maxsize=256)
def _kernel_config(stack: Stack, rescale: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gradbench.abi.kernel_config` worked out once per stack (a run takes copies: kernels
    see writeable arrays, as Numba's compiled signatures expect)."""
    return abi.kernel_config(stack, rescale)


_NO_INFO = np.full(abi.INFO_SIZE, -1, dtype=np.int64)


def _rows_nonzero(G: np.ndarray) -> np.ndarray:
    """Whether each row of G has an entry other than 0 (NaN counts), as ``G.any(axis=1)``."""
    return np.logical_or.reduce(G, axis=1)


def _no_info() -> np.ndarray:
    """A fresh info array of a driver call: -1 (nothing found) everywhere."""
    return _NO_INFO.copy()


def _new_histogram(L: int, N: int, bins: int) -> dict:
    cdt = np.uint16 if N * N < 2**16 else np.uint32
    return dict(top=np.zeros(L, dtype=np.int64), counts=np.zeros((L, bins), dtype=cdt),
                below=np.zeros(L, dtype=np.int64), zeros=np.zeros(L, dtype=np.int64),
                nonfinite=np.zeros(L, dtype=np.int64))


def _segment_statistics(run: _Run, s: int, e: int, seg_grads):
    """stats_only: per-layer clipping of the segment's gradients, and their histograms queued
    in the helper thread (returns the job's future, None without histograms)."""
    e_w = run.dw_e[s:e] + run.fexp[s:e]
    gm = seg_grads[0]
    if run.layer_clip:
        e_p = run.dz_e[s:e]
        g = {"W": LogScaled(seg_grads[0], e_w), "b": LogScaled(seg_grads[1], e_p),
             "gamma": LogScaled(seg_grads[2], e_p), "beta": LogScaled(seg_grads[3], e_p),
             "slope": LogScaled(seg_grads[4], e_w)}
        cw = clip_param_grads(run.stack.replace(clip_on="layer"), g)["W"]
        gm, e_w = cw.mantissa, cw.exponent
        n = row_norms(cw)
        run.gnorm_raw_m[s:e], run.gnorm_raw_e[s:e] = run.gnorm_m[s:e], run.gnorm_e[s:e]  # the derivative's
        run.gnorm_m[s:e], run.gnorm_e[s:e] = n.mantissa, n.exponent
    if run.hist is None:
        return None
    h = run.hist
    return run.layers.background(
        fill_streaming, gm, e_w, run.hist_per_decade, run.hist_bins, h["top"][s:e], h["counts"][s:e],
        h["below"][s:e], h["zeros"][s:e], h["nonfinite"][s:e], _compiled_fill(run.impl))


def _compiled_fill(impl):
    """The backend's own histogram fill (histograms.fill_for; numpy: None, NumPy's). Numba's unchecked
    ``histogram_fill_kernel`` where there is one: the engine's arrays are its own, made to the kernel's
    contract (its checked ``histogram_fill`` costs ~7 us a call, as much as a small segment's fill)."""
    return getattr(impl, "histogram_fill_kernel", None) or getattr(impl, "histogram_fill", None)


def _assemble(run: _Run, name: str, loss: float, loss_exact: LogScaled, head_grads: dict,
              t_start: float) -> Result:
    """The Result: gradients as LogScaled (parameter clipping applied), norms and statistics."""
    stack, p, G, L = run.stack, run.params, run.G, run.stack.depth
    sig_e, fexp = run.sig_e, run.fexp
    e_param, e_weight = run.dz_e, run.dw_e + fexp[:-1]  # dz_e: sig_e[l+1] and the rescue's shift
    grads, grad_hist, unclipped, param_clip_acted = None, None, None, None
    if run.grads is not None:
        g = run.grads
        of = LogScaled._of  # (L, ...) arrays and int64 (L,) exponents, made here
        lg = {"W": of(g["dW"], e_weight), "b": of(g["db"], e_param), "gamma": of(g["dgamma"], e_param),
              "beta": of(g["dbeta"], e_param), "slope": of(g["dslope"], e_weight)}
        if p.W_in is not None:
            xm = run.x.copy()
            ex = reference.normalise(xm)  # tiny or huge x: dW_in = G^T x exactly scaled
            Gs = reference.scaled_rows(G, run.row_e, 0)  # the rows at dL/dh_0's exponent, for sums
            lg["W_in"] = LogScaled((Gs.T @ xm)[None], sig_e[:1] + ex)
            lg["b_in"] = LogScaled(Gs.sum(axis=0)[None], sig_e[:1])
        lg.update(head_grads)
        grad_norm = LogScaled._of(run.gnorm_m, run.gnorm_e.copy())
        if stack.clip is not None and stack.clip_on != "signal":
            raw, lg = lg, clip_param_grads(stack, lg)
            grad_norm, unclipped = row_norms(lg["W"]), grad_norm
            param_clip_acted = any(not (np.array_equal(raw[k].mantissa, lg[k].mantissa)
                                        and np.array_equal(raw[k].exponent, lg[k].exponent)) for k in lg)
        grads = Grads(**{k: (v if k in LAYER_GROUPS[0] else v[0]) for k, v in lg.items()})
    else:
        grad_norm = LogScaled(run.gnorm_m, run.gnorm_e)
        if run.layer_clip:
            unclipped = LogScaled._of(run.gnorm_raw_m, run.gnorm_raw_e)
        if run.hist is not None:
            grad_hist = GradHistogram(per_decade=run.hist_per_decade, bins=run.hist_bins, **run.hist)
    input_grad = G if p.W_in is None else G @ p.W_in
    ffwd, fbwd = (int(run.info[i]) for i in (abi.INFO_FORWARD, abi.INFO_BACKWARD))
    run.seconds["total"] = time.perf_counter() - t_start
    # samples whose signal was non-zero at the top and is exactly zero at the input: dead units, or
    # a factor beyond any int64 exponent (verdict._findings); each row carries its own exponent
    lost = int(np.count_nonzero(run.live_top & ~_rows_nonzero(G)))
    probe, size = probe_and_size(run.params)
    extras = dict(checkpoint=run.plan.checkpoint, segments=len(run.segments), stats_only=run.plan.stats_only,
                  generated=run.plan.generated, weights_kept=run.plan.keep_weights,
                  memory_estimate=run.plan.estimate, seconds=run.seconds, lost_samples=lost,
                  forward_lost_samples=run.forward_lost, dead_below_zero=run.dies,
                  weights_probe=probe, weights=origin_words(run.params, run.stack, probe), weight_log10_sampled=size)
    if run.stack.activation == "prelu":  # the slopes the weights have (verdict: which units are dead)
        slopes = getattr(run.params, "slope", None)
        slopes = np.full(1, run.stack.act_param) if slopes is None else np.asarray(slopes, dtype=np.float64)
        extras["prelu_slopes"] = (float(np.min(slopes)), float(np.max(slopes)))
    if run.bn_pair is not None:  # batch norm over 2 samples (verdict.bn_pair_cancels)
        extras["bn_pair_difference"] = run.bn_pair
    if run.stack.batch_norm:  # one input repeated: batch norm passes nothing (verdict.bn_identical)
        extras["identical_samples"] = bool(np.all(run.x == run.x[:1]))
        extras["bn_sumsq_log10"] = run.bn_sumsq_log10  # where a plain batch norm overflows (verdict.float_limits)
    if run.flushed is not None:  # sigmoid outputs that underflowed (verdict.partial_underflow_words)
        extras["flushed_outputs"] = run.flushed
    if param_clip_acted is not None:  # whether clipping changed a parameter gradient of this pass
        extras["param_clip_acted"] = param_clip_acted
    run.tick(run.work)
    return Result(
        stack=stack,
        backend=name,
        loss=loss,
        loss_exact=loss_exact,
        grads=grads,
        grad_norm=grad_norm,
        signal_norm=LogScaled._of(run.sig_m[:L].copy(), sig_e[:L].copy()),
        input_grad=LogScaled._of(input_grad, sig_e[0] + run.row_e),  # one int64 exponent per sample
        output=LogScaled._of(run.h_top.copy(), run.h_top_exponents),  # a copy: H goes back to the workspace; per sample
        act_mean=LogScaled._of(run.act_mean, fexp[1:].copy()),
        act_std=LogScaled._of(run.act_std, fexp[1:].copy()),
        saturation=run.saturation,
        dead=run.dead if stack.activation in RELU_FAMILY else np.full(L, np.nan),
        first_nonfinite_forward=None if ffwd < 0 else ffwd,
        first_nonfinite_backward=None if fbwd < 0 else fbwd,
        forward_rescaled=run.rescale,
        extras=extras,
        grad_hist=grad_hist,
        grad_norm_unclipped=unclipped,
        bn_share=run.bn_share,
        signal_clip_acted=run.clip_acted.astype(bool) if abi.signal_clip(stack) else None,
    )
