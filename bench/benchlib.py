"""What the benchmarks share: the test kernel and a real xenkdumpd on a simulated host.

The daemon runs as in production (on a bus: a private dbus-daemon here, since the
system bus is not ours to take) unless a benchmark asks for ``bus=False``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
XENKDUMPD = Path(sys.executable).parent / "xenkdumpd"

sys.path.insert(0, str(REPO / "tests"))
import asyncclient as client  # noqa: E402 (the tests' asyncio D-Bus client)
import privatebus  # noqa: E402 (the tests' private dbus-daemon)
import testkernel  # noqa: E402
from asyncclient import DaemonClient  # noqa: E402

__all__ = ["DaemonClient", "client", "privatebus", "testkernel"]


def test_kernel() -> Path:
    """Debian's vmlinuz, fetched into the test cache (never installed)."""
    return testkernel.debian_kernel()


@dataclass(frozen=True)
class RunningDaemon:
    pid: int
    address: str | None  # the private bus, None with bus=False
    root: Path  # its scratch directory (boot/, state/, host.yaml)


@contextmanager
def running_daemon(
    *,
    bus: bool = True,
    initrd_bytes: int = 1 << 20,
    topology_check_interval: int = 3600,
    watchdog_usec: int | None = None,
) -> Iterator[RunningDaemon]:
    """xenkdumpd with the Debian kernel and a random initrd, until READY=1."""
    with tempfile.TemporaryDirectory(prefix="xenkdump-bench-") as tmp:
        root = Path(tmp)
        boot = root / "boot"
        boot.mkdir()
        kernel = boot / "vmlinuz-bench"
        shutil.copyfile(test_kernel(), kernel)
        (boot / "initrd.img-bench").write_bytes(os.urandom(initrd_bytes))
        config = root / "xenkdump.yaml"
        config.write_text(
            f"kernel: {kernel}\ninitrd: auto\ncmdline:\n  base: console=ttyS0\n"
            f"state_dir: {root / 'state'}\nboot_dir: {boot}\n"
            f"topology_check_interval: {topology_check_interval}\n"
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(root / "notify"))
        sock.settimeout(120)
        env = dict(os.environ, NOTIFY_SOCKET=str(root / "notify"))
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        env.pop("INVOCATION_ID", None)
        env.pop("JOURNAL_STREAM", None)
        argv = [
            str(XENKDUMPD),
            "--config",
            str(config),
            "--hypervisor",
            f"sim:{root / 'host.yaml'}",
        ]
        with (root / "xenkdumpd.log").open("w") as log, _maybe_bus(root, bus) as address:
            if address is None:
                argv.append("--no-bus")
            else:
                env["DBUS_SYSTEM_BUS_ADDRESS"] = address
            proc = subprocess.Popen(argv, env=env, stderr=log)
            try:
                while b"READY=1" not in sock.recv(65536):
                    pass
                yield RunningDaemon(proc.pid, address, root)
            finally:
                sock.close()
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


@contextmanager
def _maybe_bus(root: Path, wanted: bool) -> Iterator[str | None]:
    if not wanted:
        yield None
        return
    with privatebus.running(root) as address:
        yield address
