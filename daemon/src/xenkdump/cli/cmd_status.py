"""xenkdumpctl status [--json]: what is armed, from xenkdumpd when it runs, else the record.

Both ways print the same status model (xenkdump.status): ``--json`` is the D-Bus
GetStatus dictionary (property name -> value), with the same keys whether or not
xenkdumpd runs.  Without the daemon the values come from xenkdump's own record
(Xen's status call cannot say what is armed, docs/xen-kexec-contract.md §4.1); the
daemon-only ones are then empty: DaemonVersion "", ConfigDigest "", LastError "".
"""

from __future__ import annotations

import argparse
import time

from xenkdump.cli.options import no_daemon_option, state_option, store
from xenkdump.units import MIB, mib_up, size_text

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from xenkdump.status import Status


def configure(command: str, p: argparse.ArgumentParser) -> None:
    p.description = (
        "Show the armed crash image: state, kernel, initrd, command line, digests, the "
        "part of Xen's crash area it uses, and the last reload.  Asks xenkdumpd when it "
        "runs, else reads xenkdump's record.  --json prints the D-Bus GetStatus "
        "dictionary, with the same keys either way."
    )
    state_option(p)
    no_daemon_option(p, "read xenkdump's record directly even when xenkdumpd runs")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    status = None if args.no_daemon else daemon_status()
    if status is None:
        status = record_status(args)
    if args.json:
        import json

        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        print(render(status))
    return 0


def daemon_status() -> Status | None:
    """xenkdumpd's status over D-Bus; None when no daemon owns its name on the bus."""
    from xenkdump.cli import cmd_daemon
    from xenkdump.status import Status

    reply = cmd_daemon.optional(lambda c: c.get_status())
    return None if reply is None else Status.from_json(reply)


def record_status(args: argparse.Namespace) -> Status:
    """The status from xenkdump's record and the hypervisor, without the daemon."""
    import logging

    from xenkdump.errors import InputError, XenkdumpError
    from xenkdump.hv.select import open_hypervisor
    from xenkdump.image.loader import recall
    from xenkdump.status import State, build

    log = logging.getLogger(__name__)

    records = store(args)
    crash = None
    xen_version = ""
    unknown = ""
    record = None
    try:
        with open_hypervisor(args.hypervisor) as hv:
            crash = hv.crash_range()
            major, minor = hv.xen_version()
            xen_version = f"{major}.{minor}{hv.xen_extraversion()}"
            # The record checked against Xen's parity, as xenkdumpd would (nothing written).
            knowledge = recall(hv, records, crash=crash, settle=False).knowledge
            record, unknown = knowledge.armed, knowledge.state.unknown
    except InputError:
        raise  # a wrong --hypervisor value is a usage error (exit 2)
    except XenkdumpError as exc:
        record = records.read()
        # The record is the answer; the crash area is only context.  Say why it is
        # missing only when a hypervisor was named explicitly.
        level = logging.WARNING if args.hypervisor is not None else logging.DEBUG
        log.log(level, "cannot ask the hypervisor for the crash area: %s", exc)
    if unknown:
        state = State.DEGRADED
        reason = (
            f"a crash image may be armed at an unknown place in the crash area ({unknown}); "
            "the next load unloads it first"
        )
    elif record is None:
        state, reason = State.NOT_LOADED, "nothing armed according to xenkdump's record"
    else:
        state, reason = State.LOADED, f"armed by xenkdump (generation {record.generation})"
    return build(
        state=state,
        state_reason=f"{reason}; xenkdumpd is not running",
        record=record,
        crash=crash,
        xen_version=xen_version,
        daemon_version="",
    )


# ---- human output ----


def _range(start: int, size: int) -> str:
    return f"{start:#x}-{start + size - 1:#x} ({size_text(size)})" if size else "none"


def _when(usec: int) -> str:
    if usec <= 0:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(usec / 1e6))
    return f"{stamp}, {max(0, int(time.time() - usec / 1e6))} s ago"


def _next(s: Status) -> str:
    """When the scheduled self-test runs next ("2026-12-03 03:00:00 UTC, in 6 h")."""
    from xenkdump.status import ago

    if s.next_self_test <= 0:
        return "none (the schedule never elapses again)"
    at = s.next_self_test / 1e6
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(at))
    return f"{stamp}, in {ago(at - time.time())}"


def _part(s: Status) -> str:
    if s.whole_area:
        return "the whole crash area"
    return "the lower half" if s.crash_region_used[0] == s.crash_region[0] else "the upper half"


def render(s: Status) -> str:
    """The human form of a status, one "Name: value" row each."""
    from xenkdump.dbus.names import BUS_NAME
    from xenkdump.status import self_test_note

    region, used = s.crash_region, s.crash_region_used
    running = bool(s.daemon_version)
    if region[1]:
        area = _range(*region)
    elif not running and not s.xen_version:
        area = "unknown (the hypervisor could not be asked)"
    else:
        area = "none (Xen was booted without crashkernel=)"
    rows = [
        ("State", f"{s.state} ({s.state_reason})"),
        ("Crash kernel", s.crash_kernel or "none"),
        ("Initrd", s.initrd or "none"),
        ("Command line", s.command_line),
        ("Image sha256", s.image_sha256 or "none"),
    ]
    if s.config_files:
        rows.append(("Config files", ", ".join(s.config_files)))
    if s.config_digest:
        rows.append(("Config sha256", s.config_digest))
    rows.append(("Crash region", area))
    if used[1]:
        rows.append(("Used", f"{_range(*used)}, {_part(s)}, needs {size_text(s.required_bytes)}"))
        rows.append(("Free", size_text(region[1] - used[1])))
    rows += [
        ("Loaded at", f"{_when(s.loaded_at)} (generation {s.generation})"),
        ("Last reload", s.last_reload_reason or "none"),
    ]
    if s.last_error:
        rows.append(("Last error", s.last_error))
    if s.unloaded_first:
        rows.append(("Note", "the last load unloaded the armed image first (no free half)"))
    if s.crash_area_verdict not in ("", "ok", "unknown"):
        rows.append(("Crash area", f"{s.crash_area_verdict}: {s.crash_area_advice}"))
        if s.crash_area_fix:
            from xenkdump.advice.crashkernel import GRUB_FILE

            rows.append(("Fix", f"in {GRUB_FILE}: {s.crash_area_fix}"))
            rows.append(("", "then run update-grub and reboot"))
    elif s.whole_area:
        from xenkdump.advice.crashkernel import recommended_size

        suggest = recommended_size(s.required_bytes) // MIB
        rows.append(
            (
                "Warning",
                f"the image ({mib_up(s.required_bytes)}) does not fit in half of the "
                f"{region[1] // MIB} MiB crash area, so reloads unload it first (a window "
                f"without a crash kernel); crashkernel={suggest}M on the Xen command line "
                "avoids this",
            )
        )
    if running:
        rows.append(("Self-test", self_test_note(s, time.time())))
        if s.self_test_schedule and s.self_test_schedule != "off":
            rows.append(("Scheduled", f"{s.self_test_schedule}: next run {_next(s)}"))
    xen = f"Xen {s.xen_version or 'unknown'}"
    if running:
        rows.append(("Versions", f"{xen}, xenkdumpd {s.daemon_version}"))
        rows.append(("Bus", f"{BUS_NAME} interface revision {s.interface_revision}"))
    else:
        rows.append(("Versions", f"{xen}, xenkdumpd not running"))
    return "\n".join(f"{k + ':':<15}{v}" for k, v in rows)
