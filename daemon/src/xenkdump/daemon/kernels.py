"""Which kernel and initrd files the settings name right now (``kernel: running|latest|PATH``).

Debian names them ``<boot>/vmlinuz-<version>`` and ``<boot>/initrd.img-<version>``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from xenkdump.errors import ImageError
from xenkdump.hv.port import Hypervisor
from xenkdump.image import loader
from xenkdump.image.planner import ImageInputs
from xenkdump.safefile import is_text
from xenkdump.settings.model import InitrdPolicy, KernelPolicy, Settings

KERNEL_PREFIX = "vmlinuz-"
INITRD_PREFIX = "initrd.img-"


@dataclass(frozen=True)
class KernelFiles:
    kernel: Path
    initrd: Path | None


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key in version order: digit runs compare as numbers ("6.1.0-10" > "6.1.0-9")."""
    parts = re.findall(r"\d+|[^\d]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def latest_version(boot_dir: Path) -> str:
    """The newest <boot_dir>/vmlinuz-<version> by version order."""
    try:
        names = [p.name for p in boot_dir.iterdir()]
    except OSError as exc:
        raise ImageError(f"kernel: latest: cannot list {boot_dir}: {exc.strerror}") from None
    versions = [
        n[len(KERNEL_PREFIX) :]
        for n in names
        if n.startswith(KERNEL_PREFIX)
        and not n.endswith((".dpkg-new", ".dpkg-tmp", ".bak"))
        and is_text(n)  # a name that is not UTF-8 could not be recorded or shown on D-Bus
    ]
    if not versions:
        raise ImageError(f"kernel: latest: no {KERNEL_PREFIX}* file in {boot_dir}")
    return max(versions, key=version_key)


def _version_of(kernel: Path) -> str | None:
    return kernel.name[len(KERNEL_PREFIX) :] if kernel.name.startswith(KERNEL_PREFIX) else None


def resolve(settings: Settings, *, release: str | None = None) -> KernelFiles:
    """The files to load now.  ``release`` defaults to ``uname -r`` (for ``kernel: running``)."""
    boot = settings.boot_dir
    if settings.kernel is KernelPolicy.PATH:
        assert settings.kernel_path is not None
        kernel = settings.kernel_path
    elif settings.kernel is KernelPolicy.RUNNING:
        kernel = boot / f"{KERNEL_PREFIX}{release or os.uname().release}"
    else:
        kernel = boot / f"{KERNEL_PREFIX}{latest_version(boot)}"
    initrd: Path | None
    if settings.initrd is InitrdPolicy.PATH:
        initrd = settings.initrd_path
    elif settings.initrd in (InitrdPolicy.NONE, InitrdPolicy.XENKDUMP):
        initrd = None  # xenkdump's own is built by the caller (capture/initramfs.py)
    else:
        version = _version_of(kernel)
        candidate = kernel.parent / f"{INITRD_PREFIX}{version}" if version else None
        initrd = candidate if candidate is not None and candidate.exists() else None
    return KernelFiles(kernel, initrd)


def watched_directories(settings: Settings) -> set[Path]:
    """Directories whose entries can change what ``resolve`` returns or the files' contents."""
    dirs = {settings.boot_dir} if settings.kernel is not KernelPolicy.PATH else set()
    if settings.kernel_path is not None:
        dirs.add(settings.kernel_path.parent)
    if settings.initrd_path is not None:
        dirs.add(settings.initrd_path.parent)
    return dirs


def is_relevant(settings: Settings, path: Path, *, release: str | None = None) -> bool:
    """Whether a change to ``path`` can change the kernel or initrd the settings name."""
    name = path.name
    if name.endswith((".dpkg-new", ".dpkg-tmp", ".dpkg-bak", ".swp")) or name.startswith("."):
        return False
    if path in watched_directories(settings):
        return True  # the directory itself moved or went away
    explicit = {p for p in (settings.kernel_path, settings.initrd_path) if p is not None}
    if path in explicit:
        return True
    if settings.kernel is KernelPolicy.PATH:
        assert settings.kernel_path is not None
        version = _version_of(settings.kernel_path)
        return (
            settings.initrd is InitrdPolicy.AUTO
            and version is not None
            and path == settings.kernel_path.parent / f"{INITRD_PREFIX}{version}"
        )
    if path.parent != settings.boot_dir:
        return False
    if settings.kernel is KernelPolicy.RUNNING:
        rel = release or os.uname().release
        return name in (f"{KERNEL_PREFIX}{rel}", f"{INITRD_PREFIX}{rel}")
    return name.startswith((KERNEL_PREFIX, INITRD_PREFIX))


def configured_inputs(settings: Settings, hv: Hypervisor | None) -> ImageInputs:
    """The image ``settings`` name now, read as xenkdumpd loads it (``load --config``).

    With ``initrd: xenkdump`` the crash initramfs is built first when its content changed
    (``hv`` supplies the Xen facts it records; None: unknown, e.g. off a Xen host).
    """
    files = resolve(settings)
    initrd = files.initrd
    if settings.initrd is InitrdPolicy.XENKDUMP:
        from xenkdump.capture import initramfs  # noqa: PLC0415 (mkinitramfs and friends)

        initrd = initramfs.for_kernel(settings.dump, hv, files.kernel, settings.boot_dir).path
    c = settings.cmdline
    return loader.read_inputs(
        files.kernel, initrd, cmdline=c.base, append=c.append, remove=c.remove
    )
