"""The segment planner: where each part of a crash image goes in Xen's crash area.

Pure: parsed inputs and host facts in, a :class:`Plan` (segments with their
bytes, the entry address) out.  No files, no hypercalls.

Two-halves reload (docs/reload-safety.md §2, and for Xen's side
docs/xen-kexec-contract.md §4.3, §3.2, §3.3).  Xen copies a new crash image
straight into the crash area, and carves its control pages out of the lowest
free pages there, *before* it swaps the new image in; a load that overlaps
the armed image destroys it even when Xen then rejects the load.  So
the crash area is split into a lower and an upper half.  A new image goes into
the half the armed image does not use, and a NULL-buffer "guard" segment (map
only, never written, §3.2 step 2) covers the other half, so that neither the
copy nor Xen's control-page allocator (which skips every page of every
segment, NULL-buffer ones included) can touch the armed image.  An image that
does not fit in half uses the ``"whole"`` area; the loader then has to unload
first (see loader.py).

Placement rules, each checked by tests/unit/test_planner.py:

* at most 15 segments (§3.1): lowmem, guard, backup, elfcorehdr,
  purgatory, boot_params, cmdline, kernel, initrd;
* every dest and size page aligned, no two segments overlap (§3.1);
* every buffered segment inside the chosen half (or area), and the entry
  inside the purgatory segment (§3.4);
* top-down inside the half, like kexec-tools (docs/crash-image.md §2.1), so
  that the bottom of the half stays free for Xen's control pages: at least the
  budget of xen-kexec-contract.md §3.3 and at least 1 MiB;
* kernel at a multiple of kernel_alignment, at or above pref_address, with
  dest_size covering init_size (crash-image.md §1.4);
* a NULL-buffer "lowmem" segment maps [0, 1 MiB) (xen-kexec-contract.md §5.3,
  crash-image.md §2.1);
* a "backup" segment receives low RAM at crash time (the purgatory copies it),
  and the elfcorehdr's PT_LOAD for that RAM points at it (§2.2, §2.4).

Segment digests (``PlannedSegment.sha256``) are over the buffer Xen copies.
Xen zero-fills the rest of each segment up to dest_size itself
(xen-kexec-contract.md §3.2 step 2), so ``(sha256, bufsz, memsz)`` pins the
bytes at dest; hashing the zero tail would add ~40 ms per plan for the
kernel's 56 MiB init_size window and tells nothing.  The purgatory verifies
the same buffer ranges (regions = every buffered segment but the purgatory
itself and the backup, crash-image.md §2.6).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property

from xenkdump.errors import PlanError
from xenkdump.hv.port import (
    E820_RAM,
    MAX_SEGMENTS,
    PAGE_SIZE,
    AddressRange,
    E820Entry,
    Segment,
)
from xenkdump.image import bootparams, cmdline, elfcore, purgatory
from xenkdump.image.bzimage import BzImage
from xenkdump.status import HALVES
from xenkdump.units import GIB, KIB, MIB, mib_up

LOWMEM_END = 1 * MIB  # the low identity map: [0, 1 MiB) (§2.1)
BACKUP_SRC_LIMIT = 0xA0000  # backup source: first RAM range ending at or below 640 KiB (§2.2)
ELFCOREHDR_MIN = 16 * KIB  # kexec-tools' minimum elfcorehdr segment (§2.1)
CONTROL_RESERVE_MIN = 1 * MIB  # never less at the bottom (xen-kexec-contract.md §3.3)


NULL_KINDS = frozenset({"lowmem", "guard"})
# Buffered segments the purgatory does not verify: itself, and the backup (filled at crash time).
UNVERIFIED_KINDS = frozenset({"purgatory", "backup"}) | NULL_KINDS


def page_up(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


def _align_down(n: int, align: int) -> int:
    return n - n % align


@dataclass(frozen=True)
class HostFacts:
    """Everything from the hypervisor that a crash image depends on."""

    crash: AddressRange
    machine_map: tuple[E820Entry, ...]
    cpu_notes: tuple[AddressRange, ...]
    vmcoreinfo: AddressRange | None
    xen_version: tuple[int, int]
    xen_cmdline: str
    # ACPI RSDP from dom0's EFI system table, 0 when unknown: the crash kernel then scans
    # the BIOS area for it (mapped: lowmem segment, low RAM in its e820).
    acpi_rsdp: int = 0
    # dom0 Linux's VMCOREINFO note (machine address), None when dom0 exports none.
    dom0_vmcoreinfo: AddressRange | None = None

    def fingerprint(self) -> str:
        """SHA-256 over the facts the image's bytes depend on (crash area, map, notes)."""
        facts = {
            "crash": [self.crash.start, self.crash.size],
            "map": [[e.addr, e.size, e.type] for e in self.machine_map],
            "cpu_notes": [[r.start, r.size] for r in self.cpu_notes],
            "vmcoreinfo": None
            if self.vmcoreinfo is None
            else [self.vmcoreinfo.start, self.vmcoreinfo.size],
            "acpi_rsdp": self.acpi_rsdp,
            "dom0_vmcoreinfo": None
            if self.dom0_vmcoreinfo is None
            else [self.dom0_vmcoreinfo.start, self.dom0_vmcoreinfo.size],
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ImageInputs:
    """The files of a crash image, parsed and hashed once (loader.read_inputs)."""

    kernel_path: str
    kernel: BzImage
    kernel_sha256: str
    initrd_path: str | None
    initrd: bytes
    initrd_sha256: str
    cmdline: str  # the user-level command line, before elfcorehdr=/acpi_rsdp= are added


@dataclass(frozen=True)
class PlannedSegment:
    """One segment of a plan.  ``data`` None is a NULL-buffer (map-only) segment."""

    kind: str
    dest: int
    memsz: int
    data: bytes | None
    digest: str = field(default="", repr=False)  # precomputed sha256 of data, if known

    @property
    def bufsz(self) -> int:
        return 0 if self.data is None else len(self.data)

    @property
    def end(self) -> int:
        return self.dest + self.memsz

    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of the buffer ("" for a NULL-buffer segment); see the module doc."""
        if self.data is None:
            return ""
        return self.digest or hashlib.sha256(self.data).hexdigest()

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "dest": self.dest,
            "memsz": self.memsz,
            "bufsz": self.bufsz,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Plan:
    """A placed crash image, ready for KEXEC_CMD_kexec_load (segments sorted by dest)."""

    entry: int
    crash_range: AddressRange
    half: str  # "lower" | "upper" | "whole"
    segments: tuple[PlannedSegment, ...]
    required_bytes: int
    cmdline: str  # the crash kernel's full command line

    def segment(self, kind: str) -> PlannedSegment:
        for seg in self.segments:
            if seg.kind == kind:
                return seg
        raise KeyError(kind)

    def kexec_segments(self) -> list[Segment]:
        return [Segment(buf=s.data, dest=s.dest, memsz=s.memsz) for s in self.segments]

    @cached_property
    def image_sha256(self) -> str:
        """One digest over the whole plan: every segment's place and digest, and the entry."""
        h = hashlib.sha256(f"entry {self.entry:#x}\n".encode())
        for s in self.segments:
            h.update(f"{s.kind} {s.dest:#x} {s.memsz:#x} {s.bufsz:#x} {s.sha256}\n".encode())
        return h.hexdigest()

    def to_json(self) -> dict[str, object]:
        """The stable JSON form (documented in cli/cmd_image.py)."""
        return {
            "entry": self.entry,
            "crash_range": {"start": self.crash_range.start, "size": self.crash_range.size},
            "half": self.half,
            "required_bytes": self.required_bytes,
            "cmdline": self.cmdline,
            "image_sha256": self.image_sha256,
            "segments": [s.to_json() for s in self.segments],
        }


# --- sizes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Need:
    kind: str
    memsz: int
    align: int
    min_addr: int = 0


def half_window(crash: AddressRange, half: str) -> tuple[AddressRange, AddressRange | None]:
    """(the window the image goes in, the guarded other half or None) for ``half``."""
    if half == "whole":
        return crash, None
    mid = crash.start + _align_down(crash.size // 2, PAGE_SIZE)
    lower = AddressRange(crash.start, mid - crash.start)
    upper = AddressRange(mid, crash.end - mid)
    if half == "lower":
        return lower, upper
    if half == "upper":
        return upper, lower
    raise PlanError(f"half: expected one of {HALVES}, got {half!r}")


def backup_source(machine_map: tuple[E820Entry, ...]) -> AddressRange | None:
    """The low RAM the purgatory saves at crash time: the first RAM range ending <= 640 KiB."""
    for e in sorted(machine_map):
        if e.type == E820_RAM and e.size and e.end <= BACKUP_SRC_LIMIT:
            return AddressRange(e.addr, e.size)
    return None


def _kernel_memsz(image: BzImage) -> int:
    hdr = image.header
    return page_up(max(image.load_memsz, hdr.init_size, len(image.kernel)))


def _check_kernel(inputs: ImageInputs) -> None:
    hdr = inputs.kernel.header
    if not hdr.relocatable_kernel:
        raise PlanError(
            f"{inputs.kernel_path}: relocatable_kernel: expected non-zero (a crash kernel "
            "must be relocatable), found 0"
        )
    align = hdr.kernel_alignment
    if align <= 0 or align & (align - 1):
        raise PlanError(
            f"{inputs.kernel_path}: kernel_alignment: expected a power of two, found {align:#x}"
        )


def _elfcorehdr_memsz(host: HostFacts) -> int:
    # The header's size does not depend on where the backup goes, only on the counts.
    ram = elfcore.dump_ranges(list(host.machine_map), host.crash)
    src = backup_source(host.machine_map)
    hdr = elfcore.build_elfcorehdr(
        cpu_notes=list(host.cpu_notes),
        vmcoreinfo=host.vmcoreinfo,
        ram=ram,
        backup=None if src is None else (src, host.crash.start),
        dom0_vmcoreinfo=host.dom0_vmcoreinfo,
    )
    return max(page_up(len(hdr)), ELFCOREHDR_MIN)


def _cmdline_memsz(inputs: ImageInputs) -> int:
    # cmdline_size excludes the NUL (crash-image.md §1.2); one page for every kernel seen so far.
    return page_up(inputs.kernel.header.cmdline_size + 1)


def _needs(inputs: ImageInputs, host: HostFacts) -> list[_Need]:
    """The buffered segments' sizes and constraints, in placement order."""
    hdr = inputs.kernel.header
    needs = [
        _Need(
            "kernel",
            _kernel_memsz(inputs.kernel),
            max(hdr.kernel_alignment, PAGE_SIZE),
            max(hdr.pref_address, LOWMEM_END),
        )
    ]
    if inputs.initrd:
        needs.append(_Need("initrd", page_up(len(inputs.initrd)), PAGE_SIZE))
    needs.append(_Need("purgatory", purgatory.purgatory_memsz(), PAGE_SIZE))
    src = backup_source(host.machine_map)
    if src is not None:
        needs.append(_Need("backup", page_up(src.size), PAGE_SIZE))
    needs.append(_Need("elfcorehdr", _elfcorehdr_memsz(host), PAGE_SIZE))
    needs.append(_Need("cmdline", _cmdline_memsz(inputs), PAGE_SIZE))
    needs.append(_Need("boot_params", page_up(bootparams.BOOT_PARAMS_SIZE), PAGE_SIZE))
    return needs


def _slots(ranges: list[tuple[int, int]], size: int) -> int:
    """How many distinct ``size``-aligned slots the [start, end) ranges touch."""
    seen: set[int] = set()
    for start, end in ranges:
        if end > start:
            seen.update(range(start // size, (end - 1) // size + 1))
    return len(seen)


def control_budget(mapped: list[tuple[int, int]], reserve: AddressRange) -> int:
    """Bytes Xen may take for control pages, for these mapped ranges (xen-kexec-contract.md §3.3).

    Code page, first indirection page, L4, and the code page's alias at Xen's
    own kexec_reloc address (its own L3, L2, L1): 6 pages; then one L3 per
    512 GiB slot, one L2 per GiB slot and one L1 per 2 MiB slot touched by a
    mapped page (the segments and the control pages themselves, which lie in
    ``reserve``); plus the spec's margin of 8 + 2 pages.
    """
    ranges = [*mapped, (reserve.start, reserve.end)]
    pages = 6 + _slots(ranges, 512 * GIB) + _slots(ranges, GIB) + _slots(ranges, 2 * MIB) + 10
    return pages * PAGE_SIZE


def _reserve_bound(needs: list[_Need], guard: int) -> int:
    """An upper bound of the control-page budget that does not depend on placement.

    Every range of n bytes touches at most ceil(n / slot) + 1 slots; the
    reserve itself (< 4 MiB) at most 3 L1 slots.  Never below 1 MiB.
    """
    sizes = [n.memsz for n in needs] + [LOWMEM_END] + ([guard] if guard else [])

    def bound(slot: int) -> int:
        return sum(-(-s // slot) + 1 for s in sizes) + 2

    pages = 6 + bound(512 * GIB) + bound(GIB) + bound(2 * MIB) + 2 + 10
    return max(CONTROL_RESERVE_MIN, page_up(pages * PAGE_SIZE))


def _required(needs: list[_Need], guard: int) -> int:
    """Bytes of window that always suffice: segments, the kernel's alignment slack, reserve."""
    slack = max(n.align for n in needs) - PAGE_SIZE
    return sum(n.memsz for n in needs) + slack + _reserve_bound(needs, guard)


def required_bytes(inputs: ImageInputs, host: HostFacts) -> int:
    """Crash-area bytes this image needs in one half (guard included in the budget)."""
    _check_kernel(inputs)
    return _required(_needs(inputs, host), host.crash.size - host.crash.size // 2)


def fits_in_half(inputs: ImageInputs, host: HostFacts) -> bool:
    """True when the image can be placed in either half of the crash area."""
    try:
        for half in ("lower", "upper"):
            _place(_needs(inputs, host), host.crash, half)
    except PlanError:
        return False
    return True


def choose_half(armed_half: str | None, inputs: ImageInputs, host: HostFacts) -> str:
    """The half the armed image does not use; "whole" when the image does not fit in half.

    With nothing armed (or an unknown image) the lower half is chosen: images
    placed top-down over the whole area by other loaders (kexec-tools) sit at
    the top, so the guard over the upper half is the best guess that keeps them.
    """
    if not fits_in_half(inputs, host):
        return "whole"
    return "lower" if armed_half in (None, "upper", "whole") else "upper"


# --- placement ----------------------------------------------------------------------------


class _Arena:
    """Free intervals of a window; each allocation takes the highest fit (top-down)."""

    def __init__(self, start: int, end: int) -> None:
        self.free: list[tuple[int, int]] = [(start, end)] if end > start else []

    def take(self, need: _Need) -> int | None:
        best: tuple[int, int] | None = None  # (dest, interval index)
        for i, (lo, hi) in enumerate(self.free):
            dest = _align_down(hi - need.memsz, need.align)
            if dest >= max(lo, need.min_addr) and (best is None or dest > best[0]):
                best = (dest, i)
        if best is None:
            return None
        dest, i = best
        lo, hi = self.free.pop(i)
        rest = [(lo, dest), (dest + need.memsz, hi)]
        self.free[i:i] = [(a, b) for a, b in rest if b > a]
        return dest


def _place(needs: list[_Need], crash: AddressRange, half: str) -> tuple[dict[str, int], int]:
    """Place every need inside ``half``: ({kind: dest}, control reserve).  PlanError if no room."""
    if crash.size == 0:
        raise PlanError("crash area: Xen reserved none (booted without crashkernel=)")
    if crash.start < LOWMEM_END:
        raise PlanError(
            f"crash area: expected to start at or above 1 MiB, found {crash.start:#x} "
            "(it would overlap the low-memory map)"
        )
    window, guard = half_window(crash, half)
    reserve = _reserve_bound(needs, 0 if guard is None else guard.size)
    arena = _Arena(window.start + reserve, window.end)
    dests: dict[str, int] = {}
    for need in needs:
        dest = arena.take(need)
        if dest is None:
            required = _required(needs, 0 if guard is None else guard.size)
            where = "the crash area" if half == "whole" else f"the {half} half of the crash area"
            detail = f"{need.kind} ({mib_up(need.memsz)}) does not fit"
            if need.min_addr > window.start + reserve:
                detail += f" at or above {need.min_addr:#x}"
            raise PlanError(
                f"crash image needs {mib_up(required)}, {where} has {mib_up(window.size)} "
                f"({detail}; Xen reserved {mib_up(crash.size)} at {crash.start:#x}); "
                "raise crashkernel= on the Xen command line"
            )
        dests[need.kind] = dest
    return dests, reserve


def plan_crash_image(inputs: ImageInputs, host: HostFacts, *, half: str) -> Plan:
    """Place and build the crash image in ``half`` of the crash area.  PlanError if no room."""
    _check_kernel(inputs)
    crash = host.crash
    if host.dom0_vmcoreinfo is not None:
        elfcore.check_dom0_vmcoreinfo(host.dom0_vmcoreinfo, host.machine_map, crash)
    needs = _needs(inputs, host)
    dests, _reserve = _place(needs, crash, half)
    window, guard = half_window(crash, half)
    image = inputs.kernel
    memsz = {n.kind: n.memsz for n in needs}
    segs: dict[str, PlannedSegment] = {}

    # Backup: zeros at load (one zero page; Xen zero-fills the rest, §3.2).
    src = backup_source(host.machine_map)
    backup_dst = dests.get("backup", 0)
    if src is not None:
        segs["backup"] = PlannedSegment("backup", backup_dst, memsz["backup"], bytes(PAGE_SIZE))

    # elfcorehdr: RAM outside the crash area; the low RAM range is read from the backup.
    ram = elfcore.dump_ranges(list(host.machine_map), crash)
    hdr_bytes = elfcore.build_elfcorehdr(
        cpu_notes=list(host.cpu_notes),
        vmcoreinfo=host.vmcoreinfo,
        ram=ram,
        backup=None if src is None else (src, backup_dst),
        dom0_vmcoreinfo=host.dom0_vmcoreinfo,
    )
    ehdr_dest = dests["elfcorehdr"]
    if len(hdr_bytes) > memsz["elfcorehdr"]:
        raise PlanError(
            f"elfcorehdr: expected at most {memsz['elfcorehdr']} bytes, built {len(hdr_bytes)}"
        )
    segs["elfcorehdr"] = PlannedSegment("elfcorehdr", ehdr_dest, memsz["elfcorehdr"], hdr_bytes)

    # The command line carries elfcorehdr= (crash-image.md §2.3): built after elfcorehdr is placed.
    line = cmdline.crash_cmdline(
        base=inputs.cmdline,
        xen_cmdline=host.xen_cmdline,
        elfcorehdr_addr=ehdr_dest,
        acpi_rsdp=host.acpi_rsdp,
        cmdline_size=image.header.cmdline_size,
        defaults=False,  # inputs.cmdline is user_cmdline()'s: defaults already applied
    )
    line_bytes = line.encode() + b"\0"
    if len(line_bytes) > memsz["cmdline"]:
        raise PlanError(
            f"command line: expected at most {image.header.cmdline_size} bytes, "
            f"found {len(line_bytes) - 1}"
        )
    segs["cmdline"] = PlannedSegment("cmdline", dests["cmdline"], memsz["cmdline"], line_bytes)

    segs["kernel"] = PlannedSegment("kernel", dests["kernel"], memsz["kernel"], image.kernel)
    initrd_addr = dests.get("initrd", 0)
    if inputs.initrd:
        segs["initrd"] = PlannedSegment(
            "initrd", initrd_addr, memsz["initrd"], inputs.initrd, inputs.initrd_sha256
        )

    # boot_params: the e820 is the crash area (and low RAM) minus what the crash kernel
    # must not overwrite: the elfcorehdr and the backup (§2.5).
    exclude = [AddressRange(ehdr_dest, memsz["elfcorehdr"])]
    if src is not None:
        exclude.append(AddressRange(backup_dst, memsz["backup"]))
    e820 = bootparams.crash_e820(list(host.machine_map), crash, exclude=exclude, low_ram=src)
    bp = bootparams.build_boot_params(
        image,
        cmdline_addr=dests["cmdline"],
        initrd_addr=initrd_addr,
        initrd_size=len(inputs.initrd),
        e820=e820,
        acpi_rsdp=host.acpi_rsdp,
    )
    segs["boot_params"] = PlannedSegment(
        "boot_params", dests["boot_params"], memsz["boot_params"], bp
    )

    # Purgatory last: it carries the digests of everything it verifies (§2.6).
    regions = [
        purgatory.VerifiedRegion(s.dest, s.bufsz, bytes.fromhex(s.sha256))
        for s in sorted(segs.values(), key=lambda s: s.dest)
        if s.kind not in UNVERIFIED_KINDS and s.bufsz
    ]
    params = purgatory.PurgatoryParams(
        kernel_entry=dests["kernel"] + image.entry_offset,
        boot_params=dests["boot_params"],
        regions=regions,
        backup_src=0 if src is None else src.start,
        backup_dst=backup_dst,
        backup_size=0 if src is None else src.size,
    )
    purg_bytes, entry = purgatory.build_purgatory(params, dests["purgatory"])
    segs["purgatory"] = PlannedSegment(
        "purgatory", dests["purgatory"], memsz["purgatory"], purg_bytes
    )

    # Map-only segments, never written (xen-kexec-contract.md §3.2): low memory, the guarded half.
    segs["lowmem"] = PlannedSegment("lowmem", 0, LOWMEM_END, None)
    if guard is not None:
        segs["guard"] = PlannedSegment("guard", guard.start, guard.size, None)

    ordered = tuple(sorted(segs.values(), key=lambda s: s.dest))
    assert len(ordered) <= MAX_SEGMENTS, f"{len(ordered)} segments"
    assert window.contains(entry, 1)
    return Plan(
        entry=entry,
        crash_range=crash,
        half=half,
        segments=ordered,
        required_bytes=_required(needs, 0 if guard is None else guard.size),
        cmdline=line,
    )
