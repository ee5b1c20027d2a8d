"""An asyncio client of org.xenkdump.Kdump1 (dbus-fast) for the tests and benchmarks.

It can listen to signals and make many concurrent calls; xenkdumpctl has its own
synchronous client (xenkdump/dbus/client.py).

Honours $DBUS_SYSTEM_BUS_ADDRESS.  D-Bus error replies become
``xenkdump.dbus.errors.RemoteError`` (converted in dbus/errors.py); no daemon on the
bus becomes ``DaemonNotRunningError``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio.message_bus import MessageBus

from xenkdump import requests
from xenkdump.dbus import errors, names
from xenkdump.dbus.client import DaemonNotRunningError
from xenkdump.dbus.transport import new_bus, system_bus_address
from xenkdump.errors import InputError, OperationError

T = TypeVar("T")


def unwrap(value: object) -> object:
    """Plain Python values from dbus_fast Variants (recursively); structs become lists."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(v) for v in value]
    return value


def status_dict(value: object) -> dict[str, object]:
    """An a{sv} reply as a plain dict."""
    plain = unwrap(value)
    if not isinstance(plain, dict):
        raise OperationError(f"xenkdumpd sent {type(plain).__name__} where a{{sv}} was expected")
    return {str(k): v for k, v in plain.items()}


def variants(options: Mapping[str, object], allowed: Mapping[str, str]) -> dict[str, Variant]:
    """An a{sv} from plain values, typed by the option table in names.py."""
    out = {}
    for key, value in options.items():
        if key not in allowed:
            raise InputError(f"option {key!r}: unknown (expected one of {sorted(allowed)})")
        out[key] = Variant(allowed[key], value)
    return out


class DaemonClient:
    """One connection to the bus, talking to /org/xenkdump/Kdump1."""

    def __init__(self, bus: MessageBus, address: str) -> None:
        self.bus = bus
        self.address = address

    @classmethod
    async def connect(cls, bus_address: str | None = None) -> DaemonClient:
        address = system_bus_address(bus_address)
        try:
            bus = await new_bus(address).connect()
        except Exception as exc:
            raise DaemonNotRunningError(
                f"xenkdumpd is not running (cannot connect to the system bus at {address}: "
                f"{errors.one_line(str(exc)) or type(exc).__name__})"
            ) from None
        return cls(bus, address)

    async def close(self) -> None:
        self.bus.disconnect()
        with contextlib.suppress(Exception):  # already gone: nothing more to close
            await asyncio.wait_for(self.bus.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> DaemonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call_raw(
        self,
        member: str,
        signature: str = "",
        body: Sequence[object] = (),
        *,
        interface: str = names.INTERFACE,
        destination: str = names.BUS_NAME,
        path: str = names.OBJECT_PATH,
    ) -> Message:
        """Send one call; return the reply message (METHOD_RETURN or ERROR)."""
        reply = await self.bus.call(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        assert reply is not None  # a call with a reply expected always gets one
        return reply

    async def call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[object] = (),
        *,
        interface: str = names.INTERFACE,
    ) -> list[Any]:
        """Call and return the reply body; an error reply raises RemoteError."""
        reply = await self.call_raw(member, signature, body, interface=interface)
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise errors.from_dbus(str(reply.error_name or ""), text)
        return list(reply.body)

    async def has_owner(self) -> bool:
        reply = await self.call_raw(
            "NameHasOwner",
            "s",
            [names.BUS_NAME],
            interface=names.DBUS_SERVICE,
            destination=names.DBUS_SERVICE,
            path=names.DBUS_PATH,
        )
        return reply.message_type is MessageType.METHOD_RETURN and bool(reply.body[0])

    async def require_owner(self) -> None:
        if not await self.has_owner():
            raise DaemonNotRunningError(
                f"xenkdumpd is not running (no owner of {names.BUS_NAME} on the system bus)"
            )

    async def get_status(self) -> dict[str, object]:
        (status,) = await self.call("GetStatus")
        return status_dict(status)

    async def get_property(self, name: str) -> object:
        (value,) = await self.call("Get", "ss", [names.INTERFACE, name], interface=names.PROPERTIES)
        return unwrap(value)

    async def get_all(self) -> dict[str, object]:
        (values,) = await self.call("GetAll", "s", [names.INTERFACE], interface=names.PROPERTIES)
        return status_dict(values)

    async def reload(self, options: Mapping[str, object] | None = None) -> dict[str, object]:
        body = variants(options or {}, requests.RELOAD_OPTIONS)
        (status,) = await self.call("Reload", "a{sv}", [body])
        return status_dict(status)

    async def add_match(self, rule: str) -> None:
        """Ask the bus to route the signals ``rule`` selects here (AddMatch)."""
        await self.call_raw(
            "AddMatch",
            "s",
            [rule],
            interface=names.DBUS_SERVICE,
            destination=names.DBUS_SERVICE,
            path=names.DBUS_PATH,
        )

    async def self_test(
        self,
        options: Mapping[str, object] | None = None,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> tuple[str, bool, dict[str, object]]:
        """Start a self-test and follow its signals to the end: (id, passed, result).

        Signals are matched before the call, so none is missed however fast the run.
        """
        await self.add_match(
            f"type='signal',interface='{names.INTERFACE}',path='{names.OBJECT_PATH}'"
        )
        seen: list[Message] = []
        arrived = asyncio.Event()

        def handler(msg: Message) -> None:
            if msg.member in ("SelfTestProgress", "SelfTestFinished"):
                seen.append(msg)
                arrived.set()

        self.bus.add_message_handler(handler)
        try:
            body = variants(options or {}, requests.SELFTEST_OPTIONS)
            (test_id,) = await self.call("SelfTest", "a{sv}", [body])
            done = 0
            while True:
                await arrived.wait()
                arrived.clear()
                for msg in seen[done:]:
                    done += 1
                    if msg.body[0] != test_id:
                        continue
                    if msg.member == "SelfTestProgress" and on_progress is not None:
                        on_progress(str(msg.body[1]), float(msg.body[2]))
                    elif msg.member == "SelfTestFinished":
                        return str(test_id), bool(msg.body[1]), status_dict(msg.body[2])
        finally:
            self.bus.remove_message_handler(handler)

    async def cancel_self_test(self, test_id: str) -> None:
        await self.call("CancelSelfTest", "s", [test_id])

    async def unload(self, options: Mapping[str, object] | None = None) -> dict[str, object]:
        body = variants(options or {}, requests.UNLOAD_OPTIONS)
        (status,) = await self.call("Unload", "a{sv}", [body])
        return status_dict(status)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one client coroutine to completion (the CLI is synchronous)."""
    return asyncio.run(coro)
