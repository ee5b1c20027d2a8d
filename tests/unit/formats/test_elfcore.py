"""elfcorehdr: layout sizes, round trip, and the headers as pyelftools and binutils'
readelf see them on a realistic 16 GiB host with a 256 MiB crash area."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from formatdata import CPU_NOTES, CRASH, LOW_RAM, MACHINE_MAP, MIB, VMCOREINFO
from hypothesis import given, settings
from hypothesis import strategies as st

from xenkdump.errors import PlanError
from xenkdump.hv.port import E820_RAM, E820_RESERVED, AddressRange, E820Entry
from xenkdump.image.elfcore import (
    ELF64_EHDR,
    ELF64_PHDR,
    LINUX_PAGE_OFFSET,
    PT_LOAD,
    PT_NOTE,
    build_elfcorehdr,
    check_dom0_vmcoreinfo,
    dump_ranges,
    parse_elfcorehdr,
)

BACKUP_DST = CRASH.end - 2 * MIB

# Machine RAM minus the crash range, written out by hand from formatdata.MACHINE_MAP.
EXPECTED_RAM = [
    (0x0, 0x9FC00),
    (0x100000, CRASH.start),
    (CRASH.end, 0xBFEE0000),
    (0xBFF00000, 0xC0000000),
    (0x100000000, 0x440000000),
]


# dom0's VMCOREINFO note: Linux's 4096 + 36 byte buffer, at a machine address in RAM.
DOM0_VMCOREINFO = AddressRange(0x2345E000, 0x1024)


def _host_hdr() -> bytes:
    return build_elfcorehdr(
        cpu_notes=CPU_NOTES,
        vmcoreinfo=VMCOREINFO,
        ram=dump_ranges(MACHINE_MAP, CRASH),
        backup=(LOW_RAM, BACKUP_DST),
        dom0_vmcoreinfo=DOM0_VMCOREINFO,
    )


def test_layout_sizes() -> None:
    assert ELF64_EHDR.size == 64
    assert ELF64_PHDR.size == 56


def test_dump_ranges() -> None:
    got = [(r.start, r.end) for r in dump_ranges(MACHINE_MAP, CRASH)]
    assert got == EXPECTED_RAM
    # a crash range covering a whole RAM entry removes it
    whole = dump_ranges(MACHINE_MAP, AddressRange(0xBFF00000, MIB))
    assert (0xBFF00000, 0xC0000000) not in [(r.start, r.end) for r in whole]


def test_round_trip() -> None:
    data = _host_hdr()
    assert len(data) % 1024 == 0
    eh, ph = parse_elfcorehdr(data)
    assert eh["e_phnum"] == len(CPU_NOTES) + 2 + len(EXPECTED_RAM)
    assert eh["e_phoff"] == 64 and eh["e_phentsize"] == 56 and eh["e_type"] == 4
    notes = [p for p in ph if p["p_type"] == PT_NOTE]
    assert [(p["p_offset"], p["p_memsz"]) for p in notes] == [
        (n.start, n.size) for n in (*CPU_NOTES, VMCOREINFO, DOM0_VMCOREINFO)
    ]
    assert all(p["p_paddr"] == p["p_offset"] and p["p_vaddr"] == 0 for p in notes)
    loads = [p for p in ph if p["p_type"] == PT_LOAD]
    assert [(p["p_paddr"], p["p_paddr"] + p["p_memsz"]) for p in loads] == EXPECTED_RAM
    # the backed-up low RAM is read from the backup (docs/crash-image.md §2.4); the rest in place
    assert loads[0]["p_offset"] == BACKUP_DST
    assert all(p["p_offset"] == p["p_paddr"] for p in loads[1:])
    assert all(p["p_vaddr"] == LINUX_PAGE_OFFSET + p["p_paddr"] for p in loads)
    assert all(p["p_filesz"] == p["p_memsz"] and p["p_flags"] == 7 for p in loads)
    assert data[64 + 56 * eh["e_phnum"] :] == bytes(len(data) - 64 - 56 * eh["e_phnum"])


def test_pyelftools_view() -> None:
    elf = ELFFile(io.BytesIO(_host_hdr()))
    assert elf.elfclass == 64 and elf.little_endian
    assert elf["e_type"] == "ET_CORE" and elf["e_machine"] == "EM_X86_64"
    assert elf.num_sections() == 0
    segs = list(elf.iter_segments())
    notes = [s for s in segs if s["p_type"] == "PT_NOTE"]
    loads = [s for s in segs if s["p_type"] == "PT_LOAD"]
    assert len(notes) == len(CPU_NOTES) + 2  # CPUs + Xen's and dom0's VMCOREINFO
    dom0 = notes[-1]
    assert (dom0["p_offset"], dom0["p_paddr"], dom0["p_filesz"]) == (
        DOM0_VMCOREINFO.start,
        DOM0_VMCOREINFO.start,
        DOM0_VMCOREINFO.size,
    )
    assert [(s["p_paddr"], s["p_paddr"] + s["p_memsz"]) for s in loads] == EXPECTED_RAM
    for s in loads:  # no PT_LOAD overlaps the crash range
        assert not CRASH.overlaps(s["p_paddr"], s["p_memsz"])


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf not installed")
def test_readelf_view(tmp_path: Path) -> None:
    path = tmp_path / "elfcorehdr"
    path.write_bytes(_host_hdr())
    out = subprocess.run(
        ["readelf", "-h", "-l", "-W", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"Type:\s+CORE", out)
    assert re.search(r"Machine:\s+Advanced Micro Devices X86-64", out)
    rows = re.findall(
        r"^\s+(NOTE|LOAD)\s+(0x[0-9a-f]+) (0x[0-9a-f]+) (0x[0-9a-f]+) "
        r"(0x[0-9a-f]+) (0x[0-9a-f]+)",
        out,
        re.M,
    )
    notes = [(int(r[1], 16), int(r[5], 16)) for r in rows if r[0] == "NOTE"]
    assert len(notes) == len(CPU_NOTES) + 2
    assert notes[-1] == (DOM0_VMCOREINFO.start, DOM0_VMCOREINFO.size)  # Offset, FileSiz
    loads = [(int(r[3], 16), int(r[3], 16) + int(r[5], 16)) for r in rows if r[0] == "LOAD"]
    assert loads == EXPECTED_RAM
    first = next(r for r in rows if r[0] == "LOAD")
    assert int(first[1], 16) == BACKUP_DST  # Offset column of the backed-up range


def test_zero_size_note_skipped_and_no_vmcoreinfo() -> None:
    notes = [*CPU_NOTES, AddressRange(0, 0)]
    eh, ph = parse_elfcorehdr(
        build_elfcorehdr(cpu_notes=notes, vmcoreinfo=None, ram=[AddressRange(0, 0x9FC00)])
    )
    assert sum(1 for p in ph if p["p_type"] == PT_NOTE) == len(CPU_NOTES)
    assert eh["e_phnum"] == len(CPU_NOTES) + 1


def test_backup_inside_a_larger_range_splits_it() -> None:
    ram = [AddressRange(0, 0x9FC00)]
    _, ph = parse_elfcorehdr(
        build_elfcorehdr(
            cpu_notes=[],
            vmcoreinfo=None,
            ram=ram,
            backup=(AddressRange(0x1000, 0x8000), BACKUP_DST),
        )
    )
    got = [(p["p_paddr"], p["p_memsz"], p["p_offset"]) for p in ph]
    assert got == [(0, 0x1000, 0), (0x1000, 0x8000, BACKUP_DST), (0x9000, 0x96C00, 0x9000)]


def test_backup_across_ranges_is_refused() -> None:
    ram = [AddressRange(0, 0x9FC00)]
    with pytest.raises(PlanError, match="backup source: expected inside one RAM range"):
        build_elfcorehdr(
            cpu_notes=[], vmcoreinfo=None, ram=ram, backup=(AddressRange(0x9F000, 0x2000), 0)
        )


def test_page_offset_zero() -> None:
    _, ph = parse_elfcorehdr(
        build_elfcorehdr(cpu_notes=[], vmcoreinfo=None, ram=[AddressRange(MIB, MIB)], page_offset=0)
    )
    assert ph[0]["p_vaddr"] == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1 << 20), st.integers(1, 1 << 20), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 1 << 22),
    st.integers(1, 1 << 18),
    st.integers(0, 64),
)
def test_dump_ranges_property(
    chunks: list[tuple[int, int, bool]], cstart: int, csize: int, ncpus: int
) -> None:
    machine, addr = [], 0
    for gap, size, is_ram in chunks:
        addr += gap * 4096
        machine.append(E820Entry(addr, size * 4096, E820_RAM if is_ram else E820_RESERVED))
        addr += size * 4096
    crash = AddressRange(cstart * 4096, csize * 4096)
    ram = dump_ranges(machine, crash)
    for r in ram:
        assert not crash.overlaps(r.start, r.size) and r.size > 0
        assert any(e.addr <= r.start and r.end <= e.end and e.type == E820_RAM for e in machine)
    total = sum(r.size for r in ram)
    ram_total = sum(e.size for e in machine if e.type == E820_RAM)
    cut = sum(
        max(0, min(e.end, crash.end) - max(e.addr, crash.start))
        for e in machine
        if e.type == E820_RAM
    )
    assert total == ram_total - cut
    notes = [AddressRange(0x40000000 + i * 0x1000, 404) for i in range(ncpus)]
    data = build_elfcorehdr(cpu_notes=notes, vmcoreinfo=VMCOREINFO, ram=ram)
    eh, _ = parse_elfcorehdr(data)
    assert eh["e_phnum"] == ncpus + 1 + len(ram) and len(data) % 1024 == 0
    elf = ELFFile(io.BytesIO(data))
    assert sum(1 for s in elf.iter_segments() if s["p_type"] == "PT_NOTE") == ncpus + 1


def test_no_dom0_vmcoreinfo_means_no_note_for_it() -> None:
    kw = {"cpu_notes": CPU_NOTES, "vmcoreinfo": VMCOREINFO, "ram": [AddressRange(0, 0x9FC00)]}
    without = parse_elfcorehdr(build_elfcorehdr(**kw))[1]  # type: ignore[arg-type]
    empty = parse_elfcorehdr(
        build_elfcorehdr(**kw, dom0_vmcoreinfo=AddressRange(0, 0))  # type: ignore[arg-type]
    )[1]
    assert without == empty
    assert sum(1 for p in without if p["p_type"] == PT_NOTE) == len(CPU_NOTES) + 1


def test_dom0_vmcoreinfo_in_ram_outside_the_crash_area_is_accepted() -> None:
    check_dom0_vmcoreinfo(DOM0_VMCOREINFO, MACHINE_MAP, CRASH)
    # right below and right above the crash area
    check_dom0_vmcoreinfo(AddressRange(CRASH.start - 0x2000, 0x1024), MACHINE_MAP, CRASH)
    check_dom0_vmcoreinfo(AddressRange(CRASH.end, 0x1024), MACHINE_MAP, CRASH)


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (AddressRange(CRASH.start + 0x1000, 0x1024), "outside the crash area"),
        (AddressRange(CRASH.start - 0x1000, 0x1024), "outside the crash area"),  # straddles
        (AddressRange(0xA0000, 0x1024), "in RAM of Xen's memory map"),  # the BIOS hole
        (AddressRange(0x9F000, 0x1024), "in RAM of Xen's memory map"),  # runs off low RAM
        (AddressRange(0x900000000, 0x1024), "in RAM of Xen's memory map"),  # past the top
    ],
    ids=["inside", "straddling", "hole", "runs-off-ram", "past-top"],
)
def test_dom0_vmcoreinfo_inside_the_crash_area_or_outside_ram_is_refused(
    note: AddressRange, message: str
) -> None:
    with pytest.raises(PlanError, match=message) as err:
        check_dom0_vmcoreinfo(note, MACHINE_MAP, CRASH)
    assert str(err.value).startswith("dom0 vmcoreinfo: ")
    assert f"{note.start:#x}-{note.end:#x}" in str(err.value)
