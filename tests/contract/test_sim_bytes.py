"""What a load does to the crash area's bytes: the simulator's byte model (sim only).

Real dom0 cannot read the crash area back (docs/xen-kexec-contract.md §6), so these
pin the simulator against Xen's code paths as §3.2/§3.3 describe them: copy
and zero-fill, NULL-buf segments never written, control pages from the
lowest free pages (zeroed as taken), arch checked after the copy (§4.3, §4.4).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from xenkdump.errors import HypervisorError
from xenkdump.hv.port import EM_X86_64, KEXEC_TYPE_CRASH, PAGE_SIZE, Segment
from xenkdump.hv.sim import IND_DONE, KEXEC_RELOC_CODE, SimulatedHypervisor

P = PAGE_SIZE
MIB = 1 << 20
C = KEXEC_TYPE_CRASH
ADDR_MASK = 0x000F_FFFF_FFFF_F000


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedHypervisor:
    return SimulatedHypervisor.open(tmp_path / "host.yaml")


def walk(sim: SimulatedHypervisor, l4: int, va: int) -> int | None:
    """Translate ``va`` through the page tables Xen built in the crash area."""
    table = l4
    for shift in (39, 30, 21, 12):
        raw = sim.read_crash_area(table + ((va >> shift) & 511) * 8, 8)
        entry = struct.unpack("<Q", raw)[0]
        if not entry & 1:
            return None
        table = entry & ADDR_MASK
    return table


def _errno(call: object) -> int:
    assert callable(call)
    with pytest.raises(HypervisorError) as info:
        call()
    return info.value.errno


def test_load_copies_the_buffer_and_zero_fills_to_dest_size(sim: SimulatedHypervisor) -> None:
    crash = sim.crash_range()
    dest = crash.end - 8 * P
    sim.kexec_load(C, EM_X86_64, dest, [Segment(b"\xaa" * 4 * P, dest, 4 * P)])
    assert sim.read_crash_area(dest, 4 * P) == b"\xaa" * 4 * P
    sim.kexec_unload(C)
    sim.kexec_load(C, EM_X86_64, dest, [Segment(b"\xbb" * 5000, dest, 4 * P)])
    expected = b"\xbb" * 5000 + bytes(4 * P - 5000)
    assert sim.read_crash_area(dest, 4 * P) == expected
    armed = sim.armed_image(C)
    assert armed is not None
    assert armed.segments[0].sha256 == hashlib.sha256(expected).hexdigest()
    assert sim.armed_image_intact(C)


def test_null_buf_segment_is_mapped_but_never_written(sim: SimulatedHypervisor) -> None:
    crash = sim.crash_range()
    region = crash.end - 8 * P
    sim.kexec_load(C, EM_X86_64, region, [Segment(b"\xaa" * 4 * P, region, 4 * P)])
    sim.kexec_unload(C)
    other = crash.end - 16 * P
    sim.kexec_load(C, EM_X86_64, other, [Segment(b"k", other, P), Segment(None, region, 4 * P)])
    assert sim.read_crash_area(region, 4 * P) == b"\xaa" * 4 * P
    armed = sim.armed_image(C)
    assert armed is not None and armed.segments[1].sha256 is None
    l4 = next(c.addr for c in armed.control_pages if c.role == "L4")
    assert walk(sim, l4, region + 3 * P) == region + 3 * P


def test_control_pages_come_from_the_lowest_free_pages_and_are_zeroed(
    sim: SimulatedHypervisor,
) -> None:
    crash = sim.crash_range()
    # Dirty the bottom of the area first.
    sim.kexec_load(C, EM_X86_64, crash.start, [Segment(b"\xaa" * 64 * P, crash.start, 64 * P)])
    sim.kexec_unload(C)
    top = crash.end - 8 * P
    sim.kexec_load(C, EM_X86_64, top, [Segment(b"\xcc" * 5000, top, 4 * P), Segment(None, 0, MIB)])
    armed = sim.armed_image(C)
    assert armed is not None
    pages = armed.control_pages
    # xen-kexec-contract.md §3.3 for this layout: code, L4+L3+L2+L1, indirection, an L1 for the
    # top segment's 2 MiB, L2+L1 for the low 1 MiB, L3+L2+L1 for the kexec_reloc alias.
    assert [p.role for p in pages] == [
        "code", "L4", "L3", "L2", "L1", "indirection", "L1", "L2", "L1", "L3", "L2", "L1",
    ]  # fmt: skip
    assert [p.addr for p in pages] == [crash.start + i * P for i in range(len(pages))]
    for page in pages:
        raw = sim.read_crash_area(page.addr, P)
        assert b"\xaa" * 8 not in raw, page  # zeroed when taken
        if page.role.startswith("L"):
            entries = struct.unpack(f"<{P // 8}Q", raw)
            assert all(e == 0 or e & 0xFFF == 0x063 for e in entries), page
    code = sim.read_crash_area(pages[0].addr, P)
    assert code == KEXEC_RELOC_CODE + bytes(P - len(KEXEC_RELOC_CODE))
    ind = sim.read_crash_area(pages[5].addr, P)
    assert ind == struct.pack("<Q", IND_DONE) + bytes(P - 8)
    # The first page past them was not taken: still the old bytes.
    assert sim.read_crash_area(crash.start + len(pages) * P, P) == b"\xaa" * P
    # The tables are a real identity map of exactly what Xen maps (§5.3).
    l4 = pages[1].addr
    assert walk(sim, l4, top + P) == top + P
    assert walk(sim, l4, 0x9F000) == 0x9F000
    assert walk(sim, l4, pages[0].addr) == pages[0].addr
    assert walk(sim, l4, pages[5].addr) == pages[5].addr
    assert walk(sim, l4, sim.host.kexec_reloc_va) == pages[0].addr
    assert walk(sim, l4, pages[1].addr) is None  # page tables are not mapped
    assert walk(sim, l4, crash.start + 100 * P) is None


def test_control_pages_skip_every_segment_including_null_buf_ones(
    sim: SimulatedHypervisor,
) -> None:
    start = sim.crash_range().start
    segments = [Segment(b"x", start, 2 * P), Segment(None, start + 3 * P, P)]
    sim.kexec_load(C, EM_X86_64, start, segments)
    armed = sim.armed_image(C)
    assert armed is not None
    addrs = [p.addr for p in armed.control_pages]
    assert addrs[:3] == [start + 2 * P, start + 4 * P, start + 5 * P]


def test_failed_reload_over_the_armed_image_corrupts_it(sim: SimulatedHypervisor) -> None:
    # Seen on Xen 4.17.7: a reload refused for its arch had already overwritten A (§4.3, §4.4).
    crash = sim.crash_range()
    dest = crash.end - 8 * P
    sim.kexec_load(C, EM_X86_64, dest, [Segment(b"A" * 3 * P, dest, 4 * P)])
    armed_a = sim.armed_image(C)
    status = sim.kexec_status(C)
    assert sim.armed_image_intact(C)
    err = _errno(lambda: sim.kexec_load(C, 999, dest, [Segment(b"B" * P, dest, 4 * P)]))
    assert err == errno.EINVAL
    assert sim.armed_image(C) == armed_a  # the slot still holds A ...
    assert sim.kexec_status(C) == status
    assert not sim.armed_image_intact(C)  # ... but A's bytes are gone
    damage = sim.armed_image_damage(C)
    assert f"segment 0 at {dest:#x}+{4 * P:#x}" in damage
    assert sim.read_crash_area(dest, P) == b"B" * P


def test_enomem_after_taking_some_pages_has_already_zeroed_them(
    sim: SimulatedHypervisor,
) -> None:
    crash = sim.crash_range()
    dest = crash.end - 8 * P
    sim.kexec_load(C, EM_X86_64, dest, [Segment(b"A" * P, dest, P)])
    armed = sim.armed_image(C)
    assert armed is not None
    a_pages = {p.role: p.addr for p in armed.control_pages if p.role in ("code", "L4", "L3")}
    # Leave exactly two free pages at the bottom: code page and L4 fit, the L3 does not.
    squeeze = [Segment(None, crash.start + 2 * P, crash.size - 2 * P)]
    assert _errno(lambda: sim.kexec_load(C, EM_X86_64, crash.start, squeeze)) == errno.ENOMEM
    assert sim.read_crash_area(crash.start, 2 * P) == bytes(2 * P)
    damage = sim.armed_image_damage(C)
    assert f"Xen's code page at {a_pages['code']:#x}" in damage
    assert f"Xen's L4 page at {a_pages['L4']:#x}" in damage
    assert not any("L3" in d or "segment" in d for d in damage), damage


def _lower_half_image(sim: SimulatedHypervisor) -> tuple[int, str]:
    crash = sim.crash_range()
    half = crash.size // 2
    dest = crash.start + half - 8 * P
    sim.kexec_load(C, EM_X86_64, dest, [Segment(b"A" * 3 * P, dest, 4 * P), Segment(None, 0, MIB)])
    armed = sim.armed_image(C)
    assert armed is not None and sim.armed_image_intact(C)
    assert all(p.addr < crash.start + half for p in armed.control_pages)
    digest = armed.segments[0].sha256
    assert digest is not None
    return dest, digest


def test_guarded_reload_into_the_other_half_keeps_the_armed_image_intact(
    sim: SimulatedHypervisor,
) -> None:
    crash = sim.crash_range()
    half = crash.size // 2
    a_dest, a_digest = _lower_half_image(sim)
    b_dest = crash.end - 8 * P
    image_b = [
        Segment(b"B" * 2 * P, b_dest, 4 * P),
        Segment(None, crash.start, half),  # guard: Xen's control pages skip the armed half
        Segment(None, 0, MIB),
    ]
    assert _errno(lambda: sim.kexec_load(C, 999, b_dest, image_b)) == errno.EINVAL
    assert sim.armed_image_intact(C), sim.armed_image_damage(C)
    sim.kexec_load(C, EM_X86_64, b_dest, image_b)
    armed = sim.armed_image(C)
    assert armed is not None and armed.entry == b_dest and sim.armed_image_intact(C)
    assert all(p.addr >= crash.start + half for p in armed.control_pages)
    # A's bytes are still there, untouched by B's load.
    a_now = hashlib.sha256(sim.read_crash_area(a_dest, 4 * P)).hexdigest()
    assert a_now == a_digest


def test_unguarded_reload_into_the_other_half_still_destroys_the_armed_image(
    sim: SimulatedHypervisor,
) -> None:
    # Without the guard B's control pages come from the bottom -- where A's live.
    crash = sim.crash_range()
    _lower_half_image(sim)
    b_dest = crash.end - 8 * P
    image_b = [Segment(b"B" * 2 * P, b_dest, 4 * P)]
    assert _errno(lambda: sim.kexec_load(C, 999, b_dest, image_b)) == errno.EINVAL
    damage = sim.armed_image_damage(C)
    assert damage and all("segment" not in d for d in damage)
    assert any("code page" in d for d in damage)


def test_state_is_shared_by_a_second_instance(sim: SimulatedHypervisor) -> None:
    crash = sim.crash_range()
    dest = crash.end - 8 * P
    sim.kexec_load(C, EM_X86_64, dest, [Segment(b"shared", dest, P)])
    other = SimulatedHypervisor.open(sim.host_path)
    assert other.kexec_status(C) == sim.kexec_status(C) == 1
    assert other.armed_image(C) == sim.armed_image(C)
    assert other.read_crash_area(dest, 6) == b"shared"
    assert other.armed_image_intact(C)
    other.kexec_unload(C)
    assert sim.kexec_status(C) == 0 and sim.armed_image(C) is None


CHILD = """
import json, sys
from pathlib import Path
from xenkdump.hv.port import EM_X86_64, KEXEC_TYPE_CRASH as C, Segment
from xenkdump.hv.sim import SimulatedHypervisor
hv = SimulatedHypervisor.open(Path(sys.argv[1]))
before = hv.armed_image(C)
crash = hv.crash_range()
dest = crash.end - 32 * 4096
hv.kexec_load(C, EM_X86_64, dest, [Segment(b"child", dest, 4096)])
print(json.dumps({"saw_entry": before.entry if before else None, "loaded_entry": dest,
                  "status": hv.kexec_status(C)}))
"""


def test_state_is_shared_with_another_process(sim: SimulatedHypervisor) -> None:
    crash = sim.crash_range()
    dest = crash.end - 8 * P
    sim.kexec_load(C, EM_X86_64, dest, [Segment(b"parent", dest, P)])
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(sim.host_path)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    ).stdout
    child = json.loads(out)
    assert child["saw_entry"] == dest
    assert child["status"] == 0  # load, load: parity 0
    armed = sim.armed_image(C)
    assert armed is not None and armed.entry == child["loaded_entry"]
    assert sim.read_crash_area(armed.entry, 5) == b"child"
    assert sim.kexec_status(C) == 0
