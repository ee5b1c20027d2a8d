"""xenkdumpctl load | unload | plan | status: build, load and inspect the crash image.

All four take the global ``--hypervisor xen|sim[:FILE]`` and their own
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

``status [--json]``
    What xenkdump armed, from its own record (Xen's status call cannot say,
    docs/xen-kexec-contract.md §4.1).  The JSON form is ``{"armed": false}`` or
    ``{"armed": true, "record": {LoadRecord fields}}`` plus ``"counters"``
    (loads_issued, unloads_issued, generation).  Exit 0 either way.

Exit codes as ctl.py: 0 success, 1 the hypervisor refused, 2 bad input.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from pathlib import Path

from xenkdump.cli import cmd_daemon
from xenkdump.errors import InputError, XenkdumpError
from xenkdump.hv.port import AddressRange, Hypervisor
from xenkdump.hv.select import open_hypervisor
from xenkdump.image import loader
from xenkdump.image.planner import MIB, ImageInputs, Plan
from xenkdump.state.record import LoadRecord, RecordStore, StateFile, default_state_dir

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("load", help="build the crash image and load it into Xen")
    _image_options(p)
    _state_option(p)
    _no_daemon_option(p, "load even though xenkdumpd runs (it will not know of this image)")
    p.set_defaults(handler=cmd_load)

    p = subparsers.add_parser(
        "unload", help="unload the crash image (through xenkdumpd when it runs)"
    )
    _state_option(p)
    _no_daemon_option(p, "unload directly even when xenkdumpd runs")
    p.set_defaults(handler=cmd_unload)

    p = subparsers.add_parser("plan", help="print the segment plan without loading")
    _image_options(p)
    _state_option(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler=cmd_plan)

    p = subparsers.add_parser(
        "status",
        help="show the armed crash image (from xenkdumpd when it runs, else from the record)",
    )
    _state_option(p)
    _no_daemon_option(p, "read xenkdump's record directly even when xenkdumpd runs")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(handler=cmd_status)


def _no_daemon_option(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--no-daemon", action="store_true", help=text)


def _daemon_runs() -> bool:
    """True when xenkdumpd owns its name on the (system or $DBUS_SYSTEM_BUS_ADDRESS) bus."""
    return cmd_daemon.daemon_owner_present()


def _state_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the load record lives (default: $XENKDUMP_STATE_DIR or /run/xenkdump)",
    )


def _image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel", type=Path, required=True, metavar="PATH", help="the bzImage")
    p.add_argument("--initrd", type=Path, default=None, metavar="PATH", help="the initramfs")
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


def _store(args: argparse.Namespace) -> RecordStore:
    state_dir: Path | None = args.state_dir
    return RecordStore(state_dir if state_dir is not None else default_state_dir())


def _inputs(args: argparse.Namespace) -> ImageInputs:
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
    store = _store(args)
    inputs = _inputs(args)  # bad files fail here, before the hypervisor is touched
    with open_hypervisor(args.hypervisor) as hv:
        host = loader.gather_host(hv)
        rec = loader.load(hv, inputs, host, store, reason="xenkdumpctl load")
    print(
        f"loaded crash image generation {rec.generation} "
        f"({rec.half} {'area' if rec.half == 'whole' else 'half'}): {rec.kernel}"
    )
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    if not args.no_daemon:
        code = cmd_daemon.daemon_unload()
        if code is not None:
            return code
    store = _store(args)
    with open_hypervisor(args.hypervisor) as hv:
        loader.unload(hv, store)
    print("crash image unloaded")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    store = _store(args)
    inputs = _inputs(args)
    with open_hypervisor(args.hypervisor) as hv:
        host = loader.gather_host(hv)
        armed = store.read()
        if armed is not None and armed.crash_range != (host.crash.start, host.crash.size):
            armed = None
        plan, must_unload = loader.plan_for_load(inputs, host, armed)
    if args.json:
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
        f"needs {-(-plan.required_bytes // MIB)} MiB",
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


def _when(epoch: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    age = max(0, int(time.time() - epoch))
    return f"{stamp:%Y-%m-%d %H:%M:%S} UTC ({age} s ago)"


def render_status(record: LoadRecord | None, crash: AddressRange | None) -> str:
    """Human-readable status of the armed crash image from xenkdump's record."""
    lines: list[str] = []
    if crash is not None:
        if crash.size:
            lines.append(f"crash area:  {crash.start:#x}-{crash.end:#x} ({crash.size // MIB} MiB)")
        else:
            lines.append("crash area:  none (Xen was booted without crashkernel=)")
    if record is None:
        lines.append("crash image: not loaded (according to xenkdump's record)")
        return "\n".join(lines)
    start, size = record.crash_range
    if record.half == "whole":
        where = "the whole crash area"
    else:
        mid = start + (size // 2) // 4096 * 4096
        lo, hi = (start, mid) if record.half == "lower" else (mid, start + size)
        where = f"the {record.half} half of the crash area ({lo:#x}-{hi:#x})"
    lines += [
        f"crash image: loaded, generation {record.generation}, in {where}",
        f"kernel:      {record.kernel}",
        f"             sha256 {record.kernel_sha256}",
        f"initrd:      {record.initrd or '(none)'}",
    ]
    if record.initrd:
        lines.append(f"             sha256 {record.initrd_sha256}")
    lines += [
        f"cmdline:     {record.cmdline}",
        f"image:       sha256 {record.image_sha256}, entry {record.entry:#x}, "
        f"{len(record.segments)} segments",
        f"loaded:      {_when(record.loaded_at)} ({record.reason})",
    ]
    if record.fallback_unload:
        suggest = loader.suggested_reservation(record.required_bytes) // MIB
        lines.append(
            f"warning:     the image ({-(-record.required_bytes // MIB)} MiB) does not fit in "
            f"half of the {size // MIB} MiB crash area, so reloads unload it first (a window "
            f"without a crash kernel); crashkernel={suggest}M on the Xen command line avoids this"
        )
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    if not args.no_daemon:
        code = cmd_daemon.daemon_status(args.json)
        if code is not None:
            return code
    store = _store(args)
    state: StateFile = store.read_state()
    crash: AddressRange | None = None
    try:
        hv: Hypervisor
        with open_hypervisor(args.hypervisor) as hv:
            crash = hv.crash_range()
    except XenkdumpError as exc:
        # The record is the answer; the crash area is only context.  Say why it is
        # missing only when a hypervisor was named explicitly.
        level = logging.WARNING if args.hypervisor is not None else logging.DEBUG
        log.log(level, "cannot ask the hypervisor for the crash area: %s", exc)
    if args.json:
        out: dict[str, object] = {
            "armed": state.armed is not None,
            "counters": {
                "generation": state.generation,
                "loads_issued": state.loads_issued,
                "unloads_issued": state.unloads_issued,
            },
        }
        if state.armed is not None:
            out["record"] = state.armed.to_json()
        if crash is not None:
            out["crash_range"] = {"start": crash.start, "size": crash.size}
        json.dump(out, sys.stdout, indent=1)
        print()
    else:
        print(render_status(state.armed, crash))
    return 0
