"""Deterministic test inputs for the planner and loader tests: a synthetic bzImage, a cpio
initramfs, and host facts shaped like the simulator's default host."""

from __future__ import annotations

import hashlib
import struct

from xenkdump.hv.port import E820_ACPI, E820_RAM, E820_RESERVED, AddressRange, E820Entry
from xenkdump.image.bzimage import parse_bzimage
from xenkdump.image.planner import HostFacts, ImageInputs

MIB = 1 << 20
GIB = 1 << 30


def synth_bzimage(
    *,
    payload: int = 64 * 1024,
    kernel_alignment: int = 2 * MIB,
    pref_address: int = 16 * MIB,
    init_size: int = 8 * MIB,
    cmdline_size: int = 2047,
    relocatable: int = 1,
    setup_sects: int = 4,
) -> bytes:
    """A minimal but well-formed bzImage (boot protocol 2.15) with a deterministic payload."""
    setup = bytearray((setup_sects + 1) * 512)
    struct.pack_into("<B", setup, 0x1F1, setup_sects)
    struct.pack_into("<I", setup, 0x1F4, payload // 16)  # syssize, 16-byte units
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    struct.pack_into("<B", setup, 0x200, 0xEB)  # jmp
    struct.pack_into("<B", setup, 0x201, 0x6A)  # header length - 0x202 ... (like Linux)
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    struct.pack_into("<B", setup, 0x211, 0x01)  # LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    struct.pack_into("<B", setup, 0x234, relocatable)
    struct.pack_into("<B", setup, 0x235, 21)  # min_alignment
    struct.pack_into("<H", setup, 0x236, 0x7F)  # xloadflags: KERNEL_64, ABOVE_4G, EFI ...
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + prng_bytes(b"kernel", payload)


def prng_bytes(seed: bytes, n: int) -> bytes:
    """n deterministic pseudo-random bytes (SHA-256 in counter mode)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(seed + i.to_bytes(8, "little")).digest()
        i += 1
    return bytes(out[:n])


def cpio_newc(files: dict[str, bytes]) -> bytes:
    """A deterministic cpio "newc" archive (what the kernel unpacks as an initramfs)."""
    out = bytearray()

    def entry(ino: int, name: str, mode: int, data: bytes) -> None:
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out.extend(b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + raw)
        out.extend(bytes(-len(out) % 4))
        out.extend(data)
        out.extend(bytes(-len(out) % 4))

    for ino, (name, data) in enumerate(sorted(files.items()), start=1):
        entry(ino, name, 0o100755 if name == "init" else 0o100644, data)
    entry(0, "TRAILER!!!", 0, b"")
    out.extend(bytes(-len(out) % 512))
    return bytes(out)


def make_initrd(size: int = 1 * MIB) -> bytes:
    return cpio_newc(
        {
            "init": b"#!/bin/sh\necho xenkdump test initramfs\npoweroff -f\n",
            "blob": prng_bytes(b"initrd", size),
        }
    )


def make_inputs(
    kernel: bytes, initrd: bytes, cmdline: str = "console=ttyS0 nr_cpus=1"
) -> ImageInputs:
    return ImageInputs(
        kernel_path="/test/vmlinuz",
        kernel=parse_bzimage(kernel, "/test/vmlinuz"),
        kernel_sha256=hashlib.sha256(kernel).hexdigest(),
        initrd_path="/test/initrd.img" if initrd else None,
        initrd=initrd,
        initrd_sha256=hashlib.sha256(initrd).hexdigest() if initrd else "",
        cmdline=cmdline,
    )


def machine_map(ram_top: int = 16 * GIB) -> tuple[E820Entry, ...]:
    """A PC-like machine map: low RAM, BIOS hole, RAM to 3 GiB, PCI hole, RAM above 4 GiB."""
    return (
        E820Entry(0, 0x9FC00, E820_RAM),
        E820Entry(0x9FC00, 0x400, E820_RESERVED),
        E820Entry(0xF0000, 0x10000, E820_RESERVED),
        E820Entry(0x100000, 3 * GIB - 0x100000 - 0x100000, E820_RAM),
        E820Entry(3 * GIB - 0x100000, 0x100000, E820_ACPI),
        E820Entry(4 * GIB, ram_top - 4 * GIB, E820_RAM),
    )


def host_facts(crash: AddressRange, *, cpus: int = 4) -> HostFacts:
    return HostFacts(
        crash=crash,
        machine_map=machine_map(),
        cpu_notes=tuple(
            AddressRange(0x7F000000 + i * 0x1000, 500 if i == 0 else 404) for i in range(cpus)
        ),
        vmcoreinfo=AddressRange(0x7F100000, 4096),
        xen_version=(4, 17),
        xen_cmdline="console=com1 com1=115200,8n1 crashkernel=256M",
    )
