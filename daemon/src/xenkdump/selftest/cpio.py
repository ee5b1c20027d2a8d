"""initramfs archives (cpio "newc"), written here so the bytes are ours and reproducible.

Used for the images a self-test generates (the staging dom0's initramfs, test
crash initrds); the format is the kernel's (Documentation/driver-api/early-userspace).
"""

from __future__ import annotations

import dataclasses
import gzip
import stat
from pathlib import Path

_NEWC_MAGIC = b"070701"


def _newc_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    """One newc record: 110-byte ASCII header, name + NUL padded to 4, data padded to 4."""
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
    header = _NEWC_MAGIC + b"".join(b"%08X" % v for v in fields)
    out = bytearray(header + name.encode() + b"\0")
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return bytes(out)


@dataclasses.dataclass
class Initramfs:
    """An in-memory tree: path -> (mode, bytes); directories implied by paths."""

    files: dict[str, tuple[int, bytes]] = dataclasses.field(default_factory=dict)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.files[path.lstrip("/")] = (stat.S_IFREG | mode, data)

    def add_host_file(self, path: str, src: Path, mode: int | None = None) -> None:
        real = src.resolve()
        perm = stat.S_IMODE(real.stat().st_mode) if mode is None else mode
        self.add_file(path, real.read_bytes(), perm)

    def add_symlink(self, path: str, target: str) -> None:
        self.files[path.lstrip("/")] = (stat.S_IFLNK | 0o777, target.encode())

    def add_dir(self, path: str) -> None:
        self.files[path.lstrip("/")] = (stat.S_IFDIR | 0o755, b"")

    def cpio(self) -> bytes:
        names: dict[str, tuple[int, bytes]] = {}
        for path, entry in self.files.items():
            parts = path.split("/")
            for i in range(1, len(parts)):
                names.setdefault("/".join(parts[:i]), (stat.S_IFDIR | 0o755, b""))
            names[path] = entry
        out = bytearray()
        for ino, name in enumerate(sorted(names), start=1):
            mode, data = names[name]
            out += _newc_entry(name, mode, data, ino)
        out += _newc_entry("TRAILER!!!", 0, b"", 0)
        return bytes(out)

    def write_gz(self, dest: Path) -> Path:
        dest.write_bytes(gzip.compress(self.cpio(), compresslevel=6, mtime=0))
        return dest
