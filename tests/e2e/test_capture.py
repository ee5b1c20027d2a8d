"""The capture side on real Xen: xenkdump's own crash initramfs saves a dump to a disk,
and, after a crash of Xen itself, over SSH.

``xenkdumpctl initrd`` (the product, with initramfs-tools' mkinitramfs and Debian's
kernel package "installed" in a mount namespace, tests/testkernel.py) builds
the crash initramfs for a local target: an ext4 filesystem labelled ``xkdump`` on a
virtio disk of the lab, found by the crash kernel by its label.  dom0 loads it with
``xenkdumpctl load``, writes a token line to /dev/kmsg and panics.  The crash kernel
runs the capture agent, which must leave ``<host>-<time>/`` on the disk with the
vmcore, dom0's log (with the token line) and metadata.json, then power the machine
off.  The harness reads the disk with debugfs (e2fsprogs), without mounting it, and
opens the vmcore with ``makedumpfile --dump-dmesg``.

The second boot crashes Xen itself (debug key ``C`` through libxenctrl, dom0 alive)
with an SSH target: an sshd on this machine's loopback (sshd_lab.py), reached by the
crash kernel through QEMU's user-mode network only, with the host key pinned.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import scenarios as sc
import sshd_lab
from capture_lab import (
    AGENT,
    AGENT_END,
    DUMP_FILES,
    LABEL,
    check_dump,
    figures,
    make_disk,
    read_dump,
    record,
)
from e2e_harness import DOM0_END, Assets, Job, boot, unpacked_package

from testkernel import with_kernel


def build_initrd(job: Job, assets: Assets, config: Path) -> tuple[Path, dict[str, Any]]:
    """``xenkdumpctl initrd --config`` (the product) with Debian's kernel "installed", and
    the lab's Xen binary in /boot as on a Debian dom0 (its symbol table locates Xen's
    console ring, capture/xensyms.py)."""
    image = job.dir / "crash-xenkdump.img"
    boot_extra = job.dir / "boot-xen"
    boot_extra.mkdir(exist_ok=True)
    for f in (unpacked_package("xen-hypervisor-4.17-amd64") / "boot").glob("xen-4.17*-amd64.gz"):
        shutil.copy(f, boot_extra / f.name)
    built = subprocess.run(
        [
            *with_kernel(assets.kernel, job.dir, boot_extra),
            sys.executable,
            "-m",
            "xenkdump.cli.ctl",
            "--hypervisor",
            f"sim:{job.dir / 'host.yaml'}",
            "initrd",
            "--config",
            str(config),
            "--output",
            str(image),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    info: dict[str, Any] = json.loads(built.stdout)
    return image, info


def arm_and_crash(
    assets: Assets, job: Job, image: Path, token: str, crash: str, **boot_options: Any
) -> sc.Run:
    """dom0 loads ``image`` with xenkdumpctl, writes ``token`` to /dev/kmsg and runs the
    ``crash`` snippet; the boot ends when the capture agent does its final action."""
    job.write_scenario(
        "\n".join(
            [
                sc.prelude(),
                sc.xenkdump_load(assets, image, "xenkdump-initrd", "/run/xk-state"),
                f'echo "{token}" > /dev/kmsg',
                crash,
            ]
        )
    )
    result = boot(
        assets,
        job,
        timeout=900,
        end_markers=(*AGENT_END, DOM0_END),
        grace=60,
        **boot_options,
    )
    run = sc.Run(result, job)
    run.expect_dom0_ready()
    load = run.values("load xenkdump-initrd")
    run.expect(load and load[0]["rc"] == "0", f"xenkdumpctl load failed: {load}", "XK-SCEN:")
    run.expect(run.has("Executing kexec image"), "Xen did not run the crash image", "crashing")
    run.expect(run.has(f"{AGENT} final_action: halt"), "the agent saved no dump", AGENT)
    return run


@pytest.mark.e2e
def test_crash_with_xenkdumps_initramfs_saves_a_dump_on_a_virtio_disk(
    assets: Assets, job: Job
) -> None:
    token = f"xenkdump-kmsg-{os.urandom(8).hex()}"
    disk = make_disk(job.dir / "dump.img")
    config = job.dir / "xenkdump.yaml"
    config.write_text(
        f"kernel: {assets.kernel}\ninitrd: xenkdump\n"
        f"dump:\n  device: LABEL={LABEL}\n  fstype: ext4\n  path: /\n"
        "  modules: [virtio_pci, virtio_blk]\n  final_action: halt\n  failure_action: halt\n"
    )
    image, info = build_initrd(job, assets, config)
    arm_and_crash(assets, job, image, token, sc.crash(), disks=(disk,))
    dump = read_dump(disk, "/", job.dir)
    check_dump(dump.meta, dump.dmesg, dump.vmcore, token, job.dir)
    record("local disk, dom0 panic", figures(info, dump.meta, dump.vmcore))


@pytest.mark.e2e
def test_xen_crash_saves_a_dump_over_ssh(assets: Assets, job: Job) -> None:
    """Xen itself crashes (debug key C, dom0 alive): the crash kernel, on QEMU's user-mode
    network only, streams the dump to an sshd on this machine's loopback."""
    token = f"xenkdump-kmsg-{os.urandom(8).hex()}"
    with sshd_lab.sshd(job.dir / "sshd") as server:
        dumps = job.dir / "ssh-dumps"
        config = job.dir / "xenkdump.yaml"
        config.write_text(
            f"kernel: {assets.kernel}\ninitrd: xenkdump\n"
            f"dump:\n  target: ssh\n  ssh: {server.destination}\n  ssh_port: {server.port}\n"
            f"  ssh_key: {server.client_key}\n  ssh_known_hosts: {server.known_hosts}\n"
            f"  path: {dumps}\n  modules: [virtio_pci, virtio_net]\n"
            "  final_action: halt\n  failure_action: halt\n"
        )
        image, info = build_initrd(job, assets, config)
        assert any(str(p).endswith("/ssh") for p in info["programs"]), info
        run = arm_and_crash(assets, job, image, token, sc.xen_crash(), user_net=True)
        sshd_log = server.log.read_text(errors="replace")
    # Xen crashed, not dom0: Xen's own line for the key, and no dom0 panic before it.
    run.expect(run.has(sc.XEN_CRASH_KEY), "Xen did not take debug key C", "crashing xen")
    before = run.boot.serial.split(sc.XEN_CRASH_KEY, 1)[0]
    run.expect(
        "Kernel panic" not in before and "Trigger a crash" not in before, "dom0 panicked", None
    )
    # The crash kernel came in through QEMU's user-mode network: from our loopback.
    assert "Accepted publickey for root from 127.0.0.1" in sshd_log, sshd_log[-2000:]

    found = sorted(p for p in dumps.iterdir() if re.fullmatch(r"\S+-\d{8}T\d{6}Z", p.name))
    assert len(found) == 1, list(dumps.iterdir())
    dump = found[0]
    names = sorted(p.name for p in dump.iterdir())
    # the flattened stream was turned back into a vmcore by the server's makedumpfile -R
    assert names == sorted(DUMP_FILES), names
    meta = json.loads((dump / "metadata.json").read_text())
    assert meta["vmcore"]["format"] == "elf", meta["vmcore"]
    assert "-F" in " ".join(s["command"] for s in meta["steps"])
    check_dump(meta, dump / "dmesg.txt", dump / "vmcore", token, job.dir)
    # Xen's last words: its console ring, located through its symbol table, ends with
    # the crash it was asked for
    assert meta["xen_console"]["found"] is True, meta["xen_console"]
    console = (dump / "xen-console.txt").read_text(errors="replace").splitlines()
    assert sc.XEN_CRASH_KEY in console[-3], console[-5:]
    assert console[-2].endswith("Executing kexec image on cpu0"), console[-5:]
    record("ssh, Xen crash", figures(info, meta, dump / "vmcore"))
