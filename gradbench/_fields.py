"""Mixins of the frozen dataclasses that hold one array per named parameter (parameters and
their gradients, of a stack and of a recurrent net)."""

from __future__ import annotations

import dataclasses

# The ``metadata`` flag of a field that holds words, not an array (``Params.origin``):
# ``items()`` leaves it out, so nothing that works on the arrays sees it, and ``copy()`` keeps it.
WORDS = "words"
# The flag of a field that holds a record of the arrays, not a parameter (``Params.drawn``): left
# out of ``items()`` as words are, and kept by ``copy()`` and ``dataclasses.replace``.
RECORD = "record"


def check_words(obj) -> None:
    """Refuse a field of words (:data:`WORDS`) that is neither a str nor None: a TypeError
    naming it."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get(WORDS) and value is not None and not isinstance(value, str):
            raise TypeError(f"{f.name} must be a str (words on where the weights came from) or None, "
                            f"got {type(value).__name__} {value!r}")


class PresentFields:
    """``items()`` over the array fields of a dataclass that are not None."""

    def items(self):
        """(name, array) for every array present."""
        for f in dataclasses.fields(self):
            if f.metadata.get(WORDS) or f.metadata.get(RECORD):
                continue
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value


class CopyableArrays(PresentFields):
    """:class:`PresentFields` whose arrays can be copied: ``copy()``."""

    def copy(self):
        """The same class with a copy of every array present (fields of words kept as they are)."""
        return dataclasses.replace(self, **{name: a.copy() for name, a in self.items()})


# Arrays of at most this many entries are shown whole by :func:`short_repr`.
SHOWN_ENTRIES = 6


def short_repr(obj) -> str:
    """A dataclass's repr that fits on a screen: each array of more than :data:`SHOWN_ENTRIES`
    entries as its shape and dtype, inside dicts and dataclasses holding such arrays too (the
    repr of a 50-layer Result was 5 kB of per-layer arrays and the weights' probe, a 500-step LSTM
    result's 19 kB, a training result's every weight)."""
    body = ", ".join(f"{f.name}={_short(getattr(obj, f.name))}" for f in dataclasses.fields(obj) if f.repr)
    return f"{type(obj).__name__}({body})"


def _short(value) -> str:
    import numpy as np

    from gradbench.logscaled import LogScaled  # a dataclass with a short repr of its own

    if isinstance(value, LogScaled):
        return repr(value)
    if isinstance(value, np.ndarray) and value.size > SHOWN_ENTRIES:
        return f"array(shape={value.shape}, dtype={value.dtype})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)) and len(value) > SHOWN_ENTRIES:
        return f"<{type(value).__name__} of {len(value)}>"
    if (dataclasses.is_dataclass(value) and not isinstance(value, type)
            and any(isinstance(getattr(value, f.name), np.ndarray) and getattr(value, f.name).size > SHOWN_ENTRIES
                    for f in dataclasses.fields(value))):
        return short_repr(value)
    return repr(value)
