"""The real xenkdumpd process on a private bus: golden introspection, behaviour, RSS.

``.venv/bin/xenkdumpd --config F --hypervisor sim:H`` owns org.xenkdump.Kdump1 on the
private dbus-daemon of the ``private_bus`` fixture (via DBUS_SYSTEM_BUS_ADDRESS);
the tests talk to it with tests/asyncclient.py, xenkdumpctl with its own client.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from busfixtures import listen, settle, with_client
from dbus_fast import Message, Variant

from asyncclient import DaemonClient
from xenkdump import __version__
from xenkdump.cli import cmd_daemon, ctl
from xenkdump.dbus import errors, names
from xenkdump.selftest.cpio import Initramfs
from xenkdump.status import INTERFACE_REVISION, Status

pytestmark = pytest.mark.kernel

XENKDUMPD = Path(sys.executable).parent / "xenkdumpd"
DATA = Path(__file__).parent / "data"
TIMEOUT = 60.0


def initrd_bytes() -> bytes:
    """A gzip'd newc cpio holding one /init: the smallest initrd Linux accepts."""
    fs = Initramfs()
    fs.add_file("init", b"#!/bin/sh\n", 0o755)
    return gzip.compress(fs.cpio(), mtime=0)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    config: Path
    kernel: Path
    log: Path
    address: str

    def stderr(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def _wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"xenkdumpd exited {proc.returncode}:\n{log.read_text()}")
        sock.settimeout(0.5)
        try:
            if b"READY=1" in sock.recv(65536):
                return
        except TimeoutError:
            continue
    raise AssertionError(f"xenkdumpd not ready after {TIMEOUT} s:\n{log.read_text()}")


def start_daemon(root: Path, address: str, name: str = "d") -> tuple[subprocess.Popen[bytes], Path]:
    log = root / f"{name}.log"
    sock_path = root / f"{name}.notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
    env.update(NOTIFY_SOCKET=str(sock_path), DBUS_SYSTEM_BUS_ADDRESS=address)
    argv = [str(XENKDUMPD), "--config", str(root / "xenkdump.yaml"), "--hypervisor"]
    with log.open("w") as err:
        proc = subprocess.Popen([*argv, f"sim:{root / 'host.yaml'}"], stderr=err, env=env)
    try:
        _wait_ready(sock, proc, log)
    except AssertionError:
        sock.close()
        stop(proc)
        raise
    sock.close()
    return proc, log


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def make_boot(root: Path, debian_kernel: Path) -> Path:
    """``root``/boot with Debian's kernel as vmlinuz-6.1.0-test and a small initrd;
    returns the kernel's path."""
    boot = root / "boot"
    boot.mkdir()
    kernel = boot / "vmlinuz-6.1.0-test"
    shutil.copyfile(debian_kernel, kernel)
    (boot / "initrd.img-6.1.0-test").write_bytes(initrd_bytes())
    return kernel


@pytest.fixture
def daemon(tmp_path: Path, debian_kernel: Path, private_bus: str) -> Iterator[Running]:
    kernel = make_boot(tmp_path, debian_kernel)
    boot = kernel.parent
    config = tmp_path / "xenkdump.yaml"
    config.write_text(
        f"kernel: {kernel}\ninitrd: {boot / 'initrd.img-6.1.0-test'}\n"
        "cmdline:\n  base: console=ttyS0\n  append: [irqpoll, nr_cpus=1]\n"
        f"state_dir: {tmp_path / 'state'}\nboot_dir: {boot}\n"
        "reload_debounce: 30\ntopology_check_interval: 3600\n"
    )
    proc, log = start_daemon(tmp_path, private_bus)
    running = Running(proc, config, kernel, log, private_bus)
    yield running
    assert stop(proc) == 0, running.stderr()
    assert "Traceback" not in running.stderr()


def test_golden_introspection_of_the_real_daemon(daemon: Running) -> None:
    async def work(c: DaemonClient) -> str:
        reply = await c.call_raw("Introspect", interface=names.INTROSPECTABLE)
        return str(reply.body[0])

    assert with_client(work) == (DATA / "org.xenkdump.Kdump1.introspect.xml").read_text()


def test_status_of_a_freshly_started_daemon(daemon: Running) -> None:
    async def work(c: DaemonClient) -> tuple[dict[str, object], dict[str, object]]:
        status = await c.get_status()
        return status, {name: await c.get_property(name) for name in status}

    status, each = with_client(work)
    assert status == each
    assert status["State"] == "loaded" and status["Generation"] == 1
    assert status["CrashKernel"] == str(daemon.kernel)
    assert status["DaemonVersion"] == __version__
    assert status["InterfaceRevision"] == INTERFACE_REVISION
    model = Status.from_json(status)
    (start, size), (ustart, usize) = model.crash_region, model.crash_region_used
    assert size > 0 and start <= ustart and ustart + usize <= start + size
    assert 0 < model.required_bytes <= usize
    assert abs(model.loaded_at / 1e6 - time.time()) < 600


def test_reload_force_loads_again_and_signals(daemon: Running) -> None:
    async def work(c: DaemonClient) -> tuple[dict[str, object], list[Message], list[Message]]:
        finished = await listen(c, "ReloadFinished")
        changed = await listen(c, "PropertiesChanged")
        status = await c.reload({"force": True, "reason": "test: forced"})
        await settle(finished)
        await settle(changed)
        return status, finished, changed

    status, finished, changed = with_client(work)
    assert status["Generation"] == 2 and status["State"] == "loaded"
    assert status["LastReloadReason"] == "test: forced"
    body = {k: v.value for k, v in finished[0].body[0].items()}
    assert body["Success"] is True and body["Generation"] == 2
    assert any("Generation" in m.body[1] for m in changed)


def test_bad_arguments_and_bad_config_are_named_errors(daemon: Running) -> None:
    good = daemon.config.read_text()

    async def work(c: DaemonClient) -> list[str]:
        out = []
        missing = str(daemon.kernel) + ".missing"
        for options in ({"forse": Variant("b", True)}, {"kernel": Variant("s", missing)}):
            try:
                await c.call("Reload", "a{sv}", [options])
            except errors.RemoteError as exc:
                out.append(f"{exc.name}|{exc}")
        daemon.config.write_text(good + "kernal: /boot/typo\n")
        try:
            await c.reload({})
        except errors.RemoteError as exc:
            out.append(f"{exc.name}|{exc}")
        out.append(str(await c.get_property("State")))
        daemon.config.write_text(good)
        return out

    unknown, missing, config, state = with_client(work)
    assert unknown.startswith(names.ERROR_INVALID_ARGS + "|") and "'forse'" in unknown
    assert missing.startswith(names.ERROR_IMAGE_INVALID + "|")
    assert missing.endswith(".missing: kernel not found")
    assert config.startswith(names.ERROR_INVALID_CONFIG + "|") and "kernal" in config
    assert state == "degraded"


def test_unload_then_reload(daemon: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_daemon.daemon_unload() == 0
    assert with_client(lambda c: c.get_property("State")) == "not-loaded"
    assert ctl.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "State:         not-loaded" in out
    status = with_client(lambda c: c.reload({}))
    assert status["State"] == "loaded"


def test_second_daemon_cannot_take_the_name(daemon: Running, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(daemon.config, other / "xenkdump.yaml")
    shutil.copyfile(tmp_path / "host.yaml", other / "host.yaml")
    with pytest.raises(AssertionError, match="exited 1") as info:
        start_daemon(other, daemon.address, "second")
    err = (other / "second.log").read_text().strip().splitlines()
    assert any("another process owns it" in line for line in err), info.value
    assert "Traceback" not in "\n".join(err)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _hammer(c: DaemonClient, calls: int, batch: int = 100) -> None:
    done = 0
    while done < calls:
        n = min(batch, calls - done)
        # Alternate GetStatus and a property Get, pipelined on one connection.
        await asyncio.gather(
            *(c.get_status() if i % 2 else c.get_property("State") for i in range(n))
        )
        done += n


def test_rss_stays_flat_over_50000_calls(daemon: Running) -> None:
    pid = daemon.proc.pid

    async def work(c: DaemonClient) -> tuple[int, int, float]:
        await _hammer(c, 5_000)
        before = _rss_kib(pid)
        t0 = time.monotonic()
        await _hammer(c, 50_000)
        return before, _rss_kib(pid), time.monotonic() - t0

    before, after, elapsed = with_client(work)
    print(f"RSS {before} KiB -> {after} KiB over 50,000 calls in {elapsed:.1f} s")
    assert after - before < 3 * 1024, f"RSS grew {after - before} KiB"


def _bus_pid(address: str) -> int:
    """The pid of the private dbus-daemon listening at ``address``."""
    directory = address.split("path=", 1)[1].split(",", 1)[0].rsplit("/", 1)[0]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"{directory}/bus.conf".encode() in argv:
                return int(proc.name)
    raise AssertionError(f"no dbus-daemon for {address}")


def test_losing_the_bus_exits_non_zero_and_keeps_the_image(
    tmp_path: Path, debian_kernel: Path, private_bus: str
) -> None:
    """systemd (Restart=on-failure) must restart a daemon that fell off the bus; the
    armed crash kernel is not touched on the way out."""
    boot = tmp_path / "boot"
    boot.mkdir()
    kernel = boot / "vmlinuz-6.1.0-test"
    shutil.copyfile(debian_kernel, kernel)
    (tmp_path / "xenkdump.yaml").write_text(
        f"kernel: {kernel}\ninitrd: none\ncmdline:\n  base: console=ttyS0\n"
        f"state_dir: {tmp_path / 'state'}\nboot_dir: {boot}\ntopology_check_interval: 3600\n"
    )
    proc, log = start_daemon(tmp_path, private_bus)
    record = (tmp_path / "state" / "state.json").read_bytes()
    os.kill(_bus_pid(private_bus), signal.SIGKILL)
    try:
        assert proc.wait(30) == 1, log.read_text()
    finally:
        stop(proc)
    assert "lost the D-Bus connection" in log.read_text()
    assert "Traceback" not in log.read_text()
    assert (tmp_path / "state" / "state.json").read_bytes() == record
    from xenkdump.hv.sim import SimulatedHypervisor  # noqa: PLC0415

    with SimulatedHypervisor.open(tmp_path / "host.yaml") as sim:
        assert sim.armed_image_intact(1)
