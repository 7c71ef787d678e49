"""Memory planning: how a run is segmented, what it keeps, and whether it fits.

A plain run stores every activation: (2L+1) B N numbers, plus weights and gradients 2 L N^2;
the pre-activations' L B N of them in the gradients' dW where B <= N (:func:`z_in_gradients`).
``checkpoint=k`` stores only h_0, h_k, h_2k, ... and, in the backward pass, recomputes each
segment of k layers from its checkpoint (Chen et al. 2016; one extra forward pass): O(L/k + k)
B N memory; k ~ sqrt(L) by default, a multiple of the residual group size so that no group
straddles two segments. ``stats_only`` keeps no gradient arrays (one segment's worth) and
generated weights (:class:`~gradbench.params.GeneratedParams`) keep one segment of weights
(two buffers). Small runs keep more, because it is cheaper than doing the work again: a
``stats_only`` run whose activations take at most :data:`SMALL_RUN_BYTES` keeps them all (no
recomputed forward), and generated weights that take at most that much are all kept (drawn once,
not again for the backward). A run whose estimate exceeds the budget is refused before anything
is allocated, with the options that fit (:class:`PlanRefused`).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np

from gradbench.histograms import COMPILED_FILL_BYTES, DEFAULT_BINS, HIST_CHUNK, MOVE_CHUNK, fill_for
from gradbench.spec import Stack

# Without memory_budget: checkpoint="auto" checkpoints when a plain run needs more than
# AUTO_FRACTION of the available RAM, and a run needing more than LIMIT_FRACTION is refused.
AUTO_FRACTION = 0.5
LIMIT_FRACTION = 0.9
# Bytes of activations (stats_only runs) and of generated weights that a run keeps rather than
# recompute or draw again: a sweep's typical run (depth 500, width 64, batch 32: 16 MiB of each)
# then does one forward pass and draws each weight once.
SMALL_RUN_BYTES = 64 * 2**20
# A run whose plain estimate is at most this is planned without reading the available memory
# (``available`` given as a callable; reading /proc/meminfo took 25-35 us, a twentieth of a
# small call): its plan is the same on any machine with 2 SMALL_RUN_BYTES available or more.
PLAN_FREELY = 16 * 2**20


def default_segment(stack: Stack) -> int:
    """The default checkpoint interval: about sqrt(L), a multiple of the residual group size."""
    L, r = stack.depth, stack.residual or 1
    k = max(1, round(math.sqrt(L)))
    k = max(r, round(k / r) * r)
    return min(k, L)


def segment_candidates(stack: Stack) -> list[int]:
    """Checkpoint intervals a refused run may fit with, largest first: :func:`default_segment`,
    then halvings down to the residual group size (multiples of it). A shorter segment keeps
    fewer generated weights and gradients (2 k N^2 and k N^2: what a wide stats-only run is
    made of) at the price of more checkpoints (L / k B N) and segments."""
    r = stack.residual or 1
    k = default_segment(stack)
    out = [k]
    while k > r:
        k = max(r, (k // 2) // r * r)
        out.append(k)
    return out


# float64 (B, O) arrays the head's loss holds at once (gradbench.loss.head_gradient: logits,
# differences or log-probabilities and their exponentials, dL/dy; bce's softplus pair and log t,
# and a float64 copy of float32 targets). Measured: 2.8, 11.8 (12.9 in float32) and 5.8.
HEAD_ARRAYS = {"mse": 3, "bce": 12, "softmax_ce": 6}
# Bytes per entry of one segment's dW that the NumPy histogram fill holds (histograms.bin_rows'
# float64 bin indices, count_window's int64 columns and its mask); the compiled fills per entry of one
# layer (histograms.COMPILED_FILL_BYTES: Numba's 20, C's none)
NUMPY_HISTOGRAM_BYTES = 17
# Copies of W^T (N, N) the C forward holds (csrc/stack_impl.h: three shared ones, or three per
# thread at N <= 128 and B >= 32; none where BLAS does the products, counted anyway). One block,
# kept by the calling thread for the whole run (csrc/workspace.c) and freed at its end
C_FORWARD_WT = 3
# Bytes per layer and unit the C drivers hold during a call: the backward's float64 column sums of
# squares (8), the forward's dead-unit flags per thread (2)
C_DRIVER_LAYER_BYTES = 10


def z_in_gradients(batch: int, width: int, *, checkpoint: int | None, stats_only: bool) -> bool:
    """Whether a run keeps its pre-activations Z (L, B, N) in the first L B N entries of the
    gradients' dW (L, N, N) it returns, instead of an array of their own: where it keeps every
    layer's activations (``checkpoint`` None), returns its gradients (not ``stats_only``) and
    B <= N. The backward reads z_l before it writes dW_l (every backend), from the top down, and
    z_l sits at or below dW_l (l B N <= l N^2): no dW written ever covers a z still to be read.
    A run holds L B N fewer numbers, a third of its activations and gradients at B = N, and a
    first call faults that much less fresh memory in (the forward writes those pages of dW, the
    backward finds them in)."""
    return checkpoint is None and not stats_only and batch <= width


def memory_estimate(stack: Stack, batch: int, *, checkpoint: int | None = None, stats_only: bool = False,
                    generated: bool = False, keep_weights: bool = False, hist_bins: int = DEFAULT_BINS,
                    diagnose_bins: int | None = None, backend: str | None = None) -> int:
    """Bytes a run allocates at its peak: an upper bound, within a few per cent at large depth.

    Held throughout: the activations H, Z ((2L+1) B N with ``checkpoint=None``, of which Z's L B N
    are part of the gradients where :func:`z_in_gradients`; with
    ``checkpoint=k`` the L/k checkpoints and one segment's H, Z), the weights W, b, gamma, beta,
    slope (all L of them, or two segments' worth when ``generated`` and not ``keep_weights``),
    the input x, the input layer and the head with their gradients, the targets, the O(L)
    statistics and, for ``stats_only``, the streaming histograms' counts (``hist_bins`` per
    layer). On top of them the larger of two phases: the head's loss (:data:`HEAD_ARRAYS`
    float64 (B, O) arrays), and the backward pass: the gradients (all L layers, or two
    segments' worth when ``stats_only``: the helper thread fills the histograms of one while
    the next is computed), the signal, dL/dx, what parameter-gradient clipping holds, and the
    NumPy histogram fill's temporaries on one segment (``backend`` ``"numpy"``, or None: not
    known; the numba backend's Numba kernel holds one layer's, the C backend's C fill none per
    entry: :func:`gradbench.histograms.fill_for`), and the C forward's
    copies of W^T and per-layer sums (``backend`` ``"c"``). ``diagnose_bins``: also what
    :func:`gradbench.diagnose` with that many bins allocates on the result (its (L, bins)
    counts and temporaries; for stored gradients a few copies of dW, for stored weights one of
    W).

    Measured against the growth of the peak resident set (VmHWM) over a run, with the inputs it
    was given (float64 and float32; C, Numba and NumPy backends): 1.00-1.05 times it for plain,
    checkpointed, stats_only and generated-weight runs of depth 200-4000 and width 64-512,
    1.00-1.04 for heads of 3000 outputs, 1.00-1.03 for clipped gradients (1.15 for a stats_only
    run's norm clipping, 1.09 for a wide float32 stats_only run on the C backend), never below
    0.998 (tests/test_plan_memory.py); the same to 0.1 % from run to run. A deep, narrow
    stats_only run (300,000 layers of width 8) 1.03 times it, and 1.19 with its diagnosis. Not
    counted: what a process's first calls keep once: the C backend's own kernels and OpenBLAS's
    buffers (~12 MB at width 384), the Numba backend's kernels loaded from its cache (~70 MB).
    """
    L, N, B = int(stack.depth), int(stack.width), int(batch)
    D, O = int(stack.d_in), int(stack.output_dim)
    item = stack.np_dtype.itemsize
    seg = checkpoint if checkpoint is not None else (default_segment(stack) if stats_only or generated else L)
    seg = int(seg)
    layer = N * N + 4 * N + 1  # W (N, N); b, gamma, beta (N,); slope
    if checkpoint is None:
        acts = (2 * L + 1) * B * N + 2 * L * N
        row_exps = (L + 1) * B  # frow: the activations' row exponents (int64)
    else:
        acts = (L // checkpoint + 2) * B * N + (2 * seg + 1) * B * N + 2 * seg * N
        row_exps = (L // checkpoint + 2 + seg + 1) * B
    weights = (2 * seg if generated and not keep_weights else L) * layer
    ends = B * D  # x
    if stack.has_input_layer:
        ends += 2 * (N * D + N) + B * N
    top = 0
    if stack.has_head:  # W_out, b_out and their gradients, the targets; the loss's temporaries
        ends += 2 * (O * N + O) + (B if stack.loss == "softmax_ce" else B * O)
        top = 8 * (HEAD_ARRAYS[stack.loss] + (stack.loss == "bce" and item != 8)) * B * O
    # norms, exponents, activation statistics, info (float64/int64 each); batch norm's shares (bn_share)
    # and the Result's own copies of five of them (the signal's mantissas and exponents, the
    # forward's exponents twice, dead), taken from the workspace's arrays at the end
    stats = 8 * L * (13 + 5 + 2 * stack.batch_norm) + 8 * row_exps
    rows = 2 * seg if stats_only else L  # of gradients held at once
    backward = item * (rows * layer + 3 * B * N + B * D)  # the gradients, the signal and its copies, dL/dx
    if z_in_gradients(B, N, checkpoint=checkpoint, stats_only=stats_only):  # Z (in acts) is part of dW
        backward -= item * L * B * N
    if stack.clip is not None and stack.clip_on != "signal":
        backward += (seg if stats_only else L) * N * N * _clip_bytes(stack.clip, item, stats_only)
    if stats_only and hist_bins:
        stats += L * (8 * 4 + hist_bins * (2 if N * N < 2**16 else 4))
        fill = fill_for(backend)
        if fill == "numpy":
            backward += NUMPY_HISTOGRAM_BYTES * seg * N * N
        else:  # the compiled fill's, in the helper thread while the backward computes (C: none per entry)
            backward += COMPILED_FILL_BYTES[fill] * N * N
    if backend == "c":  # the C drivers' own: the forward's copies of W^T, a call's per-layer sums
        backward += item * C_FORWARD_WT * (2 if N <= 128 else 1) * N * N + C_DRIVER_LAYER_BYTES * seg * N
    return (item * (acts + weights + ends) + stats + max(top, backward)
            + diagnose_bytes(stack, stats_only, generated, hist_bins, diagnose_bins))


def _clip_bytes(clip: str, item: int, stats_only: bool) -> int:
    """Bytes per entry of dW that parameter-gradient clipping holds (gradbench.clipping): the
    clipped copy and, for float32 gradients, a float64 copy (value: where every row needs the
    clip, the scaled rows in float64, else one row at a time; norm: the rows for the sums of
    squares, and the scaled product; float64 ones need none: ``np.vecdot``). ``stats_only`` counts one more
    clipped copy: the previous segment's, which the helper thread's histograms may still be
    reading."""
    extra = 2 if item == 8 else 8  # float64: ~1 byte measured beyond the copy (L = 400, N = 256, value)
    return item * (2 if stats_only else 1) + extra


DIAGNOSE_VECTORS = 40


def diagnose_bytes(stack: Stack, stats_only: bool, generated: bool, hist_bins: int, bins: int | None) -> int:
    """What :func:`gradbench.diagnose` allocates at its peak (see :func:`memory_estimate`)."""
    if bins is None:
        return 0
    L, N = int(stack.depth), int(stack.width)
    # its L-vectors (the Diagnosis's fields and their temporaries: 37-39.4 float64 ones measured
    # with tracemalloc at 2e4-2e5 layers, stats_only or not; 16 were counted, and a 10^6-layer
    # diagnosis took 583 MiB against 445 estimated) and the (L, bins) counts
    per_layer = 8 * DIAGNOSE_VECTORS * L + 8 * L * int(bins)
    if stats_only:  # rebinning the streaming histograms, MOVE_CHUNK layers at a time
        rows = min(L, MOVE_CHUNK)
        return per_layer + 8 * 6 * rows * max(int(hist_bins), 1) + 8 * rows * (int(bins) + 3)
    # histograms of the stored dW (range, then counts) and log10 ||W_l|| of the stored weights: at
    # most HIST_CHUNK entries at a time (histograms.entry_blocks), whole layers where they fit
    entries = min(L * N * N, HIST_CHUNK)
    rows = min(L, max(1, HIST_CHUNK // max(N * N, 1)))
    chunked = 17 * entries + rows * 16 * (int(bins) + 3)
    weight_norms = 0 if generated else 24 * entries  # a layer summed again scaled: |w|, w / m, its square
    return per_layer + max(chunked, weight_norms)


def check_bins(stack: Stack, stats_only: bool, hist_bins: int, bins: int, available: int | None = None,
               name: str = "bins", held: int = 0) -> None:
    """Refuse ``bins`` whose diagnosis histograms (:func:`diagnose_bytes`) need more than half the
    ``available`` memory (default: now) less ``held`` (bytes the run itself will hold by then),
    naming ``name`` (``bins``, or the command line's ``--bins``): :func:`gradbench.diagnose` checks
    it before any work, and the command line before the run, with the run's own estimate held
    (``--bins 14000`` of 10^5 layers ran, then stopped as an internal error)."""
    need = diagnose_bytes(stack, stats_only, True, hist_bins, bins)
    budget = max((available_memory() if available is None else available) - held, 0) // 2
    if need > budget:  # the need grows about linearly with bins
        sep = " " if name.startswith("-") else "="
        room = "the available memory" if not held else "the memory available beside the run's own"
        raise ValueError(f"{name}{sep}{bins} needs about {size_text(need)} for the histograms of {stack.depth} layers, "
                         f"more than half {room} ({size_text(budget)}): pass fewer bins (up to about "
                         f"{max(1, int(bins * budget / need)):,})")


@functools.lru_cache(maxsize=256)
def _free_plan(stack: Stack, batch: int, checkpoint, stats_only: bool, generated: bool, hist_bins: int,
               diagnose_bins: int | None, backend: str | None, settings: tuple) -> Plan | None:
    """:func:`plan_run` of a run whose plain estimate is at most :data:`PLAN_FREELY`: it depends
    on nothing but its arguments and the module's settings (``settings``, their values now: in
    the key, so that a changed setting is seen), and is worked out once per shape (a training
    loop's calls are the same few). None for a larger run, whose plan depends on the memory
    available."""
    most = memory_estimate(stack, batch, stats_only=stats_only, generated=generated, keep_weights=generated,
                           hist_bins=hist_bins, diagnose_bins=diagnose_bins, backend=backend)
    if most > PLAN_FREELY:
        return None
    return plan_run(stack, batch, checkpoint=checkpoint, stats_only=stats_only, generated=generated,
                    hist_bins=hist_bins, available=4 * SMALL_RUN_BYTES, diagnose_bins=diagnose_bins,
                    backend=backend)


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


@dataclass(frozen=True)
class Plan:
    """How a run is done: segment length, recomputation, what is kept, the memory estimate."""

    segment: int           # layers per backend call
    recompute: bool        # activations are checkpointed every `segment` layers and recomputed
    stats_only: bool
    generated: bool
    estimate: int          # bytes
    keep_weights: bool = False  # generated weights: all kept, drawn once (else two segments' worth)

    @property
    def checkpoint(self) -> int | None:
        return self.segment if self.recompute else None


class PlanRefused(MemoryError):
    """A run that would not fit in memory, refused before anything is allocated.

    ``str()`` is the message for the Python API (naming the arguments that fit); ``need`` and
    ``limit`` (bytes) and ``budget`` (where the limit comes from) let a caller such as the
    command line say the same in its own words.
    """

    def __init__(self, message: str, *, need: int, limit: float, budget: str):
        super().__init__(message)
        self.need, self.limit, self.budget = need, limit, budget


def size_text(nbytes: float) -> str:
    """``nbytes`` in the unit that shows it: "12.5 KiB", "3.20 MiB", "1.50 GiB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:g} bytes"  # 1.5, not "2 bytes"


def memory_limits(memory_budget: int | None = None, available: int | None = None) -> tuple[float, float, str]:
    """The "auto" checkpointing budget, the refusal limit (bytes) and where they come from."""
    if memory_budget is not None:
        return memory_budget, memory_budget, "memory_budget"
    avail = available_memory() if available is None else available
    return AUTO_FRACTION * avail, LIMIT_FRACTION * avail, f"{LIMIT_FRACTION:.0%} of the available RAM"


def check_history(epochs: int, per_epoch: int, what: str) -> None:
    """Refuse (:class:`PlanRefused`) a training history of ``epochs`` + 1 entries of
    ``per_epoch`` bytes that would exceed the refusal limit, before it is allocated (epochs of
    3e9 were killed by the kernel's out-of-memory killer). ``what``: whose history, for the
    message."""
    need = (int(epochs) + 1) * int(per_epoch)
    _, limit, budget = memory_limits()
    if need > limit:
        fit = max(int(limit // per_epoch) - 1, 0)
        raise PlanRefused(f"epochs={epochs} needs {size_text(need)} for {what} ({size_text(per_epoch)} an epoch), "
                          f"above {budget} ({size_text(limit)}): at most epochs={fit} fit", need=need, limit=limit,
                          budget=budget)


def _check_checkpoint(stack: Stack, checkpoint) -> None:
    if checkpoint is None or (isinstance(checkpoint, str) and checkpoint == "auto"):
        return
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, (int, np.integer)):
        raise TypeError(f"checkpoint must be 'auto', None or an int, got {type(checkpoint).__name__} {checkpoint!r}")
    r = stack.residual or 1
    if checkpoint < 1 or checkpoint % r:
        none = "; None keeps every layer in memory (the command line's --checkpoint 0)" if checkpoint == 0 else ""
        raise ValueError(
            (f"checkpoint={checkpoint} must be a positive multiple of the residual group size {r} "
             "(a residual group must not straddle two segments)" if r > 1 else
             f"checkpoint={checkpoint} must be a positive int (layers per segment), 'auto' or None") + none
        )


def check_memory_budget(memory_budget):
    """``memory_budget`` (None, or a positive number of bytes) checked; NumPy floating scalars
    as Python floats (they are compared with byte counts beyond float16's and float32's range)."""
    if memory_budget is not None and (isinstance(memory_budget, (bool, np.bool_))
                                      or not isinstance(memory_budget, (int, float, np.integer, np.floating))
                                      or not memory_budget > 0):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    return float(memory_budget) if isinstance(memory_budget, np.floating) else memory_budget


def plan_run(stack: Stack, batch: int, *, checkpoint="auto", stats_only: bool = False, generated: bool = False,
             memory_budget: int | None = None, hist_bins: int = DEFAULT_BINS, available=None,
             diagnose_bins: int | None = None, backend: str | None = None) -> Plan:
    """Choose segment length and checkpointing; raise :class:`PlanRefused` if the run would not fit.

    ``checkpoint="auto"`` checkpoints only when the plain run needs more than the budget
    (``memory_budget`` bytes, default half of the available RAM), and for ``stats_only`` runs
    (k ~ sqrt(L)) unless their activations take at most :data:`SMALL_RUN_BYTES`: storing every
    activation of a large statistics-only run would cost memory and page faults for nothing the
    caller gets back, while a small one is faster without the recomputed forward. With
    ``checkpoint="auto"``, generated weights are all kept when they take at most
    :data:`SMALL_RUN_BYTES` (``Plan.keep_weights``; an explicit ``checkpoint`` keeps two
    segments of them, as it keeps one segment of activations).
    A run whose estimate exceeds
    ``memory_budget`` (default LIMIT_FRACTION of the available RAM) is refused with the options
    that fit. ``diagnose_bins``: count the diagnosis too (:func:`memory_estimate`); ``backend``:
    the backend that runs it (:func:`memory_estimate`; None: not known, the most any takes).
    ``available``: bytes (default :func:`available_memory`), or a callable returning them, called
    only without ``memory_budget`` (which replaces it) and for a run whose plain estimate exceeds
    :data:`PLAN_FREELY`.
    """
    _check_checkpoint(stack, checkpoint)
    if callable(available) and memory_budget is None:  # read only for a run that might not fit
        plan = _free_plan(stack, batch, checkpoint, stats_only, generated, hist_bins, diagnose_bins, backend,
                          (SMALL_RUN_BYTES, PLAN_FREELY, AUTO_FRACTION, LIMIT_FRACTION))
        if plan is not None:  # a small run's plan, the same on any machine
            return plan
        available = available()
    memory_budget = check_memory_budget(memory_budget)
    auto_budget, limit, budget = memory_limits(memory_budget, available)
    L = stack.depth
    k_auto = default_segment(stack)
    item = stack.np_dtype.itemsize
    small = min(SMALL_RUN_BYTES, auto_budget)
    auto = isinstance(checkpoint, str)  # an explicit checkpoint asks for bounded memory: nothing kept
    keep_weights = auto and generated and L * (stack.width ** 2 + stack.width) * item <= small

    def est(ck, so=stats_only, gen=generated):
        return memory_estimate(stack, batch, checkpoint=ck, stats_only=so, generated=gen,
                               keep_weights=keep_weights and gen, hist_bins=hist_bins, diagnose_bins=diagnose_bins,
                               backend=backend)

    if auto and stats_only:  # statistics only: O(sqrt(L) B N) memory, unless small
        small_acts = (2 * L + 1) * batch * stack.width * item <= small
        ck = k_auto if k_auto < L and not small_acts else None
    elif auto:
        ck = None if est(None) <= auto_budget else k_auto
    else:
        ck = None if checkpoint is None else min(int(checkpoint), L)
    need = est(ck)
    if need > limit:
        options = []
        for so, gen, label in ((False, generated, ""), (True, generated, "stats_only=True"),
                               (True, True, "stats_only=True and params=gradbench.GeneratedParams(stack, seed)")):
            for c2 in (*segment_candidates(stack), None):
                if (so, gen, c2) == (stats_only, generated, ck):
                    continue
                if est(c2, so, gen) <= limit:
                    opt = f"checkpoint={c2}" + (f", {label}" if label else "")
                    options.append(f"{opt} (about {size_text(est(c2, so, gen))})")
                    break
            if options:
                break
        hint = ("; it fits with " + options[0]) if options else "; reduce depth, width or batch"
        raise PlanRefused(
            f"this run (depth {L}, width {stack.width}, batch {batch}, checkpoint={ck}, stats_only={stats_only}, "
            f"{'generated' if generated else 'stored'} weights) needs about {size_text(need)} but the "
            f"budget is {size_text(limit)} ({budget}){hint}",
            need=need, limit=limit, budget=budget,
        )
    segment = ck if ck is not None else (k_auto if stats_only or generated else L)
    return Plan(segment=segment, recompute=ck is not None, stats_only=bool(stats_only), generated=generated,
                estimate=need, keep_weights=keep_weights)
