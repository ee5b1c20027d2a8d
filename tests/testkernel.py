"""The real Debian kernel the tests and benchmarks use as input.

scripts/fetch-test-kernel.sh fetches (never installs) whatever Debian's archive serves
today, so its users assert invariants and what its own header says, and print its
version (``version_string``).
"""

from __future__ import annotations

import functools
import struct
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def debian_kernel() -> Path:
    """The path of Debian's amd64 vmlinuz in the test cache (fetched on first use)."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "fetch-test-kernel.sh")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out)


def version_string(data: bytes) -> str:
    """The bzImage's kernel_version string (boot.rst: pointer at 0x20E, relative to 0x200)."""
    ptr = struct.unpack_from("<H", data, 0x20E)[0] + 0x200
    return data[ptr : ptr + 256].split(b"\0", 1)[0].decode("ascii", "replace")


def with_kernel(kernel: Path, tmp_path: Path, boot_extra: Path | None = None) -> list[str]:
    """A command prefix: run in a mount namespace where ``kernel``'s package is installed
    (and the files of ``boot_extra``, e.g. a Xen binary, are in /boot too)."""
    root = kernel.parent.parent  # <cache>/root with boot/ and lib/modules/
    up, work = tmp_path / "ov-up", tmp_path / "ov-work"
    up.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    release = kernel.name.removeprefix("vmlinuz-")
    boot = (
        f"mount -t overlay overlay -o lowerdir={boot_extra}:{root}/boot /boot"
        if boot_extra is not None
        else f"mount --bind {root}/boot /boot"
    )
    # depmod as the kernel package's postinst does: an installed kernel has modules.dep.
    script = (
        f"mount -t overlay overlay -o lowerdir={root}/lib:/usr/lib,upperdir={up},"
        f"workdir={work} /usr/lib && {boot} && "
        f'depmod {release} && exec "$@"'
    )
    return ["unshare", "-m", "sh", "-c", script, "sh"]
