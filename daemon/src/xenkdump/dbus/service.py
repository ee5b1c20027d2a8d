"""xenkdumpd's D-Bus service: the only server-side module that imports dbus_fast.

The interface is not declared with dbus_fast's decorators: one message handler
dispatches from the parsed contract XML (contract.py), so the XML is the single
definition of members, signatures, property types and the introspection reply.
Reload and Unload run as tasks and answer later; everything else answers from the
core's current snapshot at once, so status reads stay prompt while a load runs
(the load itself runs in a worker thread inside the core).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any, Protocol

from dbus_fast import Message, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio.message_bus import MessageBus
from dbus_fast.errors import DBusError

from xenkdump.dbus import contract, errors, names
from xenkdump.dbus.contract import InterfaceSpec
from xenkdump.dbus.transport import new_bus, system_bus_address
from xenkdump.errors import OperationError
from xenkdump.requests import (
    RELOAD_OPTIONS,
    SELFTEST_OPTIONS,
    UNLOAD_OPTIONS,
    ReloadOptions,
    SelfTestOptions,
    UnloadOptions,
)
from xenkdump.status import DUMP_KEYS, SELF_TEST_KEYS, Status

log = logging.getLogger("xenkdump.dbus")

ROOT_ONLY = frozenset({0})
# A bus that accepts the connection but never answers must not hang start-up.
BUS_TIMEOUT = 30.0


class Core(Protocol):
    """The part of xenkdump.daemon.core.DaemonCore the service uses."""

    def status(self) -> Status: ...
    async def reload(self, options: ReloadOptions) -> Status: ...
    async def unload(self, options: UnloadOptions) -> Status: ...
    def subscribe(self, callback: Callable[[Status, Status], None]) -> None: ...
    def on_dump_found(self, callback: Callable[[Mapping[str, object]], None]) -> None: ...
    async def self_test(self, options: SelfTestOptions) -> str: ...
    def cancel_self_test(self, test_id: str) -> None: ...
    @property
    def selftests(self) -> SelfTestEvents: ...


class SelfTestEvents(Protocol):
    """The part of xenkdump.selftest.runner.SelfTests the service uses."""

    def subscribe(self, listener: Callable[[Any], None]) -> None: ...


def _variants(values: Mapping[str, tuple[str, object]]) -> dict[str, Variant]:
    return {name: _variant(sig, value) for name, (sig, value) in values.items()}


def _variant(signature: str, value: object) -> Variant:
    if signature == "a{sv}":  # LastSelfTest, LastDump: typed by their key tables
        assert isinstance(value, Mapping)
        return Variant(signature, dict_variants(value))
    return Variant(signature, value)


def self_test_variants(values: Mapping[str, object]) -> dict[str, Variant]:
    """A self-test result (status.SELF_TEST_KEYS) as an a{sv}."""
    return {key: Variant(SELF_TEST_KEYS[key], value) for key, value in values.items()}


def dict_variants(values: Mapping[str, object]) -> dict[str, Variant]:
    """A status dictionary (self-test or dump keys, which do not overlap) as an a{sv}."""
    types = {**SELF_TEST_KEYS, **DUMP_KEYS}
    return {key: Variant(types[key], value) for key, value in values.items()}


class _Service:
    """Answers calls to /org/xenkdump/Kdump1 from the contract and the core."""

    def __init__(
        self, bus: MessageBus, core: Core, spec: InterfaceSpec, allowed_uids: frozenset[int]
    ) -> None:
        self.bus = bus
        self.core = core
        self.spec = spec
        self.allowed_uids = allowed_uids
        self.closed = False
        self.tasks: set[asyncio.Task[object]] = set()
        self._doc = contract.introspection_document(spec, names.OBJECT_PATH)
        # GetStatus/GetAll are the hot path: build the a{sv} once per snapshot.
        self._cached_for: object = None
        self._cached: dict[str, Variant] = {}

    # ---- status ----

    def _status(self, snapshot: Status | None = None) -> dict[str, Variant]:
        snap = self.core.status() if snapshot is None else snapshot
        if snap is not self._cached_for:
            self._cached = _variants(contract.property_values(self.spec, snap))
            self._cached_for = snap
        return self._cached

    def on_dump_found(self, dump: Mapping[str, object]) -> None:
        """Core listener: a new dump at the target (DUMP_KEYS) -> DumpFound."""
        if self.closed:
            return
        self.bus.send(
            Message.new_signal(
                names.OBJECT_PATH, names.INTERFACE, "DumpFound", "a{sv}", [dict_variants(dump)]
            )
        )

    def on_change(self, old: Status, new: Status) -> None:
        """Core subscriber: PropertiesChanged with the new values of what changed."""
        if self.closed:
            return
        changed = contract.changed_properties(self.spec, old, new)
        if changed:
            self.bus.send(
                Message.new_signal(
                    names.OBJECT_PATH,
                    names.PROPERTIES,
                    "PropertiesChanged",
                    "sa{sv}as",
                    [names.INTERFACE, _variants(changed), []],
                )
            )

    # ---- dispatch ----

    def handle(self, msg: Message) -> Message | bool | None:
        """dbus_fast message handler: a reply, True (answered later) or None (not ours)."""
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        path, iface, member = msg.path or "", msg.interface, msg.member or ""
        if path != names.OBJECT_PATH:
            if (
                contract.is_ancestor(path)
                and iface in (names.INTROSPECTABLE, None)
                and (member == "Introspect")
            ):
                return Message.new_method_return(
                    msg, "s", [contract.introspection_document(self.spec, path)]
                )
            return None
        try:
            if iface == names.PEER:
                return None  # dbus_fast answers Ping and GetMachineId
            if iface == names.INTROSPECTABLE or (iface is None and member == "Introspect"):
                if member != "Introspect":
                    return self._error(msg, names.ERROR_UNKNOWN_METHOD, f"no method {member}")
                self._check_signature(msg, "")
                return Message.new_method_return(msg, "s", [self._doc])
            if iface == names.PROPERTIES:
                return self._properties(msg)
            if iface not in (names.INTERFACE, None):
                return self._error(
                    msg, names.ERROR_UNKNOWN_INTERFACE, f"object has no interface {iface}"
                )
            method = self.spec.methods.get(member)
            if method is None:
                return self._error(
                    msg, names.ERROR_UNKNOWN_METHOD, f"{names.INTERFACE} has no method {member!r}"
                )
            self._check_signature(msg, method.in_signature)
            if member == "GetStatus":
                return Message.new_method_return(msg, "a{sv}", [self._status()])
            if member == "Reload":
                self._spawn(self._answer(msg, self._reload(msg)))
            elif member == "Unload":
                self._spawn(self._answer(msg, self._unload(msg)))
            elif member == "SelfTest":
                self._spawn(self._answer_call(msg, self._self_test(msg)))
            elif member == "CancelSelfTest":
                self._spawn(self._answer_call(msg, self._cancel(msg)))
            else:  # in the XML but not served: the contract test catches this
                return self._error(msg, names.ERROR_UNKNOWN_METHOD, f"{member} is not implemented")
            return True
        except Exception as exc:
            name, text = errors.to_dbus(exc)
            return self._error(msg, name, text)

    def _error(self, msg: Message, name: str, text: str) -> Message:
        return Message.new_error(msg, name, text)

    def _check_signature(self, msg: Message, expected: str) -> None:
        if msg.signature != expected:
            from xenkdump.errors import InputError  # noqa: PLC0415

            raise InputError(
                f"{msg.member}: expected arguments of type {expected!r}, got {msg.signature!r}"
            )

    def _properties(self, msg: Message) -> Message:
        member = msg.member or ""
        want = {"Get": "ss", "GetAll": "s", "Set": "ssv"}.get(member)
        if want is None:
            return self._error(msg, names.ERROR_UNKNOWN_METHOD, f"no method {member}")
        self._check_signature(msg, want)
        iface = msg.body[0]
        if iface not in (names.INTERFACE, ""):
            return self._error(
                msg, names.ERROR_UNKNOWN_INTERFACE, f"object has no interface {iface!r}"
            )
        if member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [self._status()])
        prop = msg.body[1]
        if prop not in self.spec.properties:
            return self._error(
                msg, names.ERROR_UNKNOWN_PROPERTY, f"{names.INTERFACE} has no property {prop!r}"
            )
        if member == "Set":
            return self._error(msg, names.ERROR_PROPERTY_READ_ONLY, f"property {prop} is read-only")
        return Message.new_method_return(msg, "v", [self._status()[prop]])

    # ---- self-tests ----

    def on_self_test(self, event: Any) -> None:
        """SelfTests listener: SelfTestProgress / SelfTestFinished."""
        if self.closed:
            return
        from xenkdump.selftest.runner import Finished, Progress  # noqa: PLC0415

        if isinstance(event, Progress):
            name, sig, body = "SelfTestProgress", "ssd", [event.id, event.stage, event.fraction]
        elif isinstance(event, Finished):
            result = self_test_variants(dict(event.result))
            name, sig, body = "SelfTestFinished", "sba{sv}", [event.id, event.passed, result]
        else:
            return
        self.bus.send(Message.new_signal(names.OBJECT_PATH, names.INTERFACE, name, sig, body))

    async def _answer_call(
        self,
        msg: Message,
        work: Awaitable[tuple[str, list[object]]],
        failed: Callable[[str, str], None] | None = None,
    ) -> bool:
        """Reply with what ``work`` returns, (signature, body), or with its error (then
        ``failed(name, message)``); True when it succeeded."""
        try:
            signature, body = await work
        except asyncio.CancelledError:
            self._send_stopping(msg)
            raise
        except Exception as exc:
            name, text = self._send_error(msg, exc)
            if failed is not None:
                failed(name, text)
            return False
        self.bus.send(Message.new_method_return(msg, signature, body))
        return True

    async def _self_test(self, msg: Message) -> tuple[str, list[object]]:
        await self._authorize(msg)
        options = SelfTestOptions(**self._options(msg, SELFTEST_OPTIONS))  # type: ignore[arg-type]
        return "s", [await self.core.self_test(options)]

    async def _cancel(self, msg: Message) -> tuple[str, list[object]]:
        await self._authorize(msg)
        self.core.cancel_self_test(str(msg.body[0]))
        return "", []

    # ---- the methods that change things ----

    def _spawn(self, answer: Coroutine[Any, Any, object]) -> None:
        """Run a call's answer as a task (closed with the service)."""
        task = asyncio.get_running_loop().create_task(answer)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _send_stopping(self, msg: Message) -> None:
        self.bus.send(self._error(msg, names.ERROR_FAILED, "xenkdumpd is stopping"))

    def _send_error(self, msg: Message, exc: Exception) -> tuple[str, str]:
        name, text = errors.to_dbus(exc)
        self.bus.send(self._error(msg, name, text))
        return name, text

    async def _answer(self, msg: Message, work: Awaitable[tuple[Status, str]]) -> None:
        """Reload and Unload: the status as the reply, then the Finished signal."""
        operation = (msg.member or "").lower()
        done: list[tuple[Status, str]] = []

        async def status() -> tuple[str, list[object]]:
            done.append(await work)
            return "a{sv}", [self._status(done[0][0])]

        def failed(name: str, text: str) -> None:
            if name not in (names.ERROR_NOT_PERMITTED, names.ERROR_INVALID_ARGS):
                self._finished(operation, name, text, "", self.core.status())

        if await self._answer_call(msg, status(), failed):
            snapshot, reason = done[0]
            self._finished(operation, "", "", reason or snapshot.last_reload_reason, snapshot)

    def _finished(
        self, operation: str, error: str, message: str, reason: str, snap: Status
    ) -> None:
        if self.closed:
            return
        body = {
            "Success": Variant("b", not error),
            "Error": Variant("s", error),
            "Message": Variant("s", message),
            "Reason": Variant("s", reason),
            "Generation": Variant("t", snap.generation),
            "State": Variant("s", str(snap.state)),
        }
        self.bus.send(
            Message.new_signal(
                names.OBJECT_PATH,
                names.INTERFACE,
                "ReloadFinished" if operation == "reload" else "UnloadFinished",
                "a{sv}",
                [body],
            )
        )

    async def _caller_uid(self, msg: Message) -> int:
        reply = await self.bus.call(
            Message(
                destination=names.DBUS_SERVICE,
                path=names.DBUS_PATH,
                interface=names.DBUS_SERVICE,
                member="GetConnectionUnixUser",
                signature="s",
                body=[msg.sender],
            )
        )
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            raise errors.NotPermittedError(f"{msg.member}: cannot identify the caller {msg.sender}")
        return int(reply.body[0])

    async def _authorize(self, msg: Message) -> int:
        # The bus policy already limits these methods to root; check again here so a
        # permissive or missing policy file does not open them.
        uid = await self._caller_uid(msg)
        if uid not in self.allowed_uids:
            raise errors.NotPermittedError(
                f"{msg.member}: uid {uid} may not call it (only root may)"
            )
        return uid

    def _options(self, msg: Message, allowed: Mapping[str, str]) -> dict[str, object]:
        raw = {key: (v.signature, v.value) for key, v in msg.body[0].items()}
        return contract.check_options(msg.member or "", raw, allowed)

    async def _reload(self, msg: Message) -> tuple[Status, str]:
        uid = await self._authorize(msg)
        # check_options has checked every name and D-Bus type: the values fit the fields.
        options = ReloadOptions(**self._options(msg, RELOAD_OPTIONS))  # type: ignore[arg-type]
        if not options.reason:
            options = replace(options, reason=f"Reload requested over D-Bus by uid {uid}")
        return await self.core.reload(options), str(options.reason)

    async def _unload(self, msg: Message) -> tuple[Status, str]:
        await self._authorize(msg)
        options = UnloadOptions(**self._options(msg, UNLOAD_OPTIONS))  # type: ignore[arg-type]
        return await self.core.unload(options), "Unload requested over D-Bus"


class ServiceHandle:
    """A served bus connection; ``await close()`` releases the name and disconnects."""

    def __init__(self, bus: MessageBus, service: _Service) -> None:
        self.bus = bus
        self._service = service

    @property
    def unique_name(self) -> str:
        return str(self.bus.unique_name)

    async def wait_disconnected(self) -> None:
        """Returns when the bus connection is gone (bus restarted, or close())."""
        with contextlib.suppress(Exception):  # a lost connection ends the wait too
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        service = self._service
        if service.closed:
            return
        service.closed = True
        for task in list(service.tasks):
            task.cancel()
        if service.tasks:
            await asyncio.gather(*service.tasks, return_exceptions=True)
        self.bus.remove_message_handler(service.handle)
        try:
            await asyncio.wait_for(self.bus.release_name(names.BUS_NAME), 5)
        except Exception as exc:  # the bus may already be gone; nothing to release
            log.debug("releasing %s: %s", names.BUS_NAME, exc)
        self.bus.disconnect()
        try:
            await asyncio.wait_for(self.bus.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]
        except Exception as exc:
            log.debug("disconnecting from the bus: %s", exc)


async def serve(
    core: Core,
    bus_address: str | None = None,
    *,
    allowed_uids: frozenset[int] = ROOT_ONLY,
) -> ServiceHandle:
    """Own org.xenkdump.Kdump1 on the system bus (or ``bus_address``) and serve ``core``.

    Raises OperationError with one line if the bus is unreachable or the name taken.
    """
    spec = contract.load_interface()
    address = system_bus_address(bus_address)
    try:
        bus = await asyncio.wait_for(new_bus(address).connect(), BUS_TIMEOUT)
    except Exception as exc:
        raise OperationError(
            f"cannot connect to the D-Bus system bus at {address}: "
            f"{errors.one_line(str(exc)) or type(exc).__name__}"
        ) from None
    service = _Service(bus, core, spec, allowed_uids)
    bus.add_message_handler(service.handle)
    core.subscribe(service.on_change)
    core.on_dump_found(service.on_dump_found)
    core.selftests.subscribe(service.on_self_test)
    try:
        reply = await asyncio.wait_for(
            bus.request_name(names.BUS_NAME, NameFlag.DO_NOT_QUEUE), BUS_TIMEOUT
        )
    except (DBusError, TimeoutError) as exc:
        service.closed = True
        bus.disconnect()
        why = (
            f"{exc.type}: {exc.text}"
            if isinstance(exc, DBusError)
            else f"no answer in {BUS_TIMEOUT:.0f} s"
        )
        raise OperationError(
            f"cannot own the D-Bus name {names.BUS_NAME} at {address}: {why}"
        ) from None
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        service.closed = True
        bus.disconnect()
        raise OperationError(
            f"cannot own the D-Bus name {names.BUS_NAME} at {address}: another process owns it "
            "(is xenkdumpd already running?)"
        )
    log.info("serving %s on %s as %s", names.BUS_NAME, address, bus.unique_name)
    return ServiceHandle(bus, service)
