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
