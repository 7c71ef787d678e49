"""This process's resident memory, from ``/proc/self/status`` (Linux): how benchmarks/ and tests/
measure the peak memory of a run (and how :mod:`gradbench.plan`'s estimates were checked).

``ru_maxrss`` cannot tell a child process's own peak: Python starts a child with vfork, and
Linux's exec keeps the high-water mark of the memory it replaces as the child's ``ru_maxrss``
(so does ``RUSAGE_CHILDREN``, the largest over every child so far). After a slow test had left
the pytest process at 1.6 GB resident, a 10^5-layer run that peaked at 140 MiB read 1.6 GB.
``VmHWM`` is the peak of the process's own memory since its exec, or since :func:`reset_peak`.
"""

from __future__ import annotations

import re
import resource
import sys

STATUS = "/proc/self/status"


def status_bytes(key: str) -> int:
    """The field ``key`` of /proc/self/status (``"VmRSS"``, ``"VmHWM"``, ...) in bytes; -1 where
    there is no such file or field."""
    try:
        with open(STATUS) as f:
            m = re.search(rf"^{re.escape(key)}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return -1
    return int(m.group(1)) * 1024 if m else -1


def reset_peak() -> bool:
    """Set ``VmHWM`` to the current resident set (Linux >= 4.0); whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def own_peak_bytes() -> int:
    """The process's own peak resident memory: ``VmHWM``, or ``ru_maxrss`` where there is no
    /proc (macOS; a parent's resident set may count there)."""
    peak = status_bytes("VmHWM")
    if peak >= 0:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
