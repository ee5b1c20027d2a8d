"""One self-test run: prepare, boot the staging VM, follow its stages, always clean up.

``Job.run()`` blocks until the run ends and returns a ``Result``; it must run in a
thread that lives as long as the VM (vm.py: the death signal follows the thread
that started QEMU).  ``cancel()`` may be called from any thread.  Progress goes
to the ``progress`` callback as (stage, fraction), from the running thread.

Checks before anything starts (each a one-line error, nothing is booted): QEMU
present, the image files readable, the level available, dom0's free memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import xenkdump
from xenkdump.errors import InputError, OperationError, XenkdumpError
from xenkdump.safefile import Limit, check_readable, read_file
from xenkdump.selftest import DEFAULT_TIMEOUT, DEFAULT_WORK_DIR, dom0, plan, scratch, vm, xenbin
from xenkdump.selftest import launch as ln
from xenkdump.selftest import qemu as qemu_mod
from xenkdump.selftest.stages import LEVEL_STAGES, Failed, Level, Reached, Stage, Tracker
from xenkdump.units import MIB

log = logging.getLogger("xenkdump.selftest")

_POLL: Final = 0.25
SCRATCH_BYTES: Final = 64 * MIB


@dataclass(frozen=True)
class Options:
    # None: handoff when a Xen binary for the running Xen is found, else boot (said so)
    level: Level | None = None
    timeout: float = DEFAULT_TIMEOUT
    xen: str = ""  # the hypervisor binary for the handoff level ("" finds it)
    running_xen: str = ""  # the running Xen's version ("4.17.7"; "" not known)
    dom0_kernel: str = ""  # the staging dom0's kernel ("": boot_dir/vmlinuz-$(uname -r))
    boot_dir: Path = Path("/boot")  # where this host's Xen binaries and kernels are
    memory_limit: int = 0  # bytes; 0 = no limit beyond dom0's free memory
    dom0_floor: int = plan.DEFAULT_DOM0_FLOOR
    work_dir: Path = DEFAULT_WORK_DIR
    keep: bool = False  # keep the work directory (debugging)
    # How QEMU starts (launch.py): a child of this process, or a transient systemd
    # service (xenkdumpd under systemd; work_dir must then be visible to systemd).
    launch: ln.Launch = ln.CHILD

    def __post_init__(self) -> None:
        if not 10 <= self.timeout <= 24 * 3600:
            raise InputError(f"timeout: expected 10 to 86400 seconds, got {self.timeout:g}")
        if self.memory_limit < 0:
            raise InputError(f"memory_limit: expected bytes >= 0, got {self.memory_limit}")
        if self.xen and self.level is Level.BOOT:
            raise InputError("xen: only for the handoff level (the boot level boots no Xen)")


@dataclass
class Result:
    """What a run found; ``to_dict`` is the LastSelfTest / SelfTestFinished dictionary."""

    id: str
    level: str
    started: float  # seconds since the epoch
    duration: float = 0.0
    passed: bool = False
    failed_stage: str = ""
    reason: str = ""
    image_sha256: str = ""
    accel: str = ""
    crash_kernel_boot_seconds: float = 0.0
    peak_memory: int = 0
    headroom: int = 0
    crashkernel: str = ""  # sizing advice for Xen's command line
    xen: str = ""  # the Xen binary the handoff level booted
    note: str = ""  # how the level was chosen, where the crash area was (one line)
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds from start
    # The capture agent's dump on the scratch disk (scratch.py): metadata.json's result
    # and steps; "" and () when the crash initrd carries only the standalone hook.
    dump_result: str = ""
    dump_steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_status(cls, values: Mapping[str, Any]) -> Result:
        """From a LastSelfTest / SelfTestFinished dictionary (to_status's keys)."""
        return cls(
            id=str(values.get("Id", "")),
            level=str(values.get("Level", "")),
            started=int(values.get("Started", 0)) / 1_000_000,
            duration=float(values.get("Duration", 0.0)),
            passed=bool(values.get("Passed", False)),
            failed_stage=str(values.get("FailedStage", "")),
            reason=str(values.get("Reason", "")),
            image_sha256=str(values.get("ImageSha256", "")),
            accel=str(values.get("Accel", "")),
            crash_kernel_boot_seconds=float(values.get("CrashKernelBootSeconds", 0.0)),
            peak_memory=int(values.get("PeakMemory", 0)),
            headroom=int(values.get("Headroom", 0)),
            crashkernel=str(values.get("Crashkernel", "")),
            xen=str(values.get("Xen", "")),
            note=str(values.get("Note", "")),
            dump_result=str(values.get("DumpResult", "")),
            dump_steps=[
                dict(zip(DUMP_STEP_FIELDS, row, strict=False))
                for row in values.get("DumpSteps", ())
            ],
        )

    def to_status(self) -> tuple[tuple[str, Any], ...]:
        """The LastSelfTest dictionary (xenkdump.status.SELF_TEST_KEYS) as sorted pairs."""
        values = {
            "Id": self.id,
            "Level": self.level,
            "Started": int(self.started * 1_000_000),
            "Duration": float(self.duration),
            "Passed": self.passed,
            "FailedStage": self.failed_stage,
            "Reason": self.reason,
            "ImageSha256": self.image_sha256,
            "Accel": self.accel,
            "CrashKernelBootSeconds": float(self.crash_kernel_boot_seconds),
            "PeakMemory": self.peak_memory,
            "Headroom": self.headroom,
            "Crashkernel": self.crashkernel,
            "Xen": self.xen,
            "Note": self.note,
            "DumpResult": self.dump_result,
            "DumpSteps": [
                [_step_value(step.get(k), default) for k, default in DUMP_STEP_DEFAULTS]
                for step in self.dump_steps
            ],
        }
        return tuple(sorted(values.items()))

    def summary(self) -> str:
        if self.passed:
            extra = f"; peak memory {self.peak_memory // MIB} MiB" if self.peak_memory else ""
            advice = f"; sizing advice: {self.crashkernel}" if self.crashkernel else ""
            return (
                f"self-test {self.id} ({self.level}) passed in {self.duration:.0f} s "
                f"(crash kernel up after {self.crash_kernel_boot_seconds:.1f} s{extra}{advice})"
            )
        return f"self-test {self.id} ({self.level}) failed at {self.failed_stage}: {self.reason}"


# A metadata.json step as DumpSteps' struct (status.SELF_TEST_KEYS: a(sidts)).
DUMP_STEP_DEFAULTS: Final[tuple[tuple[str, Any], ...]] = (
    ("name", ""),
    ("exit_code", 0),
    ("seconds", 0.0),
    ("bytes", 0),
    ("command", ""),
)
DUMP_STEP_FIELDS: Final = tuple(k for k, _ in DUMP_STEP_DEFAULTS)


def _step_value(value: Any, default: Any) -> Any:
    """A step's field as its D-Bus type (the default's), the default when it is not one."""
    try:
        out = type(default)(value)
    except (TypeError, ValueError):
        return default
    return max(out, 0) if isinstance(out, int) else out  # bytes is unsigned


def new_id() -> str:
    return secrets.token_hex(6)


def _readable(path: str, what: str) -> None:
    if not path:
        raise InputError(f"{what}: no file given")
    why = check_readable(Path(path), what, Limit.INITRD)  # never blocks on a FIFO
    if why:
        raise InputError(why)


def _meminfo() -> str:
    return read_file(Path("/proc/meminfo"), "memory information", Limit.PROC).decode()


class Job:
    def __init__(
        self,
        image: plan.Image,
        options: Options,
        *,
        test_id: str | None = None,
        progress: Callable[[Stage, float], None] | None = None,
        meminfo: Callable[[], str] = _meminfo,
    ) -> None:
        self.id = plan.check_test_id(test_id or new_id())
        self.image = image
        self.options = options
        self.progress = progress or (lambda stage, fraction: None)
        self._cancel = threading.Event()
        self._meminfo = meminfo
        self.workdir: Path | None = None
        self.qemu_pid: int | None = None
        # Decided by choose_level() (preflight): the level, its Xen binary, why.
        self.level: Level = options.level or Level.HANDOFF
        self.xen: Path | None = None
        self.note = ""

    def cancel(self) -> None:
        self._cancel.set()

    # ---- checks before any boot ----

    def choose_level(self) -> None:
        """The level and the Xen binary (docs/selftest.md §6): ``--xen``, else the one
        matching the running Xen in the boot directory; without one the default level
        falls back to boot, and an explicit handoff is refused naming what was looked for."""
        o = self.options
        self.note = ""
        if o.level is Level.BOOT:
            self.level, self.xen = Level.BOOT, None
            return
        if o.xen:
            xenbin.read_elf(Path(o.xen))  # a Xen binary, or a one-line InputError
            self.level, self.xen = Level.HANDOFF, Path(o.xen)
            return
        version = xenbin.XenVersion.parse(o.running_xen) if o.running_xen else None
        found = xenbin.find(version, o.boot_dir) if version is not None else None
        if found is not None:
            self.level, self.xen = Level.HANDOFF, found
            return
        missing = xenbin.not_found(version, o.boot_dir)
        if o.level is Level.HANDOFF:
            raise OperationError(missing)
        self.level, self.xen = Level.BOOT, None
        self.note = f"boot level instead of handoff: {missing}"

    def dom0_kernel(self) -> Path:
        if self.options.dom0_kernel:
            return Path(self.options.dom0_kernel)
        return self.options.boot_dir / f"vmlinuz-{os.uname().release}"

    def preflight(self) -> str:
        """Everything that can be refused before a VM starts; returns the QEMU path."""
        self.choose_level()
        scratch.check_tools()
        qemu = vm.find_qemu(direct=isinstance(self.options.launch, ln.Direct))
        _readable(self.image.kernel, "crash kernel")
        if self.image.initrd:
            _readable(self.image.initrd, "crash initrd")
        if self.level is Level.HANDOFF:
            _readable(str(self.dom0_kernel()), "dom0 kernel (selftest.dom0_kernel)")
        if self.image.crash_size < 64 * MIB:
            raise InputError(
                f"crash area: expected at least 64 MiB for a staging VM, found "
                f"{self.image.crash_size // MIB} MiB"
            )
        plan.check_memory(
            plan.vm_memory(self.level, self.image.crash_size),
            plan.mem_available(self._meminfo()),
            self.options.dom0_floor,
            self.options.memory_limit,
        )
        return qemu

    # ---- the run ----

    def run(self) -> Result:
        """The whole run; a refusal (no QEMU, no memory...) is a result failed at vm-start."""
        started = time.time()
        result = Result(self.id, str(self.level), started, image_sha256=self.image.image_sha256)
        t0 = time.monotonic()
        try:
            qemu = self.preflight()
            result.level, result.note = str(self.level), self.note
            self.options.work_dir.mkdir(parents=True, exist_ok=True)
            self.workdir = Path(
                tempfile.mkdtemp(prefix=f"xenkdump-selftest.{self.id}.", dir=self.options.work_dir)
            )
            if self.level is Level.HANDOFF:
                self._handoff_level(qemu, result, t0)
            else:
                self._boot_level(qemu, result, t0)
        except XenkdumpError as exc:  # refused before or while starting the VM
            result.failed_stage = Stage.VM_START.value
            result.reason = str(exc)
        finally:
            result.duration = time.monotonic() - t0
            if self.workdir is not None and not self.options.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return result

    def _boot_level(self, qemu: str, result: Result, t0: float) -> None:
        assert self.workdir is not None
        work = self.workdir
        unit = self.unit(work)
        accel = vm.choose_accel(qemu, self.image.kernel, work, unit)
        result.accel = accel
        memory = work / "synthetic.bin"
        memory.write_bytes(plan.synthetic_memory(self.id))
        disk = scratch.make(work / "scratch.img", SCRATCH_BYTES)
        cmdline = plan.boot_cmdline(self.image.cmdline, self.id)
        mem_mib = self.image.crash_size // MIB
        argv = qemu_mod.direct_argv(
            qemu,
            accel=accel,
            memory_mib=mem_mib,
            serial=work / "serial.log",
            kernel=self.image.kernel,
            cmdline=cmdline,
            initrd=self.image.initrd,
            loader=(memory, plan.SYNTHETIC_ADDR),
            disks=(qemu_mod.Disk(disk),),
        )
        self._boot(argv, plan.boot_hints(cmdline), {}, disk, mem_mib * MIB, result, t0)

    def _handoff_level(self, qemu: str, result: Result, t0: float) -> None:
        """This host's Xen, a staging dom0 that loads the image and panics (§6)."""
        assert self.workdir is not None and self.xen is not None
        work = self.workdir
        accel = vm.choose_accel(qemu, self.image.kernel, work, self.unit(work))
        result.accel = accel
        result.xen = str(self.xen)
        xen_elf = xenbin.unpack(self.xen, work / "xen.elf")
        vm_bytes = plan.vm_memory(Level.HANDOFF, self.image.crash_size)
        area = plan.crash_area(self.image, vm_bytes)
        result.note = "; ".join(filter(None, (result.note, area.describe(self.image))))
        state = work / "dom0-state"
        state.mkdir(mode=0o700)
        cmdline = plan.handoff_cmdline(self.image.cmdline, self.id)
        spec = {
            "id": self.id,
            "kernel": self.image.kernel,
            "initrd": self.image.initrd,
            "cmdline": cmdline,
            "state_dir": str(state),
        }
        (work / "dom0load.json").write_text(json.dumps(spec) + "\n")
        settings = dom0.Dom0Settings(
            test_id=self.id,
            token=plan.token_for(self.id),
            work=work,
            python=sys.executable,
            pythonpath=str(Path(xenkdump.__file__).resolve().parent.parent),
        )
        dom0_initrd = dom0.initramfs(self.dom0_kernel(), settings).write_gz(work / "dom0.cpio.gz")
        disk = scratch.make(work / "scratch.img", vm_bytes)
        machine = qemu_mod.XenMachine(
            xen=xen_elf,
            xen_cmdline=qemu_mod.xen_cmdline(
                dom0_mib=plan.HANDOFF_DOM0 // MIB, crashkernel=area.value
            ),
            dom0_kernel=self.dom0_kernel(),
            dom0_cmdline=plan.HANDOFF_DOM0_CMDLINE,
            dom0_initrd=dom0_initrd,
            memory_mib=vm_bytes // MIB,
            serial=work / "serial.log",
            accel=accel,
            shares=(
                qemu_mod.Share(Path("/"), "hostroot"),
                qemu_mod.Share(work, "xkwork", readonly=False),
            ),
            disks=(qemu_mod.Disk(disk),),
        )
        argv = qemu_mod.xen_argv(qemu, machine)
        timeouts = plan.handoff_timeouts(vm_bytes, self.image.crash_size)
        self._boot(
            argv, plan.handoff_hints(cmdline), timeouts, disk, self.image.crash_size, result, t0
        )

    def _boot(  # noqa: PLR0917 (one call per level)
        self,
        argv: list[str],
        hints: Mapping[Stage, str],
        timeouts: Mapping[Stage, float],
        disk: Path,
        crash_bytes: int,
        result: Result,
        t0: float,
    ) -> None:
        """Run the VM, follow its stages, always stop it; then check the scratch disk."""
        assert self.workdir is not None
        work = self.workdir
        (work / "qemu.cmd").write_text(" ".join(argv) + "\n")
        unit = self.unit(work)
        tracker = Tracker(
            self.id,
            self.level,
            start=t0,
            total_timeout=self.options.timeout,
            kvm=result.accel == "kvm",
            hints=hints,
            timeouts=timeouts,
        )
        machine = vm.Vm(argv, work / "serial.log", work / "qemu.stderr", unit)
        self.qemu_pid = machine.pid
        try:
            self._report(tracker.reach(Stage.VM_START, time.monotonic()), t0, result)
            self._follow(machine, tracker, t0, result)
        finally:
            machine.stop()
            self.qemu_pid = None
        if tracker.awaiting(Stage.DONE):
            self._check_scratch(disk, tracker, result, t0)
        self._finish(tracker, result, crash_bytes)

    def unit(self, work: Path) -> vm.Unit | None:
        """The VM's transient service when the launch is one (its memory: the figure
        ``preflight`` checked, guest and QEMU)."""
        launch = self.options.launch
        if not isinstance(launch, ln.Transient):
            return None
        guest = plan.vm_memory(self.level, self.image.crash_size)
        return vm.Unit(launch, ln.unit_name(self.id), guest + plan.QEMU_OVERHEAD, work)

    def _follow(self, machine: vm.Vm, tracker: Tracker, t0: float, result: Result) -> None:
        while True:
            now = time.monotonic()
            for event in tracker.feed(machine.read_new(), now):
                self._report(event, t0, result)
            if tracker.finished or tracker.awaiting(Stage.DONE):
                return
            if self._cancel.is_set():
                tracker.fail(None, "cancelled", now)
                return
            if not machine.running():
                for event in tracker.feed(machine.read_new() + "\n", time.monotonic()):
                    self._report(event, t0, result)
                if tracker.failed is None and not tracker.awaiting(Stage.DONE):
                    err = machine.stderr_tail()
                    why = (
                        f"QEMU failed: {err}"
                        if err and machine.proc.returncode
                        else "the VM powered off or rebooted first"
                    )
                    last = tracker.last_lines[-1] if tracker.last_lines else "no console output"
                    tracker.fail(
                        None, f"{why} (last output: {last})", time.monotonic(), hinted=True
                    )
                return
            failed = tracker.tick(now)
            if failed is not None:
                return
            self._cancel.wait(_POLL)

    def _check_scratch(self, disk: Path, tracker: Tracker, result: Result, t0: float) -> None:
        """The crash side said it wrote the dump: the scratch disk must hold it (the
        agent's dump directory, whole, or the standalone hook's raw vmcore)."""
        assert self.workdir is not None
        token = plan.token_for(self.id)
        found = scratch.read_back(disk, self.workdir / "dump", token)
        verdict = scratch.verdict(found, token)
        result.dump_result = verdict.result
        result.dump_steps = [dict(step) for step in verdict.steps]
        if not verdict.ok:
            tracker.fail(Stage.DONE, verdict.reason, time.monotonic())
            return
        log.info("self-test %s: the scratch disk holds %s", self.id, verdict.reason)
        self._report(tracker.reach(Stage.DONE, time.monotonic()), t0, result)

    def _report(self, event: Reached | Failed, t0: float, result: Result) -> None:
        if isinstance(event, Reached):
            result.stages[event.stage.value] = round(event.at - t0, 3)
            log.info("self-test %s: %s", self.id, event.stage)
            self.progress(event.stage, len(result.stages) / len(LEVEL_STAGES[self.level]))

    def _finish(self, tracker: Tracker, result: Result, vm_bytes: int) -> None:
        values: Mapping[str, str] = tracker.values
        try:
            result.crash_kernel_boot_seconds = float(values.get("uptime", "0") or 0)
        except ValueError:
            result.crash_kernel_boot_seconds = 0.0
        size = plan.sizing(values, vm_bytes)
        if size is not None:
            result.peak_memory = size.peak_bytes
            result.headroom = size.headroom_bytes
            result.crashkernel = size.crashkernel
        if tracker.failed is not None:
            result.failed_stage = tracker.failed.stage.value
            result.reason = tracker.failed.reason
        result.passed = tracker.passed
