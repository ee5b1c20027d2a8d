"""A small declarative layout helper for little-endian binary structs.

A layout is a table of ``(offset, name, format)`` rows written in the spec's
own names and offsets (boot.rst, zero-page.rst, the ELF gABI), so each table
can be read side by side with its source.  Offsets are explicit because the
zero page is sparse: most of its 4096 bytes are fields we leave zero.

Only integer fields (``B``, ``H``, ``I``, ``Q``) are supported; byte arrays
(e820 tables, the copied setup header) are placed by the builders themselves.
Packing an out-of-range value is a bug of the caller and raises ValueError;
the builders check their inputs first and raise the project's own errors.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

_WIDTHS: Final = {"B": 1, "H": 2, "I": 4, "Q": 8}


@dataclass(frozen=True)
class Field:
    """One integer field at an absolute ``offset`` of its layout."""

    offset: int
    name: str
    fmt: str

    @property
    def width(self) -> int:
        return _WIDTHS[self.fmt]

    @property
    def end(self) -> int:
        return self.offset + self.width


@dataclass(frozen=True)
class Layout:
    """A named field table covering ``[start, start + size)``.

    Rows must lie inside the range and must not overlap; both are checked when
    the layout is declared, so a typo in a table fails at import time.
    """

    name: str
    size: int
    rows: Sequence[tuple[int, str, str]]
    start: int = 0
    fields: tuple[Field, ...] = field(init=False)

    def __post_init__(self) -> None:
        fields = tuple(Field(off, name, fmt) for off, name, fmt in self.rows)
        names = [f.name for f in fields]
        assert len(set(names)) == len(names), f"{self.name}: duplicate field names"
        last_end = self.start
        for f in sorted(fields, key=lambda f: f.offset):
            assert f.fmt in _WIDTHS, f"{self.name}.{f.name}: format {f.fmt!r}"
            assert f.offset >= last_end, f"{self.name}.{f.name} overlaps its predecessor"
            last_end = f.end
        assert last_end <= self.start + self.size, f"{self.name}: fields past its size"
        object.__setattr__(self, "fields", fields)

    @property
    def end(self) -> int:
        return self.start + self.size

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    def pack_into(self, buf: bytearray, values: Mapping[str, int], base: int = 0) -> None:
        """Write ``values`` (a subset of the fields) into ``buf`` at ``base + offset``."""
        for name, value in values.items():
            f = self.field(name)
            if not 0 <= value < 1 << (8 * f.width):
                raise ValueError(f"{self.name}.{name}: {value:#x} does not fit {f.width} bytes")
            struct.pack_into("<" + f.fmt, buf, base + f.offset, value)

    def pack(self, values: Mapping[str, int]) -> bytes:
        """``size`` bytes: the fields given, everything else zero."""
        buf = bytearray(self.end)
        self.pack_into(buf, values)
        return bytes(buf[self.start :])

    def unpack(self, data: bytes, base: int = 0) -> dict[str, int]:
        """Every field, read at ``base + offset``; ``data`` must cover the layout."""
        assert len(data) >= base + self.end, f"{self.name}: {len(data)} bytes is too short"
        return {
            f.name: struct.unpack_from("<" + f.fmt, data, base + f.offset)[0] for f in self.fields
        }
