"""The registry of recurrent backends: the module of each backend that implements the six cell
functions of :mod:`gradbench.recurrent.abi` (``rnn_forward`` ... ``gru_backward``)."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

from gradbench.recurrent.abi import TABLES

# name -> module path; the order of preference for backend="auto" is the stacks' (fastest first).
REGISTRY = {
    "c": "gradbench.recurrent.cbackend",
    "numba": "gradbench.kernels.recurrent",
    "numpy": "gradbench.recurrent.reference",
}
PREFERENCE = ("c", "numba", "numpy")


@functools.lru_cache(maxsize=None)
def _load(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        module = importlib.import_module(REGISTRY[name])
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    missing = [f for f in TABLES if not hasattr(module, f)]
    if missing:
        return None, f"{REGISTRY[name]} does not define {', '.join(missing)} yet"
    return module, None


def backends() -> list[str]:
    """Names of the backends whose recurrent kernels work here."""
    return [name for name in REGISTRY if _load(name)[0] is not None][::-1]


def backend_status() -> dict[str, str]:
    return {name: _load(name)[1] or "available" for name in REGISTRY}


def resolve(name: str) -> str:
    if name == "auto":
        return next(n for n in PREFERENCE if _load(n)[0] is not None)
    if name not in REGISTRY:
        raise ValueError(f"backend={name!r} is not one of {', '.join(map(repr, REGISTRY))} or 'auto'")
    if _load(name)[0] is None:
        raise RuntimeError(f"backend {name!r} is not available for recurrent cells: {_load(name)[1]}")
    return name


def get_backend(name: str) -> ModuleType:
    """The module of backend ``name`` (``"auto"``: the fastest available)."""
    return _load(resolve(name))[0]
