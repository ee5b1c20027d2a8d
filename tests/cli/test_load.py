"""xenkdumpctl load / plan / status / unload through the installed console script, on a
simulated host shared across processes (hv/sim.py), with the real Debian kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xenkdump.hv.port import KEXEC_TYPE_CRASH
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.image.bzimage import parse_bzimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from imagefixtures import MIB, make_initrd
from test_planner import validate_plan_json

CTL = Path(sys.executable).parent / "xenkdumpctl"

pytestmark = pytest.mark.kernel


class Host:
    def __init__(self, tmp: Path, kernel: Path) -> None:
        self.tmp = tmp
        self.yaml = tmp / "host.yaml"
        self.state = tmp / "state"
        self.kernel = kernel
        self.initrd = tmp / "initrd.img"
        self.initrd.write_bytes(make_initrd(2 * MIB))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(CTL), "--hypervisor", f"sim:{self.yaml}", *args]
        if args[0] in ("load", "unload", "plan", "status"):
            cmd += ["--state-dir", str(self.state)]
        env = {k: v for k, v in os.environ.items() if k != "XENKDUMP_STATE_DIR"}
        return subprocess.run(
            cmd, check=False, capture_output=True, text=True, env=env, timeout=120
        )

    def load(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            "load",
            "--kernel",
            str(self.kernel),
            "--initrd",
            str(self.initrd),
            "--cmdline",
            "console=ttyS0,115200 nr_cpus=1",
            *extra,
        )

    def sim(self) -> SimulatedHypervisor:
        return SimulatedHypervisor.open(self.yaml)


@pytest.fixture
def host(tmp_path: Path, debian_kernel: Path) -> Host:
    return Host(tmp_path, debian_kernel)


def test_load_status_plan_unload(host: Host) -> None:
    r = host.run("status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    # No record yet: whatever Xen holds (another tool's image?) is at an unknown place.
    assert doc["State"] == "degraded" and "unknown place" in doc["StateReason"]
    assert doc["CrashKernel"] == "" and doc["Generation"] == 0

    r = host.load()
    assert r.returncode == 0, r.stderr
    assert "generation 1" in r.stdout and "lower half" in r.stdout
    # No record yet: whatever Xen may hold (kexec-tools?) is unloaded first, never guessed.
    assert "no trustworthy record" in r.stderr and "window without a crash kernel" in r.stderr
    sim = host.sim()
    assert sim.armed_image_intact(KEXEC_TYPE_CRASH)

    r = host.run("status")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(":", 1) for line in r.stdout.splitlines())
    assert lines["State"].strip().startswith("loaded (armed by xenkdump (generation 1)")
    assert lines["Crash kernel"].strip() == str(host.kernel)
    assert lines["Initrd"].strip() == str(host.initrd)
    assert "elfcorehdr=" in lines["Command line"]
    assert lines["Crash region"].strip().startswith("0xae6ff000-")
    assert ", the lower half, needs " in lines["Used"]
    assert lines["Versions"].strip().endswith("xenkdumpd not running")

    r = host.run("status", "--json")
    doc = json.loads(r.stdout)
    record = json.loads((host.state / "state.json").read_text())
    assert doc["State"] == "loaded" and doc["Generation"] == 1
    assert doc["ImageSha256"] == record["armed"]["image_sha256"]
    assert doc["CrashRegionUsed"] == [0xAE6FF000, 128 * MIB]

    r = host.run(
        "plan", "--kernel", str(host.kernel), "--initrd", str(host.initrd), "--cmdline", "quiet",
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    validate_plan_json(plan)
    assert plan["half"] == "upper" and plan["must_unload_first"] is False
    assert plan["crash_range"] == {"start": 0xAE6FF000, "size": 256 * MIB}
    kinds = [s["kind"] for s in plan["segments"]]
    assert sorted(kinds) == sorted(
        ["lowmem", "guard", "backup", "kernel", "initrd", "boot_params", "cmdline", "elfcorehdr",
         "purgatory"]
    )  # fmt: skip
    # plan loads nothing
    assert sim.call_counts(KEXEC_TYPE_CRASH) == (1, 1)

    r = host.run("plan", "--kernel", str(host.kernel), "--initrd", str(host.initrd))
    assert r.returncode == 0, r.stderr
    assert "image in the upper half" in r.stdout and "guard" in r.stdout

    r = host.load()
    assert r.returncode == 0, r.stderr
    assert "generation 2" in r.stdout and "upper half" in r.stdout

    r = host.run("unload")
    assert r.returncode == 0, r.stderr
    assert host.sim().armed_image(KEXEC_TYPE_CRASH) is None
    r = host.run("status", "--json")
    assert json.loads(r.stdout)["State"] == "not-loaded"
    record = json.loads((host.state / "state.json").read_text())
    assert (record["generation"], record["loads_issued"], record["unloads_issued"]) == (2, 2, 2)


def _one_line_exit_2(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_inputs_exit_2_and_keep_the_armed_image(host: Host, tmp_path: Path) -> None:
    assert host.load().returncode == 0
    record = (host.state / "state.json").read_bytes()
    sim = host.sim()
    entry = sim.armed_image(KEXEC_TYPE_CRASH).entry  # type: ignore[union-attr]

    missing = tmp_path / "no-such-initrd"
    r = host.run("load", "--kernel", str(host.kernel), "--initrd", str(missing))
    _one_line_exit_2(r, str(missing), "initrd not found")

    truncated = tmp_path / "truncated"
    truncated.write_bytes(host.kernel.read_bytes()[: 2 * MIB])
    r = host.run("load", "--kernel", str(truncated), "--initrd", str(host.initrd))
    _one_line_exit_2(r, str(truncated), "size", "truncated")

    notbz = tmp_path / "not-a-bzimage"
    notbz.write_bytes(b"\x7fELF" + bytes(8192))
    r = host.run("load", "--kernel", str(notbz), "--initrd", str(host.initrd))
    _one_line_exit_2(r, str(notbz), "boot_flag", "expected")

    huge = tmp_path / "huge.img"
    with huge.open("wb") as f:
        f.truncate(300 * MIB)  # sparse: bigger than the whole crash area
    r = host.run("load", "--kernel", str(host.kernel), "--initrd", str(huge))
    _one_line_exit_2(r, "needs", "Xen reserved 256 MiB", "crashkernel=")

    for r in (host.run("status", "--json"),):
        assert json.loads(r.stdout)["Generation"] == 1
    assert (host.state / "state.json").read_bytes() == record
    assert sim.armed_image_intact(KEXEC_TYPE_CRASH)
    assert sim.armed_image(KEXEC_TYPE_CRASH).entry == entry  # type: ignore[union-attr]
    assert sim.call_counts(KEXEC_TYPE_CRASH) == (1, 1)


def test_no_crash_area_exit_2(host: Host) -> None:
    host.yaml.write_text("crash_range: null\n")
    r = host.load()
    _one_line_exit_2(r, "crashkernel=")
    r = host.run("status")
    assert r.returncode == 0
    assert "Crash region:  none (Xen was booted without crashkernel=)" in r.stdout
    assert "State:         not-loaded" in r.stdout


def test_fallback_is_shown_in_status(host: Host) -> None:
    # Twice the kernel's own need (its header's init_size): the image with its initrd
    # fits in the whole area, not in half of it.
    memsz = parse_bzimage(host.kernel.read_bytes()).load_memsz
    size = -(-2 * memsz // MIB) * MIB
    host.yaml.write_text(f"crash_range: {{start: 0x80000000, size: {size:#x}}}\n")
    r = host.load()
    assert r.returncode == 0, r.stderr
    assert "does not fit in half" in r.stderr and "crashkernel=" in r.stderr
    r = host.run("status")
    assert "reloads unload it first" in r.stdout
    assert "Note:" not in r.stdout  # nothing was armed, so nothing was unloaded
    r = host.load()
    assert r.returncode == 0, r.stderr
    assert "unloading the armed crash image" in r.stderr
    r = host.run("status")
    assert "whole crash area" in r.stdout
    assert "reloads unload it first" in r.stdout and "crashkernel=" in r.stdout
    assert "the last load unloaded the armed image first" in r.stdout
    assert host.sim().call_counts(KEXEC_TYPE_CRASH) == (2, 2)  # the first: no record yet


def test_load_config_takes_the_image_from_a_configuration(host: Host) -> None:
    config = host.tmp / "xenkdump.yaml"
    config.write_text(
        f"kernel: {host.kernel}\ninitrd: {host.initrd}\n"
        "cmdline:\n  base: console=ttyS0 root=/dev/vda1\n  append: [nr_cpus=1]\n"
    )
    proc = host.run("load", "--config", str(config), "--no-daemon")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((host.state / "state.json").read_text())["armed"]
    assert record["kernel"] == str(host.kernel) and record["initrd"] == str(host.initrd)
    assert record["user_cmdline"] == "console=ttyS0 root=/dev/vda1 nr_cpus=1"
    assert host.sim().armed_image(KEXEC_TYPE_CRASH) is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "CONFIG", "--kernel", "/boot/vmlinuz"], "expected no --kernel, --initrd"),
        ([], "expected --kernel PATH or --config FILE, found neither"),
        (["--config", "MISSING"], "configuration file not found"),
    ],
)
def test_load_config_misuse_is_one_line_exit_2(host: Host, args: list[str], message: str) -> None:
    config = host.tmp / "xenkdump.yaml"
    config.write_text(f"kernel: {host.kernel}\ninitrd: none\n")
    args = [
        str(config) if a == "CONFIG" else str(host.tmp / "nope.yaml") if a == "MISSING" else a
        for a in args
    ]
    proc = host.run("load", *args, "--no-daemon")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert host.sim().armed_image(KEXEC_TYPE_CRASH) is None


def test_status_with_an_unknown_hypervisor_is_a_usage_error(host: Host) -> None:
    r = subprocess.run(
        [
            str(CTL),
            "--hypervisor",
            "bogus",
            "status",
            "--no-daemon",
            "--state-dir",
            str(host.state),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _one_line_exit_2(r, "--hypervisor", "bogus")
