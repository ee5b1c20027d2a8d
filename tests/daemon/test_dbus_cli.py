"""xenkdumpctl over D-Bus: reload, and the status/unload helpers, against a served core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from xenkdump.cli import cmd_daemon, cmd_status, ctl
from xenkdump.dbus import contract
from xenkdump.errors import ConfigError, HypervisorError

XENKDUMPCTL = Path(sys.executable).parent / "xenkdumpctl"


def test_status_human_output(serve_fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    serve_fake()
    assert ctl.main(["status"]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert lines["State"].strip() == "loaded (crash kernel armed (generation 1))"
    assert lines["Crash kernel"].strip() == "/boot/vmlinuz-6.1.0-test"
    assert lines["Image sha256"].strip() == "ab" * 32
    assert lines["Config sha256"].strip() == "cd" * 32
    assert lines["Crash region"].strip() == "0x100000000-0x10fffffff (256.0 MiB)"
    assert lines["Used"].strip() == (
        "0x100000000-0x107ffffff (128.0 MiB), the lower half, needs 48.0 MiB"
    )
    assert lines["Free"].strip() == "128.0 MiB"
    assert "(generation 1)" in lines["Loaded at"] and "2025" in lines["Loaded at"]
    assert lines["Last reload"].strip() == "start: no record"
    assert "Last error" not in lines and "Warning" not in lines
    assert lines["Versions"].strip() == "Xen 4.17.3, xenkdumpd 0.1.0"


def test_status_json_is_the_getstatus_dict_with_the_same_keys_without_the_daemon(
    serve_fake: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    s = serve_fake()
    assert ctl.main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["State"] == "loaded" and data["CrashRegion"] == [0x1_0000_0000, 0x1000_0000]
    assert data == s.core.snapshot.to_json()
    assert sorted(data) == sorted(contract.load_interface().properties)
    # The same keys from xenkdump's record, without asking the daemon.
    offline = ["--hypervisor", f"sim:{tmp_path / 'host.yaml'}", "status", "--json"]
    assert ctl.main([*offline, "--no-daemon", "--state-dir", str(tmp_path / "state")]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert sorted(alone) == sorted(data)
    assert alone["State"] == "degraded" and alone["DaemonVersion"] == ""  # no record yet
    assert "unknown place in the crash area (no record)" in alone["StateReason"]
    assert alone["CrashRegion"][1] == 256 << 20 and alone["XenVersion"].startswith("4.")


def test_status_and_unload_fall_back_without_a_daemon(private_bus: str) -> None:
    # The bus runs, nobody owns the name: the caller falls back to its offline path.
    assert cmd_status.daemon_status() is None
    assert cmd_daemon.daemon_unload() is None


def test_status_falls_back_without_a_bus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    assert cmd_status.daemon_status() is None


def test_unload(serve_fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    s = serve_fake()
    assert cmd_daemon.daemon_unload() == 0
    assert "crash kernel unloaded; not-loaded" in capsys.readouterr().out
    assert [c[0] for c in s.core.calls] == ["unload"]


def test_reload_sends_options(
    serve_fake: Any,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = serve_fake()
    monkeypatch.chdir(tmp_path)
    rc = ctl.main(
        ["reload", "--force", "--kernel", "vmlinuz", "--cmdline", "console=hvc0", "--no-wait"]
    )
    assert rc == 0
    assert capsys.readouterr().out.strip() == "loaded: crash kernel armed (generation 2)"
    assert s.core.calls == [
        (
            "reload",
            "xenkdumpctl reload",
            {
                "force": True,
                "kernel": str(tmp_path / "vmlinuz"),
                "cmdline": "console=hvc0",
                "wait": False,
            },
        )
    ]


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (ConfigError("/etc/xenkdump.yaml: line 3: kernal: unknown key"), 2, "kernal: unknown key"),
        (HypervisorError("xc_kexec_load", 16), 1, "xc_kexec_load failed: EBUSY"),
    ],
)
def test_reload_errors_are_one_line_with_exit_code(
    serve_fake: Any, capsys: pytest.CaptureFixture[str], exc: Exception, code: int, text: str
) -> None:
    s = serve_fake()
    s.core.fail = exc
    assert ctl.main(["reload"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xenkdumpctl: ") and text in err


def test_reload_without_daemon_exits_1_with_the_message(private_bus: str) -> None:
    got = subprocess.run(
        [str(XENKDUMPCTL), "reload"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": private_bus},
        check=False,
    )
    assert got.returncode == 1
    assert got.stderr == (
        "xenkdumpctl: xenkdumpd is not running "
        "(no owner of org.xenkdump.Kdump1 on the system bus)\n"
    )


def test_reload_without_bus_exits_1_naming_the_address(tmp_path: Path) -> None:
    address = f"unix:path={tmp_path}/no-bus"
    got = subprocess.run(
        [str(XENKDUMPCTL), "reload"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address},
        check=False,
    )
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert got.stderr.startswith(
        f"xenkdumpctl: xenkdumpd is not running (cannot connect to the system bus at {address}"
    )


def test_nobody_reload_is_permission_denied(
    serve_fake: Any, private_bus: str, run_as_nobody: Any
) -> None:
    serve_fake()
    got = run_as_nobody(
        ["env", f"DBUS_SYSTEM_BUS_ADDRESS={private_bus}", str(XENKDUMPCTL), "reload"]
    )
    assert got.returncode == 1, got.stderr
    assert got.stderr.startswith(
        "xenkdumpctl: permission denied: Reload: uid 65534 may not call it"
    )
