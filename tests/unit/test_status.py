"""The status model shared by xenkdumpd, its D-Bus API and xenkdumpctl (xenkdump/status.py)."""

from __future__ import annotations

import pytest

from xenkdump.dbus import contract, names
from xenkdump.hv.port import AddressRange
from xenkdump.image.planner import half_window
from xenkdump.state.record import LoadRecord
from xenkdump.status import PROPERTY_NAMES, State, Status, build, property_name

MIB = 1 << 20
CRASH = AddressRange(0x1_0000_0000, 256 * MIB)


@pytest.mark.parametrize(
    ("field", "prop"),
    [
        ("state", "State"),
        ("crash_region_used", "CrashRegionUsed"),
        ("image_sha256", "ImageSha256"),
        ("interface_revision", "InterfaceRevision"),
    ],
)
def test_property_names(field: str, prop: str) -> None:
    assert property_name(field) == prop


def test_the_model_and_the_interface_xml_have_the_same_properties() -> None:
    spec = contract.parse_interface(names.interface_xml())
    assert sorted(PROPERTY_NAMES) == sorted(spec.properties)
    assert contract.load_interface().properties == spec.properties


def test_json_round_trip_tolerates_newer_and_older_daemons() -> None:
    s = Status(state="loaded", crash_region=(1, 2), generation=7, daemon_version="0.1.0")
    doc = s.to_json()
    assert doc["CrashRegion"] == [1, 2] and doc["Generation"] == 7
    assert Status.from_json(doc) == s
    newer = {**doc, "SomethingNew": 1}
    assert Status.from_json(newer) == s
    older = {k: v for k, v in doc.items() if k != "Generation"}
    assert Status.from_json(older) == s._replace(generation=0)


def record(half: str) -> LoadRecord:
    return LoadRecord(
        generation=3, kernel="/boot/vmlinuz", kernel_sha256="ab" * 32, initrd=None,
        initrd_sha256="", cmdline="console=hvc0 elfcorehdr=1K", user_cmdline="console=hvc0",
        half=half, image_sha256="cd" * 32, segments=(), entry=0,
        crash_range=(CRASH.start, CRASH.size),
        host_fingerprint="", loaded_at=1.5, reason="test", unloaded_first=False,
        loads_issued=3, unloads_issued=0, required_bytes=70 * MIB,
    )  # fmt: skip


@pytest.mark.parametrize("half", ["lower", "upper", "whole"])
def test_build_from_a_record(half: str) -> None:
    s = build(
        state=State.LOADED, state_reason="armed", record=record(half), crash=CRASH,
        xen_version="4.17", daemon_version="",
    )  # fmt: skip
    window = half_window(CRASH, half)[0]
    assert s.crash_region_used == (window.start, window.size)
    assert s.crash_region == (CRASH.start, CRASH.size)
    assert s.whole_area is (half == "whole")
    assert (s.state, s.generation, s.loaded_at, s.initrd) == ("loaded", 3, 1_500_000, "")
    # Xen could not be asked: the crash area is the one the record was loaded into.
    unknown = build(
        state=State.LOADED, state_reason="", record=record(half), crash=None, xen_version="",
        daemon_version="",
    )  # fmt: skip
    assert unknown.crash_region == s.crash_region


def test_build_without_a_record() -> None:
    s = build(
        state=State.NOT_LOADED, state_reason="nothing", record=None, crash=CRASH,
        xen_version="4.17", daemon_version="0.1.0", last_reason="unload requested",
    )  # fmt: skip
    assert s.crash_region_used == (0, 0) and not s.whole_area
    assert s.crash_kernel == "" and s.last_reload_reason == "unload requested"
