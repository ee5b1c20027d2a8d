"""The dbus-fast writer workaround (dbus/transport.py): the private API it relies on,
the upstream behaviour it fixes, and the fix itself.

When one of the first three tests fails, dbus-fast changed: re-check the workaround
(and delete it if upstream no longer drops the connection on EAGAIN).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import subprocess
import sys
from typing import Any

import pytest
from dbus_fast.aio.message_bus import MessageBus, _MessageWriter

from importcheck import run_and_list, under
from xenkdump.dbus import transport


class FakeFuture:
    def __init__(self) -> None:
        self.result: object = "pending"

    def done(self) -> bool:
        return self.result != "pending"

    def set_result(self, value: object) -> None:
        self.result = value

    def set_exception(self, exc: BaseException) -> None:
        self.result = exc


class FakeSocket:
    """send() raises BlockingIOError for the first ``full`` calls, then takes everything."""

    def __init__(self, full: int = 0) -> None:
        self.full = full
        self.sent: list[bytes] = []

    def send(self, data: memoryview) -> int:
        if self.full:
            self.full -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        self.sent.append(bytes(data))
        return len(data)


class FakeLoop:
    def __init__(self) -> None:
        self.writers: list[str] = []

    def add_writer(self, fd: int, callback: object) -> None:
        self.writers.append("add")

    def remove_writer(self, fd: int) -> None:
        self.writers.append("remove")


class FakeBus:
    """The attributes of dbus_fast's MessageBus that _MessageWriter reads."""

    def __init__(self, sock: FakeSocket) -> None:
        self._negotiate_unix_fd = False
        self._sock = sock
        self._loop = FakeLoop()
        self._fd = 99
        self._user_disconnect = False
        self.finalized: list[BaseException | None] = []

    def _finalize(self, exc: BaseException | None = None) -> None:
        self.finalized.append(exc)


def writer(cls: type[Any], sock: FakeSocket) -> tuple[Any, FakeBus, list[FakeFuture]]:
    bus = FakeBus(sock)
    w = cls(bus)
    futures = [FakeFuture(), FakeFuture()]
    w.messages.append((b"first", [], futures[0]))
    w.messages.append((b"second", [], futures[1]))
    return w, bus, futures


def test_the_installed_dbus_fast_is_the_one_the_workaround_was_checked_on(
    private_bus: str,
) -> None:
    assert transport.workaround_applies() is None

    async def writer_type() -> type:
        bus = transport.new_bus(private_bus)
        bus._sock.close()
        return type(bus._writer)

    assert asyncio.run(writer_type()) is transport._Writer


def test_private_writer_api_is_as_relied_on(private_bus: str) -> None:
    assert set(inspect.signature(_MessageWriter.__init__).parameters) == {"self", "bus"}
    params = inspect.signature(_MessageWriter.write_callback).parameters
    assert list(params) == ["self", "remove_writer"] and params["remove_writer"].default is True
    fake: Any = FakeBus(FakeSocket())
    w = _MessageWriter(fake)
    for name in transport.WRITER_ATTRIBUTES:
        assert hasattr(w, name), name
    assert isinstance(w.messages, collections.deque)
    assert (w.buf, w.offset, w.unix_fds, w.fut) == (None, 0, None, None)

    async def upstream_bus() -> MessageBus:
        bus = MessageBus(bus_address=private_bus)
        bus._sock.close()
        return bus

    bus = asyncio.run(upstream_bus())
    assert type(bus._writer) is _MessageWriter
    assert callable(bus._finalize) and bus._user_disconnect is False


def test_upstream_still_drops_the_connection_on_eagain_and_sends_newest_first() -> None:
    w, bus, _ = writer(_MessageWriter, FakeSocket(full=1))
    w.write_callback()
    assert len(bus.finalized) == 1 and isinstance(bus.finalized[0], BlockingIOError), (
        "dbus-fast no longer drops the connection on EAGAIN: the workaround may go"
    )
    w, bus, _ = writer(_MessageWriter, FakeSocket())
    w.write_callback()
    assert w.bus._sock.sent == [b"second", b"first"], "dbus-fast now sends in order"


def test_fixed_writer_waits_for_the_socket_and_keeps_the_order() -> None:
    sock = FakeSocket(full=2)
    w, bus, futures = writer(transport._Writer, sock)
    w.write_callback()
    w.write_callback()
    assert bus.finalized == [] and bus._loop.writers == ["add", "add"]
    assert [f.done() for f in futures] == [False, False]
    w.write_callback()
    assert sock.sent == [b"first", b"second"]
    assert [f.result for f in futures] == [None, None]
    assert bus._loop.writers[-1] == "remove" and bus.finalized == []


def test_fixed_writer_reports_a_closed_socket_as_a_disconnect() -> None:
    class Closed(FakeSocket):
        def send(self, data: memoryview) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    w, bus, futures = writer(transport._Writer, Closed())
    w.write_callback()
    assert len(bus.finalized) == 1 and isinstance(bus.finalized[0], BrokenPipeError)
    assert futures[0].result is None  # not an exception nobody retrieves


@pytest.mark.parametrize("version", ["2.44.1", "0.9"])
def test_other_major_versions_keep_the_upstream_writer(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(transport, "dbus_fast_version", version)
    why = transport.workaround_applies()
    assert why is not None and version in why and "1.x" in why


def test_the_client_imports_nothing_of_the_service() -> None:
    """xenkdumpctl's client: no server module, and none of the daemon's asyncio stack."""
    _, out = run_and_list("import xenkdump.dbus.client")
    assert "xenkdump.dbus.client" in out
    server_side = ("xenkdump.dbus.service", "xenkdump.dbus.transport", "xenkdump.daemon")
    assert under(out, (*server_side, "dbus_fast", "asyncio")) == []


def test_the_daemon_bus_stack_keeps_glib_out() -> None:
    """dbus-fast would load PyGObject and GLib (memory xenkdumpd does not need)."""
    code = (
        "import sys, xenkdump.dbus.service; "
        "print(sys.modules['gi'], sorted(m for m in sys.modules if m.startswith('gi.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["None", "[]"]
