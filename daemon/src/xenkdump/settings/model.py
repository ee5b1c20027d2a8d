"""The daemon's settings as typed, frozen values: the only configuration type the core sees.

Produced by ``xenkdump.settings.load`` from ``/etc/xenkdump/xenkdump.yaml``; defaults here
are what an empty (or absent) file means.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from xenkdump.state.record import DEFAULT_STATE_DIR

DEFAULT_CONFIG_PATH = Path("/etc/xenkdump/xenkdump.yaml")
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
    NONE = "none"  # no initrd


@dataclass(frozen=True)
class CmdlineSettings:
    """The crash kernel's command line: ``base`` (None: dom0's own), then remove, then append."""

    base: str | None = None
    append: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    kernel: KernelPolicy = KernelPolicy.RUNNING
    kernel_path: Path | None = None  # set iff kernel is PATH
    initrd: InitrdPolicy = InitrdPolicy.AUTO
    initrd_path: Path | None = None  # set iff initrd is PATH
    cmdline: CmdlineSettings = field(default_factory=CmdlineSettings)
    state_dir: Path = DEFAULT_STATE_DIR
    boot_dir: Path = DEFAULT_BOOT_DIR
    topology_check_interval: float = DEFAULT_TOPOLOGY_CHECK_INTERVAL
    reload_debounce: float = DEFAULT_RELOAD_DEBOUNCE
    # The main file, every file that contributed (the main file, then drop-ins) and the
    # SHA-256 of the merged configuration ("" and () for built-in defaults).
    source: Path | None = None
    sources: tuple[Path, ...] = ()
    digest: str = ""
