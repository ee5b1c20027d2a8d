"""Run a command as if a kernel package were installed: for mkinitramfs in tests.

mkinitramfs reads the kernel's /boot/config-RELEASE and /lib/modules/RELEASE, which a
test machine does not have (the test kernel is only unpacked in the cache).  The
command runs in a private mount namespace (unshare -m) where the kernel package's
/boot and /lib/modules are laid over the real ones (bind mount, overlayfs with a
scratch upper layer) and depmod has run, as after installing the package: nothing of
the host changes.
"""

from __future__ import annotations

from pathlib import Path


def with_kernel(kernel: Path, tmp_path: Path) -> list[str]:
    """A command prefix: run in a mount namespace where ``kernel``'s package is installed."""
    root = kernel.parent.parent  # <cache>/root with boot/ and lib/modules/
    up, work = tmp_path / "ov-up", tmp_path / "ov-work"
    up.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    release = kernel.name.removeprefix("vmlinuz-")
    # depmod as the kernel package's postinst does: an installed kernel has modules.dep.
    script = (
        f"mount -t overlay overlay -o lowerdir={root}/lib:/usr/lib,upperdir={up},"
        f"workdir={work} /usr/lib && mount --bind {root}/boot /boot && "
        f'depmod {release} && exec "$@"'
    )
    return ["unshare", "-m", "sh", "-c", script, "sh"]
