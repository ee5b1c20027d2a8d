"""The staging dom0 of the handoff level: this host's dom0 kernel and a generated initramfs.

The initramfs (the project's cpio writer, cpio.py) holds busybox, the kernel
modules dom0 needs to reach the host's root over 9p and the hypervisor
(``NEEDED`` and their dependencies, in load order, each decompressed: busybox's
insmod takes plain ELF), ``/init`` (dom0-init.sh) and its settings: the run's id,
token, work directory and the host's Python.  Module dependencies come from each
module's own ``depends=`` (modinfo), so an unpacked kernel tree without
modules.dep works too; modules the kernel has built in (modules.builtin) are
skipped.  docs/selftest.md §6.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from xenkdump.errors import InputError
from xenkdump.selftest.cpio import Initramfs

INIT: Final = Path(__file__).parent / "dom0-init.sh"
# What dom0 needs: the hypervisor's devices (privcmd: hypercalls, evtchn, xenfs),
# and the host's root over virtio-9p.
NEEDED: Final = ("xen-privcmd", "xen-evtchn", "xenfs", "virtio_pci", "9pnet_virtio", "9p")
_SUFFIXES: Final = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
_DEPENDS: Final = re.compile(rb"(?:^|\0)depends=([^\0]*)\0")
_SAFE: Final = re.compile(r"[A-Za-z0-9_./+:@=-]+")


def module_name(filename: str) -> str:
    """``xen-privcmd.ko.xz`` -> ``xen_privcmd`` (the kernel treats - and _ alike)."""
    for suffix in _SUFFIXES:
        if filename.endswith(suffix):
            filename = filename[: -len(suffix)]
            break
    return filename.replace("-", "_")


def depends(data: bytes) -> list[str]:
    """The ``depends=`` of a module's .modinfo (names, normalised)."""
    m = _DEPENDS.search(data)
    if not m or not m.group(1):
        return []
    return [module_name(d) for d in m.group(1).decode("ascii", "replace").split(",") if d]


def load_order(
    needed: Iterable[str],
    index: Mapping[str, Path],
    builtin: frozenset[str],
    read: Callable[[Path], bytes],
) -> list[tuple[str, bytes]]:
    """(name, plain module) for ``needed`` and their dependencies, dependencies first."""
    order: list[tuple[str, bytes]] = []
    done: set[str] = set()
    visiting: set[str] = set()

    def visit(name: str, wanted_by: str) -> None:
        if name in done or name in builtin:
            return
        if name in visiting:
            raise InputError(f"kernel module {name}: circular dependency")
        path = index.get(name)
        if path is None:
            by = f" (needed by {wanted_by})" if wanted_by else ""
            raise InputError(
                f"kernel module {name}{by}: neither built into the dom0 kernel nor in its "
                "modules directory"
            )
        visiting.add(name)
        data = read(path)
        for dep in depends(data):
            visit(dep, name)
        visiting.discard(name)
        done.add(name)
        order.append((name, data))

    for name in needed:
        visit(module_name(name), "")
    return order


def read_module(path: Path) -> bytes:
    """A module file's plain ELF (.ko, .ko.xz, .ko.gz, .ko.zst)."""
    try:
        if path.name.endswith(".xz"):
            return lzma.decompress(path.read_bytes())
        if path.name.endswith(".gz"):
            return gzip.decompress(path.read_bytes())
        if path.name.endswith(".zst"):
            zstd = shutil.which("zstd")
            if zstd is None:
                raise InputError(f"{path}: a zstd-compressed module needs the zstd tool")
            return subprocess.run([zstd, "-dcq", str(path)], capture_output=True, check=True).stdout
        return path.read_bytes()
    except (OSError, lzma.LZMAError, gzip.BadGzipFile, subprocess.CalledProcessError) as exc:
        raise InputError(f"{path}: kernel module: cannot read it ({exc})") from None


def module_index(modules_dir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for root, _dirs, files in os.walk(modules_dir / "kernel"):
        for f in files:
            if f.endswith(_SUFFIXES):
                index.setdefault(module_name(f), Path(root) / f)
    return index


def builtin_modules(modules_dir: Path) -> frozenset[str]:
    try:
        text = (modules_dir / "modules.builtin").read_text()
    except OSError:
        return frozenset()
    return frozenset(module_name(Path(line.strip()).name) for line in text.splitlines() if line)


def kernel_release(kernel: bytes, name: str) -> str:
    """The release (``uname -r``) from a bzImage's version string (boot protocol 2.00+)."""
    if len(kernel) < 0x210 or kernel[0x202:0x206] != b"HdrS":
        raise InputError(f"{name}: dom0 kernel: expected a bzImage, found no setup header")
    (offset,) = struct.unpack_from("<H", kernel, 0x20E)
    start = offset + 0x200
    end = kernel.find(b"\0", start, start + 512)
    text = kernel[start:end].decode("ascii", "replace") if offset and end > start else ""
    if not text.split():
        raise InputError(f"{name}: dom0 kernel: its version string names no release")
    return text.split()[0]


def modules_dir(kernel: Path, release: str) -> Path:
    """``/lib/modules/<release>``, or the same under the root a kernel in ``<root>/boot`` has."""
    places = []
    if kernel.resolve().parent.name == "boot":
        places.append(kernel.resolve().parent.parent / "lib" / "modules" / release)
    places.append(Path("/lib/modules") / release)
    for p in places:
        if (p / "kernel").is_dir():
            return p
    raise InputError(
        f"{kernel}: dom0 kernel {release}: no modules directory "
        f"({' or '.join(str(p) for p in places)})"
    )


def _busybox() -> tuple[Path, list[Path]]:
    """busybox and, when it is dynamically linked, its libraries (ldd)."""
    found = shutil.which("busybox", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
    if found is None:
        raise InputError("busybox not found (install the Debian package busybox or busybox-static)")
    proc = subprocess.run(["ldd", found], capture_output=True, text=True, check=False)
    libs = (
        [Path(m) for m in re.findall(r"(/\S+) \(0x", proc.stdout)] if proc.returncode == 0 else []
    )
    return Path(found), libs


def _quoted(value: str, what: str) -> str:
    if not _SAFE.fullmatch(value):
        raise InputError(f"{what} {value!r}: expected a plain path (letters, digits, ._/+:@=-)")
    return f"'{value}'"


@dataclass(frozen=True)
class Dom0Settings:
    test_id: str
    token: bytes
    work: Path  # the run's work directory, shared read-write into dom0's chroot
    python: str  # the host's Python, run in the chroot of the host's root
    pythonpath: str  # where that Python finds this xenkdump


def settings_text(s: Dom0Settings) -> str:
    return "".join(
        f"{k}={_quoted(v, k)}\n"
        for k, v in (
            ("st_id", s.test_id),
            ("st_work", str(s.work)),
            ("st_python", s.python),
            ("st_pythonpath", s.pythonpath),
        )
    )


def initramfs(kernel: Path, settings: Dom0Settings) -> Initramfs:
    """The staging dom0's initramfs for ``kernel`` (this host's dom0 kernel)."""
    try:
        release = kernel_release(kernel.read_bytes()[:0x10000], str(kernel))
    except OSError as exc:
        raise InputError(f"{kernel}: dom0 kernel: cannot read it ({exc.strerror})") from None
    mods = modules_dir(kernel, release)
    order = load_order(NEEDED, module_index(mods), builtin_modules(mods), read_module)
    fs = Initramfs()
    busybox, libs = _busybox()
    fs.add_host_file("bin/busybox", busybox, 0o755)
    for lib in libs:
        fs.add_host_file(str(lib), lib, 0o755)
    fs.add_symlink("bin/sh", "busybox")
    fs.add_file("init", INIT.read_bytes(), 0o755)
    for d in ("proc", "sys", "dev", "tmp", "host"):
        fs.add_dir(d)
    for name, data in order:
        fs.add_file(f"lib/modules/{name}.ko", data)
    fs.add_file("etc/xenkdump-selftest.modules", "".join(f"{n}.ko\n" for n, _ in order).encode())
    fs.add_file("etc/xenkdump-selftest.conf", settings_text(settings).encode())
    fs.add_file("etc/xenkdump-selftest.token", settings.token + b"\n")
    return fs
