"""xenkdumpctl hv info [--json]: what the hypervisor reports about kexec.

Shows Xen's version and command line, the crash range, Xen's own image, the
VMCOREINFO buffer, the CPUs with their crash-note buffers, the machine memory
map, and Xen's raw ``kexec_status`` answer -- which is the PARITY of the load
and unload calls made so far, not whether an image is loaded
(docs/xen-kexec-contract.md §4.1; use ``xenkdumpctl status`` for that).

The JSON form (``--json``) is stable; keys are only ever added.  Integers are
plain JSON numbers (addresses too)::

    {"hypervisor": "xen" | "sim",            # the adapter that answered
     "xen_version": "4.17",                  # "MAJOR.MINOR"
     "xen_extraversion": ".7",
     "xen_command_line": str,                # "" if Xen does not say
     "crash_range": {"start": int, "size": int},        # size 0: no crash area
     "xen_range": {"start": int, "size": int},
     "vmcoreinfo_range": {"start": int, "size": int},
     "cpus": {"max_cpus": int,               # possible CPUs (nr_cpu_ids)
              "nr_cpus": int,                # online CPUs
              "notes": [{"cpu": int, "start": int, "size": int}]},  # [] without a crash area
     "memory_map": [{"addr": int, "size": int, "type": int,
                     "type_name": "ram" | "reserved" | "acpi" | "nvs" | "unusable"
                                  | "pmem" | "pram" | "type-N"}],
     "kexec_status_parity": {"crash": 0 | 1 | null,     # null: Xen has no status call
                             "default": 0 | 1 | null}}

Exit codes: 0 success, 1 a hypervisor call failed, 2 bad input (an unknown
``--hypervisor`` value, a malformed simulated-host file, no Xen found).
"""

from __future__ import annotations

import argparse
import errno

from xenkdump.errors import HypervisorError
from xenkdump.units import MIB, size_text

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from xenkdump.hv.port import AddressRange, Hypervisor

STATUS_NOTE = "parity of load/unload calls, not whether an image is loaded"


def configure(command: str, hv: argparse.ArgumentParser) -> None:
    sub = hv.add_subparsers(dest="hv_command", metavar="SUBCOMMAND", parser_class=type(hv))
    sub.required = True
    info = sub.add_parser(
        "info",
        help="crash range, memory map, CPUs, Xen version and Xen's raw kexec status",
        description=(
            "Show what Xen reports: version, command line, crash range, CPUs and their "
            "crash notes, the machine memory map, and kexec_status (the parity of "
            "load/unload calls, not whether an image is loaded)."
        ),
    )
    info.add_argument("--json", action="store_true", help="print stable JSON (see the docs)")
    info.set_defaults(handler=cmd_info)


def _range(r: AddressRange) -> dict[str, int]:
    return {"start": r.start, "size": r.size}


def _status(hv: Hypervisor, type_: int) -> int | None:
    try:
        return hv.kexec_status(type_)
    except HypervisorError as exc:
        # No status call on this Xen or libxenctrl (before 4.9, §2.2): say so, don't fail.
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP, 0):
            return None
        raise


def collect(hv: Hypervisor) -> dict[str, Any]:
    """Everything ``hv info`` shows, as the documented JSON structure."""
    from xenkdump.hv.values import KEXEC_TYPE_CRASH, KEXEC_TYPE_DEFAULT, e820_type_name

    major, minor = hv.xen_version()
    crash = hv.crash_range()
    max_cpus = hv.max_cpus()
    notes: list[dict[str, int]] = []
    if crash.size:
        # Without a crash area Xen has no note buffers and answers EINVAL (§2.5).
        for cpu in range(max_cpus):
            note = hv.cpu_note_range(cpu)
            notes.append({"cpu": cpu, "start": note.start, "size": note.size})
    return {
        "hypervisor": hv.name,
        "xen_version": f"{major}.{minor}",
        "xen_extraversion": hv.xen_extraversion(),
        "xen_command_line": hv.xen_command_line(),
        "crash_range": _range(crash),
        "xen_range": _range(hv.xen_range()),
        "vmcoreinfo_range": _range(hv.vmcoreinfo_range()),
        "cpus": {"max_cpus": max_cpus, "nr_cpus": hv.physinfo().nr_cpus, "notes": notes},
        "memory_map": [
            {"addr": e.addr, "size": e.size, "type": e.type, "type_name": e820_type_name(e.type)}
            for e in hv.machine_memory_map()
        ],
        "kexec_status_parity": {
            "crash": _status(hv, KEXEC_TYPE_CRASH),
            "default": _status(hv, KEXEC_TYPE_DEFAULT),
        },
    }


def render(info: dict[str, Any]) -> str:
    """The human-readable table."""
    out: list[str] = []

    def row(label: str, value: str) -> None:
        out.append(f"{label:<26}{value}")

    def span(r: dict[str, int]) -> str:
        return f"{r['start']:#018x}-{r['start'] + r['size'] - 1:#018x}  {size_text(r['size'])}"

    row("Hypervisor adapter", info["hypervisor"])
    row("Xen version", info["xen_version"] + info["xen_extraversion"])
    row("Xen command line", info["xen_command_line"] or "(not available)")
    crash = info["crash_range"]
    if crash["size"]:
        end = crash["start"] + crash["size"]
        row(
            "Crash range",
            f"start {crash['start']:#x}  end {end:#x} (exclusive)  "
            f"size {crash['size'] / MIB:g} MiB",
        )
    else:
        row("Crash range", "none (Xen was booted without crashkernel=)")
    row("Xen image", span(info["xen_range"]))
    row("VMCOREINFO", span(info["vmcoreinfo_range"]))
    for name in ("crash", "default"):
        value = info["kexec_status_parity"][name]
        shown = "n/a (no status call on this Xen)" if value is None else str(value)
        row(f"kexec_status ({name})", f"{shown} -- {STATUS_NOTE}")
    cpus = info["cpus"]
    out.append("")
    out.append(f"CPUs: {cpus['nr_cpus']} online, {cpus['max_cpus']} possible")
    if cpus["notes"]:
        out.append(f"  {'CPU':<5}{'NOTE ADDRESS':<20}{'SIZE':>6}")
        out += [f"  {n['cpu']:<5}{n['start']:#018x}  {n['size']:>6}" for n in cpus["notes"]]
    else:
        out.append("  no crash-note buffers (no crash area)")
    out.append("")
    out.append("Machine memory map (Xen's e820; the crash area still shows as RAM):")
    out.append(f"  {'START':<20}{'END (exclusive)':<20}{'SIZE':>11}  TYPE")
    for e in info["memory_map"]:
        out.append(
            f"  {e['addr']:#018x}  {e['addr'] + e['size']:#018x}  {size_text(e['size']):>11}  "
            f"{e['type_name']}"
        )
    return "\n".join(out)


def cmd_info(args: argparse.Namespace) -> int:
    from xenkdump.hv.select import open_hypervisor

    with open_hypervisor(args.hypervisor) as hv:
        info = collect(hv)
    if args.json:
        import json

        print(json.dumps(info, indent=2))
    else:
        print(render(info))
    return 0
