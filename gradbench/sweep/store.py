"""The ``out`` directory of a sweep: a manifest and one Parquet file per finished task.

``DIR/sweep.json`` has the head of every gradbench file (docs/formats.md: ``gradbench``,
``schema``, ``command`` "sweep", ``argv``, ``created``, ``machine``; of the call that created
the directory) and what identifies the sweep (``axes``: the set of values of every axis,
``fixed``: the fixed fields, ``backend``). A directory with rows resumes only in the same
gradbench version, schema and rows version (:data:`~gradbench.sweep.worker.ROWS`: a table must
not mix two versions' numbers) and for the same
effective sweep: every field at the value its runs get (a field not given at Stack's default,
numbers compared as numbers, init names canonical: :func:`gradbench.sweep.grid.canonical`) and
the same backend. A directory with ``sweep.json`` and no rows (a sweep that never started, e.g.
for an unreachable scheduler) is taken over by whatever sweep comes next, its ``sweep.json``
written anew.
``DIR/rows-<hash>.parquet`` holds one finished task's rows, written at once and atomically
(temporary file + ``os.replace``), so the table is their union whatever was interrupted, and a
second call loads them and runs only what is missing.
``DIR/.sweep.lock``: the lock a running sweep holds (:func:`hold`): a second sweep there
meanwhile is refused, and the temporary files of a killed sweep are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re

from gradbench import _atomic
from gradbench.sweep.grid import DEFAULTS, FIELDS, Plan, canonical, canonical_key
from gradbench.sweep.worker import COLUMNS, ROWS

MANIFEST = "sweep.json"
#: The lock a running sweep holds on its directory (``flock``; the file stays, empty).
LOCK = ".sweep.lock"
# Suffixes of the sweep's temporary files (gradbench._atomic: ``.gradbench-<12 hex><suffix>``):
# rows files, and the manifest. No other writer of gradbench uses them (a --csv in the directory
# makes ``.gradbench-<hex>.tmp``, which is not the sweep's and is left alone).
ROWS_TEMP, MANIFEST_TEMP = ".parquet.tmp", ".sweep.json.tmp"
_TEMP = re.compile(re.escape(_atomic.TEMP_PREFIX) + r"[0-9a-f]{12}(?:" + re.escape(ROWS_TEMP) + "|"
                   + re.escape(MANIFEST_TEMP) + r")\Z")


def _ours(name: str) -> bool:
    """A file a sweep makes in its directory besides sweep.json and rows: its lock, its temporary files."""
    return name == LOCK or bool(_TEMP.match(name))


class OutInUse(ValueError):
    """A sweep directory another sweep is writing to now (it holds the directory's lock)."""


@contextlib.contextmanager
def hold(out: str):
    """Create ``out``, hold its lock for the sweep, and remove the temporary files a killed sweep
    left there (``.gradbench-<hex>.parquet.tmp``: SIGKILL or a power cut between creating one
    and renaming it), now and when the sweep ends.

    Deleting them is safe only because no other sweep writes there meanwhile: the lock
    (``flock`` on :data:`LOCK`, released by the kernel when its process dies, however) refuses a
    second sweep on the same directory (:class:`OutInUse`) while this one runs. The resume check
    would not: two calls of the same grid may share a directory (and two new grids may both take
    over an empty one). Only the sweep's own names are removed (:data:`ROWS_TEMP`,
    :data:`MANIFEST_TEMP`), never another file. Where there are no locks (no ``fcntl``, a file
    system that refuses them) nothing is removed."""
    os.makedirs(out, exist_ok=True)
    fd = _lock(out)
    try:
        if fd is not None:
            _remove_temps(out)
        yield
        if fd is not None:  # the end of a sweep: what a write of this call could not remove
            _remove_temps(out)
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _lock(out: str) -> int | None:
    """An open descriptor of ``out``'s lock file, locked; None where locks are not available."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    path = os.path.join(out, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutInUse(f"{out!r} is in use by a sweep running now (it holds {path}): wait for it to end, or give "
                       "another directory") from None
    except OSError:  # a file system without locks (ENOLCK): no lock, so no cleaning
        os.close(fd)
        return None
    return fd


def _remove_temps(out: str) -> None:
    for name in os.listdir(out):
        if _TEMP.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out, name))


def check_out(out, p: Plan, label: str = "out=") -> bool:
    """Whether ``out`` already holds rows of this sweep (True) or is new, empty or holds a
    ``sweep.json`` without rows (False: taken over); raises ``ValueError`` when it is a file, a
    non-empty directory that is not a sweep's, or holds rows of another gradbench version or
    schema or of another sweep (``label`` names the parameter:
    ``"--out "`` for the command line, whose message then names options). Changes nothing:
    callers check it before any work starts."""
    out = os.fspath(out)
    manifest = os.path.join(out, MANIFEST)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{label}{out!r} is a file, not a directory")
    if os.path.exists(manifest):
        if not _rows_files(out):  # a sweep that never started: nothing to mix with, taken over
            return False
        with open(manifest, encoding="utf-8") as f:
            have = json.load(f)
        where, cli = label.strip().rstrip("="), label.startswith("--")
        ours = (*_version(), ROWS)
        theirs = (have.get("gradbench", "unknown"), have.get("schema", 1), have.get("rows", 1))  # none: 1 (0.1.0)
        if theirs != ours:
            raise ValueError(f"{label}{out!r} holds a sweep of {_edition(*theirs)} and this is {_edition(*ours)}: a "
                             f"resumed table would mix the two versions' numbers; give {where} a new directory (or "
                             "delete this one to start again)")
        diff = _differences(p.identity(), have, cli)
        if diff:
            raise ValueError(f"{label}{out!r} holds a sweep of a different grid or fixed fields (differs in "
                             f"{'; '.join(diff)}): use another directory, or delete it to start again")
        return True
    if os.path.isdir(out) and any(not _ours(name) for name in os.listdir(out)):  # a killed sweep's lock and temp files
        raise ValueError(f"{label}{out!r} is a non-empty directory without {MANIFEST}: not a sweep's; "
                         "give a new or empty directory")
    return False


def _rows_files(out: str) -> list[str]:
    """The rows files of a sweep directory, sorted by name."""
    return sorted(n for n in os.listdir(out) if n.startswith("rows-") and n.endswith(".parquet"))


def _edition(version: str, schema: int, rows: int) -> str:
    """``gradbench 0.2.0 (schema 2, rows 2)``: what wrote a sweep directory's numbers."""
    return f"gradbench {version} (schema {schema}, rows {rows})"


def _version() -> tuple[str, int]:
    """This gradbench's version and file schema, as the head of ``sweep.json`` records them."""
    from gradbench.cli import output  # the command line's package, loaded on use

    return output.__version__, output.SCHEMA


def open_out(out, p: Plan, pandas) -> tuple[str, "object"]:
    """Create or check ``out`` (:func:`check_out`); return its path and the rows already there
    (a DataFrame with canonical run keys, each run once: :func:`load_rows`, or None).
    ``pandas()`` returns the pandas module; it is called only when ``out`` holds rows."""
    out = os.fspath(out)
    if not check_out(out, p):
        text = json.dumps({**head(), "rows": ROWS, **p.identity()}, indent=1, allow_nan=False)
        _atomic.write_atomic(os.path.join(out, MANIFEST), lambda f: f.write(text), suffix=MANIFEST_TEMP)
    files = _rows_files(out)
    if not files:
        return out, None
    return out, load_rows(out, files, pandas())


def load_rows(out: str, files: list[str], pd):
    """The rows of ``files`` in ``out``, their run keys canonical (:func:`~gradbench.sweep.grid.canonical_key`:
    rows written for ``sigma_w=1`` are the runs of ``1.0``), each run once. A run in two files
    with the same numbers (``seconds`` aside) is kept once; with other numbers (rows merged
    from two machines) it is :class:`ConflictingRows`, naming the run and the files."""
    frames = []
    for n in files:
        f = _read_rows(pd, os.path.join(out, n))
        frames.append(f.assign(run_key=f["run_key"].map(canonical_key), _file=n,
                               _columns=[frozenset(f.columns)] * len(f)))
    table = pd.concat(frames, ignore_index=True)
    conflicts = []
    for key, rows in table[table["run_key"].duplicated(keep=False)].groupby("run_key", sort=False):
        first = rows.iloc[0]
        for _, row in rows.iloc[1:].iterrows():
            shared = first["_columns"] & row["_columns"]  # a column an earlier gradbench did not write is no conflict
            diff = [c for c in COLUMNS if c != "seconds" and c in shared and not _same(pd, first[c], row[c])]
            if diff:
                conflicts.append(f"run {key} in {first['_file']} and {row['_file']} (differs in "
                                 f"{', '.join(f'{c}: {_plain(first[c])!r} and {_plain(row[c])!r}' for c in diff[:3])}"
                                 f"{', ...' if len(diff) > 3 else ''})")
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise ConflictingRows(f"{out} holds different rows of one run: {conflicts[0]}{more}: rows of two machines "
                              "or backends? keep one file of each run (delete or move the others) and run the "
                              "same sweep again")
    return table.drop_duplicates("run_key").drop(columns=["_file", "_columns"])


def _plain(v):
    """A cell as a Python value (NumPy's scalars read np.float64(...) in a message)."""
    return v.item() if hasattr(v, "item") else v


def _same(pd, a, b) -> bool:
    """Two cells of a rows file hold the same value (two missing values are the same)."""
    missing_a, missing_b = pd.isna(a), pd.isna(b)
    if missing_a or missing_b:
        return bool(missing_a and missing_b)
    return bool(a == b)


def as_planned(have, p: Plan):
    """Resumed rows (of this plan's runs) with this call's configuration columns: the axis
    values as this call gives them and its fixed fields (a default that this call names and the
    call that wrote the rows did not, or an init alias of it, is the same run)."""
    have = have.copy()
    points = p.point_of
    for name in p.axes:
        have[name] = [points[k][name] for k in have["run_key"]]
    for name, v in p.fixed.items():
        have[name] = [v] * len(have)
    return have


class UnreadableRows(OSError):
    """A rows file of a sweep directory that cannot be read (truncated by a copy or a sync)."""


def _read_rows(pd, path: str):
    """One rows file, or :class:`UnreadableRows` saying how to go on."""
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow's ArrowInvalid and OSError variants
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UnreadableRows(f"{path} cannot be read ({type(exc).__name__}: {first}): delete it and run the same "
                             "sweep again, which runs its runs again and keeps the others") from None


class ConflictingRows(UnreadableRows):
    """Two rows files of a sweep directory with different numbers for one run (merged from two
    machines, backends or versions): which to keep is the user's choice."""


def head() -> dict:
    """The head of ``sweep.json``: that of every file the command line writes
    (:func:`gradbench.cli.output.metadata`), ``command`` "sweep" (also for :func:`gradbench.sweep`
    called from Python), ``argv`` this process's arguments (``sys.argv[1:]``)."""
    from gradbench.cli.output import metadata  # the command line's package, loaded on use

    return metadata("sweep", None)


def _effective(ident: dict) -> dict:
    """Every field of an identity at the value its runs get: ``("axis", {JSON text of each
    canonical value})`` or ``("fixed", canonical value)``, a field not given at its default."""
    axes, fixed = ident.get("axes") or {}, ident.get("fixed") or {}
    out = {}
    for name in {*DEFAULTS, *axes, *fixed}:
        if name in axes:
            out[name] = ("axis", frozenset(json.dumps(canonical(name, v)) for v in axes[name]))
        else:
            out[name] = ("fixed", canonical(name, fixed.get(name, DEFAULTS.get(name))))
    return out


def _shown(kind_value, cli: bool) -> str:
    """A field's effective value in a message: an axis as its sorted values, None as none on the command line."""
    kind, v = kind_value
    word = (lambda x: "none" if x is None else str(x).lower() if isinstance(x, bool) else str(x)) if cli else repr
    if kind == "axis":
        values = sorted((json.loads(t) for t in v), key=json.dumps)
        return "the axis " + ",".join(map(word, values)) if cli else f"the axis [{', '.join(map(word, values))}]"
    return word(v)


def _differences(ours: dict, theirs: dict, cli: bool = False) -> list[str]:
    """What differs between two identities' effective sweeps (:func:`_effective`), each with both
    values: ``fixed field sigma_b: 0.1 in the directory, 0.0 here``; options on the command line."""
    a, b = _effective(ours), _effective(theirs)
    out = []
    for name in sorted(a.keys() | b.keys()):
        mine, have = a.get(name, ("fixed", None)), b.get(name, ("fixed", None))
        if mine != have:
            what = "--" + name.replace("_", "-") if cli else \
                f"{'axis' if 'axis' in (mine[0], have[0]) else 'fixed field'} {name}"
            out.append(f"{what}: {_shown(have, cli)} in the directory, {_shown(mine, cli)} here")
    if ours["backend"] != theirs.get("backend"):
        out.append(f"{'--backend' if cli else 'backend'}: {theirs.get('backend')} in the directory, "
                   f"{ours['backend']} here")
    return out


def write_rows(out: str, table) -> str:
    """``table`` as ``out/rows-<hash of its run keys>.parquet``, atomically; returns the path."""
    digest = hashlib.sha1("\n".join(table["run_key"]).encode()).hexdigest()[:16]
    path = os.path.join(out, f"rows-{digest}.parquet")
    return _atomic.write_atomic(path, lambda f: table.to_parquet(f, index=False, engine="pyarrow"),
                                binary=True, suffix=ROWS_TEMP)


def frame(rows: list[dict], p: Plan, pd):
    """Rows from the workers as a table: axis values (grid order), fixed fields, seed, the columns, run_key."""
    points = p.point_of
    fixed = {k: p.fixed[k] for k in FIELDS if k in p.fixed}  # in Stack's field order, then batch
    records = [{**points[r["run_key"]], **fixed, "seed": r["seed"], **{c: r[c] for c in COLUMNS},
                "run_key": r["run_key"]} for r in rows]
    table = pd.DataFrame.from_records(records, columns=[*p.axes, *fixed, "seed", *COLUMNS, "run_key"])
    return table.astype({"first_nonfinite": "Int64", "seed": "int64"})
