"""systemd integration: sd_notify messages and logging to the journal (or stderr).

The journal handler silently drops messages when no journald runs, so it is chosen by
the environment systemd gives its services (``JOURNAL_STREAM`` / ``INVOCATION_ID``),
never by whether ``systemd.journal`` imports.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Mapping

try:
    import systemd.daemon as sd_daemon
    import systemd.journal as sd_journal
except ImportError:  # python3-systemd absent: plain datagrams and stderr still work
    sd_daemon = None
    sd_journal = None

log = logging.getLogger(__name__)

SYSLOG_IDENTIFIER = "xenkdumpd"

# Fixed MESSAGE_IDs for the key events, so `journalctl MESSAGE_ID=...` finds them on any host.
MESSAGE_ID_LOADED = uuid.UUID("5b3f0c6e-7a2d-4c1e-9f41-8d2a6e0b7c11")
MESSAGE_ID_LOAD_FAILED = uuid.UUID("c2a94e17-3b5f-4d86-a0e2-61f7b9d4e822")
MESSAGE_ID_UNLOAD_FAILED = uuid.UUID("4f6b2d81-9a3e-4c57-8e10-b2d7c5a9f044")
MESSAGE_ID_UNLOADED = uuid.UUID("9e7d1a03-5c48-4f2b-b6d9-0a3c8e5f1d33")
MESSAGE_ID_DUMP_FOUND = uuid.UUID("7d0c5e92-1f3a-4b68-a5c7-3e9b2f8d6a15")


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def setup_logging(*, verbose: bool = False, environ: Mapping[str, str] | None = None) -> str:
    """Route the root logger to journald under systemd, else to stderr.  Returns which."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Without python3-systemd, stderr still reaches the journal through the unit.
    if under_systemd(environ) and sd_journal is not None:
        root.addHandler(sd_journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER))
        return "journal"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("xenkdumpd: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    return "stderr"


def _send(message: str) -> bool:
    """sd_notify(3) through python3-systemd; a manual datagram when it is absent."""
    if sd_daemon is None:
        return _send_datagram(message)
    return bool(sd_daemon.notify(message))


def _send_datagram(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


class Notifier:
    """READY=1 / STATUS= / WATCHDOG=1 / STOPPING=1 to the service manager (no-op without one)."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status = ""

    def send(self, message: str) -> None:
        if not self.enabled:
            return
        try:
            _send(message)
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", message, exc)

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between keep-alives: half of WatchdogSec, or None when no watchdog is set."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None
