"""The grid of a sweep: validation (every configuration through :class:`~gradbench.Stack`) and runs.

A *plan* is a validated sweep: its axes (field -> values, in the caller's order), the fixed
fields (with ``batch``), the seeds and the backend. A *run* is one (configuration, seed),
identified by :func:`run_key`: the axis values in name order and the seed, as JSON (floats
written by ``repr``, so they round-trip exactly).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import typing
from collections.abc import Iterable, Mapping

import numpy as np

from gradbench.backends import REGISTRY
from gradbench.inputs import BN_ONE_SAMPLE
from gradbench.spec import INIT_ALIASES, Stack, check_choice

#: Stack fields and run options that can be swept or fixed.
FIELDS = tuple(f.name for f in dataclasses.fields(Stack)) + ("batch",)
DEFAULT_BATCH = 16


@dataclasses.dataclass(frozen=True)
class Run:
    """One (configuration, seed): ``key`` identifies it in the table and on disk."""

    key: str
    config: dict
    batch: int
    seed: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated sweep: the axes (name -> values), the fixed fields, seeds and backend."""

    axes: dict
    fixed: dict
    seeds: tuple
    backend: str

    def points(self) -> list[dict]:
        """Every configuration (axis values only), the last axis varying fastest."""
        names = list(self.axes)
        return [dict(zip(names, values)) for values in itertools.product(*self.axes.values())]

    def runs(self) -> list[Run]:
        """Every run: configuration-major, seeds innermost."""
        out = []
        for point in self.points():
            settings = {**self.fixed, **point}
            batch = settings.pop("batch")
            for seed in self.seeds:
                out.append(Run(run_key(point, seed), settings, batch, seed))
        return out

    @functools.cached_property
    def point_of(self) -> dict:
        """run key -> the axis values of its configuration."""
        return {run_key(point, seed): point for point in self.points() for seed in self.seeds}

    def identity(self) -> dict:
        """What an ``out`` directory must match: the set of values of every axis, fixed fields, backend."""
        axes = {name: sorted(values, key=json.dumps) for name, values in self.axes.items()}
        return {"axes": axes, "fixed": self.fixed, "backend": self.backend}


def _float_fields() -> frozenset:
    """The Stack fields of type float (or float | None): a number there is the float it makes."""
    hints = typing.get_type_hints(Stack)
    return frozenset(name for name, hint in hints.items() if float in (typing.get_args(hint) or (hint,)))


FLOAT_FIELDS = _float_fields()
#: The value of a field that a sweep does not give: Stack's default (batch: DEFAULT_BATCH).
DEFAULTS = {f.name: None if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(Stack)} | {
    "batch": DEFAULT_BATCH}


def canonical(name: str, v):
    """A field's value as the run sees it: a number of a float field as a float (``sigma_w`` 1
    and 1.0 are one run; -0.0 is 0.0, as Stack stores it), an init by its canonical name
    (``kaiming_normal`` is ``he_normal``); other values as they are."""
    if name in FLOAT_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v) + 0.0
    if name == "init":
        return INIT_ALIASES.get(v, v)
    return v


def run_key(point: Mapping, seed: int) -> str:
    """The identity of a run: its axis values (in name order, :func:`canonical`) and seed, as JSON."""
    return json.dumps([sorted((k, canonical(k, v)) for k, v in point.items()), seed], allow_nan=False)


def canonical_key(key: str) -> str:
    """A run key read from a rows file as :func:`run_key` writes it now (a file written before
    gradbench wrote canonical values holds ``["sigma_w", 1]`` for ``sigma_w=1``)."""
    fields, seed = json.loads(key)
    return run_key(dict(fields), seed)


def _scalar(where: str, v):
    """A grid value as a plain Python scalar (NumPy scalars are converted losslessly; a NumPy
    dtype, or a type such as ``np.float32``, of the ``dtype`` field as its name, as Stack takes it)."""
    numpy_type = isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic))
    if where in ("dtype", "grid['dtype']") and numpy_type:
        v = np.dtype(v).name
    if isinstance(v, np.generic):
        v = v.item()
    if v is not None and not isinstance(v, (bool, int, float, str)):
        raise TypeError(f"{where} values must be numbers, strings, bools or None, got {type(v).__name__} {v!r}")
    return v


def _axis(name: str, values) -> list:
    where = f"grid[{name!r}]"
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{where} must be a list of values (e.g. [{values!r}]), got {type(values).__name__} {values!r}")
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValueError(f"{where} must be one-dimensional, got an array of shape {values.shape}")
    out = [_scalar(where, v) for v in values]
    if not out:
        raise ValueError(f"{where} is empty: give at least one value")
    # numbers counted as the run sees them (canonical): sigma_w 1 and 1.0, or sigma_b 0 and -0.0,
    # are one configuration (one run key), which ran twice and then read as a row missing ("a
    # bug"); two names of one init are said below
    seen = collections.defaultdict(list)
    for v in out:
        seen[json.dumps(v if name == "init" else canonical(name, v))].append(v)
    dup = sorted(k for k, vs in seen.items() if len(vs) > 1)
    if dup:
        spelled = [" and ".join(map(repr, seen[k])) for k in dup if len({repr(v) for v in seen[k]}) > 1]
        given = f" ({'; '.join(spelled)}: the same configuration)" if spelled else ""
        raise ValueError(f"{where} has repeated values {', '.join(dup)}{given}: each configuration is run once")
    if name == "init":  # another name of the same scheme is the same configuration
        same = collections.defaultdict(list)
        for v in out:
            same[INIT_ALIASES.get(v, v)].append(v)
        twice = [names for names in same.values() if len(names) > 1]
        if twice:
            raise ValueError(f"{where} names one scheme twice: {' and '.join(map(repr, twice[0]))} "
                             "(the same configuration): keep one")
    return out


# Memory a run takes in the caller before it runs: its Run (~190 bytes, measured over 10^5), its
# share of the tasks and its table row (~45 columns), with margin.
RUN_BYTES = 2048


def check_size(runs: int, what: str = "the sweep") -> None:
    """Refuse ``runs`` runs whose plan and table rows would not fit in memory (10^8 seeds grew to
    4.5 GB in 30 s without a word), before they are built. ``what`` names them in the message."""
    from gradbench.plan import memory_limits, size_text

    _, limit, budget = memory_limits()
    if runs * RUN_BYTES > limit:
        raise ValueError(f"{what} makes {runs} runs, whose plan and table rows (~{RUN_BYTES // 1024} KiB a run) need "
                         f"{size_text(runs * RUN_BYTES)}, above {budget} ({size_text(limit)}): at most "
                         f"{int(limit // RUN_BYTES)} runs fit in one sweep")


def point_text(point: Mapping) -> str:
    """`` (at grid point sigma_w=1.0, width=30000)``: where a message about one configuration
    is from (empty for a sweep without axes); the command line keeps it as it is."""
    return f" (at grid point {', '.join(f'{k}={v!r}' for k, v in point.items())})" if point else ""


def check_memory(p: Plan, available, backend: str | None) -> None:
    """Refuse a sweep with a configuration whose runs would not fit in memory, before anything
    starts: :class:`~gradbench.plan.PlanRefused` with the message the worker's run would raise
    (:func:`gradbench.sweep.worker.plan_of`) and the grid point. ``available``: the bytes the
    workers plan with (90 % of them is the refusal limit, as for the run; read once by the
    caller), ``backend``: the concrete backend they run (None: not known).

    Arithmetic only, once per configuration (the seeds' runs are planned alike): a grid of
    5000 configurations checks in ~0.1 s, nothing is allocated. A run that is not refused here
    can still be refused by its worker when the memory available there has shrunk since
    (other workers' runs, other processes)."""
    from gradbench.plan import PlanRefused
    from gradbench.sweep.worker import plan_of

    def budget():  # a callable: a small run's plan is the same on any machine, read nothing for it
        return available

    for point in p.points():
        settings = {**p.fixed, **point}
        batch = settings.pop("batch")
        try:
            plan_of(Stack(**settings), batch, backend, budget)
        except PlanRefused as exc:
            raise PlanRefused(f"{exc}{point_text(point)}", need=exc.need, limit=exc.limit,
                              budget=exc.budget) from None


def _length(seeds) -> int:
    """len(seeds), also for a range beyond sys.maxsize (whose len() raises OverflowError)."""
    try:
        return len(seeds)
    except OverflowError:
        if isinstance(seeds, range):  # ceil((stop - start) / step), as len() counts
            return max(0, -((seeds.start - seeds.stop) // seeds.step))
        return 2**63


def _seeds(seeds) -> tuple:
    if isinstance(seeds, (int, np.integer, str, bytes)) or not isinstance(seeds, Iterable):
        raise TypeError(f"seeds must be an iterable of ints such as range(3), got {type(seeds).__name__} {seeds!r}")
    out = tuple(_scalar("seeds", s) for s in seeds)
    for s in out:
        # the table's seed column is int64: 2**64 ran every run and then failed building it, and
        # 2**64 - 1 read -1 there
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
            raise ValueError(f"seeds must be ints in [0, 2**63) (the table's int64 column), got {s!r}")
    if not out:
        raise ValueError("seeds is empty: give at least one seed, e.g. range(3)")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds has repeated values: {list(out)}")
    return out


def plan(grid: Mapping, fixed: Mapping, seeds, backend: str = "auto") -> Plan:
    """Validate a sweep completely (every configuration through :class:`Stack`); return its Plan.

    Raises the errors ``Stack`` raises (naming the field and, for a grid point, the point), and
    ``ValueError`` / ``TypeError`` for unknown or repeated names, empty axes and bad seeds.
    """
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of field -> list of values, got {type(grid).__name__}")
    for name in list(grid) + list(fixed):
        check_choice("grid field" if name in grid else "fixed field", name, FIELDS)
    both = sorted(set(grid) & set(fixed))
    if both:
        raise ValueError(f"{', '.join(both)} given both as a grid axis and as a fixed value")
    axes = {name: _axis(name, values) for name, values in grid.items()}
    for name, v in fixed.items():
        if isinstance(v, (list, tuple, range, np.ndarray)):
            raise TypeError(f"{name}={v!r}: a fixed field takes one value; to sweep it, put it in the grid")
    fixed = {name: _scalar(name, v) for name, v in fixed.items()}
    if "batch" not in axes:
        fixed.setdefault("batch", DEFAULT_BATCH)
    for name in ("depth", "width"):
        if name not in axes and name not in fixed:
            raise ValueError(f"{name} is required: a fixed value ({name}=...) or a grid axis")
    check_choice("backend", backend, tuple(REGISTRY) + ("auto",))
    points = int(np.prod([len(v) for v in axes.values()], dtype=object))
    sized = hasattr(seeds, "__len__")
    if sized:  # range(10**20): refused before it is listed
        check_size(points * _length(seeds))
    p = Plan(axes, fixed, _seeds(seeds), backend)
    if not sized:  # a generator: counted once listed
        check_size(points * len(p.seeds))
    for point in p.points():
        settings = {**p.fixed, **point}
        batch = settings.pop("batch")
        try:
            if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
                raise ValueError(f"batch must be an int >= 1, got {batch!r}")
            stack = Stack(**settings)
            if stack.batch_norm and batch < 2:  # what backprop refuses
                raise ValueError(f"batch_norm=True needs a batch of at least 2, got batch={batch}: {BN_ONE_SAMPLE}")
            if stack.clip == "norm" and stack.clip_on == "global":  # what backprop(stats_only=True) refuses
                raise ValueError("clip='norm' with clip_on='global' needs every gradient; sweeps keep "
                                 "statistics only: use clip_on='layer'")
        except (TypeError, ValueError) as exc:
            # a message about a fixed value alone ("clip_threshold must be > 0, got -1.0") holds at
            # every point: naming the first one ("at grid point clip=None") pointed at the wrong field
            field = str(exc).split(" ", 1)[0]
            alone = field in p.fixed and field not in p.axes
            hint = ("; sweep the activations that take it on their own, and the others in a second sweep (the two "
                    "tables concatenate)" if field == "activation_param" and "activation" in p.axes else "")
            raise type(exc)(f"{exc}{hint}{'' if alone else point_text(point)}") from None
    return p
