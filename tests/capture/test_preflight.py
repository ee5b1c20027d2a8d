"""Preflight of the dump target from dom0: missing, read-only, full -> one line naming it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakes import systemd_run_standin

from xenkdump import transient
from xenkdump.capture import target
from xenkdump.daemon.executor import Executor
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.settings.model import DumpSettings, DumpTarget, InitrdPolicy, Settings


def test_local_target_missing_read_only_and_full(tmp_path: Path) -> None:
    missing = DumpSettings(path=tmp_path / "nope")
    with pytest.raises(target.DumpTargetError, match=rf"dump target {tmp_path}/nope: missing"):
        target.preflight(missing, 1)
    ok = DumpSettings(path=tmp_path)
    assert target.preflight(ok, 1).startswith(f"{tmp_path}: writable, ")
    with pytest.raises(target.DumpTargetError, match=r"free, a dump needs about "):
        target.preflight(ok, 1 << 60)
    if os.geteuid() != 0:  # root may write anywhere: read-only is checked through access()
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(target.DumpTargetError, match="read-only or not writable"):
            target.preflight(DumpSettings(path=ro), 1)


def test_ssh_target_without_its_key_is_named(tmp_path: Path) -> None:
    dump = DumpSettings(
        target=DumpTarget.SSH, ssh="u@h", ssh_key=tmp_path / "id", ssh_known_hosts=tmp_path / "k"
    )
    with pytest.raises(target.DumpTargetError) as err:
        target.preflight(dump, 1)
    assert str(err.value) == f"dump target ssh u@h:/var/crash: dump.ssh_key {tmp_path}/id missing"


def test_estimate_is_a_small_share_of_ram_for_filtered_dumps() -> None:
    ram = 64 << 30
    assert target.estimate_dump_bytes(ram, 31) < target.estimate_dump_bytes(ram, 0) < ram


def test_daemon_check_names_the_target_only_with_its_own_initramfs(tmp_path: Path) -> None:
    hv = SimulatedHypervisor.open(tmp_path / "host.yaml")
    bad = DumpSettings(path=tmp_path / "gone")
    ours = Executor(hv, Settings(initrd=InitrdPolicy.XENKDUMP, dump=bad, state_dir=tmp_path))
    assert ours.check_target() == f"dump target {tmp_path}/gone: missing (expected a directory)"
    theirs = Executor(hv, Settings(initrd=InitrdPolicy.AUTO, dump=bad, state_dir=tmp_path))
    assert theirs.check_target() is None  # another initrd saves (or not) on its own
    good = Executor(
        hv,
        Settings(
            initrd=InitrdPolicy.XENKDUMP, dump=DumpSettings(path=tmp_path), state_dir=tmp_path
        ),
    )
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    need = target.estimate_dump_bytes(16 << 30, 31)  # the simulated host's RAM
    assert good.check_target() == (None if free >= need else good.check_target())


def test_device_and_nfs_targets_are_left_to_the_crash_side(tmp_path: Path) -> None:
    device = DumpSettings(device="LABEL=dumps", path=Path("/crash"))
    assert target.preflight(device, 1 << 60) == (
        "LABEL=dumps /crash: configured (the device is mounted and checked by the crash side only)"
    )
    nfs = DumpSettings(target=DumpTarget.NFS, nfs="srv:/dumps")
    assert target.preflight(nfs, 1 << 60).endswith(
        "(an NFS export is checked by the crash side only)"
    )


def test_under_systemd_the_ssh_check_runs_in_a_unit_with_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xenkdumpd's unit has no network (docs/packaging.md): under systemd the SSH check
    goes through systemd-run (a stand-in recording its options, then running the command
    after "--") to ssh (a stand-in answering as the target's df would)."""
    bin_dir = tmp_path / "bin"
    record = tmp_path / "systemd-run.args"
    systemd_run_standin(bin_dir, record)
    (bin_dir / "ssh").write_text("#!/bin/sh\necho '/dev/vdb 9000000 1000 8000000 1% /srv'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    (tmp_path / "id").write_text("key")
    (tmp_path / "k").write_text("host key")
    dump = DumpSettings(
        target=DumpTarget.SSH, ssh="u@h", ssh_key=tmp_path / "id", ssh_known_hosts=tmp_path / "k"
    )
    launch = transient.Transient("xenkdumpd.service", str(bin_dir / "systemd-run"), "systemctl")
    assert target.preflight(dump, 1 << 20, launch) == (
        "ssh u@h:/var/crash: reachable, writable, 7.6 GiB free"
    )
    args = record.read_text().splitlines()
    opts, ssh = args[: args.index("--")], args[args.index("--") + 1 :]
    assert ssh[0] == str(bin_dir / "ssh") and "u@h" in ssh
    assert "--pipe" in opts and "--property=BindsTo=xenkdumpd.service" in opts
    assert "--property=RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in opts
    assert not [o for o in opts if "PrivateNetwork" in o or "IPAddressDeny" in o]
    # Anywhere else ssh is a child, its command line untouched.
    assert target.ssh_argv(transient.Direct(""), ssh) == ssh
