"""xenkdumpctl load | unload | plan: build, load and inspect the crash image.

All three take the global ``--hypervisor xen|sim[:FILE]`` and their own
``--state-dir DIR`` (default ``$XENKDUMP_STATE_DIR`` or /run/xenkdump), where
the load record lives (xenkdump.state.record).

``load --kernel PATH [--initrd PATH] [--append ARGS | --cmdline ARGS] [--remove WORD]``
    Plan and load the crash image.  An armed image is replaced without a
    window: the new image goes into the half of the crash area the armed one
    does not use (image/planner.py).  Only when it does not fit in half is the
    armed image unloaded first, with a warning naming the reservation that
    would avoid it.  A failed load leaves the armed image and the record as
    they were.

``unload``
    Unload the crash image and record that nothing is armed.

``plan [same options as load] [--json]``
    Print the segment plan ``load`` would use now, without loading.
    The JSON form (stable; integers are plain JSON numbers)::

        {"entry": int,                       # the address Xen jumps to (in the purgatory)
         "crash_range": {"start": int, "size": int},
         "half": "lower" | "upper" | "whole",
         "required_bytes": int,              # crash-area bytes this image needs in a half
         "cmdline": str,                     # the crash kernel's full command line
         "image_sha256": hex,                # one digest over all segments and the entry
         "must_unload_first": bool,          # load would unload the armed image first
         "segments": [                       # sorted by dest
            {"kind": "kernel" | "initrd" | "boot_params" | "cmdline" | "elfcorehdr"
                     | "purgatory" | "backup" | "lowmem" | "guard",
             "dest": int, "memsz": int, "bufsz": int,
             "sha256": hex}]}                # of the buffer; "" for map-only (bufsz 0) ones

Exit codes as ctl.py: 0 success, 1 the hypervisor refused, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from xenkdump.cli.options import no_daemon_option, path_arg, state_option, store
from xenkdump.errors import InputError
from xenkdump.units import MIB, mib_up

if TYPE_CHECKING:
    from xenkdump.image.planner import ImageInputs, Plan


def configure(command: str, p: argparse.ArgumentParser) -> None:
    {"load": _load_arguments, "unload": _unload_arguments, "plan": _plan_arguments}[command](p)


def _load_arguments(p: argparse.ArgumentParser) -> None:
    _image_options(p, kernel_required=False)
    p.add_argument(
        "--config",
        type=path_arg,
        default=None,
        metavar="FILE",
        help=(
            "take kernel, initrd, command line and dump settings from this configuration "
            "(instead of --kernel and the other image options)"
        ),
    )
    state_option(p)
    no_daemon_option(p, "load even though xenkdumpd runs (it will not know of this image)")
    p.set_defaults(handler=cmd_load)


def _unload_arguments(p: argparse.ArgumentParser) -> None:
    state_option(p)
    no_daemon_option(p, "unload directly even when xenkdumpd runs")
    p.set_defaults(handler=cmd_unload)


def _plan_arguments(p: argparse.ArgumentParser) -> None:
    _image_options(p)
    state_option(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler=cmd_plan)


def _daemon_runs() -> bool:
    """True when xenkdumpd owns its name on the (system or $DBUS_SYSTEM_BUS_ADDRESS) bus."""
    from xenkdump.cli import cmd_daemon

    return cmd_daemon.daemon_owner_present()


def _image_options(p: argparse.ArgumentParser, *, kernel_required: bool = True) -> None:
    p.add_argument(
        "--kernel", type=path_arg, required=kernel_required, metavar="PATH", help="the bzImage"
    )
    p.add_argument("--initrd", type=path_arg, default=None, metavar="PATH", help="the initramfs")
    line = p.add_mutually_exclusive_group()
    line.add_argument(
        "--append",
        action="append",
        default=[],
        metavar="ARGS",
        help="add ARGS to the crash command line (built from dom0's); repeatable",
    )
    line.add_argument(
        "--cmdline",
        default=None,
        metavar="ARGS",
        help="use ARGS as the whole crash command line (elfcorehdr= is still added)",
    )
    p.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="WORD",
        help="drop parameter WORD (and WORD=...) from the command line; repeatable",
    )


def _inputs(args: argparse.Namespace) -> ImageInputs:
    from xenkdump.image import loader

    append = [word for arg in args.append for word in arg.split()]
    return loader.read_inputs(
        args.kernel,
        args.initrd,
        cmdline=args.cmdline,
        append=append,
        remove=args.remove,
    )


def cmd_load(args: argparse.Namespace) -> int:
    if not args.no_daemon and _daemon_runs():
        raise InputError(
            "xenkdumpd is running and manages the crash kernel: change its configuration and "
            "run `xenkdumpctl reload`, or `xenkdumpctl reload --kernel PATH --initrd PATH` for a "
            "one-off image (or pass --no-daemon to load behind its back)"
        )
    from xenkdump.daemon import kernels
    from xenkdump.hv.select import open_hypervisor
    from xenkdump.image import loader
    from xenkdump.settings.load import load_settings

    records = store(args)
    if args.config is None:
        if args.kernel is None:
            raise InputError("load: expected --kernel PATH or --config FILE, found neither")
        inputs = _inputs(args)  # bad files fail here, before the hypervisor is touched
    elif args.kernel or args.initrd or args.append or args.cmdline or args.remove:
        raise InputError(
            "load --config: the configuration names the kernel, initrd and command line; "
            "expected no --kernel, --initrd, --append, --cmdline or --remove"
        )
    with open_hypervisor(args.hypervisor) as hv:
        if args.config is not None:
            inputs = kernels.configured_inputs(load_settings(args.config), hv)
        host = loader.gather_host(hv)
        ledger = loader.recall(hv, records, crash=host.crash)
        rec = loader.load(hv, inputs, host, ledger, reason="xenkdumpctl load")
    print(
        f"loaded crash image generation {rec.generation} "
        f"({rec.half} {'area' if rec.half == 'whole' else 'half'}): {rec.kernel}"
    )
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    if not args.no_daemon:
        from xenkdump.cli import cmd_daemon

        code = cmd_daemon.daemon_unload()
        if code is not None:
            return code
    from xenkdump.hv.select import open_hypervisor
    from xenkdump.image import loader

    records = store(args)
    with open_hypervisor(args.hypervisor) as hv:
        loader.unload(hv, loader.recall(hv, records))
    print("crash image unloaded")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from xenkdump.hv.select import open_hypervisor
    from xenkdump.image import loader

    records = store(args)
    inputs = _inputs(args)
    with open_hypervisor(args.hypervisor) as hv:
        host = loader.gather_host(hv)
        knowledge = loader.recall(hv, records, crash=host.crash, settle=False).knowledge
        plan, must_unload = loader.plan_for_load(inputs, host, knowledge.armed)
        must_unload = must_unload or not knowledge.known
    if args.json:
        import json

        out = plan.to_json()
        out["must_unload_first"] = must_unload
        json.dump(out, sys.stdout, indent=1)
        print()
    else:
        print(render_plan(plan, must_unload))
    return 0


def render_plan(plan: Plan, must_unload: bool = False) -> str:
    crash = plan.crash_range
    lines = [
        f"crash area  {crash.start:#x}-{crash.end:#x} ({crash.size // MIB} MiB), "
        f"image in the {plan.half} {'area' if plan.half == 'whole' else 'half'}, "
        f"needs {mib_up(plan.required_bytes)}",
        f"entry       {plan.entry:#x}",
        f"cmdline     {plan.cmdline}",
        f"{'kind':<12}{'dest':>20}{'memsz':>12}{'bufsz':>12}  sha256",
    ]
    for s in plan.segments:
        lines.append(
            f"{s.kind:<12}{s.dest:>#20x}{s.memsz:>#12x}{s.bufsz:>#12x}  "
            f"{s.sha256[:16] or '(map only)'}"
        )
    if must_unload:
        lines.append("load would unload the armed image first (it does not fit in half)")
    return "\n".join(lines)
