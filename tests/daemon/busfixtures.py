"""Fixtures for the daemon tier: a real, private dbus-daemon per test.

``private_bus`` yields the address of a dbus-daemon started with its own config in a
fresh directory (no system or session bus is touched).  The socket directory is
world-searchable so a test may also connect as another user (setpriv) to check uid
handling.  ``dbus_daemon`` starts one with a caller-supplied <policy> body, e.g. one
that includes systemd/org.xenkdump.Kdump1.conf.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dbus_fast import Message, MessageType

import asyncclient as client
import privatebus
from asyncclient import DaemonClient
from xenkdump.dbus import names
from xenkdump.errors import BusyError
from xenkdump.requests import ReloadOptions, SelfTestOptions, UnloadOptions
from xenkdump.selftest.job import Job, Options, Result
from xenkdump.selftest.plan import Image
from xenkdump.selftest.runner import SelfTests
from xenkdump.selftest.stages import LEVEL_STAGES, Level, Stage
from xenkdump.status import Status

T = TypeVar("T")

StartBus = Callable[[str], str]


@pytest.fixture
def dbus_daemon() -> Iterator[StartBus]:
    """``start(policy_xml) -> address``: a real dbus-daemon with that policy (privatebus.py)."""
    with contextlib.ExitStack() as stack:

        def start(policy: str) -> str:
            # Not under tmp_path: its parents are mode 0700, which would lock out
            # the tests that connect as another user.
            directory = Path(tempfile.mkdtemp(prefix="xenkdump-bus-"))
            stack.callback(shutil.rmtree, directory, ignore_errors=True)
            directory.chmod(0o755)
            return stack.enter_context(privatebus.running(directory, policy))

        yield start


@pytest.fixture
def private_bus(dbus_daemon: StartBus, monkeypatch: pytest.MonkeyPatch) -> str:
    """The address of a private, permissive dbus-daemon; also set as DBUS_SYSTEM_BUS_ADDRESS."""
    address = dbus_daemon(privatebus.OPEN)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
    return address


RunAs = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


@pytest.fixture
def run_as_nobody() -> RunAs:
    """``run(argv)``: run a command as the unprivileged user nobody (the tests run as root)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run a client as another user")

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        return subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            env=environ,
            check=False,
        )

    return run


# ---- an in-test core behind the real D-Bus service ----
#
# The D-Bus tests drive xenkdump.dbus.service.serve() with this small core, which
# has DaemonCore's API (status/reload/unload/subscribe) and lets a test script its
# outcomes; test_dbus_daemon.py runs the same calls against the real xenkdumpd.


def loaded_status() -> Status:
    """The status of a loaded host."""
    return Status(
        state="loaded",
        state_reason="crash kernel armed (generation 1)",
        crash_kernel="/boot/vmlinuz-6.1.0-test",
        initrd="/boot/initrd.img-6.1.0-test",
        command_line="console=ttyS0 irqpoll nr_cpus=1",
        image_sha256="ab" * 32,
        loaded_at=1_764_000_000_000_000,
        last_reload_reason="start: no record",
        crash_region=(0x1_0000_0000, 0x1000_0000),
        crash_region_used=(0x1_0000_0000, 0x800_0000),
        required_bytes=0x300_0000,
        xen_version="4.17.3",
        daemon_version="0.1.0",
        config_digest="cd" * 32,
        generation=1,
    )


@pytest.fixture
def snapshot() -> Status:
    """The status of a loaded host."""
    return loaded_status()


class ScriptedJob(Job):
    """A self-test job without a VM: reports every stage, then passes, unless told to
    hold (until cancelled) or refused at preflight.  The runner and the D-Bus edge
    around it are the real ones."""

    hold = False
    refuse: BaseException | None = None

    def preflight(self) -> str:
        if self.refuse is not None:
            raise self.refuse
        return "qemu"

    def run(self) -> Result:
        result = Result(self.id, str(self.level), 1_764_000_000.0)
        result.image_sha256 = self.image.image_sha256
        stages = LEVEL_STAGES[self.level]
        for i, stage in enumerate(stages[:2]):
            self.progress(stage, (i + 1) / len(stages))
        if self.hold:
            self._cancel.wait(30)
            result.failed_stage, result.reason = Stage.CRASH_KERNEL_UP.value, "cancelled"
            return result
        for i, stage in enumerate(stages[2:], start=2):
            self.progress(stage, (i + 1) / len(stages))
        result.passed, result.duration, result.accel = True, 12.5, "tcg"
        result.crash_kernel_boot_seconds, result.peak_memory = 3.5, 74 << 20
        result.headroom, result.crashkernel = 182 << 20, "crashkernel=192M"
        result.dump_result = "complete"
        result.dump_steps = [
            {"name": "dmesg", "exit_code": 1, "seconds": 0.02, "bytes": 0, "command": "mdf"},
            {
                "name": "vmcore raw",
                "exit_code": 0,
                "seconds": 0.1,
                "bytes": 65536,
                "command": "cat",
            },
        ]
        return result


class FakeCore:
    """DaemonCore's API with scripted results; runs on the service's loop."""

    def __init__(self) -> None:
        self.snapshot = loaded_status()
        self.subscribers: list[Callable[[Status, Status], None]] = []
        self.dump_listeners: list[Callable[[Mapping[str, object]], None]] = []
        self.calls: list[tuple[str, str, dict[str, object]]] = []
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None  # set: reload/unload wait for it
        self.busy = False
        self.selftests = SelfTests(
            on_change=lambda: self.publish(
                last_self_test=self.selftests.last_status(),
                current_self_test=self.selftests.current_status(),
            ),
            job_factory=ScriptedJob,
        )

    async def self_test(self, options: SelfTestOptions) -> str:
        self.calls.append(("selftest", "", dataclasses.asdict(options)))
        snap = self.snapshot
        image = Image(snap.crash_kernel, snap.initrd, snap.command_line, snap.crash_region[1])
        image = dataclasses.replace(image, image_sha256=snap.image_sha256)
        return await self.selftests.start(
            image,
            Options(level=Level(options.level or "boot"), timeout=float(options.timeout or 900)),
        )

    def cancel_self_test(self, test_id: str) -> None:
        self.selftests.cancel(test_id)

    def status(self) -> Status:
        return self.snapshot

    def subscribe(self, callback: Callable[[Status, Status], None]) -> None:
        self.subscribers.append(callback)

    def on_dump_found(self, callback: Callable[[Mapping[str, object]], None]) -> None:
        self.dump_listeners.append(callback)

    def dump_found(self, dump: Mapping[str, object]) -> None:
        """As DaemonCore.check_dumps when it finds a new dump: LastDump, then DumpFound."""
        self.publish(last_dump=tuple(sorted(dump.items())))
        for callback in self.dump_listeners:
            callback(dump)

    def publish(self, **changes: object) -> None:
        old, self.snapshot = self.snapshot, self.snapshot._replace(**changes)  # type: ignore[arg-type]
        for callback in self.subscribers:
            callback(old, self.snapshot)

    async def _work(self, kind: str, reason: str, options: ReloadOptions | UnloadOptions) -> Status:
        # The options the caller changed from their defaults (reason apart).
        given = {
            f.name: getattr(options, f.name)
            for f in dataclasses.fields(options)
            if f.name != "reason" and getattr(options, f.name) != f.default
        }
        self.calls.append((kind, reason, given))
        if self.busy and not options.wait:
            raise BusyError(f"a {kind} is already running")
        self.busy = True
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail is not None:
                self.publish(state="degraded", last_error=str(self.fail))
                raise self.fail
            if kind == "reload":
                gen = self.snapshot.generation + 1
                self.publish(
                    generation=gen,
                    last_reload_reason=reason,
                    state_reason=f"crash kernel armed (generation {gen})",
                )
            else:
                self.publish(state="not-loaded", crash_kernel="", crash_region_used=(0, 0))
            return self.snapshot
        finally:
            self.busy = False

    async def reload(self, options: ReloadOptions) -> Status:
        return await self._work("reload", options.reason or "", options)

    async def unload(self, options: UnloadOptions) -> Status:
        return await self._work("unload", "", options)


class Served:
    """serve(FakeCore) running on its own event loop in a thread."""

    def __init__(self, address: str, allowed_uids: frozenset[int]) -> None:
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.core = self.run(self._make_core())
        from xenkdump.dbus.service import serve  # noqa: PLC0415

        self.handle = self.run(serve(self.core, address, allowed_uids=allowed_uids))

    async def _make_core(self) -> FakeCore:
        return FakeCore()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the service's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self.run(call())

    def close(self) -> None:
        try:
            self.run(self.handle.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def serve_fake(private_bus: str) -> Iterator[Callable[..., Served]]:
    """``start(allowed_uids=frozenset({0}), address=private_bus)``: the service over a FakeCore."""
    started: list[Served] = []

    def start(allowed_uids: frozenset[int] = frozenset({0}), address: str | None = None) -> Served:
        s = Served(address or private_bus, allowed_uids)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


# ---- talking to a served object from a test ----


def with_client(work: Callable[[DaemonClient], Awaitable[T]]) -> T:
    async def go() -> T:
        c = await DaemonClient.connect()
        async with c:
            return await work(c)

    return client.run(go())


async def listen(c: DaemonClient, member: str) -> list[Message]:
    """Collect the signals ``member`` sent by our object, from now on."""
    got: list[Message] = []
    await c.add_match(f"type='signal',path='{names.OBJECT_PATH}',member='{member}'")

    def handler(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == member:
            got.append(msg)

    c.bus.add_message_handler(handler)
    return got


async def settle(got: list[Message], count: int = 1, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
