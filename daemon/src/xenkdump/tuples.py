"""``NamedTuple``, without importing typing at run time.

xenkdumpctl's quick commands (docs/architecture.md §6) load the modules whose records
derive from this one, and importing typing would cost each of them about a fifth of the
interpreter's own start-up, for nothing but ``typing.NamedTuple``'s class syntax.  Type
checkers see ``typing.NamedTuple`` itself.  At run time a class statement deriving from
this ``NamedTuple`` makes what typing's makes: a ``collections.namedtuple`` with the
fields the body annotates (in order; those with a default last) and the body's
docstring, methods and properties.  The annotations are kept as they are (strings under
``from __future__ import annotations``), never evaluated.
"""

from __future__ import annotations

import collections

__all__ = ["NamedTuple"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    # The class statement's own entries, besides the fields and the members.
    _STATEMENT = frozenset({"__module__", "__qualname__", "__annotations__"})

    class _Record(type):
        def __new__(mcs, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcs, name, bases, namespace)
            if bases != (NamedTuple,) or "__classcell__" in namespace:
                raise TypeError(f"{name}: a record derives from NamedTuple alone, without super()")
            annotations = namespace.get("__annotations__", {})
            fields = tuple(annotations)
            defaults = tuple(namespace[f] for f in fields if f in namespace)
            if any(f not in namespace for f in fields[len(fields) - len(defaults) :]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = collections.namedtuple(
                name, fields, defaults=defaults, module=namespace["__module__"]
            )
            cls.__qualname__ = namespace["__qualname__"]
            cls.__annotations__ = annotations
            for key, value in namespace.items():
                if key not in _STATEMENT and key not in fields:
                    setattr(cls, key, value)
            return cls

    class NamedTuple(metaclass=_Record):
        """Derive a record from this (see the module docstring)."""
