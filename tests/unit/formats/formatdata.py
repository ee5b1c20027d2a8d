"""Shared inputs for the format tests: a realistic 16 GiB Xen host with a 256 MiB crash
area, and a small synthetic bzImage whose header fields can be overridden one by one."""

from __future__ import annotations

import struct

from xenkdump.hv.port import (
    E820_ACPI,
    E820_NVS,
    E820_RAM,
    E820_RESERVED,
    AddressRange,
    E820Entry,
)

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

# A 16 GiB server as Xen's XENMEM_machine_memory_map reports it (the crash area
# still shows as RAM there, docs/xen-kexec-contract.md §2.8).
MACHINE_MAP: tuple[E820Entry, ...] = (
    E820Entry(0x0, 0x9FC00, E820_RAM),
    E820Entry(0x9FC00, 0x400, E820_RESERVED),
    E820Entry(0xF0000, 0x10000, E820_RESERVED),
    E820Entry(0x100000, 0xBFDE0000, E820_RAM),
    E820Entry(0xBFEE0000, 0x1F000, E820_ACPI),
    E820Entry(0xBFEFF000, 0x1000, E820_NVS),
    E820Entry(0xBFF00000, 0x100000, E820_RAM),
    E820Entry(0xE0000000, 0x10000000, E820_RESERVED),
    E820Entry(0xFEC00000, 0x1000, E820_RESERVED),
    E820Entry(0xFEE00000, 0x1000, E820_RESERVED),
    E820Entry(0xFFFC0000, 0x40000, E820_RESERVED),
    E820Entry(0x100000000, 0x340000000, E820_RAM),
)
# crashkernel=256M: Xen's highest fit below 4 GiB, page aligned (§7).
CRASH = AddressRange(0xAFC00000, 256 * MIB)
# The backup source: the first RAM range ending at or below 640 KiB (docs/crash-image.md §2.2).
LOW_RAM = AddressRange(0x0, 0x9FC00)
# Per-CPU crash notes in the Xen heap: 500 bytes for CPU 0, 404 for the others
# (xen-kexec-contract.md §5.4).
CPU_NOTES: tuple[AddressRange, ...] = (
    AddressRange(0x43FFF6000, 500),
    AddressRange(0x43FFF5000, 404),
    AddressRange(0x43FFF4800, 404),
    AddressRange(0x43FFF4000, 404),
)
VMCOREINFO = AddressRange(0x43FE0C000, 4096)


def synth_bzimage(payload: int = 32 * KIB, setup_sects: int = 4, **fields: int) -> bytes:
    """A well-formed boot-protocol-2.15 bzImage; ``fields`` override setup-header values.

    Offsets are written out here on purpose (not taken from bzimage.SETUP_HEADER),
    so a wrong offset in the parser's table shows up as a failing test.
    """
    offsets = {
        "setup_sects": (0x1F1, "B"),
        "syssize": (0x1F4, "I"),
        "vid_mode": (0x1FA, "H"),
        "boot_flag": (0x1FE, "H"),
        "jump": (0x200, "H"),
        "header": (0x202, "I"),
        "version": (0x206, "H"),
        "loadflags": (0x211, "B"),
        "kernel_alignment": (0x230, "I"),
        "relocatable_kernel": (0x234, "B"),
        "min_alignment": (0x235, "B"),
        "xloadflags": (0x236, "H"),
        "cmdline_size": (0x238, "I"),
        "hardware_subarch": (0x23C, "I"),
        "pref_address": (0x258, "Q"),
        "init_size": (0x260, "I"),
    }
    values = {
        "setup_sects": setup_sects,
        "syssize": -(-payload // 16),
        "vid_mode": 0xFFFF,
        "boot_flag": 0xAA55,
        "jump": 0x6AEB,  # jmp short +0x6a: the header ends at 0x26c, as in Linux 6.x
        "header": 0x53726448,
        "version": 0x020F,
        "loadflags": 0x01,
        "kernel_alignment": 2 * MIB,
        "relocatable_kernel": 1,
        "min_alignment": 21,
        "xloadflags": 0x7F,
        "cmdline_size": 2047,
        "hardware_subarch": 0,
        "pref_address": 16 * MIB,
        "init_size": 8 * MIB,
    }
    values.update(fields)
    setup = bytearray(((values["setup_sects"] or 4) + 1) * 512)
    for name, value in values.items():
        off, fmt = offsets[name]
        struct.pack_into("<" + fmt, setup, off, value)
    body = bytes((i * 7 + 3) & 0xFF for i in range(payload))
    return bytes(setup) + body
