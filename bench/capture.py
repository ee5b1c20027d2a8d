"""The capture side's figures: crash initramfs build time and size against the crash area.

    .venv/bin/python bench/capture.py [--rounds 3]

The initramfs is built by ``xenkdumpctl initrd --force`` with the real mkinitramfs for
Debian's test kernel, "installed" in a private mount namespace (tests/testkernel.py;
needs root).  The crash-to-dump time and the dump's size against the host's RAM on
real Xen are printed by the e2e scenario tests/e2e/test_capture.py.  Nothing is
asserted.
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
