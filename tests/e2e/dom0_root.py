"""A real Debian dom0 from the package's install root: that release's Xen and kernel,
the root on a virtio disk, systemd as init.

The root comes from package_lab.install_root (a fresh mmdebstrap root where apt
installed the package, plus ``xen-system-amd64`` and ``linux-image-amd64`` of the same
release).  This module adds what the test needs and an administrator would do: the
shipped /etc/xenkdump/xenkdump.yaml left as it is (``initrd: xenkdump``: xenkdumpd
builds its own crash initramfs in dom0 with initramfs-tools) but for the dump target,
set by a drop-in to a disk of its own; an unprivileged user; and a oneshot unit,
``xk-e2e.service``, that waits for xenkdumpd's first load, reports what systemd,
busctl and xenkdumpctl show, and panics dom0.  The crash image xenkdumpd armed then
boots, and its capture agent saves the dump to that disk and reboots (QEMU exits).

The root becomes an ext4 image (``mke2fs -d``, no loop device, no mount); QEMU
boots Xen's ELF (decompressed from the root's /boot/xen-*.gz) with the root's
vmlinuz and initrd.img as multiboot modules, the root disk in snapshot mode and the
dump disk (capture_lab.make_disk) writable.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from capture_lab import AGENT_END, LABEL
from e2e_harness import (
    CRASHKERNEL,
    DOM0_MIB,
    HERE,
    MEMORY_MIB,
    REPO,
    Boot,
    HarnessError,
    Job,
    _one_qemu_at_a_time,
    _run_qemu,
)
from package_lab import TEST_ONLY_PACKAGES
from scenarios import kmsg_token

from xenkdump.selftest import xenbin
from xenkdump.selftest.qemu import Disk, XenMachine, xen_argv, xen_cmdline

XK_USER = "xkuser"
XK_UID = 1500
LAB_DIR = "/var/lib/xk-e2e"  # in the root: the scenario and the contract suite
SHIPPED_CONFIG = "etc/xenkdump/xenkdump.yaml"  # in the root, as the package installed it
DUMP_DROPIN = "etc/xenkdump/xenkdump.yaml.d/50-dump-disk.yaml"
DUMP_DIR = "/dumps"  # on the dump disk
# What the administrator changes: the dump goes to a disk of its own, found by its label.
DUMP_CONFIG = f"""\
# tests/e2e/dom0_root.py: dumps go to the ext4 filesystem labelled {LABEL}
dump:
  device: LABEL={LABEL}
  path: {DUMP_DIR}
"""

UNIT = f"""[Unit]
Description=xenkdump e2e scenario (tests/e2e/dom0_root.py)
After=xenkdumpd.service dbus.service

[Service]
Type=oneshot
ExecStart=/bin/sh {LAB_DIR}/scenario.sh
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""


CONTRACT_UNIT = f"""[Unit]
Description=xenkdump hypervisor-port contract suite (tests/e2e/dom0_root.py)
Before=xenkdumpd.service

[Service]
Type=oneshot
ExecStart=/bin/sh {LAB_DIR}/contract.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=1200

[Install]
WantedBy=multi-user.target
"""


def prepare(root: Path, token: bytes) -> None:
    """Add the test's dump target, user and scenario unit to ``root``."""
    shipped = REPO / "config" / "xenkdump.yaml"
    if (root / SHIPPED_CONFIG).read_bytes() != shipped.read_bytes():
        raise HarnessError(f"{root}/{SHIPPED_CONFIG} is not the shipped {shipped}")
    dropin = root / DUMP_DROPIN
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(DUMP_CONFIG)
    lab = root / LAB_DIR.lstrip("/")
    lab.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "dom0-systemd-scenario.sh", lab / "scenario.sh")
    (lab / "scenario.env").write_text(
        f"XK_USER={XK_USER}\nXK_KMSG={kmsg_token(token)}\n"
        f"XK_TEST_ONLY='{' '.join(TEST_ONLY_PACKAGES)}'\n"
    )
    shutil.copy(HERE / "dom0-contract.sh", lab / "contract.sh")
    # The contract suite with the helpers its conftest files import (it tests the
    # installed package: no checkout code on sys.path but tests/).
    shutil.rmtree(lab / "tests", ignore_errors=True)
    shutil.copytree(
        REPO / "tests", lab / "tests", ignore=shutil.ignore_patterns("__pycache__", "work")
    )
    shutil.copy(REPO / "pyproject.toml", lab / "pyproject.toml")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for name, text in (("xk-e2e.service", UNIT), ("xk-e2e-contract.service", CONTRACT_UNIT)):
        (root / "etc/systemd/system" / name).write_text(text)
        link = wants / name
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{name}")
    # An unprivileged user (no passwd tools in a minimal root: the files directly).
    passwd = root / "etc/passwd"
    if f"\n{XK_USER}:" not in "\n" + passwd.read_text():
        with passwd.open("a") as f:
            f.write(f"{XK_USER}:x:{XK_UID}:{XK_UID}::/nonexistent:/bin/sh\n")
        with (root / "etc/group").open("a") as f:
            f.write(f"{XK_USER}:x:{XK_UID}:\n")
        shadow = root / "etc/shadow"
        if shadow.exists():
            with shadow.open("a") as f:
                f.write(f"{XK_USER}:!:19000::::::\n")
    # The console is the only way out: no login prompt to wait for on it.
    for unit in ("serial-getty@hvc0.service", "getty@tty1.service"):
        mask = root / "etc/systemd/system" / unit
        if not mask.is_symlink():
            mask.symlink_to("/dev/null")


def _one(root: Path, pattern: str) -> Path:
    found = sorted((root / "boot").glob(pattern))
    if len(found) != 1:
        raise HarnessError(f"{root}/boot: expected one {pattern}, found {found}")
    return found[0]


def disk_image(root: Path, dest: Path) -> Path:
    """The root as an ext4 image (mke2fs -d copies the tree; owners and modes kept)."""
    used = int(
        subprocess.run(
            ["du", "-sxm", str(root)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    size = f"{used + 1024}M"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "xkroot", "-d", str(root), str(dest), size],
        check=True,
        capture_output=True,
    )
    return dest


def xen_elf(root: Path, dest: Path) -> tuple[Path, str]:
    """The root's own Xen (QEMU's multiboot loader takes the ELF, not the gzip)."""
    gz = _one(root, "xen-4.*-amd64.gz")
    return xenbin.unpack(gz, dest), gz.name.removeprefix("xen-").removesuffix("-amd64.gz")


# The package's dom0 runs a self-test's staging VM (the crash area's 256 MiB guest,
# QEMU, and the 256 MiB xenkdump keeps for dom0): more than the lab's usual dom0.
SELFTEST_DOM0_MIB = 1024
SELFTEST_MEMORY_MIB = 1536


def boot(
    root: Path,
    job: Job,
    qemu: Path,
    dump_disk: Path,
    *,
    timeout: float = 1800.0,
    memory_mib: int = MEMORY_MIB,
    dom0_mib: int = DOM0_MIB,
) -> tuple[Boot, str]:
    """Boot the root as dom0 under its own Xen, ``dump_disk`` as its second disk; stop
    when the capture agent ends (its final or failure action)."""
    kernel = _one(root, "vmlinuz-*")
    initrd = _one(root, "initrd.img-*")
    elf, xen_version = xen_elf(root, job.dir / "xen.elf")
    disk = disk_image(root, job.dir / "root.ext4")
    dom0_cmdline = "root=/dev/vda rw console=hvc0 earlyprintk=xen systemd.log_color=0"
    serial = job.dir / "serial.log"
    serial.touch()
    machine = XenMachine(
        xen=elf,
        xen_cmdline=xen_cmdline(dom0_mib=dom0_mib, crashkernel=CRASHKERNEL),
        dom0_kernel=kernel,
        dom0_cmdline=dom0_cmdline,
        dom0_initrd=initrd,
        memory_mib=memory_mib,
        serial=serial,
        disks=(Disk(disk, snapshot=True), Disk(dump_disk)),
    )
    cmd = xen_argv(str(qemu), machine)
    (job.dir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
    with _one_qemu_at_a_time():
        result = _run_qemu(
            cmd, job, serial, timeout=timeout, end_markers=AGENT_END, grace=60.0, stall=300.0
        )
    return result, xen_version
