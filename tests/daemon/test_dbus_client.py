"""xenkdumpctl's synchronous client (xenkdump/dbus/client.py) against the real service.

The client is built on python3-dbus's C extension alone (``_dbus_bindings``) so that
a command starts quickly (bench/cli.py); these tests fail if that API or its
behaviour changes upstream, and pin that nothing of python3-dbus's Python layer is
loaded on the way to a status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _dbus_bindings as libdbus
import pytest

from importcheck import run_and_list, under
from xenkdump.dbus import client, errors, names
from xenkdump.errors import ConfigError, InputError

Serve = Callable[..., Any]


def test_the_client_loads_only_the_c_extension() -> None:
    _, out = run_and_list("import xenkdump.dbus.client")
    assert "_dbus_bindings" in out
    assert under(out, ("dbus", "logging", "dataclasses")) == []


def test_the_extension_offers_what_the_client_uses() -> None:
    """The names of python3-dbus's C API the client relies on (dbus.connection's own)."""
    assert callable(libdbus.Connection._new_for_bus)
    for name in ("send_message_with_reply_and_block", "close"):
        assert callable(getattr(libdbus.Connection, name))
    message = libdbus.MethodCallMessage(names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, "M")
    message.append("x", libdbus.Dictionary({}, signature="sv"), signature="sa{sv}")
    assert message.get_signature() == "sa{sv}"
    assert message.get_args_list() == ["x", {}]


def test_status_and_reload_round_trip(serve_fake: Serve) -> None:
    served = serve_fake()
    with client.connected() as c:
        status = c.get_status()
        after = c.reload({"force": True, "reason": "test: sync client"})
    assert status["State"] == "loaded" and type(status["Generation"]) is int
    assert isinstance(status["CrashRegion"], list) and len(status["CrashRegion"]) == 2
    assert after["Generation"] == status["Generation"] + 1
    assert served.core.calls == [("reload", "test: sync client", {"force": True})]


def test_an_error_reply_is_the_named_error(serve_fake: Serve) -> None:
    served = serve_fake()
    served.core.fail = ConfigError("/etc/xenkdump.yaml: kernal: unknown key")
    with client.connected() as c, pytest.raises(errors.RemoteError) as info:
        c.reload({})
    assert info.value.name == names.ERROR_INVALID_CONFIG and info.value.exit_code == 2
    assert "kernal: unknown key" in str(info.value)


def test_an_unknown_option_is_refused_before_the_call(serve_fake: Serve) -> None:
    served = serve_fake()
    with client.connected() as c, pytest.raises(InputError, match="'forse': unknown"):
        c.reload({"forse": True})
    assert served.core.calls == []


def test_nobody_on_the_bus_and_no_bus(private_bus: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(client.DaemonNotRunningError, match=r"no owner of org\.xenkdump\.Kdump1"):
        client.connected()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
    with pytest.raises(client.DaemonNotRunningError, match=r"cannot connect .*/nonexistent/bus"):
        client.connected()


def test_a_status_read_imports_only_what_it_needs(serve_fake: Serve) -> None:
    """``xenkdumpctl status`` through xenkdumpd (its start-up time: bench/cli.py)."""
    serve_fake()
    stdout, modules = run_and_list(
        "from xenkdump.cli.ctl import main\nassert main(['status', '--json']) == 0"
    )
    assert '"State": "loaded"' in stdout
    assert sorted(m for m in modules if m.startswith("xenkdump.cli.cmd_")) == [
        "xenkdump.cli.cmd_daemon",
        "xenkdump.cli.cmd_status",
    ]
    heavy = ("dbus", "logging", "dataclasses", "typing", "pathlib", "asyncio", "dbus_fast", "yaml")
    assert under(modules, heavy) == []
