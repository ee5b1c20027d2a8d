"""The values the hypervisor port (``xenkdump.hv.port``) speaks of, and its constants.

The port re-exports everything here; the adapters and ``xenkdumpctl hv info`` import
this module rather than the port, which needs typing (its Protocol): the command stays
light that way (no typing, dataclasses or pathlib at import; the CLI's start-up in
docs/architecture.md §6).  The records are NamedTuples: immutable, compared and
ordered by value.

Values and names follow Xen's public/kexec.h and docs/xen-kexec-contract.md §2.
"""

from __future__ import annotations

from collections.abc import Mapping

from xenkdump.errors import InputError
from xenkdump.safefile import Limit, read_file
from xenkdump.tuples import NamedTuple

# The page size of every address and size the port speaks of (re-exported).
from xenkdump.units import PAGE_SIZE as PAGE_SIZE  # noqa: PLC0414

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType
    from typing import Self

# public/kexec.h: image types.
KEXEC_TYPE_DEFAULT = 0
KEXEC_TYPE_CRASH = 1

# public/kexec.h: get_range ids.
KEXEC_RANGE_MA_CRASH = 0
KEXEC_RANGE_MA_XEN = 1
KEXEC_RANGE_MA_CPU = 2
KEXEC_RANGE_MA_VMCOREINFO = 6

# xen/kimage.h: load rejects nr_segments >= KEXEC_SEGMENT_MAX.
KEXEC_SEGMENT_MAX = 16
MAX_SEGMENTS = KEXEC_SEGMENT_MAX - 1

# ELF machine numbers Xen accepts as `arch` (§2.3).
EM_386 = 3
EM_X86_64 = 62

# E820 types (xenctrl.h; PMEM/PRAM as kexec-tools defines them).
E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4
E820_UNUSABLE = 5
E820_PMEM = 7
E820_PRAM = 12
# E820 type names as people (hv info, a simulated host's file) spell them.
E820_NAMES: Mapping[str, int] = {
    "ram": E820_RAM,
    "reserved": E820_RESERVED,
    "acpi": E820_ACPI,
    "nvs": E820_NVS,
    "unusable": E820_UNUSABLE,
    "pmem": E820_PMEM,
    "pram": E820_PRAM,
}
E820_TYPE_NAMES: Mapping[int, str] = {v: k for k, v in E820_NAMES.items()}


def e820_type_name(type_: int) -> str:
    """``ram``, ``acpi``... or ``type-N`` for a value this project has no name for."""
    return E820_TYPE_NAMES.get(type_, f"type-{type_}")


# dom0's own command line on a real dom0.
PROC_CMDLINE = "/proc/cmdline"


def read_dom0_cmdline(
    path: Path | str = PROC_CMDLINE, *, error: type[InputError] = InputError
) -> str:
    """dom0's own command line (``error`` naming the file when it cannot be read)."""
    raw = read_file(path, "dom0 command line", Limit.PROC, error=error)
    return raw.decode("utf-8", errors="replace").strip()


# Xen versions this project can drive: segment load exists from 4.4 (§2.2).
MIN_XEN_VERSION = (4, 4)


class AddressRange(NamedTuple):
    """A machine-address range [start, start + size)."""

    start: int
    size: int

    @property
    def end(self) -> int:
        """First address past the range."""
        return self.start + self.size

    def contains(self, start: int, size: int) -> bool:
        return self.start <= start and start + size <= self.end

    def overlaps(self, start: int, size: int) -> bool:
        return start < self.end and self.start < start + size


class E820Entry(NamedTuple):
    """One entry of Xen's machine memory map (libxenctrl's packed e820entry)."""

    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size


class Segment(NamedTuple):
    """One kexec segment (xen_kexec_segment_t).

    ``buf`` None is a NULL-buffer segment: Xen maps it but never writes it.
    ``buf_size`` is ``len(buf)``; ``dest_size`` is ``memsz``.
    """

    buf: bytes | None
    dest: int
    memsz: int

    @property
    def bufsz(self) -> int:
        return 0 if self.buf is None else len(self.buf)

    @property
    def end(self) -> int:
        return self.dest + self.memsz


class PhysInfo(NamedTuple):
    """The stable leading fields of xen_sysctl_physinfo (offsets 0-28, §2.9)."""

    threads_per_core: int
    cores_per_socket: int
    nr_cpus: int
    max_cpu_id: int
    nr_nodes: int
    max_node_id: int
    cpu_khz: int


class ClosingContext:
    """``with adapter:`` closes it on the way out (handles are never left to ``__del__``)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
