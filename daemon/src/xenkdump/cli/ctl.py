"""xenkdumpctl: inspect the hypervisor, build, load and unload crash images, talk to xenkdumpd.

Exit codes: 0 success, 1 the operation failed, 2 usage or input error.
Each command lives in a module exposing ``configure(command, parser)``, which gives
the command's parser its description, arguments and handler; a handler takes the
parsed arguments and returns an exit code.  Every error reaches the user as one line
on stderr, never a traceback.

Start-up time (bench/cli.py): the command list below is all that ``--help`` needs, and
a run builds the arguments of the one command it names; only when the command line
leaves any doubt (an abbreviated option, an unknown word) is every command built.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from xenkdump import __version__
from xenkdump.errors import XenkdumpError
from xenkdump.exits import EXIT_USAGE, OneLineParser

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

# Every command, in help order: name -> (the module that configures it, its help line).
COMMANDS: dict[str, tuple[str, str]] = {
    "hv": ("xenkdump.cli.cmd_hv", "inspect the hypervisor's kexec facilities"),
    "load": ("xenkdump.cli.cmd_image", "build the crash image and load it into Xen"),
    "unload": (
        "xenkdump.cli.cmd_image",
        "unload the crash image (through xenkdumpd when it runs)",
    ),
    "plan": ("xenkdump.cli.cmd_image", "print the segment plan without loading"),
    "status": (
        "xenkdump.cli.cmd_status",
        "show the armed crash image (from xenkdumpd when it runs, else from the record)",
    ),
    "reload": (
        "xenkdump.cli.cmd_daemon",
        "ask xenkdumpd to re-read its configuration and reload the crash kernel",
    ),
    "check-config": (
        "xenkdump.cli.cmd_config",
        "check configuration files without a daemon or Xen (exit 0 valid, 2 not)",
    ),
    "advise": (
        "xenkdump.cli.cmd_config",
        "is Xen's crash area (crashkernel=) right for the crash image? what to change",
    ),
    "selftest": (
        "xenkdump.cli.cmd_selftest",
        "prove the crash kernel boots and captures, in a staging VM (no crash)",
    ),
    "initrd": (
        "xenkdump.cli.cmd_capture",
        "build xenkdump's crash initramfs (capture agent, makedumpfile)",
    ),
    "dumps": ("xenkdump.cli.cmd_capture", "list the dumps saved at the configured target"),
}

# The global options (before the command): flags, and those taking a value.
GLOBAL_FLAGS = ("-v", "--verbose")
GLOBAL_VALUE_OPTIONS = ("--hypervisor",)
# Options that end the run before any command's arguments matter.
GLOBAL_EXITS = ("-h", "--help", "--version")

Handler = Callable[[argparse.Namespace], int]


def named_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs, "" when it runs none (help, version), None when unsure."""
    words = iter(argv)
    for word in words:
        if word in GLOBAL_EXITS:
            return ""
        if word in GLOBAL_VALUE_OPTIONS:
            next(words, None)
        elif word in COMMANDS:
            return word
        elif word not in GLOBAL_FLAGS and not word.startswith(
            tuple(f"{o}=" for o in GLOBAL_VALUE_OPTIONS)
        ):
            return None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """xenkdumpctl's parser: every command built, or with ``argv`` only what it needs."""
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
        *GLOBAL_VALUE_OPTIONS,
        metavar="xen|sim[:FILE]",
        default=None,
        help=(
            "which hypervisor to use: 'xen' (libxenctrl on a PV dom0) or 'sim[:FILE]' "
            "(a simulated host described by FILE; default /var/lib/xenkdump/sim/host.yaml). "
            "Default: xen when /proc/xen or /dev/xen/privcmd exists."
        ),
    )
    parser.add_argument(*GLOBAL_FLAGS, action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    only = None if argv is None else named_command(argv)
    for name, (module, help_line) in COMMANDS.items():
        if only in (None, "", name):
            p = sub.add_parser(name, help=help_line)
            if only != "":
                importlib.import_module(module).configure(name, p)
    return parser


class LoggingSetup:
    """Configures logging for xenkdumpctl ("xenkdumpctl: LEVEL: message" on stderr).

    Many runs never import logging (a status read over D-Bus, ``hv info`` on Xen),
    and importing it costs about half the interpreter's own start-up (bench/cli.py).
    So unless it is imported already, this waits on ``sys.meta_path`` for the first
    import of logging and configures the module as soon as it is loaded, before
    anything can log.
    """

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        if "logging" in sys.modules:
            self.configure(sys.modules["logging"])
        else:
            sys.meta_path.insert(0, self)

    def configure(self, logging: ModuleType) -> None:
        logging.basicConfig(
            level=logging.DEBUG if self.verbose else logging.WARNING,
            format="xenkdumpctl: %(levelname)s: %(message)s",
        )

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != "logging":
            return None
        self.close()
        for finder in sys.meta_path:  # the usual finders, as the import would have
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                self.wrap(spec.loader)
                return spec
        return None

    def wrap(self, loader: Loader) -> None:
        """Make ``loader`` configure the module it has loaded."""
        load = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            loader.exec_module = load  # type: ignore[method-assign]
            load(module)
            self.configure(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]

    def close(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging_setup = LoggingSetup(args.verbose)
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
    finally:
        logging_setup.close()


if __name__ == "__main__":
    sys.exit(main())
