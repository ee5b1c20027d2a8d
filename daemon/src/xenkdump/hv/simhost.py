"""The description of a simulated Xen host: a small YAML (or JSON) file.

``SimulatedHypervisor`` (hv/sim.py) answers every query of the hypervisor
port from this description: Xen's version and command line, its machine
memory map (as XENMEM_machine_memory_map returns it: the crash area still
shows as RAM, docs/xen-kexec-contract.md §2.8), the crash range (§2.5; ``null`` models
a Xen booted without ``crashkernel=``), the per-CPU crash-note buffers, the
VMCOREINFO buffer and Xen's own image.

Every key is optional; a key left out takes the value of the default host
(``default_host()``: 16 GiB of RAM, a 256 MiB crash range below 4 GiB, four
CPUs, Xen 4.17.7).  The file format, with the defaults::

    xen:
      version: "4.17"               # "MAJOR.MINOR", a string ("4.10" is not 4.1)
      extraversion: ".7"
      command_line: "console=com1 ..."
      range: {start: 0xbe800000, size: 0x800000}      # KEXEC_RANGE_MA_XEN
      vmcoreinfo: {start: 0xbe9c3000, size: 4096}     # KEXEC_RANGE_MA_VMCOREINFO
      kexec_reloc_va: 0xffff82d04036d000              # where Xen's kexec_reloc runs (§3.2 step 3)
    crash_range: {start: 0xae6ff000, size: 0x10000000}  # null: no crash area
    dom0:
      vmcoreinfo: {start: 0x1f3dc000, size: 0x1024}   # /sys/kernel/vmcoreinfo; null: none
      command_line: "root=/dev/xvda1 ro quiet"       # dom0's own /proc/cmdline
    cpus:
      online: 4                      # nr_cpus; max_cpus is the number of notes
      threads_per_core: 1
      cores_per_socket: 4
      nodes: 1
      khz: 2400000
      notes:                         # KEXEC_RANGE_MA_CPU, one per possible CPU
        - {start: 0x43f8e1a40, size: 500}
        - ...
    memory_map:                      # sorted, non-overlapping
      # type: ram, reserved, acpi, nvs, unusable, pmem, pram or a number
      - {addr: 0x0, size: 0x9fc00, type: ram}
      - ...

The keys and their types are ``schema/sim-host-v1.json``, read by the project's one
YAML-and-schema mechanism (``xenkdump.schema``): every problem is reported in one
ConfigError as ``file:line: key: expected ..., found ...``.

``load_host`` keeps what a file validated to next to it (``NAME.validated.json``: the
file's text, xenkdump's version, the value and the host's ``boot_identity``): opening
the same bytes again skips YAML, the JSON Schema and hashing, which cost more than the
rest of a command (bench/cli.py).  Any other bytes, version or an unreadable cache are
validated again.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from xenkdump import __version__
from xenkdump.errors import ConfigError, FileWriteError
from xenkdump.hv.values import (
    E820_ACPI,
    E820_NAMES,
    E820_NVS,
    E820_RAM,
    E820_RESERVED,
    E820_TYPE_NAMES,
    PAGE_SIZE,
    AddressRange,
    E820Entry,
)
from xenkdump.safefile import Limit, atomic_write, read_file, read_file_if_exists, shown
from xenkdump.tuples import NamedTuple
from xenkdump.units import MIB

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from xenkdump.schema import KeyPath

# The cache of a validated host file (see the module docstring).
VALIDATED_SUFFIX = ".validated.json"
VALIDATED_FORMAT = 2


class SimHost(NamedTuple):
    """What a simulated host looks like to the hypervisor port."""

    xen_version: tuple[int, int]
    xen_extraversion: str
    xen_command_line: str
    dom0_command_line: str
    xen_range: AddressRange
    vmcoreinfo_range: AddressRange
    kexec_reloc_va: int
    crash_range: AddressRange  # size 0: Xen reserved no crash area (§2.5)
    nr_cpus: int
    threads_per_core: int
    cores_per_socket: int
    nr_nodes: int
    cpu_khz: int
    cpu_notes: tuple[AddressRange, ...]
    memory_map: tuple[E820Entry, ...]
    dom0_vmcoreinfo: AddressRange  # size 0: dom0 exports none

    @property
    def max_cpus(self) -> int:
        """nr_cpu_ids = max_cpu_id + 1: one note buffer per possible CPU (§2.5)."""
        return len(self.cpu_notes)


def default_host() -> SimHost:
    """A 16 GiB, 4-CPU host running Xen 4.17.7 with ``crashkernel=256M``."""
    memory_map = (
        E820Entry(0x0, 0x9FC00, E820_RAM),
        E820Entry(0x9FC00, 0x400, E820_RESERVED),
        E820Entry(0xF0000, 0x10000, E820_RESERVED),
        E820Entry(0x100000, 0xBF5A0000, E820_RAM),  # 1 MiB .. ~3 GiB
        E820Entry(0xBF6A0000, 0x30000, E820_ACPI),
        E820Entry(0xBF6D0000, 0x30000, E820_NVS),
        E820Entry(0xBF700000, 0x900000, E820_RESERVED),
        E820Entry(0xE0000000, 0x10000000, E820_RESERVED),  # PCI MMCONFIG
        E820Entry(0xFEC00000, 0x1000, E820_RESERVED),  # IO-APIC
        E820Entry(0xFEE00000, 0x1000, E820_RESERVED),  # local APIC
        E820Entry(0xFF000000, 0x1000000, E820_RESERVED),  # firmware flash
        E820Entry(0x100000000, 0x340000000, E820_RAM),  # 4 GiB .. 17 GiB (remapped hole)
    )
    return SimHost(
        xen_version=(4, 17),
        xen_extraversion=".7",
        xen_command_line=("console=com1 com1=115200,8n1 dom0_mem=4G,max:4G crashkernel=256M"),
        dom0_command_line="root=/dev/xvda1 ro quiet",
        # Xen relocates itself high below 4 GiB; its VMCOREINFO buffer is static (in .bss).
        xen_range=AddressRange(0xBE800000, 0x800000),
        vmcoreinfo_range=AddressRange(0xBE9C3000, 4096),
        kexec_reloc_va=0xFFFF82D04036D000,
        # crashkernel=256M: the highest page-aligned hole below Xen; page-aligned only,
        # not 2 MiB aligned (xen-kexec-contract.md §7).
        crash_range=AddressRange(0xAE6FF000, 256 * MIB),
        nr_cpus=4,
        threads_per_core=1,
        cores_per_socket=4,
        nr_nodes=1,
        cpu_khz=2_400_000,
        # Note buffers are xmalloc'd in the Xen heap: CPU 0 500 bytes, others 404 (§5.4).
        cpu_notes=(
            AddressRange(0x43F8E1A40, 500),
            AddressRange(0x43F8E2C80, 404),
            AddressRange(0x43F8E3E00, 404),
            AddressRange(0x43F8E5040, 404),
        ),
        memory_map=memory_map,
        # dom0's note: two pages from alloc_pages_exact(), 4096 + 36 bytes (Linux's
        # VMCOREINFO_NOTE_SIZE), somewhere in dom0's RAM below the crash area.
        dom0_vmcoreinfo=AddressRange(0x1F3DC000, 0x1024),
    )


# ---------------------------------------------------------------------------
# Rendering (the default file and config/examples/sim-host.yaml)


def render_host(host: SimHost) -> str:
    """The YAML text of ``host``, with comments; ``parse_host`` reads it back equal."""

    def rng(r: AddressRange) -> str:
        return f"{{start: {r.start:#x}, size: {r.size:#x}}}"

    lines = [
        "# A simulated Xen host for xenkdump (xenkdumpctl --hypervisor sim:FILE).",
        "# Every key is optional: a key left out takes the default host's value.",
        "# The simulator keeps this host's state (loaded images, the crash area's",
        "# bytes) next to this file: <name>.state.json, <name>.crash.img, <name>.lock.",
        "# Editing this file resets that state (the host 'reboots').",
        "xen:",
        f'  version: "{host.xen_version[0]}.{host.xen_version[1]}"',
        f"  extraversion: {_yaml_str(host.xen_extraversion)}",
        f"  command_line: {_yaml_str(host.xen_command_line)}",
        f"  range: {rng(host.xen_range)}  # KEXEC_RANGE_MA_XEN",
        f"  vmcoreinfo: {rng(host.vmcoreinfo_range)}  # KEXEC_RANGE_MA_VMCOREINFO",
        f"  kexec_reloc_va: {host.kexec_reloc_va:#x}  # Xen's kexec_reloc (code-page alias)",
        "# KEXEC_RANGE_MA_CRASH; null models a Xen booted without crashkernel=.",
    ]
    if host.crash_range.size:
        lines.append(f"crash_range: {rng(host.crash_range)}")
    else:
        lines.append("crash_range: null")
    lines.append("# dom0's own VMCOREINFO note (/sys/kernel/vmcoreinfo); null: dom0 has none.")
    note = rng(host.dom0_vmcoreinfo) if host.dom0_vmcoreinfo.size else "null"
    lines += [
        "dom0:",
        f"  vmcoreinfo: {note}",
        f"  command_line: {_yaml_str(host.dom0_command_line)}  # its /proc/cmdline",
    ]
    lines += [
        "cpus:",
        f"  online: {host.nr_cpus}",
        f"  threads_per_core: {host.threads_per_core}",
        f"  cores_per_socket: {host.cores_per_socket}",
        f"  nodes: {host.nr_nodes}",
        f"  khz: {host.cpu_khz}",
        "  # One crash-note buffer per possible CPU (max_cpus = their number).",
        "  notes:",
    ]
    lines += [f"    - {{start: {n.start:#x}, size: {n.size}}}" for n in host.cpu_notes]
    lines += [
        "# Xen's machine memory map (XENMEM_machine_memory_map): the crash area is RAM here.",
        "memory_map:",
    ]
    lines += [
        f"  - {{addr: {e.addr:#x}, size: {e.size:#x}, type: {_type_text(e.type)}}}"
        for e in host.memory_map
    ]
    return "\n".join(lines) + "\n"


def _type_text(type_: int) -> str:
    return E820_TYPE_NAMES.get(type_, str(type_))


def _yaml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------
# Parsing: the shape is schema/sim-host-v1.json; what a real Xen could never report
# (an unsorted memory map, a crash area outside RAM) is ``_check``'s.


def parse_host(text: str | bytes, source: Path | str = "<sim-host>") -> SimHost:
    """Parse a simulated-host description; ConfigProblems ``source:line: key: message``."""
    raw = text.encode() if isinstance(text, str) else text
    return _apply(default_host(), _validated(raw, source))


def _validated(raw: bytes, source: Path | str) -> dict[str, Any]:
    """The file's value, checked by the schema and ``_check``."""
    from xenkdump.schema import SIM_HOST_SCHEMA, load  # noqa: PLC0415 (YAML, JSON Schema)

    value: dict[str, Any] = load([(str(source), raw)], SIM_HOST_SCHEMA, _check).value  # type: ignore[assignment]
    return value


def _range(value: dict[str, int]) -> AddressRange:
    return AddressRange(value["start"], value["size"])


def _apply(host: SimHost, top: dict[str, Any]) -> SimHost:
    """``host`` with the keys of a schema-valid host description applied."""
    fields: dict[str, Any] = {}
    xen = top.get("xen", {})
    if "version" in xen:
        major, minor = xen["version"].split(".")
        fields["xen_version"] = (int(major), int(minor))
    for key, name in (("extraversion", "xen_extraversion"), ("command_line", "xen_command_line")):
        if key in xen:
            fields[name] = xen[key]
    for key, name in (("range", "xen_range"), ("vmcoreinfo", "vmcoreinfo_range")):
        if key in xen:
            fields[name] = _range(xen[key])
    if "kexec_reloc_va" in xen:
        fields["kexec_reloc_va"] = xen["kexec_reloc_va"]
    if "command_line" in top.get("dom0", {}):
        fields["dom0_command_line"] = top["dom0"]["command_line"]
    if "crash_range" in top:
        crash = top["crash_range"]
        fields["crash_range"] = AddressRange(0, 0) if crash is None else _range(crash)
    dom0 = top.get("dom0", {})
    if "vmcoreinfo" in dom0:
        note = dom0["vmcoreinfo"]
        fields["dom0_vmcoreinfo"] = AddressRange(0, 0) if note is None else _range(note)
    cpus = top.get("cpus", {})
    for key, name in (
        ("online", "nr_cpus"),
        ("threads_per_core", "threads_per_core"),
        ("cores_per_socket", "cores_per_socket"),
        ("nodes", "nr_nodes"),
        ("khz", "cpu_khz"),
    ):
        if key in cpus:
            fields[name] = cpus[key]
    if "notes" in cpus:
        fields["cpu_notes"] = tuple(_range(n) for n in cpus["notes"])
    if "memory_map" in top:
        fields["memory_map"] = tuple(
            E820Entry(
                e["addr"],
                e["size"],
                E820_NAMES[e["type"]] if isinstance(e["type"], str) else e["type"],
            )
            for e in top["memory_map"]
        )
    return host._replace(**fields)


def _check(top: dict[str, Any]) -> Iterator[tuple[KeyPath, str]]:
    """Cross-field rules: what a real Xen could never report is refused."""
    host = _apply(default_host(), top)
    mm = host.memory_map
    if not any(e.type == E820_RAM for e in mm):
        yield ("memory_map",), "expected at least one ram entry, found none"
    for i, e in enumerate(mm):
        if i and e.addr < mm[i - 1].end:
            yield (
                ("memory_map", i),
                f"expected entries sorted and not overlapping, found {e.addr:#x} "
                f"before the end of the previous entry ({mm[i - 1].end:#x})",
            )
    crash = host.crash_range
    if crash.size:
        if crash.start % PAGE_SIZE or crash.size % PAGE_SIZE:
            yield (
                ("crash_range",),
                f"expected a page-aligned start and size (Xen reserves whole pages), "
                f"found start {crash.start:#x} size {crash.size:#x}",
            )
        if not _covered_by_ram(mm, crash):
            yield (
                ("crash_range",),
                f"expected a range inside ram entries of memory_map, found "
                f"{crash.start:#x}-{crash.end:#x} outside RAM",
            )
        if crash.overlaps(host.xen_range.start, host.xen_range.size):
            yield ("crash_range",), "expected a range apart from xen.range, found an overlap"
    if not 1 <= host.nr_cpus <= host.max_cpus:
        yield (
            ("cpus", "online"),
            f"expected 1..{host.max_cpus} (the number of notes), found {host.nr_cpus}",
        )


def _covered_by_ram(mm: tuple[E820Entry, ...], rng: AddressRange) -> bool:
    pos = rng.start
    for e in mm:
        if e.type == E820_RAM and e.addr <= pos < e.end:
            pos = e.end
            if pos >= rng.end:
                return True
    return False


def boot_identity(host: SimHost) -> str:
    """Digest of the facts fixed at boot: a change is a reboot of the simulated host.

    CPU and memory hot-plug (``cpus.online``, ``memory_map``) are not part of it.
    """
    import hashlib  # noqa: PLC0415 (OpenSSL: only when a host file is validated)

    fixed = host._replace(nr_cpus=0, memory_map=())
    return hashlib.sha256(repr(fixed).encode()).hexdigest()


def sibling(path: str, suffix: str) -> str:
    """The file next to the host file ``path`` named with ``suffix`` for its last suffix
    (``host.yaml``: ``host.state.json``)."""
    return os.path.splitext(path)[0] + suffix


def load_host(host_file: str | os.PathLike[str]) -> tuple[SimHost, str]:
    """The host the file describes, and its ``boot_identity``; ConfigError naming the
    file when it is bad."""
    path = os.fspath(host_file)
    raw = read_file(path, "simulated host", Limit.CONFIG, error=ConfigError)
    key = {
        "format": VALIDATED_FORMAT,
        # The bytes as JSON text; undecodable ones are kept (and refused by the schema).
        "source": raw.decode("utf-8", errors="surrogateescape"),
        "xenkdump": __version__,
    }
    cache = sibling(path, VALIDATED_SUFFIX)
    stored = _cached(cache, key)
    if stored is not None:
        try:
            return _apply(default_host(), stored["value"]), stored["boot"]
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # not what load_host wrote: validate the file again
    value = _validated(raw, shown(path))
    host = _apply(default_host(), value)
    boot = boot_identity(host)
    with contextlib.suppress(FileWriteError):  # a read-only directory: validate each time
        atomic_write(cache, json.dumps({**key, "value": value, "boot": boot}).encode())
    return host, boot


def _cached(cache: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """What was stored for ``key`` (the same bytes, the same xenkdump), else None."""
    try:
        raw = read_file_if_exists(cache, "validated host", Limit.CONFIG, error=ConfigError)
        stored = json.loads(raw) if raw is not None else None
    except (ConfigError, ValueError):
        return None
    if not isinstance(stored, dict) or any(stored.get(k) != v for k, v in key.items()):
        return None
    if not (isinstance(stored.get("value"), dict) and isinstance(stored.get("boot"), str)):
        return None
    return stored
