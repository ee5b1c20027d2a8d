"""The dump target as dom0 sees it: which filesystem, which drivers, is it usable now.

* ``local_filesystem`` -- for a local target, the device and directory the crash
  kernel must mount (the filesystem holding ``dump.path`` on dom0, or ``dump.device``);
* ``target_modules`` -- the kernel modules the crash kernel needs to reach the target:
  the filesystem's, the block device's driver chain (from sysfs), or the network
  drivers and NFS;
* ``preflight`` -- is the target reachable and writable, with room for a dump.

Errors are ``DumpTargetError`` naming the target and what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from xenkdump import transient
from xenkdump.capture.agentconf import LocalFilesystem, relative_to_mount
from xenkdump.errors import OperationError
from xenkdump.settings.model import DumpSettings, DumpTarget
from xenkdump.units import MIB, size_text

SYS = Path("/sys")
# Filesystems that do not survive a crash or that the crash kernel cannot mount alone.
VOLATILE_FS = frozenset(
    {"tmpfs", "ramfs", "overlay", "9p", "squashfs", "proc", "sysfs", "devtmpfs", "fuse"}
)
NFS_MODULES = ("sunrpc", "nfs", "nfsv3", "nfsv4")
# Forces where the SSH preflight runs: "direct" or "systemd" (transient.choose).
SSH_LAUNCH_ENV = "XENKDUMP_SSH_LAUNCH"
SSH_UNIT_PREFIX = "xenkdump-preflight-"
SSH_TIMEOUT = 30.0


class DumpTargetError(OperationError):
    """The dump target cannot be used (missing, read-only, full, unreachable...)."""


@dataclass(frozen=True)
class Mount:
    source: str
    uuid: str
    fstype: str
    target: str


def _run(argv: list[str], what: str, timeout: float = 30) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise DumpTargetError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise DumpTargetError(f"{what}: {argv[0]} did not answer in {timeout:.0f} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise DumpTargetError(f"{what}: {last}")
    return proc.stdout


def mount_of(path: Path) -> Mount:
    """The mounted filesystem that holds ``path`` (util-linux findmnt)."""
    out = _run(
        ["findmnt", "-J", "-n", "-o", "SOURCE,UUID,FSTYPE,TARGET", "--target", str(path)],
        f"dump.path {path}",
    )
    fs = json.loads(out)["filesystems"][0]
    return Mount(
        source=fs.get("source") or "",
        uuid=fs.get("uuid") or "",
        fstype=fs.get("fstype") or "",
        target=fs.get("target") or "/",
    )


def local_filesystem(dump: DumpSettings) -> LocalFilesystem:
    """Device, type and directory of a local target, as the crash kernel mounts it."""
    if dump.device:
        return LocalFilesystem(dump.device, dump.fstype, str(dump.path))
    path = dump.path
    if not path.is_dir():
        raise DumpTargetError(f"dump target {path}: expected an existing directory, found none")
    m = mount_of(path)
    if m.fstype in VOLATILE_FS or not m.source.startswith("/dev/"):
        raise DumpTargetError(
            f"dump target {path}: on {m.fstype or 'an unknown filesystem'} ({m.source}), which "
            "the crash kernel cannot mount or which does not survive a reboot; set dump.device "
            "or choose a path on a disk"
        )
    device = f"UUID={m.uuid}" if m.uuid else m.source
    return LocalFilesystem(device, m.fstype, relative_to_mount(str(path), m.target))


def device_node(device: str) -> Path:
    """/dev node of ``device`` (UUID=, LABEL= or /dev/...) on dom0 (util-linux findfs)."""
    if device.startswith("/dev/"):
        return Path(device)
    return Path(_run(["findfs", device], f"dump.device {device}").strip())


def block_driver_modules(node: Path, sys: Path = SYS) -> list[str]:
    """Modules of the drivers between ``node`` and the bus (e.g. sd_mod, ahci; virtio_blk)."""
    entry = sys / "class" / "block" / node.name
    if not entry.exists():
        return []
    out: list[str] = []
    here = entry.resolve()
    while here != here.parent and here != sys.resolve():
        module = here / "driver" / "module"
        if module.exists():
            name = module.resolve().name
            if name not in out:
                out.append(name)
        here = here.parent
    return out


def network_driver_modules(sys: Path = SYS) -> list[str]:
    """Modules of every physical network interface's driver (dom0 drives the hardware)."""
    out: list[str] = []
    net = sys / "class" / "net"
    for iface in sorted(net.iterdir()) if net.is_dir() else []:
        module = iface / "device" / "driver" / "module"
        if module.exists():
            name = module.resolve().name
            if name not in out:
                out.append(name)
    return out


def target_modules(dump: DumpSettings, local: LocalFilesystem | None, sys: Path = SYS) -> list[str]:
    """The modules the crash kernel needs to reach the target (builtin ones are absent),
    then ``dump.modules``."""
    if dump.target is DumpTarget.LOCAL:
        assert local is not None
        try:
            node = device_node(local.device)
        except DumpTargetError:
            node = None  # not attached now: the crash kernel may still find it by UUID/LABEL
        mods = [local.fstype, *(block_driver_modules(node, sys) if node is not None else [])]
    else:
        mods = network_driver_modules(sys)
        if dump.target is DumpTarget.NFS:
            mods += list(NFS_MODULES)
    return list(dict.fromkeys([*mods, *dump.modules]))


def estimate_dump_bytes(ram_bytes: int, level: int) -> int:
    """A rough size of a filtered, compressed dump: what free space must at least allow.

    dom0's used pages with -d 31 compress to a few percent of the host's RAM; Xen and a
    little margin: 1/32 of RAM plus 64 MiB.  Level 0 or 1 keeps much more (1/4).
    """
    share = 32 if level >= 16 else 4
    return ram_bytes // share + 64 * MIB


def ssh_argv(launch: transient.Launch, argv: list[str]) -> list[str]:
    """The SSH preflight's command line: as it is, or in a transient unit with network.

    xenkdumpd's own unit has no network (PrivateNetwork=, IPAddressDeny=, AF_UNIX
    only): under systemd, ssh runs in ``xenkdump-preflight-*.service``, which may
    reach the network and read the key, and nothing else (docs/packaging.md).
    """
    if isinstance(launch, transient.Direct):
        return argv
    properties = [
        "Description=xenkdump dump target check (ssh)",
        f"RuntimeMaxSec={SSH_TIMEOUT:.0f}",
        *transient.SANDBOX,
        "ProtectHome=read-only",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
    ]
    unit = transient.unit_name(SSH_UNIT_PREFIX)
    return transient.run_argv(launch, argv, unit=unit, properties=properties, pipe=True)


def preflight(dump: DumpSettings, need_bytes: int, launch: transient.Launch | None = None) -> str:
    """Check the target from dom0; DumpTargetError naming it, else a one-line summary.

    ``launch``: where the SSH check runs (None: ``transient.detect``, ssh_argv)."""
    name = dump.describe_target()
    if dump.target is DumpTarget.LOCAL and not dump.device:
        path = dump.path
        if not path.is_dir():
            raise DumpTargetError(f"dump target {name}: missing (expected a directory)")
        if not os.access(path, os.W_OK):
            raise DumpTargetError(f"dump target {name}: read-only or not writable")
        free = shutil.disk_usage(path).free
        if free < need_bytes:
            raise DumpTargetError(
                f"dump target {name}: {size_text(free)} free, a dump needs about "
                f"{size_text(need_bytes)}"
            )
        return (
            f"{name}: writable, {size_text(free)} free (a dump needs about {size_text(need_bytes)})"
        )
    if dump.target is DumpTarget.SSH:
        for f, what in (
            (dump.ssh_key, "dump.ssh_key"),
            (dump.ssh_known_hosts, "dump.ssh_known_hosts"),
        ):
            if not f.is_file():
                raise DumpTargetError(f"dump target {name}: {what} {f} missing")
        quoted = "'" + str(dump.path).replace("'", "'\\''") + "'"
        ssh = shutil.which("ssh") or "ssh"  # systemd-run wants a path; _run says if missing
        remote = f"mkdir -p {quoted} && test -w {quoted} && df -Pk {quoted} | tail -n 1"
        where = transient.detect(SSH_LAUNCH_ENV) if launch is None else launch
        out = _run(
            ssh_argv(where, [ssh, *ssh_options(dump), remote]),
            f"dump target {name}",
            SSH_TIMEOUT,
        )
        fields = out.split()
        free = int(fields[3]) * 1024 if len(fields) >= 4 and fields[3].isdigit() else 0
        if free < need_bytes:
            raise DumpTargetError(
                f"dump target {name}: {size_text(free)} free, a dump needs about "
                f"{size_text(need_bytes)}"
            )
        return f"{name}: reachable, writable, {size_text(free)} free"
    if dump.target is DumpTarget.NFS:
        return f"{name}: configured (an NFS export is checked by the crash side only)"
    return f"{name}: configured (the device is mounted and checked by the crash side only)"


def ssh_options(dump: DumpSettings) -> list[str]:
    """ssh's options for the target: the key, the pinned host key, batch mode."""
    return [
        "-p",
        str(dump.ssh_port),
        "-i",
        str(dump.ssh_key),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={dump.ssh_known_hosts}",
        "-o",
        "ConnectTimeout=10",
        dump.ssh or "",
    ]
