"""Idle cost of xenkdumpd: resident memory and wake-ups while nothing happens.

Starts the real daemon on a simulated host (no D-Bus: --no-bus), waits for READY=1,
lets it settle, then samples VmRSS and counts context switches of all its threads over
an interval.  Goals (issue 5): RSS < 40 MB; no wake-ups but the watchdog keep-alive and
the topology check (both far apart: the run uses a 60 s check and a 30 s watchdog).

    .venv/bin/python bench/idle.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
XENKDUMPD = Path(sys.executable).parent / "xenkdumpd"


def test_kernel() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "fetch-test-kernel.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="idle interval to observe")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xenkdump-idle-") as tmp:
        root = Path(tmp)
        boot = root / "boot"
        boot.mkdir()
        kernel = boot / "vmlinuz-bench"
        shutil.copyfile(test_kernel(), kernel)
        (boot / "initrd.img-bench").write_bytes(os.urandom(1 << 20))
        config = root / "xenkdump.yaml"
        config.write_text(
            f"kernel: {kernel}\ninitrd: auto\ncmdline:\n  base: console=ttyS0\n"
            f"state_dir: {root / 'state'}\nboot_dir: {boot}\ntopology_check_interval: 60\n"
        )
        sock_path = root / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.settimeout(120)
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="30000000")
        env.pop("INVOCATION_ID", None)
        env.pop("JOURNAL_STREAM", None)
        proc = subprocess.Popen(
            [
                str(XENKDUMPD),
                "--config",
                str(config),
                "--hypervisor",
                f"sim:{root / 'host.yaml'}",
                "--no-bus",
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        env["WATCHDOG_PID"] = str(proc.pid)
        try:
            while b"READY=1" not in sock.recv(65536):
                pass
            time.sleep(1.0)  # let the first load's garbage settle
            rss = rss_kib(proc.pid)
            before = switches(proc.pid)
            time.sleep(args.seconds)
            after = switches(proc.pid)
            wakeups = after - before
            verdict = "ok" if rss < 40 * 1000 else "OVER"
            print(f"idle RSS: {rss / 1024:.1f} MiB (goal < 40 MB): {verdict}")
            print(
                f"idle wake-ups: {wakeups} context switches in {args.seconds:g} s "
                f"(watchdog every 15 s, topology check every 60 s; goal: none else)"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
