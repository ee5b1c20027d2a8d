"""``xenkdumpctl advise`` on simulated hosts: no reservation, too small, right, dom0's line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from xenkdump.cli.cmd_status import render
from xenkdump.hv.simhost import default_host, render_host
from xenkdump.status import Status


def advise(tmp_path: Path, kernel: Path, host_text: str) -> dict[str, Any]:
    host = tmp_path / "host.yaml"
    host.write_text(host_text)
    config = tmp_path / "xenkdump.yaml"
    config.write_text(f"kernel: {kernel}\ninitrd: none\n")
    ctl = Path(sys.executable).with_name("xenkdumpctl")
    proc = subprocess.run(
        [str(ctl), "--hypervisor", f"sim:{host}", "advise", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


DEFAULT = render_host(default_host())


@pytest.mark.parametrize(
    ("edit", "verdict", "summary"),
    [
        (lambda t: t, "ok", "crash area 256 MiB at 0xae6ff000: two images fit"),
        (
            lambda t: t.replace("size: 0x10000000}", "size: 0x6000000}"),
            "too-small",
            "crash area too small: 96 MiB reserved",
        ),
        (
            lambda t: t.replace(" crashkernel=256M", "").replace(
                "crash_range: {start: 0xae6ff000, size: 0x10000000}", "crash_range: null"
            ),
            "missing",
            "no crash area: Xen was booted without crashkernel=",
        ),
        (
            lambda t: (
                t.replace(" crashkernel=256M", "")
                .replace("crash_range: {start: 0xae6ff000, size: 0x10000000}", "crash_range: null")
                .replace('"root=/dev/xvda1 ro quiet"', '"root=/dev/xvda1 ro crashkernel=256M"')
            ),
            "missing",
            "no crash area: crashkernel=256M is on dom0's command line, not on Xen's",
        ),
    ],
    ids=["right", "small", "none", "dom0 line"],
)
def test_advice_on_simulated_hosts(
    tmp_path: Path, debian_kernel: Path, edit: Any, verdict: str, summary: str
) -> None:
    out = advise(tmp_path, debian_kernel, edit(DEFAULT))
    assert out["verdict"] == verdict
    assert out["summary"].startswith(summary)
    assert 32 << 20 < out["required"] < 256 << 20  # Debian's kernel, measured
    if verdict == "ok":
        assert out["grub_line"] == ""
        return
    size = out["recommended"] >> 20
    assert out["crashkernel"] == f"crashkernel={size}M,below=4G"
    assert out["grub_line"] == (
        'GRUB_CMDLINE_XEN_DEFAULT="console=com1 com1=115200,8n1 dom0_mem=4G,max:4G '
        f'crashkernel={size}M,below=4G"'
    )


def test_status_shows_the_config_files_and_the_fix() -> None:
    fix = 'GRUB_CMDLINE_XEN_DEFAULT="console=com1 crashkernel=256M,below=4G"'
    text = render(
        Status(
            state="failed",
            config_files=("/etc/xenkdump/xenkdump.yaml", "/etc/xenkdump/xenkdump.yaml.d/50.yaml"),
            crash_area_verdict="missing",
            crash_area_advice="no crash area: Xen was booted without crashkernel=",
            crash_area_fix=fix,
        )
    )
    rows = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    assert rows["Config files"].strip() == (
        "/etc/xenkdump/xenkdump.yaml, /etc/xenkdump/xenkdump.yaml.d/50.yaml"
    )
    assert rows["Crash area"].strip().startswith("missing: no crash area")
    assert f"in /etc/default/grub.d/xen.cfg: {fix}" in text
    assert "then run update-grub and reboot" in text
    ok = render(Status(state="loaded", crash_area_verdict="ok", crash_area_advice="fine"))
    assert "Crash area:" not in ok and "Fix:" not in ok
