"""The Debian package, built and installed the way an administrator meets it.

Every root comes from mmdebstrap with Debian's own packages; the .deb files it
downloads are kept per release under /var/cache/xenkdump-tests/debs/<release>
(synced in and out around each run), so a second run downloads only what changed.

* ``build_on_host``: ``scripts/build-deb.sh`` from a clean clone of the checkout on
  this machine (Debian 12), then lintian.
* ``build_in_root``: the same source built in a fresh ``buildd`` root of a release
  (``apt-get build-dep`` + ``dpkg-buildpackage -us -uc -b``), linted by that
  release's lintian.
* ``install_root``: a fresh root of a release, ``apt install ./xenkdump_*.deb`` with
  the dependencies resolved by apt, the checks of package-check.sh, two purge cycles
  (nothing may be left) and a final install; the root is kept as a directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("XENKDUMP_CACHE", "/var/cache/xenkdump-tests"))
DEB_CACHE = CACHE / "debs"
WORK_PARENT = Path("/var/tmp")
RELEASES = ("bookworm", "trixie")
# Debian's own tools only: a python3 earlier on PATH (pyenv, a venv) must not build.
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Enough of a system to boot with systemd as init later; the rest comes from the
# package's own dependencies.
INSTALL_ROOT_PACKAGES = ("systemd-sysv",)
# Installed after the package's checks, so that the root boots as a real dom0: that
# release's Xen with its toolstack (xen.service mounts xenfs) and kernel.
DOM0_SYSTEM = ("xen-system-amd64", "linux-image-amd64")
# For the boot's other steps, not for xenkdump (its capture must not use them): the
# contract suite runs there with that release's pytest and hypothesis;
# qemu-system-x86 and e2fsprogs (the package's Suggests: the VM and its scratch disk)
# for a self-test under the real unit; a minimal root has neither.
TEST_ONLY_PACKAGES = ("python3-pytest", "python3-hypothesis", "qemu-system-x86", "e2fsprogs")
DOM0_PACKAGES = (*DOM0_SYSTEM, *TEST_ONLY_PACKAGES)


class PackageLabError(RuntimeError):
    """A build, install or purge step failed; the message quotes its log."""


@dataclasses.dataclass(frozen=True)
class Built:
    release: str
    deb: Path
    lintian: str  # lintian's output ("" when clean)
    seconds: float


def _ensure_tools() -> None:
    missing = [t for t in ("mmdebstrap", "lintian", "dpkg-buildpackage") if not shutil.which(t)]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=CLEAN_PATH)
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            [
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "mmdebstrap",
                "lintian",
                "dpkg-dev",
                "git",
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def source_tarball(dest: Path) -> Path:
    """The committed tree (HEAD) of the checkout, as a clean clone would have it."""
    tar = dest / "xenkdump-src.tar"
    subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "archive",
            "--format=tar",
            "--prefix=src/",
            "-o",
            str(tar),
            "HEAD",
        ],
        check=True,
    )
    return tar


def _mmdebstrap(release: str, target: str, args: list[str], hooks: list[str], log: Path) -> str:
    """One mmdebstrap run with the per-release .deb cache; returns its output."""
    cache = DEB_CACHE / release
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {cache} /var/cache/apt/archives/",
        *args,
        *(f"--customize-hook={h}" for h in hooks),
        f"--customize-hook=sync-out /var/cache/apt/archives {cache}",
        release,
        target,
    ]
    env = dict(os.environ, PATH=CLEAN_PATH, LC_ALL="C.UTF-8")
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, check=False
    )
    log.write_text(proc.stdout)
    if proc.returncode != 0:
        raise PackageLabError(f"mmdebstrap {release} failed ({log}):\n{_tail(proc.stdout)}")
    return proc.stdout


def lint(changes: Path) -> str:
    """lintian's output for a .changes (pedantic; errors, warnings, info, pedantic)."""
    proc = subprocess.run(
        ["lintian", "--pedantic", "--display-info", str(changes)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PATH=CLEAN_PATH),
    )
    out = "\n".join(line for line in proc.stdout.splitlines() if line.strip())
    if proc.returncode not in (0, 1) and not out:
        raise PackageLabError(f"lintian failed: {proc.stderr.strip()}")
    return out


def build_on_host(dest: Path) -> Built:
    """scripts/build-deb.sh in a clean clone of HEAD, on this (Debian 12) machine."""
    _ensure_tools()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=WORK_PARENT, prefix="xenkdump-clone.") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "-q", _head()], check=True)
        proc = subprocess.run(
            ["bash", str(clone / "scripts" / "build-deb.sh"), str(dest)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise PackageLabError(f"build-deb.sh failed:\n{_tail(proc.stdout + proc.stderr)}")
    [deb] = dest.glob("xenkdump_*_amd64.deb")
    [changes] = dest.glob("xenkdump_*_amd64.changes")
    return Built("host", deb, lint(changes), time.monotonic() - start)


def _head() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def build_in_root(release: str, dest: Path) -> Built:
    """Build HEAD in a fresh buildd root of ``release``; lint it with that release's lintian."""
    _ensure_tools()
    start = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK_PARENT, prefix=f"xenkdump-build-{release}.") as t:
        tmp = Path(t)
        src = source_tarball(tmp)
        out = tmp / "out"
        script = (
            "set -e; export DEBIAN_FRONTEND=noninteractive; cd /build; tar xf xenkdump-src.tar; "
            "apt-get build-dep -y -q ./src >/build/build-dep.log 2>&1 || "
            "{ tail -20 /build/build-dep.log; exit 1; }; "
            "cd src; dpkg-buildpackage -us -uc -b >/build/build.log 2>&1 || "
            "{ tail -40 /build/build.log; exit 1; }; "
            "mkdir -p /build/out; cp ../*.deb ../*.changes ../*.buildinfo /build/out/; "
            "lintian --pedantic --display-info ../*.changes >/build/out/lintian.txt 2>&1 || true"
        )
        _mmdebstrap(
            release,
            "/dev/null",
            ["--variant=buildd", "--include=lintian"],
            [
                'mkdir -p "$1"/build',
                f"copy-in {src} /build",
                f"chroot \"$1\" sh -c '{script}'",
                "copy-out /build/out " + str(tmp),
            ],
            dest / f"build-{release}.log",
        )
        for f in out.iterdir():
            shutil.copy2(f, dest / f.name)
    [deb] = dest.glob("xenkdump_*_amd64.deb")
    lintian = "\n".join(
        line
        for line in (dest / "lintian.txt").read_text().splitlines()
        if line.strip() and "running with root privileges" not in line
    )
    return Built(release, deb, lintian, time.monotonic() - start)


@dataclasses.dataclass(frozen=True)
class Installed:
    release: str
    root: Path  # a directory: the root with the package installed
    report: list[str]  # package-check.sh's XK-PKG: lines
    seconds: float


def install_root(release: str, deb: Path, kernel: Path, root: Path, log: Path) -> Installed:
    """A fresh root of ``release`` with the package installed by apt, checked and purged."""
    _ensure_tools()
    start = time.monotonic()
    if root.exists():
        shutil.rmtree(root)
    dom0 = (
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
        f"{' '.join(DOM0_PACKAGES)} >/root/xk/dom0.log 2>&1 || "
        "{ tail -n 30 /root/xk/dom0.log; exit 1; }; "
        "echo XK-PKG: dom0 $(ls /boot)"
    )
    out = _mmdebstrap(
        release,
        str(root),
        ["--variant=apt", f"--include={','.join(INSTALL_ROOT_PACKAGES)}"],
        [
            'mkdir -p "$1"/root/xk',
            f"copy-in {deb} /root/xk",
            f"copy-in {kernel} /root/xk",
            f"copy-in {HERE / 'package-check.sh'} /root/xk",
            f'chroot "$1" sh /root/xk/package-check.sh /root/xk/{deb.name} /root/xk/{kernel.name}',
            f"chroot \"$1\" sh -c '{dom0}'",
            'rm -rf "$1"/root/xk',
        ],
        log,
    )
    report = [m.group(1) for m in re.finditer(r"^XK-PKG: (.*)$", out, re.M)]
    return Installed(release, root, report, time.monotonic() - start)
