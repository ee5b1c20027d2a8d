"""xenkdumpctl's client of org.xenkdump.Kdump1: synchronous, and quick to start.

A command makes one or two calls and exits, so this client uses libdbus through
python3-dbus's C extension, ``_dbus_bindings`` (it imports in a millisecond), rather
than the daemon's asyncio stack or python3-dbus's Python layer, which imports
logging, threading and an XML parser for proxies this client does not use; see
bench/cli.py.  The extension's API used here (a bus connection, method-call messages,
a blocking call) is the one python3-dbus's own ``dbus.connection`` is built on;
tests/daemon/test_dbus_client.py fails if it changes.  It honours
$DBUS_SYSTEM_BUS_ADDRESS.  D-Bus error replies become
``xenkdump.dbus.errors.RemoteError`` (converted in dbus/errors.py); no bus, or nobody
owning org.xenkdump.Kdump1, becomes ``DaemonNotRunningError``.
"""

from __future__ import annotations

from collections.abc import Mapping

import _dbus_bindings as libdbus

from xenkdump.dbus import names
from xenkdump.errors import InputError, OperationError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

# Reload may wait for a running load (seconds on real hardware, more under emulation).
CALL_TIMEOUT = 600.0
# The bus's own calls (NameHasOwner) are answered by dbus-daemon at once.
BUS_TIMEOUT = 25.0


class _Bus(libdbus.Connection):  # type: ignore[misc]
    """A bus connection of our own type.

    python3-dbus's Python layer only ever creates connections of a Python subclass of
    the extension's ``Connection``; python3-dbus 1.4.0 (Debian 13) crashes the
    interpreter (SIGSEGV in ``_new_for_bus``) when a bus is opened on the extension's
    own type while other clients are on the bus, so this client does as its Python
    layer does (tests/e2e's Debian 13 dom0 runs ``xenkdumpctl status``).
    """


class DaemonNotRunningError(OperationError):
    """No bus, or nobody owns org.xenkdump.Kdump1 on it."""


def plain(value: Any) -> Any:
    """Plain Python values from libdbus's types (structs become lists)."""
    if isinstance(value, libdbus.Boolean):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _options(options: Mapping[str, object], allowed: Mapping[str, str]) -> Any:
    """An a{sv} from plain values, typed by the option table in xenkdump.requests."""
    types = {"b": libdbus.Boolean, "s": libdbus.String, "u": libdbus.UInt32}
    out = {}
    for key, value in options.items():
        if key not in allowed:
            raise InputError(f"option {key!r}: unknown (expected one of {sorted(allowed)})")
        out[key] = types[allowed[key]](value, variant_level=1)
    return libdbus.Dictionary(out, signature="sv")


def _dbus_error(exc: Exception) -> tuple[str, str] | None:
    """(error name, message) of a libdbus error; None for anything else.

    libdbus raises python3-dbus's DBusException, whose module is imported here, on
    failure only (it loads python3-dbus's whole Python layer).
    """
    from dbus.exceptions import DBusException  # noqa: PLC0415

    if not isinstance(exc, DBusException):
        return None
    return str(exc.get_dbus_name() or ""), str(exc.get_dbus_message() or "")


class DaemonClient:
    """One connection to the bus, talking to /org/xenkdump/Kdump1."""

    def __init__(self, bus_address: str | None = None) -> None:
        self.address = names.system_bus_address(bus_address)
        try:
            self.bus = _Bus._new_for_bus(self.address)
        except Exception as exc:
            error = _dbus_error(exc)
            if error is None:
                raise
            from xenkdump.dbus.errors import one_line  # noqa: PLC0415 (on failure only)

            raise DaemonNotRunningError(
                f"xenkdumpd is not running (cannot connect to the system bus at "
                f"{self.address}: {one_line(error[1])})"
            ) from None

    def close(self) -> None:
        self.bus.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        member: str,
        signature: str,
        args: tuple[Any, ...],
        *,
        to: tuple[str, str, str] = (names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE),
        timeout: float = CALL_TIMEOUT,
    ) -> list[Any]:
        """The reply's arguments; ``to`` is (destination, object path, interface)."""
        message = libdbus.MethodCallMessage(*to, member)
        if signature:
            message.append(*args, signature=signature)
        reply = self.bus.send_message_with_reply_and_block(message, timeout)
        return list(reply.get_args_list())

    def has_owner(self) -> bool:
        bus = (names.DBUS_SERVICE, names.DBUS_PATH, names.DBUS_SERVICE)
        (owned,) = self._call("NameHasOwner", "s", (names.BUS_NAME,), to=bus, timeout=BUS_TIMEOUT)
        return bool(owned)

    def require_owner(self) -> None:
        if not self.has_owner():
            raise DaemonNotRunningError(
                f"xenkdumpd is not running (no owner of {names.BUS_NAME} on the system bus)"
            )

    def call(self, member: str, signature: str = "", args: tuple[Any, ...] = ()) -> Any:
        """Call and return the plain reply; an error reply raises RemoteError."""
        try:
            reply = self._call(member, signature, args)
        except Exception as exc:
            error = _dbus_error(exc)
            if error is None:
                raise
            from xenkdump.dbus import errors  # noqa: PLC0415 (only when something failed)

            raise errors.from_dbus(*error) from None
        if not reply:
            return None
        return plain(reply[0] if len(reply) == 1 else reply)

    def get_status(self) -> dict[str, object]:
        status: dict[str, object] = self.call("GetStatus")
        return status

    def reload(self, options: Mapping[str, object] | None = None) -> dict[str, object]:
        from xenkdump.requests import RELOAD_OPTIONS  # noqa: PLC0415 (a status read needs none)

        status: dict[str, object] = self.call(
            "Reload", "a{sv}", (_options(options or {}, RELOAD_OPTIONS),)
        )
        return status

    def unload(self, options: Mapping[str, object] | None = None) -> dict[str, object]:
        from xenkdump.requests import UNLOAD_OPTIONS  # noqa: PLC0415

        status: dict[str, object] = self.call(
            "Unload", "a{sv}", (_options(options or {}, UNLOAD_OPTIONS),)
        )
        return status

    def self_test(self, options: Mapping[str, object] | None = None) -> str:
        """Start a self-test of the armed image; its id (follow CurrentSelfTest)."""
        from xenkdump.requests import SELFTEST_OPTIONS  # noqa: PLC0415

        test_id: str = self.call("SelfTest", "a{sv}", (_options(options or {}, SELFTEST_OPTIONS),))
        return test_id

    def cancel_self_test(self, test_id: str) -> None:
        self.call("CancelSelfTest", "s", (test_id,))


def connected() -> DaemonClient:
    """A client of the running xenkdumpd; DaemonNotRunningError when there is none."""
    c = DaemonClient()
    try:
        c.require_owner()
    except BaseException:
        c.close()
        raise
    return c
