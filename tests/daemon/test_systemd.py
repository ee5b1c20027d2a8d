"""systemd integration: the unit passes systemd-analyze, sd_notify reaches a real socket,
and logging goes to the journal only under systemd."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenkdump.daemon import notify

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "xenkdumpd.service"
XENKDUMPD = Path(sys.executable).parent / "xenkdumpd"


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


# Settings that systemd lets one line append to (lists); any other key twice is a slip.
_LISTS = {"Documentation", "After", "DeviceAllow", "SystemCallFilter", "ReadOnlyPaths"}


def test_no_single_valued_setting_and_no_comment_is_written_twice() -> None:
    twice = [k for k, v in unit_settings().items() if len(v) > 1 and k not in _LISTS]
    assert twice == []
    paragraphs = [p for p in UNIT.read_text().split("\n\n") if p.strip()]
    comments = [ln for ln in UNIT.read_text().splitlines() if ln.startswith("# ")]
    assert len(paragraphs) == len(set(paragraphs))
    repeated = {ln for ln in comments if comments.count(ln) > 1}
    assert repeated == set(), repeated


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    # verify insists the ExecStart binary exists: point it at the venv's entry point.
    assert XENKDUMPD.exists()
    text = UNIT.read_text().replace("ExecStart=/usr/sbin/xenkdumpd", f"ExecStart={XENKDUMPD}")
    assert text != UNIT.read_text()
    unit = tmp_path / "xenkdumpd.service"
    unit.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on some parse errors ("Unknown key ..., ignoring"): stderr must be empty.
    assert proc.stderr == ""
    assert proc.returncode == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_verify_would_catch_a_bad_key(tmp_path: Path) -> None:
    # The check above is only meaningful if verify reports problems on stderr.
    unit = tmp_path / "bad.service"
    unit.write_text(f"[Service]\nExecStart={XENKDUMPD}\nWatchdogSecs=3\n")
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert "WatchdogSecs" in proc.stderr


def test_unit_contract() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["BusName"] == ["org.xenkdump.Kdump1"]
    assert s["Restart"] == ["on-failure"]
    assert "WatchdogSec" in s
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["DeviceAllow"] == ["/dev/xen/privcmd rw", "/dev/xen/hypercall rw"]
    assert s["DevicePolicy"] == ["closed"]
    assert s["ProtectSystem"] == ["strict"]
    # The record must survive restarts so that a restart adopts instead of reloading.
    assert s["RuntimeDirectory"] == ["xenkdump"] and s["RuntimeDirectoryPreserve"] == ["yes"]
    # Optional read-only paths carry "-": a missing one must not stop the unit.
    assert s["ReadOnlyPaths"] == ["-/boot -/etc/xenkdump"]
    assert "PrivateDevices" not in s  # would hide /dev/xen
    tmpfiles = (REPO / "systemd" / "tmpfiles.d" / "xenkdump.conf").read_text()
    assert "d /run/xenkdump 0755 root root" in tmpfiles


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_notifier_sends_to_a_real_socket(notify_socket: socket.socket) -> None:
    n = notify.Notifier()
    n.status("starting")
    assert notify_socket.recv(4096) == b"STATUS=starting"
    n.status("starting")  # unchanged: not re-sent
    n.ready("loaded: crash kernel armed (generation 1)")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=loaded: crash kernel armed (generation 1)"
    n.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"


def test_notifier_without_socket_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = notify.Notifier()
    assert not n.enabled
    n.ready("x")  # must not raise


def test_watchdog_period() -> None:
    assert notify.watchdog_period({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert notify.watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert notify.watchdog_period({}) is None
    pid = str(os.getpid())
    assert notify.watchdog_period({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid}) == 1.0


def test_logging_goes_to_journal_only_under_systemd() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        assert notify.setup_logging(environ={}) == "stderr"
        pytest.importorskip("systemd.journal", reason="python3-systemd not installed")
        assert notify.setup_logging(environ={"INVOCATION_ID": "abc"}) == "journal"
        assert notify.setup_logging(environ={"JOURNAL_STREAM": "8:123"}) == "journal"
        [handler] = root.handlers
        sent: list[tuple[str, dict[str, object]]] = []
        # The handler passes the record's attributes (including 'message') as keywords.
        handler.send = lambda *args, **fields: sent.append((args[0], fields))  # type: ignore[attr-defined]
        logging.getLogger("xenkdump.daemon").info(
            "loaded generation 2", extra={"MESSAGE_ID": notify.MESSAGE_ID_LOADED}
        )
        [(message, fields)] = sent
        assert message == "loaded generation 2"
        assert fields["MESSAGE_ID"] == notify.MESSAGE_ID_LOADED
        assert fields["SYSLOG_IDENTIFIER"] == "xenkdumpd"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_message_ids_are_distinct() -> None:
    ids = {
        notify.MESSAGE_ID_LOADED,
        notify.MESSAGE_ID_LOAD_FAILED,
        notify.MESSAGE_ID_UNLOAD_FAILED,
        notify.MESSAGE_ID_UNLOADED,
        notify.MESSAGE_ID_DUMP_FOUND,
    }
    assert len(ids) == 5
