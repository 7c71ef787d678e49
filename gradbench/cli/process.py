"""The command line as a Unix process: exit statuses, signals, closed and broken streams.

Exit statuses (``gradbench --help`` lists them):

====  ==================================================================================
0     done
1     a failure that is not the user's: a file could not be written, out of memory, or an
      internal error (a bug: ``--debug`` shows the traceback)
2     a usage error: a bad option or combination, or a run refused before it started
      (it would not fit in memory); one line on stderr, nothing computed or written
130   interrupted (SIGINT, Ctrl-C); 143 terminated (SIGTERM); 141 stdout closed early
      (``| head``), which is silent, as for any Unix tool killed by SIGPIPE
====  ==================================================================================

SIGTERM is turned into an exception like SIGINT's KeyboardInterrupt, so that an atomic write
in progress removes its temporary file (:mod:`gradbench._atomic`) and no half file is left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import traceback

OK, FAILURE, USAGE = 0, 1, 2
INTERRUPTED, BROKEN_PIPE, TERMINATED = 130, 141, 143


class UsageError(ValueError):
    """Bad options, a bad combination of options, or a run refused before it started (exit 2)."""


class OutputError(OSError):
    """A result file, a plot or standard output could not be written (exit 1, one line)."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks and atomic writes clean up."""


class _StdoutError(Exception):
    """Writing to standard output failed (``errno`` kept: EPIPE is silent)."""

    def __init__(self, exc: OSError):
        super().__init__(exc.strerror or str(exc))
        self.errno = exc.errno


class _GuardedStdout:
    """sys.stdout whose write failures surface as :class:`_StdoutError`, not as a traceback."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise _StdoutError(exc) from None

    def flush(self):
        try:
            self._stream.flush()
        except OSError as exc:
            raise _StdoutError(exc) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _open_missing_fds() -> None:
    """Put /dev/null on fds 0-2 when they are closed (``2>&-``): otherwise the next file opened
    would get fd 2 and anything written to stderr would land in it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _silence_stdout() -> None:
    """After EPIPE or ENOSPC: point fd 1 at /dev/null so that the interpreter's last flush of
    what is still buffered is quiet."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.__stdout__.fileno() if sys.__stdout__ is not None else 1)
        os.close(null)
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def guarded_process():
    """Streams that cannot crash the command and SIGTERM as an exception, for one ``main`` call.

    A closed stderr (or stdout) becomes /dev/null; stdout write errors become
    :class:`_StdoutError`; SIGTERM raises :class:`Terminated` in the main thread. Everything is
    restored afterwards (``main`` may be called in-process, by tests).
    """
    _open_missing_fds()
    saved = sys.stdout, sys.stderr
    null = None
    if sys.stderr is None:
        null = sys.stderr = open(os.devnull, "w")
    if sys.stdout is None:
        sys.stdout = null or open(os.devnull, "w")
    sys.stdout = _GuardedStdout(sys.stdout)
    old_handler = None
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        old_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
        sys.stdout, sys.stderr = saved


def _raise_terminated(signum, frame):
    raise Terminated()


def run_guarded(command: str, call, debug: bool) -> int:
    """``call()`` under :func:`guarded_process`; every way it can end becomes an exit status.

    Only :class:`UsageError` (and the planner's refusal, and a malformed environment variable) is
    the user's: one line, status 2.
    Anything unexpected is an internal error: one line with a hint, the traceback with
    ``debug``.
    """
    from gradbench._env import EnvError
    from gradbench.cli.progress import interval_from_env
    from gradbench.plan import PlanRefused

    prog = f"gradbench {command}" if command else "gradbench"
    try:
        with guarded_process():
            try:
                interval_from_env()  # a malformed GRADBENCH_PROGRESS_SECONDS, before any work
                code = call()
                sys.stdout.flush()
                return code
            except _StdoutError as exc:
                _silence_stdout()  # what is still buffered can never be written either
                if exc.errno == errno.EPIPE:
                    return BROKEN_PIPE
                _say(f"{prog}: error: cannot write to standard output: {exc}")
                return FAILURE
            except (UsageError, PlanRefused, EnvError) as exc:
                _say(f"{prog}: error: {_one_line(exc)}")
                return USAGE
            except OutputError as exc:
                _say(f"{prog}: error: {_one_line(exc)}")
                return FAILURE
            except MemoryError as exc:
                _say(f"{prog}: error: out of memory: {_one_line(exc)}")
                return FAILURE
            except KeyboardInterrupt:
                _say("interrupted")
                return INTERRUPTED
            except Terminated:
                _say("terminated")
                return TERMINATED
            except Exception as exc:  # a bug: say so, and how to see it
                if debug:
                    traceback.print_exc()
                _say(f"{prog}: internal error: {type(exc).__name__}: {_one_line(exc)}"
                     + ("" if debug else " (rerun with --debug for the traceback)"))
                return FAILURE
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _say(line: str) -> None:
    with contextlib.suppress(Exception):
        print(line, file=sys.stderr, flush=True)
