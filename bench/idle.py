"""Idle cost of xenkdumpd: resident memory and wake-ups while nothing happens.

Starts the real daemon on a simulated host, as in production (serving D-Bus on a
private bus, with a 30 s watchdog and a 60 s topology check), waits for READY=1, lets
it settle, then samples VmRSS and counts the context switches of all its threads over
an interval.  The same without D-Bus (--no-bus) shows what the bus stack costs.
Goals: RSS < 40 MB with a 64 MB initrd (a real Debian initrd is 30-70 MB); no
wake-ups but the watchdog keep-alive and the topology check.  xenkdumpd keeps no kernel
or initrd bytes between loads (a header-only rebuild re-reads the files and checks
their digests), so the initrd's size does not show in the idle figure.

    .venv/bin/python bench/idle.py [--seconds 10] [--initrd-mib 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchlib import running_daemon


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


def measure(pid: int, seconds: float, label: str) -> None:
    time.sleep(1.0)  # let the first load's garbage settle
    rss = rss_kib(pid)
    before = switches(pid)
    time.sleep(seconds)
    wakeups = switches(pid) - before
    verdict = "within goal" if rss * 1024 < 40_000_000 else "OVER the goal"
    print(f"{label}: idle RSS {rss / 1024:.1f} MiB (goal < 40 MB: {verdict})")
    print(
        f"{label}: {wakeups} context switches in {seconds:g} s "
        "(watchdog every 15 s, topology check every 60 s; goal: nothing else)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="idle interval to observe")
    ap.add_argument("--initrd-mib", type=int, default=64, help="size of the crash initrd")
    args = ap.parse_args()
    for bus in (True, False):
        with running_daemon(
            bus=bus,
            initrd_bytes=args.initrd_mib << 20,
            topology_check_interval=60,
            watchdog_usec=30_000_000,
        ) as d:
            label = "with D-Bus" if bus else "without D-Bus (--no-bus)"
            measure(d.pid, args.seconds, f"{label}, {args.initrd_mib} MiB initrd")
    return 0


if __name__ == "__main__":
    sys.exit(main())
