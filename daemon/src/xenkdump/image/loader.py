"""The I/O around the planner: read the files, ask the hypervisor, load, keep the record.

``read_inputs`` reads and hashes the kernel and initrd once; ``gather_host``
asks the hypervisor port for every fact the image depends on; ``load`` picks
the half of the crash area (planner.choose_half), plans, loads through the
port and records the result; ``unload`` unloads and records that.

Reload without a window (docs/xen-kexec-contract.md §4.3, §4.4): when the new image fits
in half the crash area it goes into the half the armed image does not use,
with the other half guarded, so the armed image stays intact whatever Xen
does with the new one, and Xen's slot swap replaces it atomically.  Only when
it does not fit (or the armed image itself uses the whole area) does ``load``
unload first -- a window in which a crash finds no crash kernel, which is
logged as a warning naming the reservation that would avoid it, and recorded
(``LoadRecord.unloaded_first``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from xenkdump.errors import HypervisorError, ImageError, InputError, PlanError, XenkdumpError
from xenkdump.hv.port import (
    EM_X86_64,
    KEXEC_TYPE_CRASH,
    MIN_XEN_VERSION,
    AddressRange,
    Hypervisor,
)
from xenkdump.image import cmdline as cmdline_mod
from xenkdump.image import elfcore
from xenkdump.image.bzimage import parse_bzimage
from xenkdump.image.planner import (
    HostFacts,
    ImageInputs,
    Plan,
    choose_half,
    plan_crash_image,
    required_bytes,
)
from xenkdump.safefile import Limit, read_file, read_file_if_exists
from xenkdump.state.record import LoadRecord, RecordStore
from xenkdump.status import suggested_reservation
from xenkdump.units import MIB, mib_up

log = logging.getLogger(__name__)

PROC_CMDLINE = Path("/proc/cmdline")
EFI_SYSTAB = Path("/sys/firmware/efi/systab")


def read_dom0_cmdline(path: Path = PROC_CMDLINE) -> str:
    """dom0's own command line, the default base of the crash kernel's."""
    raw = read_file(path, "dom0 command line", Limit.PROC, error=ImageError)
    return raw.decode("utf-8", errors="replace").strip()


def read_inputs(
    kernel: Path,
    initrd: Path | None,
    *,
    cmdline: str | None = None,
    append: Sequence[str] = (),
    remove: Sequence[str] = (),
    dom0_cmdline: str | None = None,
) -> ImageInputs:
    """Read, parse and hash the crash kernel and initrd; build the user-level command line.

    ``cmdline`` replaces the base (dom0's command line, from ``dom0_cmdline`` or
    /proc/cmdline); ``remove`` and ``append`` then edit it (cmdline.py).
    ImageError naming the file when one is missing, unreadable or malformed.
    """
    kernel_data = read_file(kernel, "kernel", Limit.KERNEL, error=ImageError)
    image = parse_bzimage(kernel_data, name=str(kernel))
    initrd_data = b""
    if initrd is not None:
        initrd_data = read_file(initrd, "initrd", Limit.INITRD, error=ImageError)
        if not initrd_data:
            raise ImageError(f"{initrd}: initrd: expected a non-empty file, found 0 bytes")
    if cmdline is None:
        base = dom0_cmdline if dom0_cmdline is not None else read_dom0_cmdline()
    else:
        base = cmdline
    user = cmdline_mod.user_cmdline(
        base=base, append=append, remove=remove, use_defaults=cmdline is None
    )
    return ImageInputs(
        kernel_path=str(kernel),
        kernel=image,
        kernel_sha256=hashlib.sha256(kernel_data).hexdigest(),
        initrd_path=None if initrd is None else str(initrd),
        initrd=initrd_data,
        initrd_sha256=hashlib.sha256(initrd_data).hexdigest() if initrd_data else "",
        cmdline=user,
    )


def read_acpi_rsdp(path: Path = EFI_SYSTAB) -> int:
    """The ACPI RSDP address from dom0's EFI system table (ACPI20= preferred), 0 if absent.

    A PV dom0 usually has no EFI runtime and so no systab: the crash kernel then finds
    the RSDP itself in the BIOS area, which the lowmem segment maps (docs/crash-image.md §1.3).
    """
    try:
        raw = read_file_if_exists(path, "EFI system table", Limit.PROC)
    except InputError:
        return 0
    if raw is None:
        return 0
    text = raw.decode("ascii", errors="replace")
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        try:
            found[key.strip()] = int(value.strip(), 16)
        except ValueError:
            continue
    return found.get("ACPI20") or found.get("ACPI") or 0


def gather_host(hv: Hypervisor, *, efi_systab: Path = EFI_SYSTAB) -> HostFacts:
    """Every fact of the host the crash image depends on.  PlanError when there is no crash area."""
    version = hv.xen_version()
    if version < MIN_XEN_VERSION:
        raise PlanError(
            f"Xen version: expected {MIN_XEN_VERSION[0]}.{MIN_XEN_VERSION[1]} or newer "
            f"(segment kexec load), found {version[0]}.{version[1]}"
        )
    crash = hv.crash_range()
    if crash.size == 0:
        raise PlanError(
            "crash area: expected a reservation, found none: Xen was booted without "
            "crashkernel= (add e.g. crashkernel=512M to the Xen command line and reboot)"
        )
    notes: list[AddressRange] = []
    for cpu in range(hv.max_cpus()):
        try:
            notes.append(hv.cpu_note_range(cpu))
        except HypervisorError as exc:
            # kexec-tools stops at the first CPU Xen will not describe (§2.2).
            log.debug("no crash note for cpu %d: %s", cpu, exc)
            break
    vmcoreinfo = hv.vmcoreinfo_range()
    machine_map = tuple(hv.machine_memory_map())
    dom0_note: AddressRange | None = hv.dom0_vmcoreinfo_range()
    if dom0_note is not None and dom0_note.size:
        elfcore.check_dom0_vmcoreinfo(dom0_note, machine_map, crash)
    else:
        dom0_note = None
        log.warning(
            "dom0 exports no VMCOREINFO note (/sys/kernel/vmcoreinfo): the dump cannot be "
            "filtered by page type and dom0's log cannot be extracted from it"
        )
    return HostFacts(
        crash=crash,
        machine_map=machine_map,
        cpu_notes=tuple(notes),
        vmcoreinfo=vmcoreinfo if vmcoreinfo.size else None,
        xen_version=version,
        xen_cmdline=hv.xen_command_line(),
        # Only a real dom0's firmware tables describe the Xen host; a simulated one has none.
        acpi_rsdp=read_acpi_rsdp(efi_systab) if hv.name == "xen" else 0,
        dom0_vmcoreinfo=dom0_note,
    )


def plan_for_load(
    inputs: ImageInputs, host: HostFacts, armed: LoadRecord | None
) -> tuple[Plan, bool]:
    """The plan ``load`` would use with this armed record, and whether it must unload first."""
    half = choose_half(None if armed is None else armed.half, inputs, host)
    plan = plan_crash_image(inputs, host, half=half)
    must_unload = armed is not None and (half == "whole" or armed.half == "whole")
    return plan, must_unload


def _armed_record(store: RecordStore, host: HostFacts) -> LoadRecord | None:
    armed = store.read()
    if armed is not None and armed.crash_range != (host.crash.start, host.crash.size):
        log.warning(
            "%s: recorded crash area %#x+%#x differs from Xen's %#x+%#x; ignoring the record",
            store.path,
            *armed.crash_range,
            host.crash.start,
            host.crash.size,
        )
        return None
    return armed


def load(
    hv: Hypervisor,
    inputs: ImageInputs,
    host: HostFacts,
    store: RecordStore,
    *,
    reason: str = "manual",
) -> LoadRecord:
    """Load ``inputs`` as the crash image, replacing any armed one; record it.

    The record is written only after Xen accepted the load.  On failure the
    exception propagates and the record says what is armed now: the previous
    image (two-halves placement: untouched), or nothing (after the fallback
    unload, or after a failed whole-area load, which is unloaded because it
    may have overwritten whatever was armed, xen-kexec-contract.md §4.3).
    """
    armed = _armed_record(store, host)
    plan, must_unload = plan_for_load(inputs, host, armed)
    needed = required_bytes(inputs, host)
    if must_unload:
        why = (
            "the armed image uses the whole crash area"
            if armed is not None and armed.half == "whole" and plan.half != "whole"
            else "the crash image does not fit in half of the crash area"
        )
        log.warning(
            "unloading the armed crash image before loading the new one (%s: needs %s, "
            "Xen reserved %d MiB): a crash meanwhile finds no crash kernel; "
            "crashkernel=%dM on the Xen command line avoids this",
            why,
            mib_up(needed),
            host.crash.size // MIB,
            suggested_reservation(needed) // MIB,
        )
        hv.kexec_unload(KEXEC_TYPE_CRASH)
        store.clear_armed(unloads=1)
    elif plan.half == "whole":  # nothing armed now, but the next reload will need to unload
        log.warning(
            "the crash image (%s) does not fit in half of the %d MiB crash area: the "
            "next reload must unload it first; crashkernel=%dM on the Xen command line avoids this",
            mib_up(needed),
            host.crash.size // MIB,
            suggested_reservation(needed) // MIB,
        )
    try:
        hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, plan.entry, plan.kexec_segments())
    except XenkdumpError:
        if plan.half == "whole" and not must_unload:
            # A whole-area load may have overwritten an image we did not know about (§4.3):
            # leave nothing half-written armed.
            try:
                hv.kexec_unload(KEXEC_TYPE_CRASH)
                store.clear_armed(unloads=1)
            except XenkdumpError as exc:
                log.warning("unload after the failed load failed too: %s", exc)
        raise
    record = new_record(
        store, inputs, host, plan, reason=reason, unloaded_first=must_unload, needed=needed
    )
    store.write(record)
    log.info(
        "crash image generation %d loaded in the %s half: %s (%s)",
        record.generation,
        record.half,
        record.kernel,
        reason,
    )
    return record


def new_record(
    store: RecordStore,
    inputs: ImageInputs,
    host: HostFacts,
    plan: Plan,
    *,
    reason: str,
    unloaded_first: bool,
    needed: int,
) -> LoadRecord:
    """The record of ``plan`` once Xen has accepted it (one more load issued)."""
    state = store.read_state()
    return LoadRecord(
        generation=state.generation + 1,
        kernel=inputs.kernel_path,
        kernel_sha256=inputs.kernel_sha256,
        initrd=inputs.initrd_path,
        initrd_sha256=inputs.initrd_sha256,
        cmdline=plan.cmdline,
        user_cmdline=inputs.cmdline,
        half=plan.half,
        image_sha256=plan.image_sha256,
        segments=tuple(
            {"kind": s.kind, "dest": s.dest, "memsz": s.memsz, "sha256": s.sha256}
            for s in plan.segments
        ),
        entry=plan.entry,
        crash_range=(host.crash.start, host.crash.size),
        host_fingerprint=host.fingerprint(),
        loaded_at=time.time(),
        reason=reason,
        unloaded_first=unloaded_first,
        loads_issued=state.loads_issued + 1,
        unloads_issued=state.unloads_issued,
        required_bytes=needed,
    )


def unload(hv: Hypervisor, store: RecordStore) -> None:
    """Unload the crash image (an empty slot unloads fine, §2.2) and record that."""
    hv.kexec_unload(KEXEC_TYPE_CRASH)
    store.clear_armed(unloads=1)
