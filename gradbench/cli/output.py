"""The files the command line writes: checked before any work, written atomically, described.

Every output path is checked before anything is computed (:func:`check_outputs`): its suffix,
that it is not a directory, that its directory exists (or ``--mkdir``) and that a file can be
created there, and that no two outputs name the same path or lie one inside the other (a file
inside a directory output such as ``--tensorboard`` included). A write that still fails (disk
full) is one line naming the file (:class:`~gradbench.cli.process.OutputError`). The formats
are documented in docs/formats.md; :data:`SCHEMA` is their version.

``.npz`` (:func:`write_npz`) is the compact twin of the JSON for large runs: the same arrays as
NumPy arrays and the rest as one JSON string ``meta``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

import numpy as np

from gradbench import __version__, _atomic
from gradbench._env import available_cpus
from gradbench.cli.process import OutputError, UsageError

# 1: gradbench 0.1.0's files (no schema, seed, batch, machine); 2: docs/formats.md, gradbench 0.2.0 (and
# development versions before it that still called themselves 0.1.0)
SCHEMA = 2
PLOTS = (".png", ".svg", ".pdf")
RESULTS = (".json", ".npz")


# ------------------------------------------------------------------ checks before the work
def check_outputs(outputs: list[tuple[str, str | None, tuple[str, ...]]], *, mkdir: bool = False,
                  directories: list[tuple[str, str | None]] = ()) -> None:
    """Refuse, before any work, output paths that could not be written.

    ``outputs``: (option, path or None, allowed suffixes) of the files. ``directories``:
    (option, path or None) of the directories a command writes into (``--tensorboard``,
    ``sweep --out``), checked by their own commands; here only that they are apart from the
    files and from each other (:func:`check_apart`). Raises UsageError naming the option.
    """
    for opt, path in [(o, p) for o, p, _ in outputs] + list(directories):
        if path is not None and not path.strip():  # --out '' ran and wrote nothing, with status 0
            raise UsageError(f"{opt} {path!r}: an empty path (give a path, or drop {opt})")
    given = [(opt, path, kinds) for opt, path, kinds in outputs if path]
    for opt, path, kinds in given:
        if os.path.splitext(path)[1].lower() not in kinds:
            raise UsageError(f"{opt} {path!r} must end in {_alternatives(kinds)}")
    check_apart([(opt, path, False) for opt, path, _ in given]
                + [(opt, path, True) for opt, path in directories if path])
    for opt, path, _ in given:
        _check_path(opt, path, mkdir)


def check_apart(outputs: list[tuple[str, str, bool]]) -> None:
    """No two outputs (option, path, is a directory) are the same path, and none lies inside
    another: a file written where a directory goes (or in it, or below a file) was found only
    when the second write failed, after the work."""
    real = [(opt, path, is_dir, os.path.realpath(path)) for opt, path, is_dir in outputs]
    for i, (opt, path, is_dir, r) in enumerate(real):
        for opt2, path2, is_dir2, r2 in real[:i]:
            if r == r2:
                kinds = "" if not (is_dir or is_dir2) else \
                    f" ({opt2} {'a directory' if is_dir2 else 'a file'}, {opt} {'a directory' if is_dir else 'a file'})"
                raise UsageError(f"{opt2} and {opt} both write {path!r}{kinds}: give them different "
                                 + ("files" if not kinds else "paths"))
            for (o_in, p_in, r_in), (o_out, p_out, d_out, r_out) in (((opt, path, r), (opt2, path2, is_dir2, r2)),
                                                                      ((opt2, path2, r2), (opt, path, is_dir, r))):
                if os.path.commonpath([r_in, r_out]) == r_out:
                    raise UsageError(f"{o_in} {p_in!r} lies inside {o_out} {p_out!r}, "
                                     + (f"the directory {o_out} writes: give a path outside it" if d_out else
                                        f"the file {o_out} writes: give them different paths"))


def _alternatives(kinds) -> str:
    return ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]


def _check_path(opt: str, path: str, mkdir: bool) -> None:
    if os.path.isdir(path):
        raise UsageError(f"{opt} {path!r} is a directory: give a file name")
    check_directory(opt, os.path.dirname(os.path.abspath(path)), mkdir, of=path)


def check_directory(opt: str, directory: str, mkdir: bool, *, of: str | None = None) -> None:
    """``directory`` exists and takes new files, or (``mkdir``) can be created."""
    what = f"{opt} {of!r}: directory {directory!r}" if of else f"{opt} {directory!r}"
    probe = directory
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UsageError(f"{what} cannot be created: {probe!r} is not a directory")
    if probe != directory and not mkdir:
        raise UsageError(f"{what} does not exist (create it, or pass --mkdir)")
    try:
        fd, tmp = _atomic._create_temp(probe, ".probe")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"{what} is not writable: cannot create a file in {probe!r}: {exc.strerror or exc}") from None


def make_directory(directory: str) -> None:
    """Create ``directory`` (and missing parents) for the outputs, at write time."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create directory {directory!r}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ writing
def write_file(path: str, write, *, binary: bool = False, mkdir: bool = False) -> str:
    """``write(f)`` into ``path`` atomically; a failure is an OutputError naming the file."""
    if mkdir:
        make_directory(os.path.dirname(os.path.abspath(path)))
    try:
        return _atomic.write_atomic(path, write, binary=binary, suffix=os.path.splitext(path)[1] or ".tmp",
                                    mkdir=False)
    except OSError as exc:
        raise OutputError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def write_plot(path: str, draw, *, mkdir: bool = False) -> str:
    """``draw(path)`` (a :mod:`gradbench.plot` function writing to ``path``); a failure to write is
    an OutputError naming the file."""
    if mkdir:
        make_directory(os.path.dirname(os.path.abspath(path)))
    try:
        draw(path)
    except OSError as exc:
        raise OutputError(f"cannot write {path!r}: {exc.strerror or exc}") from None
    return path


def jsonable(value):
    """JSON-ready data: arrays as lists, NumPy scalars as Python numbers, inf/NaN as "inf", "-inf",
    "nan" (strict JSON, the convention of every gradbench file)."""
    from gradbench.diagnose import _to_jsonable

    return _to_jsonable(value)


def write_json(path: str, document: dict, *, mkdir: bool = False) -> str:
    """Strict JSON of ``document``; values with ``write_json(f)`` (a Diagnosis) are streamed, so
    a 10^6-layer diagnosis never exists as one string."""
    return write_file(path, lambda f: _dump(f, document), mkdir=mkdir)


def _dump(f, value) -> None:
    if hasattr(value, "write_json"):
        value.write_json(f)
    elif isinstance(value, dict) and any(_streams(v) for v in value.values()):
        f.write("{")
        for i, (k, v) in enumerate(value.items()):
            f.write(("" if i == 0 else ", ") + json.dumps(str(k)) + ": ")
            _dump(f, v)
        f.write("}")
    else:
        f.write(json.dumps(jsonable(value), allow_nan=False))


def _streams(value) -> bool:
    return hasattr(value, "write_json") or isinstance(value, dict) and any(_streams(v) for v in value.values())


def write_diagnoses(path: str, head: dict, diags: dict, *, key: str | None = None, mkdir: bool = False) -> str:
    """Diagnoses as JSON (``head`` + ``{key: {name: diagnosis}}``, or ``"diagnosis"`` for one)
    or ``.npz`` (:func:`gradbench.frames.save_npz`: one diagnosis, or ``name/field`` for several;
    ``Diagnosis.from_npz(path[, name])`` reads them back)."""
    if path.lower().endswith(".npz"):
        from gradbench.frames import save_npz

        body = next(iter(diags.values())) if key is None else diags
        return write_file(path, lambda f: save_npz(f, body, head), binary=True, mkdir=mkdir)
    body = {"diagnosis": next(iter(diags.values()))} if key is None else {key: diags}
    return write_json(path, {**head, **body}, mkdir=mkdir)


# ------------------------------------------------------------------ what every file says about itself
def metadata(command: str, args, **fields) -> dict:
    """The head of every file: version, schema, command line, time, machine and ``fields``
    (seed, batch, backend threads, weights, seconds, ...; None values are left out)."""
    head = {
        "gradbench": __version__,
        "schema": SCHEMA,
        "command": command,
        "argv": list(getattr(args, "argv", sys.argv[1:])),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    head.update({k: v for k, v in fields.items() if v is not None})
    return head


def machine() -> dict:
    """Where a result was computed."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = available_cpus()
    return {"node": platform.node(), "system": f"{platform.system()} {platform.release()}",
            "cpu": cpu, "cores": cores, "python": platform.python_version(), "numpy": np.__version__}


def threads(backend: str | None) -> dict | None:
    """Threads of the backend that ran: its own kernels and the BLAS settings it inherits."""
    if backend is None:
        return None
    blas = {v: os.environ[v] for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
            if os.environ.get(v)}
    if backend == "c":
        from gradbench import cbackend

        kernels = cbackend.threads()
    else:  # the NumPy reference and the Numba kernels run their own loops on one thread
        kernels = 1
    return {"backend": backend, "kernels": kernels, "blas": blas or "library default (all cores)"}
