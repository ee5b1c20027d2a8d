"""``xenkdumpctl hv info``: the real console script in a subprocess, on a simulated host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xenkdump.hv.port import EM_X86_64, KEXEC_TYPE_CRASH, PAGE_SIZE, Segment, e820_type_name
from xenkdump.hv.select import xen_present
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.hv.simhost import default_host

REPO = Path(__file__).resolve().parents[2]


def _ctl() -> Path:
    here = Path(sys.executable).with_name("xenkdumpctl")
    return here if here.exists() else REPO / ".venv" / "bin" / "xenkdumpctl"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_ctl()), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_json_matches_the_host(tmp_path: Path) -> None:
    host_file = tmp_path / "host.yaml"
    proc = run("--hypervisor", f"sim:{host_file}", "hv", "info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    host = default_host()
    assert host_file.exists()  # created with the defaults
    assert info["hypervisor"] == "sim"
    assert info["xen_version"] == "4.17" and info["xen_extraversion"] == ".7"
    assert info["xen_command_line"] == host.xen_command_line
    assert info["crash_range"] == {"start": host.crash_range.start, "size": host.crash_range.size}
    assert info["xen_range"] == {"start": host.xen_range.start, "size": host.xen_range.size}
    assert info["vmcoreinfo_range"]["size"] == 4096
    assert info["cpus"]["max_cpus"] == 4 and info["cpus"]["nr_cpus"] == 4
    assert info["cpus"]["notes"] == [
        {"cpu": i, "start": n.start, "size": n.size} for i, n in enumerate(host.cpu_notes)
    ]
    assert info["memory_map"] == [
        {"addr": e.addr, "size": e.size, "type": e.type, "type_name": e820_type_name(e.type)}
        for e in host.memory_map
    ]
    assert info["kexec_status_parity"] == {"crash": 0, "default": 0}


def test_status_parity_reflects_loads_made_by_another_process(tmp_path: Path) -> None:
    host_file = tmp_path / "host.yaml"
    hv = SimulatedHypervisor.open(host_file)
    dest = hv.crash_range().end - 4 * PAGE_SIZE
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, dest, [Segment(b"x", dest, PAGE_SIZE)])
    info = json.loads(run("--hypervisor", f"sim:{host_file}", "hv", "info", "--json").stdout)
    assert info["kexec_status_parity"]["crash"] == 1
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, dest, [Segment(b"x", dest, PAGE_SIZE)])
    info = json.loads(run("--hypervisor", f"sim:{host_file}", "hv", "info", "--json").stdout)
    assert info["kexec_status_parity"]["crash"] == 0  # loaded, yet 0: it is a parity


def test_human_output_is_a_table(tmp_path: Path) -> None:
    proc = run("--hypervisor", f"sim:{tmp_path / 'host.yaml'}", "hv", "info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    host = default_host()
    assert "Xen version               4.17.7" in out
    assert f"start {host.crash_range.start:#x}" in out and "size 256 MiB" in out
    assert (
        "kexec_status (crash)      0 -- parity of load/unload calls, not whether an image is loaded"
        in out
    )
    assert "CPUs: 4 online, 4 possible" in out
    assert f"  3    {host.cpu_notes[3].start:#018x}     404" in out
    assert "  0x0000000100000000  0x0000000440000000     13.0 GiB  ram" in out
    assert "acpi" in out and "nvs" in out


def test_host_without_crash_area(tmp_path: Path) -> None:
    host_file = tmp_path / "nocrash.yaml"
    host_file.write_text("crash_range: null\n")
    proc = run("--hypervisor", f"sim:{host_file}", "hv", "info")
    assert proc.returncode == 0, proc.stderr
    assert "none (Xen was booted without crashkernel=)" in proc.stdout
    info = json.loads(run("--hypervisor", f"sim:{host_file}", "hv", "info", "--json").stdout)
    assert info["crash_range"] == {"start": 0, "size": 0} and info["cpus"]["notes"] == []


def test_unknown_hypervisor_value(tmp_path: Path) -> None:
    line = _one_line_error(run("--hypervisor", "kvm", "hv", "info"))
    assert "--hypervisor" in line and "'kvm'" in line and "sim[:FILE]" in line


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("xen: [1\n", ":2: invalid YAML"),  # PyYAML marks the end of the stream
        ("cpus:\n  bogus: 1\n", ":2: cpus.bogus: unknown key"),
        ("crash_range: {start: 0xc0000000, size: 0x100000}\n", "crash_range: expected a range"),
    ],
)
def test_malformed_host_file(tmp_path: Path, text: str, expect: str) -> None:
    host_file = tmp_path / "broken.yaml"
    host_file.write_text(text)
    line = _one_line_error(run("--hypervisor", f"sim:{host_file}", "hv", "info"))
    assert str(host_file) in line and expect in line


def test_without_hypervisor_on_a_machine_without_xen() -> None:
    if xen_present():
        pytest.skip("this machine has /proc/xen or /dev/xen/privcmd: the default is xen there")
    line = _one_line_error(run("hv", "info"))
    assert "no Xen found" in line and "--hypervisor sim" in line


def test_hv_needs_a_subcommand(tmp_path: Path) -> None:
    line = _one_line_error(run("--hypervisor", f"sim:{tmp_path / 'h.yaml'}", "hv"))
    assert "required" in line
