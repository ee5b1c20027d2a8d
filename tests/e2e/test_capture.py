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
import time
from pathlib import Path
from typing import Any

import pytest
import scenarios as sc
import sshd_lab
from e2e_harness import (
    CRASHKERNEL,
    DOM0_END,
    MEMORY_MIB,
    REPO,
    Assets,
    Job,
    boot,
    unpacked_package,
)

from testkernel import with_kernel

LABEL = "xkdump"
BENCH_OUT = REPO / "bench" / "out" / "e2e_capture.json"  # untracked; bench/capture.py prints it
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
        end_markers=(f"{AGENT} final_action", f"{AGENT} failure_action", DOM0_END),
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

    names = re.findall(r"\s(\S+-\d{8}T\d{6}Z)\s*$", debugfs(disk, "ls -l /"), re.M)
    assert len(names) == 1, debugfs(disk, "ls -l /")
    dump = names[0]
    files = debugfs(disk, f"ls -l /{dump}")
    for name in ("vmcore", "dmesg.txt", "xen-console.txt", "metadata.json"):
        assert name in files, files
    assert "incomplete" not in files
    meta = json.loads(fetch(disk, f"/{dump}/metadata.json", job.dir / "metadata.json").read_text())
    fetch(disk, f"/{dump}/dmesg.txt", job.dir / "dmesg.txt")
    vmcore = fetch(disk, f"/{dump}/vmcore", job.dir / "vmcore")
    check_dump(meta, job.dir / "dmesg.txt", vmcore, token, job.dir)
    record("local disk, dom0 panic", figures(info, meta, vmcore))


def check_dump(meta: dict[str, Any], dmesg: Path, vmcore: Path, token: str, work: Path) -> None:
    """A complete dump: dom0's log with its last line, a vmcore that opens again."""
    assert meta["result"] == "complete" and meta["vmcore"]["saved"] is True, meta
    assert [s["exit_code"] for s in meta["steps"]][:1] == [0]  # dmesg
    assert token in dmesg.read_text(errors="replace")
    assert meta["files"]["vmcore"]["bytes"] == vmcore.stat().st_size
    opened = reopen_dmesg(vmcore, work)
    assert token in opened.read_text(errors="replace")


def figures(info: dict[str, Any], meta: dict[str, Any], vmcore: Path) -> dict[str, Any]:
    """One capture's figures: the image, the dump against the host's RAM, the time from
    the crash to the saved dump, the crash kernel's peak memory against the crash area."""
    mem = meta.get("memory", {})
    return {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "initramfs_bytes": info["bytes"],
        "initramfs_unpacked_bytes": info["unpacked_bytes"],
        "initramfs_build_seconds": info["build_seconds"],
        "image_required_bytes": info["image_required_bytes"],
        "vmcore_bytes": vmcore.stat().st_size,
        "host_ram_bytes": MEMORY_MIB << 20,
        "crash_area_bytes": int(CRASHKERNEL.removesuffix("M")) << 20,
        # the crash kernel's uptime when metadata.json was written: Xen's jump to the
        # crash image takes milliseconds, so this is the crash-to-dump time
        "crash_to_dump_seconds": meta.get("uptime", {}).get("metadata"),
        "crash_kernel_ram_kib": mem.get("total_kib"),
        "crash_kernel_peak_used_kib": mem.get("peak_used_kib"),
        "crash_kernel_min_available_kib": mem.get("min_available_kib"),
        "steps": {
            s["name"]: {"exit_code": s["exit_code"], "seconds": s["seconds"]} for s in meta["steps"]
        },
        "xen_console": meta["xen_console"]["how"],
    }


def record(scenario: str, fig: dict[str, Any]) -> None:
    """Print the figures and keep them in bench/out/e2e_capture.json (bench/capture.py)."""
    try:
        doc = json.loads(BENCH_OUT.read_text())
    except (OSError, ValueError):
        doc = {}
    doc[scenario] = fig
    BENCH_OUT.parent.mkdir(parents=True, exist_ok=True)
    BENCH_OUT.write_text(json.dumps(doc, indent=2) + "\n")
    mib = 1 << 20
    peak = fig["crash_kernel_peak_used_kib"]
    print(
        f"\n[e2e capture, {scenario}] initramfs {fig['initramfs_bytes'] / mib:.1f} MiB built in "
        f"{fig['initramfs_build_seconds']} s; vmcore {fig['vmcore_bytes'] / mib:.1f} MiB vs "
        f"host RAM {fig['host_ram_bytes'] / mib:.0f} MiB "
        f"(ratio {fig['vmcore_bytes'] / fig['host_ram_bytes']:.3f}); crash to dump "
        f"{fig['crash_to_dump_seconds']} s; crash kernel peak "
        + (f"{peak / 1024:.0f} MiB" if isinstance(peak, int) else "not recorded")
        + f" of a {fig['crash_area_bytes'] / mib:.0f} MiB crash area; steps {fig['steps']}; "
        f"xen console: {fig['xen_console']}"
    )


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
    assert names == ["dmesg.txt", "metadata.json", "vmcore", "xen-console.txt"], names
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
