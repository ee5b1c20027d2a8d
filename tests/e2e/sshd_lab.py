"""An SSH dump server for the lab: OpenSSH's sshd on this machine's loopback, per run.

Nothing is installed or started for good: Debian's openssh-server package is unpacked
into the cache (``dpkg-deb -x``, no service, no host keys in /etc/ssh), and sshd runs
as a child of the test in the foreground (``-D -e``) on a free loopback port, with a
host key, a client key and an ``authorized_keys`` generated under the job directory.
It runs in a private mount namespace whose ``/etc/passwd`` names the ``sshd``
privilege-separation user and whose ``/run`` is a fresh tmpfs holding ``/run/sshd``
(this machine has neither, and must keep it that way).

The crash kernel reaches it only through QEMU's user-mode network: the guest's
10.0.2.2 is the host's loopback (e2e_harness.USER_NET_HOST), so the pinned host key
is written for ``[10.0.2.2]:PORT``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from e2e_harness import (
    USER_NET_HOST,
    HarnessError,
    _kill_group,
    ensure_apt_packages,
    unpacked_package,
)

# Libraries the unpacked sshd links with that a machine without openssh-server may lack.
SSHD_LIBRARIES = {"libwrap.so.0": "libwrap0"}
SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
LogLevel VERBOSE
"""


@dataclasses.dataclass(frozen=True)
class SshServer:
    """A running sshd: where it listens and the files a client needs."""

    port: int
    user: str
    client_key: Path  # the private key the crash side logs in with
    known_hosts: Path  # the server's host key pinned for [10.0.2.2]:PORT
    log: Path  # sshd's own log (-e: to stderr)

    @property
    def destination(self) -> str:
        return f"{self.user}@{USER_NET_HOST}"


def _sshd_binary() -> Path:
    ensure_apt_packages(("openssh-client",))  # ssh-keygen
    sshd = unpacked_package("openssh-server") / "usr" / "sbin" / "sshd"
    missing = [
        line.split()[0]
        for line in subprocess.run(
            ["ldd", str(sshd)], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        if "not found" in line
    ]
    unknown = [lib for lib in missing if lib not in SSHD_LIBRARIES]
    if unknown:
        raise HarnessError(f"{sshd}: needs {', '.join(unknown)}, not installed")
    ensure_apt_packages(tuple(SSHD_LIBRARIES[lib] for lib in missing))
    return sshd


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xenkdump-e2e", "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> bool:
    """True once this sshd says it listens on ``port`` (then a connection reaches it:
    nothing else can hold the port); False when it could not bind it (another process
    took the free port meanwhile)."""
    listening = f"Server listening on 127.0.0.1 port {port}."
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            if "Address already in use" in text:
                return False
            raise HarnessError(f"sshd exited ({proc.returncode}): {text[-1500:]}")
        if listening in text:
            with socket.create_connection(("127.0.0.1", port), 10):
                return True
        time.sleep(0.2)
    raise HarnessError(f"sshd did not listen on 127.0.0.1:{port}: {log.read_text()[-1500:]}")


@contextlib.contextmanager
def sshd(work: Path) -> Iterator[SshServer]:
    """sshd on 127.0.0.1:<free port>, its files under ``work``; stopped and reaped at exit.

    The port is free when chosen but not held until sshd binds it: when another process
    takes it meanwhile, sshd is started again on another one.
    """
    sshd_bin = _sshd_binary()
    work.mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(work / "host_key")
    client_pub = _keygen(work / "id_capture")
    # restrict: no pty, no forwarding; commands only (the agent needs nothing else).
    (work / "authorized_keys").write_text(f"restrict {client_pub}\n")
    passwd = work / "passwd"
    shutil.copy("/etc/passwd", passwd)
    with passwd.open("a") as f:
        f.write("sshd:x:65534:65534:sshd privilege separation:/run/sshd:/usr/sbin/nologin\n")
    script = (
        f"mount --bind {passwd} /etc/passwd && mount -t tmpfs -o mode=755 tmpfs /run && "
        f"mkdir -m 755 /run/sshd && exec {sshd_bin} -D -e -f {work / 'sshd_config'}"
    )
    log = work / "sshd.log"
    for _ in range(5):
        port = _free_port()
        (work / "sshd_config").write_text(SSHD_CONFIG.format(port=port, dir=work))
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        try:
            if _wait_listening(port, proc, log):
                break
        except BaseException:
            _kill_group(proc)
            raise
        _kill_group(proc)
    else:
        raise HarnessError(f"sshd: no free loopback port in 5 tries: {log.read_text()[-1500:]}")
    known = work / "known_hosts"
    known.write_text(f"[{USER_NET_HOST}]:{port} {host_pub.rsplit(' ', 1)[0]}\n")
    try:
        yield SshServer(port, "root", work / "id_capture", known, log)
    finally:
        # Each session is a new session (setsid): its processes are not in sshd's group.
        sessions = _descendants(proc.pid)
        _kill_group(proc)
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out
