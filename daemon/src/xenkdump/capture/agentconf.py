"""The capture agent's configuration: ``/etc/xenkdump/capture.conf`` in the crash initramfs.

Pure: the ``dump:`` settings and the facts of this host in, ``KEY='value'`` lines out
(POSIX sh single quoting, so the agent can source it).  The keys are the agent's
(``initramfs-tools/xenkdump-capture.sh``); tests also set its hooks (``XK_VMCORE``,
``XK_MAKEDUMPFILE``, ``XK_SSH``, ``XK_DF``, ``XK_ACTION_CMD``, ``XK_UPTIME``,
``XK_SCRATCH``, ``XK_REARRANGE_SECONDS``) through the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from xenkdump.hv.port import AddressRange
from xenkdump.settings.model import DumpSettings, DumpTarget

# Where the hook puts the SSH key and the pinned host keys in the initramfs.
INITRAMFS_SSH_KEY = "/etc/xenkdump/id_capture"
INITRAMFS_KNOWN_HOSTS = "/etc/xenkdump/known_hosts"
_KEY = re.compile(r"XK_[A-Z0-9_]+")


@dataclass(frozen=True)
class LocalFilesystem:
    """Where a local target lives as the crash kernel sees it: a device and a directory."""

    device: str  # UUID=..., LABEL=... or /dev/...
    fstype: str
    path: str  # the directory relative to that filesystem's root, absolute form


@dataclass(frozen=True)
class CaptureFacts:
    """What the agent records about the host it was built for."""

    host: str
    dom0_kernel: str  # the crash (= dom0) kernel's release
    xen_version: str
    xen_cmdline: str
    xen_range: AddressRange  # Xen's own image (the agent's fallback scan for console text)
    kernel_sha256: str = ""
    # Where Xen's console ring is found (capture/xensyms.py: XK_XEN_* settings), or why not.
    xen_console: Mapping[str, str] = field(default_factory=dict)
    xen_console_missing: str = ""


def quote(value: str) -> str:
    """``value`` as one POSIX sh word in single quotes."""
    return "'" + value.replace("'", "'\\''") + "'"


def render(values: Mapping[str, str]) -> str:
    """``KEY='value'`` lines; newlines in values become spaces (the agent reads one line)."""
    lines = ["# xenkdump capture agent configuration (written by xenkdump; do not edit)"]
    for key, value in values.items():
        assert _KEY.fullmatch(key), key
        lines.append(f"{key}={quote(value.replace(chr(10), ' '))}")
    return "\n".join(lines) + "\n"


def agent_values(
    dump: DumpSettings, facts: CaptureFacts, local: LocalFilesystem | None
) -> dict[str, str]:
    """The agent's settings for ``dump`` on this host.

    ``local``: for a local target, the filesystem holding ``dump.path`` (target.py);
    None for NFS and SSH.
    """
    values = {
        "XK_TARGET_KIND": str(dump.target),
        "XK_PATH": str(dump.path),
        "XK_DEVICE": "",
        "XK_FSTYPE": dump.fstype,
        "XK_DUMP_LEVEL": str(dump.level),
        "XK_FORMAT": dump.format,
        "XK_COMPRESS": dump.compress,
        "XK_KEEP": str(dump.keep),
        "XK_MAX_TOTAL": str(dump.max_total),
        "XK_FAILURE_ACTION": str(dump.failure_action),
        "XK_FINAL_ACTION": str(dump.final_action),
        "XK_HOST": facts.host,
        "XK_DOM0_KERNEL": facts.dom0_kernel,
        "XK_XEN_VERSION": facts.xen_version,
        "XK_XEN_CMDLINE": facts.xen_cmdline,
        "XK_XEN_RANGE": (
            f"{facts.xen_range.start:#x}+{facts.xen_range.size:#x}" if facts.xen_range.size else ""
        ),
        "XK_KERNEL_SHA256": facts.kernel_sha256,
        "XK_XEN_SYMS_MISSING": facts.xen_console_missing,
        **facts.xen_console,
    }
    if dump.target is DumpTarget.LOCAL:
        assert local is not None
        values.update(XK_DEVICE=local.device, XK_FSTYPE=local.fstype, XK_PATH=local.path)
    elif dump.target is DumpTarget.NFS:
        values.update(XK_NFS=dump.nfs or "", XK_NFS_OPTIONS=dump.nfs_options)
    else:
        values.update(
            XK_SSH_DEST=dump.ssh or "",
            XK_SSH_PORT=str(dump.ssh_port),
            XK_SSH_KEY=INITRAMFS_SSH_KEY,
            XK_SSH_KNOWN_HOSTS=INITRAMFS_KNOWN_HOSTS,
        )
    return values


def relative_to_mount(path: str, mountpoint: str) -> str:
    """``path`` inside the filesystem mounted at ``mountpoint``, as an absolute path."""
    rel = PurePosixPath(path).relative_to(PurePosixPath(mountpoint))
    return str(PurePosixPath("/") / rel)
