"""The status of the crash image: one model for xenkdumpd, its D-Bus API and xenkdumpctl.

Each field of ``Status`` is one property of org.xenkdump.Kdump1, named in CamelCase
(``crash_region_used`` is ``CrashRegionUsed``) and typed by the interface XML.
xenkdumpd builds it from its engine and its record (``build``); the D-Bus service
serves it as GetStatus, Get, GetAll and PropertiesChanged; the client reads a reply
back with ``Status.from_json``; and ``xenkdumpctl status`` builds the same model from
the record when no daemon runs, so ``status --json`` prints the same keys either way.

Adding a property takes three edits: its ``<property>`` in
dbus/org.xenkdump.Kdump1.xml, a field here (with its value in ``build``), and the
golden introspection file of the tests (tests/daemon/data).

This module stays light (no dbus_fast, no image builder, not even dataclasses or
typing at import): the CLI's status command imports it (docs/architecture.md §6).
``Status`` is a NamedTuple: immutable, compared by value, ``_replace`` for a changed
copy.
"""

from __future__ import annotations

import enum

from xenkdump.tuples import NamedTuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    from xenkdump.advice.crashkernel import Advice
    from xenkdump.hv.port import AddressRange
    from xenkdump.state.record import LoadRecord

# The parts of the crash area an image can use (image/planner.py places it).
HALVES = ("lower", "upper", "whole")

# Grows with every compatible addition to the interface (the InterfaceRevision property).
INTERFACE_REVISION = 6


# The LastSelfTest dictionary: key -> D-Bus type (xenkdump.selftest.job.Result.to_status).
SELF_TEST_KEYS: dict[str, str] = {
    "Id": "s",
    "Level": "s",
    "Started": "t",  # microseconds since the epoch
    "Duration": "d",  # seconds
    "Passed": "b",
    "FailedStage": "s",
    "Reason": "s",
    "ImageSha256": "s",  # the armed image it tested
    "Accel": "s",  # kvm or tcg
    "CrashKernelBootSeconds": "d",
    "PeakMemory": "t",  # bytes
    "Headroom": "t",  # bytes still available at the peak
    "Crashkernel": "s",  # sizing advice for Xen's command line
    "Xen": "s",  # the Xen binary the handoff level booted ("" at the boot level)
    "Note": "s",  # why this level (a fallback to boot), where the crash area was
    # The capture agent's dump on the staging VM's scratch disk (its metadata.json):
    # result (complete, failed; "" when the crash initrd has no agent) and each step
    # as (name, exit code, seconds, bytes, command).
    "DumpResult": "s",
    "DumpSteps": "a(sidts)",
    # CurrentSelfTest only (Id and Level as above):
    "Stage": "s",  # the last stage reached, "" before vm-start
    "Fraction": "d",  # of the level's stages reached, 0 to 1
}


# The LastDump dictionary and the DumpFound signal: key -> D-Bus type (capture/dumps.py).
DUMP_KEYS: dict[str, str] = {
    "Path": "s",  # the dump directory
    "Time": "t",  # the crash, seconds since the epoch (UTC)
    "Bytes": "t",  # all its files
    "Result": "s",  # complete | failed | incomplete | unknown
}


class State(enum.StrEnum):
    """The daemon's state (the State property); the engine derives it, see daemon/engine.py."""

    STARTING = "starting"
    LOADED = "loaded"
    DEGRADED = "degraded"
    NOT_LOADED = "not-loaded"
    FAILED = "failed"


class Status(NamedTuple):
    """One consistent view of what is armed; the defaults describe "nothing known"."""

    interface_revision: int = INTERFACE_REVISION
    state: str = State.NOT_LOADED.value
    state_reason: str = ""
    crash_kernel: str = ""  # path of the loaded kernel, "" if none
    initrd: str = ""
    command_line: str = ""
    image_sha256: str = ""
    loaded_at: int = 0  # microseconds since the epoch, 0 if none
    last_reload_reason: str = ""
    last_error: str = ""
    crash_region: tuple[int, int] = (0, 0)  # Xen's crash area (start, size)
    crash_region_used: tuple[int, int] = (0, 0)  # the part the image uses, (0, 0) if none
    required_bytes: int = 0
    xen_version: str = ""
    daemon_version: str = ""  # "" when xenkdumpd does not run
    config_digest: str = ""
    generation: int = 0
    unloaded_first: bool = False  # the last load unloaded the armed image first
    # The last self-test's result as sorted (key, value) pairs (SELF_TEST_KEYS); () if none.
    last_self_test: tuple[tuple[str, Any], ...] = ()
    # The running self-test (Id, Level, Stage, Fraction) as sorted pairs; () if none.
    current_self_test: tuple[tuple[str, Any], ...] = ()
    config_files: tuple[str, ...] = ()  # the configuration file, then its drop-ins
    crash_area_verdict: str = ""  # ok, tight, too-small, missing, unknown ("" not judged)
    crash_area_advice: str = ""  # why, in one line
    crash_area_fix: str = ""  # the GRUB_CMDLINE_XEN_DEFAULT=... line to use, "" if none
    # The dump target's last check: "ok: ..." or "failing: ..."; "" when the crash side
    # is not xenkdump's (initrd other than xenkdump) or it was not checked yet.
    dump_target: str = ""
    # The newest dump at the target (DUMP_KEYS) as sorted pairs; () if none found.
    last_dump: tuple[tuple[str, Any], ...] = ()
    # selftest.schedule as configured ("off", or a systemd calendar expression), and its
    # next elapse in microseconds since the epoch (0: none).  "" without xenkdumpd.
    self_test_schedule: str = ""
    next_self_test: int = 0

    def to_json(self) -> dict[str, Any]:
        """Property name -> plain value (pairs as lists), in field order."""
        return {property_name(name): _plain(name, value) for name, value in self._asdict().items()}

    @classmethod
    def from_json(cls, values: dict[str, object]) -> Status:
        """From a GetStatus reply or ``to_json``; unknown names are ignored (a newer
        daemon), missing ones keep their defaults (an older daemon)."""
        fields: dict[str, Any] = {}
        for field in cls._fields:
            name = property_name(field)
            if name in values:
                value = values[name]
                if isinstance(value, dict):
                    value = tuple(sorted(value.items()))
                fields[field] = tuple(value) if isinstance(value, list) else value
        return cls(**fields)

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        return f"{self.state}: {self.state_reason}"

    @property
    def whole_area(self) -> bool:
        """The image uses the whole crash area, so a reload has to unload it first."""
        return self.crash_region_used[1] > 0 and self.crash_region_used == self.crash_region


def _plain(name: str, value: object) -> object:
    if name in ("last_self_test", "current_self_test", "last_dump"):
        return dict(value)  # type: ignore[call-overload]
    return list(value) if isinstance(value, tuple) else value


def self_test_note(s: Status, now: float) -> str:
    """Whether the armed image passed a self-test, for people ("passed 2 h ago ...")."""
    last = dict(s.last_self_test)
    if not last:
        return "never run"
    since = ago(now - int(last.get("Started", 0)) / 1e6)
    if s.image_sha256 and last.get("ImageSha256") != s.image_sha256:
        return (
            f"not tested since the last reload (the last self-test, {since} ago, "
            "was of another image)"
        )
    which = "for this image" if s.image_sha256 else "(no image armed now)"
    if last.get("Passed"):
        return f"passed {since} ago {which} ({last.get('Level', '')} level)"
    return f"FAILED {since} ago {which} at {last.get('FailedStage', '')}: {last.get('Reason', '')}"


def ago(seconds: float) -> str:
    """A duration for people: 2 d, 3 h, 5 min, 12 s."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def property_name(field: str) -> str:
    """The D-Bus property of a field: ``crash_region_used`` -> ``CrashRegionUsed``."""
    return "".join(part[:1].upper() + part[1:] for part in field.split("_"))


PROPERTY_NAMES = tuple(property_name(field) for field in Status._fields)


def build(
    *,
    state: str,
    state_reason: str,
    record: LoadRecord | None,
    crash: AddressRange | None,
    xen_version: str,
    daemon_version: str,
    config_digest: str = "",
    config_files: tuple[str, ...] = (),
    advice: Advice | None = None,
    last_error: str = "",
    last_reason: str = "",
    last_self_test: tuple[tuple[str, Any], ...] = (),
    current_self_test: tuple[tuple[str, Any], ...] = (),
    dump_target: str = "",
    last_dump: tuple[tuple[str, Any], ...] = (),
    self_test_schedule: str = "",
    next_self_test: int = 0,
) -> Status:
    """The status from the record of what is armed and the caller's own facts.

    ``crash`` is Xen's crash area now, None when Xen could not be asked.
    """
    used = (0, 0)
    region = (crash.start, crash.size) if crash is not None else (0, 0)
    if record is not None:
        # Lazily: the image builder is not needed to read a status over D-Bus.
        from xenkdump.hv.port import AddressRange  # noqa: PLC0415
        from xenkdump.image.planner import half_window  # noqa: PLC0415

        window = half_window(AddressRange(*record.crash_range), record.half)[0]
        used = (window.start, window.size)
        if crash is None:  # Xen could not be asked: the area as it was at the load
            region = record.crash_range
    return Status(
        state=str(state),
        state_reason=state_reason,
        crash_kernel=record.kernel if record else "",
        initrd=(record.initrd or "") if record else "",
        command_line=record.cmdline if record else "",
        image_sha256=record.image_sha256 if record else "",
        loaded_at=int(record.loaded_at * 1_000_000) if record else 0,
        last_reload_reason=record.reason if record else last_reason,
        last_error=last_error,
        crash_region=region,
        crash_region_used=used,
        required_bytes=record.required_bytes if record else 0,
        xen_version=xen_version,
        daemon_version=daemon_version,
        config_digest=config_digest,
        generation=record.generation if record else 0,
        unloaded_first=record.unloaded_first if record else False,
        last_self_test=last_self_test,
        current_self_test=current_self_test,
        config_files=config_files,
        crash_area_verdict=str(advice.verdict) if advice else "",
        crash_area_advice="; ".join((advice.summary, *advice.details)) if advice else "",
        crash_area_fix=advice.grub_line if advice else "",
        dump_target=dump_target,
        last_dump=last_dump,
        self_test_schedule=self_test_schedule,
        next_self_test=next_self_test,
    )
