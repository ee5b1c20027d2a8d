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
from collections.abc import Callable, Sequence
from pathlib import Path

from xenkdump.advice.crashkernel import recommended_size
from xenkdump.errors import HypervisorError, ImageError, InputError, PlanError, XenkdumpError
from xenkdump.hv.port import (
    EM_X86_64,
    KEXEC_TYPE_CRASH,
    MIN_XEN_VERSION,
    AddressRange,
    Hypervisor,
    read_dom0_cmdline,
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
from xenkdump.safefile import Limit, read_file, read_file_if_exists, require_text_path, shown
from xenkdump.state.record import (
    Knowledge,
    Ledger,
    LoadRecord,
    RecordError,
    RecordStore,
    StateFile,
    resolve,
)
from xenkdump.units import MIB, mib_up

log = logging.getLogger(__name__)

# KEXEC_CMD_kexec_status exists from Xen 4.9; before, the hypercall answers 0
# (docs/xen-kexec-contract.md §2.2).
PARITY_XEN_VERSION = (4, 9)

EFI_SYSTAB = Path("/sys/firmware/efi/systab")


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
    require_text_path(kernel, "kernel", error=ImageError)
    if initrd is not None:
        require_text_path(initrd, "initrd", error=ImageError)
    kernel_data = read_file(kernel, "kernel", Limit.KERNEL, error=ImageError)
    image = parse_bzimage(kernel_data, name=shown(kernel))
    initrd_data = b""
    if initrd is not None:
        initrd_data = read_file(initrd, "initrd", Limit.INITRD, error=ImageError)
        if not initrd_data:
            raise ImageError(f"{shown(initrd)}: initrd: expected a non-empty file, found 0 bytes")
    if cmdline is None:
        base = dom0_cmdline if dom0_cmdline is not None else read_dom0_cmdline(error=ImageError)
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


def gather_host(
    hv: Hypervisor, *, efi_systab: Path = EFI_SYSTAB, require_crash_area: bool = True
) -> HostFacts:
    """Every fact of the host the crash image depends on.  PlanError when there is no crash
    area, unless ``require_crash_area`` is False (to measure an image for advice)."""
    version = hv.xen_version()
    if version < MIN_XEN_VERSION:
        raise PlanError(
            f"Xen version: expected {MIN_XEN_VERSION[0]}.{MIN_XEN_VERSION[1]} or newer "
            f"(segment kexec load), found {version[0]}.{version[1]}"
        )
    crash = hv.crash_range()
    if crash.size == 0 and require_crash_area:
        raise PlanError(
            "crash area: expected a reservation, found none: Xen was booted without "
            "crashkernel= (`xenkdumpctl advise` prints the line for Xen's command line)"
        )
    notes: list[AddressRange] = []
    for cpu in range(hv.max_cpus()):
        try:
            notes.append(hv.cpu_note_range(cpu))
        except HypervisorError as exc:
            # kexec-tools stops at the first CPU Xen will not describe
            # (docs/xen-kexec-contract.md §2.2).
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


def xen_parity(hv: Hypervisor) -> int | None:
    """Xen's crash status answer (the load/unload parity), None where Xen has none (< 4.9)."""
    if hv.xen_version() < PARITY_XEN_VERSION:
        return None
    return hv.kexec_status(KEXEC_TYPE_CRASH) & 1


def recall(
    hv: Hypervisor,
    store: RecordStore,
    *,
    crash: AddressRange | None = None,
    boot_time: float = 0.0,
    settle: bool = True,
) -> Ledger:
    """What is armed now: the record checked against Xen (record.resolve).

    With ``settle`` the outcome is written back (best effort), so that a later check
    compares against Xen's parity as it is now.
    """
    parity = xen_parity(hv)
    crash = crash if crash is not None else hv.crash_range()
    try:
        state = store.read_state()
    except RecordError as exc:
        log.warning("%s", exc)
        knowledge = resolve(None, parity, problem=str(exc))
        state = None
    else:
        knowledge = resolve(
            state, parity, boot_time=boot_time, crash_range=(crash.start, crash.size)
        )
    ledger = Ledger(store, knowledge)
    if settle and knowledge.state != state:
        ledger.settle(knowledge)
    return ledger


def _guarded(
    hv: Hypervisor, ledger: Ledger, op: str, image: LoadRecord | None, call: Callable[[], None]
) -> None:
    """Issue one load or unload hypercall with the record written before and after it."""
    before = xen_parity(hv)
    base = ledger.knowledge.state
    ledger.begin(op, before, image)  # RecordWriteError: nothing is issued
    try:
        call()
    except XenkdumpError:
        # Xen refuses before its slot swap, so nothing happened -- its parity confirms it.
        try:
            now = xen_parity(hv)
        except XenkdumpError:
            now = None
        if now is None or before is None:
            outcome = Knowledge(base, base.unknown)
        else:
            outcome = resolve(base.begin(op, before, image), now)
        ledger.settle(outcome)
        raise
    ledger.settle(Knowledge(base.after(op, image, before)))


def load(
    hv: Hypervisor,
    inputs: ImageInputs,
    host: HostFacts,
    ledger: Ledger,
    *,
    reason: str = "manual",
) -> LoadRecord:
    """Load ``inputs`` as the crash image, replacing any armed one; record it.

    The record names the image and its half before the hypercall and the result after
    it (``_guarded``).  On failure the exception propagates and ``ledger.knowledge``
    says what is armed now: the previous image (two-halves placement: untouched), or
    nothing (after an unload first, or after a failed whole-area load, which is
    unloaded because it may have overwritten whatever was armed, docs/xen-kexec-contract.md §4.3).

    When the location of an armed image is unknown (``ledger.knowledge.known`` False)
    the load unloads first: a window without a crash kernel, logged with its length,
    instead of a load into a half that may hold the armed image.
    """
    knowledge = ledger.knowledge
    armed = knowledge.armed
    plan, must_unload = plan_for_load(inputs, host, armed)
    needed = required_bytes(inputs, host)
    window_from: float | None = None
    if not knowledge.known:
        log.warning(
            "no trustworthy record of where a crash image may be armed (%s): unloading "
            "whatever Xen holds before loading; a crash meanwhile finds no crash kernel",
            knowledge.state.unknown,
        )
        window_from = time.monotonic()
        _guarded(hv, ledger, "unload", None, lambda: hv.kexec_unload(KEXEC_TYPE_CRASH))
    if plan.half == "whole" and not must_unload:
        # nothing (known) armed now, but the next reload will need to unload
        log.warning(
            "the crash image (%s) does not fit in half of the %d MiB crash area: the "
            "next reload must unload it first; crashkernel=%dM on the Xen command line avoids this",
            mib_up(needed),
            host.crash.size // MIB,
            recommended_size(needed) // MIB,
        )
    elif must_unload:
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
            recommended_size(needed) // MIB,
        )
        window_from = time.monotonic()
        _guarded(hv, ledger, "unload", None, lambda: hv.kexec_unload(KEXEC_TYPE_CRASH))
    record = new_record(
        ledger.knowledge.state,
        inputs,
        host,
        plan,
        reason=reason,
        unloaded_first=must_unload,
        needed=needed,
    )
    segments = plan.kexec_segments()
    try:
        _guarded(
            hv,
            ledger,
            "load",
            record,
            lambda: hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, plan.entry, segments),
        )
    except XenkdumpError:
        if window_from is not None:
            log.error("no crash kernel armed: the load after the unload failed")
        elif plan.half == "whole" and ledger.knowledge.armed is None:
            # A whole-area load may have overwritten an image we did not know about (§4.3):
            # leave nothing half-written armed.
            try:
                _guarded(hv, ledger, "unload", None, lambda: hv.kexec_unload(KEXEC_TYPE_CRASH))
            except XenkdumpError as exc:
                log.warning("unload after the failed load failed too: %s", exc)
        raise
    if window_from is not None:
        log.warning(
            "window without a crash kernel: %.0f ms (unload to load)",
            (time.monotonic() - window_from) * 1000,
        )
    log.info(
        "crash image generation %d loaded in the %s half: %s (%s)",
        record.generation,
        record.half,
        record.kernel,
        reason,
    )
    return record


def new_record(
    state: StateFile,
    inputs: ImageInputs,
    host: HostFacts,
    plan: Plan,
    *,
    reason: str,
    unloaded_first: bool,
    needed: int,
) -> LoadRecord:
    """The record of ``plan`` as it will be once Xen has accepted it (one more load issued)."""
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


def unload(hv: Hypervisor, ledger: Ledger) -> None:
    """Unload the crash image and record that.

    An empty slot unloads fine (docs/xen-kexec-contract.md §2.2).
    """
    _guarded(hv, ledger, "unload", None, lambda: hv.kexec_unload(KEXEC_TYPE_CRASH))
