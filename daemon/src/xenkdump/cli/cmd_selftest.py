"""xenkdumpctl selftest: prove the crash path in a staging VM (docs/selftest.md).

``selftest [--level boot|handoff] [--xen PATH] [--json] [--timeout S]``
``         [--config FILE | --kernel PATH [--initrd PATH] [--cmdline ARGS]] [--crash-size MIB]``

Standalone, the image is the one ``--config FILE`` (xenkdump.yaml) or
``--kernel/--initrd/--cmdline`` describe.  With a reachable hypervisor
(``--hypervisor``, or a Xen dom0) the crash command line and the crash area's size
are exactly what ``xenkdumpctl load`` would use (nothing is loaded); without one
the command line is used as given and the area is ``--crash-size`` MiB.

Progress: a bar with the current stage on a terminal, one line per stage
otherwise.  Exit status: 0 passed, 1 failed (one line: the stage and the
reason), 2 usage or input error (nothing was booted).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from xenkdump.errors import HypervisorError, InputError, OperationError, XenkdumpError
from xenkdump.selftest import DEFAULT_TIMEOUT, DEFAULT_WORK_DIR
from xenkdump.selftest.stages import Level, Stage
from xenkdump.units import MIB

if TYPE_CHECKING:  # the run's modules are imported when a run starts (fast --help)
    from xenkdump.selftest import plan
    from xenkdump.selftest.job import Result

DEFAULT_CRASH_MIB = 256


def configure(command: str, p: argparse.ArgumentParser) -> None:
    p.description = (
        "Boot the crash image in a staging VM (QEMU) and follow it through its stages: "
        "the crash kernel comes up in the crash area's memory, finds a token in "
        "/proc/vmcore and writes a dump to a scratch disk. The host is never crashed."
    )
    p.epilog = "Exit status: 0 passed, 1 failed (stage and reason), 2 usage or input error."
    p.add_argument(
        "--level",
        choices=[lv.value for lv in Level],
        default=Level.BOOT.value,
        help="boot: the crash kernel, initrd and command line booted directly (default); "
        "handoff: through this host's Xen (not available in this version)",
    )
    p.add_argument("--xen", metavar="PATH", default="", help="the Xen binary (handoff level)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up after this long (default {DEFAULT_TIMEOUT:.0f})",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, metavar="FILE", help="test the image FILE names")
    src.add_argument("--kernel", type=Path, metavar="PATH", help="the crash kernel (bzImage)")
    p.add_argument("--initrd", type=Path, metavar="PATH", help="the crash initrd")
    p.add_argument("--cmdline", metavar="ARGS", help="the crash kernel's command line")
    p.add_argument(
        "--crash-size",
        type=int,
        metavar="MIB",
        default=None,
        help=f"the crash area's size without a hypervisor (default {DEFAULT_CRASH_MIB})",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        metavar="DIR",
        help=f"where the run's scratch files go, removed afterwards (default {DEFAULT_WORK_DIR})",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (debugging)")
    p.set_defaults(handler=cmd_selftest)


def _image(args: argparse.Namespace) -> plan.Image:
    """The image under test, planned as ``load`` would plan it when a hypervisor answers."""
    from xenkdump.image import loader
    from xenkdump.selftest import plan

    if args.config is not None:
        from xenkdump.daemon.kernels import configured_inputs
        from xenkdump.settings.load import load_settings

        if args.initrd is not None or args.cmdline is not None:
            raise InputError("--initrd/--cmdline: not with --config (the file names the image)")
        # initrd: xenkdump builds the crash initramfs as xenkdumpd would (no Xen facts).
        inputs = configured_inputs(load_settings(args.config), None)
    elif args.kernel is not None:
        inputs = loader.read_inputs(args.kernel, args.initrd, cmdline=args.cmdline)
    else:
        raise InputError("selftest: give --config FILE or --kernel PATH (xenkdumpd is not running)")
    cmdline, crash_size = inputs.cmdline, (args.crash_size or DEFAULT_CRASH_MIB) * MIB
    if args.crash_size is None and (args.hypervisor is not None or _xen_present()):
        from xenkdump.hv.select import open_hypervisor

        try:
            with open_hypervisor(args.hypervisor) as hv:
                host = loader.gather_host(hv)
                planned, _ = loader.plan_for_load(inputs, host, None)
            cmdline, crash_size = planned.cmdline, host.crash.size
        except HypervisorError as exc:
            raise InputError(f"{exc} (or give --crash-size MIB)") from None
    return plan.Image(
        kernel=inputs.kernel_path,
        initrd=inputs.initrd_path or "",
        cmdline=cmdline,
        crash_size=crash_size,
    )


def _xen_present() -> bool:
    from xenkdump.hv.select import xen_present

    return xen_present()


class Progress:
    """A bar on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()

    def __call__(self, stage: Stage, fraction: float) -> None:
        if self.tty:
            width = 30
            done = int(fraction * width)
            self.out.write(f"\r[{'#' * done}{'.' * (width - done)}] {fraction:4.0%} {stage:<16}")
        else:
            self.out.write(f"selftest: {stage} ({fraction:.0%})\n")
        self.out.flush()

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def run_standalone(args: argparse.Namespace) -> Result:
    from xenkdump.selftest.job import Job, Options

    options = Options(
        level=Level(args.level),
        timeout=args.timeout,
        xen=args.xen,
        work_dir=args.work_dir,
        keep=args.keep,
    )
    image = _image(args)
    progress = Progress(sys.stderr)
    job = Job(image, options, progress=progress)
    job.preflight()  # refusals before anything boots, as one line
    # The VM's death signal follows the thread that started it (selftest/vm.py): a
    # thread that lives as long as the run; the main thread waits for Ctrl-C.
    box: list[Result | XenkdumpError] = []

    def work() -> None:
        try:
            box.append(job.run())
        except XenkdumpError as exc:
            box.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:
        job.cancel()
        worker.join()
    finally:
        progress.end()
    if not box:
        raise OperationError("selftest: the run ended without a result")
    if isinstance(box[0], XenkdumpError):
        raise box[0]
    return box[0]


def run_through_daemon(args: argparse.Namespace) -> dict[str, object] | None:
    """The armed image's self-test, run by xenkdumpd; None when it does not run.

    Follows CurrentSelfTest (a status read, cheap) until LastSelfTest has this id;
    Ctrl-C cancels the run.
    """
    from xenkdump.cli import cmd_daemon
    from xenkdump.dbus.client import DaemonClient

    if args.xen:
        raise InputError("--xen: xenkdumpd uses its configured Xen binary (or stop it first)")
    progress = Progress(sys.stderr)
    options = {"level": args.level, "timeout": int(args.timeout)}

    def work(c: DaemonClient) -> dict[str, object]:
        test_id = c.self_test(options)
        shown = ""
        try:
            while True:
                status = c.get_status()
                last: dict[str, object] = dict(status.get("LastSelfTest") or {})  # type: ignore[call-overload]
                if last.get("Id") == test_id:
                    return last
                now = dict(status.get("CurrentSelfTest") or {})  # type: ignore[call-overload]
                if now.get("Id") == test_id and now.get("Stage") and now["Stage"] != shown:
                    shown = str(now["Stage"])
                    progress(Stage(shown), float(now.get("Fraction", 0.0)))
                time.sleep(0.25)
        except KeyboardInterrupt:
            c.cancel_self_test(test_id)
            raise

    try:
        return cmd_daemon.optional(work)
    finally:
        progress.end()


def cmd_selftest(args: argparse.Namespace) -> int:
    if args.xen and args.level != Level.HANDOFF:
        raise InputError("--xen: only with --level handoff")
    if args.config is None and args.kernel is None:
        reply = run_through_daemon(args)
        if reply is None:
            raise InputError(
                "selftest: xenkdumpd is not running: give --config FILE or --kernel PATH"
            )
        if args.json:
            json.dump(reply, sys.stdout, indent=1)
            print()
        else:
            from xenkdump.selftest.job import Result

            print(Result.from_status(reply).summary())
        return 0 if reply.get("Passed") else 1
    result = run_standalone(args)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        print()
    else:
        print(result.summary())
    return 0 if result.passed else 1
