"""Mixins of the frozen dataclasses that hold one array per named parameter (parameters and
their gradients, of a stack and of a recurrent net)."""

from __future__ import annotations

from dataclasses import fields


class PresentFields:
    """``items()`` over the fields of a dataclass that are not None."""

    def items(self):
        """(name, array) for every array present."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value


class CopyableArrays(PresentFields):
    """:class:`PresentFields` whose arrays can be copied: ``copy()``."""

    def copy(self):
        """The same class with a copy of every array present."""
        return type(self)(**{name: a.copy() for name, a in self.items()})
