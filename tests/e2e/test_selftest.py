"""The self-test on real QEMU: with Debian's Xen 4.17 as "this host's Xen" and the
Debian test kernel as dom0 and crash kernel, xenkdump's own crash initramfs passes the
handoff level through the CLI and the good image through xenkdumpd over D-Bus; at the
boot level they pass too, broken images fail at the right stage with a clear reason,
and no QEMU outlives a cancel or a kill -9.

A boot-level case is one short direct boot (no Xen), about 15 s under TCG; a
handoff case boots Xen, the staging dom0 and the crash kernel, one to four minutes
(docs/selftest.md §6), so there is one per path.  XENKDUMP_SELFTEST_ACCEL=tcg skips
the KVM probe, which on the project's machines opens /dev/kvm and then hangs
(docs/lab.md §6).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import scenarios as sc
import selftest_images as si
from e2e_harness import CRASH_CMDLINE, REPO, Assets, _one_qemu_at_a_time, unpacked_package

import privatebus
from testkernel import with_kernel
from xenkdump.cli import cmd_daemon
from xenkdump.selftest import job as st_job
from xenkdump.selftest import plan
from xenkdump.selftest.stages import LEVEL_STAGES, Level, Stage
from xenkdump.units import MIB

pytestmark = pytest.mark.e2e
NO_CONSOLE = "irqpoll nr_cpus=1 reset_devices panic=-1"


@pytest.fixture(autouse=True)
def one_vm_at_a_time() -> Iterator[None]:
    """Every test here boots QEMU (through xenkdump, not the lab's boot()): it takes the
    lab's QEMU lock too, so that a parallel run's boot does not starve its VM (which
    runs at nice 19) on the two shared cores."""
    with _one_qemu_at_a_time():
        yield


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("XENKDUMP_SELFTEST_ACCEL", "tcg")
    return {**os.environ, "XENKDUMP_SELFTEST_ACCEL": "tcg"}


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "work"
    d.mkdir()
    yield d
    assert qemus_in(d) == [], "a QEMU outlived its self-test"


def qemus_in(work: Path) -> list[int]:
    """Running QEMU processes whose command line names ``work``."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"qemu-system" in cmd and str(work).encode() in cmd and state != "Z":
            found.append(int(p.name))
    return found


def ctl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xenkdump.cli.ctl", "selftest", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False,
    )  # fmt: skip


def debian_xen_boot_dir() -> Path:
    """The unpacked xen-hypervisor-4.17-amd64 package's /boot (xen-4.17-amd64.gz)."""
    return unpacked_package("xen-hypervisor-4.17-amd64") / "boot"


def test_good_image_passes_the_boot_level_through_the_cli(
    assets: Assets, env: dict[str, str], work: Path, tmp_path: Path
) -> None:
    initrd = si.good_initrd(assets, tmp_path / "good.cpio.gz")
    t0 = time.monotonic()
    proc = ctl(
        ["--kernel", str(assets.kernel), "--initrd", str(initrd), "--cmdline", CRASH_CMDLINE,
         "--crash-size", "256", "--work-dir", str(work), "--json"],
        env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["passed"] is True and result["level"] == "boot"
    # No level asked for and no Xen running here: boot, and the result says why.
    assert result["note"].startswith("boot level instead of handoff: no Xen binary to boot")
    assert list(result["stages"]) == [s.value for s in LEVEL_STAGES[Level.BOOT]]
    assert 0 < result["crash_kernel_boot_seconds"] < result["duration"]
    assert 0 < result["peak_memory"] < 256 * MIB
    assert result["crashkernel"].startswith("crashkernel=")
    # Plain progress lines when stderr is not a terminal, one per stage.
    assert "selftest: token-found (67%)" in proc.stderr
    assert list(work.iterdir()) == []  # the run's files are gone
    print(f"\n[selftest] boot level passed in {time.monotonic() - t0:.1f}s: {result}")


@pytest.mark.parametrize(
    ("case", "stage", "words"),
    [
        ("init-exits", Stage.CAPTURE_STARTED, "init exited"),
        ("initrd-too-big", Stage.CRASH_KERNEL_UP, "out of memory"),
        ("no-console", Stage.CRASH_KERNEL_UP, "no usable console"),
    ],
)
def test_broken_images_fail_at_the_right_stage(  # noqa: PLR0917 (fixtures + parameters)
    assets: Assets, env: dict[str, str], work: Path, tmp_path: Path,
    case: str, stage: Stage, words: str,
) -> None:  # fmt: skip
    cmdline = CRASH_CMDLINE
    if case == "init-exits":
        initrd = si.exiting_initrd(assets, tmp_path / "i.gz")
    elif case == "initrd-too-big":
        initrd = si.oversized_initrd(assets, tmp_path / "i.gz", unpacked_mib=250)
    else:
        initrd = si.good_initrd(assets, tmp_path / "i.gz")
        cmdline = NO_CONSOLE
    t0 = time.monotonic()
    proc = ctl(
        ["--kernel", str(assets.kernel), "--initrd", str(initrd), "--cmdline", cmdline,
         "--crash-size", "256", "--work-dir", str(work), "--timeout", "150"],
        env,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stdout.splitlines()
    assert f"failed at {stage}: " in line and words in line, line
    print(f"\n[selftest] {case}: {time.monotonic() - t0:.1f}s: {line}")


def test_cancel_stops_the_vm(
    assets: Assets, env: dict[str, str], work: Path, tmp_path: Path
) -> None:
    initrd = si.good_initrd(assets, tmp_path / "good.cpio.gz")
    image = plan.Image(str(assets.kernel), str(initrd), CRASH_CMDLINE, 256 * MIB)
    started = threading.Event()

    def progress(stage: Stage, fraction: float) -> None:
        if stage is Stage.VM_START:
            started.set()

    job = st_job.Job(image, st_job.Options(work_dir=work), progress=progress)
    box: list[st_job.Result] = []
    worker = threading.Thread(target=lambda: box.append(job.run()))
    worker.start()
    assert started.wait(60)
    assert qemus_in(work)
    job.cancel()
    worker.join(30)
    assert not worker.is_alive()
    (result,) = box
    assert not result.passed and result.reason == "cancelled"
    assert qemus_in(work) == []


def test_kill_9_of_the_cli_leaves_no_qemu(
    assets: Assets, env: dict[str, str], work: Path, tmp_path: Path
) -> None:
    initrd = si.good_initrd(assets, tmp_path / "good.cpio.gz")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xenkdump.cli.ctl", "selftest", "--kernel", str(assets.kernel),
         "--initrd", str(initrd), "--cmdline", CRASH_CMDLINE, "--crash-size", "256",
         "--work-dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.stderr is not None
    assert "vm-start" in proc.stderr.readline()
    assert qemus_in(work)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    end = time.monotonic() + 60
    while qemus_in(work) and time.monotonic() < end:
        time.sleep(0.1)
    assert qemus_in(work) == []


# ---- through xenkdumpd over D-Bus (a simulated host arms the image; QEMU is real) ----


@pytest.fixture
def daemon(
    assets: Assets,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[subprocess.Popen[bytes]]:
    """xenkdumpd on a private bus, with the good crash image armed on a simulated host
    (indirect parameter: more configuration YAML; its boot_dir replaces the default)."""
    bus_dir = Path(tempfile.mkdtemp(prefix="xenkdump-bus-"))
    initrd = si.good_initrd(assets, tmp_path / "good.cpio.gz")
    config = tmp_path / "xenkdump.yaml"
    extra = str(getattr(request, "param", ""))
    if "{xen_boot_dir}" in extra:
        extra = extra.format(xen_boot_dir=debian_xen_boot_dir(), kernel=assets.kernel)
    base = sc.daemon_config(assets.kernel, initrd, str(tmp_path / "state"))
    if "boot_dir:" in extra:  # the parameter's boot_dir replaces the kernel's
        base = "\n".join(line for line in base.splitlines() if not line.startswith("boot_dir:"))
    config.write_text(base + "\n" + extra)
    with privatebus.running(bus_dir) as address:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = address
        log = (tmp_path / "daemon.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "xenkdump.daemon.main", "--config", str(config),
             "--hypervisor", f"sim:{tmp_path / 'host.yaml'}"],
            stdout=log, stderr=log, env=env, cwd=REPO,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while True:
                status = cmd_daemon.optional(lambda c: c.get_status())
                if status is not None and status["State"] == "loaded":
                    break
                assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
                time.sleep(0.5)
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            log.close()
    shutil.rmtree(bus_dir, ignore_errors=True)


def test_the_daemon_self_tests_its_armed_image_over_dbus(
    daemon: subprocess.Popen[bytes], env: dict[str, str]
) -> None:
    t0 = time.monotonic()
    proc = ctl(["--json"], env)  # no image given: xenkdumpd tests the armed one
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["Passed"] is True and result["Level"] == "boot"
    status = cmd_daemon.optional(lambda c: c.get_status())
    assert status is not None
    assert status["LastSelfTest"] == result and result["ImageSha256"] == status["ImageSha256"]
    human = subprocess.run(
        [sys.executable, "-m", "xenkdump.cli.ctl", "status"],
        capture_output=True, text=True, env=env, cwd=REPO, check=True,
    ).stdout  # fmt: skip
    assert re.search(r"Self-test: +passed \d+ s ago for this image \(boot level\)", human), human
    print(f"\n[selftest] boot level through xenkdumpd: {time.monotonic() - t0:.1f}s")


HANDOFF_DAEMON = "boot_dir: {xen_boot_dir}\nselftest:\n  dom0_kernel: {kernel}\n"


@pytest.mark.parametrize("daemon", [HANDOFF_DAEMON], indirect=True)
def test_the_daemon_passes_the_handoff_level_by_default_over_dbus(
    daemon: subprocess.Popen[bytes], env: dict[str, str]
) -> None:
    """No level and no Xen binary configured: the simulated host runs Xen 4.17.7 and
    boot_dir holds Debian's xen-4.17-amd64.gz (4.17.7), so the default is handoff."""
    t0 = time.monotonic()
    proc = ctl(["--json"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["Passed"] is True and result["Level"] == "handoff", result
    assert result["Xen"] == str(debian_xen_boot_dir() / "xen-4.17-amd64.gz")
    # The simulated host's crash area (0xae6ff000) lies beyond the 608 MiB VM.
    assert "the host's address 0xae6ff000 is beyond the staging VM's memory" in result["Note"]
    status = cmd_daemon.optional(lambda c: c.get_status())
    assert status is not None and status["LastSelfTest"] == result
    print(f"\n[selftest] handoff level through xenkdumpd: {time.monotonic() - t0:.1f}s")


def first_self_test() -> tuple[dict[str, Any], dict[str, Any]]:
    """The status and LastSelfTest once xenkdumpd has finished a self-test (a boot-level
    run takes about 15 s; waited for up to 5 minutes on a loaded machine)."""
    status: dict[str, Any] = {}
    deadline = time.monotonic() + 300
    while True:
        status = cmd_daemon.optional(lambda c: c.get_status()) or {}
        assert status, "xenkdumpd does not answer"
        if status["LastSelfTest"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status["LastSelfTest"], "no self-test finished within 5 minutes"
    return status, dict(status["LastSelfTest"])


@pytest.mark.parametrize("daemon", ["selftest:\n  after_reload: true\n"], indirect=True)
def test_after_reload_self_tests_each_new_image(daemon: subprocess.Popen[bytes]) -> None:
    # Nobody calls SelfTest: the load that armed the image started it.
    status, last = first_self_test()
    assert last.get("Passed") is True, last
    assert last["ImageSha256"] == status["ImageSha256"]


@pytest.mark.parametrize(
    "daemon", ['selftest:\n  level: boot\n  schedule: "*:*:*"\n'], indirect=True
)
def test_schedule_self_tests_the_armed_image_at_each_elapse(
    daemon: subprocess.Popen[bytes], tmp_path: Path, env: dict[str, str]
) -> None:
    """Every second (systemd calendar syntax): nobody calls SelfTest; the elapses that come
    while a run is going (a boot-level run lasts several seconds) are skipped with a log
    line; status shows the next run."""
    status, last = first_self_test()
    assert last.get("Passed") is True, last
    assert status["SelfTestSchedule"] == "*:*:*"
    # NextSelfTest is the next elapse: at most a second ahead.  Right after an elapse it
    # names the one just passed until xenkdumpd has computed the one after it (seconds,
    # on a loaded machine), so it is polled until it lies ahead; a value that is never
    # brought up to date never does.
    ahead: list[float] = []
    deadline = time.monotonic() + 30
    while not ahead and time.monotonic() < deadline:
        status = cmd_daemon.optional(lambda c: c.get_status()) or {}
        now = time.time()  # after xenkdumpd computed the value it answered with
        at = int(status.get("NextSelfTest", 0)) / 1e6
        if now < at:
            ahead.append(at - now)
        else:
            time.sleep(0.1)
    assert ahead and ahead[0] <= 2, (ahead, status.get("NextSelfTest"))
    log_file = tmp_path / "daemon.log"
    skipped = r"scheduled self-test \(\*:\*:\*\) skipped: self-test \w+ is still running"
    deadline = time.monotonic() + 30
    while not re.search(skipped, log_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    log = log_file.read_text()
    assert "(selftest.schedule: *:*:*)" in log
    assert re.search(skipped, log), log
    human = subprocess.run(
        [sys.executable, "-m", "xenkdump.cli.ctl", "status"],
        capture_output=True, text=True, env=env, cwd=REPO, check=True,
    ).stdout  # fmt: skip
    assert re.search(r"Scheduled: +\*:\*:\*: next run \d{4}-", human), human


def test_kill_9_of_the_daemon_leaves_no_qemu(
    daemon: subprocess.Popen[bytes], env: dict[str, str], tmp_path: Path
) -> None:
    test_id = cmd_daemon.optional(lambda c: c.self_test({}))
    assert test_id
    qemus: list[int] = []
    end = time.monotonic() + 120  # the run's scratch disk and memory image come first
    while not qemus and time.monotonic() < end:
        qemus = [p for p in qemus_in(Path("/var/tmp")) if test_id in _cmdline(p)]
        if not qemus:
            time.sleep(0.1)
    assert qemus, "the self-test's QEMU never started"
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    end = time.monotonic() + 60
    while any(_alive(p) for p in qemus) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(_alive(p) for p in qemus)
    for leftover in Path("/var/tmp").glob(f"xenkdump-selftest.{test_id}.*"):
        shutil.rmtree(leftover)  # kill -9 gave xenkdumpd no chance to clean up


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_xenkdumps_own_crash_initramfs_passes_both_levels_through_the_cli(
    assets: Assets, env: dict[str, str], work: Path, tmp_path: Path
) -> None:
    """The default crash initrd (initrd: xenkdump, built by mkinitramfs): its capture
    agent in self-test mode, at the boot level, then at the handoff level standalone
    (no Xen here: --xen names Debian's Xen 4.17, --dom0-kernel the dom0)."""
    config = tmp_path / "xenkdump.yaml"
    config.write_text(f"kernel: {assets.kernel}\ndump:\n  device: /dev/vda1\n  path: /crash\n")
    initrd = tmp_path / "crash-initrd.img"
    build = subprocess.run(
        [*with_kernel(assets.kernel, tmp_path), sys.executable, "-m", "xenkdump.cli.ctl",
         "--hypervisor", f"sim:{tmp_path / 'host.yaml'}", "initrd", "--config", str(config),
         "--output", str(initrd)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr

    def passes(*level: str) -> tuple[dict[str, Any], str]:
        proc = ctl(
            [*level, "--kernel", str(assets.kernel), "--initrd", str(initrd),
             "--cmdline", CRASH_CMDLINE, "--crash-size", "256", "--work-dir", str(work),
             "--json"],
            env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout), proc.stderr

    t0 = time.monotonic()
    result, _ = passes()
    # The capture agent itself ran in self-test mode: its dump directory on the scratch
    # disk, read back by xenkdump, with metadata.json's steps (makedumpfile cannot
    # filter the synthetic core: the fallback chain ends in the raw copy).
    assert result["passed"] is True and result["dump_result"] == "complete", result
    names = [s["name"] for s in result["dump_steps"]]
    assert names[0] == "dmesg" and names[-1] == "vmcore raw", names
    assert {"vmcore -d 31", "vmcore -d 1", "vmcore -d 0"} <= set(names)
    raw = result["dump_steps"][-1]
    # /proc/vmcore: the 64 KiB window behind the ELF headers the crash kernel made.
    assert (
        raw["exit_code"] == 0 and plan.SYNTHETIC_SIZE < raw["bytes"] <= plan.SYNTHETIC_SIZE + 16384
    )
    assert 0 < result["peak_memory"] < 256 * MIB
    print(
        f"\n[selftest] xenkdump's crash initramfs (its capture agent), boot level: "
        f"{time.monotonic() - t0:.1f}s: {result}"
    )
    xen = debian_xen_boot_dir() / "xen-4.17-amd64.gz"
    t0 = time.monotonic()
    result, progress = passes("--xen", str(xen), "--dom0-kernel", str(assets.kernel))
    assert result["passed"] is True and result["level"] == "handoff", result
    assert list(result["stages"]) == [s.value for s in LEVEL_STAGES[Level.HANDOFF]]
    assert result["xen"] == str(xen)
    # The CLI knows no host crash area address here: Xen placed it.
    assert result["note"] == "crash area 256 MiB, placed by Xen (the host's address is not known)"
    # A real dump of dom0 and Xen: dom0's VMCOREINFO lets makedumpfile filter it.
    assert result["dump_result"] == "complete", result
    steps = {s["name"]: s for s in result["dump_steps"]}
    assert steps["dmesg"]["exit_code"] == 0 and steps["vmcore -d 31"]["exit_code"] == 0, steps
    assert 0 < result["peak_memory"] < 256 * MIB
    assert "selftest: purgatory" in progress and "selftest: dom0-up" in progress
    assert list(work.iterdir()) == []  # the run's files are gone
    stages = " ".join(f"{k} {v:.0f}s" for k, v in result["stages"].items())
    print(
        f"\n[selftest] xenkdump's crash initramfs, handoff level: "
        f"{time.monotonic() - t0:.1f}s: {stages}"
    )
