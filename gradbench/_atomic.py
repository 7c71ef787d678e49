"""Atomic file writes: a temporary file in the target's directory, then ``os.replace``.

A run that is interrupted (an exception, Ctrl-C, or SIGTERM under the command line, which turns
it into an exception) never leaves half a file behind, and a finished result is never lost to
a crash while the next one is being written. The file is fsynced before the rename and the
directory after it, so a power cut leaves the old file or the new one, never an empty one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import IO

TEMP_PREFIX = ".gradbench-"


def _create_temp(directory: str, suffix: str) -> tuple[int, str]:
    """A new file ``.gradbench-<random><suffix>`` in ``directory``, opened for writing.

    Created with mode 0666, so the kernel applies the process umask (and any default ACL) as
    for any new file: the umask is never read or changed (``os.umask`` sets it for every thread
    of the process at once). ``tempfile.mkstemp`` would give 0600.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {directory}")


def _sync_directory(directory: str) -> None:
    """fsync the directory (the rename's entry), where the platform allows it (not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, write: Callable[[IO], None], *, binary: bool = False, suffix: str = ".tmp",
                 mkdir: bool = True) -> str:
    """Create ``path`` atomically with ``write(file)``; returns the path.

    ``mkdir``: create missing directories (the command line passes its ``--mkdir``, after
    refusing a missing directory without it: a typo should not make a tree). The file gets the
    usual mode of a new file (0666 less the umask). Whatever interrupts ``write`` or the rename
    (any exception, KeyboardInterrupt included) removes the temporary file and leaves an
    existing ``path`` as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if mkdir:
        os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_temp(directory, suffix)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a power cut cannot leave the name on an empty file
        os.replace(tmp, path)
        _sync_directory(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
