"""The D-Bus contract without a bus: the XML, its names, the error mapping, options.

The XML (package data) is the single definition of the API; these tests pin what
the rest of the code assumes about it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from xenkdump import requests
from xenkdump.dbus import contract, errors, names
from xenkdump.errors import (
    BusyError,
    ConfigError,
    HypervisorError,
    HypervisorUnavailable,
    ImageError,
    InputError,
    OperationError,
    PlanError,
)
from xenkdump.status import INTERFACE_REVISION

DATA = Path(__file__).parent / "data"
SPEC = contract.load_interface()


def canonical(elem: ET.Element) -> str:
    return ET.canonicalize(ET.tostring(elem, encoding="unicode"), strip_text=True)


def test_members_and_signatures_are_the_documented_api() -> None:
    assert SPEC.name == names.INTERFACE
    assert {m.name: (m.in_signature, m.out_signature) for m in SPEC.methods.values()} == {
        "Reload": ("a{sv}", "a{sv}"),
        "Unload": ("a{sv}", "a{sv}"),
        "GetStatus": ("", "a{sv}"),
        "SelfTest": ("a{sv}", "s"),
        "CancelSelfTest": ("s", ""),
    }
    assert {s.name: s.signature for s in SPEC.signals.values()} == {
        "ReloadFinished": "a{sv}",
        "UnloadFinished": "a{sv}",
        "SelfTestProgress": "ssd",
        "SelfTestFinished": "sba{sv}",
        "DumpFound": "a{sv}",
    }
    props = {p.name: p.signature for p in SPEC.properties.values()}
    assert props == {
        "InterfaceRevision": "u",
        "State": "s",
        "StateReason": "s",
        "CrashKernel": "s",
        "Initrd": "s",
        "CommandLine": "s",
        "ImageSha256": "s",
        "LoadedAt": "t",
        "LastReloadReason": "s",
        "LastError": "s",
        "CrashRegion": "(tt)",
        "CrashRegionUsed": "(tt)",
        "RequiredBytes": "t",
        "XenVersion": "s",
        "DaemonVersion": "s",
        "ConfigDigest": "s",
        "Generation": "t",
        "UnloadedFirst": "b",
        "CurrentSelfTest": "a{sv}",
        "DumpTarget": "s",
        "LastDump": "a{sv}",
        "LastSelfTest": "a{sv}",
        "ConfigFiles": "as",
        "CrashAreaVerdict": "s",
        "CrashAreaAdvice": "s",
        "CrashAreaFix": "s",
        "SelfTestSchedule": "s",
        "NextSelfTest": "t",
    }
    assert all(p.access == "read" for p in SPEC.properties.values())
    const = {p.name for p in SPEC.properties.values() if not p.emits_changed}
    assert const == {"InterfaceRevision", "DaemonVersion"}


def test_every_error_name_and_option_is_documented_in_the_xml() -> None:
    text = names.interface_xml()
    for name in names.ERRORS:
        assert name in text, name
    for option in [*requests.RELOAD_OPTIONS, *requests.UNLOAD_OPTIONS, *requests.SELFTEST_OPTIONS]:
        assert f"{option} (" in text, option


def test_undocumented_member_is_rejected() -> None:
    text = names.interface_xml()
    start = text.index('<method name="GetStatus">')
    end = text.index("</method>", start)
    stripped = text[:start] + '<method name="GetStatus">' + text[end:]
    with pytest.raises(contract.ContractError, match="no <doc:doc> on method GetStatus"):
        contract.parse_interface(stripped)


def test_broken_xml_is_one_line_error() -> None:
    with pytest.raises(
        contract.ContractError, match=r"org\.xenkdump\.Kdump1\.xml: not well-formed"
    ):
        contract.parse_interface("<node><interface>")


def test_golden_introspection_matches_the_contract() -> None:
    golden = (DATA / "org.xenkdump.Kdump1.introspect.xml").read_text()
    assert contract.introspection_document(SPEC, names.OBJECT_PATH) == golden
    ours = [i for i in ET.fromstring(golden).iter("interface") if i.get("name") == names.INTERFACE]
    source = ET.fromstring(names.interface_xml()).find("interface")
    assert source is not None and len(ours) == 1
    # The reply is the file's interface without its <doc:doc> elements.
    assert canonical(ours[0]) == canonical(contract.strip_docs(source))
    assert "doc:" not in golden


@pytest.mark.parametrize(
    ("path", "child"), [("/", "org"), ("/org", "xenkdump"), ("/org/xenkdump", "Kdump1")]
)
def test_ancestor_nodes_lead_to_the_object(path: str, child: str) -> None:
    assert contract.is_ancestor(path)
    node = ET.fromstring(contract.introspection_document(SPEC, path))
    assert [n.get("name") for n in node.findall("node")] == [child]
    assert not contract.is_ancestor("/org/xenkdump/Kdump10")
    assert not contract.is_ancestor("/org/xen")


def test_property_values_follow_the_snapshot(snapshot: Any) -> None:
    snap = snapshot
    values = contract.property_values(SPEC, snap)
    assert list(values) == list(SPEC.properties)
    assert values["InterfaceRevision"] == ("u", INTERFACE_REVISION)
    assert values["CrashRegion"] == ("(tt)", [0x1_0000_0000, 0x1000_0000])
    assert values["LoadedAt"] == ("t", snap.loaded_at)
    new = snap._replace(generation=2, last_error="boom", daemon_version="9")
    changed = contract.changed_properties(SPEC, snap, new)
    # DaemonVersion is const: never in PropertiesChanged.
    assert changed == {"Generation": ("t", 2), "LastError": ("s", "boom")}


def test_check_options_names_the_option_and_types() -> None:
    ok = contract.check_options("Reload", {"force": ("b", True)}, requests.RELOAD_OPTIONS)
    assert ok == {"force": True}
    with pytest.raises(InputError, match=r"Reload option 'forse': unknown \(expected one of"):
        contract.check_options("Reload", {"forse": ("b", True)}, requests.RELOAD_OPTIONS)
    with pytest.raises(InputError, match="Reload option 'force': expected D-Bus type 'b', got 's'"):
        contract.check_options("Reload", {"force": ("s", "yes")}, requests.RELOAD_OPTIONS)


@pytest.mark.parametrize(
    ("exc", "name", "exit_code"),
    [
        (ConfigError("/etc/xenkdump.yaml: kernal: unknown key"), names.ERROR_INVALID_CONFIG, 2),
        (ImageError("/boot/vmlinuz: not a bzImage"), names.ERROR_IMAGE_INVALID, 2),
        (PlanError("crash region: expected 64 MiB, found 32 MiB"), names.ERROR_DOES_NOT_FIT, 2),
        (InputError("option 'x': unknown"), names.ERROR_INVALID_ARGS, 2),
        (BusyError("a reload is already running"), names.ERROR_BUSY, 1),
        (HypervisorUnavailable("xc_interface_open", 2), names.ERROR_HYPERVISOR_UNAVAILABLE, 1),
        (HypervisorError("kexec_load", 16), names.ERROR_HYPERVISOR_FAILED, 1),
        (errors.NotPermittedError("Reload: uid 1000"), names.ERROR_NOT_PERMITTED, 1),
        (OperationError("something failed"), names.ERROR_FAILED, 1),
        (KeyError("bug"), names.ERROR_INTERNAL, 1),
    ],
)
def test_errors_convert_in_one_place_both_ways(
    exc: BaseException, name: str, exit_code: int
) -> None:
    got_name, text = errors.to_dbus(exc)
    assert got_name == name
    assert "\n" not in text and text
    remote = errors.from_dbus(got_name, text)
    assert remote.name == name and remote.exit_code == exit_code
    assert str(exc).strip("'") in str(remote) or name == names.ERROR_INTERNAL


def test_multi_line_messages_become_one_line() -> None:
    _, text = errors.to_dbus(ConfigError("a.yaml: 2 problems:\n  line 1: x\n  line 2: y"))
    assert text == "a.yaml: 2 problems: line 1: x line 2: y"


def test_access_denied_from_the_bus_policy_reads_as_permission_denied() -> None:
    remote = errors.from_dbus("org.freedesktop.DBus.Error.AccessDenied", "Rejected send message")
    assert remote.exit_code == 1 and str(remote).startswith("permission denied:")


def test_option_tables_come_from_the_typed_options() -> None:
    assert requests.RELOAD_OPTIONS == {
        "force": "b", "wait": "b", "kernel": "s", "initrd": "s", "cmdline": "s", "reason": "s",
    }  # fmt: skip
    assert requests.UNLOAD_OPTIONS == {"wait": "b"}
