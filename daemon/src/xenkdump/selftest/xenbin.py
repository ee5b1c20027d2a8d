"""This host's Xen binary for the handoff level: the one that matches the running Xen.

The running version comes from the hypervisor port (XENVER_version and
XENVER_extraversion, e.g. ``4.17`` and ``.7``).  The boot directory's
``xen-*.gz`` files name their version: Debian's ``xen-4.17-amd64.gz`` the major
and minor, an upstream install's ``xen-4.17.7.gz`` the whole version.  A
candidate matches when its name gives the running major.minor (and, when the name
carries one, the same extraversion) and its contents are a Xen with that
extraversion string.  An exact name wins over a major.minor one; two different
files that match equally are an error that names them (``--xen`` chooses).

QEMU's multiboot loader takes the ELF, so the gzip is decompressed into the run's
work directory (docs/selftest.md §6).
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from xenkdump.errors import InputError, OperationError

# Xen's boot banner (xen/drivers/char/console.c): every Xen binary carries it.
BANNER: Final = b"Xen version %d.%d%s"
_ELF: Final = b"\x7fELF"
_GZIP: Final = b"\x1f\x8b"
_NAME: Final = re.compile(r"xen-(\d+)\.(\d+)(.*?)(?:-amd64)?\.gz")
_VERSION: Final = re.compile(r"(\d+)\.(\d+)(\S*)")
_MAX_ELF: Final = 64 << 20  # a Xen ELF is a few MiB


@dataclass(frozen=True)
class XenVersion:
    major: int
    minor: int
    extra: str = ""  # XENVER_extraversion: ".7", ".3-pre", "-rc"

    @classmethod
    def parse(cls, text: str) -> XenVersion:
        """From "4.17.7" (status's XenVersion) or "4.17"."""
        m = _VERSION.fullmatch(text.strip())
        if not m:
            raise InputError(f"Xen version: expected MAJOR.MINOR[EXTRA], got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), m.group(3))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}{self.extra}"

    @property
    def pattern(self) -> str:
        """What the boot directory is searched for (error messages)."""
        return f"xen-{self.major}.{self.minor}*.gz"


def name_rank(name: str, version: XenVersion) -> int:
    """2: the name gives the whole version; 1: major.minor only; 0: no match."""
    m = _NAME.fullmatch(name)
    if not m or (int(m.group(1)), int(m.group(2))) != (version.major, version.minor):
        return 0
    extra = m.group(3)
    if not extra:
        return 1
    return 2 if extra == version.extra else 0


def is_xen(data: bytes) -> bool:
    return data.startswith(_ELF) and BANNER in data


def carries(data: bytes, version: XenVersion) -> bool:
    """The binary is a Xen whose extraversion string is the running one's.

    The extraversion is a C string in the binary; the linker may merge it into
    the tail of a longer one (Debian's "4.17.7+13-g..." vendor version), so the
    test is "ends a string", not "is a string".
    """
    return is_xen(data) and (not version.extra or version.extra.encode() + b"\0" in data)


def read_elf(path: Path) -> bytes:
    """The ELF inside ``path`` (gzip or plain); InputError naming the file otherwise."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(0)
            if head.startswith(_GZIP):
                with gzip.open(f) as g:
                    data = g.read(_MAX_ELF + 1)
            else:
                data = f.read(_MAX_ELF + 1)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: Xen binary: cannot read it ({exc})") from None
    if len(data) > _MAX_ELF:
        raise InputError(f"{path}: Xen binary: expected at most {_MAX_ELF >> 20} MiB unpacked")
    if not is_xen(data):
        raise InputError(
            f"{path}: expected a Xen hypervisor binary (xen-*.gz or its ELF), "
            "found no Xen boot banner"
        )
    return data


def choose(
    version: XenVersion, candidates: Sequence[Path], read: Callable[[Path], bytes] = read_elf
) -> Path | None:
    """The candidate for ``version`` (module docstring), None when none matches."""
    best: dict[Path, int] = {}
    for path in candidates:
        rank = name_rank(path.name, version)
        if not rank:
            continue
        real = path.resolve()
        try:
            data = read(path)
        except InputError:
            continue
        if carries(data, version):
            best[real] = max(best.get(real, 0), rank)
    if not best:
        return None
    top = max(best.values())
    winners = sorted(p for p, r in best.items() if r == top)
    if len(winners) > 1:
        raise OperationError(
            f"several Xen binaries match Xen {version}: {', '.join(map(str, winners))} "
            "(choose one with --xen PATH or selftest.xen)"
        )
    return winners[0]


def find(version: XenVersion, boot_dir: Path) -> Path | None:
    """This host's Xen binary in ``boot_dir``, or None."""
    try:
        candidates = sorted(p for p in boot_dir.glob("xen-*.gz") if p.is_file())
    except OSError:
        return None
    return choose(version, candidates)


def not_found(version: XenVersion | None, boot_dir: Path) -> str:
    """The one line that says what was looked for."""
    if version is None:
        return (
            "no Xen binary to boot: Xen is not running here, so none can be matched "
            "(give --xen PATH or selftest.xen)"
        )
    return (
        f"no Xen binary for the running Xen {version}: looked for {boot_dir}/{version.pattern} "
        "(give --xen PATH or selftest.xen)"
    )


def unpack(src: Path, dest: Path) -> Path:
    """``src`` (gzip or ELF) as an ELF at ``dest`` (QEMU's multiboot loader wants the ELF)."""
    data = read_elf(src)
    with dest.open("wb") as out:
        out.write(data)
    return dest
