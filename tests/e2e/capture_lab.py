"""A dump saved by xenkdump's capture agent, read back on the test machine: the dump
disk (an ext4 image labelled ``xkdump``, read with debugfs, never mounted), the checks
every saved dump must pass and the figures the capture tests print and keep
(bench/capture.py prints them).  Used by test_capture.py and test_package.py."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e_harness import CRASHKERNEL, MEMORY_MIB, REPO

LABEL = "xkdump"
BENCH_OUT = REPO / "bench" / "out" / "e2e_capture.json"  # untracked; bench/capture.py prints it
AGENT = "xenkdump-capture:"
# The agent's last line before the machine reboots or powers off (end markers of a boot).
AGENT_END = (f"{AGENT} final_action", f"{AGENT} failure_action")
DUMP_FILES = ("vmcore", "dmesg.txt", "xen-console.txt", "metadata.json")


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


@dataclass(frozen=True)
class SavedDump:
    name: str  # <host>-<time>
    meta: dict[str, Any]  # metadata.json
    dmesg: Path  # copies on the test machine
    vmcore: Path


def read_dump(disk: Path, directory: str, work: Path) -> SavedDump:
    """The one dump in ``directory`` of ``disk``, with every file the agent writes and no
    ``.incoming-`` left; metadata.json, dmesg.txt and the vmcore copied into ``work``."""
    listing = debugfs(disk, f"ls -l {directory}")
    names = re.findall(r"\s(\S+-\d{8}T\d{6}Z)\s*$", listing, re.M)
    assert len(names) == 1, f"{disk}:{directory}: expected one <host>-<time>/:\n{listing}"
    where = f"{directory.rstrip('/')}/{names[0]}"
    files = debugfs(disk, f"ls -l {where}")
    for name in DUMP_FILES:
        assert name in files, files
    assert "incomplete" not in files and ".incoming-" not in listing, listing + files
    meta = json.loads(fetch(disk, f"{where}/metadata.json", work / "metadata.json").read_text())
    dmesg = fetch(disk, f"{where}/dmesg.txt", work / "dmesg.txt")
    vmcore = fetch(disk, f"{where}/vmcore", work / "vmcore")
    return SavedDump(names[0], meta, dmesg, vmcore)


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


def check_dump(meta: dict[str, Any], dmesg: Path, vmcore: Path, token: str, work: Path) -> None:
    """A complete dump: dom0's log with its last line, a vmcore that opens again."""
    assert meta["result"] == "complete" and meta["vmcore"]["saved"] is True, meta
    assert [s["exit_code"] for s in meta["steps"]][:1] == [0]  # dmesg
    assert token in dmesg.read_text(errors="replace")
    assert meta["files"]["vmcore"]["bytes"] == vmcore.stat().st_size
    opened = reopen_dmesg(vmcore, work)
    assert token in opened.read_text(errors="replace")


def figures(
    info: dict[str, Any], meta: dict[str, Any], vmcore: Path, host_ram_mib: int = MEMORY_MIB
) -> dict[str, Any]:
    """One capture's figures: the image, the dump against the host's RAM, the time from
    the crash to the saved dump, the crash kernel's peak memory against the crash area.
    ``info``: the crash initramfs's record (``xenkdumpctl initrd --json`` or the .json
    beside the image)."""
    mem = meta.get("memory", {})
    return {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "initramfs_bytes": info["bytes"],
        "initramfs_unpacked_bytes": info["unpacked_bytes"],
        "initramfs_build_seconds": info["build_seconds"],
        "image_required_bytes": info.get("image_required_bytes"),
        "vmcore_bytes": vmcore.stat().st_size,
        "host_ram_bytes": host_ram_mib << 20,
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
