"""build_purgatory / parse_params: the parameter block the planner fills in."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenkdump.errors import ImageError, PlanError
from xenkdump.image import purgatory
from xenkdump.image.purgatory import (
    MAX_REGIONS,
    XK_PARAMS_SIZE,
    PurgatoryMissing,
    PurgatoryParams,
    VerifiedRegion,
    build_purgatory,
    parse_header,
    parse_params,
    purgatory_blob,
    purgatory_memsz,
)

U64 = st.integers(0, 2**64 - 1)
REGION = st.builds(
    VerifiedRegion,
    start=st.integers(0, 2**63),
    size=st.integers(0, 2**62),
    sha256=st.binary(min_size=32, max_size=32),
)
PARAMS = st.builds(
    PurgatoryParams,
    kernel_entry=st.integers(1, 2**64 - 1),
    boot_params=U64,
    regions=st.lists(REGION, max_size=MAX_REGIONS),
    backup_src=U64,
    backup_dst=U64,
    backup_size=U64,
    serial_port=st.integers(0, 0xFFFF),
)


def sample(n: int = 3) -> PurgatoryParams:
    regions = [
        VerifiedRegion(0x2000_0000 + i * 0x10_0000, 0x3000, hashlib.sha256(bytes([i])).digest())
        for i in range(n)
    ]
    return PurgatoryParams(
        kernel_entry=0x2100_0200,
        boot_params=0x2050_0000,
        regions=regions,
        backup_src=0,
        backup_dst=0x2060_0000,
        backup_size=0xA0000,
        serial_port=0x3F8,
    )


def test_header_of_shipped_blob(blob: bytes) -> None:
    hdr = parse_header(blob)
    assert hdr.params_offset == 0x40 and hdr.params_size == XK_PARAMS_SIZE == 0x330
    assert purgatory_memsz() == hdr.memsz
    assert hdr.memsz % 4096 == 0 and hdr.memsz >= len(blob) + 4096  # the stack
    # As shipped the parameter block is all zero (the purgatory refuses to run).
    assert blob[hdr.params_offset : hdr.params_offset + hdr.params_size] == bytes(XK_PARAMS_SIZE)


@given(params=PARAMS, page=st.integers(0, 2**40))
def test_round_trip(blob: bytes, params: PurgatoryParams, page: int) -> None:
    seg, entry = build_purgatory(params, page * 4096, blob)
    assert parse_params(seg) == params
    hdr = parse_header(blob)
    assert entry == page * 4096 + hdr.entry_offset
    # Only the parameter block differs from the shipped code.
    lo, hi = hdr.params_offset, hdr.params_offset + hdr.params_size
    assert len(seg) == len(blob)
    assert seg[:lo] == blob[:lo] and seg[hi:] == blob[hi:]


def test_known_layout(blob: bytes) -> None:
    seg, _ = build_purgatory(sample(1), 0x2080_0000, blob)
    p = parse_header(blob).params_offset
    assert seg[p : p + 8] == (0x2100_0200).to_bytes(8, "little")  # kernel_entry
    assert seg[p + 8 : p + 16] == (0x2050_0000).to_bytes(8, "little")  # boot_params
    assert seg[p + 0x20 : p + 0x28] == (0xA0000).to_bytes(8, "little")  # backup_size
    assert seg[p + 0x28 : p + 0x30] == bytes.fromhex("f803000001000000")  # port, nr
    assert seg[p + 0x30 : p + 0x38] == (0x2000_0000).to_bytes(8, "little")
    assert seg[p + 0x40 : p + 0x60] == hashlib.sha256(b"\0").digest()
    assert seg[p + 0x60 : p + XK_PARAMS_SIZE] == bytes(XK_PARAMS_SIZE - 0x60)


def test_regions_given_as_list_compare_equal_to_tuple() -> None:
    a = sample()
    assert a == PurgatoryParams(**{**a.__dict__, "regions": tuple(a.regions)})


def test_more_than_16_regions_raise(blob: bytes) -> None:
    with pytest.raises(PlanError, match=r"regions: expected at most 16, found 17"):
        build_purgatory(sample(17), 0x2080_0000, blob)
    build_purgatory(sample(16), 0x2080_0000, blob)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kernel_entry": 0}, "kernel_entry: expected a non-zero address"),
        ({"boot_params": -1}, "boot_params: expected 0..2\\^64-1"),
        ({"backup_size": 2**64}, "backup_size: expected 0..2\\^64-1"),
        ({"serial_port": 0x10000}, "serial_port: expected an I/O port"),
        ({"regions": [VerifiedRegion(0x1000, 1, b"short")]}, r"regions\[0\].sha256: expected 32"),
        ({"regions": [VerifiedRegion(2**64 - 1, 2, bytes(32))]}, r"regions\[0\] end"),
    ],
)
def test_bad_values_raise_plan_error(blob: bytes, change: dict[str, object], message: str) -> None:
    params = PurgatoryParams(**{**sample().__dict__, **change})
    with pytest.raises(PlanError, match=message):
        build_purgatory(params, 0x2080_0000, blob)


def test_unaligned_load_address_raises(blob: bytes) -> None:
    with pytest.raises(PlanError, match="load_addr: expected a page-aligned address"):
        build_purgatory(sample(), 0x2080_0800, blob)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:0x20], "expected at least 64 bytes, found 32"),
        (lambda b: b[:8] + b"XKPURG99" + b[16:], "magic: expected b'XKPURG01'"),
        (lambda b: b[:0x10] + (2).to_bytes(4, "little") + b[0x14:], "version: expected 1, found 2"),
        (lambda b: b[:0x34] + (8).to_bytes(4, "little") + b[0x38:], "max_regions: expected 0x10"),
        (lambda b: b[:0x30] + (0x2001).to_bytes(4, "little") + b[0x34:], "memsz: expected a page"),
        (lambda b: b[:-16], "file_size: expected at most"),
    ],
)
def test_corrupt_header_is_an_image_error(blob: bytes, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageError, match=message):
        parse_params(mutate(blob))


def test_missing_blob_says_how_to_build_it(blob: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(purgatory, "_RESOURCE", ("image", "data", "absent.bin"))
    purgatory_blob.cache_clear()
    try:
        with pytest.raises(PurgatoryMissing, match=r"run `make purgatory`") as err:
            purgatory_blob()
        assert isinstance(err.value, ImageError) and err.value.exit_code == 2
    finally:
        monkeypatch.undo()
        purgatory_blob.cache_clear()
    assert purgatory_blob() == blob
