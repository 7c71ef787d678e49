"""write_atomic puts the file's bytes on disk before the rename and the rename in the directory
after it (review 51: a renamed file could come back empty after a power cut)."""

from __future__ import annotations

import os

from gradbench import _atomic


def test_file_synced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"
        events.append(("fsync", kind))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", os.path.getsize(a)))
        return real_replace(a, b)

    monkeypatch.setattr(_atomic.os, "fsync", fsync)
    monkeypatch.setattr(_atomic.os, "replace", replace)
    path = _atomic.write_atomic(tmp_path / "rows.txt", lambda f: f.write("x" * 1000))
    assert open(path).read() == "x" * 1000
    assert events == [("fsync", "file"), ("replace", 1000), ("fsync", "dir")], events
