"""The staging VM's QEMU process: started so that it cannot outlive its owner.

* ``setpriv --pdeathsig KILL`` (util-linux) makes the kernel kill QEMU when the
  thread that started it dies, even by ``kill -9`` of xenkdumpd; so a VM is
  started and waited for by one thread that lives as long as the VM
  (``job.run``), never by a short-lived worker.
* QEMU leads its own process group, and stopping it signals the whole group.
* ``ionice -c 3`` and ``nice -n 19`` put it at idle I/O and lowest CPU priority:
  the host's own work always goes first.

Under systemd (xenkdumpd's service) QEMU runs in a transient service of its own
instead (launch.py): systemd applies the priorities and limits, and stops the VM
with xenkdumpd's unit; the owner follows it through ``systemd-run --wait``.

KVM is used when ``/dev/kvm`` opens and a short probe boot prints the kernel's
first line; otherwise TCG (emulation), which is slower but works everywhere
(docs/selftest.md §4).  The environment variable XENKDUMP_SELFTEST_ACCEL=tcg|kvm
skips the probe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xenkdump.errors import OperationError
from xenkdump.selftest import launch as ln
from xenkdump.selftest import qemu as qemu_mod

log = logging.getLogger("xenkdump.selftest")

QEMU = "qemu-system-x86_64"
PROBE_MIB = 128  # the KVM probe boots only as far as the kernel's first line
_WRAPPER = (
    "setpriv",
    "--pdeathsig",
    "KILL",
    "--",
    "ionice",
    "-t",
    "-c",
    "3",
    "--",
    "nice",
    "-n",
    "19",
)
_probe_lock = threading.Lock()
_probe_cache: dict[tuple[str, str], str] = {}


def find_qemu(path: str | None = None, *, direct: bool = True) -> str:
    """QEMU's path; ``direct``: the wrapper's tools must be there too."""
    found = path or shutil.which(QEMU, path=os.environ.get("PATH", "") + ":/usr/bin")
    if not found or not os.access(found, os.X_OK):
        raise OperationError(
            f"no QEMU: {path or QEMU} not found (install the Debian package qemu-system-x86)"
        )
    for tool in ("setpriv", "ionice", "nice") if direct else ():
        if shutil.which(tool) is None:
            raise OperationError(f"{tool} not found (util-linux/coreutils are required)")
    return found


def wrapped(argv: Sequence[str]) -> list[str]:
    """``argv`` under the death-signal and priority wrapper."""
    return [*_WRAPPER, *argv]


@dataclass(frozen=True)
class Unit:
    """The transient service one VM runs in (launch.py)."""

    launch: ln.Transient
    name: str  # xenkdump-selftest-<id>.service
    memory_max: int  # bytes: the VM's guest memory and QEMU's own
    writable: Path  # the run's work directory


class Vm:
    """One running QEMU; ``stop()`` is idempotent and always reaps it.

    With ``unit`` QEMU runs as that transient systemd service and ``proc`` is the
    ``systemd-run --wait`` that lasts as long as it; without, ``proc`` is QEMU under
    the death-signal wrapper.
    """

    def __init__(
        self, argv: Sequence[str], serial: Path, stderr: Path, unit: Unit | None = None
    ) -> None:
        serial.touch()
        self.serial = serial
        self.stderr_path = stderr
        self.unit = unit
        if unit is None:
            command = wrapped(argv)
        else:
            command = ln.transient_argv(
                unit.launch,
                argv,
                unit=unit.name,
                memory_max=unit.memory_max,
                writable=unit.writable,
                output=stderr,
            )
        stderr.write_bytes(b"")
        with stderr.open("ab") as err:  # QEMU's unit appends its output here too
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                process_group=0,
                close_fds=True,
            )
        self.pid = self.proc.pid
        self._offset = 0
        if unit is None:
            self._wait_exec(argv[0])

    def _wait_exec(self, program: str, limit: float = 5.0) -> None:
        """Return once the wrapper has become ``program``.

        setpriv arms the death signal and does not check whether its parent is
        already gone; once the wrapper has exec'd the program, the signal is armed
        and an owner that dies from then on takes the VM with it.
        """
        end = time.monotonic() + limit
        name = os.path.basename(program).encode()
        while time.monotonic() < end and self.proc.poll() is None:
            try:
                argv0 = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0", 1)[0]
            except OSError:
                return
            if os.path.basename(argv0) == name:
                return
            time.sleep(0.01)

    def read_new(self) -> str:
        """Serial text written since the last call."""
        with self.serial.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        return data.decode("utf-8", errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text.splitlines()[-1] if text else ""

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL; returns once QEMU is reaped.

        A VM in a unit is stopped by systemd (SIGTERM, SIGKILL after
        launch.STOP_TIMEOUT); its systemd-run then ends.
        """
        if self.unit is not None and self.proc.poll() is None:
            stop = ln.stop_argv(self.unit.launch, [self.unit.name])
            try:
                subprocess.run(
                    stop,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=ln.STOP_TIMEOUT + 20,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                log.warning("self-test: %s did not stop the VM in time", " ".join(stop))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5.0)
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait)
        # Anything left in the group (there should be nothing) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()


def stop_leftovers(launch: ln.Launch, work: Path) -> list[str]:
    """At xenkdumpd's start: stop self-test units an earlier xenkdumpd left running
    and remove their work directories from ``work``; the names of the units stopped."""
    if not isinstance(launch, ln.Transient):
        return []  # children died with their owner (the death signal)
    try:
        listed = subprocess.run(
            ln.list_argv(launch), capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("self-test: cannot list leftover units: %s", exc)
        return []
    units = ln.leftovers(listed.stdout)
    if units:
        log.warning("self-test: stopping units left from before: %s", " ".join(units))
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                ln.stop_argv(launch, units),
                capture_output=True,
                timeout=ln.STOP_TIMEOUT + 20,
                check=False,
            )
    for leftover in work.glob("xenkdump-selftest.*") if work.is_dir() else ():
        shutil.rmtree(leftover, ignore_errors=True)
    return units


def kvm_usable(unit: Unit | None = None) -> bool:
    """/dev/kvm opens (in a unit: exists; the unit's own device policy allows it)."""
    if unit is not None:
        return os.path.exists("/dev/kvm")
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def choose_accel(qemu: str, kernel: str, workdir: Path, unit: Unit | None = None) -> str:
    """'kvm' or 'tcg' for this QEMU and kernel (probed once per process).

    ``unit``: the run's VM unit; the probe runs in a unit of its own next to it.
    """
    forced = os.environ.get("XENKDUMP_SELFTEST_ACCEL", "")
    if forced in ("kvm", "tcg"):
        return forced
    if not kvm_usable(unit):
        return "tcg"
    key = (qemu, kernel)
    with _probe_lock:
        if key not in _probe_cache:
            probe = (
                None
                if unit is None
                else dataclasses.replace(unit, name=unit.name.replace(".service", "-kvm.service"))
            )
            _probe_cache[key] = "kvm" if _probe_kvm(qemu, kernel, workdir, probe) else "tcg"
            log.info("self-test accelerator: %s", _probe_cache[key])
        return _probe_cache[key]


def _probe_kvm(
    qemu: str, kernel: str, workdir: Path, unit: Unit | None, limit: float = 15.0
) -> bool:
    """Boot ``kernel`` under KVM until it prints its version line (seconds under KVM).

    Some nested setups open /dev/kvm but hang or abort the guest: then TCG.
    """
    serial = workdir / "kvm-probe.serial"
    argv = qemu_mod.direct_argv(
        qemu,
        accel="kvm",
        memory_mib=PROBE_MIB,
        serial=serial,
        kernel=kernel,
        cmdline="console=ttyS0 earlyprintk=serial,ttyS0 panic=-1",
    )
    vm = Vm(argv, serial, workdir / "kvm-probe.stderr", unit)
    try:
        end = time.monotonic() + limit
        text = ""
        while time.monotonic() < end and vm.running():
            text += vm.read_new()
            if "Linux version" in text:
                return True
            time.sleep(0.2)
        return False
    finally:
        vm.stop()
        for p in (serial, workdir / "kvm-probe.stderr"):
            p.unlink(missing_ok=True)
