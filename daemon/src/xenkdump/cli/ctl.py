"""xenkdumpctl: inspect the hypervisor, build, load and unload crash images, talk to xenkdumpd.

Exit codes: 0 success, 1 the operation failed, 2 usage or input error.
Each command group lives in its own module exposing ``register(subparsers)``;
a command's handler takes the parsed arguments and returns an exit code.
Every error reaches the user as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from xenkdump import __version__
from xenkdump.errors import XenkdumpError
from xenkdump.exits import EXIT_USAGE, OneLineParser

# Command-group modules, in help order.  Each imports only argparse and light modules
# at import time; its handlers import what they need when they run (bench/cli.py).
COMMAND_MODULES = (
    "xenkdump.cli.cmd_hv",
    "xenkdump.cli.cmd_image",
    "xenkdump.cli.cmd_status",
    "xenkdump.cli.cmd_daemon",
    "xenkdump.cli.cmd_config",
    "xenkdump.cli.cmd_selftest",
    "xenkdump.cli.cmd_capture",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="xenkdumpctl",
        description=(
            "Inspect Xen's kexec facilities and manage the crash (kdump) kernel that Xen "
            "runs when the host crashes."
        ),
        epilog="Exit status: 0 success, 1 operation failed, 2 usage or input error.",
    )
    parser.add_argument("--version", action="version", version=f"xenkdumpctl {__version__}")
    parser.add_argument(
        "--hypervisor",
        metavar="xen|sim[:FILE]",
        default=None,
        help=(
            "which hypervisor to use: 'xen' (libxenctrl on a PV dom0) or 'sim[:FILE]' "
            "(a simulated host described by FILE; default /var/lib/xenkdump/sim/host.yaml). "
            "Default: xen when /proc/xen or /dev/xen/privcmd exists."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="xenkdumpctl: %(levelname)s: %(message)s",
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except XenkdumpError as exc:
        print(f"xenkdumpctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # A file we were pointed at: name it, say what went wrong.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"xenkdumpctl: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
