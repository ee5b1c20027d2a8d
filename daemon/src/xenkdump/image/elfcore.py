"""The ELF64 core header (elfcorehdr) the crash kernel turns into /proc/vmcore.

Content as kexec-tools builds it on Xen (docs/crash-image.md §2.4):

* one PT_NOTE per physical CPU's crash-note buffer (KEXEC_RANGE_MA_CPU).
  Xen's own CRASH_INFO note lives inside CPU 0's buffer
  (docs/xen-kexec-contract.md §5.4), so it needs no header of its own;
* one PT_NOTE for Xen's VMCOREINFO_XEN buffer;
* one PT_NOTE for dom0 Linux's own VMCOREINFO note (its machine address, from
  /sys/kernel/vmcoreinfo on a PV dom0).  kexec-tools leaves it out on Xen, so
  makedumpfile cannot filter dom0's pages by type (``-d 31``) nor find dom0's
  log buffer (``--dump-dmesg``); with it, both work.  Linux's note buffer ends
  with an empty note, where /proc/vmcore stops reading (so its second page
  need not be machine-contiguous with the first);
* one PT_LOAD per RAM range of the *machine* map with the crash area cut out;
  the low range the purgatory backs up points (p_offset) at the backup copy,
  because the crash kernel reuses that low memory (crash-image.md §2.2, §2.4).

Layouts are the ELF gABI's Elf64_Ehdr and Elf64_Phdr.  Pure: values in, bytes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from xenkdump.errors import PlanError
from xenkdump.hv.port import E820_RAM, EM_X86_64, AddressRange, E820Entry
from xenkdump.image.structs import Layout

# e_ident values (gABI).
ELFMAG: Final = 0x464C457F  # "\x7fELF" read as a little-endian u32
ELFCLASS64: Final = 2
ELFDATA2LSB: Final = 1
EV_CURRENT: Final = 1
ET_CORE: Final = 4
PT_LOAD: Final = 1
PT_NOTE: Final = 4
PF_X: Final = 1
PF_W: Final = 2
PF_R: Final = 4
PN_XNUM: Final = 0xFFFF

# Linux x86_64's direct-map base: kexec-tools' p_vaddr guess for RAM (§2.4).  It
# means nothing for a Xen dump (tools use p_paddr) but keeps the headers identical.
LINUX_PAGE_OFFSET: Final = 0xFFFF888000000000
HEADER_ALIGN: Final = 1024  # elfcorehdr is padded to 1 KiB (§2.4)

ELF64_EHDR: Final = Layout(
    "Elf64_Ehdr",
    size=64,
    rows=(
        (0x00, "ei_mag", "I"),
        (0x04, "ei_class", "B"),
        (0x05, "ei_data", "B"),
        (0x06, "ei_version", "B"),
        (0x07, "ei_osabi", "B"),
        (0x08, "ei_abiversion", "B"),
        (0x10, "e_type", "H"),
        (0x12, "e_machine", "H"),
        (0x14, "e_version", "I"),
        (0x18, "e_entry", "Q"),
        (0x20, "e_phoff", "Q"),
        (0x28, "e_shoff", "Q"),
        (0x30, "e_flags", "I"),
        (0x34, "e_ehsize", "H"),
        (0x36, "e_phentsize", "H"),
        (0x38, "e_phnum", "H"),
        (0x3A, "e_shentsize", "H"),
        (0x3C, "e_shnum", "H"),
        (0x3E, "e_shstrndx", "H"),
    ),
)
assert ELF64_EHDR.size == 64

ELF64_PHDR: Final = Layout(
    "Elf64_Phdr",
    size=56,
    rows=(
        (0x00, "p_type", "I"),
        (0x04, "p_flags", "I"),
        (0x08, "p_offset", "Q"),
        (0x10, "p_vaddr", "Q"),
        (0x18, "p_paddr", "Q"),
        (0x20, "p_filesz", "Q"),
        (0x28, "p_memsz", "Q"),
        (0x30, "p_align", "Q"),
    ),
)
assert ELF64_PHDR.size == 56


def dump_ranges(machine_map: Sequence[E820Entry], crash: AddressRange) -> list[AddressRange]:
    """RAM of the machine map minus the crash range, sorted: what the dump covers (§2.4)."""
    out: list[AddressRange] = []
    for ent in sorted(machine_map):
        if ent.type != E820_RAM or ent.size <= 0:
            continue
        s, e = ent.addr, ent.end
        if crash.size > 0 and crash.start < e and s < crash.end:
            if s < crash.start:
                out.append(AddressRange(s, crash.start - s))
            if crash.end < e:
                out.append(AddressRange(crash.end, e - crash.end))
        else:
            out.append(AddressRange(s, e - s))
    return out


def check_dom0_vmcoreinfo(
    note: AddressRange, machine_map: Sequence[E820Entry], crash: AddressRange
) -> None:
    """PlanError unless dom0's VMCOREINFO ``note`` lies in RAM and outside the crash area.

    A note inside the crash area would be overwritten by the crash kernel before
    anything reads it; one outside RAM is not dom0's memory at all (a pseudo-physical
    address from a kernel that does not translate it, or a wrong value).
    """
    span = f"{note.start:#x}-{note.end:#x}"
    if crash.size and crash.overlaps(note.start, note.size):
        raise PlanError(
            f"dom0 vmcoreinfo: expected a range outside the crash area "
            f"{crash.start:#x}-{crash.end:#x}, found {span} inside it"
        )
    pos = note.start
    for ent in sorted(machine_map):
        if ent.type == E820_RAM and ent.addr <= pos < ent.end:
            pos = ent.end
            if pos >= note.end:
                return
    raise PlanError(f"dom0 vmcoreinfo: expected a range in RAM of Xen's memory map, found {span}")


def _phdr(p_type: int, flags: int, *, offset: int, vaddr: int, paddr: int, size: int) -> bytes:
    values = {
        "p_type": p_type,
        "p_flags": flags,
        "p_offset": offset,
        "p_vaddr": vaddr,
        "p_paddr": paddr,
        "p_filesz": size,
        "p_memsz": size,
        "p_align": 0,
    }
    for k in ("p_offset", "p_paddr", "p_filesz"):
        if not 0 <= values[k] < 1 << 64:
            raise PlanError(f"elfcorehdr {k}: expected a 64-bit value, found {values[k]:#x}")
    return ELF64_PHDR.pack(values)


def _loads(
    ram: Sequence[AddressRange], backup: tuple[AddressRange, int] | None, page_offset: int
) -> list[bytes]:
    """PT_LOADs for ``ram``; the backup source's part of a range reads the backup copy."""
    out: list[bytes] = []

    def load(start: int, size: int, offset: int) -> None:
        vaddr = (page_offset + start) % (1 << 64) if page_offset else 0
        out.append(
            _phdr(PT_LOAD, PF_R | PF_W | PF_X, offset=offset, vaddr=vaddr, paddr=start, size=size)
        )

    for r in sorted(ram):
        if r.size <= 0:
            continue
        if (
            backup is not None
            and backup[0].size > 0
            and r.overlaps(backup[0].start, backup[0].size)
        ):
            src, dst = backup
            if not r.contains(src.start, src.size):
                raise PlanError(
                    f"elfcorehdr backup source: expected inside one RAM range, found "
                    f"{src.start:#x}-{src.end:#x} across {r.start:#x}-{r.end:#x}"
                )
            if r.start < src.start:
                load(r.start, src.start - r.start, r.start)
            load(src.start, src.size, dst)
            if src.end < r.end:
                load(src.end, r.end - src.end, src.end)
        else:
            load(r.start, r.size, r.start)
    return out


def build_elfcorehdr(
    *,
    cpu_notes: Sequence[AddressRange],
    vmcoreinfo: AddressRange | None,
    ram: Sequence[AddressRange],
    backup: tuple[AddressRange, int] | None = None,
    page_offset: int = LINUX_PAGE_OFFSET,
    dom0_vmcoreinfo: AddressRange | None = None,
) -> bytes:
    """The elfcorehdr segment's content, zero padded to a 1 KiB multiple.

    ``cpu_notes``: KEXEC_RANGE_MA_CPU per CPU; a zero-size range (Xen could not
    allocate that CPU's buffer, xen-kexec-contract.md §2.5) gets no PT_NOTE.
    ``ram``: dump_ranges().
    ``backup``: (backup source range, backup segment address) or None.
    ``page_offset``: base of the PT_LOAD p_vaddr guess (0 writes p_vaddr 0).
    ``dom0_vmcoreinfo``: dom0's VMCOREINFO note (check_dom0_vmcoreinfo()), or None.
    """
    phdrs: list[bytes] = []
    notes = [*cpu_notes, vmcoreinfo, dom0_vmcoreinfo]
    for n in notes:
        if n is not None and n.size > 0:
            phdrs.append(_phdr(PT_NOTE, 0, offset=n.start, vaddr=0, paddr=n.start, size=n.size))
    phdrs.extend(_loads(ram, backup, page_offset))
    if len(phdrs) >= PN_XNUM:
        raise PlanError(
            f"elfcorehdr e_phnum: expected fewer than {PN_XNUM} program headers, found {len(phdrs)}"
        )
    ehdr = ELF64_EHDR.pack(
        {
            "ei_mag": ELFMAG,
            "ei_class": ELFCLASS64,
            "ei_data": ELFDATA2LSB,
            "ei_version": EV_CURRENT,
            "e_type": ET_CORE,
            "e_machine": EM_X86_64,
            "e_version": EV_CURRENT,
            "e_phoff": ELF64_EHDR.size,
            "e_ehsize": ELF64_EHDR.size,
            "e_phentsize": ELF64_PHDR.size,
            "e_phnum": len(phdrs),
        }
    )
    body = ehdr + b"".join(phdrs)
    pad = -len(body) % HEADER_ALIGN
    return body + bytes(pad)


def parse_elfcorehdr(data: bytes) -> tuple[dict[str, int], list[dict[str, int]]]:
    """(Elf64_Ehdr fields, [Elf64_Phdr fields]) of a header built here (tests, `plan`)."""
    if len(data) < ELF64_EHDR.size:
        raise PlanError(f"elfcorehdr: expected at least 64 bytes, found {len(data)}")
    eh = ELF64_EHDR.unpack(data)
    if eh["ei_mag"] != ELFMAG or eh["e_phentsize"] != ELF64_PHDR.size:
        raise PlanError(
            f"elfcorehdr: expected an ELF64 header with 56-byte phdrs, found magic "
            f"{eh['ei_mag']:#x}, e_phentsize {eh['e_phentsize']}"
        )
    end = eh["e_phoff"] + eh["e_phnum"] * ELF64_PHDR.size
    if len(data) < end:
        raise PlanError(f"elfcorehdr: expected at least {end} bytes, found {len(data)}")
    ph = [
        ELF64_PHDR.unpack(data, base=eh["e_phoff"] + i * ELF64_PHDR.size)
        for i in range(eh["e_phnum"])
    ]
    return eh, ph
