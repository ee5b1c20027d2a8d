"""The daemon's settings as typed, frozen values: the only configuration type the core sees.

Produced by ``xenkdump.settings.load`` from ``/etc/xenkdump/xenkdump.yaml``; defaults here
are what an empty (or absent) file means.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from xenkdump.paths import CONFIG_FILE
from xenkdump.state.record import DEFAULT_STATE_DIR

DEFAULT_CONFIG_PATH = Path(CONFIG_FILE)
DEFAULT_BOOT_DIR = Path("/boot")
DEFAULT_TOPOLOGY_CHECK_INTERVAL = 60.0
DEFAULT_RELOAD_DEBOUNCE = 0.5


class KernelPolicy(enum.StrEnum):
    """Which file is the crash kernel."""

    PATH = "path"  # the file named in the configuration
    RUNNING = "running"  # <boot_dir>/vmlinuz-$(uname -r): the running dom0 kernel's image
    LATEST = "latest"  # the newest <boot_dir>/vmlinuz-* by version order


class InitrdPolicy(enum.StrEnum):
    PATH = "path"  # the file named in the configuration
    AUTO = "auto"  # <boot_dir>/initrd.img-<version> of the chosen kernel, if present
    XENKDUMP = "xenkdump"  # xenkdump's own crash initramfs (capture/initramfs.py)
    NONE = "none"  # no initrd


@dataclass(frozen=True)
class CmdlineSettings:
    """The crash kernel's command line: ``base`` (None: dom0's own), then remove, then append."""

    base: str | None = None
    append: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


class DumpTarget(enum.StrEnum):
    """Where the crash side saves dumps."""

    LOCAL = "local"  # a filesystem: the one holding ``path`` on dom0, or ``device``
    NFS = "nfs"
    SSH = "ssh"


class CrashAction(enum.StrEnum):
    """What the crash side does when it is done (or has failed)."""

    REBOOT = "reboot"
    HALT = "halt"
    SHELL = "shell"


@dataclass(frozen=True)
class DumpSettings:
    """The ``dump:`` section: what the capture agent saves, where, and what it does then."""

    target: DumpTarget = DumpTarget.LOCAL
    path: Path = Path("/var/crash")
    device: str | None = None  # local: UUID=, LABEL= or /dev/...; None: the fs holding path
    fstype: str = "ext4"
    nfs: str | None = None  # server:/export
    nfs_options: str = "vers=4,nolock"
    ssh: str | None = None  # user@host
    ssh_port: int = 22
    ssh_key: Path = Path("/etc/xenkdump/id_capture")
    ssh_known_hosts: Path = Path("/etc/xenkdump/known_hosts")
    modules: tuple[str, ...] = ()  # extra modules for the crash kernel
    level: int = 31
    format: str = "elf"  # elf | compressed
    compress: str = "zlib"
    keep: int = 0
    max_total: int = 0
    failure_action: CrashAction = CrashAction.REBOOT
    final_action: CrashAction = CrashAction.REBOOT

    def describe_target(self) -> str:
        """The target in one phrase, for status and errors: "ssh dumper@host:/var/crash"."""
        if self.target is DumpTarget.SSH:
            return f"ssh {self.ssh}:{self.path}"
        if self.target is DumpTarget.NFS:
            return f"nfs {self.nfs} {self.path}"
        if self.device:
            return f"{self.device} {self.path}"
        return str(self.path)


@dataclass(frozen=True)
class SelfTestSettings:
    """The ``selftest:`` section (docs/selftest.md)."""

    after_reload: bool = False  # self-test the armed image after every successful load
    schedule: str = "off"  # a systemd calendar expression, or off (selftest/schedule.py)
    level: str = ""  # "": handoff when a Xen binary matches the running Xen, else boot
    xen: Path | None = None  # the handoff level's Xen binary (None: the matching one)
    dom0_kernel: Path | None = None  # its dom0 kernel (None: boot_dir/vmlinuz-$(uname -r))
    timeout: int = 900  # seconds
    memory_limit_mib: int = 0  # 0: only dom0's free memory limits a staging VM


@dataclass(frozen=True)
class Settings:
    kernel: KernelPolicy = KernelPolicy.RUNNING
    kernel_path: Path | None = None  # set iff kernel is PATH
    initrd: InitrdPolicy = InitrdPolicy.XENKDUMP
    initrd_path: Path | None = None  # set iff initrd is PATH
    cmdline: CmdlineSettings = field(default_factory=CmdlineSettings)
    dump: DumpSettings = field(default_factory=DumpSettings)
    selftest: SelfTestSettings = field(default_factory=SelfTestSettings)
    state_dir: Path = DEFAULT_STATE_DIR
    boot_dir: Path = DEFAULT_BOOT_DIR
    topology_check_interval: float = DEFAULT_TOPOLOGY_CHECK_INTERVAL
    reload_debounce: float = DEFAULT_RELOAD_DEBOUNCE
    metrics_textfile: Path | None = None  # metrics.textfile; None: no metrics file
    # The main file, every file that contributed (the main file, then drop-ins) and the
    # SHA-256 of the merged configuration ("" and () for built-in defaults).
    source: Path | None = None
    sources: tuple[Path, ...] = ()
    digest: str = ""
