"""Commands for fleets: ``check-config`` (offline, no daemon, no Xen) and ``advise``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from xenkdump.cli.options import path_arg
from xenkdump.errors import ConfigError
from xenkdump.paths import CONFIG_FILE

if TYPE_CHECKING:
    from pathlib import Path


def configure(command: str, p: argparse.ArgumentParser) -> None:
    {"check-config": _check_config_arguments, "advise": _advise_arguments}[command](p)


def _check_config_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Read configuration files exactly as xenkdumpd would and report every problem, "
        "one per line, as FILE:LINE: KEY: expected ..., found ...  Each FILE is laid "
        "over the previous ones, followed by its own drop-ins (FILE.d/*.yaml in lexical "
        "order); a directory stands for its *.yaml files.  Without FILE: "
        f"{CONFIG_FILE} and its drop-ins.  Then the kernel and initrd the "
        "configuration names must be readable files (--schema-only skips this, e.g. "
        "to check a file before it is pushed to a host).  Needs no daemon, no Xen."
    )
    p.epilog = "Exit status: 0 valid, 2 a problem was found (every one is printed)."
    p.add_argument("files", nargs="*", type=path_arg, metavar="FILE", help="configuration files")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--schema-only",
        action="store_true",
        help="check only the files' syntax and values, not the kernel and initrd they name",
    )
    p.set_defaults(handler=cmd_check_config)


def _advise_arguments(a: argparse.ArgumentParser) -> None:
    a.description = (
        "Judge the crash area Xen reserved (crashkernel= on Xen's own command line) "
        "against the configured crash image's measured needs: two images, one per half "
        "of the area, so that reloads never leave the host without a crash kernel.  "
        "When it is missing or too small, print the exact GRUB_CMDLINE_XEN_DEFAULT line "
        "for /etc/default/grub.d/xen.cfg; a crashkernel= on dom0's command line (which "
        "a PV dom0 ignores) is reported.  Needs no daemon."
    )
    a.add_argument(
        "--config",
        type=path_arg,
        default=None,
        metavar="FILE",
        help=f"the configuration naming the crash image (default {CONFIG_FILE} and "
        "its drop-ins, built-in defaults when absent)",
    )
    a.add_argument("--json", action="store_true", help="print the advice as JSON")
    a.set_defaults(handler=cmd_advise)


def cmd_check_config(args: argparse.Namespace) -> int:
    import json

    from xenkdump.settings.check import check_config
    from xenkdump.settings.model import DEFAULT_CONFIG_PATH

    files: list[Path] = args.files
    if not files and DEFAULT_CONFIG_PATH.exists():
        files = [DEFAULT_CONFIG_PATH]  # as xenkdumpd: built-in defaults when it is absent
    report = check_config(files, check_files=not args.schema_only)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    elif report.valid:
        assert report.settings is not None
        names = ", ".join(str(f) for f in report.files) or "no file: the built-in defaults"
        print(f"valid: {names} (sha256 {report.settings.digest[:12]})")
    else:
        for problem in report.problems:
            print(problem, file=sys.stderr)
    return 0 if report.valid else ConfigError.exit_code


def cmd_advise(args: argparse.Namespace) -> int:
    import json

    from xenkdump.advice.gather import host_advice, measure
    from xenkdump.hv.select import open_hypervisor
    from xenkdump.settings.load import load_settings
    from xenkdump.settings.model import DEFAULT_CONFIG_PATH, Settings

    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    settings = load_settings(path) if path is not None else Settings()
    with open_hypervisor(args.hypervisor) as hv:
        advice = host_advice(hv, measure(hv, settings))
    print(json.dumps(advice.as_json(), indent=2) if args.json else advice.text())
    return 0
