"""The simulated-host file: defaults, round trip, the example, every way to get it wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from importcheck import run_and_list, under
from xenkdump.errors import ConfigError
from xenkdump.hv import simhost
from xenkdump.hv.port import E820_ACPI, E820_RAM, AddressRange, E820Entry, e820_type_name
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.hv.simhost import default_host, parse_host, render_host

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def test_default_host_is_a_16_gib_host_with_256_mib_crash_range() -> None:
    host = default_host()
    ram = sum(e.size for e in host.memory_map if e.type == E820_RAM)
    assert 16 * GIB - 64 * (1 << 20) <= ram <= 16 * GIB
    assert host.crash_range.size == 256 << 20
    assert host.crash_range.start % 4096 == 0 and host.crash_range.end <= 4 * GIB
    assert host.max_cpus == 4 and [n.size for n in host.cpu_notes] == [500, 404, 404, 404]
    assert host.vmcoreinfo_range.size == 4096
    assert (host.xen_version, host.xen_extraversion) == ((4, 17), ".7")
    assert "crashkernel=256M" in host.xen_command_line
    kinds = {e.type for e in host.memory_map if e.end <= 4 * GIB}
    assert {1, 2, 3, 4} <= kinds  # RAM, reserved, ACPI, NVS below 4 GiB


def test_render_and_parse_round_trip() -> None:
    host = default_host()
    assert parse_host(render_host(host)) == host


def test_shipped_example_is_the_default_host() -> None:
    path = REPO / "config" / "examples" / "sim-host.yaml"
    assert parse_host(path.read_text(), path) == default_host()


def test_open_creates_the_default_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "host.yaml"
    hv = SimulatedHypervisor.open(path)
    assert path.read_text() == render_host(default_host())
    assert hv.host == default_host()
    assert os.stat(hv.crash_image_path).st_size == 256 << 20
    assert hv.state_path == str(tmp_path / "sub" / "host.state.json")


def test_keys_left_out_take_the_defaults() -> None:
    host = parse_host('xen: {version: "4.8"}\ncrash_range: null\n')
    assert host.xen_version == (4, 8)
    assert host.crash_range == AddressRange(0, 0)
    assert host.memory_map == default_host().memory_map


def test_dom0_vmcoreinfo_is_modelled_and_may_be_absent(tmp_path: Path) -> None:
    host = default_host()
    assert host.dom0_vmcoreinfo == AddressRange(0x1F3DC000, 0x1024)  # Linux's note size
    assert not host.crash_range.overlaps(host.dom0_vmcoreinfo.start, host.dom0_vmcoreinfo.size)
    none = parse_host("dom0: {vmcoreinfo: null}\n")
    assert none.dom0_vmcoreinfo.size == 0
    assert parse_host(render_host(none)) == none
    path = tmp_path / "host.yaml"
    path.write_text("dom0:\n  vmcoreinfo: {start: 0x2000000, size: 0x1024}\n")
    assert SimulatedHypervisor.open(path).dom0_vmcoreinfo_range() == AddressRange(0x2000000, 0x1024)
    with pytest.raises(ConfigError, match=r":1: dom0.vmcore: unknown key"):
        parse_host("dom0: {vmcore: null}\n", "x.yaml")


def test_json_is_accepted() -> None:
    doc = {
        "crash_range": {"start": 0x20000000, "size": 0x8000000},
        "cpus": {"online": 1, "notes": [{"start": 0x1000, "size": 500}]},
        "memory_map": [
            {"addr": 0, "size": 0x80000000, "type": "ram"},
            {"addr": 0x80000000, "size": 0x1000, "type": 3},
        ],
    }
    host = parse_host(json.dumps(doc))
    assert host.crash_range == AddressRange(0x20000000, 0x8000000)
    assert host.max_cpus == 1 and host.nr_cpus == 1
    assert host.memory_map[1] == E820Entry(0x80000000, 0x1000, E820_ACPI)
    assert e820_type_name(3) == "acpi" and e820_type_name(99) == "type-99"


BAD = [
    ("syntax", "crash_range: {start: 0x1000, size: [1\n", r"bad.yaml:2: invalid YAML"),
    ("unknown key", "xen:\n  versoin: '4.17'\n", r"bad.yaml:2: xen.versoin: unknown key"),
    ("top-level list", "- 1\n", r"bad.yaml:1: expected a mapping, found a list"),
    ("number version", "xen:\n  version: 4.17\n", r"bad.yaml:2: xen.version: expected a quoted"),
    (
        "bad version",
        "xen: {version: 'four'}\n",
        r'bad.yaml:1: xen.version: expected a quoted string "MAJOR.MINOR"',
    ),
    ("string int", "cpus:\n  online: 'four'\n", r"bad.yaml:2: cpus.online: expected an integer"),
    ("negative", "cpus:\n  khz: -1\n", r"bad.yaml:2: cpus.khz: expected an integer in \[0"),
    (
        "missing size",
        "crash_range: {start: 0x1000}\n",
        r"bad.yaml:1: crash_range.size: missing \(expected {start: ADDR, size: BYTES}\)",
    ),
    (
        "empty note",
        "cpus:\n  notes:\n    - {start: 0x1000, size: 0}\n",
        r"bad.yaml:3: cpus.notes\[0\].size: expected a size > 0 .*, found integer '0'",
    ),
    (
        "unaligned crash range",
        "crash_range: {start: 0x20000800, size: 0x1000000}\n",
        r"bad.yaml:1: crash_range: expected a page-aligned start and size",
    ),
    (
        "crash range outside RAM",
        "\n\ncrash_range: {start: 0xc0000000, size: 0x1000000}\n",
        r"bad.yaml:3: crash_range: expected a range inside ram entries",
    ),
    (
        "crash range over Xen",
        "crash_range: {start: 0xbe000000, size: 0x1000000}\n",
        r"bad.yaml:1: crash_range: expected a range apart from xen.range",
    ),
    (
        "unsorted map",
        "memory_map:\n  - {addr: 0x100000, size: 0x1000, type: ram}\n"
        "  - {addr: 0x0, size: 0x1000, type: ram}\ncrash_range: null\n",
        r"bad.yaml:3: memory_map\[1\]: expected entries sorted and not overlapping",
    ),
    (
        "bad e820 type",
        "memory_map:\n  - {addr: 0x0, size: 0x1000, type: rom}\n",
        r"bad.yaml:2: memory_map\[0\].type: expected one of ram, reserved",
    ),
    (
        "online above notes",
        "cpus:\n  online: 9\n",
        r"bad.yaml:2: cpus.online: expected 1..4 \(the number of notes\), found 9",
    ),
    ("no notes", "cpus:\n  notes: []\n", r"bad.yaml:2: cpus.notes: expected at least one"),
]


@pytest.mark.parametrize(
    ("text", "message"), [(t, m) for _n, t, m in BAD], ids=[n for n, *_ in BAD]
)
def test_malformed_host_file_names_file_line_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        SimulatedHypervisor.open(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("xen:\n  versoin: '4.17'\ncpus:\n  khz: -1\nmemory_map: {}\n")
    with pytest.raises(ConfigError) as info:
        SimulatedHypervisor.open(path)
    assert [p.split(": ")[0:2] for p in str(info.value).split("; ")] == [
        [f"{path}:2", "xen.versoin"],
        [f"{path}:4", "cpus.khz"],
        [f"{path}:5", "memory_map"],
    ]


def test_non_utf8_host_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"xen: \xff\n")
    with pytest.raises(ConfigError, match=r"bin.yaml: expected UTF-8"):
        SimulatedHypervisor.open(path)


def test_hotplug_edit_keeps_images_and_is_seen_by_a_running_instance(tmp_path: Path) -> None:
    """CPU/memory hot-plug: Xen keeps its crash image while the topology changes."""
    from xenkdump.hv.port import EM_X86_64, KEXEC_TYPE_CRASH, Segment  # noqa: PLC0415
    from xenkdump.hv.sim import SimulatedHypervisor  # noqa: PLC0415

    path = tmp_path / "host.yaml"
    sim = SimulatedHypervisor.open(path)
    crash = sim.crash_range()
    seg = Segment(b"\x90" * 4096, crash.end - 0x2000, 0x2000)
    sim.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, seg.dest, [seg])
    before = sim.machine_memory_map()
    text = path.read_text()
    hot = text.replace("online: 4", "online: 3") + (
        "  - {addr: 0x440000000, size: 0x40000000, type: ram}\n"
    )
    path.write_text(hot)
    after = sim.machine_memory_map()  # the same instance sees the hot-plugged RAM
    assert len(after) == len(before) + 1 and after[-1].addr == 0x440000000
    assert sim.physinfo().nr_cpus == 3
    assert sim.armed_image_intact(KEXEC_TYPE_CRASH)
    assert SimulatedHypervisor.open(path).armed_image_intact(KEXEC_TYPE_CRASH)
    # A boot-time fact changes: that is a reboot, and the slots are empty again.
    path.write_text(hot.replace("crashkernel=256M", "crashkernel=512M"))
    assert SimulatedHypervisor.open(path).armed_image(KEXEC_TYPE_CRASH) is None


# ---- the value a host file validated to, kept next to it ----


def test_the_same_bytes_are_validated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(render_host(default_host()).replace("online: 4", "online: 3"))
    first, _ = simhost.load_host(path)
    assert first.nr_cpus == 3
    assert (tmp_path / "host.validated.json").exists()

    def refuse(raw: bytes, source: object) -> None:
        raise AssertionError("validated again")

    monkeypatch.setattr(simhost, "_validated", refuse)
    assert simhost.load_host(path)[0] == first


def test_other_bytes_or_a_damaged_cache_are_validated_again(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(render_host(default_host()))
    simhost.load_host(path)
    cache = tmp_path / "host.validated.json"
    path.write_text(render_host(default_host()).replace("online: 4", "online: 9"))
    with pytest.raises(ConfigError, match=r"host\.yaml:\d+: cpus\.online: expected 1\.\.4"):
        simhost.load_host(path)
    path.write_text(render_host(default_host()))
    simhost.load_host(path)
    stored = json.loads(cache.read_text())
    for damage in ({**stored, "value": {"xen": {"version": 4}}}, {**stored, "xenkdump": "0"}):
        cache.write_text(json.dumps(damage))
        assert simhost.load_host(path)[0] == default_host()
    cache.write_text("{not json")
    assert simhost.load_host(path)[0] == default_host()


def test_a_validated_host_opens_without_yaml_schema_or_hashing(tmp_path: Path) -> None:
    """``hv info`` on a simulated host (bench/cli.py): YAML, JSON Schema and the boot
    identity's SHA-256 once only."""
    path = tmp_path / "host.yaml"
    SimulatedHypervisor.open(path).close()
    _, modules = run_and_list(
        f"from xenkdump.hv.sim import SimulatedHypervisor\nSimulatedHypervisor.open({str(path)!r})"
    )
    assert "xenkdump.hv.sim" in modules
    assert under(modules, ("yaml", "jsonschema", "xenkdump.schema", "hashlib", "_hashlib")) == []


def test_the_host_files_siblings_replace_its_last_suffix() -> None:
    assert simhost.sibling("/a/b.c/host.yaml", ".lock") == "/a/b.c/host.lock"
    assert simhost.sibling("host.v2.yaml", ".state.json") == "host.v2.state.json"
    assert simhost.sibling("/a/host", ".crash.img") == "/a/host.crash.img"
