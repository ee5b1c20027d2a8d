"""xenkdumpctl selftest: prove the crash path in a staging VM (docs/selftest.md).

``selftest [--level handoff|boot] [--xen PATH] [--dom0-kernel PATH] [--json] [--timeout S]``
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
        default=None,
        help="handoff: this host's Xen boots a staging dom0 that loads the image with "
        "xenkdump's loader and panics, so Xen hands over to the crash image (the default "
        "when a Xen binary for the running Xen is found); boot: the crash kernel, initrd "
        "and command line booted directly (the default otherwise, and said so)",
    )
    p.add_argument(
        "--xen",
        metavar="PATH",
        default="",
        help="the Xen binary the handoff level boots, xen-*.gz or its ELF (default: the "
        "xen-MAJOR.MINOR*.gz in /boot that matches the running Xen; implies --level handoff)",
    )
    p.add_argument(
        "--dom0-kernel",
        metavar="PATH",
        default="",
        help="the staging dom0's kernel at the handoff level, with its modules in "
        "/lib/modules/RELEASE (default: /boot/vmlinuz-$(uname -r), this dom0's own)",
    )
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


def _image(args: argparse.Namespace) -> tuple[plan.Image, str]:
    """The image under test, planned as ``load`` would plan it when a hypervisor answers,
    and the running Xen's version ("" without a hypervisor)."""
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
    crash_addr, version = 0, ""
    if args.hypervisor is not None or _xen_present():
        from xenkdump.hv.select import open_hypervisor

        try:
            with open_hypervisor(args.hypervisor) as hv:
                major, minor = hv.xen_version()
                version = f"{major}.{minor}{hv.xen_extraversion()}"
                if args.crash_size is None:
                    host = loader.gather_host(hv)
                    planned, _ = loader.plan_for_load(inputs, host, None)
                    cmdline, crash_size = planned.cmdline, host.crash.size
                    crash_addr = host.crash.start
        except HypervisorError as exc:
            raise InputError(f"{exc} (or give --crash-size MIB)") from None
    image = plan.Image(
        kernel=inputs.kernel_path,
        initrd=inputs.initrd_path or "",
        cmdline=cmdline,
        crash_size=crash_size,
        crash_addr=crash_addr,
    )
    return image, version


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

    image, version = _image(args)
    boot_dir, conf_level, conf_xen, conf_dom0 = Path("/boot"), "", "", ""
    if args.config is not None:  # the file's selftest: section gives the defaults
        from xenkdump.settings.load import load_settings

        settings = load_settings(args.config)
        boot_dir, st = settings.boot_dir, settings.selftest
        conf_level, conf_xen = st.level, str(st.xen or "")
        conf_dom0 = str(st.dom0_kernel or "")
    level = args.level or ("handoff" if args.xen else conf_level)
    options = Options(
        level=Level(level) if level else None,
        timeout=args.timeout,
        xen=args.xen or conf_xen,
        dom0_kernel=args.dom0_kernel or conf_dom0,
        running_xen=version,
        boot_dir=boot_dir,
        work_dir=args.work_dir,
        keep=args.keep,
    )
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

    progress = Progress(sys.stderr)
    options: dict[str, object] = {"timeout": int(args.timeout)}
    level = args.level or ("handoff" if args.xen else None)
    if level:
        options["level"] = level
    for name, value in (("xen", args.xen), ("dom0_kernel", args.dom0_kernel)):
        if value:  # xenkdumpd reads the file: an absolute path
            options[name] = str(Path(value).absolute())

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


def _note(note: object) -> None:
    """How the level was chosen and where the crash area was: stderr, the result's
    line on stdout stays one line."""
    if note:
        print(f"selftest: {note}", file=sys.stderr)


def cmd_selftest(args: argparse.Namespace) -> int:
    if args.xen and args.level == Level.BOOT:
        raise InputError("--xen: not with --level boot (the boot level boots no Xen)")
    if args.dom0_kernel and args.level == Level.BOOT:
        raise InputError("--dom0-kernel: not with --level boot (the boot level has no dom0)")
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

            _note(reply.get("Note"))
            print(Result.from_status(reply).summary())
        return 0 if reply.get("Passed") else 1
    result = run_standalone(args)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        print()
    else:
        _note(result.note)
        print(result.summary())
    return 0 if result.passed else 1
