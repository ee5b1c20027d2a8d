"""The capture side on real Xen: xenkdump's own crash initramfs saves a dump to a disk.

``xenkdumpctl initrd`` (the product, with initramfs-tools' mkinitramfs and Debian's
kernel package "installed" in a mount namespace, tests/testkernel.py) builds
the crash initramfs for a local target: an ext4 filesystem labelled ``xkdump`` on a
virtio disk of the lab, found by the crash kernel by its label.  dom0 loads it with
``xenkdumpctl load``, writes a token line to /dev/kmsg and panics.  The crash kernel
runs the capture agent, which must leave ``<host>-<time>/`` on the disk with the
vmcore, dom0's log (with the token line) and metadata.json, then power the machine
off.  The harness reads the disk with debugfs (e2fsprogs), without mounting it, and
opens the vmcore with ``makedumpfile --dump-dmesg``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import scenarios as sc
from e2e_harness import DOM0_END, MEMORY_MIB, Assets, Job, boot

from testkernel import with_kernel

LABEL = "xkdump"
AGENT = "xenkdump-capture:"


def make_disk(path: Path, mib: int = 192) -> Path:
    with path.open("wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", LABEL, str(path)], check=True, timeout=60)
    return path


def debugfs(disk: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(disk)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout


def fetch(disk: Path, src: str, dest: Path) -> Path:
    subprocess.run(
        ["debugfs", "-R", f"dump {src} {dest}", str(disk)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return dest


def reopen_dmesg(vmcore: Path, work: Path) -> Path:
    """dom0's log read again from the saved vmcore (format elf), as an administrator would."""
    out = work / "again.txt"
    proc = subprocess.run(
        ["makedumpfile", "--dump-dmesg", str(vmcore), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


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
    image = job.dir / "crash-xenkdump.img"
    built = subprocess.run(
        [
            *with_kernel(assets.kernel, job.dir),
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
    info = json.loads(built.stdout)
    job.write_scenario(
        "\n".join(
            [
                sc.prelude(),
                sc.xenkdump_load(assets, image, "xenkdump-initrd", "/run/xk-state"),
                f'echo "{token}" > /dev/kmsg',
                sc.crash(),
            ]
        )
    )
    result = boot(
        assets,
        job,
        timeout=900,
        end_markers=(f"{AGENT} final_action", f"{AGENT} failure_action", DOM0_END),
        grace=60,
        disks=(disk,),
    )
    run = sc.Run(result, job)
    run.expect_dom0_ready()
    load = run.values("load xenkdump-initrd")
    run.expect(load and load[0]["rc"] == "0", f"xenkdumpctl load failed: {load}", "XK-SCEN:")
    run.expect(run.has("Executing kexec image"), "Xen did not run the crash image", "crashing")
    run.expect(run.has(f"{AGENT} final_action: halt"), "the agent saved no dump", AGENT)

    names = re.findall(r"\s(\S+-\d{8}T\d{6}Z)\s*$", debugfs(disk, "ls -l /"), re.M)
    assert len(names) == 1, debugfs(disk, "ls -l /")
    dump = names[0]
    files = debugfs(disk, f"ls -l /{dump}")
    for name in ("vmcore", "dmesg.txt", "xen-console.txt", "metadata.json"):
        assert name in files, files
    assert "incomplete" not in files
    meta = json.loads(fetch(disk, f"/{dump}/metadata.json", job.dir / "metadata.json").read_text())
    assert meta["result"] == "complete" and meta["vmcore"]["saved"] is True
    assert [s["exit_code"] for s in meta["steps"]][:1] == [0]  # dmesg
    dmesg = fetch(disk, f"/{dump}/dmesg.txt", job.dir / "dmesg.txt").read_text(errors="replace")
    assert token in dmesg
    vmcore = fetch(disk, f"/{dump}/vmcore", job.dir / "vmcore")
    assert meta["files"]["vmcore"]["bytes"] == vmcore.stat().st_size
    opened = reopen_dmesg(vmcore, job.dir)
    assert token in opened.read_text(errors="replace")
    ram = MEMORY_MIB << 20
    steps = ", ".join(f"{s['name']} rc={s['exit_code']} {s['seconds']}s" for s in meta["steps"])
    print(
        f"\n[e2e capture] initramfs {info['bytes'] / 2**20:.1f} MiB built in "
        f"{info['build_seconds']} s; vmcore {vmcore.stat().st_size / 2**20:.1f} MiB vs host RAM "
        f"{ram / 2**20:.0f} MiB (ratio {vmcore.stat().st_size / ram:.3f}); {steps}; "
        f"xen console: {meta['xen_console']['how']}"
    )
