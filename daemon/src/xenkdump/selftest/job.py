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
import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from xenkdump.errors import InputError, OperationError, XenkdumpError
from xenkdump.safefile import Limit, check_readable
from xenkdump.selftest import DEFAULT_TIMEOUT, DEFAULT_WORK_DIR, plan, vm
from xenkdump.selftest import launch as ln
from xenkdump.selftest.stages import LEVEL_STAGES, Failed, Level, Reached, Stage, Tracker
from xenkdump.units import MIB

log = logging.getLogger("xenkdump.selftest")

_POLL: Final = 0.25
SCRATCH_BYTES: Final = 64 * MIB


@dataclass(frozen=True)
class Options:
    level: Level = Level.BOOT
    timeout: float = DEFAULT_TIMEOUT
    xen: str = ""  # the hypervisor binary for the handoff level ("" finds it)
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
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds from start

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


def new_id() -> str:
    return secrets.token_hex(6)


def _readable(path: str, what: str) -> None:
    if not path:
        raise InputError(f"{what}: no file given")
    why = check_readable(Path(path), what, Limit.INITRD)  # never blocks on a FIFO
    if why:
        raise InputError(why)


def _meminfo() -> str:
    with open("/proc/meminfo") as f:
        return f.read()


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

    def cancel(self) -> None:
        self._cancel.set()

    # ---- checks before any boot ----

    def preflight(self) -> str:
        """Everything that can be refused before a VM starts; returns the QEMU path."""
        if self.options.level is not Level.BOOT:
            raise OperationError(
                f"self-test level {self.options.level}: not available in this version "
                "(use --level boot)"
            )
        qemu = vm.find_qemu(direct=isinstance(self.options.launch, ln.Direct))
        _readable(self.image.kernel, "crash kernel")
        if self.image.initrd:
            _readable(self.image.initrd, "crash initrd")
        if self.image.crash_size < 64 * MIB:
            raise InputError(
                f"crash area: expected at least 64 MiB for a staging VM, found "
                f"{self.image.crash_size // MIB} MiB"
            )
        plan.check_memory(
            plan.vm_memory(self.options.level, self.image.crash_size),
            plan.mem_available(self._meminfo()),
            self.options.dom0_floor,
            self.options.memory_limit,
        )
        return qemu

    # ---- the run ----

    def run(self) -> Result:
        """The whole run; a refusal (no QEMU, no memory...) is a result failed at vm-start."""
        started = time.time()
        result = Result(
            self.id, str(self.options.level), started, image_sha256=self.image.image_sha256
        )
        t0 = time.monotonic()
        try:
            qemu = self.preflight()
            self.options.work_dir.mkdir(parents=True, exist_ok=True)
            self.workdir = Path(
                tempfile.mkdtemp(prefix=f"xenkdump-selftest.{self.id}.", dir=self.options.work_dir)
            )
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
        scratch = work / "scratch.img"
        with scratch.open("wb") as f:
            f.truncate(SCRATCH_BYTES)
        cmdline = plan.boot_cmdline(self.image.cmdline, self.id)
        mem_mib = self.image.crash_size // MIB
        argv = [
            qemu, "-accel", accel, "-cpu", "host" if accel == "kvm" else "qemu64",
            "-m", str(mem_mib), "-smp", "1",
            "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
            "-serial", f"file:{work / 'serial.log'}",
            "-kernel", self.image.kernel, "-append", cmdline,
            *(("-initrd", self.image.initrd) if self.image.initrd else ()),
            "-device", f"loader,file={memory},addr={plan.SYNTHETIC_ADDR:#x},force-raw=on",
            "-drive", f"file={scratch},format=raw,if=virtio",
        ]  # fmt: skip
        (work / "qemu.cmd").write_text(" ".join(argv) + "\n")
        tracker = Tracker(
            self.id,
            self.options.level,
            start=t0,
            total_timeout=self.options.timeout,
            kvm=accel == "kvm",
            hints=plan.boot_hints(cmdline),
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
            self._check_scratch(scratch, tracker, result, t0)
        self._finish(tracker, result, mem_mib * MIB)

    def unit(self, work: Path) -> vm.Unit | None:
        """The VM's transient service when the launch is one (its memory: the figure
        ``preflight`` checked, guest and QEMU)."""
        launch = self.options.launch
        if not isinstance(launch, ln.Transient):
            return None
        guest = plan.vm_memory(self.options.level, self.image.crash_size)
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

    def _check_scratch(self, scratch: Path, tracker: Tracker, result: Result, t0: float) -> None:
        """The hook said it wrote the dump: the scratch disk must hold it."""
        with scratch.open("rb") as f:
            head = f.read(plan.SYNTHETIC_SIZE)
        token = plan.token_for(self.id)
        if not head.startswith(b"\x7fELF") or token not in head:
            tracker.fail(
                Stage.DONE,
                "the scratch disk holds no dump with the token after dump-written",
                time.monotonic(),
            )
            return
        self._report(tracker.reach(Stage.DONE, time.monotonic()), t0, result)

    def _report(self, event: Reached | Failed, t0: float, result: Result) -> None:
        if isinstance(event, Reached):
            result.stages[event.stage.value] = round(event.at - t0, 3)
            log.info("self-test %s: %s", self.id, event.stage)
            self.progress(event.stage, len(result.stages) / len(LEVEL_STAGES[self.options.level]))

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
