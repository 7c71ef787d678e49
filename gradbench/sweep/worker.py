"""What a sweep's worker computes: one run's statistics, the mean-field columns, the warm-up.

Only these plain numbers travel back to the client, never a gradient array (the runs are
stats-only). Columns (the package's docstring defines them): :data:`MEASURED`, :data:`THEORY`,
``backend`` and ``seconds``.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import sys
import time

import numpy as np

from gradbench import theory
from gradbench.diagnose import assess
from gradbench.engine import backprop
from gradbench.params import GeneratedParams, gaussian_input, init_params, random_targets
from gradbench.plan import PlanRefused, available_memory, plan_run
from gradbench.spec import Stack
from gradbench.verdict import rate_points

MEASURED = ("decades_per_layer", "decades_per_layer_se", "signal_decades_per_layer", "log10_grad_first", "log10_grad_last", "loss_log10",
            "first_nonfinite", "verdict", "rule", "saturation", "dead")
THEORY = ("q_star", "chi1", "theory_decades_per_layer", "depth_scale", "phase")
COLUMNS = MEASURED + THEORY + ("backend", "seconds")
#: What the rows' numbers mean, recorded in ``sweep.json`` as ``rows`` (none: 1): raised when a
#: column's number changes for the same run within one gradbench version, so that a resumed
#: table does not mix the two. 2: a residual stack's ``decades_per_layer_se`` is the SE of the
#: fit its rate comes from (:func:`rate_se`); rows 1 held that of a per-layer fit.
ROWS = 2


def slope_se(y: np.ndarray) -> float:
    """Standard error of the least-squares slope of ``y`` against l = 0, 1, ... over its finite entries.

    ``sqrt(sum(r^2) / (n - 2) / sum((l - mean l)^2))`` with r the residuals; NaN for n < 3.
    """
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    n = int(ok.sum())
    if n < 3:
        return math.nan
    l, y = np.flatnonzero(ok).astype(np.float64), y[ok]
    dl, dy = l - l.mean(), y - y.mean()
    sxx = float(dl @ dl)
    r = dy - (float(dl @ dy) / sxx) * dl
    return math.sqrt(float(r @ r) / (n - 2) / sxx)


def rate_se(grad_log10, group: int = 0) -> float:
    """Standard error of the rate :func:`gradbench.verdict.grad_rate` fits (``decades_per_layer``),
    over the very points of that fit (:func:`gradbench.verdict.rate_points`: every finite layer,
    or with residual groups of ``group`` layers each group's norm, divided by ``group``: that fit's
    rate is per layer), without the isolated ones. NaN with fewer than 3."""
    y, span = rate_points(grad_log10, group)
    return slope_se(y) / span


def mean_field_columns(stack: Stack) -> dict:
    """The theory columns of a stack (NaN and phase None where mean field does not describe it),
    with the length map started at the stack's first pre-activation variance for the standard
    normal input that :func:`run_one` feeds (:func:`gradbench.theory.first_q`)."""
    if stack.batch_norm or stack.residual or stack.clip is not None:
        return dict(q_star=math.nan, chi1=math.nan, theory_decades_per_layer=math.nan, depth_scale=math.nan,
                    phase=None)
    mf = theory.mean_field(stack)
    return dict(q_star=mf.q_star, chi1=mf.chi1, theory_decades_per_layer=mf.decades_per_layer,
                depth_scale=mf.depth_scale, phase=mf.phase)


# glibc's mallopt parameters and the values its dynamic mmap threshold grows to on 64-bit Linux.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_MAX, _TRIM = 32 * 2**20, 64 * 2**20


@functools.lru_cache(maxsize=None)
def tune_malloc() -> bool:
    """Let this process reuse the memory of one run for the next (once per process; glibc only).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, and a fixed threshold
    turns off glibc's dynamic mmap threshold: every array of a run (16 MB of weights at depth
    500, width 64) is then mapped and zero-filled afresh, ~11,000 page faults a run and runs
    ~1.3x slower than in a plain process. Where such a threshold was imposed, set the values
    the dynamic scheme would reach (mmap above 32 MiB, trim above 64 MiB): ~0 faults a run.
    Returns whether it changed anything.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM))
    except (OSError, AttributeError):  # not glibc
        return False


@functools.lru_cache(maxsize=None)
def warm_up(backend: str, dtype: str) -> str:
    """Compile or load the kernels once per process (per worker), not once per task or run.

    A tiny stats-only pass of the same backend and dtype; the kernels take the activation and
    options as codes, so this covers every configuration. Returns the concrete backend.
    """
    s = Stack(depth=2, width=4, activation="tanh", dtype=dtype)
    return backprop(s, init_params(s, 0), gaussian_input(s, 2, 0), backend=backend, stats_only=True).backend


#: How a sweep's run calls backprop, beside its generated weights (:class:`GeneratedParams`) and
#: the default ``checkpoint="auto"`` and ``memory_budget=None``: what :func:`run_one` and
#: :func:`plan_of` (the check of every grid point before a sweep starts) share.
RUN_OPTIONS = dict(stats_only=True, hist_bins=0)


def plan_of(stack: Stack, batch: int, backend: str | None, available):
    """The plan of a sweep's run (:func:`gradbench.plan.plan_run`), as the worker's backprop
    makes it: stats-only, generated weights, ``checkpoint="auto"``, no ``memory_budget`` (the
    refusal limit is 90 % of ``available`` bytes: a number, or a callable read only for a run
    that is not small), for the concrete ``backend`` (None: not known). Raises
    :class:`~gradbench.plan.PlanRefused` with the message the worker would raise. Arithmetic
    only: nothing is allocated."""
    return plan_run(stack, batch, generated=True, available=available, backend=backend, **RUN_OPTIONS)


def concrete_backend(backend: str) -> str | None:
    """The backend ``backend`` is in this process ("auto": the fastest built here); None if it
    cannot be used here (the run says why)."""
    from gradbench.backends import resolve

    try:
        return resolve(backend)
    except (RuntimeError, ValueError):
        return None


def worker_memory(backend: str) -> tuple[int, str | None]:
    """What a worker plans its runs with: the bytes available to it (:func:`available_memory`
    and what its engine keeps for later calls, as backprop counts them) and the concrete backend
    ``backend`` is there (:func:`concrete_backend`). Run on every worker of a scheduler the
    caller gave, before any run is submitted."""
    from gradbench.buffers import held

    return available_memory() + held(), concrete_backend(backend)


def run_one(stack: Stack, batch: int, seed: int, backend: str = "auto") -> dict:
    """One run's measured columns, ``backend`` and ``seconds``: what a sweep's worker computes."""
    t0 = time.perf_counter()
    params = GeneratedParams(stack, seed)  # the network `gradbench run --seed` builds for this seed
    x = gaussian_input(stack, batch, seed=np.random.default_rng([seed, 1]))
    # as `gradbench run --stats-only` (the weights are generated, not stored), without the
    # histograms of log10 |dW| that no column holds (a quarter of a run's time at depth 500)
    res = backprop(stack, params, x, random_targets(stack, batch, seed), backend=backend, **RUN_OPTIONS)
    a = assess(res)  # diagnose's rates and verdict
    seconds = time.perf_counter() - t0
    nonfinite = res.first_nonfinite_forward if res.first_nonfinite_forward is not None else \
        res.first_nonfinite_backward
    g = a.grad_log10
    row = dict(decades_per_layer=float(a.decades_per_layer), decades_per_layer_se=rate_se(g, stack.residual),
               signal_decades_per_layer=float(a.signal_decades_per_layer),
               log10_grad_first=float(g[0]), log10_grad_last=float(g[-1]), loss_log10=float(a.loss_log10),
               first_nonfinite=nonfinite, verdict=a.verdict, rule=a.rule,
               saturation=float(np.mean(res.saturation)), dead=float(np.mean(res.dead)), backend=res.backend,
               seconds=seconds)
    return row


class RunFailed(RuntimeError):
    """A run of a sweep raised: names the run (its key, fields, batch and seed) and the error."""


def run_task(runs: list[tuple], backend: str) -> list[dict]:
    """A Dask task: ``runs`` of ``(key, stack fields, batch, seed)``; returns one row dict per run.
    An error in a run is raised as :class:`RunFailed` naming that run (a run refused for its size,
    PlanRefused, and MemoryError as they are: the command line says those in its own words)."""
    rows, mean_field = [], {}
    for key, settings, batch, seed in runs:
        stack = Stack(**settings)
        tune_malloc()
        warm_up(backend, stack.dtype)
        try:
            measured = run_one(stack, batch, seed, backend)
        except (PlanRefused, MemoryError):  # the user's size (exit 2) or out of memory (exit 1), as they are
            raise
        except Exception as exc:  # noqa: BLE001 - named and raised again
            fields = ", ".join(f"{k}={v!r}" for k, v in sorted(settings.items()))
            raise RunFailed(f"the run {fields}, batch={batch}, seed={seed} failed: {type(exc).__name__}: "
                            f"{exc}") from exc
        cfg = json.dumps(sorted(settings.items()))
        if cfg not in mean_field:
            mean_field[cfg] = mean_field_columns(stack)
        rows.append({"run_key": key, "seed": seed, **measured, **mean_field[cfg]})
    return rows
