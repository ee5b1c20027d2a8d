"""The bus connection both ends use, and the one dbus-fast workaround in xenkdump.

dbus-fast's socket writer (``dbus_fast.aio.message_bus._MessageWriter``, a private
class) treats EAGAIN from send() as a fatal error and drops the connection
(altdesktop/python-dbus-next#153, inherited by dbus-fast): with ~100 clients calling
at once the socket buffer fills and the service silently leaves the bus.  It also
sends queued messages newest-first.  ``_Writer`` waits for the socket to become
writable instead, and keeps the queue in order.

The fix subclasses a private class, so it is applied only where it was checked:
dbus-fast 1.x, whose writer is plain Python with the attributes used below
(``workaround_applies``).  Elsewhere (a compiled writer, another major version) the
upstream writer stays and a warning says so once.  tests/daemon/test_dbus_transport.py
fails when the private API changes or when upstream stops dropping the connection,
which is when this module should be revisited.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from dbus_fast import BusType
from dbus_fast.__version__ import __version__ as dbus_fast_version
from dbus_fast.aio.message_bus import MessageBus, _MessageWriter

from xenkdump.dbus.names import system_bus_address
from xenkdump.errors import OperationError

__all__ = ["new_bus", "system_bus_address", "workaround_applies"]

log = logging.getLogger("xenkdump.dbus")

# The major version the workaround was written and tested for.
TESTED_MAJOR = 1
# What the fixed write_callback reads and writes on the writer (set by upstream's __init__).
WRITER_ATTRIBUTES = ("messages", "bus", "sock", "loop", "buf", "fd", "offset", "unix_fds", "fut")


def workaround_applies() -> str | None:
    """None when ``_Writer`` may replace dbus-fast's writer; else why not, one line."""
    major = dbus_fast_version.split(".", 1)[0]
    if major != str(TESTED_MAJOR):
        return f"dbus-fast {dbus_fast_version}: the writer fix was checked on {TESTED_MAJOR}.x"
    callback = getattr(_MessageWriter, "write_callback", None)
    if not (inspect.isfunction(_MessageWriter.__init__) and inspect.isfunction(callback)):
        return f"dbus-fast {dbus_fast_version}: its writer is compiled, not Python"
    init_names = set(_MessageWriter.__init__.__code__.co_names)
    missing = [a for a in WRITER_ATTRIBUTES if a not in init_names]
    if missing:
        return f"dbus-fast {dbus_fast_version}: its writer has no {', '.join(missing)}"
    return None


class _Writer(_MessageWriter):
    """dbus_fast's socket writer, fixed for load (see the module docstring)."""

    buf: Any  # memoryview | None; upstream leaves it untyped

    def write_callback(self, remove_writer: bool = True) -> None:
        try:
            while True:
                if self.buf is None:
                    if not self.messages:
                        if remove_writer:
                            self.loop.remove_writer(self.fd)
                        return
                    buf, unix_fds, fut = self.messages.popleft()
                    self.unix_fds = unix_fds
                    self.buf = memoryview(buf)
                    self.offset = 0
                    self.fut = fut
                if self.unix_fds:
                    raise OperationError("xenkdumpd does not pass file descriptors over D-Bus")
                try:
                    self.offset += self.sock.send(self.buf[self.offset :])
                except (BlockingIOError, InterruptedError):
                    # Socket buffer full: resume when the loop says it is writable.
                    self.loop.add_writer(self.fd, self.write_callback)
                    return
                if self.offset >= len(self.buf):
                    self.buf = None
                    if self.fut is not None and not self.fut.done():
                        self.fut.set_result(None)
                else:
                    self.loop.add_writer(self.fd, self.write_callback)
                    return
        except Exception as exc:
            if self.fut is not None and not self.fut.done():
                # A closed socket (the bus went away) is a disconnect, which _finalize
                # reports to every pending call; failing this send's future as well
                # would only leave an exception nobody retrieves.
                if self.bus._user_disconnect or isinstance(exc, OSError):
                    self.fut.set_result(None)
                else:
                    self.fut.set_exception(exc)
            self.bus._finalize(exc)


_WHY_NOT = workaround_applies()
_warned = False


def new_bus(address: str) -> MessageBus:
    """An unconnected dbus_fast bus for ``address``, with the fixed writer where it applies."""
    global _warned  # noqa: PLW0603 (warn once per process)
    bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM)
    if _WHY_NOT is None:
        bus._writer = _Writer(bus)
    elif not _warned:
        _warned = True
        log.warning("%s; many clients at once may drop the bus connection", _WHY_NOT)
    return bus
