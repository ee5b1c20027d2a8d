"""The capture side's figures: crash initramfs build time and size against the crash area,
and the crash side measured on real Xen.

    .venv/bin/python bench/capture.py [--rounds 3]

The initramfs is built by ``xenkdumpctl initrd --force`` with the real mkinitramfs for
Debian's test kernel, "installed" in a private mount namespace (tests/testkernel.py;
needs root).  The crash side -- the time from the crash to the saved dump, the dump's
size against the host's RAM, the crash kernel's peak memory against the crash area --
can only be measured by crashing real Xen: tests/e2e/test_capture.py does (a dom0
panic to a local disk, a Xen crash over SSH) and keeps its figures in
bench/out/e2e_capture.json, which this prints with the time they were measured.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import test_kernel, testkernel

with_kernel = testkernel.with_kernel
LAB = Path(__file__).resolve().parent / "out" / "e2e_capture.json"
MIB = 1 << 20


def print_lab() -> None:
    """The crash side's figures from the last e2e run (tests/e2e/test_capture.py)."""
    try:
        doc = json.loads(LAB.read_text())
    except (OSError, ValueError):
        print(f"crash side on real Xen: no {LAB} yet (make e2e writes it)")
        return
    for scenario, f in doc.items():
        peak = f.get("crash_kernel_peak_used_kib")
        ram = f.get("crash_kernel_ram_kib")
        area = f["crash_area_bytes"]
        print(f"crash side on real Xen, {scenario} (tests/e2e, {f['measured_at']}):")
        print(
            f"  crash to dump {f['crash_to_dump_seconds']} s (QEMU TCG); vmcore "
            f"{f['vmcore_bytes'] / MIB:.1f} MiB for {f['host_ram_bytes'] / MIB:.0f} MiB of host "
            f"RAM (ratio {f['vmcore_bytes'] / f['host_ram_bytes']:.3f}; goal: far below 1)"
        )
        if isinstance(peak, int) and isinstance(ram, int):
            print(
                f"  crash kernel peak memory {peak / 1024:.0f} MiB (initramfs included) of the "
                f"{area / MIB:.0f} MiB crash area (ratio {peak * 1024 / area:.2f}; the kernel "
                f"saw {ram / 1024:.0f} MiB, lowest MemAvailable "
                f"{f['crash_kernel_min_available_kib'] / 1024:.0f} MiB; goal: fits with headroom)"
            )
        else:
            print("  crash kernel peak memory: not recorded by that run")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    vmlinuz = test_kernel()
    with tempfile.TemporaryDirectory(prefix="xenkdump-bench-capture.") as tmp:
        work = Path(tmp)
        config = work / "xenkdump.yaml"
        config.write_text(f"kernel: {vmlinuz}\ndump:\n  device: /dev/vda1\n  path: /crash\n")
        cmd = [
            *with_kernel(vmlinuz, work),
            sys.executable,
            "-m",
            "xenkdump.cli.ctl",
            "--hypervisor",
            f"sim:{work / 'host.yaml'}",
            "initrd",
            "--config",
            str(config),
            "--output",
            str(work / "crash.img"),
            "--force",
            "--json",
        ]
        walls, docs = [], []
        for _ in range(args.rounds):
            t0 = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            walls.append(time.monotonic() - t0)
            if proc.returncode != 0:
                print(f"capture: xenkdumpctl initrd failed: {proc.stderr.strip()}")
                return 1
            docs.append(json.loads(proc.stdout))
        doc = docs[-1]
        mib = 1 << 20
        print(
            f"crash initramfs build (mkinitramfs, {args.rounds} rounds): median "
            f"{statistics.median(d['build_seconds'] for d in docs):.1f} s "
            f"(whole command {statistics.median(walls):.1f} s)"
        )
        print(
            f"  size {doc['bytes'] / mib:.1f} MiB, unpacked {doc['unpacked_bytes'] / mib:.1f} "
            f"MiB; the crash image needs {doc['image_required_bytes'] / mib:.0f} MiB of the "
            f"{doc['half_bytes'] / mib:.0f} MiB half of a {doc['crash_area_bytes'] / mib:.0f} "
            f"MiB crash area (ratio {doc['image_required_bytes'] / doc['half_bytes']:.2f}; "
            "goal: fits with headroom)"
        )
    print_lab()
    return 0


if __name__ == "__main__":
    sys.exit(main())
