"""SimulatedHypervisor: a faithful model of Xen's kexec_op, as Xen really behaves.

``xenkdumpctl hv info`` on a simulated host imports this module: it loads no typing,
and hashlib only for loads and checks (docs/architecture.md §6).

It implements ``xenkdump.hv.port.Hypervisor`` and passes the same contract
tests as the real adapter (tests/contract/).  What it models, with the
section of docs/xen-kexec-contract.md each rule comes from:

* ``kexec_load`` validates in Xen's order (xen-kexec-contract.md §3.1):
  nr_segments >= 16 -> EINVAL; type not 0/1 -> EINVAL; crash: entry
  outside [start, start+size] (end inclusive) -> EADDRNOTAVAIL, a segment
  *with a buffer* outside the area -> EADDRNOTAVAIL; any unaligned dest or
  dest+size -> EADDRNOTAVAIL; overlap (NULL-buf segments too) -> EINVAL;
  buf_size > dest_size -> EINVAL.  ``dest + size`` wraps at 2**64 as Xen's
  paddr_t does (§4.6).
* The crash area is a byte model (a sparse file).  A crash load takes Xen's
  control pages with Xen's bump allocator (§3.2 step 1, §3.3): from the
  crash start upwards, skipping pages that overlap any segment, each page
  zeroed as it is taken -- the code page, the L4, page-table pages
  (L3/L2/L1) as the identity map of every mapped page needs them, the
  indirection page.  Each segment with a buffer is copied and zero-filled
  to dest_size, then its pages are mapped; NULL-buf segments are mapped and
  never written.  ENOMEM arrives when no page is left, after whatever was
  already taken or copied (exactly as in Xen).  Only then is ``arch``
  checked (-> EINVAL, the bytes stay written: §4.3, §4.4); then Xen's
  kexec_reloc is copied into the code page and the code page is mapped a
  second time at Xen's kexec_reloc address (its own L3+L2+L1); then the
  slot swap.  The page tables written are real x86-64 4-level tables.
* Two slots per type and Xen's swap (kexec_swap_images): a load puts the
  image in the other slot and toggles the slot bit; an unload toggles the
  bit and empties the old slot; unloading nothing succeeds.
* ``kexec_status`` returns the slot bit: the PARITY of load and unload calls
  (§4.1; seen on Xen 4.17.7: nothing 0, load 1, load 0, load 1, unload 0,
  unload 1), not "loaded".
* get_range (§2.5): MA_CPU past max_cpus -> ERANGE, MA_CPU without a crash
  area -> EINVAL, ids 3, 4, 5, >= 7 -> EINVAL, MA_CRASH without an area ->
  0/0.  Old Xen (§2.2, §4.2): below 4.4 load/unload return success and do
  nothing; below 4.9 status answers 0.

DEFAULT-type loads are validated the same way minus the crash-area rules;
their control pages come from Xen's heap, so no crash-area byte changes.

The host is described by a YAML file (hv/simhost.py; created with the
defaults if absent).  Its state lives next to it so that a daemon and a CLI
in separate processes see one host: ``NAME.state.json`` (slots, slot bits,
call counters; replaced atomically), ``NAME.crash.img`` (the crash area's
bytes, sparse) and ``NAME.lock`` (every operation holds an exclusive flock
on it).  Editing boot-time facts in the host file resets the state, as a reboot
would; `cpus.online` and `memory_map` are hot-plug facts, re-read by the topology
queries of a running instance while the loaded images stay.

Test-only introspection, not in the port: ``read_crash_area``,
``armed_image``, ``armed_image_intact`` / ``armed_image_damage`` (does the
crash area still hold exactly the bytes the armed image was loaded with --
its segments and Xen's control pages?) and ``get_range`` (raw range ids).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from xenkdump.errors import ConfigError, HypervisorError, InputError
from xenkdump.hv.simhost import SimHost, default_host, load_host, render_host, sibling
from xenkdump.hv.values import (
    EM_386,
    EM_X86_64,
    KEXEC_RANGE_MA_CPU,
    KEXEC_RANGE_MA_CRASH,
    KEXEC_RANGE_MA_VMCOREINFO,
    KEXEC_RANGE_MA_XEN,
    KEXEC_SEGMENT_MAX,
    KEXEC_TYPE_CRASH,
    KEXEC_TYPE_DEFAULT,
    PAGE_SIZE,
    AddressRange,
    ClosingContext,
    E820Entry,
    PhysInfo,
    Segment,
)
from xenkdump.safefile import Limit, atomic_write, read_file_if_exists, shown
from xenkdump.tuples import NamedTuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

STATE_FORMAT = 1
U64_MASK = (1 << 64) - 1

# Page-table entry bits Xen's machine_kexec_add_page writes (__PAGE_HYPERVISOR:
# present, rw, accessed, dirty) and the address bits of an entry (§3.2 step 1).
PTE_FLAGS = 0x063
PTE_PRESENT = 0x001
PTE_ADDR_MASK = 0x000F_FFFF_FFFF_F000
ENTRIES = PAGE_SIZE // 8

# xen/kimage.h: the indirection list of a crash image is just IND_DONE (§5.2).
IND_DONE = 0x4

# Stand-in for Xen's kexec_reloc code (< 1 page, copied into the control code
# page by machine_kexec_load, §3.2 step 3).  Not Xen's bytes: a fixed pattern,
# so that a damaged code page is detectable.
KEXEC_RELOC_CODE = bytes(range(256)) * 3

_ZEROS = bytes(1 << 20)


class ImageSegment(NamedTuple):
    """A segment of a loaded image: where it went and a digest of what Xen wrote."""

    dest: int
    memsz: int
    bufsz: int
    sha256: str | None  # of buf + zero fill to memsz; None for a NULL-buf (map-only) segment


class ControlPage(NamedTuple):
    """A page Xen took from the crash area for the image: code, indirection, L4..L1."""

    addr: int
    role: str
    sha256: str  # of the page as it stood when the image was armed


class ArmedImage(NamedTuple):
    """The image in the current slot of one type."""

    type: int
    arch: int
    entry: int
    segments: tuple[ImageSegment, ...]
    control_pages: tuple[ControlPage, ...]


class _RefusedError(Exception):
    """Xen's answer to a hypercall: a negative errno, with the sim's explanation."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err
        self.message = message


def _page_align(addr: int) -> int:
    return (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1) & U64_MASK


def _fresh_state(host_sha256: str) -> dict[str, Any]:
    def one() -> dict[str, Any]:
        return {"pos": 0, "slots": [None, None], "loads": 0, "unloads": 0}

    return {
        "format": STATE_FORMAT,
        "host_sha256": host_sha256,
        "types": {str(KEXEC_TYPE_DEFAULT): one(), str(KEXEC_TYPE_CRASH): one()},
    }


class _CrashLoad:
    """One KEXEC_CMD_kexec_load of a crash image against the crash-area bytes (§3.2)."""

    def __init__(
        self,
        fd: int,
        crash: AddressRange,
        segments: Sequence[Segment],
        ends: Sequence[int],
        reloc_va: int,
    ) -> None:
        self.fd = fd
        self.crash = crash
        self.segments = segments
        self.ends = ends
        self.reloc_va = reloc_va
        self.next_crash_page = crash.start
        self.pages: dict[int, bytearray] = {}  # control pages taken, by maddr
        self.roles: list[tuple[int, str]] = []
        self.l4: int | None = None

    def alloc(self, role: str) -> int:
        """kimage_alloc_crash_control_page: the first page-sized hole at or above the cursor."""
        hole_start = _page_align(self.next_crash_page)
        hole_end = hole_start + PAGE_SIZE
        while hole_end <= self.crash.end:
            for seg, end in zip(self.segments, self.ends, strict=True):
                if hole_end > seg.dest and hole_start < end:
                    hole_start = _page_align(end)
                    hole_end = hole_start + PAGE_SIZE
                    break
            else:
                self.next_crash_page = hole_end
                self.pages[hole_start] = bytearray(PAGE_SIZE)  # zeroed as it is taken
                self.roles.append((hole_start, role))
                return hole_start
        raise _RefusedError(
            errno.ENOMEM,
            f"no free page left in the crash area for Xen's {role} page "
            f"({len(self.pages)} control pages taken; leave room below or between segments, "
            "docs/xen-kexec-contract.md §3.3)",
        )

    def _child(self, table: int, index: int, role: str) -> int:
        entry: int = struct.unpack_from("<Q", self.pages[table], index * 8)[0]
        if entry & PTE_PRESENT:
            return entry & PTE_ADDR_MASK
        child = self.alloc(role)
        struct.pack_into("<Q", self.pages[table], index * 8, child | PTE_FLAGS)
        return child

    def map_pages(self, vaddr: int, maddr: int, npages: int) -> None:
        """machine_kexec_add_page for ``npages`` consecutive pages, in Xen's order."""
        while npages > 0:
            if self.l4 is None:
                self.l4 = self.alloc("L4")
            l3 = self._child(self.l4, (vaddr >> 39) & 511, "L3")
            l2 = self._child(l3, (vaddr >> 30) & 511, "L2")
            l1 = self._child(l2, (vaddr >> 21) & 511, "L1")
            first = (vaddr >> 12) & 511
            n = min(npages, ENTRIES - first)
            values = [((maddr + k * PAGE_SIZE) & PTE_ADDR_MASK) | PTE_FLAGS for k in range(n)]
            self.pages[l1][first * 8 : (first + n) * 8] = struct.pack(f"<{n}Q", *values)
            vaddr += n * PAGE_SIZE
            maddr += n * PAGE_SIZE
            npages -= n

    def copy_segment(self, seg: Segment) -> None:
        """kimage_load_crash_segment: the buffer, then zeros up to dest_size."""
        assert seg.buf is not None
        off = seg.dest - self.crash.start
        os.pwrite(self.fd, seg.buf, off)
        pos, end = off + len(seg.buf), off + seg.memsz
        while pos < end:
            pos += os.pwrite(self.fd, _ZEROS[: min(len(_ZEROS), end - pos)], pos)

    def run(self, arch: int) -> None:
        try:
            self._run(arch)
        finally:
            # Control pages never overlap this image's segments, so writing them last
            # gives the bytes Xen leaves, on success and on every failure alike.
            for addr, page in self.pages.items():
                os.pwrite(self.fd, page, addr - self.crash.start)

    def _run(self, arch: int) -> None:
        # do_kimage_alloc: the code page, then the first indirection page, each mapped.
        code = self.alloc("code")
        self.map_pages(code, code, 1)
        ind = self.alloc("indirection")
        self.map_pages(ind, ind, 1)
        # kimage_load_segments: copy (buffered ones), then map every page.
        for seg, end in zip(self.segments, self.ends, strict=True):
            if seg.buf is not None:
                self.copy_segment(seg)
            first = seg.dest & ~(PAGE_SIZE - 1)
            self.map_pages(first, first, max(0, (end - first + PAGE_SIZE - 1) // PAGE_SIZE))
        struct.pack_into("<Q", self.pages[ind], 0, IND_DONE)  # kimage_terminate
        # machine_kexec_load: arch only now, after the copy (§4.4).
        if arch not in (EM_386, EM_X86_64):
            raise _RefusedError(
                errno.EINVAL,
                f"arch {arch} is not EM_X86_64 (62) or EM_386 (3); Xen checks it only "
                "after copying the segments into the crash area (§4.4)",
            )
        self.pages[code][: len(KEXEC_RELOC_CODE)] = KEXEC_RELOC_CODE
        self.map_pages(self.reloc_va, code, 1)

    def control_pages(self) -> list[dict[str, Any]]:
        import hashlib  # noqa: PLC0415 (OpenSSL: loads and checks only, not queries)

        return [
            {"addr": addr, "role": role, "sha256": hashlib.sha256(self.pages[addr]).hexdigest()}
            for addr, role in self.roles
        ]


def _segment_digest(seg: Segment) -> str | None:
    if seg.buf is None:
        return None
    import hashlib  # noqa: PLC0415 (OpenSSL: loads and checks only, not queries)

    h = hashlib.sha256(seg.buf)
    left = seg.memsz - len(seg.buf)
    while left > 0:
        n = min(left, len(_ZEROS))
        h.update(_ZEROS[:n])
        left -= n
    return h.hexdigest()


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


class SimulatedHypervisor(ClosingContext):
    """The hypervisor port on a simulated host described by a YAML file."""

    name = "sim"

    def __init__(self, host_path: str, host: SimHost, host_sha256: str) -> None:
        self.host_path = host_path
        self.host = host
        self._host_sha256 = host_sha256
        self._host_stamp = _stamp(host_path)
        self.state_path = sibling(host_path, ".state.json")
        self.crash_image_path = sibling(host_path, ".crash.img")
        self.lock_path = sibling(host_path, ".lock")

    # -- opening and state -------------------------------------------------

    @classmethod
    def open(cls, host_file: str | os.PathLike[str]) -> SimulatedHypervisor:
        """Open the host described by ``host_file``, creating it with the defaults if absent."""
        path = os.fspath(host_file)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with _flock(sibling(path, ".lock")):
            if not os.path.exists(path):
                atomic_write(path, render_host(default_host()).encode())
            sim = cls(path, *load_host(path))
            state = sim._read_state(allow_missing=True)
            if state is None or state.get("host_sha256") != sim._host_sha256:
                # A new host file, or one whose boot-time facts changed (crash range, Xen
                # version, note buffers...): the host "reboots" with empty slots and RAM.
                # Hot-plug facts (online CPUs, the memory map) change without a reboot.
                sim._reset_crash_image()
                sim._write_state(_fresh_state(sim._host_sha256))
            else:
                sim._ensure_crash_image()
        return sim

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the host lock; yield the state (written back only by ``_write_state``)."""
        with _flock(self.lock_path):
            state = self._read_state(allow_missing=True)
            if state is None:
                state = _fresh_state(self._host_sha256)
            yield state

    def _read_state(self, *, allow_missing: bool) -> dict[str, Any] | None:
        raw = read_file_if_exists(
            self.state_path, "simulator state", Limit.STATE, error=ConfigError
        )
        if raw is None:
            if allow_missing:
                return None
            raise ConfigError(f"{shown(self.state_path)}: simulator state not found")
        try:
            state = json.loads(raw)
            if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
                raise ValueError(f"expected format {STATE_FORMAT}")
            for t in (KEXEC_TYPE_DEFAULT, KEXEC_TYPE_CRASH):
                entry = state["types"][str(t)]
                if entry["pos"] not in (0, 1) or len(entry["slots"]) != 2:
                    raise ValueError(f"bad slots for type {t}")
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.state_path}: simulator state is corrupt ({exc}); "
                "delete it to reset the simulated host"
            ) from None
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.state_path, json.dumps(state, indent=1, sort_keys=True).encode())

    def _reset_crash_image(self) -> None:
        fd = os.open(self.crash_image_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 0)
            os.ftruncate(fd, self.host.crash_range.size)
        finally:
            os.close(fd)

    def _ensure_crash_image(self) -> None:
        fd = os.open(self.crash_image_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != self.host.crash_range.size:
                os.ftruncate(fd, self.host.crash_range.size)
        finally:
            os.close(fd)

    # -- the port: queries ---------------------------------------------------

    def xen_version(self) -> tuple[int, int]:
        return self.host.xen_version

    def xen_extraversion(self) -> str:
        return self.host.xen_extraversion

    def xen_command_line(self) -> str:
        return self.host.xen_command_line

    def dom0_command_line(self) -> str:
        return self.host.dom0_command_line

    def get_range(self, range_id: int, nr: int = 0) -> AddressRange:
        """KEXEC_CMD_kexec_get_range with a raw range id (§2.5)."""
        host = self.host
        if range_id == KEXEC_RANGE_MA_CRASH:
            return host.crash_range
        if range_id == KEXEC_RANGE_MA_XEN:
            return host.xen_range
        if range_id == KEXEC_RANGE_MA_VMCOREINFO:
            return host.vmcoreinfo_range
        if range_id == KEXEC_RANGE_MA_CPU:
            if not 0 <= nr < host.max_cpus:
                raise HypervisorError(
                    "xc_kexec_get_range",
                    errno.ERANGE,
                    f"CPU {nr} is not below nr_cpu_ids ({host.max_cpus})",
                )
            if host.crash_range.size == 0:
                raise HypervisorError(
                    "xc_kexec_get_range",
                    errno.EINVAL,
                    "no crash area, so Xen allocated no crash notes (crashkernel= not given)",
                )
            return host.cpu_notes[nr]
        raise HypervisorError(
            "xc_kexec_get_range", errno.EINVAL, f"range id {range_id} is not known on x86"
        )

    def crash_range(self) -> AddressRange:
        return self.get_range(KEXEC_RANGE_MA_CRASH)

    def xen_range(self) -> AddressRange:
        return self.get_range(KEXEC_RANGE_MA_XEN)

    def vmcoreinfo_range(self) -> AddressRange:
        return self.get_range(KEXEC_RANGE_MA_VMCOREINFO)

    def dom0_vmcoreinfo_range(self) -> AddressRange:
        return self.host.dom0_vmcoreinfo

    def cpu_note_range(self, cpu: int) -> AddressRange:
        return self.get_range(KEXEC_RANGE_MA_CPU, cpu)

    def max_cpus(self) -> int:
        return self._hotplug().max_cpus

    def _hotplug(self) -> SimHost:
        """The host with hot-plug facts re-read from an edited host file.

        CPU and memory hot-plug change what physinfo and the machine memory map say
        while Xen keeps its crash image; a running daemon must see that, so the
        topology queries notice an edited file.  Edits to boot-time facts are a
        reboot, seen by the next open() only.
        """
        stamp = _stamp(self.host_path)
        if stamp != self._host_stamp:
            self._host_stamp = stamp
            try:
                fresh, boot = load_host(self.host_path)
            except ConfigError:
                return self.host  # a half-written edit: keep what we had
            if boot == self._host_sha256:
                self.host = fresh
        return self.host

    def physinfo(self) -> PhysInfo:
        h = self._hotplug()
        return PhysInfo(
            threads_per_core=h.threads_per_core,
            cores_per_socket=h.cores_per_socket,
            nr_cpus=h.nr_cpus,
            max_cpu_id=h.max_cpus - 1,
            nr_nodes=h.nr_nodes,
            max_node_id=h.nr_nodes - 1,
            cpu_khz=h.cpu_khz,
        )

    def machine_memory_map(self) -> list[E820Entry]:
        return list(self._hotplug().memory_map)

    # -- the port: kexec -----------------------------------------------------

    def kexec_load(self, type: int, arch: int, entry: int, segments: Sequence[Segment]) -> None:
        segs = list(segments)
        _check_abi_fields(type, arch, entry, segs)
        with self._locked() as state:
            if self.host.xen_version < (4, 4):
                return  # cmd 4 is unknown there and answers 0 without loading (§4.2)
            try:
                record = self._load(type, arch, entry, segs)
            except _RefusedError as r:
                raise HypervisorError("xc_kexec_load", r.errno, r.message) from None
            # kexec_swap_images: into the other slot, toggle the bit, empty the old slot.
            t = state["types"][str(type)]
            pos = t["pos"]
            t["slots"][1 - pos] = record
            t["slots"][pos] = None
            t["pos"] = 1 - pos
            t["loads"] += 1
            self._write_state(state)

    def _load(self, type: int, arch: int, entry: int, segs: list[Segment]) -> dict[str, Any]:
        """Validate and load in Xen's order; return the slot record.  Raises _RefusedError."""
        if len(segs) >= KEXEC_SEGMENT_MAX:
            raise _RefusedError(
                errno.EINVAL, f"{len(segs)} segments; Xen takes at most {KEXEC_SEGMENT_MAX - 1}"
            )
        if type not in (KEXEC_TYPE_DEFAULT, KEXEC_TYPE_CRASH):
            raise _RefusedError(errno.EINVAL, _bad_type(type))
        ends = [(s.dest + s.memsz) & U64_MASK for s in segs]  # paddr_t wraps (§4.6)
        crash = self.host.crash_range
        if type == KEXEC_TYPE_CRASH:
            if not crash.start <= entry <= crash.end:  # end inclusive (§4.5)
                raise _RefusedError(
                    errno.EADDRNOTAVAIL,
                    f"entry {entry:#x} outside the crash area {crash.start:#x}-{crash.end:#x}",
                )
            for i, (s, end) in enumerate(zip(segs, ends, strict=True)):
                if s.buf is not None and (s.dest < crash.start or end > crash.end):
                    raise _RefusedError(
                        errno.EADDRNOTAVAIL,
                        f"segment {i} ({s.dest:#x}+{s.memsz:#x}) has a buffer and is not "
                        f"inside the crash area {crash.start:#x}-{crash.end:#x}",
                    )
        for i, (s, end) in enumerate(zip(segs, ends, strict=True)):
            if s.dest % PAGE_SIZE or end % PAGE_SIZE:
                raise _RefusedError(
                    errno.EADDRNOTAVAIL,
                    f"segment {i} ({s.dest:#x}+{s.memsz:#x}) is not page aligned",
                )
        for i, (s, end) in enumerate(zip(segs, ends, strict=True)):
            for j in range(i):
                if end > segs[j].dest and s.dest < ends[j]:
                    raise _RefusedError(errno.EINVAL, f"segments {j} and {i} overlap")
        for i, s in enumerate(segs):
            if s.bufsz > s.memsz:
                raise _RefusedError(
                    errno.EINVAL,
                    f"segment {i}: buf_size {s.bufsz:#x} > dest_size {s.memsz:#x}",
                )
        control: list[dict[str, Any]] = []
        if type == KEXEC_TYPE_CRASH:
            fd = os.open(self.crash_image_path, os.O_RDWR)
            try:
                load = _CrashLoad(fd, crash, segs, ends, self.host.kexec_reloc_va)
                load.run(arch)
                control = load.control_pages()
            finally:
                os.close(fd)
        elif arch not in (EM_386, EM_X86_64):
            # DEFAULT images: control pages and copies live in Xen's heap; no area bytes.
            raise _RefusedError(errno.EINVAL, f"arch {arch} is not EM_X86_64 (62) or EM_386 (3)")
        return {
            "arch": arch,
            "entry": entry,
            "segments": [
                {"dest": s.dest, "memsz": s.memsz, "bufsz": s.bufsz, "sha256": _segment_digest(s)}
                for s in segs
            ],
            "control_pages": control,
        }

    def kexec_unload(self, type: int) -> None:
        with self._locked() as state:
            if self.host.xen_version < (4, 4):
                return  # cmd 5 unknown: 0, nothing done (§4.2)
            if type not in (KEXEC_TYPE_DEFAULT, KEXEC_TYPE_CRASH):
                raise HypervisorError("xc_kexec_unload", errno.EINVAL, _bad_type(type))
            # kexec_swap_images with no new image: toggle the bit, empty the old slot.
            t = state["types"][str(type)]
            pos = t["pos"]
            t["slots"][pos] = None
            t["pos"] = 1 - pos
            t["unloads"] += 1
            self._write_state(state)

    def kexec_status(self, type: int) -> int:
        if self.host.xen_version < (4, 9):
            return 0  # cmd 6 unknown before 4.9: the hypercall answers 0 (§2.2)
        if type not in (KEXEC_TYPE_DEFAULT, KEXEC_TYPE_CRASH):
            raise HypervisorError("xc_kexec_status", errno.EINVAL, _bad_type(type))
        with self._locked() as state:
            pos: int = state["types"][str(type)]["pos"]
            return pos

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    # -- test-only introspection ----------------------------------------------

    def read_crash_area(self, addr: int, size: int) -> bytes:
        """The crash area's bytes at machine address ``addr``."""
        crash = self.host.crash_range
        if size < 0 or not crash.contains(addr, size):
            raise InputError(
                f"read_crash_area: {addr:#x}+{size:#x} is not inside the crash area "
                f"{crash.start:#x}-{crash.end:#x}"
            )
        with _flock(self.lock_path):
            fd = os.open(self.crash_image_path, os.O_RDONLY)
            try:
                return os.pread(fd, size, addr - crash.start)
            finally:
                os.close(fd)

    def armed_image(self, type: int) -> ArmedImage | None:
        """The image in the current slot of ``type`` (None: the slot is empty)."""
        with self._locked() as state:
            return _armed_from_state(state, type)

    def armed_image_damage(self, type: int) -> list[str]:
        """What of the armed image's crash-area bytes no longer is as loaded ([] = intact).

        Checks every buffered segment (buffer + zero fill) and every control page
        Xen took for it (code page, indirection page, page tables): a crash
        needs all of them.  DEFAULT images live in Xen's heap: always intact.
        """
        start = self.host.crash_range.start
        damage: list[str] = []
        with self._locked() as state:
            image = _armed_from_state(state, type)
            if image is None or type != KEXEC_TYPE_CRASH:
                return []
            fd = os.open(self.crash_image_path, os.O_RDONLY)
            try:
                for i, seg in enumerate(image.segments):
                    if seg.sha256 is None:
                        continue
                    if _digest_range(fd, seg.dest - start, seg.memsz) != seg.sha256:
                        damage.append(f"segment {i} at {seg.dest:#x}+{seg.memsz:#x}")
                for page in image.control_pages:
                    if _digest_range(fd, page.addr - start, PAGE_SIZE) != page.sha256:
                        damage.append(f"Xen's {page.role} page at {page.addr:#x}")
            finally:
                os.close(fd)
        return damage

    def armed_image_intact(self, type: int) -> bool:
        """Does the crash area still hold exactly the bytes the armed image was loaded with?"""
        return self.armed_image(type) is not None and not self.armed_image_damage(type)

    def call_counts(self, type: int) -> tuple[int, int]:
        """(loads, unloads) that succeeded since the host was created."""
        with self._locked() as state:
            t = state["types"][str(type)]
            return (int(t["loads"]), int(t["unloads"]))


def _armed_from_state(state: dict[str, Any], type: int) -> ArmedImage | None:
    t = state["types"].get(str(type))
    rec = None if t is None else t["slots"][t["pos"]]
    if rec is None:
        return None
    return ArmedImage(
        type=type,
        arch=rec["arch"],
        entry=rec["entry"],
        segments=tuple(ImageSegment(**s) for s in rec["segments"]),
        control_pages=tuple(ControlPage(**c) for c in rec["control_pages"]),
    )


def _digest_range(fd: int, offset: int, size: int) -> str:
    import hashlib  # noqa: PLC0415 (OpenSSL: loads and checks only, not queries)

    h = hashlib.sha256()
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 20), offset)
        if not chunk:
            h.update(bytes(size))  # past the end of a short file: zeros, as sparse
            break
        h.update(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return h.hexdigest()


def _bad_type(type_: int) -> str:
    return f"type {type_} is not KEXEC_TYPE_DEFAULT (0) or KEXEC_TYPE_CRASH (1)"


def _check_abi_fields(type: int, arch: int, entry: int, segs: list[Segment]) -> None:
    """Values must fit xen_kexec_load_t / xen_kexec_segment_t (§2.3), as cffi would insist."""
    fields = [("type", type, 8), ("arch", arch, 16), ("entry_maddr", entry, 64)]
    for i, s in enumerate(segs):
        fields += [(f"segment {i} dest_maddr", s.dest, 64), (f"segment {i} dest_size", s.memsz, 64)]
    for name, value, bits in fields:
        if not 0 <= value < (1 << bits):
            message = f"{name} {value} does not fit a uint{bits} (ABI field)"
            raise HypervisorError("xc_kexec_load", errno.EINVAL, message)


@contextmanager
def _flock(path: str) -> Iterator[None]:
    """An exclusive flock on ``path``: one operation at a time across processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
