"""xenkdumpctl initrd | dumps: xenkdump's crash initramfs and the dumps it saved
(docs/capture.md).

``dumps [--config FILE] [--json]``
    List the dump directories at the configured target (a local directory, or a device
    or NFS export while it is mounted on dom0), oldest first, with their result read
    from each metadata.json.  JSON: a list of {"path", "host", "time" (seconds since the
    epoch), "time_text", "result" (complete | failed | incomplete | unknown), "bytes",
    "vmcore_bytes", "how"}.

``initrd [--config FILE] [--output PATH] [--force] [--json]``
    Build the crash initramfs exactly as xenkdumpd does for ``initrd: xenkdump``:
    mkinitramfs with xenkdump's hook, the capture agent, makedumpfile, the target's
    modules and the ``dump:`` settings of FILE (default /etc/xenkdump/xenkdump.yaml,
    built-in defaults when absent), for the kernel the configuration names.  It is
    rebuilt only when its content changed (``--force``: always).  Says what it holds,
    its size, and the crash image's size against the crash area.  The JSON form::

        {"path": str, "content_sha256": hex, "bytes": int, "unpacked_bytes": int,
         "kernel_version": str, "modules": [str], "programs": [str],
         "build_seconds": float, "rebuilt": bool,
         "image_required_bytes": int,     # the crash image (kernel + this initrd) needs
         "crash_area_bytes": int, "half_bytes": int, "fits_in_half": bool,
         "target": str,                   # the dump target in words
         "xen_console": str}              # how the agent will find Xen's console ring
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from xenkdump.cli.options import path_arg
from xenkdump.paths import CONFIG_FILE, INITRD_DIR, INITRD_DIR_ENV
from xenkdump.units import MIB

if TYPE_CHECKING:
    from pathlib import Path

    from xenkdump.settings import Settings


def configure(command: str, p: argparse.ArgumentParser) -> None:
    {"initrd": _initrd_arguments, "dumps": _dumps_arguments}[command](p)


def _initrd_arguments(p: argparse.ArgumentParser) -> None:
    config_option(p)
    p.add_argument(
        "--output",
        type=path_arg,
        default=None,
        metavar="PATH",
        help=(
            f"where to write it (default ${INITRD_DIR_ENV} or {INITRD_DIR}, "
            "/crash-initrd.img-RELEASE in it)"
        ),
    )
    p.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_initrd)


def _dumps_arguments(p: argparse.ArgumentParser) -> None:
    config_option(p)
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(handler=cmd_dumps)


def config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=path_arg,
        default=None,
        metavar="FILE",
        help=f"the configuration to use (default {CONFIG_FILE}; defaults if absent)",
    )


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings of --config FILE, or of the default file, or the built-in defaults."""
    from xenkdump.settings import DEFAULT_CONFIG_PATH, Settings, load_settings

    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    return load_settings(path) if path is not None else Settings()


def cmd_initrd(args: argparse.Namespace) -> int:
    from xenkdump.capture import initramfs
    from xenkdump.daemon import kernels
    from xenkdump.hv.select import open_hypervisor
    from xenkdump.image import loader
    from xenkdump.image.planner import required_bytes

    settings = settings_of(args)
    files = kernels.resolve(settings)
    version = initramfs.kernel_version_of(files.kernel)
    with open_hypervisor(args.hypervisor) as hv:
        facts = initramfs.capture_facts(hv, version, boot_dir=settings.boot_dir)
        built = initramfs.ensure(settings.dump, facts, output=args.output, force=args.force)
        host = loader.gather_host(hv)
    inputs = loader.read_inputs(files.kernel, built.path, dom0_cmdline="")
    need = required_bytes(inputs, host)
    half = host.crash.size // 2
    doc = built.to_json()
    doc.update(
        image_required_bytes=need,
        crash_area_bytes=host.crash.size,
        half_bytes=half,
        fits_in_half=need <= half,
        target=settings.dump.describe_target(),
        xen_console=(
            f"located through the symbol table of {facts.xen_console['XK_XEN_SYMS_FROM']}"
            if facts.xen_console
            else f"not locatable: {facts.xen_console_missing}"
        ),
    )
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        print()
        return 0
    state = "built" if built.rebuilt else "up to date"
    took = f" in {built.seconds:.1f} s" if built.rebuilt else ""
    print(f"{built.path}: {state}{took}")
    print(f"  size        {built.size / MIB:.1f} MiB ({built.unpacked / MIB:.1f} MiB unpacked)")
    print(f"  kernel      {version}")
    print(f"  programs    {' '.join(built.programs)} + the capture agent")
    print(f"  modules     {' '.join(built.modules) or '-'}")
    print(f"  dump target {settings.dump.describe_target()}")
    print(f"  xen console {doc['xen_console']}")
    room = "fits in" if need <= half else "does NOT fit in"
    print(
        f"  crash image needs {-(-need // MIB)} MiB: {room} half of the "
        f"{host.crash.size // MIB} MiB crash area ({half // MIB} MiB, "
        f"{(half - need) // MIB} MiB to spare)"
    )
    return 0


def cmd_dumps(args: argparse.Namespace) -> int:
    from xenkdump.capture import dumps
    from xenkdump.units import size_text

    settings = settings_of(args)
    where = dumps.dump_directory(settings.dump)
    found = dumps.list_dumps(where)
    if args.json:
        json.dump([d.to_json() for d in found], sys.stdout, indent=1)
        print()
        return 0
    if not found:
        print(f"no dumps in {where}")
        return 0
    print(f"{'time (UTC)':<20} {'result':<11} {'size':>10}  path")
    for d in found:
        stamp = str(d.to_json()["time_text"]).removesuffix(" UTC")
        print(f"{stamp:<20} {d.result:<11} {size_text(d.bytes):>10}  {d.path}")
    return 0
