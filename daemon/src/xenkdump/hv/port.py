"""The hypervisor port: the one narrow interface through which xenkdump talks to Xen.

Two adapters implement it and pass the same contract tests
(tests/contract/): ``xenkdump.hv.xen.XenHypervisor`` (libxenctrl through
cffi) and ``xenkdump.hv.sim.SimulatedHypervisor`` (a faithful model of Xen's
kexec_op).  Everything else in xenkdump depends only on this module, which
re-exports the values and constants of ``xenkdump.hv.values`` (the adapters import
those from there: ``xenkdumpctl hv info`` loads no typing, docs/architecture.md §6).

Values and names follow Xen's public/kexec.h and docs/xen-kexec-contract.md §2.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from xenkdump.hv.values import (
    E820_ACPI,
    E820_NAMES,
    E820_NVS,
    E820_PMEM,
    E820_PRAM,
    E820_RAM,
    E820_RESERVED,
    E820_TYPE_NAMES,
    E820_UNUSABLE,
    EM_386,
    EM_X86_64,
    KEXEC_RANGE_MA_CPU,
    KEXEC_RANGE_MA_CRASH,
    KEXEC_RANGE_MA_VMCOREINFO,
    KEXEC_RANGE_MA_XEN,
    KEXEC_SEGMENT_MAX,
    KEXEC_TYPE_CRASH,
    KEXEC_TYPE_DEFAULT,
    MAX_SEGMENTS,
    MIN_XEN_VERSION,
    PAGE_SIZE,
    PROC_CMDLINE,
    AddressRange,
    ClosingContext,
    E820Entry,
    PhysInfo,
    Segment,
    e820_type_name,
    read_dom0_cmdline,
)

__all__ = [
    "E820_ACPI",
    "E820_NAMES",
    "E820_NVS",
    "E820_PMEM",
    "E820_PRAM",
    "E820_RAM",
    "E820_RESERVED",
    "E820_TYPE_NAMES",
    "E820_UNUSABLE",
    "EM_386",
    "EM_X86_64",
    "KEXEC_RANGE_MA_CPU",
    "KEXEC_RANGE_MA_CRASH",
    "KEXEC_RANGE_MA_VMCOREINFO",
    "KEXEC_RANGE_MA_XEN",
    "KEXEC_SEGMENT_MAX",
    "KEXEC_TYPE_CRASH",
    "KEXEC_TYPE_DEFAULT",
    "MAX_SEGMENTS",
    "MIN_XEN_VERSION",
    "PAGE_SIZE",
    "PROC_CMDLINE",
    "AddressRange",
    "ClosingContext",
    "E820Entry",
    "Hypervisor",
    "PhysInfo",
    "Segment",
    "e820_type_name",
    "read_dom0_cmdline",
]


@runtime_checkable
class Hypervisor(Protocol):
    """What xenkdump needs from Xen.  Every failure raises HypervisorError."""

    name: str

    def xen_version(self) -> tuple[int, int]:
        """(major, minor) from XENVER_version."""
        ...

    def xen_extraversion(self) -> str:
        """XENVER_extraversion, e.g. ".7" (for display)."""
        ...

    def xen_command_line(self) -> str:
        """Xen's own boot command line (XENVER_commandline); "" if unavailable."""
        ...

    def dom0_command_line(self) -> str:
        """dom0's own boot command line (/proc/cmdline on a real dom0); "" if unknown.

        Not a hypervisor fact, but part of the host: a simulated host models it too.
        """
        ...

    def crash_range(self) -> AddressRange:
        """KEXEC_RANGE_MA_CRASH.  size == 0 when Xen reserved no crash area."""
        ...

    def xen_range(self) -> AddressRange:
        """KEXEC_RANGE_MA_XEN: Xen's own image."""
        ...

    def vmcoreinfo_range(self) -> AddressRange:
        """KEXEC_RANGE_MA_VMCOREINFO: Xen's VMCOREINFO_XEN note buffer."""
        ...

    def dom0_vmcoreinfo_range(self) -> AddressRange:
        """dom0 kernel's own VMCOREINFO note, as a *machine* range; size 0 when it has none.

        On a PV dom0 Linux's /sys/kernel/vmcoreinfo reports the note's machine
        address (paddr_vmcoreinfo_note() translates it), which is what the crash
        kernel, running on the bare machine, needs in the ELF core header.
        """
        ...

    def cpu_note_range(self, cpu: int) -> AddressRange:
        """KEXEC_RANGE_MA_CPU for physical CPU ``cpu`` (ERANGE past max_cpus)."""
        ...

    def max_cpus(self) -> int:
        """xc_get_max_cpus(): max_cpu_id + 1."""
        ...

    def physinfo(self) -> PhysInfo: ...

    def machine_memory_map(self) -> list[E820Entry]:
        """Xen's machine e820 (the crash area still shows as RAM there)."""
        ...

    def kexec_load(self, type: int, arch: int, entry: int, segments: Sequence[Segment]) -> None:
        """KEXEC_CMD_kexec_load.  Segment data is passed in hypercall-safe memory."""
        ...

    def kexec_unload(self, type: int) -> None: ...

    def kexec_status(self, type: int) -> int:
        """Xen's raw status answer: the PARITY of load and unload calls (§4.1)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
