"""xenkdump's crash initramfs, built by the real mkinitramfs (initramfs-tools) for Debian's
kernel, through ``xenkdumpctl initrd`` as an administrator runs it, with the kernel
package "installed" in a private mount namespace (tests/testkernel.py).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import systemd_run_standin

from testkernel import with_kernel
from xenkdump import transient
from xenkdump.capture import initramfs
from xenkdump.capture.agentconf import CaptureFacts
from xenkdump.hv.port import AddressRange
from xenkdump.settings.model import DumpSettings

XENKDUMPCTL = [sys.executable, "-m", "xenkdump.cli.ctl"]


def ctl(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *XENKDUMPCTL, *args], capture_output=True, text=True, timeout=600, check=False
    )


def unpack(image: Path, dest: Path) -> Path:
    subprocess.run(["unmkinitramfs", str(image), str(dest)], check=True, timeout=120)
    return dest


@pytest.mark.kernel
def test_initrd_command_builds_with_mkinitramfs_and_rebuilds_only_on_change(
    debian_kernel: Path, tmp_path: Path
) -> None:
    prefix = with_kernel(debian_kernel, tmp_path)
    config = tmp_path / "xenkdump.yaml"
    config.write_text(
        f"kernel: {debian_kernel}\ndump:\n  device: /dev/vda1\n  path: /crash\n  keep: 2\n"
    )
    out = tmp_path / "crash.img"
    sim = f"sim:{tmp_path / 'host.yaml'}"
    args = ("--hypervisor", sim, "initrd", "--config", str(config), "--output", str(out))
    first = ctl(prefix, *args, "--json")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["rebuilt"] is True and doc["path"] == str(out)
    assert doc["bytes"] == out.stat().st_size and doc["unpacked_bytes"] > doc["bytes"]
    assert doc["modules"] == ["ext4"] and doc["target"] == "/dev/vda1 /crash"
    assert doc["fits_in_half"] is True and doc["half_bytes"] == 128 << 20
    # no Xen binary in the test kernel's /boot: said plainly (capture/xensyms.py)
    assert doc["xen_console"] == "not locatable: no xen-4.17*.gz in /boot"
    print(
        f"\n[initrd] {doc['bytes'] / 2**20:.1f} MiB ({doc['unpacked_bytes'] / 2**20:.1f} MiB "
        f"unpacked) in {doc['build_seconds']} s; image needs "
        f"{doc['image_required_bytes'] / 2**20:.0f} MiB of the {doc['half_bytes'] >> 20} MiB half"
    )

    tree = unpack(out, tmp_path / "tree")
    main = tree / "main" if (tree / "main").is_dir() else tree
    for path in (
        "usr/bin/makedumpfile",
        "usr/lib/xenkdump/xenkdump-capture.sh",
        "scripts/init-premount/xenkdump",
        "etc/xenkdump/capture.conf",
    ):
        assert (main / path).exists(), path
    # The agent has its own self-test mode: the standalone hook is not carried.
    assert not (main / "usr/lib/xenkdump/crashcheck.sh").exists()
    assert list(main.glob("usr/lib/modules/*/kernel/fs/ext4/ext4.ko*"))
    assert list(main.glob("usr/lib/modules/*/kernel/drivers/block/virtio_blk.ko*"))
    conf = (main / "etc/xenkdump/capture.conf").read_text()
    assert "XK_DEVICE='/dev/vda1'" in conf and "XK_PATH='/crash'" in conf
    assert "XK_KEEP='2'" in conf and "XK_XEN_VERSION='4.17.7'" in conf
    # makedumpfile's shared libraries came with it (copy_exec)
    ldd = subprocess.run(
        ["ldd", "/usr/bin/makedumpfile"], capture_output=True, text=True, check=True
    ).stdout
    for lib in [w for w in ldd.split() if w.startswith("/") and ".so" in w]:
        assert list(main.glob(f"**/{Path(lib).name}")), lib

    again = ctl(prefix, *args, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["rebuilt"] is False
    config.write_text(config.read_text().replace("keep: 2", "keep: 3"))
    changed = ctl(prefix, *args)
    assert changed.returncode == 0, changed.stderr
    assert ": built in" in changed.stdout and "fits in half" in changed.stdout
    assert "  xen console not locatable: no xen-4.17*.gz in /boot\n" in changed.stdout


def test_missing_program_is_one_line_and_the_old_image_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "crash.img"
    out.write_bytes(b"the armed one")
    monkeypatch.setattr(initramfs, "PROGRAMS", (("no-such-makedumpfile", "/usr/bin"),))
    facts = CaptureFacts("h", "6.1.0-57-amd64", "4.17.7", "", AddressRange(0, 0))
    dump = DumpSettings(device="/dev/vda1")
    with pytest.raises(initramfs.InitramfsError) as err:
        initramfs.ensure(dump, facts, output=out)
    assert str(err.value) == (
        "crash initramfs: no-such-makedumpfile is not installed "
        "(Debian package: no-such-makedumpfile)"
    )
    assert out.read_bytes() == b"the armed one"


def test_kernel_version_comes_from_the_debian_file_name() -> None:
    assert initramfs.kernel_version_of(Path("/boot/vmlinuz-6.1.0-57-amd64")) == "6.1.0-57-amd64"
    with pytest.raises(initramfs.InitramfsError, match="expected a kernel named vmlinuz-RELEASE"):
        initramfs.kernel_version_of(Path("/srv/bzImage"))


def test_unpacked_size_counts_the_files(tmp_path: Path) -> None:
    def entry(name: bytes, data: bytes) -> bytes:
        head = b"070701" + b"%08X" * 13 % (
            0,
            0o100644,
            0,
            0,
            1,
            0,
            len(data),
            0,
            0,
            0,
            0,
            len(name) + 1,
            0,
        )
        blob = head + name + b"\0"
        blob += bytes(-len(blob) % 4) + data
        return blob + bytes(-len(blob) % 4)

    archive = entry(b"a", b"x" * 10) + entry(b"b", b"y" * 3) + entry(b"TRAILER!!!", b"")
    img = tmp_path / "i.img"
    img.write_bytes(gzip.compress(archive))
    assert initramfs.unpacked_size(img) == 13
    # Debian 13: an uncompressed early archive first, padded, then the gzip'd one.
    early = entry(b"e", b"z" * 5) + entry(b"TRAILER!!!", b"")
    img.write_bytes(early + bytes(512 - len(early) % 512) + gzip.compress(archive))
    assert initramfs.unpacked_size(img) == 18


def test_under_systemd_mkinitramfs_runs_in_a_unit_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xenkdumpd's sandbox cannot run mkinitramfs (docs/packaging.md): under systemd the
    build goes through systemd-run, here a stand-in that records its options and runs
    the command after "--"; mkinitramfs, a stand-in too, fails as a real one would."""
    bin_dir = tmp_path / "bin"
    record = tmp_path / "systemd-run.args"
    systemd_run_standin(bin_dir, record)
    # It sees its configuration directory (next to the image) and says why it fails.
    (bin_dir / "mkinitramfs").write_text(
        '#!/bin/sh\n[ -f "$2/initramfs.conf" ] && echo "conf $2" >&2\n'
        'echo "E: /usr/lib/modules/$5 is missing" >&2\nexit 3\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    out = tmp_path / "state" / "crash.img"
    facts = CaptureFacts("h", "6.1.0-57-amd64", "4.17.7", "", AddressRange(0, 0))
    launch = transient.Transient("xenkdumpd.service", str(bin_dir / "systemd-run"), "systemctl")
    with pytest.raises(initramfs.InitramfsError) as err:
        initramfs.ensure(DumpSettings(device="/dev/vda1"), facts, output=out, launch=launch)
    assert str(err.value) == (
        "crash initramfs: mkinitramfs failed (exit 3): "
        "E: /usr/lib/modules/6.1.0-57-amd64 is missing"
    )
    args = record.read_text().splitlines()
    assert "--pipe" in args and "--wait" in args
    assert "--property=BindsTo=xenkdumpd.service" in args
    assert f"--property=ReadWritePaths={out.parent}" in args
    assert args[args.index("--") + 1 :][:2] == [str(bin_dir / "mkinitramfs"), "-d"]
    conf = Path(args[args.index("-d") + 1])
    assert conf.parent.parent == out.parent  # not the daemon's private /tmp
    assert not conf.exists() and sorted(p.name for p in out.parent.iterdir()) == []


def test_anywhere_else_mkinitramfs_is_a_child() -> None:
    argv = ["/usr/sbin/mkinitramfs", "-o", "/x"]
    assert initramfs.build_argv(transient.Direct("no INVOCATION_ID"), argv, Path("/x")) == argv
    unit = transient.Transient("xenkdumpd.service", "/usr/bin/systemd-run", "/usr/bin/systemctl")
    opts = initramfs.build_argv(unit, argv, Path("/var/lib/xenkdump"))
    assert opts[opts.index("--") + 1 :] == argv
    # None of xenkdumpd's own filters that mkinitramfs cannot live with.
    assert not [o for o in opts if "SystemCallFilter" in o or "ProtectKernelModules" in o]
