"""A small declarative layout helper for little-endian binary structs.

A layout is a table of ``(offset, name, format)`` rows written in the spec's
own names and offsets (boot.rst, zero-page.rst, the ELF gABI), so each table
can be read side by side with its source.  Offsets are explicit because the
zero page is sparse: most of its 4096 bytes are fields we leave zero.

Fields are integers (``B``, ``H``, ``I``, ``Q``) or fixed-size byte strings
(``Ns``: a magic, a digest); variable tables (e820 entries, the copied setup header)
are placed by the builders themselves, with ``base`` offsets for repeated structs.
Packing an out-of-range value or a byte string of the wrong size is a bug of the
caller and raises ValueError; the builders check their inputs first and raise the
project's own errors.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

_WIDTHS: Final = {"B": 1, "H": 2, "I": 4, "Q": 8}


def _valid(fmt: str) -> bool:
    return fmt in _WIDTHS or (fmt.endswith("s") and fmt[:-1].isdigit() and int(fmt[:-1]) > 0)


@dataclass(frozen=True)
class Field:
    """One integer or byte-string field at an absolute ``offset`` of its layout."""

    offset: int
    name: str
    fmt: str

    @property
    def is_bytes(self) -> bool:
        return self.fmt.endswith("s")

    @property
    def width(self) -> int:
        return int(self.fmt[:-1]) if self.is_bytes else _WIDTHS[self.fmt]

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
            assert _valid(f.fmt), f"{self.name}.{f.name}: format {f.fmt!r}"
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

    def pack_into(self, buf: bytearray, values: Mapping[str, int | bytes], base: int = 0) -> None:
        """Write ``values`` (a subset of the fields) into ``buf`` at ``base + offset``."""
        for name, value in values.items():
            f = self.field(name)
            if isinstance(value, bytes) != f.is_bytes:
                raise ValueError(f"{self.name}.{name}: expected {f.fmt!r}, got {value!r}")
            if isinstance(value, bytes):
                if len(value) != f.width:
                    raise ValueError(f"{self.name}.{name}: {len(value)} bytes, not {f.width}")
            elif not 0 <= value < 1 << (8 * f.width):
                raise ValueError(f"{self.name}.{name}: {value:#x} does not fit {f.width} bytes")
            struct.pack_into("<" + f.fmt, buf, base + f.offset, value)

    def pack(self, values: Mapping[str, int | bytes]) -> bytes:
        """``size`` bytes: the fields given, everything else zero."""
        buf = bytearray(self.end)
        self.pack_into(buf, values)
        return bytes(buf[self.start :])

    def unpack(self, data: bytes, base: int = 0) -> dict[str, int]:
        """Every integer field, read at ``base + offset``; ``data`` must cover the layout."""
        assert len(data) >= base + self.end, f"{self.name}: {len(data)} bytes is too short"
        return {
            f.name: struct.unpack_from("<" + f.fmt, data, base + f.offset)[0]
            for f in self.fields
            if not f.is_bytes
        }

    def unpack_bytes(self, data: bytes, base: int = 0) -> dict[str, bytes]:
        """Every byte-string field, read at ``base + offset``."""
        assert len(data) >= base + self.end, f"{self.name}: {len(data)} bytes is too short"
        return {
            f.name: bytes(data[base + f.offset : base + f.end]) for f in self.fields if f.is_bytes
        }
