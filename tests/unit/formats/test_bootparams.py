"""boot_params builder and the crash kernel's e820: layout, round trips, real kernel,
and hypothesis invariants over random machine maps."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from formatdata import CRASH, GIB, KIB, LOW_RAM, MACHINE_MAP, MIB, synth_bzimage
from hypothesis import given, settings
from hypothesis import strategies as st

from xenkdump.errors import PlanError
from xenkdump.hv.port import (
    E820_ACPI,
    E820_NVS,
    E820_PMEM,
    E820_PRAM,
    E820_RAM,
    E820_RESERVED,
    E820_UNUSABLE,
    AddressRange,
    E820Entry,
)
from xenkdump.image.bootparams import (
    BOOT_PARAMS,
    BOOT_PARAMS_SIZE,
    E820_ENTRY,
    build_boot_params,
    crash_e820,
    parse_boot_params,
)
from xenkdump.image.bzimage import parse_bzimage

ELFCOREHDR = AddressRange(CRASH.end - 16 * KIB, 16 * KIB)
BACKUP = AddressRange(CRASH.end - 16 * KIB - 640 * KIB, 640 * KIB)


def test_layout_sizes() -> None:
    assert BOOT_PARAMS_SIZE == BOOT_PARAMS.size == 4096
    assert E820_ENTRY.size == 20
    # zero-page.rst offsets
    assert BOOT_PARAMS.field("acpi_rsdp_addr").offset == 0x070
    assert BOOT_PARAMS.field("ext_cmd_line_ptr").offset == 0x0C8
    assert BOOT_PARAMS.field("e820_entries").offset == 0x1E8
    assert BOOT_PARAMS.field("sentinel").offset == 0x1EF


def test_crash_e820_realistic_host() -> None:
    e820 = crash_e820(MACHINE_MAP, CRASH, exclude=[ELFCOREHDR, BACKUP], low_ram=LOW_RAM)
    ram = [(e.addr, e.end) for e in e820 if e.type == E820_RAM]
    assert ram == [(0, 0x9FC00), (CRASH.start, BACKUP.start)]
    others = [e for e in e820 if e.type != E820_RAM]
    assert others == [e for e in MACHINE_MAP if e.type != E820_RAM]
    assert e820 == sorted(e820)


def test_crash_e820_too_many_entries() -> None:
    holes = [E820Entry(0x100000000 + i * 2 * MIB, MIB, E820_RESERVED) for i in range(130)]
    with pytest.raises(PlanError, match=r"expected at most 128 entries .*found 13[0-9]"):
        crash_e820(list(MACHINE_MAP) + holes, CRASH)


def test_build_and_parse_round_trip() -> None:
    img = parse_bzimage(synth_bzimage(hardware_subarch=2))
    e820 = crash_e820(MACHINE_MAP, CRASH, exclude=[ELFCOREHDR, BACKUP], low_ram=LOW_RAM)
    bp = build_boot_params(
        img,
        cmdline_addr=0x1_2345_6000,
        initrd_addr=0x2_0000_0000 + 0x7000,
        initrd_size=0x1_0000_0123,
        e820=e820,
        acpi_rsdp=0xBFEE0014,
    )
    assert len(bp) == BOOT_PARAMS_SIZE
    p = parse_boot_params(bp)
    assert p["cmd_line_ptr"] == 0x1_2345_6000
    assert p["ramdisk_image"] == 0x2_0000_7000
    assert p["ramdisk_size"] == 0x1_0000_0123
    assert p["e820_table"] == e820
    assert p["e820_entries"] == len(e820)
    assert p["acpi_rsdp_addr"] == 0xBFEE0014
    assert p["type_of_loader"] == 0xFF
    assert p["hardware_subarch"] == 0  # never dom0's Xen value 2
    assert p["sentinel"] == 0
    assert p["alt_mem_k"] == 0  # no RAM straddles 1 MiB in the crash map
    # the split halves, read with struct at zero-page.rst's offsets
    assert struct.unpack_from("<I", bp, 0x228)[0] == 0x2345_6000
    assert struct.unpack_from("<I", bp, 0x0C8)[0] == 0x1
    assert struct.unpack_from("<I", bp, 0x218)[0] == 0x7000
    assert struct.unpack_from("<I", bp, 0x0C0)[0] == 0x2
    assert struct.unpack_from("<QQI", bp, 0x2D0) == (0, 0x9FC00, E820_RAM)
    # the setup header is copied; only the loader's fields differ
    raw = img.header.raw
    copied = bp[0x1F1 : 0x1F1 + len(raw)]
    written = {0x210, 0x218, 0x219, 0x21A, 0x21B, 0x21C, 0x21D, 0x21E, 0x21F}
    written |= set(range(0x228, 0x22C)) | set(range(0x23C, 0x248))
    for i, (a, b) in enumerate(zip(raw, copied, strict=True)):
        if 0x1F1 + i not in written:
            assert a == b, f"setup header byte {0x1F1 + i:#x} changed"
    assert p["kernel_alignment"] == 2 * MIB and p["init_size"] == 8 * MIB


def test_everything_else_zero() -> None:
    img = parse_bzimage(synth_bzimage())
    bp = build_boot_params(img, cmdline_addr=0x1000, initrd_addr=0, initrd_size=0, e820=[])
    assert bp[:0x1E0] == bytes(0x1E0)  # screen_info, apm, ... acpi_rsdp and ext_ all 0
    assert bp[0x1E0:0x1F1] == bytes(0x11)
    assert bp[0x26C:] == bytes(BOOT_PARAMS_SIZE - 0x26C)  # e820 table, eddbuf, ...


def test_alt_mem_k() -> None:
    img = parse_bzimage(synth_bzimage())
    e820 = [E820Entry(0, 0x9F000, E820_RAM), E820Entry(0x80000, 63 * MIB, E820_RAM)]
    p = parse_boot_params(
        build_boot_params(img, cmdline_addr=0, initrd_addr=0, initrd_size=0, e820=e820)
    )
    assert p["alt_mem_k"] == (0x80000 + 63 * MIB - MIB) // 1024


def test_bad_values() -> None:
    img = parse_bzimage(synth_bzimage())
    many = [E820Entry(i * MIB, KIB, E820_RAM) for i in range(129)]
    with pytest.raises(PlanError, match="e820_entries: expected at most 128, found 129"):
        build_boot_params(img, cmdline_addr=0, initrd_addr=0, initrd_size=0, e820=many)
    with pytest.raises(PlanError, match="cmd_line_ptr: expected a 64-bit value"):
        build_boot_params(img, cmdline_addr=1 << 64, initrd_addr=0, initrd_size=0, e820=[])
    with pytest.raises(PlanError, match="boot_params: expected 4096 bytes, found 100"):
        parse_boot_params(bytes(100))


@pytest.mark.kernel
def test_debian_kernel_boot_params(debian_kernel: Path) -> None:
    data = debian_kernel.read_bytes()
    img = parse_bzimage(data, name=str(debian_kernel))
    e820 = crash_e820(MACHINE_MAP, CRASH, exclude=[ELFCOREHDR, BACKUP], low_ram=LOW_RAM)
    bp = build_boot_params(
        img, cmdline_addr=CRASH.start + MIB, initrd_addr=0, initrd_size=0, e820=e820
    )
    p = parse_boot_params(bp)
    # startup_64 reads these from boot_params (docs/crash-image.md §1.4): the file's values
    assert p["kernel_alignment"] == struct.unpack_from("<I", data, 0x230)[0]
    assert p["init_size"] == struct.unpack_from("<I", data, 0x260)[0]
    assert p["pref_address"] == struct.unpack_from("<Q", data, 0x258)[0]
    raw = p["setup_header_raw"]
    assert isinstance(raw, bytes) and raw[: 0x210 - 0x1F1] == data[0x1F1:0x210]
    assert p["version"] == struct.unpack_from("<H", data, 0x206)[0]
    assert p["hardware_subarch"] == 0 and p["cmd_line_ptr"] == CRASH.start + MIB


# ---- hypothesis: e820 invariants over random machine maps ---------------------------------

NON_RAM = [E820_RESERVED, E820_ACPI, E820_NVS, E820_UNUSABLE, E820_PMEM, E820_PRAM]


@st.composite
def hosts(
    draw: st.DrawFn,
) -> tuple[list[E820Entry], AddressRange, list[AddressRange], AddressRange | None]:
    """A sorted, non-overlapping machine map; a crash range inside one of its RAM entries;
    excludes inside the crash range; the low RAM range (if the map has one below 640K)."""
    n = draw(st.integers(2, 40))
    entries: list[E820Entry] = []
    addr = 0
    for i in range(n):
        addr += draw(st.sampled_from([0, 0, 0x400, 0x1000, 1 * MIB, 256 * MIB]))
        size = draw(st.sampled_from([0x400, 0x1000, 0x9FC00, 16 * MIB, 512 * MIB, 4 * GIB]))
        kind = E820_RAM if i == 0 or draw(st.booleans()) else draw(st.sampled_from(NON_RAM))
        entries.append(E820Entry(addr, size, kind))
        addr += size
    big = [e for e in entries if e.type == E820_RAM and e.size >= 16 * MIB]
    if not big:
        entries.append(E820Entry(addr + MIB, 512 * MIB, E820_RAM))
        big = [entries[-1]]
    host = draw(st.sampled_from(big))
    pages = host.size // 4096
    start_page = draw(st.integers(0, pages - 1))
    npages = draw(st.integers(1, min(pages - start_page, 65536)))
    crash = AddressRange(host.addr + start_page * 4096, npages * 4096)
    excludes = []
    for _ in range(draw(st.integers(0, 3))):
        s = draw(st.integers(0, npages - 1))
        ln = draw(st.integers(1, npages - s))
        excludes.append(AddressRange(crash.start + s * 4096, ln * 4096))
    low = entries[0] if entries[0].type == E820_RAM and entries[0].end <= 0xA0000 else None
    low_ram = None if low is None else AddressRange(low.addr, low.size)
    return entries, crash, excludes, low_ram


def _covered(ranges: list[tuple[int, int]], s: int, e: int) -> bool:
    """True if [s, e) is fully covered by the union of sorted ``ranges``."""
    for a, b in sorted(ranges):
        if a <= s < b:
            s = b
        if s >= e:
            return True
    return s >= e


@settings(max_examples=300, deadline=None)
@given(hosts())
def test_e820_invariants(
    host: tuple[list[E820Entry], AddressRange, list[AddressRange], AddressRange | None],
) -> None:
    machine, crash, excludes, low_ram = host
    try:
        e820 = crash_e820(machine, crash, exclude=excludes, low_ram=low_ram)
    except PlanError as exc:
        assert "expected at most 128" in str(exc)
        return
    assert len(e820) <= 128
    # sorted, non-empty, no overlaps
    for a, b in itertools.pairwise(e820):
        assert a.end <= b.addr
    assert all(e.size > 0 for e in e820)
    ram = [(e.addr, e.end) for e in e820 if e.type == E820_RAM]
    allowed = [(crash.start, crash.end)] + (
        [] if low_ram is None else [(low_ram.start, low_ram.end)]
    )
    for s, e in ram:
        # RAM only from the crash range or low RAM, never inside an exclude, 1 KiB aligned
        assert _covered(allowed, s, e)
        assert not any(x.overlaps(s, e - s) for x in excludes)
        assert s % 1024 == 0 and e % 1024 == 0
    # all of the crash range not excluded is RAM (1 KiB aligned pieces; page aligned here)
    free = [(crash.start, crash.end)]
    for x in excludes:
        nxt = []
        for s, e in free:
            if x.end <= s or e <= x.start:
                nxt.append((s, e))
                continue
            if s < x.start:
                nxt.append((s, x.start))
            if x.end < e:
                nxt.append((x.end, e))
        free = nxt
    for s, e in free:
        assert _covered(ram, s, e), f"crash piece {s:#x}-{e:#x} not RAM"
    # every non-RAM machine range is present with its type; none touches the crash range
    for m in machine:
        if m.type != E820_RAM:
            same = [(e.addr, e.end) for e in e820 if e.type == m.type]
            assert _covered(same, m.addr, m.end)
    for ent in e820:
        if ent.type != E820_RAM:
            assert not crash.overlaps(ent.addr, ent.size)
