"""Running a sweep's tasks on Dask: the client, task sizing, collection as tasks finish, progress."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable

import numpy as np

from gradbench._env import available_cpus
from gradbench.sweep.grid import Plan, Run, check_memory
from gradbench.sweep.store import frame, write_rows
from gradbench.sweep.worker import run_task, worker_memory

# Task sizing (task_size): tasks per worker for load balance, the longest task we aim for (what a
# crash can lose), and a conservative FLOP rate of one core to estimate a run's time from its size.
_TASKS_PER_WORKER = 8
_TASK_SECONDS_MAX = 60.0
_FLOPS_PER_SECOND = 2e9


def task_size(runs: list[Run], n_workers: int) -> int:
    """Runs per task: at least ``_TASKS_PER_WORKER`` tasks per worker (load balance at the end),
    at most ``_TASK_SECONDS_MAX`` of estimated work per task (what a crash can lose).

    A run's time is estimated from its size, 6 B N^2 L FLOPs at ``_FLOPS_PER_SECOND`` plus 2 ms.
    Runs of >= 50 ms in tasks of several runs keep Dask's few milliseconds per task well under
    10 % of the work.
    """
    est = max(2e-3 + 6.0 * r.batch * r.config["width"] ** 2 * r.config["depth"] / _FLOPS_PER_SECOND for r in runs)
    by_balance = math.ceil(len(runs) / (_TASKS_PER_WORKER * max(1, n_workers)))
    by_time = max(1, int(_TASK_SECONDS_MAX // est))
    return max(1, min(by_balance, by_time))


class SchedulerError(OSError):
    """A scheduler address that cannot be reached or does not answer as a Dask scheduler (the
    other OSErrors of a sweep, a full disk for instance, are not this)."""


def _refused_at_once(address: str) -> bool:
    """A tcp address (``tcp://`` or no scheme, Dask's default) whose host does not resolve or
    whose port refuses the connection: OSError now. Dask retries both until its timeout, so they
    waited 30 s and then read as "answered, but not as a Dask scheduler"; anything else (no
    answer, another host's firewall) is left to Dask's own connect. Returns whether a TCP
    connection to the address was made (something there answered)."""
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address)
    except ValueError:
        return False
    try:
        host, port = parse_host_port(loc)
    except ValueError:
        return False
    if scheme != "tcp" or not port:
        return False
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SchedulerError(f"the host {host!r} of {address} does not resolve ({exc.strerror})") from None
    try:
        socket.create_connection((host, port), timeout=2.0).close()
    except ConnectionRefusedError:
        raise SchedulerError(f"nothing listens at {address}: the connection was refused (is the scheduler running? "
                             "a scheduler listens on 8786 by default, its dashboard on 8787)") from None
    except OSError:
        return False
    return True


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Open and close one Dask connection to ``address`` within ``timeout`` seconds (default
    Dask's ``distributed.comm.timeouts.connect``, 30 s) before a ``Client`` is made; OSError
    naming the address otherwise.

    ``Client(address)`` itself waited forever on a server that accepts the connection and never
    answers (the scheduler's dashboard port, 8787 by default, given for its 8786), and took an
    HTTP server's reply for a frame length (MemoryError: 'Unable to allocate 3.07 EiB'). Runs in
    a thread of its own, so that it works under a running event loop (Jupyter).
    """
    import asyncio
    import threading

    import dask
    from dask.utils import parse_timedelta
    from distributed.comm import connect as comm_connect

    if timeout is None:
        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s")
    answered = _refused_at_once(address)
    failure: list[BaseException] = []

    async def once():
        comm = await asyncio.wait_for(comm_connect(address, timeout=timeout), timeout)
        await comm.close()

    def run():
        try:
            asyncio.run(once())
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="gradbench-probe", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    # Dask's connect gives up with OSError("Timed out trying to connect ...") after retrying
    timed_out = failure and (isinstance(failure[0], (TimeoutError, asyncio.TimeoutError))
                             or isinstance(failure[0], OSError) and str(failure[0]).startswith("Timed out"))
    if thread.is_alive() or timed_out:
        why = ("something listens there, but not a Dask scheduler" if answered else
               "the port is closed, or the server there is not a scheduler")
        raise SchedulerError(f"no Dask scheduler answered at {address} within {timeout:g} s ({why}: a scheduler "
                             "listens on 8786 by default, its dashboard on 8787)")
    if failure:
        exc = failure[0]
        what = (f"{address} answered, but not as a Dask scheduler" if answered else
                f"no Dask connection to {address} could be made")
        hint = ("; a tls:// address needs Dask's TLS settings (distributed.comm.tls in its configuration)"
                if address.startswith("tls://") else "; an inproc:// address exists only inside the Python process "
                "that made it (give another process the scheduler's tcp:// address)"
                if address.startswith("inproc://") else "")
        raise SchedulerError(f"{what} ({type(exc).__name__}: {str(exc)[:120]}){hint}") from None


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored meanwhile (main thread only): processes started now keep ignoring it
    (Python installs its KeyboardInterrupt handler only where SIGINT is not ignored), so a
    Ctrl-C in a terminal, sent to the whole process group, interrupts only the caller."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def connect(client, workers: int | None):
    """The client to use: the caller's, one for an address, or a LocalCluster for this call."""
    from distributed import Client, LocalCluster

    if client is None:
        n = workers or available_cpus()
        # Dask's own log lines off (the cluster's processes and, while it runs, this one): a
        # failure reaches the caller as an exception; a Ctrl-C that closes the workers in the
        # middle of their tasks printed pages of warnings and tracebacks
        with _sigint_ignored(), warnings.catch_warnings():  # the workers inherit it: Ctrl-C reaches the caller
            # "Port 8787 is already in use ... Hosting the HTTP server on port N instead": the
            # address it took is printed with the progress (client.dashboard_link)
            warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            try:
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       silence_logs=logging.CRITICAL)
            except RuntimeError as exc:
                raise _workers_failed(exc) from (None if _run_from_script() else exc)
        with cluster, Client(cluster) as c:
            yield c
    elif isinstance(client, str):
        probe_scheduler(client)
        with Client(client) as c:
            yield c
    else:
        yield client


def refuse_in_bootstrap() -> None:
    """A RuntimeError when called while this process is a new process importing the main script
    (multiprocessing's bootstrapping, as a LocalCluster's worker does): a script that calls
    gb.sweep without ``if __name__ == "__main__":`` would start a sweep in every worker."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(f"gradbench.sweep was called in a new process importing the main script; {GUARD_HINT}")


GUARD_HINT = ("a script that calls gradbench.sweep must call it under `if __name__ == \"__main__\":` (the "
              "LocalCluster's workers are new processes that import the script, and without the guard each starts "
              "the sweep again), or give client= a running cluster")


def _run_from_script() -> bool:
    """Whether the main module is a file (a script, whose missing main guard is the likely cause)."""
    return getattr(sys.modules.get("__main__"), "__file__", None) is not None


def _workers_failed(exc: BaseException) -> RuntimeError:
    """The error for a LocalCluster whose worker processes did not start (Dask's own is a
    page of tracebacks ending in "Nanny failed to start")."""
    hint = f"; {GUARD_HINT}" if _run_from_script() else ""
    return RuntimeError(f"gradbench.sweep could not start its LocalCluster's worker processes (Dask: {exc}){hint}")


def split(todo: list, k: int, n_workers: int, guided: bool = True) -> list[list]:
    """``todo`` in tasks of ``k`` runs; ``guided``: the last ones smaller (each at most the
    remaining runs over twice the workers), so that the workers finish within a run or two of
    each other instead of one task: with 16 tasks of 13 runs on two workers, one worker idled
    for 0.15-0.25 s of a 3.4 s sweep (Dask's task stream)."""
    tasks, i = [], 0
    while i < len(todo):
        size = min(k, max(1, math.ceil((len(todo) - i) / (2 * max(1, n_workers))))) if guided else k
        tasks.append(todo[i:i + size])
        i += size
    return tasks


def execute(client, todo: list[Run], p: Plan, out: str | None, runs_per_task: int | None, pandas,
            report: Callable[[int], None], check_workers: bool = False) -> list[dict]:
    """Submit ``todo`` in tasks; write (``out``) each task's rows as it finishes; return every
    row. ``check_workers``: first plan every configuration with the memory of the worker that has
    the most (:func:`~gradbench.sweep.grid.check_memory`; PlanRefused before any run is submitted).
    ``pandas()`` returns the pandas module: it is called once every task is submitted, so
    that its first import overlaps the workers' first runs."""
    from distributed import as_completed

    n_workers = len(client.nthreads())
    if not n_workers:  # a scheduler without workers: tasks would wait in silence
        print(f"the scheduler at {client.scheduler.address} has no workers: waiting for one to join "
              "(start one with `dask worker ADDRESS`; Ctrl-C stops)", file=sys.stderr, flush=True)
        client.wait_for_workers(1)
        n_workers = len(client.nthreads())
    if check_workers:  # a cluster the caller gave: its workers' memory, not this machine's
        available, name = max(client.run(worker_memory, p.backend).values(), key=lambda m: m[0])
        check_memory(p, available, name)
    k = runs_per_task or task_size(todo, n_workers)
    tasks = [[(r.key, r.config, r.batch, r.seed) for r in t]
             for t in split(todo, k, n_workers, guided=runs_per_task is None)]
    futures = [client.submit(run_task, t, p.backend, pure=False) for t in tasks]
    got = []
    try:
        pd = pandas()
        for _, rows in as_completed(futures, with_results=True, loop=client.loop):
            if out is not None:
                write_rows(out, frame(rows, p, pd))
            got += rows
            report(len(rows))
    finally:  # Ctrl-C or an error: leave nothing of ours running on a shared cluster
        client.cancel(futures)
    return got


class Progress:
    """``progress=True``: the dashboard address, then finished runs on stderr (a tqdm bar on a
    terminal, else a plain line every ``GRADBENCH_PROGRESS_SECONDS``: sweeps are the long jobs
    run under nohup or a batch system); a callable: called as ``progress(done, total)``."""

    def __init__(self, progress, total: int):
        self.fn = progress if callable(progress) else None
        self.bar, self.done, self.total = None, 0, total
        if progress is True:
            from gradbench.cli.progress import Progress as Lines

            self.bar = Lines("sweep", total=total, unit="runs", delay=0.0)

    def start(self, done: int, client=None) -> None:
        self.done = done
        if self.bar is not None:
            if client is not None:
                link = client.dashboard_link
                print(f"dask dashboard: {link}" if link else "dask dashboard: not available", file=sys.stderr)
            self.bar.count(done)
            self.bar.__enter__()
        if self.fn is not None:
            self.fn(done, self.total)

    def __call__(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.count(self.done)
        if self.fn is not None:
            self.fn(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


# A LocalCluster's workers are single-threaded processes: more than this many per CPU only compete.
WORKERS_PER_CPU = 4


def check_options(client, workers, runs_per_task, progress, out) -> None:
    if client is not None and not isinstance(client, str) and not hasattr(client, "submit"):
        raise TypeError(f"client must be a distributed.Client, a scheduler address or None, got {client!r}")
    if isinstance(client, str):
        check_address(client)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        cpus = available_cpus()
        if workers > WORKERS_PER_CPU * cpus:  # 100000 processes hung the machine
            raise ValueError(f"workers={workers} is more than {WORKERS_PER_CPU} worker processes per CPU this process "
                             f"may use ({cpus}): at most {WORKERS_PER_CPU * cpus}; a cluster of other machines is "
                             "reached by its scheduler's address (client=)")
        if client is not None:
            raise ValueError("workers= sizes the LocalCluster of a call without client=; give one or the other")
    if runs_per_task is not None and (isinstance(runs_per_task, bool) or not isinstance(
            runs_per_task, (int, np.integer)) or runs_per_task < 1):
        raise ValueError(f"runs_per_task must be an int >= 1 or None, got {runs_per_task!r}")
    if not (isinstance(progress, bool) or callable(progress)):
        raise TypeError(f"progress must be a bool or a callable progress(done, total), got {progress!r}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a directory path or None, got {type(out).__name__} {out!r}")
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out={os.fspath(out)!r} is a file, not a directory")


def check_address(address: str, label: str = "client=") -> None:
    """A scheduler address that Dask can parse (scheme and, for network schemes, host:port);
    whether a scheduler answers there is known only when connecting. ``label`` names the
    parameter in the message."""
    try:
        from distributed.comm.addressing import parse_address, parse_host_port
        from distributed.comm.registry import get_backend
    except ImportError:  # the caller reports the missing extra
        return
    try:
        scheme, loc = parse_address(address)
        get_backend(scheme)
        if scheme in ("tcp", "tls", "ws", "wss"):
            parse_host_port(loc)
    except ValueError as exc:
        raise ValueError(f"{label}{address!r} is not a scheduler address such as 'tcp://host:8786' ({exc})") from None
