"""xenkdump's own crash initramfs, built with Debian's initramfs-tools.

``mkinitramfs -d CONFDIR`` with a configuration directory of xenkdump's own: its
``initramfs.conf`` (busybox, the listed modules only), the ``hook`` (copy_exec for
makedumpfile and, for SSH, ssh; manual_add_modules for the target's drivers) and the
``init-premount`` script that hands a crash boot over to the capture agent.  The
system's own hooks (udev, kmod, busybox, klibc) still run: they make the early
userspace the agent needs.

The image is rebuilt only when its *content key* changes: a SHA-256 over everything
that goes in -- the agent, hook and script, the rendered agent configuration, the
module list, the kernel version and its modules.dep, the programs copied (makedumpfile,
ssh, busybox, mkinitramfs itself) with the shared libraries copy_exec brings along, and
initramfs-tools' own hooks and scripts.  ``ensure`` returns the image, building it
first when the key differs from the one recorded next to it.  What the key cannot see
(a new udev or kmod behind initramfs-tools' hooks) reaches xenkdumpd through the
Debian package's dpkg triggers (docs/capture.md §8).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xenkdump import transient
from xenkdump.capture import AGENT_DIR, agentconf, target, xensyms
from xenkdump.capture.agentconf import CaptureFacts
from xenkdump.errors import InputError, OperationError
from xenkdump.hv.port import AddressRange, Hypervisor
from xenkdump.paths import INITRD_DIR, INITRD_DIR_ENV
from xenkdump.safefile import Limit, chunks, read_file_if_exists
from xenkdump.settings.model import DumpSettings, DumpTarget
from xenkdump.units import KIB

log = logging.getLogger(__name__)

BOOT = Path("/boot")  # where the Xen binary is looked for by default (settings.boot_dir)
# Where xenkdumpd keeps the image it builds ($XENKDUMP_INITRD_DIR for tests).
DEFAULT_DIR = Path(os.environ.get(INITRD_DIR_ENV, INITRD_DIR))
MKINITRAMFS = "mkinitramfs"
BUILD_TIMEOUT = 600.0
# Forces where mkinitramfs runs: "direct" or "systemd" (transient.choose).
LAUNCH_ENV = "XENKDUMP_INITRAMFS_LAUNCH"
UNIT_PREFIX = "xenkdump-initramfs-"
# initramfs-tools' own settings for this image: busybox, only the listed modules.
INITRAMFS_CONF = """\
# xenkdump's crash initramfs (written by xenkdump; see docs/capture.md)
MODULES=list
BUSYBOX=y
KEYMAP=n
COMPRESS=gzip
DEVICE=
NFSROOT=auto
RUNSIZE=10%
FSTYPE=auto
"""
# initramfs-tools' hooks and scripts, which mkinitramfs runs for every image.
INITRAMFS_TOOLS_DIR = Path("/usr/share/initramfs-tools")
# Programs of the image besides initramfs-tools' own, with where they go.
PROGRAMS = (("makedumpfile", "/usr/bin"),)
SSH_PROGRAMS = (("ssh", "/usr/bin"),)


class InitramfsError(OperationError):
    """The crash initramfs could not be built."""


@dataclass(frozen=True)
class Built:
    """A crash initramfs and what it holds."""

    path: Path
    key: str  # the content key (module doc)
    size: int  # bytes of the compressed image
    unpacked: int  # bytes of its files once unpacked in the crash kernel's RAM
    kernel_version: str
    modules: tuple[str, ...]
    programs: tuple[str, ...]
    seconds: float  # build time (0 when it was already up to date)
    rebuilt: bool

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "content_sha256": self.key,
            "bytes": self.size,
            "unpacked_bytes": self.unpacked,
            "kernel_version": self.kernel_version,
            "modules": list(self.modules),
            "programs": list(self.programs),
            "build_seconds": round(self.seconds, 2),
            "rebuilt": self.rebuilt,
        }


def _which(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        package = {"ssh": "openssh-client", MKINITRAMFS: "initramfs-tools"}.get(name, name)
        raise InitramfsError(
            f"crash initramfs: {name} is not installed (Debian package: {package})"
        )
    return path


def _digest(path: Path | str) -> str:
    h = hashlib.sha256()
    try:
        for chunk in chunks(Path(path), "file", Limit.INITRD):
            h.update(chunk)
    except InputError:
        return "-"
    return h.hexdigest()


def shared_libraries(program: str) -> list[str]:
    """The shared libraries ``program`` loads, as ldd lists them (what copy_exec copies)."""
    try:
        out = subprocess.run(
            ["ldd", program], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted({m.group(1) for m in re.finditer(r"(/\S+) \(0x[0-9a-f]+\)", out)})


def _tree_digest(root: Path) -> str:
    """SHA-256 over the names and contents of the files below ``root`` ("-" if absent)."""
    h = hashlib.sha256()
    for directory, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            h.update(f"{path.relative_to(root)}\0{_digest(path)}\n".encode())
    return h.hexdigest() if root.is_dir() else "-"


def image_path(kernel_version: str, directory: Path | None = None) -> Path:
    return (directory or DEFAULT_DIR) / f"crash-initrd.img-{kernel_version}"


@dataclass(frozen=True)
class _Stage:
    conf: str
    modules: tuple[str, ...]
    programs: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, Path], ...]  # (name in the stage, source) copied as they are


def _stage(dump: DumpSettings, facts: CaptureFacts) -> _Stage:
    local = target.local_filesystem(dump) if dump.target is DumpTarget.LOCAL else None
    conf = agentconf.render(agentconf.agent_values(dump, facts, local))
    modules = tuple(dict.fromkeys(target.target_modules(dump, local)))
    progs = [(_which(name), dest) for name, dest in PROGRAMS]
    files: list[tuple[str, Path]] = []
    if dump.target is DumpTarget.SSH:
        progs += [(_which(name), dest) for name, dest in SSH_PROGRAMS]
        for name, src in (("id_capture", dump.ssh_key), ("known_hosts", dump.ssh_known_hosts)):
            if not src.is_file():
                raise InitramfsError(f"crash initramfs: dump.{name} file {src} missing")
            files.append((name, src))
    return _Stage(conf, modules, tuple(progs), tuple(files))


def content_key(stage: _Stage, kernel_version: str, mkinitramfs: str) -> str:
    """SHA-256 over everything that decides the image's content (module doc)."""
    h = hashlib.sha256()

    def add(label: str, value: str) -> None:
        h.update(f"{label}\0{value}\n".encode())

    for name in sorted(os.listdir(AGENT_DIR)):
        add(f"agent/{name}", _digest(AGENT_DIR / name))
    add("initramfs.conf", INITRAMFS_CONF)
    add("capture.conf", stage.conf)
    add("modules", " ".join(stage.modules))
    add("kernel", kernel_version)
    add("modules.dep", _digest(f"/lib/modules/{kernel_version}/modules.dep"))
    for prog, dest in stage.programs:
        add(f"program {prog} {dest}", _digest(prog))
        for lib in shared_libraries(prog):
            add(f"library {lib}", _digest(lib))
    for name, src in stage.files:
        add(f"file {name}", _digest(src))
    add("mkinitramfs", _digest(mkinitramfs))
    add("initramfs-tools", _tree_digest(INITRAMFS_TOOLS_DIR))
    add("busybox", _digest(shutil.which("busybox") or "/bin/busybox"))
    return h.hexdigest()


def _write_confdir(root: Path, stage: _Stage) -> Path:
    conf = root / "conf"
    for d in ("hooks", "scripts/init-premount", "conf.d", "xenkdump"):
        (conf / d).mkdir(parents=True)
    (conf / "initramfs.conf").write_text(INITRAMFS_CONF)
    (conf / "modules").write_text("".join(f"{m}\n" for m in stage.modules))
    shutil.copy(AGENT_DIR / "hook", conf / "hooks" / "xenkdump")
    shutil.copy(AGENT_DIR / "premount", conf / "scripts" / "init-premount" / "xenkdump")
    stage_dir = conf / "xenkdump"
    shutil.copy(AGENT_DIR / "xenkdump-capture.sh", stage_dir / "xenkdump-capture.sh")
    (stage_dir / "capture.conf").write_text(stage.conf)
    (stage_dir / "modules").write_text("".join(f"{m}\n" for m in stage.modules))
    (stage_dir / "programs").write_text("".join(f"{p} {d}\n" for p, d in stage.programs))
    for name, src in stage.files:
        shutil.copy(src, stage_dir / name)
    for f in (conf / "hooks" / "xenkdump", conf / "scripts" / "init-premount" / "xenkdump"):
        f.chmod(0o755)
    return conf


def _cpio_files(data: bytes, pos: int) -> tuple[int, int]:
    """Bytes of the files of the newc cpio at ``pos``, and where it ends (its trailer)."""
    total = 0
    while pos + 110 <= len(data) and data[pos : pos + 6] in (b"070701", b"070702"):
        filesize = int(data[pos + 54 : pos + 62], 16)
        namesize = int(data[pos + 94 : pos + 102], 16)
        name_end = pos + 110 + namesize
        name = data[pos + 110 : name_end - 1]
        pos = (name_end + 3) & ~3
        pos = (pos + filesize + 3) & ~3
        if name == b"TRAILER!!!":
            break
        total += filesize
    return total, pos


def unpacked_size(image: Path) -> int:
    """Bytes of the files in an initramfs (what the crash kernel unpacks into RAM):
    uncompressed newc archives first (Debian 13's mkinitramfs writes one), then the
    gzip'd main archive."""
    data = image.read_bytes()
    total, pos = 0, 0
    while data[pos : pos + 6] in (b"070701", b"070702"):
        size, pos = _cpio_files(data, pos)
        total += size
        while pos < len(data) and data[pos] == 0:  # padding between archives
            pos += 1
    if pos < len(data):
        total += _cpio_files(gzip.decompress(data[pos:]), 0)[0]
    return total


def _record(image: Path) -> Path:
    return image.with_name(image.name + ".json")


def read_built(image: Path) -> Built | None:
    """What the record next to ``image`` says, when both exist."""
    try:
        raw = read_file_if_exists(_record(image), "crash initramfs record", Limit.STATE)
        if raw is None or not image.is_file():
            return None
        doc = json.loads(raw)
        return Built(
            path=image,
            key=str(doc["content_sha256"]),
            size=image.stat().st_size,
            unpacked=int(doc["unpacked_bytes"]),
            kernel_version=str(doc["kernel_version"]),
            modules=tuple(doc["modules"]),
            programs=tuple(doc["programs"]),
            seconds=0.0,
            rebuilt=False,
        )
    except (OSError, InputError, ValueError, KeyError, TypeError):
        return None


def ensure(
    dump: DumpSettings,
    facts: CaptureFacts,
    *,
    output: Path | None = None,
    force: bool = False,
    launch: transient.Launch | None = None,
    watch: transient.JobWatch = transient.unwatched,
) -> Built:
    """The crash initramfs for ``dump`` and the crash kernel ``facts.dom0_kernel``.

    Builds it (atomically replacing ``output``) when its content key changed or
    ``force``; InitramfsError (one line) when that fails, the old image left in place.
    ``launch``: where mkinitramfs runs (None: ``transient.detect``, build_argv);
    ``watch`` is told of the mkinitramfs run and its timeout.
    """
    version = facts.dom0_kernel
    out = output or image_path(version)
    stage = _stage(dump, facts)
    mkinitramfs = _which(MKINITRAMFS)
    key = content_key(stage, version, mkinitramfs)
    old = read_built(out)
    if old is not None and old.key == key and not force:
        return old
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    # The configuration directory next to the image: a transient unit sees neither
    # xenkdumpd's private /tmp nor anything it may write but the image's directory.
    with tempfile.TemporaryDirectory(prefix=".xenkdump-initramfs.", dir=out.parent) as tmp:
        conf = _write_confdir(Path(tmp), stage)
        tmp_out = out.with_name(f".{out.name}.tmp")
        mkargv = [mkinitramfs, "-d", str(conf), "-o", str(tmp_out), version]
        where = transient.detect(LAUNCH_ENV) if launch is None else launch
        with watch(BUILD_TIMEOUT):
            _run_mkinitramfs(build_argv(where, mkargv, out.parent))
        unpacked = unpacked_size(tmp_out)
        built = Built(
            path=out,
            key=key,
            size=tmp_out.stat().st_size,
            unpacked=unpacked,
            kernel_version=version,
            modules=stage.modules,
            programs=tuple(p for p, _d in stage.programs),
            seconds=time.monotonic() - started,
            rebuilt=True,
        )
        record = json.dumps(built.to_json(), indent=1) + "\n"
        rec_tmp = _record(tmp_out)
        rec_tmp.write_text(record)
        os.replace(tmp_out, out)
        os.replace(rec_tmp, _record(out))
    log.info(
        "crash initramfs %s built in %.1f s: %d KiB (%d KiB unpacked), modules %s",
        out,
        built.seconds,
        built.size // KIB,
        built.unpacked // KIB,
        " ".join(built.modules) or "-",
    )
    return built


def build_argv(launch: transient.Launch, argv: Sequence[str], writable: Path) -> list[str]:
    """mkinitramfs's command line: as it is, or in a transient unit of its own.

    xenkdumpd's sandbox hides /usr/lib/modules (ProtectKernelModules=) and refuses
    ``fchown`` and ``chroot`` (``cp -p``, ``ldconfig -r``: SystemCallFilter=), all of
    which mkinitramfs needs.  Under systemd it runs in ``xenkdump-initramfs-*.service``
    instead: root's file access, but a read-only system except ``writable`` (the
    image's directory), private /tmp, no network, no kernel or cgroup changes
    (docs/packaging.md).  Its output comes back through systemd-run (``--pipe``).
    """
    if isinstance(launch, transient.Direct):
        return list(argv)
    properties = [
        "Description=xenkdump crash initramfs build (mkinitramfs)",
        f"RuntimeMaxSec={BUILD_TIMEOUT:.0f}",
        "Nice=10",
        *transient.SANDBOX,
        f"ReadWritePaths={writable}",
        "ProtectHome=yes",
        "PrivateNetwork=yes",
        "RestrictAddressFamilies=AF_UNIX",
    ]
    unit = transient.unit_name(UNIT_PREFIX)
    return transient.run_argv(launch, argv, unit=unit, properties=properties, pipe=True)


def _run_mkinitramfs(argv: Sequence[str]) -> None:
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InitramfsError(
            f"crash initramfs: mkinitramfs took longer than {BUILD_TIMEOUT:.0f} s"
        ) from None
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("E:")]
        last = (errors or proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise InitramfsError(
            f"crash initramfs: mkinitramfs failed (exit {proc.returncode}): {last.strip()}"
        )


def hostname() -> str:
    return socket.gethostname().split(".")[0] or "host"


def capture_facts(
    hv: Hypervisor | None, kernel_version: str, kernel_sha256: str = "", boot_dir: Path = BOOT
) -> CaptureFacts:
    """The facts the agent records about this host, asked of the hypervisor port (None:
    not on a Xen host; Xen's version, command line and image are then unknown), and
    where Xen's console ring is, from the Xen binary in ``boot_dir`` (xensyms)."""
    version = cmdline = ""
    xen_range = AddressRange(0, 0)
    if hv is not None:
        major, minor = hv.xen_version()
        version = f"{major}.{minor}{hv.xen_extraversion()}"
        cmdline = hv.xen_command_line()
        xen_range = hv.xen_range()
    symbols, missing = xensyms.find_console_symbols(boot_dir, version)
    if symbols is None:
        log.info("crash initramfs: Xen's console ring cannot be located: %s", missing)
    return CaptureFacts(
        host=hostname(),
        dom0_kernel=kernel_version,
        xen_version=version,
        xen_cmdline=cmdline,
        xen_range=xen_range,
        kernel_sha256=kernel_sha256,
        xen_console=symbols.agent_values() if symbols is not None else {},
        xen_console_missing=missing,
    )


def kernel_version_of(kernel: Path) -> str:
    """The release of a Debian kernel file, vmlinuz-<release>; InitramfsError otherwise."""
    prefix = "vmlinuz-"
    if not kernel.name.startswith(prefix) or len(kernel.name) == len(prefix):
        raise InitramfsError(
            f"{kernel}: initrd xenkdump: expected a kernel named vmlinuz-RELEASE (its modules "
            "are /lib/modules/RELEASE), found another name"
        )
    return kernel.name[len(prefix) :]


def for_kernel(
    dump: DumpSettings,
    hv: Hypervisor | None,
    kernel: Path,
    boot_dir: Path = BOOT,
    watch: transient.JobWatch = transient.unwatched,
) -> Built:
    """The crash initramfs for the crash kernel file ``kernel`` on this host (``ensure``);
    ``boot_dir`` holds the Xen binary (settings.boot_dir)."""
    version = kernel_version_of(kernel)
    return ensure(dump, capture_facts(hv, version, boot_dir=boot_dir), watch=watch)
