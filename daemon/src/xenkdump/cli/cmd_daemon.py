"""xenkdumpctl over D-Bus: the ``reload`` command, and status and unload helpers.

``status`` and ``unload`` are registered by the module that also handles the case
without a daemon; it calls ``daemon_status``/``daemon_unload`` first and falls back
when they return None (nobody owns org.xenkdump.Kdump1).  ``reload`` needs the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from xenkdump.dbus import names
from xenkdump.dbus.client import DaemonClient, DaemonNotRunningError, run

T = TypeVar("T")

EXIT_OK = 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "reload",
        help="ask xenkdumpd to re-read its configuration and reload the crash kernel",
        description=(
            "Ask the running xenkdumpd (over D-Bus, org.xenkdump.Kdump1.Reload) to re-read "
            "its configuration and load the crash image if anything changed.  Root only."
        ),
    )
    p.add_argument("--force", action="store_true", help="load even if nothing changed")
    p.add_argument("--kernel", metavar="FILE", help="use this crash kernel for this load only")
    p.add_argument("--initrd", metavar="FILE", help="use this initrd for this load only")
    p.add_argument("--cmdline", metavar="TEXT", help="use this command line for this load only")
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="fail (Busy) instead of waiting when a reload is already running",
    )
    p.set_defaults(handler=_reload)


async def _with_daemon(work: Callable[[DaemonClient], Awaitable[T]]) -> T:
    """Connect, check that xenkdumpd owns its name, run ``work``, disconnect."""
    c = await DaemonClient.connect()
    async with c:
        await c.require_owner()
        return await work(c)


def _optional(work: Callable[[DaemonClient], Awaitable[T]]) -> T | None:
    """``work`` against the daemon, or None when no daemon is on the bus."""
    try:
        return run(_with_daemon(work))
    except DaemonNotRunningError:
        return None


def _reload(args: argparse.Namespace) -> int:
    options: dict[str, object] = {"reason": "xenkdumpctl reload"}
    if args.force:
        options["force"] = True
    # The daemon does not share our working directory: send absolute paths.
    for key in ("kernel", "initrd"):
        value = getattr(args, key)
        if value is not None:
            options[key] = os.path.abspath(value)
    if args.cmdline is not None:
        options["cmdline"] = args.cmdline
    if not args.wait:
        options["wait"] = False

    async def work(c: DaemonClient) -> dict[str, object]:
        return await c.reload(options)

    # DaemonNotRunningError and RemoteError are XenkdumpErrors: ctl prints one line.
    status = run(_with_daemon(work))
    print(f"{status.get('State')}: {status.get('StateReason')}")
    return EXIT_OK


def daemon_owner_present() -> bool:
    """True when some process owns org.xenkdump.Kdump1 on the bus."""

    async def work(c: DaemonClient) -> bool:
        return True

    return _optional(work) is not None


def daemon_status(as_json: bool) -> int | None:
    """Print xenkdumpd's status; None if no daemon owns the name (the caller falls back)."""

    async def work(c: DaemonClient) -> dict[str, object]:
        return await c.get_status()

    status = _optional(work)
    if status is None:
        return None
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return EXIT_OK


def daemon_unload() -> int | None:
    """Ask xenkdumpd to unload; None if no daemon owns the name (the caller falls back)."""

    async def work(c: DaemonClient) -> dict[str, object]:
        return await c.unload({})

    status = _optional(work)
    if status is None:
        return None
    print(f"crash kernel unloaded; {status.get('State')}: {status.get('StateReason')}")
    return EXIT_OK


# ---- human output ----


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _range(start: int, size: int) -> str:
    return f"{start:#x}-{start + size - 1:#x} ({_mib(size)})" if size else "none"


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    return 0, 0


def _when(usec: object) -> str:
    if not isinstance(usec, int) or usec <= 0:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(usec / 1e6))


def format_status(s: dict[str, object]) -> str:
    """The human form of a GetStatus reply."""
    region, used = _pair(s.get("CrashRegion")), _pair(s.get("CrashRegionUsed"))
    free = region[1] - used[1]
    rows = [
        ("State", f"{s.get('State')} ({s.get('StateReason')})"),
        ("Crash kernel", s.get("CrashKernel") or "none"),
        ("Initrd", s.get("Initrd") or "none"),
        ("Command line", s.get("CommandLine") or ""),
        ("Image sha256", s.get("ImageSha256") or "none"),
        ("Config sha256", s.get("ConfigDigest") or ""),
        ("Crash region", _range(*region)),
        ("Used", f"{_range(*used)}, needs {_mib(int(str(s.get('RequiredBytes') or 0)))}"),
        ("Free", _mib(free) if region[1] else "none"),
        ("Loaded at", f"{_when(s.get('LoadedAt'))} (generation {s.get('Generation')})"),
        ("Last reload", s.get("LastReloadReason") or "none"),
    ]
    if s.get("LastError"):
        rows.append(("Last error", s.get("LastError")))
    if s.get("FallbackUnload"):
        rows.append(("Note", "the last load had to unload first (no free half)"))
    rows.append(("Versions", f"Xen {s.get('XenVersion')}, xenkdumpd {s.get('DaemonVersion')}"))
    rows.append(("Bus", f"{names.BUS_NAME} interface revision {s.get('InterfaceRevision')}"))
    return "\n".join(f"{k + ':':<15}{v}" for k, v in rows)
