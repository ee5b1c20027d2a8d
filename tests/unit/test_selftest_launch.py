"""Which way a staging VM starts (selftest/launch.py), and the transient unit's plumbing.

The decision and the command lines are pure; the plumbing of vm.Vm with a unit runs
against stand-ins for systemd-run and systemctl that keep the unit's process in a
directory (no systemd here: the package dom0 boot, tests/e2e/test_package.py, runs
the real one).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from xenkdump.selftest import DEFAULT_WORK_DIR
from xenkdump.selftest import launch as ln
from xenkdump.selftest.job import Job, Options
from xenkdump.selftest.plan import QEMU_OVERHEAD, Image
from xenkdump.selftest.stages import Level
from xenkdump.selftest.vm import Unit, Vm, stop_leftovers
from xenkdump.units import MIB

V2 = "0::/system.slice/xenkdumpd.service\n"
V1 = (
    "12:pids:/system.slice/xenkdumpd.service\n"
    "1:name=systemd:/system.slice/xenkdumpd.service\n"
    "0::/system.slice/xenkdumpd.service\n"
)
SERVICE = ln.Facts(
    env={"INVOCATION_ID": "0123abcd"},
    cgroup=V2,
    booted=True,
    euid=0,
    systemd_run="/usr/bin/systemd-run",
    systemctl="/usr/bin/systemctl",
)


def facts(**changes: object) -> ln.Facts:
    values = {**SERVICE.__dict__, **changes}
    return ln.Facts(**values)


@pytest.mark.parametrize(
    ("cgroup", "owner"),
    [
        (V2, "xenkdumpd.service"),
        (V1, "xenkdumpd.service"),
        ("0::/system.slice/system-xk.slice/xenkdumpd@lab.service\n", "xenkdumpd@lab.service"),
        # A service with a delegated subtree: the service is the nearest .service.
        ("0::/system.slice/xenkdumpd.service/worker\n", "xenkdumpd.service"),
        ("0::/user.slice/user-0.slice/session-4.scope\n", None),
        ("0::/\n", None),
        ("", None),
        ("5:cpu:/system.slice/other.service\n", None),  # a controller's path is not the unit
    ],
)
def test_owner_unit_is_the_service_in_the_cgroup_path(cgroup: str, owner: str | None) -> None:
    assert ln.owner_unit(cgroup) == owner


def test_a_service_of_a_booted_systemd_gets_transient_units() -> None:
    assert ln.choose(SERVICE) == ln.Transient(
        "xenkdumpd.service", "/usr/bin/systemd-run", "/usr/bin/systemctl"
    )


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"booted": False}, "systemd is not the init system"),
        ({"env": {}}, "no INVOCATION_ID"),
        ({"cgroup": "0::/user.slice/user-0.slice/session-4.scope\n"}, "no systemd service"),
        ({"euid": 1000}, "not root"),
        ({"systemd_run": None}, "systemd-run or systemctl not found"),
        ({"systemctl": None}, "systemd-run or systemctl not found"),
        ({"env": {"INVOCATION_ID": "x", ln.LAUNCH_ENV: "direct"}}, f"{ln.LAUNCH_ENV}=direct"),
    ],
)
def test_anything_else_starts_the_vm_as_a_child(changes: dict[str, object], why: str) -> None:
    chosen = ln.choose(facts(**changes))
    assert isinstance(chosen, ln.Direct)
    assert why in chosen.why
    assert why in ln.describe(chosen)


def test_forcing_systemd_needs_no_invocation_id_but_still_a_service() -> None:
    forced = {ln.LAUNCH_ENV: "systemd"}
    assert isinstance(ln.choose(facts(env=forced)), ln.Transient)
    assert isinstance(ln.choose(facts(env=forced, booted=False)), ln.Direct)


def test_the_work_directory_is_one_systemd_sees_for_a_unit() -> None:
    assert ln.work_dir(ln.choose(SERVICE)) == Path("/var/lib/xenkdump/selftest")
    assert ln.work_dir(ln.CHILD) == DEFAULT_WORK_DIR


def test_transient_argv_binds_the_vm_to_its_owner_with_its_own_limits(tmp_path: Path) -> None:
    launch = ln.choose(SERVICE)
    assert isinstance(launch, ln.Transient)
    qemu = ["/usr/bin/qemu-system-x86_64", "-m", "256", "-append", "console=ttyS0 x=1"]
    argv = ln.transient_argv(
        launch,
        qemu,
        unit="xenkdump-selftest-abc123.service",
        memory_max=352 * MIB,
        writable=tmp_path,
        output=tmp_path / "qemu.stderr",
    )
    assert argv[0] == "/usr/bin/systemd-run"
    # QEMU's argv follows "--" untouched: systemd-run passes it on as one word each.
    assert argv[argv.index("--") + 1 :] == qemu
    opts = argv[: argv.index("--")]
    for want in (
        "--unit=xenkdump-selftest-abc123.service",
        "--wait",  # systemd-run lasts as long as the VM: the owner follows it
        "--collect",  # a failed VM unit does not linger
        "--service-type=exec",
        "--property=BindsTo=xenkdumpd.service",
        "--property=Nice=19",
        "--property=IOSchedulingClass=idle",
        f"--property=MemoryMax={352 * MIB}",
        f"--property=ReadWritePaths={tmp_path}",
        f"--property=StandardError=append:{tmp_path / 'qemu.stderr'}",
        "--property=ProtectSystem=strict",
        "--property=DeviceAllow=/dev/kvm rw",
    ):
        assert want in opts
    # No PartOf=: a restart of xenkdumpd must not restart (re-run) the VM.
    assert not [o for o in opts if "PartOf=" in o]
    # Nothing of xenkdumpd's own hardening that QEMU cannot live with.
    assert not [o for o in opts if "MemoryDenyWriteExecute" in o or "SystemCallFilter" in o]


def test_unit_names_are_recognisable_and_safe() -> None:
    assert ln.unit_name("0a1b2c3d4e5f") == "xenkdump-selftest-0a1b2c3d4e5f.service"
    for bad in ("", "a b", "x;rm", "../x", "A" * 3):
        with pytest.raises(ValueError, match="unit name"):
            ln.unit_name(bad)


def test_leftovers_are_the_self_test_services_listed() -> None:
    listed = textwrap.dedent(
        """\
        xenkdump-selftest-0a1b2c3d4e5f.service loaded active running xenkdump self-test VM
        ● xenkdump-selftest-ffeeddccbbaa.service loaded failed failed xenkdump self-test VM
        xenkdump-selftest-ffeeddccbbaa-kvm.service loaded active running probe
        xenkdumpd.service loaded active running Xen crash kernel (kdump) keeper
        """
    )
    assert ln.leftovers(listed) == [
        "xenkdump-selftest-0a1b2c3d4e5f.service",
        "xenkdump-selftest-ffeeddccbbaa.service",
        "xenkdump-selftest-ffeeddccbbaa-kvm.service",
    ]
    assert ln.leftovers("") == []


def test_a_jobs_unit_holds_the_memory_preflight_checked(tmp_path: Path) -> None:
    image = Image("/boot/vmlinuz", "", "console=ttyS0", 256 * MIB)
    launch = ln.choose(SERVICE)
    job = Job(image, Options(level=Level.BOOT, launch=launch), test_id="abcdef012345")
    unit = job.unit(tmp_path)
    assert unit == Unit(
        launch,  # type: ignore[arg-type]
        "xenkdump-selftest-abcdef012345.service",
        256 * MIB + QEMU_OVERHEAD,
        tmp_path,
    )
    assert Job(image, Options(), test_id="abcdef012345").unit(tmp_path) is None


# ---- vm.Vm with a unit, against stand-ins for systemd-run and systemctl ----

FAKE_RUN = """#!/bin/sh
# systemd-run --unit=NAME ... --wait ... -- ARGV: runs ARGV, records it by unit.
d=$(dirname "$0")
echo "$@" >> "$d/run.log"
for a; do
  case $a in --unit=*) unit=${a#--unit=} ;; --) break ;; esac
done
while [ "$1" != "--" ]; do shift; done
shift
"$@" &
# written whole, then renamed: the tests read the pid as soon as the file exists
echo $! > "$d/$unit.pid.new" && mv "$d/$unit.pid.new" "$d/$unit.pid"
wait $!
rc=$?
rm -f "$d/$unit.pid"
exit $rc
"""

FAKE_CTL = """#!/bin/sh
# systemctl stop --no-ask-password -- UNITS | list-units ... PATTERN
d=$(dirname "$0")
echo "$@" >> "$d/ctl.log"
case $1 in
stop)
  shift; while [ "$1" != "--" ]; do shift; done; shift
  for u; do [ -f "$d/$u.pid" ] && kill "$(cat "$d/$u.pid")"; done ;;
list-units)
  for f in "$d"/*.pid; do
    [ -e "$f" ] && echo "$(basename "$f" .pid) loaded active running vm"
  done ;;
esac
exit 0
"""


def _fakes(tmp_path: Path) -> ln.Transient:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("systemd-run", FAKE_RUN), ("systemctl", FAKE_CTL)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return ln.Transient(
        "xenkdumpd.service", str(bin_dir / "systemd-run"), str(bin_dir / "systemctl")
    )


def _wait_for(path: Path) -> None:
    end = time.monotonic() + 10
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.02)
    assert path.exists()


def test_a_vm_in_a_unit_is_followed_through_systemd_run_and_stopped_by_systemctl(
    tmp_path: Path,
) -> None:
    launch = _fakes(tmp_path)
    unit = Unit(launch, "xenkdump-selftest-abcdef012345.service", 300 * MIB, tmp_path)
    vm = Vm(["sleep", "600"], tmp_path / "serial", tmp_path / "stderr", unit)
    pidfile = tmp_path / "bin" / f"{unit.name}.pid"
    _wait_for(pidfile)
    pid = int(pidfile.read_text())
    assert vm.running()
    run_log = (tmp_path / "bin" / "run.log").read_text()
    assert f"--property=MemoryMax={300 * MIB}" in run_log and run_log.endswith("-- sleep 600\n")
    vm.stop()
    assert not vm.running()
    assert not os.path.exists(f"/proc/{pid}")
    ctl_log = (tmp_path / "bin" / "ctl.log").read_text()
    assert f"stop --no-ask-password -- {unit.name}" in ctl_log
    vm.stop()  # idempotent: nothing is left to stop
    assert ctl_log == (tmp_path / "bin" / "ctl.log").read_text()


def test_a_vm_that_ends_by_itself_ends_its_systemd_run(tmp_path: Path) -> None:
    unit = Unit(_fakes(tmp_path), "xenkdump-selftest-abcdef012345.service", MIB, tmp_path)
    vm = Vm(["sh", "-c", "echo qemu: bad option >&2; exit 1"], tmp_path / "s", tmp_path / "e", unit)
    vm.proc.wait(10)
    assert not vm.running() and vm.proc.returncode == 1
    assert vm.stderr_tail() == "qemu: bad option"
    vm.stop()


def test_leftover_units_are_stopped_at_start(tmp_path: Path) -> None:
    launch = _fakes(tmp_path)
    names = ["xenkdump-selftest-aaaaaa.service", "xenkdump-selftest-bbbbbb.service"]
    vms = [
        Vm(["sleep", "600"], tmp_path / n, tmp_path / f"{n}.e", Unit(launch, n, MIB, tmp_path))
        for n in names
    ]
    for n in names:
        _wait_for(tmp_path / "bin" / f"{n}.pid")
    work = tmp_path / "work"
    (work / "xenkdump-selftest.aaaaaa.x1").mkdir(parents=True)
    (work / "other").mkdir()
    try:
        assert stop_leftovers(launch, work) == names
        for vm in vms:
            vm.proc.wait(10)
    finally:
        for vm in vms:
            vm.stop()
    assert [p.name for p in work.iterdir()] == ["other"]
    assert stop_leftovers(launch, work) == []
    # Children of a process die with it: nothing to stop, nothing removed.
    (work / "xenkdump-selftest.cccccc.x2").mkdir()
    assert stop_leftovers(ln.CHILD, work) == []
    assert len(list(work.iterdir())) == 2


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_transient_units_properties_are_ones_systemd_knows(tmp_path: Path) -> None:
    """The same settings in a unit file pass systemd-analyze verify (a misspelt
    property would only show when systemd-run refuses it on a host)."""
    launch = ln.Transient("xenkdumpd.service", "/usr/bin/systemd-run", "/usr/bin/systemctl")
    argv = ln.transient_argv(
        launch, ["/bin/true"], unit="x.service", memory_max=MIB, writable=tmp_path,
        output=tmp_path / "out",
    )  # fmt: skip
    props = [a.removeprefix("--property=") for a in argv if a.startswith("--property=")]
    unit_keys = ("Description=", "BindsTo=")
    unit = tmp_path / "xenkdump-selftest-probe.service"
    unit.write_text(
        "[Unit]\n"
        + "".join(f"{p}\n" for p in props if p.startswith(unit_keys))
        + "[Service]\nType=exec\nExecStart=/bin/true\n"
        + "".join(f"{p}\n" for p in props if not p.startswith(unit_keys))
    )
    (tmp_path / "xenkdumpd.service").write_text("[Service]\nExecStart=/bin/true\n")
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stderr == "" and proc.returncode == 0, proc.stderr
