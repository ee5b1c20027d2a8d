"""The staging VM's process: lowest priority, its own group, and never an orphan.

Real processes stand in for QEMU (a ``sleep``): the wrapper, the death signal and
the group kill are what is tested, and they do not depend on what runs inside.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xenkdump.selftest import vm as vm_mod
from xenkdump.selftest.vm import Vm

OWNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from xenkdump.selftest.vm import Vm
    d = Path(sys.argv[1])
    vm = Vm(["sh", "-c", "sleep 600 & exec sleep 600"], d / "serial", d / "stderr")
    print(vm.pid, flush=True)
    time.sleep(600)
    """
)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(p.name))
    return out


def wait_gone(pids: list[int], limit: float = 10.0) -> list[int]:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_vm_runs_niced_idle_io_in_its_own_group_and_stop_kills_the_group(tmp_path: Path) -> None:
    vm = Vm(["sh", "-c", "sleep 600 & exec sleep 600"], tmp_path / "s", tmp_path / "e")
    try:
        deadline = time.monotonic() + 5
        while len(group_members(vm.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = group_members(vm.pid)
        assert len(members) == 2 and vm.pid in members
        assert os.getpriority(os.PRIO_PROCESS, vm.pid) == 19
        ionice = subprocess.run(
            ["ionice", "-p", str(vm.pid)], capture_output=True, text=True, check=True
        )
        assert ionice.stdout.strip() == "idle"
        assert vm.running()
    finally:
        vm.stop()
    assert not vm.running()
    assert wait_gone(members) == []
    vm.stop()  # idempotent


def test_kill_9_of_the_owner_leaves_no_vm_behind(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    pid = int(owner.stdout.readline())
    assert alive(pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    # The death signal kills QEMU's stand-in; nothing of the owner survives it.
    assert wait_gone([pid]) == []
    # The stand-in's own child is left to its group: the owner's stop() never ran,
    # so it is reaped here (QEMU starts no processes of its own).
    for p in group_members(pid):
        os.kill(p, signal.SIGKILL)


class _Guest:
    """Stands in for ``Vm`` in the KVM probe: records the argv and plays a guest that
    prints ``console`` on its serial port, then runs on (or has exited, ``exits``)."""

    def __init__(self, console: str, *, exits: bool = False) -> None:
        self.console, self.exits = console, exits
        self.argv: list[str] = []
        self.stopped = False

    def __call__(self, argv: list[str], serial: Path, stderr: Path, unit: object) -> _Guest:
        self.argv, self.serial = argv, serial
        serial.write_text(self.console)
        stderr.write_text("")
        return self

    def read_new(self) -> str:
        return self.serial.read_text()

    def running(self) -> bool:
        return not self.exits

    def stop(self) -> None:
        self.stopped = True


def test_kvm_probe_boots_the_kernel_under_kvm_with_the_shared_qemu_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest = _Guest("[    0.000000] Linux version 6.1.0 (debian)\n")
    monkeypatch.setattr(vm_mod, "Vm", guest)
    assert vm_mod._probe_kvm("/usr/bin/qemu-system-x86_64", "/boot/vmlinuz", tmp_path, None)
    argv = guest.argv
    pairs = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("-")}
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert pairs["-accel"] == "kvm" and pairs["-cpu"] == "host"
    assert pairs["-kernel"] == "/boot/vmlinuz" and "-initrd" not in argv
    assert pairs["-serial"] == f"file:{tmp_path / 'kvm-probe.serial'}"
    assert "console=ttyS0" in pairs["-append"].split()
    assert guest.stopped and not list(tmp_path.iterdir())  # the probe's files are gone


def test_kvm_probe_says_no_when_the_guest_dies_before_its_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest = _Guest("", exits=True)
    monkeypatch.setattr(vm_mod, "Vm", guest)
    assert not vm_mod._probe_kvm("qemu", "/boot/vmlinuz", tmp_path, None)
    assert guest.stopped and not list(tmp_path.iterdir())
