"""SimulatedHypervisor outside the contract: hosts without a crash area, old Xen, raw
get_range ids, ABI field limits, and what happens to its state files."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from xenkdump.errors import ConfigError, HypervisorError, InputError
from xenkdump.hv.port import (
    EM_386,
    EM_X86_64,
    KEXEC_RANGE_MA_CPU,
    KEXEC_RANGE_MA_CRASH,
    KEXEC_RANGE_MA_VMCOREINFO,
    KEXEC_RANGE_MA_XEN,
    KEXEC_TYPE_CRASH,
    KEXEC_TYPE_DEFAULT,
    PAGE_SIZE,
    AddressRange,
    Hypervisor,
    Segment,
)
from xenkdump.hv.sim import SimulatedHypervisor

P = PAGE_SIZE
C = KEXEC_TYPE_CRASH


def _errno(call: Callable[[], object]) -> int:
    with pytest.raises(HypervisorError) as info:
        call()
    return info.value.errno


def _host(tmp_path: Path, text: str) -> SimulatedHypervisor:
    path = tmp_path / "host.yaml"
    path.write_text(text)
    return SimulatedHypervisor.open(path)


def test_it_is_a_hypervisor_port(tmp_path: Path) -> None:
    hv = SimulatedHypervisor.open(tmp_path / "h.yaml")
    assert isinstance(hv, Hypervisor)
    assert hv.name == "sim"
    with hv as same:
        assert same is hv


@pytest.mark.parametrize("range_id", [3, 4, 5, 7, 100, -1])
def test_unknown_range_ids_are_einval(tmp_path: Path, range_id: int) -> None:
    hv = SimulatedHypervisor.open(tmp_path / "h.yaml")
    assert _errno(lambda: hv.get_range(range_id)) == errno.EINVAL


def test_known_range_ids(tmp_path: Path) -> None:
    hv = SimulatedHypervisor.open(tmp_path / "h.yaml")
    host = hv.host
    assert hv.get_range(KEXEC_RANGE_MA_CRASH) == host.crash_range
    assert hv.get_range(KEXEC_RANGE_MA_XEN) == host.xen_range
    assert hv.get_range(KEXEC_RANGE_MA_VMCOREINFO) == host.vmcoreinfo_range
    assert hv.get_range(KEXEC_RANGE_MA_CPU, 3) == host.cpu_notes[3]


def test_host_without_a_crash_area(tmp_path: Path) -> None:
    hv = _host(tmp_path, "crash_range: null\n")
    assert hv.crash_range() == AddressRange(0, 0)  # success, 0/0 (xen-kexec-contract.md §2.5)
    assert _errno(lambda: hv.cpu_note_range(0)) == errno.EINVAL  # no notes array
    assert _errno(lambda: hv.cpu_note_range(4)) == errno.ERANGE  # range is checked first
    assert hv.vmcoreinfo_range().size == 4096  # works without a crash area
    # Entry 0 is "inside" [0, 0]; the map-only segment passes; no page for Xen: ENOMEM.
    seg = [Segment(None, 0x100000, P)]
    assert _errno(lambda: hv.kexec_load(C, EM_X86_64, 0, seg)) == errno.ENOMEM
    assert _errno(lambda: hv.kexec_load(C, EM_X86_64, P, seg)) == errno.EADDRNOTAVAIL
    assert hv.kexec_status(C) == 0


def test_xen_before_4_4_accepts_load_and_does_nothing(tmp_path: Path) -> None:
    # Command 4 is unknown there and the hypercall answers 0 (§4.2).
    hv = _host(tmp_path, 'xen: {version: "4.3"}\n')
    crash = hv.crash_range()
    dest = crash.end - 4 * P
    hv.kexec_load(C, EM_X86_64, dest, [Segment(b"x", dest, P)])
    hv.kexec_unload(C)
    assert hv.armed_image(C) is None
    assert hv.kexec_status(C) == 0
    assert hv.read_crash_area(dest, 1) == b"\0"
    assert hv.call_counts(C) == (0, 0)


def test_xen_before_4_9_has_no_status(tmp_path: Path) -> None:
    hv = _host(tmp_path, 'xen: {version: "4.8"}\n')
    dest = hv.crash_range().end - 4 * P
    hv.kexec_load(C, EM_X86_64, dest, [Segment(b"x", dest, P)])
    assert hv.armed_image(C) is not None
    assert hv.kexec_status(C) == 0  # cmd 6 unknown: 0 whatever is loaded
    assert hv.kexec_status(7) == 0


def test_default_type_loads_touch_no_crash_area_byte(tmp_path: Path) -> None:
    hv = SimulatedHypervisor.open(tmp_path / "h.yaml")
    crash = hv.crash_range()
    before = hv.read_crash_area(crash.start, 64 * P)
    # A DEFAULT image may go anywhere, even over the crash area.
    hv.kexec_load(KEXEC_TYPE_DEFAULT, EM_386, crash.start, [Segment(b"\xff" * P, crash.start, P)])
    assert hv.read_crash_area(crash.start, 64 * P) == before
    armed = hv.armed_image(KEXEC_TYPE_DEFAULT)
    assert armed is not None and armed.arch == EM_386 and armed.control_pages == ()
    assert hv.armed_image_intact(KEXEC_TYPE_DEFAULT)
    assert hv.kexec_status(KEXEC_TYPE_DEFAULT) == 1 and hv.kexec_status(C) == 0
    err = _errno(lambda: hv.kexec_load(KEXEC_TYPE_DEFAULT, 999, 0, [Segment(b"x", 0, P)]))
    assert err == errno.EINVAL


def test_validation_order_matches_xen(tmp_path: Path) -> None:
    hv = SimulatedHypervisor.open(tmp_path / "h.yaml")
    crash = hv.crash_range()
    # Overlapping AND buf > dest: the overlap is reported (EINVAL either way, so check
    # the message); a bad arch AND a misaligned segment: alignment first, arch last.
    both = [Segment(b"a", crash.start, 2 * P), Segment(b"b" * 3 * P, crash.start + P, 2 * P)]
    with pytest.raises(HypervisorError, match="segments 0 and 1 overlap"):
        hv.kexec_load(C, EM_X86_64, crash.start, both)
    bad_arch_and_misaligned = [Segment(b"a", crash.start + 1, P)]
    err = _errno(lambda: hv.kexec_load(C, 999, crash.start, bad_arch_and_misaligned))
    assert err == errno.EADDRNOTAVAIL  # arch is checked last
    # 16 segments with type 2: the count is checked first.
    many = [Segment(b"s", crash.start + 2 * i * P, P) for i in range(16)]
    with pytest.raises(HypervisorError, match="16 segments"):
        hv.kexec_load(2, EM_X86_64, crash.start, many)


def test_values_that_do_not_fit_the_abi_are_refused(tmp_path: Path) -> None:
    hv = SimulatedHypervisor.open(tmp_path / "h.yaml")
    start = hv.crash_range().start
    assert _errno(lambda: hv.kexec_load(256, EM_X86_64, start, [])) == errno.EINVAL
    assert _errno(lambda: hv.kexec_load(C, 1 << 16, start, [])) == errno.EINVAL
    assert _errno(lambda: hv.kexec_load(C, EM_X86_64, -1, [])) == errno.EINVAL
    assert _errno(lambda: hv.kexec_load(C, EM_X86_64, start, [Segment(None, 1 << 64, P)])) == (
        errno.EINVAL
    )


def test_read_crash_area_outside_the_area_is_refused(tmp_path: Path) -> None:
    hv = SimulatedHypervisor.open(tmp_path / "h.yaml")
    crash = hv.crash_range()
    with pytest.raises(InputError, match="not inside the crash area"):
        hv.read_crash_area(crash.end - 8, 16)


def test_editing_the_host_file_reboots_the_host(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    hv = SimulatedHypervisor.open(path)
    dest = hv.crash_range().end - 4 * P
    hv.kexec_load(C, EM_X86_64, dest, [Segment(b"x", dest, P)])
    assert SimulatedHypervisor.open(path).kexec_status(C) == 1  # same file: same state
    path.write_text(path.read_text() + "# a comment changes no fact\n")
    assert SimulatedHypervisor.open(path).kexec_status(C) == 1
    path.write_text(path.read_text().replace('extraversion: ".7"', 'extraversion: ".8"'))
    again = SimulatedHypervisor.open(path)  # a new Xen build: a reboot
    assert again.kexec_status(C) == 0 and again.armed_image(C) is None
    assert again.read_crash_area(dest, 1) == b"\0"


def test_corrupt_state_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    hv = SimulatedHypervisor.open(path)
    Path(hv.state_path).write_text("{not json")
    with pytest.raises(ConfigError, match=r"host.state.json: simulator state is corrupt"):
        SimulatedHypervisor.open(path)


def test_state_survives_a_deleted_state_file_as_a_fresh_host(tmp_path: Path) -> None:
    hv = SimulatedHypervisor.open(tmp_path / "host.yaml")
    os.unlink(hv.state_path)
    assert hv.kexec_status(C) == 0
    hv.kexec_unload(C)
    assert hv.kexec_status(C) == 1 and hv.call_counts(C) == (0, 1)
