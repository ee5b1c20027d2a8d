"""xenkdumpctl selftest's choices before anything boots: option conflicts and the
handoff level without a Xen binary are one-line errors (no QEMU runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from imagefixtures import synth_bzimage

REPO = Path(__file__).resolve().parents[2]


def selftest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xenkdump.cli.ctl", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    return line


def test_xen_and_dom0_kernel_are_not_for_the_boot_level() -> None:
    line = one_line(selftest("selftest", "--level", "boot", "--xen", "/boot/xen.gz"), 2)
    assert line.endswith("--xen: not with --level boot (the boot level boots no Xen)")
    line = one_line(selftest("selftest", "--level", "boot", "--dom0-kernel", "/k"), 2)
    assert line.endswith("--dom0-kernel: not with --level boot (the boot level has no dom0)")


def test_handoff_without_a_xen_binary_names_what_was_looked_for(tmp_path: Path) -> None:
    """The simulated host runs Xen 4.17.7; its boot_dir has no xen-4.17*.gz."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(synth_bzimage())
    boot = tmp_path / "boot"
    boot.mkdir()
    config = tmp_path / "xenkdump.yaml"
    config.write_text(f"kernel: {kernel}\ninitrd: none\nboot_dir: {boot}\n")
    proc = selftest(
        "--hypervisor", f"sim:{tmp_path / 'host.yaml'}",
        "selftest", "--level", "handoff", "--config", str(config),
    )  # fmt: skip
    assert one_line(proc, 1).endswith(
        f"no Xen binary for the running Xen 4.17.7: looked for {boot}/xen-4.17*.gz "
        "(give --xen PATH or selftest.xen)"
    )
    bad = tmp_path / "not-xen.gz"
    bad.write_bytes(b"\x1f\x8b" + bytes(16))
    proc = selftest(
        "--hypervisor", f"sim:{tmp_path / 'host.yaml'}",
        "selftest", "--xen", str(bad), "--config", str(config),
    )  # fmt: skip
    assert f"{bad}: Xen binary: cannot read it" in one_line(proc, 2)
