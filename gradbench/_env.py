"""Environment variables that gradbench reads, checked in one place, and the CPUs it may use.

A malformed value is an error that names the variable, the value and what is allowed, never a
bare ``int()`` traceback and never silently ignored.
"""

from __future__ import annotations

import math
import os


class EnvError(ValueError):
    """An environment variable with a value gradbench cannot use."""


def _env_number(name: str, default, convert, ok, requirement: str):
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        shown = default if isinstance(default, int) else f"{default:g}"  # 268435456, not 2.68435e+08
        # a default outside the allowed values is a sentinel (GRADBENCH_C_THREADS' 0: one per CPU)
        shown = f"the default {shown}" if ok(default) else "gradbench's default"
        raise EnvError(f"environment variable {name}={text!r} {requirement} (unset it for {shown})")
    return value


# The largest integer a variable may hold: the C drivers take them as int64.
ENV_INT_MAX = 2**62


def env_int(name: str, default: int, low: int = 0, high: int = ENV_INT_MAX) -> int:
    """``int(os.environ[name])`` (``default`` when unset or empty), from ``low`` to ``high``
    (:data:`ENV_INT_MAX` by default: 99999999999999999999 failed as an OverflowError on import)."""
    return _env_number(name, default, int, lambda v: low <= v <= high,
                       f"is not an integer from {low} to {'2^62' if high == ENV_INT_MAX else high}")


def env_float(name: str, default: float, low: float = 0.0) -> float:
    """``float(os.environ[name])`` (``default`` when unset or empty): finite and > ``low``."""
    return _env_number(name, default, float, lambda v: math.isfinite(v) and v > low, f"must be a finite number > {low:g}")


def env_flag(name: str) -> bool:
    """A yes/no variable: unset, empty or 0 is no, 1 is yes; anything else is refused."""
    text = os.environ.get(name, "").strip()
    if text in ("", "0"):
        return False
    if text == "1":
        return True
    raise EnvError(f"environment variable {name}={text!r} must be 0 or 1")


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity (``taskset``, cgroups' cpusets), else
    ``os.cpu_count()`` where there is no affinity (not Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def runnable_threads() -> int | None:
    """Threads of the whole system running or ready to run now, the caller included (the first
    number of the fourth field of ``/proc/loadavg``, "runnable/total"); None where there is no
    such file."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, IndexError, ValueError):
        return None


def spare_cpu() -> bool:
    """Whether a helper thread would find a CPU of its own now: this process may run on two CPUs
    or more (:func:`available_cpus`), and fewer threads are runnable in the whole system than it
    has CPUs (:func:`runnable_threads`, the caller included; where that is unknown, the first
    condition alone). Every worker of a sweep that fills the machine is running: none is spare."""
    if available_cpus() < 2:
        return False
    runnable = runnable_threads()
    return runnable is None or runnable < (os.cpu_count() or 1)
