"""A script that calls gb.sweep without `if __name__ == "__main__":`.

The LocalCluster's workers are spawned processes that import the script; without the guard each
started the sweep again, and the user got ~300 lines of Dask tracebacks ending in "Nanny failed
to start". Now the worker's import stops at once with the reason, and the script's own error
says what to do.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("distributed")


def _script(tmp_path, guarded: bool):
    call = 'gb.sweep(dict(depth=[3], width=[4], sigma_w=[1.0]), workers=1, progress=False)'
    body = f"if __name__ == '__main__':\n    print(len({call}))" if guarded else f"print(len({call}))"
    path = tmp_path / ("guarded.py" if guarded else "unguarded.py")
    path.write_text("import gradbench as gb\n" + textwrap.dedent(body) + "\n")
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_unguarded_script_says_what_to_do(tmp_path):
    proc = _script(tmp_path, guarded=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: gradbench.sweep could not start its LocalCluster's worker processes")
    assert 'if __name__ == "__main__":' in last
    assert len(proc.stderr.splitlines()) < 120, proc.stderr  # was ~300 lines of Dask's


def test_guarded_script_runs(tmp_path):
    proc = _script(tmp_path, guarded=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "1"
