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
        raise EnvError(f"environment variable {name}={text!r} {requirement} (unset it for the default {default:g})")
    return value


def env_int(name: str, default: int, low: int = 0) -> int:
    """``int(os.environ[name])`` (``default`` when unset or empty), at least ``low``."""
    return _env_number(name, default, int, lambda v: v >= low, f"is not an integer >= {low}")


def env_float(name: str, default: float, low: float = 0.0) -> float:
    """``float(os.environ[name])`` (``default`` when unset or empty): finite and > ``low``."""
    return _env_number(name, default, float, lambda v: math.isfinite(v) and v > low, f"must be a number > {low:g}")


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
