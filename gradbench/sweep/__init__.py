"""Sweeps: many exact runs over a grid of :class:`~gradbench.Stack` fields x seeds, on Dask.

::

    table = gb.sweep({"activation": ["tanh", "relu"], "sigma_w": np.linspace(0.5, 3.0, 26)},
                     depth=200, width=256, batch=64, seeds=range(3), out="sweep/")

One *run* is one (configuration, seed), the run ``gradbench run --stats-only --seed`` makes:
the weights ``GeneratedParams(stack, seed)`` (drawn layer by layer, never stored), the input
``gaussian_input(stack, batch, default_rng([seed, 1]))`` (and, for a stack with a head, targets
from ``default_rng([seed, 2])``), one stats-only :func:`~gradbench.backprop` (without the
histograms of log10 |dW|, which no column holds: ``hist_bins=0``) and
:func:`gradbench.diagnose.assess`, the rates and verdict of :func:`~gradbench.diagnose`. Only
the statistics below travel back, never a gradient array. The table has one row per run: the swept and fixed fields under
their ``Stack`` names (and ``batch``), ``seed``, then

- measured: ``decades_per_layer`` (from ``diagnose``: its least-squares fit of
  log10 ||dL/dW_l|| against l, in its sign convention; with residual groups a fit over the
  groups' norms), ``decades_per_layer_se`` (the standard error of that very fit, over its
  points: :func:`~gradbench.sweep.worker.rate_se`, as if they scattered independently about
  the line; they wander as a random walk does, so another seed's rate lies several times
  farther: 30 seeds at depth 300 spread 8-23x that SE; sweep several ``seeds`` for the spread), ``signal_decades_per_layer`` (the same fit of log10 ||dL/dh_l||, the
  quantity mean field predicts, as the change per layer going down: negative = vanishing; see
  :class:`~gradbench.Diagnosis`), ``log10_grad_first`` (layer 0) and
  ``log10_grad_last`` (layer L - 1), ``loss_log10``, ``first_nonfinite`` (the first layer whose
  forward output, or else backward signal, is not finite; <NA> if none), ``verdict``, ``rule``
  (the rule that decided it, :func:`gradbench.verdict.judge`'s second value: a residual stack's
  "vanishing" with rates of ~0 is rule "branch", the change inside its branches; missing in rows
  that an earlier gradbench wrote),
  ``saturation`` and ``dead`` (means over the layers);
- mean field (``gradbench.theory.mean_field(stack)``, started from the run's first
  pre-activation variance q0 for its standard normal input, ``theory.first_q``: sigma_w^2 +
  sigma_b^2 without an input layer; q0 decides the phase of zero-bias GELU and swish at
  1.414 < sigma_w < 2; NaN and ``phase`` None for stacks it does
  not describe: batch norm, residual connections, clipping): ``q_star``, ``chi1``,
  ``theory_decades_per_layer``, ``depth_scale``, ``phase``;
- ``backend`` (the concrete one) and ``seconds`` (the run on its worker: parameters, backprop,
  assessment; the once-per-worker kernel warm-up is not counted).

Execution: a ``distributed.LocalCluster`` (worker processes, one thread each, one per core) for
the call, or a ``client=`` (a ``distributed.Client`` or a scheduler address). Runs are batched
into tasks (:func:`~gradbench.sweep.execute.task_size`, the last ones smaller:
:func:`~gradbench.sweep.execute.split`); each worker warms its kernels up once.
With ``out=DIR`` the client writes every finished task's rows at once, atomically, as
``DIR/rows-<hash>.parquet`` (the table's columns and ``run_key``, the run's identity:
:func:`~gradbench.sweep.grid.run_key`); ``DIR/sweep.json`` has the head of every gradbench file
and records the grid, the fixed fields and the backend (docs/formats.md). A second call with
the same ``out`` loads what is there and runs only the missing (configuration, seed) pairs; it
refuses a ``DIR`` of another grid.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from gradbench.backends import backends
from gradbench.sweep.execute import Progress, check_options, connect, refuse_in_bootstrap, task_size
from gradbench.sweep.execute import execute as _execute  # the name `execute` stays the module's
from gradbench.plan import available_memory
from gradbench.sweep.grid import FIELDS, Plan, Run, check_memory, plan, run_key
from gradbench.sweep.store import MANIFEST, as_planned, check_out, frame, hold, open_out
from gradbench.sweep.worker import (COLUMNS, MEASURED, THEORY, concrete_backend, mean_field_columns, rate_se,
                                    run_one, slope_se)

__all__ = ["COLUMNS", "FIELDS", "MANIFEST", "MEASURED", "THEORY", "Plan", "Run", "mean_field_columns", "plan",
           "rate_se", "run_key", "run_one", "slope_se", "sweep", "task_size"]

_INSTALL = "pip install 'gradbench[sweep]'"


def _found(name: str) -> bool:
    """Whether ``import name`` can find the module, without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def _require() -> None:
    """Dask distributed imported, pandas and pyarrow found, or an ImportError that says how to
    install them. pandas itself is imported by :func:`_pandas` once the tasks run: its import
    (0.3-0.5 s) then overlaps the workers' first runs instead of preceding them."""
    try:
        import distributed  # noqa: F401
        missing = [name for name in ("pandas", "pyarrow") if not _found(name)]  # pyarrow: Parquet files
        if missing:
            raise ImportError(f"No module named {missing[0]!r}")
    except ImportError as exc:
        raise ImportError(f"gradbench sweeps need Dask distributed, pandas and pyarrow ({exc}): "
                          f"{_INSTALL}") from None


def _pandas():
    """The pandas module (and pyarrow imported), or the ImportError of :func:`_require`."""
    try:
        import pandas
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"gradbench sweeps need Dask distributed, pandas and pyarrow ({exc}): "
                          f"{_INSTALL}") from None
    return pandas


def sweep(grid: Mapping, *, seeds: Iterable[int] = (0,), out=None, client=None, workers: int | None = None,
          backend: str = "auto", runs_per_task: int | None = None, progress: bool | Callable = False,
          **fixed):
    """Run every configuration of ``grid`` x ``seeds`` on Dask; one table row per run.

    Parameters
    ----------
    grid : dict
        Field name -> list of values: any :class:`~gradbench.Stack` field, or ``batch``. The
        configurations are the Cartesian product (the last axis varies fastest).
    seeds : iterable of int
        Seeds >= 0 of every configuration (parameters, input, targets; module docstring).
    out : path, optional
        A directory: each finished task's rows are written there at once (Parquet, atomically),
        and a second call with the same ``out`` runs only what is missing. A directory written
        by another grid, other fixed fields or another backend is refused.
    client : distributed.Client or str, optional
        A client, or the address of a running scheduler (``"tcp://host:8786"``). Default: a
        ``LocalCluster`` for this call, ``workers`` worker processes (default: one per core) of
        one thread each.
    backend : str
        ``"auto"`` (the fastest on each worker), ``"c"``, ``"numba"`` or ``"numpy"``.
    runs_per_task : int, optional
        Runs batched into one Dask task; default :func:`task_size`.
    progress : bool or callable
        True: print the Dask dashboard address and a progress bar over finished runs (stderr);
        a callable is called as ``progress(done, total)`` once at the start (``done``: runs found
        in ``out``) and after every finished task.
    **fixed
        Fields that all runs share: ``depth=200, width=256, batch=64, activation="tanh"``, ...
        (``batch`` defaults to 16).

    Returns
    -------
    pandas.DataFrame
        One row per (configuration, seed) in grid order; columns in the module docstring.
        ``attrs["sweep"]``: ``runs``, ``resumed`` (found in ``out``), ``computed``, ``workers``,
        ``dashboard`` (the Dask dashboard's address) and ``seconds`` of this call.

    Every value is validated (each configuration through ``Stack``) before anything starts, and
    every configuration is planned as its runs will be (:func:`gradbench.plan.plan_run`: one
    that would not fit in the memory its workers plan with raises
    :class:`~gradbench.plan.PlanRefused` naming the grid point): with a LocalCluster before the
    cluster starts and ``out`` is created, with ``client=`` before any run is submitted (the
    largest memory available on one of its workers).
    """
    if client is None:
        refuse_in_bootstrap()
    p = plan(grid, fixed, seeds, backend)
    check_options(client, workers, runs_per_task, progress, out)
    if client is None and backend != "auto" and backend not in backends():
        raise ValueError(f"backend={backend!r} is not available here (available: {', '.join(backends())})")
    if client is None:  # the LocalCluster's workers plan with this machine's memory: refused before it starts
        check_memory(p, available_memory(), concrete_backend(backend))  # (this machine's environment)
    _require()
    with contextlib.ExitStack() as held:
        if out is not None:
            check_out(out, p)  # first: nothing is made in a directory that is refused
            out = os.fspath(out)
            held.enter_context(hold(out))  # the directory's lock; a killed sweep's temporary files removed
        return _run(p, out, client, workers, runs_per_task, progress)


def _run(p: Plan, out: str | None, client, workers, runs_per_task, progress):
    """The sweep, ``out`` (if any) held."""
    runs = p.runs()
    frames, rows = [], []
    if out is not None:
        out, have = open_out(out, p, _pandas)
        if have is not None:
            frames.append(as_planned(have[have["run_key"].isin({r.key for r in runs})], p))
    done = set(frames[0]["run_key"]) if frames else set()
    todo = [r for r in runs if r.key not in done]
    bar = Progress(progress, len(runs))
    info = dict(runs=len(runs), resumed=len(done), computed=len(todo), workers=None, dashboard=None)
    t0 = time.perf_counter()
    try:
        if todo:
            with connect(client, workers) as c:
                info.update(workers=len(c.nthreads()), dashboard=c.dashboard_link)
                bar.start(len(done), c)
                rows = _execute(c, todo, p, out, runs_per_task, _pandas, bar, check_workers=client is not None)
        else:
            bar.start(len(done))
    finally:
        bar.close()
    pd = _pandas()
    if rows:
        frames.append(frame(rows, p, pd))
    table = _assemble(frames, runs, p, pd)
    table.attrs["sweep"] = info | {"seconds": time.perf_counter() - t0}
    return table


def _assemble(frames: list, runs: list[Run], p: Plan, pd):
    """One table: every run exactly once, in grid order, without the run_key column."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return frame([], p, pd).drop(columns="run_key")
    table = pd.concat(frames, ignore_index=True).drop_duplicates("run_key")
    order = {r.key: i for i, r in enumerate(runs)}
    missing = len(runs) - len(table)
    if missing:
        raise RuntimeError(f"sweep: {missing} of {len(runs)} runs have no row (a bug: please report it)")
    table = table.iloc[np.argsort(table["run_key"].map(order).to_numpy(), kind="stable")]
    # resumed rows of an earlier gradbench lack later columns (rule): missing there, in their place
    table = table.reindex(columns=frame([], p, pd).columns)
    return table.drop(columns="run_key").reset_index(drop=True).astype({"first_nonfinite": "Int64"})
