"""The ``out`` directory of a sweep: a manifest and one Parquet file per finished task.

``DIR/sweep.json`` has the head of every gradbench file (docs/formats.md: ``gradbench``,
``schema``, ``command`` "sweep", ``argv``, ``created``, ``machine``; of the call that created
the directory) and what identifies the sweep (``axes``: the set of values of every axis,
``fixed``: the fixed fields, ``backend``); only these three are compared on resume, so a
manifest without the head (gradbench 0.1.0) still resumes. ``DIR/rows-<hash>.parquet`` holds
one finished task's rows, written at once and atomically (temporary file + ``os.replace``), so
the table is their union whatever was interrupted, and a second call loads them and runs only
what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os

from gradbench import _atomic
from gradbench.sweep.grid import FIELDS, Plan
from gradbench.sweep.worker import COLUMNS

MANIFEST = "sweep.json"


def check_out(out, p: Plan, label: str = "out=") -> bool:
    """Whether ``out`` already holds this sweep (True) or is new or empty (False); raises
    ``ValueError`` when it is a file, a non-empty directory that is not a sweep's, or another
    sweep's (``label`` names the parameter). Changes nothing: callers check it before any work
    starts."""
    out = os.fspath(out)
    manifest = os.path.join(out, MANIFEST)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{label}{out!r} is a file, not a directory")
    if os.path.exists(manifest):
        ident = p.identity()
        with open(manifest, encoding="utf-8") as f:
            have = json.load(f)
        diff = _differences(ident, {k: have.get(k) for k in ident})
        if diff:
            raise ValueError(f"{label}{out!r} holds a sweep of a different grid or fixed fields (differs in "
                             f"{', '.join(diff)}): use another directory, or delete it to start again")
        return True
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"{label}{out!r} is a non-empty directory without {MANIFEST}: not a sweep's; "
                         "give a new or empty directory")
    return False


def open_out(out, p: Plan, pandas) -> tuple[str, "object"]:
    """Create or check ``out`` (:func:`check_out`); return its path and the rows already there
    (a DataFrame, or None). ``pandas()`` returns the pandas module; it is called only when
    ``out`` holds rows."""
    out = os.fspath(out)
    if not check_out(out, p):
        text = json.dumps({**head(), **p.identity()}, indent=1, allow_nan=False)
        _atomic.write_atomic(os.path.join(out, MANIFEST), lambda f: f.write(text))
    files = sorted(n for n in os.listdir(out) if n.startswith("rows-") and n.endswith(".parquet"))
    if not files:
        return out, None
    pd = pandas()
    return out, pd.concat([_read_rows(pd, os.path.join(out, n)) for n in files], ignore_index=True)


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


def head() -> dict:
    """The head of ``sweep.json``: that of every file the command line writes
    (:func:`gradbench.cli.output.metadata`), ``command`` "sweep" (also for :func:`gradbench.sweep`
    called from Python), ``argv`` this process's arguments (``sys.argv[1:]``)."""
    from gradbench.cli.output import metadata  # the command line's package, loaded on use

    return metadata("sweep", None)


def _differences(ours: dict, theirs: dict) -> list[str]:
    """What differs between two identities, compared as JSON (1 and 1.0 are different values)."""
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731
    out = []
    for part, word in (("axes", "axis"), ("fixed", "fixed field")):
        a, b = ours[part], theirs[part] or {}
        out += [f"{word} {name}" for name in sorted(set(a) | set(b)) if not same(a.get(name), b.get(name))]
    return out + (["backend"] if ours["backend"] != theirs["backend"] else [])


def write_rows(out: str, table) -> str:
    """``table`` as ``out/rows-<hash of its run keys>.parquet``, atomically; returns the path."""
    digest = hashlib.sha1("\n".join(table["run_key"]).encode()).hexdigest()[:16]
    path = os.path.join(out, f"rows-{digest}.parquet")
    return _atomic.write_atomic(path, lambda f: table.to_parquet(f, index=False, engine="pyarrow"),
                                binary=True, suffix=".parquet.tmp")


def frame(rows: list[dict], p: Plan, pd):
    """Rows from the workers as a table: axis values (grid order), fixed fields, seed, the columns, run_key."""
    points = p.point_of
    fixed = {k: p.fixed[k] for k in FIELDS if k in p.fixed}  # in Stack's field order, then batch
    records = [{**points[r["run_key"]], **fixed, "seed": r["seed"], **{c: r[c] for c in COLUMNS},
                "run_key": r["run_key"]} for r in rows]
    table = pd.DataFrame.from_records(records, columns=[*p.axes, *fixed, "seed", *COLUMNS, "run_key"])
    return table.astype({"first_nonfinite": "Int64", "seed": "int64"})
