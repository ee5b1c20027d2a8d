"""bzImage parser: synthetic round trips, every bad-input message, the real Debian kernel,
and hypothesis over random and mutated headers."""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import pytest
from formatdata import KIB, MIB, synth_bzimage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenkdump.errors import ImageError
from xenkdump.image.bzimage import (
    SETUP_HEADER,
    XLF_CAN_BE_LOADED_ABOVE_4G,
    XLF_KERNEL_64,
    parse_bzimage,
)


def test_setup_header_table() -> None:
    # boot.rst: the header spans 0x1F1..0x26C for protocol 2.15 (0x7B bytes).
    assert SETUP_HEADER.start == 0x1F1
    assert SETUP_HEADER.size == 0x7B
    assert SETUP_HEADER.field("init_size").offset == 0x260
    assert SETUP_HEADER.field("xloadflags").offset == 0x236
    assert SETUP_HEADER.field("pref_address").offset == 0x258


def test_synthetic_round_trip() -> None:
    data = synth_bzimage(
        payload=40 * KIB,
        setup_sects=7,
        kernel_alignment=16 * MIB,
        pref_address=32 * MIB,
        init_size=0x123000,
        cmdline_size=4095,
        min_alignment=13,
    )
    img = parse_bzimage(data, name="/boot/vmlinuz-x")
    h = img.header
    assert (h.setup_sects, h.version, h.boot_flag, h.header) == (7, 0x020F, 0xAA55, 0x53726448)
    assert (h.kernel_alignment, h.pref_address, h.init_size) == (16 * MIB, 32 * MIB, 0x123000)
    assert (h.cmdline_size, h.min_alignment, h.relocatable_kernel) == (4095, 13, 1)
    assert h.vid_mode == 0xFFFF
    assert h.xloadflags & XLF_KERNEL_64
    assert h.setup_size == 8 * 512
    assert img.kernel == data[8 * 512 :]
    assert img.entry_offset == 0x200
    # the header bytes to copy: 0x1F1 up to 0x202 + byte[0x201] (0x6A here)
    assert h.raw == data[0x1F1:0x26C]
    assert h.version_text == "2.15"


def test_setup_sects_zero_means_four() -> None:
    data = synth_bzimage(setup_sects=0)
    img = parse_bzimage(data)
    assert img.header.setup_sects == 0
    assert img.header.setup_size == 5 * 512
    assert img.kernel == data[5 * 512 :]


def test_load_memsz() -> None:
    # init_size wins when larger; otherwise the kernel length, both rounded to 4 KiB.
    big = parse_bzimage(synth_bzimage(payload=40 * KIB, init_size=0x200001))
    assert big.load_memsz == 0x201000
    small = parse_bzimage(synth_bzimage(payload=40 * KIB + 1, init_size=0x1000))
    assert small.load_memsz == 44 * KIB


BAD_CASES = [
    pytest.param(b"", "vmlinuz: size: expected a bzImage, found an empty file", id="empty"),
    pytest.param(
        synth_bzimage()[:0x200],
        "vmlinuz: size: expected at least 620 bytes for the setup header",
        id="truncated-header",
    ),
    pytest.param(
        synth_bzimage(boot_flag=0x1234),
        r"boot_flag at 0x1fe: expected 0xaa55 \(a bzImage\), found 0x1234",
        id="wrong-boot-flag",
    ),
    pytest.param(
        synth_bzimage(header=0x464C457F),
        r"header at 0x202: expected 'HdrS' \(a bzImage\), found b'\\x7fELF'",
        id="wrong-magic",
    ),
    pytest.param(
        synth_bzimage(version=0x020B),
        r"version: expected boot protocol 2.12 \(0x020c\) or newer, found 0x020b",
        id="version-2.11",
    ),
    pytest.param(
        synth_bzimage(xloadflags=XLF_CAN_BE_LOADED_ABOVE_4G),
        r"xloadflags: expected XLF_KERNEL_64 set \(a 64-bit entry at \+0x200\), found 0x0002",
        id="no-kernel-64",
    ),
    pytest.param(
        synth_bzimage(xloadflags=XLF_KERNEL_64),
        "xloadflags: expected XLF_CAN_BE_LOADED_ABOVE_4G set, found 0x0001",
        id="not-above-4g",
    ),
    pytest.param(
        synth_bzimage(relocatable_kernel=0),
        r"relocatable_kernel: expected non-zero \(a crash kernel must be relocatable\), found 0",
        id="not-relocatable",
    ),
    pytest.param(
        synth_bzimage(loadflags=0),
        r"loadflags: expected LOADED_HIGH set \(a bzImage, not a zImage\), found 0x00",
        id="zimage",
    ),
    pytest.param(
        synth_bzimage(kernel_alignment=3 * MIB),
        "kernel_alignment: expected a power of two from 4 KiB to 1 GiB, found 0x300000",
        id="alignment",
    ),
    pytest.param(
        synth_bzimage(jump=0x50EB),
        r"setup header length \(byte 0x201\): expected 0x62..0x7f, found 0x50",
        id="short-header",
    ),
    pytest.param(
        synth_bzimage(cmdline_size=0),
        "cmdline_size: expected non-zero, found 0",
        id="no-cmdline",
    ),
    pytest.param(
        synth_bzimage(payload=64 * KIB)[: 5 * 512 + 0x200],
        "vmlinuz: size: expected more than 3072 bytes",
        id="no-kernel",
    ),
    pytest.param(
        synth_bzimage(payload=64 * KIB)[:-4096],
        r"vmlinuz: size: expected at least 68081 bytes \(syssize=0x1000, truncated\?\), "
        "found 64000 bytes",
        id="truncated-kernel",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_CASES)
def test_bad_input(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as info:
        parse_bzimage(data, name="vmlinuz")
    text = str(info.value)
    assert text.startswith("vmlinuz: ")
    assert "\n" not in text
    assert "expected" in text and "found" in text


def test_error_names_the_file() -> None:
    with pytest.raises(ImageError, match=r"^/boot/vmlinuz-6\.1: boot_flag"):
        parse_bzimage(bytes(4096), name="/boot/vmlinuz-6.1")


# ---- the real Debian kernel -------------------------------------------------------------


@functools.cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.kernel
def test_debian_kernel_header(debian_kernel: Path) -> None:
    data = _read(debian_kernel)
    img = parse_bzimage(data, name=str(debian_kernel))
    h = img.header
    assert h.version >= 0x020C
    assert h.xloadflags & XLF_KERNEL_64
    assert h.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G
    assert h.relocatable_kernel == 1
    assert h.boot_flag == 0xAA55 and h.header == 0x53726448
    # Debian's x86_64 config: CONFIG_PHYSICAL_ALIGN 2 MiB, CONFIG_PHYSICAL_START 16 MiB.
    assert 2 * MIB <= h.kernel_alignment <= 16 * MIB
    assert h.kernel_alignment & (h.kernel_alignment - 1) == 0
    assert h.pref_address >= MIB and h.pref_address % h.kernel_alignment == 0
    assert len(img.kernel) <= h.init_size < 256 * MIB
    assert h.cmdline_size >= 2047
    assert h.setup_sects > 0
    assert len(img.kernel) == len(data) - (h.setup_sects + 1) * 512
    assert img.kernel == data[(h.setup_sects + 1) * 512 :]
    assert h.raw == data[0x1F1 : 0x202 + data[0x201]]
    if h.version == 0x020F:
        assert len(h.raw) == 0x7B  # protocol 2.15's header ends at kernel_info_offset + 4
    assert h.syssize * 16 <= len(img.kernel)
    assert img.load_memsz % 4096 == 0 and img.load_memsz >= h.init_size
    # the same values read independently with struct at boot.rst's offsets
    assert struct.unpack_from("<I", data, 0x260)[0] == h.init_size
    assert struct.unpack_from("<Q", data, 0x258)[0] == h.pref_address


@pytest.mark.kernel
def test_debian_kernel_truncated(debian_kernel: Path) -> None:
    data = _read(debian_kernel)
    with pytest.raises(ImageError, match="truncated"):
        parse_bzimage(data[: len(data) // 2], name="half")


# ---- hypothesis: nothing but ImageError escapes -------------------------------------------


def _parse_or_image_error(data: bytes) -> None:
    try:
        img = parse_bzimage(data, name="fuzz")
    except ImageError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz: ")
        return
    assert img.header.version >= 0x020C
    assert img.header.xloadflags & XLF_KERNEL_64
    assert len(img.kernel) > 0x200


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=8192))
def test_random_bytes(data: bytes) -> None:
    _parse_or_image_error(data)


HEADER_OFFSETS = st.integers(min_value=0x1F0, max_value=0x290)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(HEADER_OFFSETS, st.integers(0, 255)), max_size=12),
    st.one_of(st.none(), st.integers(min_value=0, max_value=40 * KIB)),
)
def test_mutated_synthetic_headers(muts: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(synth_bzimage(payload=32 * KIB))
    for off, val in muts:
        data[off] = val
    _parse_or_image_error(bytes(data if cut is None else data[:cut]))


@pytest.mark.kernel
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(st.tuples(HEADER_OFFSETS, st.integers(0, 255)), min_size=1, max_size=8),
    st.one_of(st.none(), st.integers(min_value=0, max_value=1 << 24)),
)
def test_mutated_debian_headers(
    debian_kernel: Path, muts: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(_read(debian_kernel))
    for off, val in muts:
        data[off] = val
    _parse_or_image_error(bytes(data if cut is None else data[:cut]))
