"""The D-Bus service (xenkdump.dbus.service) on a real private dbus-daemon.

The service is driven by an in-test core (conftest.FakeCore) so each outcome can be
scripted: every method, property, signal and error of the contract is exercised
here; test_dbus_daemon.py repeats the essentials against the real xenkdumpd.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, TypeVar

import pytest
from busfixtures import ScriptedJob, listen, settle, with_client
from dbus_fast import Message, MessageType, Variant

import asyncclient as client
from asyncclient import DaemonClient
from xenkdump.dbus import errors, names
from xenkdump.dbus.service import serve
from xenkdump.errors import (
    BusyError,
    ConfigError,
    HypervisorError,
    HypervisorUnavailable,
    ImageError,
    OperationError,
    PlanError,
)
from xenkdump.selftest.stages import LEVEL_STAGES, Level
from xenkdump.status import INTERFACE_REVISION

DATA = Path(__file__).parent / "data"
T = TypeVar("T")


async def error_of(c: DaemonClient, *args: Any, **kwargs: Any) -> tuple[str, str]:
    reply = await c.call_raw(*args, **kwargs)
    assert reply.message_type is MessageType.ERROR, reply.body
    return str(reply.error_name), str(reply.body[0])


# ---- introspection ----


def test_introspection_is_the_golden_xml(serve_fake: Any) -> None:
    serve_fake()

    async def work(c: DaemonClient) -> list[str]:
        out = []
        for path in (names.OBJECT_PATH, "/", "/org", "/org/xenkdump"):
            reply = await c.call_raw("Introspect", interface=names.INTROSPECTABLE, path=path)
            out.append(str(reply.body[0]))
        return out

    obj, root, org, xk = with_client(work)
    assert obj == (DATA / "org.xenkdump.Kdump1.introspect.xml").read_text()
    # A generic client can walk the tree from / down to the object.
    assert [n.get("name") for n in ET.fromstring(root).findall("node")] == ["org"]
    assert [n.get("name") for n in ET.fromstring(org).findall("node")] == ["xenkdump"]
    assert [n.get("name") for n in ET.fromstring(xk).findall("node")] == ["Kdump1"]


def test_busctl_introspects_and_reads_a_property(serve_fake: Any, private_bus: str) -> None:
    """A client that is not ours (systemd's busctl) understands the reply."""
    if shutil.which("busctl") is None:
        pytest.skip("busctl (systemd) is not installed")
    serve_fake()
    out = subprocess.run(
        ["busctl", f"--address={private_bus}", "introspect", names.BUS_NAME, names.OBJECT_PATH],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert ".Reload" in out and ".CrashRegion" in out and "(tt)" in out
    got = subprocess.run(
        [
            "busctl",
            f"--address={private_bus}",
            "get-property",
            names.BUS_NAME,
            names.OBJECT_PATH,
            names.INTERFACE,
            "CrashRegion",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    assert got == "(tt) 4294967296 268435456"


def test_peer_ping_is_answered(serve_fake: Any) -> None:
    serve_fake()
    reply = with_client(lambda c: c.call_raw("Ping", interface=names.PEER))
    assert reply.message_type is MessageType.METHOD_RETURN


# ---- properties and GetStatus ----


def test_getstatus_getall_and_every_get_agree(serve_fake: Any) -> None:
    s = serve_fake()

    async def work(
        c: DaemonClient,
    ) -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
        each = {name: await c.get_property(name) for name in await c.get_all()}
        return await c.get_status(), await c.get_all(), each

    status, every, each = with_client(work)
    assert status == every == each
    snap = s.core.snapshot
    assert status["State"] == "loaded"
    assert status["CrashRegion"] == list(snap.crash_region)
    assert status["CrashRegionUsed"] == list(snap.crash_region_used)
    assert status["LoadedAt"] == snap.loaded_at
    assert status["InterfaceRevision"] == INTERFACE_REVISION
    assert status["UnloadedFirst"] is False


def test_property_types_on_the_wire_follow_the_xml(serve_fake: Any) -> None:
    serve_fake()

    async def work(c: DaemonClient) -> dict[str, str]:
        (values,) = (await c.call_raw("GetStatus")).body
        return {k: v.signature for k, v in values.items()}

    sigs = with_client(work)
    assert sigs["CrashRegion"] == "(tt)" and sigs["LoadedAt"] == "t"
    assert sigs["InterfaceRevision"] == "u" and sigs["UnloadedFirst"] == "b"
    assert sigs["LastSelfTest"] == sigs["CurrentSelfTest"] == sigs["LastDump"] == "a{sv}"
    assert sigs["DumpTarget"] == sigs["SelfTestSchedule"] == "s" and sigs["NextSelfTest"] == "t"
    assert len(sigs) == 28


def test_property_errors_are_named(serve_fake: Any) -> None:
    serve_fake()

    async def work(c: DaemonClient) -> list[tuple[str, str]]:
        return [
            await error_of(c, "Get", "ss", [names.INTERFACE, "Nope"], interface=names.PROPERTIES),
            await error_of(
                c,
                "Set",
                "ssv",
                [names.INTERFACE, "State", Variant("s", "loaded")],
                interface=names.PROPERTIES,
            ),
            await error_of(
                c, "Get", "ss", ["org.example.Other", "State"], interface=names.PROPERTIES
            ),
            await error_of(c, "Get", "s", [names.INTERFACE], interface=names.PROPERTIES),
        ]

    unknown, readonly, other, badsig = with_client(work)
    assert unknown[0] == names.ERROR_UNKNOWN_PROPERTY and "'Nope'" in unknown[1]
    assert readonly[0] == names.ERROR_PROPERTY_READ_ONLY and "State" in readonly[1]
    assert other[0] == names.ERROR_UNKNOWN_INTERFACE
    assert badsig[0] == names.ERROR_INVALID_ARGS and "expected arguments of type 'ss'" in badsig[1]


def test_properties_changed_carries_the_new_values(serve_fake: Any) -> None:
    s = serve_fake()

    async def work(c: DaemonClient) -> list[Message]:
        got = await listen(c, "PropertiesChanged")
        await asyncio.to_thread(
            s.on_loop, lambda: s.core.publish(state="degraded", last_error="kernal: unknown key")
        )
        await settle(got)
        return got

    (sig,) = with_client(work)
    iface, changed, invalidated = sig.body
    assert iface == names.INTERFACE and invalidated == []
    assert {k: v.value for k, v in changed.items()} == {
        "State": "degraded",
        "LastError": "kernal: unknown key",
    }


def test_dump_found_signal_and_last_dump_property(serve_fake: Any) -> None:
    s = serve_fake()
    dump = {
        "Path": "/var/crash/xen1-20261202T101500Z",
        "Time": 1_764_670_500,
        "Bytes": 92_591_124,
        "Result": "complete",
    }

    async def work(c: DaemonClient) -> tuple[list[Message], list[Message], dict[str, object]]:
        found = await listen(c, "DumpFound")
        changed = await listen(c, "PropertiesChanged")
        await asyncio.to_thread(s.on_loop, lambda: s.core.dump_found(dump))
        await settle(found)
        await settle(changed)
        (values,) = (await c.call_raw("GetStatus")).body
        return found, changed, {k: v.value for k, v in values.items()}

    found, changed, status = with_client(work)
    (sig,) = found
    assert sig.signature == "a{sv}"
    assert {k: (v.signature, v.value) for k, v in sig.body[0].items()} == {
        "Path": ("s", dump["Path"]),
        "Time": ("t", dump["Time"]),
        "Bytes": ("t", dump["Bytes"]),
        "Result": ("s", "complete"),
    }
    assert "LastDump" in changed[0].body[1]
    assert {k: v.value for k, v in status["LastDump"].items()} == dump  # type: ignore[attr-defined]


# ---- Reload / Unload ----


def test_reload_passes_options_and_reason_and_signals(serve_fake: Any) -> None:
    s = serve_fake()

    async def work(c: DaemonClient) -> tuple[dict[str, object], list[Message], list[Message]]:
        finished = await listen(c, "ReloadFinished")
        changed = await listen(c, "PropertiesChanged")
        status = await c.reload({"force": True, "kernel": "/boot/k", "reason": "test"})
        await settle(finished)
        await settle(changed)
        return status, finished, changed

    status, finished, changed = with_client(work)
    assert s.core.calls == [("reload", "test", {"force": True, "kernel": "/boot/k"})]
    assert status["Generation"] == 2 and status["LastReloadReason"] == "test"
    body = {k: v.value for k, v in finished[0].body[0].items()}
    assert body == {
        "Success": True,
        "Error": "",
        "Message": "",
        "Reason": "test",
        "Generation": 2,
        "State": "loaded",
    }
    assert "Generation" in changed[0].body[1]


def test_reload_default_reason_names_the_caller_uid(serve_fake: Any) -> None:
    s = serve_fake()
    with_client(lambda c: c.reload({}))
    assert s.core.calls == [("reload", "Reload requested over D-Bus by uid 0", {})]


def test_unload_and_its_own_signal(serve_fake: Any) -> None:
    s = serve_fake()

    async def work(c: DaemonClient) -> tuple[dict[str, object], list[Message], list[Message]]:
        unloaded = await listen(c, "UnloadFinished")
        reloaded = await listen(c, "ReloadFinished")
        status = await c.unload({"wait": True})
        await settle(unloaded)
        return status, unloaded, reloaded

    status, unloaded, reloaded = with_client(work)
    assert status["State"] == "not-loaded" and status["CrashRegionUsed"] == [0, 0]
    assert s.core.calls == [("unload", "", {})]
    body = {k: v.value for k, v in unloaded[0].body[0].items()}
    assert body["Success"] is True and body["State"] == "not-loaded"
    assert reloaded == []


@pytest.mark.parametrize(
    ("signature", "body", "expect"),
    [
        ("s", ["force"], "Reload: expected arguments of type 'a{sv}', got 's'"),
        ("", [], "Reload: expected arguments of type 'a{sv}', got ''"),
        ("a{sv}", [{"forse": Variant("b", True)}], "Reload option 'forse': unknown"),
        ("a{sv}", [{"force": Variant("s", "yes")}], "expected D-Bus type 'b', got 's'"),
        ("a{sv}", [{"kernel": Variant("u", 7)}], "Reload option 'kernel': expected D-Bus type 's'"),
    ],
)
def test_invalid_arguments_get_a_named_error_and_change_nothing(
    serve_fake: Any, signature: str, body: list[object], expect: str
) -> None:
    s = serve_fake()

    async def work(c: DaemonClient) -> tuple[tuple[str, str], dict[str, object]]:
        return await error_of(c, "Reload", signature, body), await c.get_status()

    (name, text), status = with_client(work)
    assert name == names.ERROR_INVALID_ARGS and expect in text
    assert s.core.calls == [] and status["Generation"] == 1


def test_unknown_method_and_interface(serve_fake: Any) -> None:
    serve_fake()

    async def work(c: DaemonClient) -> list[tuple[str, str]]:
        return [
            await error_of(c, "Explode"),
            await error_of(c, "Reload", "a{sv}", [{}], interface="org.example.Other"),
        ]

    method, iface = with_client(work)
    assert method[0] == names.ERROR_UNKNOWN_METHOD and "'Explode'" in method[1]
    assert iface[0] == names.ERROR_UNKNOWN_INTERFACE


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (ConfigError("/etc/xenkdump.yaml: kernal: unknown key"), names.ERROR_INVALID_CONFIG),
        (ImageError("/boot/vmlinuz: expected a bzImage, found ELF"), names.ERROR_IMAGE_INVALID),
        (PlanError("crash region: needs 80 MiB, has 64 MiB"), names.ERROR_DOES_NOT_FIT),
        (HypervisorUnavailable("xc_interface_open", 13), names.ERROR_HYPERVISOR_UNAVAILABLE),
        (HypervisorError("xc_kexec_load", 22, "bad segment"), names.ERROR_HYPERVISOR_FAILED),
        (BusyError("a load is already running"), names.ERROR_BUSY),
        (OperationError("/run/xenkdump: read-only"), names.ERROR_FAILED),
        (ZeroDivisionError("bug"), names.ERROR_INTERNAL),
    ],
)
def test_core_errors_cross_as_named_errors(serve_fake: Any, exc: BaseException, name: str) -> None:
    s = serve_fake()
    s.core.fail = exc

    async def work(c: DaemonClient) -> tuple[tuple[str, str], list[Message], dict[str, object]]:
        finished = await listen(c, "ReloadFinished")
        err = await error_of(c, "Reload", "a{sv}", [{}])
        await settle(finished)
        return err, finished, await c.get_status()

    (got, text), finished, status = with_client(work)
    assert got == name
    assert "\n" not in text and (str(exc) in text or name == names.ERROR_INTERNAL)
    body = {k: v.value for k, v in finished[0].body[0].items()}
    assert body["Success"] is False and body["Error"] == name
    # The service survives and keeps answering.
    assert status["State"] == "degraded"


def test_client_maps_remote_errors_to_exit_codes(serve_fake: Any) -> None:
    s = serve_fake()
    s.core.fail = ConfigError("/etc/xenkdump.yaml: kernal: unknown key")
    with pytest.raises(errors.RemoteError) as info:
        with_client(lambda c: c.reload({}))
    assert info.value.name == names.ERROR_INVALID_CONFIG and info.value.exit_code == 2
    s.core.fail = HypervisorError("xc_kexec_load", 16)
    with pytest.raises(errors.RemoteError) as info:
        with_client(lambda c: c.reload({}))
    assert info.value.exit_code == 1 and "EBUSY" in str(info.value)


def test_status_is_prompt_while_a_reload_runs_and_busy_without_wait(serve_fake: Any) -> None:
    s = serve_fake()
    gate: asyncio.Event = s.run(_make_event())
    s.core.gate = gate

    async def reads(c: DaemonClient) -> None:
        for _ in range(20):
            await c.get_status()

    async def work(c: DaemonClient) -> tuple[tuple[str, str], dict[str, object]]:
        running = asyncio.ensure_future(c.reload({}))
        while not s.core.busy:
            await asyncio.sleep(0.01)
        # 20 reads answered while the reload is parked (the gate opens only after them);
        # a status queued behind the reload would never come (no timing goal here).
        try:
            await asyncio.wait_for(reads(c), 60)
            other = await DaemonClient.connect()
            async with other:
                busy = await error_of(other, "Reload", "a{sv}", [{"wait": Variant("b", False)}])
        finally:
            s.loop.call_soon_threadsafe(gate.set)
        return busy, await running

    busy, status = with_client(work)
    assert busy[0] == names.ERROR_BUSY and "already running" in busy[1]
    assert status["Generation"] == 2


def test_150_concurrent_clients_are_all_answered(serve_fake: Any, private_bus: str) -> None:
    """Bursts fill the service's socket buffer; it must wait, not leave the bus (EAGAIN)."""
    serve_fake()

    async def go() -> list[object]:
        conns = [await DaemonClient.connect(private_bus) for _ in range(150)]

        async def one(c: DaemonClient) -> None:
            for _ in range(5):
                # a bound that only a lost reply reaches: 750 calls queue at the service,
                # and a loaded machine answers them slowly
                await asyncio.wait_for(c.get_status(), 60)

        try:
            return await asyncio.gather(*(one(c) for c in conns), return_exceptions=True)
        finally:
            for c in conns:
                await c.close()

    results = client.run(go())
    assert [r for r in results if r is not None] == []
    assert with_client(lambda c: c.get_property("State")) == "loaded"  # still on the bus


async def _make_event() -> asyncio.Event:
    return asyncio.Event()


# ---- who may call ----


def test_daemon_side_uid_check(serve_fake: Any) -> None:
    s = serve_fake(allowed_uids=frozenset({4242}))

    async def work(c: DaemonClient) -> tuple[tuple[str, str], tuple[str, str], dict[str, object]]:
        return (
            await error_of(c, "Reload", "a{sv}", [{}]),
            await error_of(c, "Unload", "a{sv}", [{}]),
            await c.get_status(),  # reading is for everyone
        )

    reload, unload, status = with_client(work)
    assert reload == (names.ERROR_NOT_PERMITTED, "Reload: uid 0 may not call it (only root may)")
    assert unload[0] == names.ERROR_NOT_PERMITTED
    assert s.core.calls == [] and status["Generation"] == 1


def test_nobody_can_read_but_not_reload_even_on_an_open_bus(
    serve_fake: Any, private_bus: str, run_as_nobody: Any
) -> None:
    if shutil.which("busctl") is None:
        pytest.skip("busctl (systemd) is not installed")
    s = serve_fake()
    base = ["busctl", f"--address={private_bus}"]
    read = run_as_nobody(
        [*base, "call", names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, "GetStatus"]
    )
    assert read.returncode == 0, read.stderr
    assert '"State" s "loaded"' in read.stdout
    denied = run_as_nobody(
        [*base, "call", names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, "Reload", "a{sv}", "0"]
    )
    assert denied.returncode != 0
    assert "uid 65534 may not call it" in denied.stderr
    assert s.core.calls == []


# ---- serve() itself ----


def test_name_taken_is_one_line_operation_error(serve_fake: Any, private_bus: str) -> None:
    serve_fake()

    async def second() -> None:
        await serve(_Idle(), private_bus)

    with pytest.raises(
        OperationError, match=r"another process owns it \(is xenkdumpd already running\?\)"
    ):
        client.run(second())


def test_no_bus_is_one_line_operation_error(tmp_path: Path) -> None:
    address = f"unix:path={tmp_path}/nothing"

    async def go() -> None:
        await serve(_Idle(), address)

    with pytest.raises(
        OperationError, match=rf"cannot connect to the D-Bus system bus at {address}"
    ):
        client.run(go())


def test_close_releases_the_name(serve_fake: Any) -> None:
    s = serve_fake()
    assert with_client(lambda c: c.has_owner())
    s.run(s.handle.close())
    assert not with_client(lambda c: c.has_owner())
    with pytest.raises(OperationError, match=r"no owner of org\.xenkdump\.Kdump1"):
        with_client(lambda c: c.require_owner())


class _Idle:
    def status(self) -> Any:
        raise AssertionError("not called")

    async def reload(self, options: Any) -> Any:
        raise AssertionError("not called")

    async def unload(self, options: Any) -> Any:
        raise AssertionError("not called")

    def subscribe(self, callback: Any) -> None:
        pass

    def on_dump_found(self, callback: Any) -> None:
        pass

    async def self_test(self, options: Any) -> str:
        raise AssertionError("not called")

    def cancel_self_test(self, test_id: str) -> None:
        raise AssertionError("not called")

    @property
    def selftests(self) -> Any:
        return self


# ---- self-tests (the runner and the D-Bus edge are real; the job is scripted) ----


def test_self_test_reports_progress_and_sets_last_self_test(serve_fake: Any) -> None:
    serve_fake()
    progress: list[tuple[str, float]] = []

    async def work(c: DaemonClient) -> tuple[tuple[str, bool, dict[str, object]], dict[str, Any]]:
        done = await c.self_test({}, lambda stage, f: progress.append((stage, f)))
        return done, await c.get_status()

    (test_id, passed, result), status = with_client(work)
    assert passed and result["Passed"] is True and result["Id"] == test_id
    assert [s for s, _ in progress] == [s.value for s in LEVEL_STAGES[Level.BOOT]]
    assert [f for _, f in progress] == sorted(f for _, f in progress) and progress[-1][1] == 1.0
    assert result["ImageSha256"] == status["ImageSha256"]  # it tested the armed image
    assert status["LastSelfTest"] == result
    assert status["CurrentSelfTest"] == {}  # none runs now
    assert result["Crashkernel"] == "crashkernel=192M" and result["PeakMemory"] == 74 << 20
    # The capture agent's metadata.json steps, as structs (name, rc, seconds, bytes, command).
    assert result["DumpResult"] == "complete"
    assert result["DumpSteps"] == [
        ["dmesg", 1, 0.02, 0, "mdf"],
        ["vmcore raw", 0, 0.1, 65536, "cat"],
    ]


def test_one_self_test_at_a_time_and_cancel_by_id(
    serve_fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ScriptedJob, "hold", True)
    serve_fake()

    async def work(c: DaemonClient) -> tuple[Any, ...]:
        finished = await listen(c, "SelfTestFinished")
        (test_id,) = await c.call("SelfTest", "a{sv}", [{}])
        busy = await error_of(c, "SelfTest", "a{sv}", [{}])
        wrong = await error_of(c, "CancelSelfTest", "s", ["000000000000"])
        deadline = time.monotonic() + 60  # the scripted job holds after crash-kernel-up
        while True:
            status = await c.get_status()  # prompt while it runs
            if dict(status["CurrentSelfTest"]).get("Stage") == "crash-kernel-up":  # type: ignore[call-overload]
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        await c.cancel_self_test(test_id)
        await settle(finished, timeout=60)
        return test_id, busy, wrong, status, finished

    test_id, busy, wrong, status, finished = with_client(work)
    assert busy[0] == names.ERROR_BUSY and test_id in busy[1]
    assert wrong[0] == names.ERROR_INVALID_ARGS
    assert "no self-test '000000000000' is running" in wrong[1] and test_id in wrong[1]
    assert status["State"] == "loaded"
    assert status["CurrentSelfTest"] == {
        "Id": test_id, "Level": "boot", "Stage": "crash-kernel-up", "Fraction": 2 / 6
    }  # fmt: skip
    (msg,) = finished
    assert msg.body[0] == test_id and msg.body[1] is False
    assert msg.body[2]["Reason"].value == "cancelled"


@pytest.mark.parametrize(
    ("options", "expect"),
    [
        ({"timeout": Variant("s", "60")}, "expected D-Bus type 'u', got 's'"),
        ({"level": Variant("s", "full")}, "expected 'boot' or 'handoff', got 'full'"),
        ({"timeout": Variant("u", 5)}, "expected 10 to 86400 seconds, got 5"),
        ({"speed": Variant("u", 5)}, "SelfTest option 'speed': unknown"),
        ({"xen": Variant("s", "xen.gz")}, "'xen': expected an absolute path, got 'xen.gz'"),
        ({"dom0_kernel": Variant("u", 1)}, "expected D-Bus type 's', got 'u'"),
        (
            {"level": Variant("s", "boot"), "xen": Variant("s", "/boot/xen.gz")},
            "SelfTest option 'xen': only with level 'handoff'",
        ),
    ],
)
def test_self_test_options_are_checked_at_the_edge(
    serve_fake: Any, options: dict[str, Variant], expect: str
) -> None:
    s = serve_fake()

    async def work(c: DaemonClient) -> tuple[str, str]:
        return await error_of(c, "SelfTest", "a{sv}", [options])

    name, text = with_client(work)
    assert name == names.ERROR_INVALID_ARGS and expect in text, text
    assert s.core.calls == []


def test_a_refused_self_test_is_a_named_error_and_leaves_it_free(
    serve_fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusal = OperationError("not enough free memory for the staging VM: it needs 352 MiB")
    monkeypatch.setattr(ScriptedJob, "refuse", refusal)
    serve_fake()

    async def work(c: DaemonClient) -> tuple[tuple[str, str], tuple[str, str]]:
        return (
            await error_of(c, "SelfTest", "a{sv}", [{}]),
            await error_of(c, "SelfTest", "a{sv}", [{}]),
        )

    first, second = with_client(work)
    assert first == (names.ERROR_FAILED, str(refusal))
    assert second == first  # not Busy: nothing was started
