"""The registry of backends: one place that names every implementation.

A backend is a module with ``stack_forward`` and ``stack_backward`` of the signatures that
:mod:`gradbench.reference` documents. Tests and benchmarks iterate over this registry, so a new
backend is added here and nowhere else.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

from gradbench._env import EnvError
from gradbench.spec import closest_hint

# name -> module path. The order is the order of preference for backend="auto" (fastest first):
# C wherever it is built. Measured with benchmarks/target_runner.py (tanh at the edge of chaos,
# library-default threads, 2-core AMD EPYC Zen 4, warm calls, numba time / C time, one run):
#     N     4     8    16    32    64   128   256   512  1024
#   f64  1.90  1.87  1.54  1.46  1.42  4.74  4.08  7.85  1.07
#   f32  1.46  3.01  1.75  1.50  1.46  0.93  1.13  2.73  1.23
# (f32 at N = 256 from a repeat: single runs there swung by 50x when OpenBLAS's threads met
# other jobs). Since C's float32 products use its own tiles up to N = 1023 (2026-12-01):
# f32 N = 128 / 256 / 512 / 1024: 1.56 / 1.18 / 1.87 / 1.15 (one race each, L = 400 / 200 /
# 200 / 12). benchmarks/test_targets.py checks auto against the fastest backend in every run.
REGISTRY = {
    "c": "gradbench.cbackend",
    "numba": "gradbench.kernels",
    "numpy": "gradbench.reference",
}
PREFERENCE = ("c", "numba", "numpy")

# What the C build script (gradbench/_cbuild.py, BUILD_RECORD) wrote when it could not build.
C_BUILD_RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cbuild_error.txt")


def c_not_built_message(record: str = C_BUILD_RECORD) -> str:
    """Why ``gradbench._ckernels`` is missing: the recorded build problem, or how to build it."""
    try:
        with open(record, encoding="utf-8") as f:
            problem = f.read().strip()
    except OSError:
        problem = ""
    if problem:
        return f'C extension not built: {problem} (fix that, then run "pip install -e .")'
    return 'C extension not built: run "pip install -e ." (needs a C compiler such as gcc)'


@functools.lru_cache(maxsize=None)
def _load_checked(name: str) -> tuple[ModuleType | None, str | None, bool]:
    """(module or None, why not, whether "why not" is a misconfiguration rather than a missing part)."""
    try:
        module = importlib.import_module(REGISTRY[name])
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}", False
    except EnvError as exc:  # reported, and refused when the backend is asked for (also by "auto")
        return None, str(exc), True
    missing = [f for f in ("stack_forward", "stack_backward") if not hasattr(module, f)]
    if missing:
        return None, f"{REGISTRY[name]} does not define {', '.join(missing)} yet", False
    return module, None, False


def _load(name: str) -> tuple[ModuleType | None, str | None]:
    return _load_checked(name)[:2]


def backends() -> list[str]:
    """Names of the backends that work here, e.g. ``["numpy", "numba", "c"]``."""
    return [name for name in REGISTRY if _load(name)[0] is not None][::-1]


def backend_status() -> dict[str, str]:
    """Every registered backend with "available" or the reason it is not."""
    return {name: _load(name)[1] or "available" for name in REGISTRY}


def _auto() -> str:
    """The fastest available backend; a faster one that is misconfigured is an error, not skipped."""
    for n in PREFERENCE:
        module, reason, misconfigured = _load_checked(n)
        if module is not None:
            return n
        if misconfigured:
            raise RuntimeError(f"backend {n!r} (the fastest, picked by 'auto') cannot be used: {reason}")
    raise RuntimeError("no backend is available")  # pragma: no cover - numpy always is


def get_backend(name: str) -> ModuleType:
    """The backend module ``name``; ``"auto"`` picks the fastest available one."""
    if name == "auto":
        name = _auto()
    if name not in REGISTRY:
        raise ValueError(
            f"backend={name!r} is not one of {', '.join(map(repr, REGISTRY))} or 'auto'"
            f"{closest_hint(name, (*REGISTRY, 'auto'))}"
        )
    module, reason = _load(name)
    if module is None:
        raise RuntimeError(f"backend {name!r} is not available: {reason}")
    return module


def resolve(name: str) -> str:
    """The concrete backend name that ``get_backend(name)`` would use."""
    if name == "auto":
        return _auto()
    get_backend(name)
    return name
