"""The real xenkdumpd process on a simulated host, with a real NOTIFY_SOCKET.

Each test starts ``.venv/bin/xenkdumpd --config F --hypervisor sim:H`` and watches what
it tells systemd (READY=1, STATUS=) on a datagram socket the test owns, the durable
record in the state directory and the simulated host's own state (its load counter
and whether the armed image's bytes are intact).
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import standin_mkinitramfs
from xenkdump.daemon.core import DaemonCore, State
from xenkdump.errors import FileWriteError, OperationError
from xenkdump.hv.port import KEXEC_TYPE_CRASH, AddressRange
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.requests import ReloadOptions
from xenkdump.selftest.cpio import Initramfs
from xenkdump.settings.load import load_settings
from xenkdump.state import record as record_mod
from xenkdump.state.record import RecordStore
from xenkdump.status import Status

XENKDUMPD = Path(sys.executable).parent / "xenkdumpd"
TIMEOUT = 60.0

pytestmark = pytest.mark.kernel


def newc_archive(files: dict[str, bytes]) -> bytes:
    """A gzip'd cpio (newc) archive: the initrd format Linux unpacks."""
    fs = Initramfs()
    for name, data in files.items():
        fs.add_file(name, data, 0o755)
    return gzip.compress(fs.cpio(), mtime=0)


@dataclass
class Host:
    """One test's world: a /boot, a config, a simulated host, a state directory."""

    root: Path
    boot: Path
    kernel: Path
    initrd: Path
    config: Path
    host_file: Path
    state_dir: Path
    debounce: float = 0.2
    interval: float = 60.0
    extra: str = ""

    def write_config(self, text: str | None = None) -> None:
        if text is None:
            text = (
                f"kernel: {self.kernel}\ninitrd: {self.initrd}\n"
                f"cmdline:\n  base: console=ttyS0\n  append: [irqpoll, nr_cpus=1]\n"
                f"state_dir: {self.state_dir}\nboot_dir: {self.boot}\n"
                f"reload_debounce: {self.debounce}\ntopology_check_interval: {self.interval}\n"
                f"{self.extra}"
            )
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(self.config)

    def record(self) -> dict[str, Any]:
        rec = RecordStore(self.state_dir).read()
        assert rec is not None
        return rec.to_json()

    def sim(self) -> SimulatedHypervisor:
        return SimulatedHypervisor.open(self.host_file)


@pytest.fixture
def host(tmp_path: Path, debian_kernel: Path) -> Host:
    boot = tmp_path / "boot"
    boot.mkdir()
    kernel = boot / "vmlinuz-6.1.0-test"
    shutil.copyfile(debian_kernel, kernel)
    initrd = boot / "initrd.img-6.1.0-test"
    initrd.write_bytes(newc_archive({"init": b"#!/bin/sh\necho crash kernel\n"}))
    h = Host(
        root=tmp_path,
        boot=boot,
        kernel=kernel,
        initrd=initrd,
        config=tmp_path / "etc" / "xenkdump.yaml",
        host_file=tmp_path / "host.yaml",
        state_dir=tmp_path / "state",
    )
    h.config.parent.mkdir()
    h.write_config()
    return h


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    sock: socket.socket
    messages: list[str] = field(default_factory=list)
    stderr_path: Path | None = None

    def _drain(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        self.messages.append(data.decode())

    def mark(self) -> int:
        """Where the notifications seen so far end (``since=`` of a later wait)."""
        return len(self.messages)

    def wait_for(
        self,
        predicate: Callable[[str], bool],
        what: str,
        timeout: float = TIMEOUT,
        since: int = 0,
    ) -> str:
        """The first notification that satisfies ``predicate``: from now on, or already
        seen after the first ``since`` (a status the daemon comes back to must be new)."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(
                    f"xenkdumpd exited ({code}) waiting for {what}:\n{self.stderr()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out waiting for {what}; got {self.messages}\n{self.stderr()}"
                )
            self._drain(min(left, 0.5))

    def wait_status(self, text: str, timeout: float = TIMEOUT, since: int = 0) -> str:
        return self.wait_for(
            lambda m: f"STATUS={text}" in m, f"STATUS containing {text!r}", timeout, since
        )

    def stderr(self) -> str:
        return (
            self.stderr_path.read_text() if self.stderr_path and self.stderr_path.exists() else ""
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start(host: Host, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def _start(
        *extra: str,
        use_bus: bool = False,
        env: dict[str, str] | None = None,
        program: Sequence[str] = (str(XENKDUMPD),),
    ) -> Daemon:
        n = len(started)
        sock_path = tmp_path / f"notify{n}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        stderr_path = tmp_path / f"xenkdumpd{n}.log"
        environ = {
            k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")
        }
        environ["NOTIFY_SOCKET"] = str(sock_path)
        environ.update(env or {})
        args = [
            *program,
            "--config",
            str(host.config),
            "--hypervisor",
            f"sim:{host.host_file}",
        ]
        if not use_bus:
            args.append("--no-bus")
        with stderr_path.open("w") as err:
            proc = subprocess.Popen(
                [*args, *extra], stderr=err, stdout=subprocess.DEVNULL, env=environ, text=True
            )
        d = Daemon(proc, sock, stderr_path=stderr_path)
        started.append(d)
        return d

    yield _start
    for d in started:
        d.stop()
        d.sock.close()


def loads(sim: SimulatedHypervisor) -> int:
    return sim.call_counts(KEXEC_TYPE_CRASH)[0]


def test_ready_only_after_the_first_load(host: Host, start: Callable[..., Daemon]) -> None:
    d = start()
    ready = d.wait_for(lambda m: "READY=1" in m, "READY=1")
    assert "STATUS=loaded: crash kernel armed (generation 1)" in ready
    before = d.messages[: d.messages.index(ready)]
    assert before and all("READY=1" not in m for m in before)
    assert any(m.startswith("STATUS=starting") for m in before)
    rec = host.record()
    assert rec["generation"] == 1 and rec["kernel"] == str(host.kernel)
    assert rec["reason"].startswith("start: location of any armed image unknown (no record)")
    sim = host.sim()
    assert loads(sim) == 1 and sim.armed_image_intact(KEXEC_TYPE_CRASH)
    assert d.stop() == 0
    # Stopping never unloads.
    assert host.sim().armed_image(KEXEC_TYPE_CRASH) is not None


def test_kernel_replaced_by_rename_reloads(host: Host, start: Callable[..., Daemon]) -> None:
    d = start()
    d.wait_for(lambda m: "READY=1" in m, "READY=1")
    first = host.record()
    new = host.boot / ".vmlinuz.new"
    new.write_bytes(host.kernel.read_bytes() + b"\0" * 4096)  # a rebuilt kernel: new bytes
    new.rename(host.kernel)  # as dpkg does: a new inode renamed over the old name
    d.wait_status("loaded: crash kernel armed (generation 2)")
    rec = host.record()
    assert rec["kernel_sha256"] != first["kernel_sha256"]
    assert str(host.kernel) in str(rec["reason"])
    assert rec["half"] != first["half"]  # two halves: the armed one was never touched
    sim = host.sim()
    assert loads(sim) == 2 and sim.armed_image_intact(KEXEC_TYPE_CRASH)


def test_touch_without_change_does_not_reload(host: Host, start: Callable[..., Daemon]) -> None:
    d = start()
    d.wait_for(lambda m: "READY=1" in m, "READY=1")
    os.utime(host.kernel)  # IN_ATTRIB: same bytes
    time.sleep(host.debounce + 1.0)
    assert loads(host.sim()) == 1
    assert host.record()["generation"] == 1


def test_sighup_rereads_config_and_reloads(host: Host, start: Callable[..., Daemon]) -> None:
    host.debounce = 30.0  # the watcher would wait 30 s: only SIGHUP can cause this reload
    host.write_config()
    d = start()
    d.wait_for(lambda m: "READY=1" in m, "READY=1")
    host.write_config(host.config.read_text().replace("nr_cpus=1]", "nr_cpus=1, panic=5]"))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_status("loaded: crash kernel armed (generation 2)", timeout=20)
    assert "panic=5" in str(host.record()["cmdline"])


def test_bad_config_on_reload_keeps_image_and_settings(
    host: Host, start: Callable[..., Daemon]
) -> None:
    d = start()
    d.wait_for(lambda m: "READY=1" in m, "READY=1")
    good = host.config.read_text()
    loaded = d.mark()
    host.write_config(good + "kernal: /boot/typo\n")
    status = d.wait_status("degraded", since=loaded)
    assert f"{host.config}:" in status and "kernal: unknown key" in status
    sim = host.sim()
    assert loads(sim) == 1 and sim.armed_image_intact(KEXEC_TYPE_CRASH)
    assert host.record()["generation"] == 1
    assert d.proc.poll() is None
    degraded = d.mark()
    host.write_config(good)  # fixed: back to loaded without a new load
    d.wait_status("loaded: crash kernel armed (generation 1)", since=degraded)
    assert loads(host.sim()) == 1


def test_crash_initramfs_that_cannot_be_built_keeps_image_and_degrades(
    host: Host, start: Callable[..., Daemon]
) -> None:
    d = start()
    d.wait_for(lambda m: "READY=1" in m, "READY=1")
    good = host.config.read_text()
    missing = host.root / "no-such-dir"
    # initrd: xenkdump with a local target that does not exist: the build is refused.
    loaded = d.mark()
    host.write_config(
        good.replace(f"initrd: {host.initrd}", "initrd: xenkdump") + f"dump:\n  path: {missing}\n"
    )
    status = d.wait_status("degraded", since=loaded)
    assert f"dump target {missing}: " in status  # the preflight or the failed build
    sim = host.sim()
    assert loads(sim) == 1 and sim.armed_image_intact(KEXEC_TYPE_CRASH)
    assert host.record()["generation"] == 1
    assert d.proc.poll() is None
    degraded = d.mark()
    host.write_config(good)
    d.wait_status("loaded: crash kernel armed (generation 1)", since=degraded)


def test_dropins_created_live_reload_and_a_bad_one_degrades(
    host: Host, start: Callable[..., Daemon]
) -> None:
    d = start()
    d.wait_for(lambda m: "READY=1" in m, "READY=1")
    dropins = host.config.parent / "xenkdump.yaml.d"  # created while the daemon runs
    dropins.mkdir()
    tmp = dropins / ".50-panic.yaml.tmp"
    tmp.write_text("cmdline:\n  append: [irqpoll, nr_cpus=1, panic=5]\n")
    tmp.rename(dropins / "50-panic.yaml")
    d.wait_status("loaded: crash kernel armed (generation 2)", timeout=20)
    assert "panic=5" in str(host.record()["cmdline"])
    bad = dropins / "60-bad.yaml"
    loaded = d.mark()
    bad.write_text("\nreload_debounce: soon\n")
    status = d.wait_status("degraded", since=loaded)
    assert f"{bad}:2: reload_debounce: expected a number of seconds" in status
    sim = host.sim()
    assert loads(sim) == 2 and sim.armed_image_intact(KEXEC_TYPE_CRASH)
    degraded = d.mark()
    bad.unlink()  # removed: the old settings were right all along
    d.wait_status("loaded: crash kernel armed (generation 2)", since=degraded)
    assert loads(host.sim()) == 2


def test_kill9_then_restart_adopts_without_loading(
    host: Host, start: Callable[..., Daemon]
) -> None:
    d = start()
    d.wait_for(lambda m: "READY=1" in m, "READY=1")
    d.proc.kill()
    d.proc.wait()
    assert loads(host.sim()) == 1
    d2 = start()
    ready = d2.wait_for(lambda m: "READY=1" in m, "READY=1")
    assert "STATUS=loaded: crash kernel armed (generation 1)" in ready
    assert loads(host.sim()) == 1  # adopted: no load issued
    assert "adopted generation 1" in d2.stderr()


def test_record_disagreeing_with_parity_unloads_then_loads(
    host: Host, start: Callable[..., Daemon]
) -> None:
    d = start()
    d.wait_for(lambda m: "READY=1" in m, "READY=1")
    d.stop()
    # Another tool (kexec -p -u, then kexec -p) acts behind our back: Xen's parity
    # flips, and where its image lives is unknown -- no half may be guessed.
    with host.sim() as sim:
        sim.kexec_unload(KEXEC_TYPE_CRASH)
        before = sim.call_counts(KEXEC_TYPE_CRASH)
    d2 = start()
    ready = d2.wait_for(lambda m: "READY=1" in m, "READY=1")
    assert "STATUS=loaded: crash kernel armed (generation 2)" in ready
    assert "another tool loaded or unloaded" in str(host.record()["reason"])
    assert "window without a crash kernel" in d2.stderr()
    with host.sim() as sim:
        assert sim.call_counts(KEXEC_TYPE_CRASH) == (before[0] + 1, before[1] + 1)
        assert sim.armed_image_intact(KEXEC_TYPE_CRASH)


def test_topology_change_rebuilds_only_the_core_header(host: Host) -> None:
    # In process: a new possible CPU (a note buffer) is a boot-time fact for the
    # simulator's file, so it is set on the open simulator's host (the process test
    # below hot-plugs memory through the file).
    settings = load_settings(host.config)

    def one_more_cpu(sim: SimulatedHypervisor) -> None:
        last = sim.host.cpu_notes[-1]
        sim.host = sim.host._replace(
            cpu_notes=(*sim.host.cpu_notes, AddressRange(last.start + 0x1000, last.size)),
        )

    async def scenario() -> None:
        with host.sim() as sim:
            core = DaemonCore(sim, settings, config_path=host.config)
            await core.start()
            first = host.record()
            await core.check_host()  # nothing changed: no load
            await core.wait_idle()
            assert host.record()["generation"] == 1
            one_more_cpu(sim)
            await core.check_host()
            assert core.status().state == State.DEGRADED  # stale header until the rebuild lands
            await core.wait_idle()
            snap = core.status()
            assert snap.state == State.LOADED and snap.generation == 2
            second = host.record()
            assert second["kernel_sha256"] == first["kernel_sha256"]
            assert second["host_fingerprint"] != first["host_fingerprint"]
            assert "host CPUs or memory map changed" in str(second["reason"])
            seg1 = {s["kind"]: s["sha256"] for s in first["segments"]}
            seg2 = {s["kind"]: s["sha256"] for s in second["segments"]}
            assert seg2["kernel"] == seg1["kernel"] and seg2["initrd"] == seg1["initrd"]
            assert seg2["elfcorehdr"] != seg1["elfcorehdr"]
            assert sim.armed_image_intact(KEXEC_TYPE_CRASH)
            # The daemon keeps no file bytes: a rebuild re-reads the armed files and checks
            # their digests.  The kernel changed on disk meanwhile, so it is a full reload.
            host.kernel.write_bytes(host.kernel.read_bytes() + b"\0" * 4096)
            one_more_cpu(sim)
            await core.check_host()
            await core.wait_idle()
            third = host.record()
            assert third["generation"] == 3 and core.status().state == State.LOADED
            assert third["kernel_sha256"] == hashlib.sha256(host.kernel.read_bytes()).hexdigest()
            assert third["kernel_sha256"] != first["kernel_sha256"]
            assert sim.armed_image_intact(KEXEC_TYPE_CRASH)
            await core.close()

    asyncio.run(scenario())


def test_memory_hotplug_seen_by_the_running_daemon_rebuilds_only_the_core_header(
    host: Host, start: Callable[..., Daemon]
) -> None:
    """The real process: Xen's machine memory map grows (hot-plug, edited in the simulated
    host's file while the daemon runs); the periodic topology check rebuilds the ELF
    core header into the free half and keeps the other segments' bytes."""
    host.interval = 0.5
    host.write_config()
    d = start()
    d.wait_for(lambda m: "READY=1" in m, "READY=1")
    first = host.record()
    sim = host.sim()
    text = host.host_file.read_text()
    assert text.rstrip().endswith("type: ram}")  # memory_map is the last list in the file
    host.host_file.write_text(text + "  - {addr: 0x440000000, size: 0x40000000, type: ram}\n")
    d.wait_status("loaded: crash kernel armed (generation 2)", timeout=30)
    second = host.record()
    assert "host CPUs or memory map changed" in str(second["reason"])
    assert second["host_fingerprint"] != first["host_fingerprint"]
    seg1 = {s["kind"]: s["sha256"] for s in first["segments"]}
    seg2 = {s["kind"]: s["sha256"] for s in second["segments"]}
    assert seg2["kernel"] == seg1["kernel"] and seg2["initrd"] == seg1["initrd"]
    assert seg2["elfcorehdr"] != seg1["elfcorehdr"]
    assert second["half"] != first["half"]
    assert loads(sim) == 2 and sim.armed_image_intact(KEXEC_TYPE_CRASH)


def test_bad_config_at_start_exits_2_with_one_line(
    host: Host, start: Callable[..., Daemon]
) -> None:
    host.write_config(host.config.read_text() + "reload_debounce: soon\n")
    d = start()
    assert d.proc.wait(TIMEOUT) == 2
    err = d.stderr().strip().splitlines()
    assert len(err) == 1 and "Traceback" not in d.stderr()
    assert f"{host.config}:" in err[0] and "reload_debounce" in err[0]
    assert not (host.state_dir / "state.json").exists()


@pytest.mark.parametrize(("mode", "uid"), [(0o777, 0), (0o775, 0), (0o755, 1000)])
def test_state_dir_writable_by_others_is_refused_at_start(
    host: Host, start: Callable[..., Daemon], mode: int, uid: int
) -> None:
    host.state_dir.mkdir(exist_ok=True)
    os.chown(host.state_dir, uid, -1)
    host.state_dir.chmod(mode)
    d = start()
    assert d.proc.wait(TIMEOUT) == 2
    err = d.stderr().strip().splitlines()
    assert len(err) == 1 and "Traceback" not in d.stderr()
    assert f"{host.state_dir}: state_dir: expected a directory owned by uid 0" in err[0]
    assert f"found owner uid {uid}, mode {mode:04o}" in err[0]
    assert host.sim().call_counts(KEXEC_TYPE_CRASH) == (0, 0)


def test_missing_kernel_at_start_is_failed_then_recovers(
    host: Host, start: Callable[..., Daemon]
) -> None:
    saved = host.root / "saved-kernel"
    host.kernel.rename(saved)
    d = start()
    ready = d.wait_for(lambda m: "READY=1" in m, "READY=1")
    # No record yet, nothing loaded: where an image may be armed is honestly unknown.
    assert "STATUS=degraded: a crash image may be armed at an unknown place" in ready
    assert "not found" in ready
    shutil.copyfile(saved, host.kernel)
    d.wait_status("loaded: crash kernel armed (generation 1)")


def test_no_xen_exits_non_zero_with_one_line(host: Host, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(XENKDUMPD), "--config", str(host.config), "--hypervisor", "xen", "--no-bus"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode in (1, 2)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_read_only_state_dir_keeps_the_armed_image_and_says_why(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record cannot be written: no load is issued, the armed image stays and status
    says so -- never "no crash kernel armed" while one is."""
    settings = load_settings(host.config)

    def read_only(path: Path, _data: bytes, *, mode: int = 0o644) -> None:
        raise FileWriteError(path, OSError(errno.EROFS, os.strerror(errno.EROFS)))

    async def scenario() -> None:
        with host.sim() as sim:
            core = DaemonCore(sim, settings, config_path=host.config)
            await core.start()
            assert core.status().state == State.LOADED
            before = sim.call_counts(KEXEC_TYPE_CRASH)
            monkeypatch.setattr(record_mod, "atomic_write", read_only)
            with pytest.raises(OperationError) as err:
                await core.reload(ReloadOptions(force=True, reason="test"))
            assert f"{host.state_dir}/state.json: cannot write: EROFS" in str(err.value)
            assert "not loading" in str(err.value)
            snap = core.status()
            assert snap.state == State.DEGRADED and snap.generation == 1
            assert "generation 1 stays armed" in snap.state_reason
            assert "EROFS" in snap.last_error
            assert sim.call_counts(KEXEC_TYPE_CRASH) == before  # no hypercall issued
            assert sim.armed_image_intact(KEXEC_TYPE_CRASH)
            monkeypatch.undo()
            await core.reload(ReloadOptions(force=True, reason="test"))
            assert core.status().state == State.LOADED and core.status().generation == 2
            await core.close()

    asyncio.run(scenario())


def test_stuck_load_starves_the_watchdog_and_sigterm_still_stops(
    host: Host, start: Callable[..., Daemon]
) -> None:
    stuck = Path(__file__).with_name("stuck_xenkdumpd.py")
    d = start(
        program=(sys.executable, str(stuck)),
        env={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "", "STUCK_LOAD": "1"},
    )
    d.wait_for(lambda m: "WATCHDOG=1" in m, "a first keep-alive")

    def keep_alives() -> int:
        while True:  # every datagram queued so far
            before = len(d.messages)
            d._drain(0.2)
            if len(d.messages) == before:
                return sum("WATCHDOG=1" in m for m in d.messages)

    # Every 0.5 s while the stuck load is younger than the 2 s limit; then xenkdumpd says
    # so, once, and never feeds the watchdog again.  Waited for, not slept: on a loaded
    # machine the daemon's start and its load may come seconds late.  The deadline is
    # well below the production limit of a minute: the test's 2 s limit is in force.
    deadline = time.monotonic() + 30
    while "made no progress" not in d.stderr():
        assert d.proc.poll() is None and time.monotonic() < deadline, d.stderr()
        d._drain(0.2)
    fed = keep_alives()
    assert fed >= 1, d.messages
    time.sleep(2)  # four keep-alive periods
    assert keep_alives() == fed, d.messages
    d.proc.send_signal(signal.SIGTERM)
    # It stops after the stop grace (5 s) without waiting for the stuck load.
    assert d.proc.wait(30) == 0
    assert "still running" in d.stderr()


def test_a_slow_crash_initramfs_build_is_progress_for_the_watchdog(
    host: Host, start: Callable[..., Daemon], tmp_path: Path
) -> None:
    """mkinitramfs may take minutes (a slow host): while it runs within its own timeout,
    the load waiting for it makes progress, and systemd's watchdog stays fed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    standin_mkinitramfs.install(bin_dir)
    makedumpfile = bin_dir / "makedumpfile"
    makedumpfile.write_text("#!/bin/sh\necho makedumpfile 1\n")
    makedumpfile.chmod(0o755)
    slow = tmp_path / "slow"
    host.write_config(
        host.config.read_text().replace(f"initrd: {host.initrd}", "initrd: xenkdump")
        + "dump:\n  device: /dev/vda1\n  path: /crash\n"
    )
    stall2s = Path(__file__).with_name("stuck_xenkdumpd.py")
    d = start(
        program=(sys.executable, str(stall2s)),
        env={
            "WATCHDOG_USEC": "1000000",  # a keep-alive every 0.5 s
            "WATCHDOG_PID": "",
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "FAKE_MKINITRAMFS_SLOW": str(slow),
            "XENKDUMP_INITRD_DIR": str(tmp_path / "lib"),
        },
    )
    ready = d.wait_for(lambda m: "READY=1" in m, "READY=1")
    assert "loaded: crash kernel armed (generation 1)" in ready
    slow.write_text("5")  # the next build takes 5 s, the stall limit is 2 s
    makedumpfile.write_text("#!/bin/sh\necho makedumpfile 2\n")  # the image must change
    d.proc.send_signal(signal.SIGHUP)
    done = d.wait_status("loaded: crash kernel armed (generation 2)", timeout=30)
    during = d.messages[d.messages.index(ready) + 1 : d.messages.index(done)]
    assert "made no progress" not in d.stderr()
    assert "crash initramfs rebuilt" in d.stderr()
    assert sum("WATCHDOG=1" in m for m in during) >= 6, during  # about 10 in 5 s


def test_status_names_every_config_file_and_judges_the_crash_area(host: Host) -> None:
    dropins = host.config.parent / "xenkdump.yaml.d"
    dropins.mkdir()
    (dropins / "50-host.yaml").write_text("reload_debounce: 0.3\n")
    settings = load_settings(host.config)

    async def scenario(sim: SimulatedHypervisor) -> Status:
        core = DaemonCore(sim, settings, config_path=host.config)
        await core.start()
        await core.wait_idle()
        return core.status()

    with host.sim() as sim:
        status = asyncio.run(scenario(sim))
    assert status.config_files == (str(host.config), str(dropins / "50-host.yaml"))
    assert status.crash_area_verdict == "ok" and status.crash_area_fix == ""
    assert status.state == State.LOADED
    # The same host booted without crashkernel= (and it on dom0's line instead).
    text = host.host_file.read_text()
    host.host_file.write_text(
        text.replace(" crashkernel=256M", "")
        .replace("crash_range: {start: 0xae6ff000, size: 0x10000000}", "crash_range: null")
        .replace("ro quiet", "ro quiet crashkernel=256M")
    )
    (host.state_dir / "state.json").unlink()
    with host.sim() as sim:
        status = asyncio.run(scenario(sim))
    assert status.state == State.FAILED
    assert status.crash_area_verdict == "missing"
    assert "crashkernel=256M is on dom0's command line" in status.crash_area_advice
    assert status.crash_area_fix.startswith('GRUB_CMDLINE_XEN_DEFAULT="console=com1 ')
    assert status.crash_area_fix.endswith(',below=4G"')


def test_metrics_file_follows_every_change_of_state(host: Host) -> None:
    prom = host.root / "node-exporter" / "xenkdump.prom"
    prom.parent.mkdir()
    host.extra = f"metrics:\n  textfile: {prom}\n"
    host.write_config()
    settings = load_settings(host.config)
    assert settings.metrics_textfile == prom

    def values() -> dict[str, float]:
        text = prom.read_text()
        return {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if not line.startswith("#")
        }

    async def scenario() -> None:
        with host.sim() as sim:
            core = DaemonCore(sim, settings, config_path=host.config)
            await core.start()
            await core.wait_idle()
            v = values()
            assert v["xenkdump_armed"] == 1 and v['xenkdump_state{state="loaded"}'] == 1
            assert v["xenkdump_loads_total"] == 1 and v["xenkdump_load_failures_total"] == 0
            assert v["xenkdump_crash_area_bytes"] == 256 << 20
            assert 0 < v["xenkdump_crash_area_required_bytes"] < 128 << 20
            assert v['xenkdump_crash_area_verdict{verdict="ok"}'] == 1
            host.write_config(host.config.read_text() + "bogus: 1\n")
            core.config_changed("test")
            await core.wait_idle()
            v = values()
            assert v['xenkdump_state{state="degraded"}'] == 1
            assert v["xenkdump_config_rejections_total"] == 1 and v["xenkdump_armed"] == 1

    asyncio.run(scenario())
