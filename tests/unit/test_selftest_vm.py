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
