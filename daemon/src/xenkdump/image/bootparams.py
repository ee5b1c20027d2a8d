"""boot_params (the "zero page") for the crash kernel, and its e820 table.

Layout from zero-page.rst / boot.rst (docs/crash-image.md §1.2, §1.3).  What goes
in follows kexec-tools' choices (§1.3, §2.5) with three deliberate differences:

* hardware_subarch is 0 (PC), not dom0's Xen value 2: the crash kernel boots
  on bare metal, outside Xen (§1.2).
* type_of_loader is 0xFF, boot.rst's value for a loader without an assigned
  ID; 0xD0 belongs to kexec-tools and we are not it.
* screen_info, EDD and setup_data stay zero: the crash kernel gets its console
  from the command line (console=ttyS<n>), and a zero orig_video_isVGA just
  means "no VGA text console", which is safe on every host.

Pure: values in, 4096 bytes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from xenkdump.errors import PlanError
from xenkdump.hv.port import (
    E820_RAM,
    AddressRange,
    E820Entry,
)
from xenkdump.image.bzimage import SETUP_HEADER, SETUP_HEADER_START, BzImage
from xenkdump.image.structs import Layout
from xenkdump.units import MIB

BOOT_PARAMS_SIZE: Final = 4096
E820_MAX_ENTRIES_ZEROPAGE: Final = 128
E820_TABLE_OFFSET: Final = 0x2D0
TYPE_OF_LOADER_UNDEFINED: Final = 0xFF
X86_SUBARCH_PC: Final = 0
_U32: Final = (1 << 32) - 1

# struct boot_e820_entry: packed {u64 addr; u64 size; u32 type}
# (§1.3, xen-kexec-contract.md §2.8).
E820_ENTRY: Final = Layout(
    "boot_e820_entry", size=20, rows=((0, "addr", "Q"), (8, "size", "Q"), (16, "type", "I"))
)
assert E820_ENTRY.size == 20

# The zero-page fields outside the setup header that we fill or read back (crash-image.md §1.3).
# Everything not listed is left zero; the setup header (0x1F1..) uses SETUP_HEADER.
BOOT_PARAMS: Final = Layout(
    "boot_params",
    size=BOOT_PARAMS_SIZE,
    rows=(
        (0x070, "acpi_rsdp_addr", "Q"),
        (0x0C0, "ext_ramdisk_image", "I"),
        (0x0C4, "ext_ramdisk_size", "I"),
        (0x0C8, "ext_cmd_line_ptr", "I"),
        (0x1E0, "alt_mem_k", "I"),
        (0x1E4, "scratch", "I"),
        (0x1E8, "e820_entries", "B"),
        (0x1E9, "eddbuf_entries", "B"),
        (0x1EA, "edd_mbr_sig_buf_entries", "B"),
        (0x1EB, "kbd_status", "B"),
        (0x1EC, "secure_boot", "B"),
        (0x1EF, "sentinel", "B"),
    ),
)
assert BOOT_PARAMS.size == BOOT_PARAMS_SIZE
assert E820_TABLE_OFFSET + E820_MAX_ENTRIES_ZEROPAGE * E820_ENTRY.size == 0xCD0


def _subtract(ranges: list[tuple[int, int]], cut: tuple[int, int]) -> list[tuple[int, int]]:
    """[start, end) pieces of ``ranges`` outside ``cut``."""
    out: list[tuple[int, int]] = []
    c0, c1 = cut
    for s, e in ranges:
        if c1 <= s or e <= c0:
            out.append((s, e))
            continue
        if s < c0:
            out.append((s, c0))
        if c1 < e:
            out.append((c1, e))
    return out


def crash_e820(
    machine_map: Sequence[E820Entry],
    crash: AddressRange,
    *,
    exclude: Sequence[AddressRange] = (),
    low_ram: AddressRange | None = None,
) -> list[E820Entry]:
    """The crash kernel's memory map (§2.5).

    RAM is ``low_ram`` (the backup source, restored by purgatory, so the crash
    kernel may use it) plus the crash range minus ``exclude`` (elfcorehdr and
    backup segments, which must survive until /proc/vmcore is read).  RAM
    chunks shrink to 1 KiB boundaries as kexec-tools does.  Every non-RAM range
    of the machine map keeps its type; where a RAM chunk meets one, the non-RAM
    type wins.  The result is sorted, non-overlapping, with adjacent entries of
    one type merged; PlanError if it needs more than the zero page's 128 slots.
    """
    reserved: list[tuple[int, int, int]] = []
    for ent in sorted(machine_map):
        if ent.type == E820_RAM or ent.size <= 0:
            continue
        start = max(ent.addr, reserved[-1][1]) if reserved else ent.addr
        if start < ent.end:
            reserved.append((start, ent.end, ent.type))

    ram: list[tuple[int, int]] = []
    if low_ram is not None and low_ram.size > 0:
        ram.append((low_ram.start, low_ram.end))
    if crash.size > 0:
        ram.append((crash.start, crash.end))
    for cut in exclude:
        ram = _subtract(ram, (cut.start, cut.end))
    for s, e, _ in reserved:
        ram = _subtract(ram, (s, e))
    kib = 1024
    ram = [((s + kib - 1) & ~(kib - 1), e & ~(kib - 1)) for s, e in ram]
    pieces = [(s, e, E820_RAM) for s, e in ram if s < e] + reserved

    merged: list[tuple[int, int, int]] = []
    for s, e, t in sorted(pieces):
        if merged and merged[-1][2] == t and merged[-1][1] >= s:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e), t)
        else:
            merged.append((s, e, t))
    if len(merged) > E820_MAX_ENTRIES_ZEROPAGE:
        raise PlanError(
            f"crash kernel e820: expected at most {E820_MAX_ENTRIES_ZEROPAGE} entries "
            f"(boot_params.e820_table), found {len(merged)}"
        )
    return [E820Entry(s, e - s, t) for s, e, t in merged]


def _alt_mem_k(e820: Sequence[E820Entry]) -> int:
    # KiB of RAM above 1 MiB in the RAM entry straddling 1 MiB, as kexec-tools
    # computes it (§1.3); 0 when none does (the crash map normally has no such entry).
    for ent in e820:
        if ent.type == E820_RAM and ent.addr <= MIB < ent.end:
            return min((ent.end - MIB) >> 10, _U32)
    return 0


def _split64(field: str, value: int) -> tuple[int, int]:
    if not 0 <= value < 1 << 64:
        raise PlanError(f"boot_params.{field}: expected a 64-bit value, found {value:#x}")
    return value & _U32, value >> 32


def build_boot_params(
    image: BzImage,
    *,
    cmdline_addr: int,
    initrd_addr: int,
    initrd_size: int,
    e820: Sequence[E820Entry],
    acpi_rsdp: int = 0,
) -> bytes:
    """The 4096-byte zero page for ``image`` (§1.3).

    The setup header is copied from the image, then the loader's fields are
    written: type_of_loader, hardware_subarch 0, cmd_line_ptr and the
    ramdisk fields (low 32 bits in the header, high 32 in the ext_ fields:
    protocol 2.12, which parse_bzimage guarantees), the e820 table and, when
    known, acpi_rsdp_addr.  The sentinel stays 0 so the kernel keeps it all.
    """
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise PlanError(
            f"boot_params.e820_entries: expected at most {E820_MAX_ENTRIES_ZEROPAGE}, "
            f"found {len(e820)}"
        )
    buf = bytearray(BOOT_PARAMS_SIZE)
    raw = image.header.raw
    buf[SETUP_HEADER_START : SETUP_HEADER_START + len(raw)] = raw

    cmd_lo, cmd_hi = _split64("cmd_line_ptr", cmdline_addr)
    rd_lo, rd_hi = _split64("ramdisk_image", initrd_addr)
    sz_lo, sz_hi = _split64("ramdisk_size", initrd_size)
    SETUP_HEADER.pack_into(
        buf,
        {
            "type_of_loader": TYPE_OF_LOADER_UNDEFINED,
            "ramdisk_image": rd_lo,
            "ramdisk_size": sz_lo,
            "cmd_line_ptr": cmd_lo,
            "hardware_subarch": X86_SUBARCH_PC,
            "hardware_subarch_data": 0,
            "setup_data": 0,
        },
    )
    for i, ent in enumerate(e820):
        if not (0 <= ent.addr < 1 << 64 and 0 <= ent.size < 1 << 64 and 0 <= ent.type <= _U32):
            raise PlanError(
                f"boot_params.e820_table[{i}]: expected 64/64/32-bit values, found {ent}"
            )
        E820_ENTRY.pack_into(
            buf,
            {"addr": ent.addr, "size": ent.size, "type": ent.type},
            base=E820_TABLE_OFFSET + i * E820_ENTRY.size,
        )
    _split64("acpi_rsdp_addr", acpi_rsdp)  # range check only: the field is 64-bit
    BOOT_PARAMS.pack_into(
        buf,
        {
            "acpi_rsdp_addr": acpi_rsdp,
            "ext_ramdisk_image": rd_hi,
            "ext_ramdisk_size": sz_hi,
            "ext_cmd_line_ptr": cmd_hi,
            "alt_mem_k": _alt_mem_k(e820),
            "e820_entries": len(e820),
            "sentinel": 0,
        },
    )
    assert len(buf) == BOOT_PARAMS_SIZE
    return bytes(buf)


def parse_boot_params(data: bytes) -> dict[str, object]:
    """Decode a zero page built by build_boot_params (round-trip tests, `plan` output).

    The 64-bit values are recombined from their low/high halves: ``cmd_line_ptr``,
    ``ramdisk_image`` and ``ramdisk_size`` are full addresses/sizes here.
    """
    if len(data) != BOOT_PARAMS_SIZE:
        raise PlanError(f"boot_params: expected {BOOT_PARAMS_SIZE} bytes, found {len(data)}")
    bp = BOOT_PARAMS.unpack(data)
    hdr = SETUP_HEADER.unpack(data)
    out: dict[str, object] = {}
    out.update(hdr)
    out.update(bp)
    out["cmd_line_ptr"] = hdr["cmd_line_ptr"] | bp["ext_cmd_line_ptr"] << 32
    out["ramdisk_image"] = hdr["ramdisk_image"] | bp["ext_ramdisk_image"] << 32
    out["ramdisk_size"] = hdr["ramdisk_size"] | bp["ext_ramdisk_size"] << 32
    n = bp["e820_entries"]
    if n > E820_MAX_ENTRIES_ZEROPAGE:
        raise PlanError(
            f"boot_params.e820_entries: expected at most {E820_MAX_ENTRIES_ZEROPAGE}, found {n}"
        )
    table = []
    for i in range(n):
        e = E820_ENTRY.unpack(data, base=E820_TABLE_OFFSET + i * E820_ENTRY.size)
        table.append(E820Entry(e["addr"], e["size"], e["type"]))
    out["e820_table"] = table
    out["setup_header_raw"] = bytes(data[SETUP_HEADER_START : 0x202 + data[0x201]])
    return out
