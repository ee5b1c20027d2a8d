"""Status reads over D-Bus: latency, throughput, 100 concurrent clients.

Starts a private dbus-daemon and the real xenkdumpd on a simulated host (or uses a
running daemon with --address), then measures GetStatus over the bus.  Goals:
p50 under 1 ms, >= 5,000 reads/s, 100 concurrent clients without errors.
Prints figures; asserts nothing.

    .venv/bin/python bench/dbus_status.py [--calls 5000] [--clients 100] [--address ADDR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from benchlib import DaemonClient, client, running_daemon


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def latency(address: str, calls: int) -> list[float]:
    c = await DaemonClient.connect(address)
    async with c:
        for _ in range(200):  # warm-up
            await c.get_status()
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await c.get_status()
            out.append(time.perf_counter() - t0)
        return out


async def pipelined(address: str, calls: int, depth: int = 64) -> float:
    c = await DaemonClient.connect(address)
    async with c:
        t0 = time.perf_counter()
        done = 0
        while done < calls:
            n = min(depth, calls - done)
            await asyncio.gather(*(c.get_status() for _ in range(n)))
            done += n
        return calls / (time.perf_counter() - t0)


async def concurrent(address: str, clients: int, each: int) -> tuple[float, int, list[float]]:
    conns = [await DaemonClient.connect(address) for _ in range(clients)]
    errors = 0
    lat: list[float] = []

    async def one(c: DaemonClient) -> None:
        nonlocal errors
        for _ in range(each):
            t0 = time.perf_counter()
            try:
                await c.get_status()
            except Exception:
                errors += 1
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in conns))
    rate = clients * each / (time.perf_counter() - t0)
    for c in conns:
        await c.close()
    return rate, errors, lat


def report(address: str, pid: int | None, args: argparse.Namespace) -> None:
    lat = client.run(latency(address, args.calls))
    ms = [x * 1000 for x in lat]
    p50 = statistics.median(ms)
    print(
        f"sequential GetStatus x{args.calls}: p50 {p50:.3f} ms, p90 {pct(ms, 90):.3f} ms, "
        f"p99 {pct(ms, 99):.3f} ms, max {max(ms):.3f} ms  (goal p50 < 1 ms: "
        f"{'met' if p50 < 1 else 'NOT met'})"
    )
    seq_rate = len(lat) / sum(lat)
    pipe_rate = client.run(pipelined(address, args.calls * 4))
    best = max(seq_rate, pipe_rate)
    print(
        f"throughput: sequential {seq_rate:,.0f} reads/s, pipelined (64 in flight) "
        f"{pipe_rate:,.0f} reads/s  (goal >= 5,000/s: {'met' if best >= 5000 else 'NOT met'})"
    )
    rate, errors, clat = client.run(concurrent(address, args.clients, args.each))
    cms = [x * 1000 for x in clat]
    print(
        f"{args.clients} concurrent clients x{args.each}: {rate:,.0f} reads/s, errors {errors}, "
        f"p50 {statistics.median(cms):.3f} ms, p99 {pct(cms, 99):.3f} ms  "
        f"(goal no errors: {'met' if errors == 0 else 'NOT met'})"
    )
    if pid is not None:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        rss = next(line.split()[1] for line in status if line.startswith("VmRSS:"))
        print(f"xenkdumpd RSS after the run: {int(rss) / 1024:.1f} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000, help="sequential calls for latency")
    ap.add_argument("--clients", type=int, default=100, help="concurrent client connections")
    ap.add_argument("--each", type=int, default=100, help="calls per concurrent client")
    ap.add_argument("--address", help="bus of an already running xenkdumpd (default: start one)")
    args = ap.parse_args()
    if args.address:
        report(args.address, None, args)
        return 0
    with running_daemon() as daemon:
        assert daemon.address is not None
        report(daemon.address, daemon.pid, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
