"""Real Xen 4.17 under QEMU: packages, initramfs images, one boot, the serial log.

The recipe (docs/lab.md §3): Xen's ELF through QEMU's multiboot loader,
``-accel tcg -cpu qemu64``, a busybox dom0 initramfs that loads the xenfs and 9p
modules, mounts the host's root read-only over 9p and chroots into it.  Inside
that chroot the checkout's venv (Debian's /usr/bin/python3 plus the editable
xenkdump) runs unchanged, so dom0 executes exactly the code under test.

A *job* is a directory under /var/tmp (not /tmp: dom0 mounts a tmpfs over the
chroot's /tmp, §3).  It holds the scenario
script that dom0 runs, and ``out/``, exported read-write as a second 9p share
and mounted over the same path inside dom0, so files come back to the host.

Nothing here touches the host's /boot or bootloader: the hypervisor and
kexec-tools packages are unpacked into the cache with ``dpkg-deb -x``; only
plain tools (QEMU, busybox, cpio, makedumpfile, the libxenctrl library) are
installed with apt-get.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from xenkdump.selftest import xenbin
from xenkdump.selftest.cpio import Initramfs
from xenkdump.selftest.qemu import Disk, Share, XenMachine, xen_argv, xen_cmdline

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("XENKDUMP_CACHE", "/var/cache/xenkdump-tests"))
E2E_CACHE = CACHE / "e2e"
WORK_PARENT = Path("/var/tmp")

# Installed with apt-get (no services, no bootloader hooks).
APT_PACKAGES = (
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "makedumpfile",
    "libxenmisc4.17",
    "gcc",
    "libc6-dev",
    "python3-cffi",
)
# Unpacked into the cache only: the hypervisor package would put files in /boot
# (and run update-grub hooks); kexec-tools would install a kexec-load service.
UNPACKED_PACKAGES = ("xen-hypervisor-4.17-amd64", "kexec-tools")

# Module load order matters (docs/lab.md §6).
DOM0_MODULES = (
    "kernel/drivers/xen/xen-privcmd.ko",
    "kernel/drivers/xen/xen-evtchn.ko",
    "kernel/drivers/xen/xenfs/xenfs.ko",
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/fs/netfs/netfs.ko",
    "kernel/fs/fscache/fscache.ko",
    "kernel/net/9p/9pnet.ko",
    "kernel/net/9p/9pnet_virtio.ko",
    "kernel/fs/9p/9p.ko",
)

CRASH_CMDLINE = "console=ttyS0,115200 irqpoll nr_cpus=1 reset_devices panic=-1"
MEMORY_MIB = int(os.environ.get("XENKDUMP_E2E_MEM", "1024"))
CRASHKERNEL = "256M"
DOM0_MIB = 512

# Markers printed by the dom0 and crash init scripts (dom0-init.sh, crash-init.sh).
DOM0_END = "XK-DOM0: end"
CRASH_END = "XK-CRASH: end"
CRASH_START = "Executing kexec image"  # Xen, on the dom0 panic (docs/lab.md §6)
# QEMU's user-mode network: the guest's address for this machine's loopback.
USER_NET_HOST = "10.0.2.2"


class HarnessError(RuntimeError):
    """The harness itself could not prepare or run a boot (not a product failure)."""


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise HarnessError(f"{' '.join(cmd)}: exit {proc.returncode}: {detail}")
    return proc  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------
# Packages


def _installed(pkg: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and "install ok installed" in proc.stdout


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


# apt-get fails at once when another apt holds its locks: the harness's own calls (from
# parallel runs) take turns, and an install waits for any other dpkg.
_APT_WAIT = ("-o", "DPkg::Lock::Timeout=600")


@contextlib.contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock file in the cache, shared by every run on this machine."""
    E2E_CACHE.mkdir(parents=True, exist_ok=True)
    with (E2E_CACHE / name).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_apt_packages(packages: Iterable[str] = APT_PACKAGES) -> list[str]:
    """Install whatever is missing; returns what was installed (missing is never a skip)."""
    if all(_installed(p) for p in packages):
        return []
    with _cache_lock("apt.lock"):
        missing = [p for p in packages if not _installed(p)]
        if missing:
            _run(["apt-get", "update", "-qq"], env=_apt_env())
            _run(
                ["apt-get", *_APT_WAIT, "install", "-y", "-qq", "--no-install-recommends",
                 *missing],
                env=_apt_env(),
            )  # fmt: skip
    return missing


def _candidate_version(pkg: str) -> str:
    out = _run(["apt-cache", "policy", pkg]).stdout
    m = re.search(r"Candidate:\s*(\S+)", out)
    if not m or m.group(1) == "(none)":
        with _cache_lock("apt.lock"):
            _run(["apt-get", "update", "-qq"], env=_apt_env())
        out = _run(["apt-cache", "policy", pkg]).stdout
        m = re.search(r"Candidate:\s*(\S+)", out)
    if not m or m.group(1) == "(none)":
        raise HarnessError(f"apt: no installable version of {pkg}")
    return m.group(1)


def unpacked_package(pkg: str) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` into the cache; returns the unpacked root."""
    version = _candidate_version(pkg)
    root = E2E_CACHE / "pkgs" / f"{pkg}_{version.replace(':', '%3a')}"
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # One unpacker at a time: a parallel run's rmtree of a root another run already
    # uses (sshd, Xen's binary), or its rename onto a fresh one, would fail either.
    with _cache_lock("pkgs/.unpack.lock"):
        if not (root / ".complete").exists():
            _unpack(pkg, version, root)
    return root


def _unpack(pkg: str, version: str, root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        _run(["apt-get", "download", "-qq", f"{pkg}={version}"], cwd=tmp)
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise HarnessError(f"apt-get download {pkg}: expected one .deb, found {debs}")
        staging = Path(tmp) / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(staging)])
        (staging / ".complete").write_text(version + "\n")
        if root.exists():
            shutil.rmtree(root)  # an unpack that never completed
        staging.rename(root)


@dataclasses.dataclass(frozen=True)
class Assets:
    """Everything a boot needs, all under the cache (or /usr for apt-installed tools)."""

    xen_elf: Path
    kernel: Path
    modules: Path  # .../lib/modules/<release>
    busybox: Path
    kexec: Path
    makedumpfile: Path
    scanner: Path
    qemu: Path

    @property
    def kernel_release(self) -> str:
        return self.modules.name


def _kernel() -> Path:
    out = _run(["bash", str(REPO / "scripts" / "fetch-test-kernel.sh")]).stdout.strip()
    return Path(out.splitlines()[-1])


def _xen_elf(xen_root: Path) -> Path:
    gz = sorted((xen_root / "boot").glob("xen-4.17*-amd64.gz"))
    if not gz:
        raise HarnessError(f"{xen_root}/boot: no xen-4.17*-amd64.gz in the unpacked package")
    elf = E2E_CACHE / (gz[0].name.removesuffix(".gz") + ".elf")
    if not elf.exists():
        # QEMU's multiboot loader takes the ELF, not the gzip (docs/lab.md §2).
        xenbin.unpack(gz[0], elf.with_suffix(".tmp")).rename(elf)
    return elf


def _scanner() -> Path:
    """The vmcore token scanner, compiled static at test time (busybox grep is OOM-killed)."""
    src = HERE / "vmcore_scan.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    out = E2E_CACHE / f"vmcore_scan-{digest}"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        _run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(tmp), str(src)])
        tmp.rename(out)
    return out


@functools.cache
def prepare_assets() -> Assets:
    """Install and cache what the boots need (once per process)."""
    E2E_CACHE.mkdir(parents=True, exist_ok=True)
    ensure_apt_packages()
    xen_root = unpacked_package("xen-hypervisor-4.17-amd64")
    kexec_root = unpacked_package("kexec-tools")
    kernel = _kernel()
    release = kernel.name.removeprefix("vmlinuz-")
    modules = kernel.parents[1] / "lib" / "modules" / release
    if not modules.is_dir():
        raise HarnessError(f"{modules}: the kernel's modules are missing")
    assets = Assets(
        xen_elf=_xen_elf(xen_root),
        kernel=kernel,
        modules=modules,
        busybox=Path("/bin/busybox"),
        kexec=kexec_root / "sbin" / "kexec",
        makedumpfile=Path("/usr/bin/makedumpfile"),
        scanner=_scanner(),
        qemu=Path("/usr/bin/qemu-system-x86_64"),
    )
    for field in dataclasses.fields(assets):
        path = getattr(assets, field.name)
        if not path.exists():
            raise HarnessError(f"{field.name}: {path} does not exist after installation")
    return assets


# ---------------------------------------------------------------------------
# initramfs images (the product's cpio writer, xenkdump/selftest/cpio.py)


def _busybox_base(assets: Assets, init_script: Path) -> Initramfs:
    fs = Initramfs()
    fs.add_host_file("bin/busybox", assets.busybox, 0o755)
    fs.add_symlink("bin/sh", "busybox")
    fs.add_file("init", init_script.read_bytes(), 0o755)
    for d in ("proc", "sys", "dev", "tmp", "mnt", "host", "etc"):
        fs.add_dir(d)
    return fs


def build_dom0_initramfs(assets: Assets, dest: Path) -> Path:
    fs = _busybox_base(assets, HERE / "dom0-init.sh")
    names = []
    for rel in DOM0_MODULES:
        mod = assets.modules / rel
        if not mod.exists():
            raise HarnessError(f"{mod}: dom0 module missing from the kernel package")
        fs.add_host_file(f"lib/xk/{mod.name}", mod, 0o644)
        names.append(mod.name)
    fs.add_file("etc/xk-modules", ("\n".join(names) + "\n").encode())
    return fs.write_gz(dest)


def _ldd_libs(binary: Path) -> list[Path]:
    out = _run(["ldd", str(binary)]).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def token_needle(token: bytes) -> str:
    """The scanner's argument: the token with every byte inverted, in hex.

    The crash initramfs then never holds the token itself, so a match in
    /proc/vmcore can only come from dom0's memory.
    """
    return bytes(b ^ 0xFF for b in token).hex()


def build_crash_initramfs(assets: Assets, dest: Path, *, marker: str, token: bytes) -> Path:
    """busybox + scanner + makedumpfile (with its shared libraries) + crash-init.sh."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", marker):
        raise HarnessError(f"crash marker {marker!r}: expected 1-32 characters [A-Za-z0-9_-]")
    fs = _busybox_base(assets, HERE / "crash-init.sh")
    fs.add_host_file("bin/vmcore_scan", assets.scanner, 0o755)
    fs.add_host_file("bin/makedumpfile", assets.makedumpfile, 0o755)
    for lib in _ldd_libs(assets.makedumpfile):
        fs.add_host_file(str(lib), lib, 0o755)
        if lib.name.startswith("ld-linux"):
            # Debian's interpreter path is /lib64/ld-linux-x86-64.so.2.
            fs.add_host_file("lib64/" + lib.name, lib, 0o755)
    conf = (
        f"XK_MARKER={marker}\nXK_NEEDLE={token_needle(token)}\n"
        f"XK_KMSG=xenkdump-kmsg-{token.hex()[:16]}\n"
    )
    fs.add_file("etc/xk.conf", conf.encode())
    return fs.write_gz(dest)


# ---------------------------------------------------------------------------
# Jobs and boots


@dataclasses.dataclass
class Job:
    """A scratch directory shared with dom0: ``scenario.sh`` in, ``out/`` back."""

    dir: Path

    @property
    def out(self) -> Path:
        return self.dir / "out"

    @classmethod
    def create(cls) -> Job:
        d = Path(tempfile.mkdtemp(prefix="xenkdump-e2e.", dir=WORK_PARENT))
        d.chmod(0o755)
        (d / "out").mkdir()
        return cls(d)

    def write_scenario(self, body: str, env: Mapping[str, str] | None = None) -> Path:
        lines = ["#!/bin/sh", "# written by tests/e2e/e2e_harness.py; runs in dom0's chroot"]
        lines.append(f"JOB={self.dir}")
        lines.append(f"OUT={self.out}")
        for k, v in (env or {}).items():
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", k) or "'" in v:
                raise HarnessError(f"scenario env {k!r}: unsafe name or value")
            lines.append(f"{k}='{v}'")
        lines.append(body)
        path = self.dir / "scenario.sh"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o755)
        return path

    def read_out(self, name: str) -> str:
        p = self.out / name
        return p.read_text(errors="replace") if p.exists() else ""

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclasses.dataclass
class Boot:
    """What one QEMU run left behind."""

    serial: str
    returncode: int | None  # None: killed at the timeout
    elapsed: float
    timed_out: bool  # killed at the timeout, or silent too long after the crash
    stopped_on: str | None  # the end marker that made us stop QEMU

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.serial.splitlines()[-lines:])

    def section(self, start: str, lines: int = 80) -> str:
        """The serial log from the first line containing ``start`` (the relevant part)."""
        all_lines = self.serial.splitlines()
        for i, line in enumerate(all_lines):
            if start in line:
                return "\n".join(all_lines[i : i + lines])
        return self.tail(lines)


def qemu_command(
    assets: Assets,
    dom0_initrd: Path,
    job: Job,
    serial: Path,
    *,
    xen_extra: str = "",
    disks: tuple[Path, ...] = (),
    user_net: bool = False,
) -> list[str]:
    """The product's Xen machine (xenkdump/selftest/qemu.py) with the lab's shares."""
    # The kernel hands unknown key=value words to /init as environment variables.
    dom0_cmdline = f"console=hvc0 earlyprintk=xen xk_job={job.dir} xk_repo={REPO}"
    machine = XenMachine(
        xen=assets.xen_elf,
        xen_cmdline=xen_cmdline(dom0_mib=DOM0_MIB, crashkernel=CRASHKERNEL, extra=xen_extra),
        dom0_kernel=assets.kernel,
        dom0_cmdline=dom0_cmdline,
        dom0_initrd=dom0_initrd,
        memory_mib=MEMORY_MIB,
        serial=serial,
        shares=(Share(Path("/"), "hostroot"), Share(job.out, "xkout", readonly=False)),
        # raw virtio disks (a dump target): /dev/vda, /dev/vdb, ...
        disks=tuple(Disk(d) for d in disks),
        # a virtio NIC on QEMU's user-mode network (DHCP; USER_NET_HOST is our loopback)
        user_net=user_net,
    )
    return xen_argv(str(assets.qemu), machine)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the QEMU process group, then SIGKILL; always reaps (no strays)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def boot(
    assets: Assets,
    job: Job,
    *,
    timeout: float = 300.0,
    end_markers: tuple[str, ...] = (DOM0_END, CRASH_END),
    grace: float = 2.0,
    stall: float = 90.0,
    xen_extra: str = "",
    disks: tuple[Path, ...] = (),
    user_net: bool = False,
) -> Boot:
    """Boot Xen + dom0 once, run ``job``'s scenario, stop QEMU at an end marker or timeout.

    ``disks``: raw images attached as virtio disks (dom0 and the crash kernel see them);
    ``user_net``: a virtio NIC on QEMU's user-mode network (qemu_command).
    """
    dom0_initrd = build_dom0_initramfs(assets, job.dir / "dom0.cpio.gz")
    serial = job.dir / "serial.log"
    serial.touch()
    cmd = qemu_command(
        assets, dom0_initrd, job, serial, xen_extra=xen_extra, disks=disks, user_net=user_net
    )
    (job.dir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
    with _one_qemu_at_a_time():
        return _run_qemu(
            cmd, job, serial, timeout=timeout, end_markers=end_markers, grace=grace, stall=stall
        )


@contextlib.contextmanager
def _one_qemu_at_a_time() -> Iterator[None]:
    """The machine has two shared cores: boots from parallel runs wait their turn."""
    with _cache_lock("qemu.lock"):
        yield


def _run_qemu(
    cmd: list[str],
    job: Job,
    serial: Path,
    *,
    timeout: float,
    end_markers: tuple[str, ...],
    grace: float,
    stall: float,
) -> Boot:
    stopped_on: str | None = None
    timed_out = False
    start = time.monotonic()
    last_size, last_growth = 0, start
    with (job.dir / "qemu.stderr").open("wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
    try:
        while proc.poll() is None:
            text = serial.read_text(errors="replace")
            hit = next((m for m in end_markers if m in text), None)
            if hit is not None:
                stopped_on = hit
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)  # let poweroff finish on its own
                break
            now = time.monotonic()
            if len(text) != last_size:
                last_size, last_growth = len(text), now
            # Once Xen has jumped to the crash image, silence means it will not boot.
            stalled = CRASH_START in text and now - last_growth > stall
            if now - start > timeout or stalled:
                timed_out = True
                break
            time.sleep(0.5)
    finally:
        _kill_group(proc)
    elapsed = time.monotonic() - start
    text = serial.read_text(errors="replace")
    if stopped_on is None and not timed_out:
        # QEMU may power off by itself before the poll saw the marker.
        stopped_on = next((m for m in end_markers if m in text), None)
    stderr = (job.dir / "qemu.stderr").read_text(errors="replace").strip()
    if stderr:
        text += "\n[qemu stderr]\n" + stderr
    rc = None if timed_out else proc.returncode
    return Boot(text, rc, elapsed, timed_out, stopped_on)


def clean_log(text: str) -> str:
    """Serial text without carriage returns and terminal escapes."""
    text = text.replace("\r", "")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def markers(text: str, prefix: str) -> list[str]:
    """Every ``prefix ...`` line's payload, in order (e.g. prefix 'XK-CRASH:')."""
    out = []
    for line in clean_log(text).splitlines():
        i = line.find(prefix)
        if i >= 0:
            out.append(line[i + len(prefix) :].strip())
    return out
