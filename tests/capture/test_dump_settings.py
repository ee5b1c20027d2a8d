"""The dump: section: parsed into DumpSettings, every mistake as file:line: key: ..., and
the capture agent's configuration rendered from it (sourced back by a real sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xenkdump.capture import agentconf
from xenkdump.capture.agentconf import CaptureFacts, LocalFilesystem
from xenkdump.hv.port import AddressRange
from xenkdump.schema import ConfigProblems
from xenkdump.settings import parse_settings
from xenkdump.settings.model import CrashAction, DumpSettings, DumpTarget, InitrdPolicy


def test_defaults_and_a_full_section() -> None:
    s = parse_settings("", "x.yaml")
    assert s.initrd is InitrdPolicy.XENKDUMP and s.dump == DumpSettings()
    s = parse_settings(
        "dump:\n  target: ssh\n  ssh: dumper@10.0.2.2\n  ssh_port: 2222\n  path: /srv/dumps\n"
        "  level: 17\n  compress: lzo\n  keep: 3\n  max_total: 1000000\n"
        "  failure_action: shell\n  final_action: halt\n",
        "x.yaml",
    )
    d = s.dump
    assert (d.target, d.ssh, d.ssh_port, d.path) == (
        DumpTarget.SSH,
        "dumper@10.0.2.2",
        2222,
        Path("/srv/dumps"),
    )
    assert (d.level, d.compress, d.keep, d.max_total) == (17, "lzo", 3, 1000000)
    assert (d.failure_action, d.final_action) == (CrashAction.SHELL, CrashAction.HALT)
    assert d.describe_target() == "ssh dumper@10.0.2.2:/srv/dumps"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("dump:\n  levle: 31\n", 2, "dump.levle: unknown key"),
        ("dump:\n  level: 32\n", 2, "dump.level: expected a dump level 0-31"),
        ("dump:\n  compress: gzip\n", 2, "dump.compress: expected 'zlib', 'lzo', 'zstd'"),
        ("dump:\n  path: var/crash\n", 2, "dump.path: expected an absolute path"),
        ("dump:\n  device: sda1\n", 2, "dump.device: expected UUID=..., LABEL=..., /dev/..."),
        ("dump:\n  target: ftp\n", 2, "dump.target: expected 'local', 'nfs' or 'ssh'"),
        ("dump:\n  target: ssh\n", 2, "dump.target: expected dump.ssh (user@host) with target"),
        ("dump:\n  target: nfs\n", 2, "dump.target: expected dump.nfs (server:/export)"),
        (
            "dump:\n  target: nfs\n  nfs: srv:/x\n  device: UUID=1\n",
            4,
            "dump.device: expected no device with target nfs",
        ),
        ("dump:\n  final_action: poweroff\n", 2, "dump.final_action: expected 'reboot', 'halt'"),
        ("dump:\n  keep: -1\n", 2, "dump.keep: expected a count >= 0"),
    ],
)
def test_mistakes_name_file_line_and_key(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigProblems) as err:
        parse_settings(text, "/etc/xenkdump/xenkdump.yaml")
    (problem,) = str(err.value).splitlines()
    assert problem.startswith(f"/etc/xenkdump/xenkdump.yaml:{line}: {message}"), problem


FACTS = CaptureFacts(
    host="xen1",
    dom0_kernel="6.1.0-57-amd64",
    xen_version="4.17.7",
    xen_cmdline='console=com1 it\'s "quoted" $HOME `x`',
    xen_range=AddressRange(0x3FE00000, 0x800000),
    kernel_sha256="ab" * 32,
)


def _sourced(conf: str, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "capture.conf"
    path.write_text(conf)
    out = subprocess.run(
        ["sh", "-c", f". {path} && set | grep '^XK_'"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout
    values = {}
    for name in [ln.split("=", 1)[0] for ln in out.splitlines()]:
        values[name] = subprocess.run(
            ["sh", "-c", f'. {path} && printf %s "${name}"'],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return values


def test_rendered_configuration_sources_back_exactly(tmp_path: Path) -> None:
    local = LocalFilesystem("UUID=1234-abcd", "ext4", "/var/crash")
    values = agentconf.agent_values(DumpSettings(keep=2), FACTS, local)
    got = _sourced(agentconf.render(values), tmp_path)
    assert got == values
    assert got["XK_XEN_CMDLINE"] == FACTS.xen_cmdline  # quotes, $ and ` stay literal
    assert got["XK_XEN_RANGE"] == "0x3fe00000+0x800000"
    assert (got["XK_DEVICE"], got["XK_FSTYPE"], got["XK_PATH"]) == (
        "UUID=1234-abcd",
        "ext4",
        "/var/crash",
    )


def test_ssh_and_nfs_values() -> None:
    ssh = agentconf.agent_values(
        DumpSettings(target=DumpTarget.SSH, ssh="u@h", ssh_port=2222), FACTS, None
    )
    assert ssh["XK_SSH_DEST"] == "u@h" and ssh["XK_SSH_PORT"] == "2222"
    assert ssh["XK_SSH_KEY"] == agentconf.INITRAMFS_SSH_KEY  # the copy in the initramfs
    nfs = agentconf.agent_values(DumpSettings(target=DumpTarget.NFS, nfs="s:/e"), FACTS, None)
    assert nfs["XK_NFS"] == "s:/e" and nfs["XK_TARGET_KIND"] == "nfs"


def test_relative_to_mount() -> None:
    assert agentconf.relative_to_mount("/var/crash", "/") == "/var/crash"
    assert agentconf.relative_to_mount("/srv/dumps/xen", "/srv") == "/dumps/xen"
    assert agentconf.relative_to_mount("/srv", "/srv") == "/"
