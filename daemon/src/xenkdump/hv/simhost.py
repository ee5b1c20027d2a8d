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

Problems are reported as one ConfigError naming ``file:line: key: what was
expected, what was found``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from xenkdump.errors import ConfigError
from xenkdump.hv.port import (
    E820_ACPI,
    E820_NVS,
    E820_PMEM,
    E820_PRAM,
    E820_RAM,
    E820_RESERVED,
    E820_UNUSABLE,
    PAGE_SIZE,
    AddressRange,
    E820Entry,
)
from xenkdump.safefile import Limit, read_file, shown

GIB = 1 << 30
MIB = 1 << 20
U64_MAX = (1 << 64) - 1

# E820 type names as the file spells them (values: xen-kexec-contract.md §2.8).
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


@dataclass(frozen=True)
class SimHost:
    """What a simulated host looks like to the hypervisor port."""

    xen_version: tuple[int, int]
    xen_extraversion: str
    xen_command_line: str
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
# Parsing

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_NULL = "tag:yaml.org,2002:null"


class _BadError(Exception):
    def __init__(self, node: yaml.Node, key: str, message: str) -> None:
        super().__init__(message)
        self.line = int(node.start_mark.line) + 1
        self.key = key
        self.message = message


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = {
        _STR: "string",
        _INT: "integer",
        "tag:yaml.org,2002:float": "number",
        "tag:yaml.org,2002:bool": "boolean",
    }.get(str(node.tag))
    if str(node.tag) == _NULL:
        return "null"
    return f"{kind or 'value'} {node.value!r}"


def _int(node: yaml.Node, key: str, *, minimum: int = 0) -> int:
    if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
        raise _BadError(node, key, f"expected an integer, found {_describe(node)}")
    value = yaml.safe_load(node.value)
    if not isinstance(value, int) or not minimum <= value <= U64_MAX:
        raise _BadError(node, key, f"expected an integer in [{minimum}, 2**64), found {value}")
    return value


def _str(node: yaml.Node, key: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
        raise _BadError(node, key, f"expected a string, found {_describe(node)}")
    return str(node.value)


def _version(node: yaml.Node, key: str) -> tuple[int, int]:
    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
        raise _BadError(
            node,
            key,
            f'expected a quoted string "MAJOR.MINOR" such as "4.17", found {_describe(node)}',
        )
    m = re.fullmatch(r"(\d+)\.(\d+)", str(node.value))
    if not m:
        raise _BadError(node, key, f'expected "MAJOR.MINOR" such as "4.17", found {node.value!r}')
    return (int(m.group(1)), int(m.group(2)))


def _mapping(
    node: yaml.Node, key: str, rows: Mapping[str, Callable[[yaml.Node, str], Any]]
) -> dict[str, tuple[Any, yaml.Node]]:
    """Convert a mapping by ``rows``; every key optional, unknown keys rejected."""
    if not isinstance(node, yaml.MappingNode):
        raise _BadError(node, key, f"expected a mapping, found {_describe(node)}")
    out: dict[str, tuple[Any, yaml.Node]] = {}
    for key_node, value_node in node.value:
        name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
        dotted = f"{key}.{name}" if key else name
        if name in out:
            raise _BadError(key_node, dotted, "duplicate key")
        if name not in rows:
            known = ", ".join(rows)
            raise _BadError(key_node, dotted, f"unknown key (expected one of: {known})")
        out[name] = (rows[name](value_node, dotted), value_node)
    return out


def _range(node: yaml.Node, key: str) -> AddressRange:
    rows = {"start": _int, "size": _int}
    values = _mapping(node, key, rows)
    for name in rows:
        if name not in values:
            raise _BadError(node, f"{key}.{name}", "missing (expected {start: ADDR, size: BYTES})")
    return AddressRange(values["start"][0], values["size"][0])


def _optional_range(node: yaml.Node, key: str) -> AddressRange:
    if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
        return AddressRange(0, 0)
    return _range(node, key)


def _e820_type(node: yaml.Node, key: str) -> int:
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR and node.value in E820_NAMES:
        return E820_NAMES[str(node.value)]
    if isinstance(node, yaml.ScalarNode) and node.tag == _INT:
        return _int(node, key, minimum=1)
    names = ", ".join(E820_NAMES)
    raise _BadError(node, key, f"expected one of {names} or a number, found {_describe(node)}")


def _e820_entry(node: yaml.Node, key: str) -> E820Entry:
    rows = {"addr": _int, "size": _int, "type": _e820_type}
    values = _mapping(node, key, rows)
    for name in rows:
        if name not in values:
            raise _BadError(node, f"{key}.{name}", "missing (expected {addr:, size:, type:})")
    return E820Entry(values["addr"][0], values["size"][0], values["type"][0])


def _list(item: Callable[[yaml.Node, str], Any]) -> Callable[[yaml.Node, str], list[Any]]:
    def convert(node: yaml.Node, key: str) -> list[Any]:
        if not isinstance(node, yaml.SequenceNode):
            raise _BadError(node, key, f"expected a list, found {_describe(node)}")
        return [item(n, f"{key}[{i}]") for i, n in enumerate(node.value)]

    return convert


def _sub(rows: Mapping[str, Callable[[yaml.Node, str], Any]]) -> Callable[[yaml.Node, str], Any]:
    def convert(node: yaml.Node, key: str) -> dict[str, tuple[Any, yaml.Node]]:
        return _mapping(node, key, rows)

    return convert


_XEN_ROWS: Mapping[str, Callable[[yaml.Node, str], Any]] = {
    "version": _version,
    "extraversion": _str,
    "command_line": _str,
    "range": _range,
    "vmcoreinfo": _range,
    "kexec_reloc_va": _int,
}
_CPU_ROWS: Mapping[str, Callable[[yaml.Node, str], Any]] = {
    "online": _int,
    "threads_per_core": _int,
    "cores_per_socket": _int,
    "nodes": _int,
    "khz": _int,
    "notes": _list(_range),
}
_TOP_ROWS: Mapping[str, Callable[[yaml.Node, str], Any]] = {
    "xen": _sub(_XEN_ROWS),
    "crash_range": _optional_range,
    "cpus": _sub(_CPU_ROWS),
    "memory_map": _list(_e820_entry),
}


def parse_host(text: str, source: Path | str = "<sim-host>") -> SimHost:
    """Parse a simulated-host description; ConfigError ``source:line: key: message``."""
    try:
        doc = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    host = default_host()
    if doc is None or (isinstance(doc, yaml.ScalarNode) and doc.tag == _NULL):
        return host
    try:
        top = _mapping(doc, "", _TOP_ROWS)
        host = _apply(host, top)
        _check(host, top, doc)
    except _BadError as bad:
        where = f"{source}:{bad.line}" if bad.line else str(source)
        what = f"{bad.key}: {bad.message}" if bad.key else bad.message
        raise ConfigError(f"{where}: {what}") from None
    return host


def _apply(host: SimHost, top: dict[str, tuple[Any, yaml.Node]]) -> SimHost:
    if "xen" in top:
        xen: dict[str, tuple[Any, yaml.Node]] = top["xen"][0]
        names = {
            "version": "xen_version",
            "extraversion": "xen_extraversion",
            "command_line": "xen_command_line",
            "range": "xen_range",
            "vmcoreinfo": "vmcoreinfo_range",
            "kexec_reloc_va": "kexec_reloc_va",
        }
        host = replace(host, **{names[k]: v for k, (v, _n) in xen.items()})
    if "crash_range" in top:
        host = replace(host, crash_range=top["crash_range"][0])
    if "cpus" in top:
        cpus: dict[str, tuple[Any, yaml.Node]] = top["cpus"][0]
        names = {
            "online": "nr_cpus",
            "threads_per_core": "threads_per_core",
            "cores_per_socket": "cores_per_socket",
            "nodes": "nr_nodes",
            "khz": "cpu_khz",
        }
        host = replace(host, **{names[k]: v for k, (v, _n) in cpus.items() if k in names})
        if "notes" in cpus:
            host = replace(host, cpu_notes=tuple(cpus["notes"][0]))
    if "memory_map" in top:
        host = replace(host, memory_map=tuple(top["memory_map"][0]))
    return host


def _node(top: dict[str, tuple[Any, yaml.Node]], doc: yaml.Node, *path: str) -> yaml.Node:
    """The node of ``path`` for line numbers (the document when the key was left out)."""
    node = doc
    level: dict[str, tuple[Any, yaml.Node]] | None = top
    for name in path:
        if level is None or name not in level:
            return node
        value, node = level[name]
        level = value if isinstance(value, dict) else None
    return node


def _item(node: yaml.Node, index: int) -> yaml.Node:
    """The node of list item ``index`` (the list itself when it has no such item)."""
    if isinstance(node, yaml.SequenceNode) and index < len(node.value):
        item: yaml.Node = node.value[index]
        return item
    return node


def _check(host: SimHost, top: dict[str, tuple[Any, yaml.Node]], doc: yaml.Node) -> None:
    """Cross-field rules: what a real Xen could never report is refused."""
    mm = host.memory_map
    mm_node = _node(top, doc, "memory_map")
    if not any(e.type == E820_RAM for e in mm):
        raise _BadError(mm_node, "memory_map", "expected at least one ram entry, found none")
    for i, e in enumerate(mm):
        if e.size == 0:
            raise _BadError(
                _item(mm_node, i), f"memory_map[{i}].size", "expected a size > 0, found 0"
            )
        if i and e.addr < mm[i - 1].end:
            raise _BadError(
                _item(mm_node, i),
                f"memory_map[{i}]",
                f"expected entries sorted and not overlapping, found {e.addr:#x} "
                f"before the end of the previous entry ({mm[i - 1].end:#x})",
            )
    crash = host.crash_range
    cr_node = _node(top, doc, "crash_range")
    if crash.size:
        if crash.start % PAGE_SIZE or crash.size % PAGE_SIZE:
            raise _BadError(
                cr_node,
                "crash_range",
                f"expected a page-aligned start and size (Xen reserves whole pages), "
                f"found start {crash.start:#x} size {crash.size:#x}",
            )
        if not _covered_by_ram(mm, crash):
            raise _BadError(
                cr_node,
                "crash_range",
                f"expected a range inside ram entries of memory_map, found "
                f"{crash.start:#x}-{crash.end:#x} outside RAM",
            )
        if crash.overlaps(host.xen_range.start, host.xen_range.size):
            raise _BadError(
                cr_node, "crash_range", "expected a range apart from xen.range, found an overlap"
            )
    for key, rng in (("xen.range", host.xen_range), ("xen.vmcoreinfo", host.vmcoreinfo_range)):
        if rng.size == 0:
            raise _BadError(_node(top, doc, *key.split(".")), key, "expected a size > 0, found 0")
    notes_node = _node(top, doc, "cpus", "notes")
    if not host.cpu_notes:
        raise _BadError(notes_node, "cpus.notes", "expected at least one note buffer, found none")
    for i, n in enumerate(host.cpu_notes):
        if n.size == 0:
            raise _BadError(
                _item(notes_node, i), f"cpus.notes[{i}].size", "expected a size > 0, found 0"
            )
    if not 1 <= host.nr_cpus <= host.max_cpus:
        raise _BadError(
            _node(top, doc, "cpus", "online"),
            "cpus.online",
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


def load_host(path: Path) -> SimHost:
    """Read and parse the host file at ``path``; ConfigError naming it when it is bad."""
    raw = read_file(path, "simulated host", Limit.CONFIG, error=ConfigError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{shown(path)}: expected UTF-8 YAML text, found undecodable bytes"
        ) from None
    return parse_host(text, path)
