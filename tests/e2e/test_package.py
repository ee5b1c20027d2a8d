"""The Debian package from a clean clone: lintian-clean, built in and installed into a
fresh root of each release (Debian 12 bookworm, 13 trixie) with apt resolving the
dependencies, and purged without a trace; then that root boots as a dom0 with the
shipped configuration (the dump target aside), xenkdumpd arms its own crash
initramfs, dom0 panics and the capture agent saves the dump to a disk.  Prints the
lintian summary, timings and the capture's figures."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dom0_root
import pytest
import scenarios as sc
from capture_lab import check_dump, figures, make_disk, read_dump, record
from e2e_harness import Assets, Job
from package_lab import (
    RELEASES,
    TEST_ONLY_PACKAGES,
    WORK_PARENT,
    Built,
    Installed,
    build_in_root,
    build_on_host,
    install_root,
)

pytestmark = pytest.mark.e2e

# Lintian lines that fail the build: errors and warnings (I:, P:, N: and X: are shown).
_FAILING = re.compile(r"^[EW]: ", re.M)


def summary(built: Built) -> str:
    """lintian's summary line and its tags (errors and warnings fail the tests)."""
    tags = [line for line in built.lintian.splitlines() if re.match(r"^[EWIPX]: ", line)]
    counts = {k: sum(t.startswith(f"{k}: ") for t in tags) for k in "EWIPX"}
    head = (
        f"lintian ({built.release}): {counts['E']} errors, {counts['W']} warnings, "
        f"{counts['I']} info, {counts['P']} pedantic, {counts['X']} experimental"
    )
    return "\n  ".join([head, *tags])


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = WORK_PARENT / f"xenkdump-package.{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    yield d
    if os.environ.get("XENKDUMP_E2E_KEEP") == "1":
        print(f"\n[package] kept {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def built(workdir: Path) -> dict[str, Built]:
    """The package built in a fresh root of each release (cached for the session)."""
    return {r: build_in_root(r, workdir / f"deb-{r}") for r in RELEASES}


@pytest.fixture(scope="session")
def installed(built: dict[str, Built], workdir: Path, debian_kernel: Path) -> dict[str, Installed]:
    """A fresh root of each release with the package installed by apt (kept for boots)."""
    return {
        r: install_root(r, b.deb, debian_kernel, workdir / f"root-{r}", workdir / f"root-{r}.log")
        for r, b in built.items()
    }


def test_host_build_from_a_clean_clone_is_lintian_clean(workdir: Path) -> None:
    b = build_on_host(workdir / "deb-host")
    print(f"\n[package] host build {b.deb.name} in {b.seconds:.0f} s")
    print(summary(b))
    assert not _FAILING.search(b.lintian), b.lintian


@pytest.mark.parametrize("release", RELEASES)
def test_build_in_release_root_is_lintian_clean(built: dict[str, Built], release: str) -> None:
    b = built[release]
    print(f"\n[package] {release}: built {b.deb.name} in {b.seconds:.0f} s")
    print(summary(b))
    assert b.deb.stat().st_size > 50_000
    assert not _FAILING.search(b.lintian), b.lintian


@pytest.mark.parametrize("release", RELEASES)
def test_apt_install_then_purge_leaves_nothing(
    installed: dict[str, Installed], release: str
) -> None:
    inst = installed[release]
    print(f"\n[package] {release}: fresh root, install, 2 purge cycles in {inst.seconds:.0f} s")
    print("\n".join(f"  {line}" for line in inst.report))
    report = "\n".join(inst.report)
    assert f"release {release}" in report
    assert "enabled enabled" in report
    assert re.search(r"installed \S+ with libxenmisc4\.(17|20)", report)
    want_lib = {"bookworm": "libxenmisc4.17", "trixie": "libxenmisc4.20"}[release]
    assert want_lib in report
    assert "plan ok" in report
    assert re.search(r"purge clean \(\d+ paths compared\)", report)
    assert "done" in inst.report
    assert (inst.root / "usr/sbin/xenkdumpd").exists()  # installed again for the boot


@pytest.mark.parametrize("release", RELEASES)
def test_dom0_boot_starts_the_service_which_arms_the_crash_kernel(
    installed: dict[str, Installed], assets: Assets, job: Job, release: str
) -> None:
    """That release's Xen and kernel boot the installed root with systemd as init and the
    shipped configuration but for the dump target (a disk of its own): xenkdumpd builds
    and arms its own crash initramfs, and after a panic the dump is on that disk."""
    root = installed[release].root
    token = os.urandom(32)
    dom0_root.prepare(root, token=token)
    disk = make_disk(job.dir / "dump.img", mib=1024)
    boot, xen_version = dom0_root.boot(
        root,
        job,
        assets.qemu,
        disk,
        memory_mib=dom0_root.SELFTEST_MEMORY_MIB,
        dom0_mib=dom0_root.SELFTEST_DOM0_MIB,
    )
    run = sc.Run(boot, job)
    print(f"\n[package] {release}: Xen {xen_version} dom0 boot and crash in {boot.elapsed:.0f} s")
    print("\n".join(f"  {line}" for line in run.scen))
    want_xen = {"bookworm": "4.17", "trixie": "4.20"}[release]
    run.expect(xen_version.startswith(want_xen), f"{release} root has Xen {xen_version}")
    run.expect(run.has(f"Xen version {want_xen}"), f"Xen {want_xen} did not boot", None)
    unit = run.values("unit")
    run.expect(unit, "the scenario never ran (systemd did not reach multi-user?)", None)
    run.expect(
        unit[0].get("ActiveState") == "active" and unit[0].get("SubState") == "running",
        f"xenkdumpd.service did not start by itself: {unit}",
        "XK-SCEN:",
    )
    # The first load built xenkdump's crash initramfs in dom0 (mkinitramfs in a
    # transient unit) and xenkdumpd was never restarted meanwhile (its watchdog).
    loaded = run.values("loaded-start")
    run.expect(
        loaded and loaded[0].get("State") == "loaded" and loaded[0].get("NRestarts") == "0",
        f"xenkdumpd's first load did not arm the crash kernel, or it restarted: {loaded}",
        "XK-SCEN: loaded-start",
    )
    info = initramfs_record(run)
    run.expect(
        info.get("rebuilt") is True and "makedumpfile" in " ".join(info.get("programs", [])),
        f"the crash initramfs is not xenkdump's, built in dom0: {info}",
        "XK-SCEN: initramfs",
    )
    # Nothing in it comes from the packages this boot installed for its other steps: the
    # only names it shares with their programs are busybox's applets (links to busybox).
    extra = run.values("initramfs-from")
    names = run.values("initramfs-names")
    applets = set(
        subprocess.run(
            [str(assets.busybox), "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    shared = {e.get("_0", "?"): [v for k, v in e.items() if k[0] == "_"][1:] for e in extra}
    run.expect(
        names
        and int(names[0].get("_0", "0")) > 100  # lsinitramfs listed the image
        and len(extra) == len(TEST_ONLY_PACKAGES)
        and all(int(e.get("files", "-1")) == len(shared[e.get("_0", "?")]) <= 5 for e in extra)
        and all(set(v) <= applets for v in shared.values())
        and sum(int(e.get("of", "0")) for e in extra) > 0,
        f"the crash initramfs holds files of packages xenkdump does not depend on: {extra}",
        "XK-SCEN: initramfs-from",
    )
    text = "\n".join(run.scen)
    run.expect("status-text loaded" in text, "systemd's StatusText is not 'loaded'", "XK-SCEN:")
    run.expect('busctl State s "loaded"' in text, "busctl does not show loaded", "XK-SCEN:")
    run.expect("ctl-status rc=0" in text, "xenkdumpctl status failed", "XK-SCEN:")
    user = run.values("user-status")
    run.expect(
        user and user[0].get("rc") == "0" and '"State":"loaded"' in text,
        f"an unprivileged user cannot read the status: {user}",
        "XK-SCEN:",
    )
    denied = run.values("user-reload")
    run.expect(
        denied and denied[0].get("rc") != "0" and "Access denied" in text,
        f"an unprivileged user's Reload was not refused by the bus policy: {denied}",
        "XK-SCEN:",
    )
    ctl_denied = run.values("user-ctl-reload")
    run.expect(
        ctl_denied and ctl_denied[0].get("rc") != "0" and "only root may do this" in text,
        f"xenkdumpctl reload as a user was not refused in one line: {ctl_denied}",
        "XK-SCEN:",
    )
    # The hypervisor-port contract suite ran before xenkdumpd, against this release's
    # Xen through the installed package (its binding, libxenctrl and Python).
    contract = [line for line in run.scen if line.startswith("contract rc=")]
    run.expect(contract, "the contract suite did not run in dom0", "XK-SCEN:")
    run.expect(
        contract[0].startswith("contract rc=0 ") and " passed" in contract[0],
        f"contract suite failed on Xen {xen_version}: {contract[0]}",
        "XK-SCEN: contract",
    )
    skipped = [line for line in run.scen if line.startswith("contract| SKIPPED")]
    run.expect(
        not [s for s in skipped if "PV dom0" in s or "privcmd" in s],
        f"real-adapter contract tests were skipped in dom0: {skipped}",
        "XK-SCEN: contract",
    )
    expect_selftest_under_the_unit(run)
    crashed = run.values("loaded-crash")
    run.expect(
        crashed and crashed[0].get("State") == "loaded",
        f"xenkdumpd was not loaded when dom0 panicked: {crashed}",
        "XK-SCEN: loaded-crash",
    )
    # dom0 panicked, Xen ran the image xenkdumpd armed, and its capture agent saved the
    # dump to the disk and rebooted.
    run.expect(run.has("Executing kexec image"), "Xen did not run the crash image", "crashing")
    run.expect(
        run.has("xenkdump-capture: final_action: reboot"),
        "the capture agent saved no dump",
        "xenkdump-capture:",
    )
    dump = read_dump(disk, dom0_root.DUMP_DIR, job.dir)
    check_dump(dump.meta, dump.dmesg, dump.vmcore, sc.kmsg_token(token), job.dir)
    steps = dump.meta["steps"]
    assert steps and all(isinstance(s["exit_code"], int) for s in steps), steps
    print(
        f"  dump {dom0_root.DUMP_DIR}/{dump.name}: steps "
        + ", ".join(f"{s['name']} exit {s['exit_code']} in {s['seconds']} s" for s in steps)
    )
    record(
        f"package dom0 {release}, shipped config, local disk",
        figures(info, dump.meta, dump.vmcore, host_ram_mib=dom0_root.SELFTEST_MEMORY_MIB),
    )


def initramfs_record(run: sc.Run) -> dict[str, Any]:
    """The record xenkdumpd wrote beside the crash initramfs it built (scenario line)."""
    line = next((x for x in run.scen if x.startswith("initramfs ")), "")
    try:
        doc = json.loads(line.removeprefix("initramfs "))
    except ValueError:
        run.fail(f"no record of the crash initramfs: {line!r}", "XK-SCEN: initramfs")
    if not isinstance(doc, dict):
        run.fail(f"the crash initramfs record is not an object: {line!r}", "XK-SCEN: initramfs")
    return doc


def expect_selftest_under_the_unit(run: sc.Run) -> None:
    """SelfTest through busctl as root: the staging VM runs as its own transient unit
    (Nice=19, idle I/O, BindsTo=xenkdumpd.service), outside xenkdumpd's sandbox; a
    cancel, and `systemctl kill -s KILL xenkdumpd`, leave no QEMU and no unit."""
    for how in ("cancel", "kill"):
        where = f"XK-SCEN: selftest-{how}"
        start = run.values(f"selftest-{how} start")
        run.expect(start and start[0].get("rc") == "0", f"SelfTest ({how}) refused", where)
        test_id = start[0].get("id", "")
        unit = run.values(f"selftest-{how} unit")[0]
        run.expect(
            unit.get("ActiveState") == "active"
            and unit.get("Nice") == "19"
            and unit.get("BindsTo") == "xenkdumpd.service"
            and int(unit.get("MemoryMax", "0")) > 256 << 20,
            f"the VM's transient unit is not as planned: {unit}",
            where,
        )
        qemu = run.values(f"selftest-{how} qemu")[0]
        run.expect(
            qemu.get("comm") == "qemu-system-x86"
            and qemu.get("ni") == "19"
            and qemu.get("io") == "idle"
            and qemu.get("cgroup", "").endswith(f"/xenkdump-selftest-{test_id}.service"),
            f"QEMU does not run in its own unit at low priority: {qemu}",
            where,
        )
        running = run.values(f"selftest-{how} running")[0]
        run.expect(running.get("alive") == "yes", f"QEMU died under the unit: {running}", where)
        end = run.values(f"selftest-{how} end")[0]
        run.expect(
            end.get("qemu-left") == "0" and end.get("unit") != "active" and end.get("units") == "0",
            f"after the {how} a QEMU or its unit was left: {end}",
            where,
        )
        print(f"  selftest ({how}): {running} -> {end}")
    last = run.values("selftest-cancel last")[0]
    run.expect('"Reason"_s_"cancelled"' in last.get("_0", ""), f"cancel: {last}", "XK-SCEN:")
    restarted = run.values("selftest-kill restarted")[0]
    run.expect(
        restarted.get("xenkdumpd") == "active",
        f"xenkdumpd did not come back after the kill: {restarted}",
        "XK-SCEN: selftest-kill",
    )
