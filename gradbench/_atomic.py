"""Atomic file writes: a temporary file in the target's directory, then ``os.replace``.

A run that is interrupted never leaves half a file behind, and a finished result is never
lost to a crash while the next one is being written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO


def write_atomic(path, write: Callable[[IO], None], *, binary: bool = False, suffix: str = ".tmp") -> str:
    """Create ``path`` atomically with ``write(file)``; returns the path.

    The file gets the usual mode (0666 less the umask), not mkstemp's 0600.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gradbench-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
