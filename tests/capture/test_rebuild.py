"""The crash initramfs follows the tools it contains: a changed program (or one of its
shared libraries, or initramfs-tools' hooks) changes the content key, so a reload
rebuilds and loads the new image; a build that fails keeps the armed image, degrades
the state and says why in LastError.

xenkdumpd's core runs in-process on a simulated host with Debian's kernel; mkinitramfs
and makedumpfile are stand-ins first on PATH (tests/standin_mkinitramfs.py): the
stand-in image carries the makedumpfile it was given, so a new makedumpfile gives a
new image.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import standin_mkinitramfs
from xenkdump.capture import initramfs
from xenkdump.daemon.core import DaemonCore, State
from xenkdump.errors import OperationError
from xenkdump.hv.port import KEXEC_TYPE_CRASH
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.paths import INITRD_DIR
from xenkdump.requests import ReloadOptions
from xenkdump.settings.load import load_settings

pytestmark = pytest.mark.kernel


def _exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@dataclass(frozen=True)
class World:
    config: Path  # initrd: xenkdump, Debian's kernel in a /boot of its own
    image: Path  # the crash initramfs xenkdump builds
    makedumpfile: Path  # a stand-in, first on PATH
    fail: Path  # while it exists, the stand-in mkinitramfs fails
    runs: Path  # one line per run of the stand-in mkinitramfs


@pytest.fixture
def world(tmp_path: Path, debian_kernel: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    standin_mkinitramfs.install(bin_dir)
    makedumpfile = bin_dir / "makedumpfile"
    _exec(makedumpfile, "#!/bin/sh\necho makedumpfile 1\n")
    w = World(
        config=tmp_path / "xenkdump.yaml",
        image=initramfs.image_path("6.1.0-test", tmp_path / "lib"),
        makedumpfile=makedumpfile,
        fail=tmp_path / "fail",
        runs=tmp_path / "runs",
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_FAIL", str(w.fail))
    monkeypatch.setenv("FAKE_MKINITRAMFS_RUNS", str(w.runs))
    monkeypatch.setattr(initramfs, "DEFAULT_DIR", tmp_path / "lib")
    boot = tmp_path / "boot"
    boot.mkdir()
    kernel = boot / "vmlinuz-6.1.0-test"
    shutil.copyfile(debian_kernel, kernel)
    w.config.write_text(
        f"kernel: {kernel}\ninitrd: xenkdump\nstate_dir: {tmp_path / 'state'}\n"
        f"boot_dir: {boot}\ndump:\n  device: /dev/vda1\n  path: /crash\n"
    )
    return w


def test_a_changed_tool_rebuilds_and_reloads_and_a_failed_build_keeps_the_image(
    tmp_path: Path, world: World
) -> None:
    config, image, makedumpfile, fail = world.config, world.image, world.makedumpfile, world.fail

    async def scenario() -> None:
        with SimulatedHypervisor.open(tmp_path / "host.yaml") as sim:
            core = DaemonCore(sim, load_settings(config), config_path=config)
            await core.start()
            first = core.status()
            assert first.state == State.LOADED and first.generation == 1, first.state_reason
            assert b"makedumpfile 1" in gzip.decompress(image.read_bytes())

            # nothing changed: the image is up to date, a reload loads nothing new
            key = initramfs.read_built(image)
            await core.reload(ReloadOptions(reason="test: nothing changed"))
            assert core.status().generation == 1
            assert initramfs.read_built(image) == key

            # a new makedumpfile (a package upgrade): rebuilt, and the new image loaded
            _exec(makedumpfile, "#!/bin/sh\necho makedumpfile 2\n")
            await core.reload(ReloadOptions(reason="test: makedumpfile upgraded"))
            second = core.status()
            assert second.state == State.LOADED and second.generation == 2
            assert second.image_sha256 != first.image_sha256

            # the next build fails: the armed image (generation 2) stays, LastError says why
            _exec(makedumpfile, "#!/bin/sh\necho makedumpfile 3\n")
            fail.touch()
            armed_image = image.read_bytes()
            with pytest.raises(OperationError):
                await core.reload(ReloadOptions(reason="test: build fails"))
            snap = core.status()
            assert snap.state == State.DEGRADED and snap.generation == 2
            assert snap.last_error == (
                "crash initramfs: mkinitramfs failed (exit 1): E: fake mkinitramfs failure"
            )
            assert sim.armed_image_intact(KEXEC_TYPE_CRASH)
            assert image.read_bytes() == armed_image  # the old image file is kept too

            # fixed: the next reload builds and loads again
            fail.unlink()
            await core.reload(ReloadOptions(reason="test: fixed"))
            assert core.status().state == State.LOADED and core.status().generation == 3
            await core.close()

    asyncio.run(scenario())


def test_a_build_that_fails_runs_once_per_load_while_nothing_is_armed(
    tmp_path: Path, world: World
) -> None:
    """With nothing armed, the crash-area advice measures the configured image: that
    must not build it a second time after the load's own build failed."""
    world.fail.touch()

    def runs() -> int:
        return len(world.runs.read_text().splitlines()) if world.runs.exists() else 0

    async def scenario() -> None:
        with SimulatedHypervisor.open(tmp_path / "host.yaml") as sim:
            core = DaemonCore(sim, load_settings(world.config), config_path=world.config)
            await core.start()
            snap = core.status()
            assert snap.state == State.DEGRADED and not snap.crash_kernel, snap.state_reason
            assert "fake mkinitramfs failure" in snap.last_error
            assert runs() == 1
            with pytest.raises(OperationError):
                await core.reload(ReloadOptions(reason="test: still failing"))
            assert runs() == 2
            world.fail.unlink()
            await core.reload(ReloadOptions(reason="test: fixed"))
            snap = core.status()
            assert snap.state == State.LOADED and snap.generation == 1
            assert runs() == 3
            assert snap.crash_area_verdict == "ok"
            await core.close()

    asyncio.run(scenario())


def test_the_content_key_covers_shared_libraries_and_initramfs_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "libfake.so.1"
    lib.write_bytes(b"v1")
    tools = tmp_path / "initramfs-tools"
    (tools / "hooks").mkdir(parents=True)
    (tools / "hooks" / "udev").write_text("v1")
    monkeypatch.setattr(initramfs, "shared_libraries", lambda _prog: [str(lib)])
    monkeypatch.setattr(initramfs, "INITRAMFS_TOOLS_DIR", tools)
    prog = tmp_path / "makedumpfile"
    prog.write_text("v1")
    stage = initramfs._Stage("conf", ("ext4",), ((str(prog), "/usr/bin"),), ())

    def key() -> str:
        return initramfs.content_key(stage, "6.1.0-test", str(prog))

    keys = [key()]
    lib.write_bytes(b"v2")  # a library update alone
    keys.append(key())
    (tools / "hooks" / "udev").write_text("v2")  # an initramfs-tools hook changed
    keys.append(key())
    (tools / "hooks" / "kmod").write_text("v1")  # a hook added
    keys.append(key())
    assert len(set(keys)) == 4
    assert key() == keys[-1]  # and nothing else moves it


def test_the_debian_triggers_watch_what_goes_into_the_image() -> None:
    """debian/xenkdump.triggers names every program xenkdump copies, mkinitramfs and
    initramfs-tools' directory, and update-initramfs (activated by packages with hooks)."""
    repo = Path(__file__).resolve().parents[2]
    lines = (repo / "debian" / "xenkdump.triggers").read_text().splitlines()
    interests = {ln.split()[1] for ln in lines if ln.startswith("interest-noawait ")}
    programs = {f"{dest}/{name}" for name, dest in (*initramfs.PROGRAMS, *initramfs.SSH_PROGRAMS)}
    assert (
        programs
        | {
            f"/usr/sbin/{initramfs.MKINITRAMFS}",
            str(initramfs.INITRAMFS_TOOLS_DIR),
            "update-initramfs",
        }
        == interests
    )
    postinst = (repo / "debian" / "xenkdump.postinst").read_text()
    record = initramfs.image_path("*", Path(INITRD_DIR)).name + ".json"
    assert f"rm -f {INITRD_DIR}/{record}" in postinst  # the records it forgets
    assert "deb-systemd-invoke try-reload-or-restart xenkdumpd.service" in postinst
