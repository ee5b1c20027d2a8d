"""Crash initrds for the self-test scenarios: one good, and one per way to break.

The good image is what xenkdump's crash initramfs does in self-test mode: busybox,
the virtio block driver for the scratch disk, and the product's hook
(xenkdump/selftest/crashcheck.sh) run from /init.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from e2e_harness import Assets

from xenkdump.selftest import HOOK
from xenkdump.selftest.cpio import Initramfs

VIRTIO_BLK = (
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
)

GOOD_INIT = """#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules-order); do insmod "/lib/xk/$m"; done
. /usr/lib/xenkdump/crashcheck.sh
echo "not a self-test: a real capture would run here"
poweroff -f
"""

EXITING_INIT = "#!/bin/sh\nexit 0\n"


def _base(assets: Assets, init: str) -> Initramfs:
    fs = Initramfs()
    fs.add_host_file("bin/busybox", assets.busybox, 0o755)
    fs.add_symlink("bin/sh", "busybox")
    fs.add_file("init", init.encode(), 0o755)
    for d in ("proc", "sys", "dev", "tmp"):
        fs.add_dir(d)
    return fs


def good_initrd(assets: Assets, dest: Path) -> Path:
    fs = _base(assets, GOOD_INIT)
    names = []
    for rel in VIRTIO_BLK:
        mod = assets.modules / rel
        fs.add_host_file(f"lib/xk/{mod.name}", mod, 0o644)
        names.append(mod.name)
    fs.add_file("etc/modules-order", ("\n".join(names) + "\n").encode())
    fs.add_file("usr/lib/xenkdump/crashcheck.sh", HOOK.read_bytes(), 0o755)
    return fs.write_gz(dest)


def exiting_initrd(assets: Assets, dest: Path) -> Path:
    """/init exits at once: the kernel panics ("Attempted to kill init")."""
    return _base(assets, EXITING_INIT).write_gz(dest)


def oversized_initrd(assets: Assets, dest: Path, unpacked_mib: int) -> Path:
    """The good image plus a file that unpacks to ``unpacked_mib`` MiB (zeros compress
    to almost nothing, so only the crash kernel's memory sees the size)."""
    good = good_initrd(assets, dest.with_suffix(".good"))
    big = Initramfs()
    big.add_file("var/ballast", bytes(unpacked_mib << 20))
    dest.write_bytes(good.read_bytes() + gzip.compress(big.cpio(), compresslevel=1, mtime=0))
    good.unlink()
    return dest
