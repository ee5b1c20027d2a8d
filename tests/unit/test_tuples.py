"""xenkdump.tuples.NamedTuple makes what typing.NamedTuple makes, without typing."""

from __future__ import annotations

import typing
from typing import Any

import pytest

from importcheck import run_and_list, under
from xenkdump import tuples


def make(base: Any) -> Any:
    """The same record declared on ``base``."""

    class Span(base):  # type: ignore[misc]
        """A span of bytes."""

        start: int
        size: int = 0
        tags: tuple[str, ...] = ()

        @property
        def end(self) -> int:
            return int(self.start + self.size)

        def shifted(self, by: int) -> Any:
            return self._replace(start=self.start + by)

        @classmethod
        def empty(cls) -> Any:
            return cls(0)

    return Span


def test_a_record_behaves_as_typings() -> None:
    ours, typings = make(tuples.NamedTuple), make(typing.NamedTuple)
    for attribute in ("__name__", "__qualname__", "__module__", "__doc__", "_fields"):
        assert getattr(ours, attribute) == getattr(typings, attribute), attribute
    assert ours._field_defaults == typings._field_defaults == {"size": 0, "tags": ()}
    assert list(ours.__annotations__) == list(typings.__annotations__)
    a, b = ours(5, 3), typings(5, 3)
    assert repr(a) == repr(b).replace(typings.__qualname__, ours.__qualname__)
    assert tuple(a) == tuple(b) == (5, 3, ())
    assert a.end == b.end == 8 and a.shifted(2) == b.shifted(2) == (7, 3, ())
    assert type(a.shifted(2)) is ours and ours.empty() == typings.empty() == (0, 0, ())
    assert a._asdict() == b._asdict() and hash(a) == hash(b)
    assert sorted([ours(2), ours(1, 9)]) == [ours(1, 9), ours(2)]
    with pytest.raises(AttributeError):
        a.start = 1


def test_what_typing_refuses_is_refused() -> None:
    with pytest.raises(TypeError, match="without a default follows"):

        class Bad(tuples.NamedTuple):
            first: int = 0
            second: int  # type: ignore[misc]

    with pytest.raises(TypeError, match="derives from NamedTuple alone"):

        class Mixed(tuples.NamedTuple, int):  # type: ignore[misc]
            first: int


def test_declaring_a_record_imports_no_typing() -> None:
    code = "from xenkdump.tuples import NamedTuple\nclass A(NamedTuple):\n    x: int\nprint(A(1))"
    out, modules = run_and_list(code)
    assert out == "A(x=1)\n"
    assert under(modules, ("typing", "dataclasses")) == []
