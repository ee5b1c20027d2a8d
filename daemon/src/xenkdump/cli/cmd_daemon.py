"""xenkdumpctl over D-Bus: the ``reload`` command, and the helpers of status and unload.

``status`` and ``unload`` are configured by the modules that also handle the case
without a daemon; they ask the daemon first (``optional``, ``daemon_unload``) and fall
back when nobody owns org.xenkdump.Kdump1.  ``reload`` needs the daemon.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from xenkdump.exits import EXIT_OK

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import TypeVar

    from xenkdump.dbus.client import DaemonClient

    T = TypeVar("T")


def configure(command: str, p: argparse.ArgumentParser) -> None:
    p.description = (
        "Ask the running xenkdumpd (over D-Bus, org.xenkdump.Kdump1.Reload) to re-read "
        "its configuration and load the crash image if anything changed.  Root only."
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


def optional(work: Callable[[DaemonClient], T]) -> T | None:
    """``work`` against the running daemon, or None when no daemon is on the bus."""
    from xenkdump.dbus.client import DaemonNotRunningError, connected

    try:
        c = connected()
    except DaemonNotRunningError:
        return None
    with c:
        return work(c)


def _reload(args: argparse.Namespace) -> int:
    from xenkdump.dbus.client import connected

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
    # DaemonNotRunningError and RemoteError are XenkdumpErrors: ctl prints one line.
    with connected() as c:
        status = c.reload(options)
    print(f"{status.get('State')}: {status.get('StateReason')}")
    return EXIT_OK


def daemon_owner_present() -> bool:
    """True when some process owns org.xenkdump.Kdump1 on the bus."""
    return optional(lambda c: True) is not None


def daemon_unload() -> int | None:
    """Ask xenkdumpd to unload; None if no daemon owns the name (the caller falls back)."""
    status = optional(lambda c: c.unload({}))
    if status is None:
        return None
    print(f"crash kernel unloaded; {status.get('State')}: {status.get('StateReason')}")
    return EXIT_OK
