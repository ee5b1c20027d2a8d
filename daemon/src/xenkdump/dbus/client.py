"""xenkdumpctl's client of org.xenkdump.Kdump1: synchronous, and quick to start.

A command makes one or two calls and exits, so this client uses libdbus through
python3-dbus (a C extension that imports in milliseconds) rather than the daemon's
asyncio stack; see bench/cli.py.  It honours $DBUS_SYSTEM_BUS_ADDRESS.  D-Bus error
replies become ``xenkdump.dbus.errors.RemoteError`` (converted in dbus/errors.py); no
bus, or nobody owning org.xenkdump.Kdump1, becomes ``DaemonNotRunningError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dbus

from xenkdump.dbus import names
from xenkdump.errors import InputError, OperationError

# Reload may wait for a running load (seconds on real hardware, more under emulation).
CALL_TIMEOUT = 600.0


class DaemonNotRunningError(OperationError):
    """No bus, or nobody owns org.xenkdump.Kdump1 on it."""


def plain(value: Any) -> Any:
    """Plain Python values from dbus-python's types (structs become lists)."""
    if isinstance(value, dbus.Boolean):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    return value


def _options(options: Mapping[str, object], allowed: Mapping[str, str]) -> dbus.Dictionary:
    """An a{sv} from plain values, typed by the option table in names.py."""
    types = {"b": dbus.Boolean, "s": dbus.String, "u": dbus.UInt32}
    out = {}
    for key, value in options.items():
        if key not in allowed:
            raise InputError(f"option {key!r}: unknown (expected one of {sorted(allowed)})")
        out[key] = types[allowed[key]](value, variant_level=1)
    return dbus.Dictionary(out, signature="sv")


class DaemonClient:
    """One connection to the bus, talking to /org/xenkdump/Kdump1."""

    def __init__(self, bus_address: str | None = None) -> None:
        self.address = names.system_bus_address(bus_address)
        try:
            self.bus = dbus.bus.BusConnection(self.address)
        except dbus.exceptions.DBusException as exc:
            raise DaemonNotRunningError(
                f"xenkdumpd is not running (cannot connect to the system bus at "
                f"{self.address}: {' '.join(str(exc.get_dbus_message()).split())})"
            ) from None

    def close(self) -> None:
        self.bus.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has_owner(self) -> bool:
        return bool(self.bus.name_has_owner(names.BUS_NAME))

    def require_owner(self) -> None:
        if not self.has_owner():
            raise DaemonNotRunningError(
                f"xenkdumpd is not running (no owner of {names.BUS_NAME} on the system bus)"
            )

    def call(self, member: str, signature: str = "", args: tuple[Any, ...] = ()) -> Any:
        """Call and return the plain reply; an error reply raises RemoteError."""
        try:
            reply = self.bus.call_blocking(
                names.BUS_NAME,
                names.OBJECT_PATH,
                names.INTERFACE,
                member,
                signature,
                args,
                timeout=CALL_TIMEOUT,
            )
        except dbus.exceptions.DBusException as exc:
            from xenkdump.dbus import errors  # noqa: PLC0415 (only when something failed)

            raise errors.from_dbus(
                str(exc.get_dbus_name() or ""), str(exc.get_dbus_message() or "")
            ) from None
        return plain(reply)

    def get_status(self) -> dict[str, object]:
        status: dict[str, object] = self.call("GetStatus")
        return status

    def reload(self, options: Mapping[str, object] | None = None) -> dict[str, object]:
        status: dict[str, object] = self.call(
            "Reload", "a{sv}", (_options(options or {}, names.RELOAD_OPTIONS),)
        )
        return status

    def unload(self, options: Mapping[str, object] | None = None) -> dict[str, object]:
        status: dict[str, object] = self.call(
            "Unload", "a{sv}", (_options(options or {}, names.UNLOAD_OPTIONS),)
        )
        return status

    def self_test(self, options: Mapping[str, object] | None = None) -> str:
        """Start a self-test of the armed image; its id (follow CurrentSelfTest)."""
        test_id: str = self.call(
            "SelfTest", "a{sv}", (_options(options or {}, names.SELFTEST_OPTIONS),)
        )
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
