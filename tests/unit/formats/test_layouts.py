"""The declarative layout helper: tables are checked when declared, values round-trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenkdump.image.structs import Layout

DEMO = Layout("demo", size=16, rows=((0, "a", "B"), (2, "b", "H"), (4, "c", "I"), (8, "d", "Q")))


def test_pack_unpack_positions() -> None:
    data = DEMO.pack({"a": 0x11, "b": 0x2233, "c": 0x44556677, "d": 0x8899AABBCCDDEEFF})
    assert data == bytes.fromhex("1100 3322 77665544 ffeeddccbbaa9988")
    assert DEMO.unpack(data) == {"a": 0x11, "b": 0x2233, "c": 0x44556677, "d": 0x8899AABBCCDDEEFF}


@given(
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
)
def test_round_trip(a: int, b: int, c: int, d: int) -> None:
    values = {"a": a, "b": b, "c": c, "d": d}
    assert DEMO.unpack(DEMO.pack(values)) == values


def test_unset_fields_are_zero_and_base_offsets() -> None:
    buf = bytearray(32)
    DEMO.pack_into(buf, {"b": 0xFFFF}, base=16)
    assert buf == bytes(18) + b"\xff\xff" + bytes(12)
    assert DEMO.unpack(bytes(buf), base=16)["b"] == 0xFFFF


def test_value_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"demo\.b: 0x10000 does not fit 2 bytes"):
        DEMO.pack({"b": 0x10000})
    with pytest.raises(ValueError, match=r"demo\.a: -0x1 does not fit"):
        DEMO.pack({"a": -1})
    with pytest.raises(KeyError, match="no field 'zz'"):
        DEMO.pack({"zz": 1})


def test_bad_tables_rejected_at_declaration() -> None:
    with pytest.raises(AssertionError, match="overlaps"):
        Layout("x", size=8, rows=((0, "a", "I"), (2, "b", "H")))
    with pytest.raises(AssertionError, match="past its size"):
        Layout("x", size=4, rows=((0, "a", "Q"),))
    with pytest.raises(AssertionError, match="duplicate"):
        Layout("x", size=8, rows=((0, "a", "B"), (1, "a", "B")))
    with pytest.raises(AssertionError, match="overlaps"):
        Layout("x", start=0x10, size=8, rows=((0x8, "a", "B"),))


def test_start_offset_layout() -> None:
    lay = Layout("hdr", start=0x1F1, size=3, rows=((0x1F1, "x", "B"), (0x1F2, "y", "H")))
    assert lay.pack({"x": 1, "y": 0x0302}) == b"\x01\x02\x03"
    assert lay.unpack(bytes(0x1F1) + b"\x01\x02\x03") == {"x": 1, "y": 0x0302}


MIXED = Layout("mixed", size=16, rows=((0, "magic", "4s"), (4, "n", "I"), (8, "digest", "8s")))


def test_byte_string_fields() -> None:
    data = MIXED.pack({"magic": b"XKPG", "n": 7, "digest": bytes(range(8))})
    assert data == b"XKPG" + (7).to_bytes(4, "little") + bytes(range(8))
    assert MIXED.unpack(data) == {"n": 7}
    assert MIXED.unpack_bytes(data) == {"magic": b"XKPG", "digest": bytes(range(8))}
    with pytest.raises(ValueError, match=r"mixed\.magic: 3 bytes, not 4"):
        MIXED.pack({"magic": b"XKP"})
    with pytest.raises(ValueError, match=r"mixed\.n: expected 'I'"):
        MIXED.pack({"n": b"\0\0\0\0"})
    with pytest.raises(AssertionError, match="format '0s'"):
        Layout("bad", 4, ((0, "x", "0s"),))
