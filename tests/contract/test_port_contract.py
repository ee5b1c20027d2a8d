"""The hypervisor port's contract, pinned against every adapter (the ``hv`` fixture).

Only the port API is used, so the same tests pass against real Xen (run in the
real-Xen lab) and against SimulatedHypervisor.  Expected values are Xen's
(docs/xen-kexec-contract.md §2.5, §3.1, §4, as measured on Xen 4.17.7: §6); parity is
asserted relative to the value seen at the start of each test.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from xenkdump.errors import HypervisorError
from xenkdump.hv.port import (
    E820_RAM,
    EM_X86_64,
    KEXEC_TYPE_CRASH,
    KEXEC_TYPE_DEFAULT,
    MIN_XEN_VERSION,
    PAGE_SIZE,
    AddressRange,
    Hypervisor,
    Segment,
)
from xenkdump.image.elfcore import check_dom0_vmcoreinfo

P = PAGE_SIZE
MIB = 1 << 20


def _errno_of(call: Callable[[], object]) -> int:
    with pytest.raises(HypervisorError) as info:
        call()
    return info.value.errno


def small_image(crash: AddressRange) -> tuple[list[Segment], int]:
    """A buffered segment near the top of the crash area and a map-only low-1 MiB one."""
    dest = crash.end - 8 * P
    return [Segment(b"\xcc" * 5000, dest, 4 * P), Segment(None, 0, MIB)], dest


# ---------------------------------------------------------------------------
# Queries


def test_crash_range_is_nonempty_and_page_aligned(hv: Hypervisor) -> None:
    crash = hv.crash_range()
    assert crash.size > 0
    assert crash.start % P == 0 and crash.size % P == 0


def test_memory_map_is_sorted_and_ram_covers_the_crash_range(hv: Hypervisor) -> None:
    mm = hv.machine_memory_map()
    assert mm, "empty machine memory map"
    assert [e.addr for e in mm] == sorted(e.addr for e in mm)
    assert all(e.size > 0 for e in mm)
    crash = hv.crash_range()
    # Xen still reports its crash area as RAM (§2.8): contiguous RAM covers it.
    pos = crash.start
    for e in mm:
        if e.type == E820_RAM and e.addr <= pos < e.end:
            pos = e.end
    assert pos >= crash.end, f"RAM stops at {pos:#x}, inside the crash range"


def test_version_and_fixed_ranges(hv: Hypervisor) -> None:
    assert hv.xen_version() >= MIN_XEN_VERSION
    assert isinstance(hv.xen_extraversion(), str)
    assert isinstance(hv.xen_command_line(), str)
    assert hv.vmcoreinfo_range().size == 4096  # VMCOREINFO_BYTES (§2.4)
    xen = hv.xen_range()
    assert xen.size > 0
    assert not hv.crash_range().overlaps(xen.start, xen.size)


def test_dom0_vmcoreinfo_is_a_machine_range_in_ram_outside_the_crash_area(
    hv: Hypervisor,
) -> None:
    note = hv.dom0_vmcoreinfo_range()
    # Linux's note buffer: VMCOREINFO_BYTES (a page) plus two note headers and the name.
    assert 0 < note.size <= 2 * PAGE_SIZE
    check_dom0_vmcoreinfo(note, hv.machine_memory_map(), hv.crash_range())  # raises if not


def test_cpus_and_their_note_buffers(hv: Hypervisor) -> None:
    max_cpus = hv.max_cpus()
    assert max_cpus >= 1
    info = hv.physinfo()
    assert info.max_cpu_id + 1 == max_cpus
    assert 1 <= info.nr_cpus <= max_cpus
    notes = [hv.cpu_note_range(cpu) for cpu in range(max_cpus)]
    assert all(n.size > 0 and n.start > 0 for n in notes)
    # One buffer per CPU, never shared.
    assert len({n.start for n in notes}) == max_cpus


@pytest.mark.parametrize("past", [0, 1, 1000])
def test_cpu_note_past_max_cpus_is_erange(hv: Hypervisor, past: int) -> None:
    assert _errno_of(lambda: hv.cpu_note_range(hv.max_cpus() + past)) == errno.ERANGE


def test_negative_cpu_note_is_erange(hv: Hypervisor) -> None:
    assert _errno_of(lambda: hv.cpu_note_range(-1)) == errno.ERANGE


# ---------------------------------------------------------------------------
# Loads that Xen accepts


def test_good_load_toggles_status(hv: Hypervisor) -> None:
    s0 = hv.kexec_status(KEXEC_TYPE_CRASH)
    assert s0 in (0, 1)
    segments, entry = small_image(hv.crash_range())
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, entry, segments)
    assert hv.kexec_status(KEXEC_TYPE_CRASH) == s0 ^ 1


def test_fifteen_segments_are_accepted(hv: Hypervisor) -> None:
    crash = hv.crash_range()
    segments = [Segment(b"%d" % i, crash.end - (2 * i + 2) * P, P) for i in range(15)]
    s0 = hv.kexec_status(KEXEC_TYPE_CRASH)
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, segments[0].dest, segments)
    assert hv.kexec_status(KEXEC_TYPE_CRASH) == s0 ^ 1


def test_entry_at_the_end_of_the_crash_area_is_accepted(hv: Hypervisor) -> None:
    # Xen's check is end-inclusive (§4.5).
    crash = hv.crash_range()
    segments, _entry = small_image(crash)
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, crash.end, segments)


def test_map_only_segment_may_lie_outside_the_crash_area(hv: Hypervisor) -> None:
    crash = hv.crash_range()
    dest = crash.end - 4 * P
    below = crash.start - 16 * P  # NULL-buf segments are only mapped (§3.1)
    segments = [Segment(b"k", dest, P), Segment(None, below, 8 * P)]
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, dest, segments)


def test_status_is_the_parity_of_loads_and_unloads(hv: Hypervisor) -> None:
    # Seen on Xen 4.17.7: load 1, load 0, unload 1, unload 0 (from 0) -- §4.1.
    s0 = hv.kexec_status(KEXEC_TYPE_CRASH)
    segments, entry = small_image(hv.crash_range())
    seen = []
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, entry, segments)
    seen.append(hv.kexec_status(KEXEC_TYPE_CRASH))
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, entry, segments)
    seen.append(hv.kexec_status(KEXEC_TYPE_CRASH))
    hv.kexec_unload(KEXEC_TYPE_CRASH)
    seen.append(hv.kexec_status(KEXEC_TYPE_CRASH))
    hv.kexec_unload(KEXEC_TYPE_CRASH)
    seen.append(hv.kexec_status(KEXEC_TYPE_CRASH))
    assert seen == [s0 ^ 1, s0, s0 ^ 1, s0]


def test_unloading_an_empty_slot_succeeds_and_still_toggles(hv: Hypervisor) -> None:
    hv.kexec_unload(KEXEC_TYPE_CRASH)
    s0 = hv.kexec_status(KEXEC_TYPE_CRASH)
    hv.kexec_unload(KEXEC_TYPE_CRASH)
    assert hv.kexec_status(KEXEC_TYPE_CRASH) == s0 ^ 1


def test_crash_status_is_independent_of_default(hv: Hypervisor) -> None:
    d0 = hv.kexec_status(KEXEC_TYPE_DEFAULT)
    segments, entry = small_image(hv.crash_range())
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, entry, segments)
    assert hv.kexec_status(KEXEC_TYPE_DEFAULT) == d0


# ---------------------------------------------------------------------------
# Loads that Xen refuses, with the errno it gives (§3.1); none changes the slot.


def _rejections() -> list[
    tuple[str, int, Callable[[AddressRange], tuple[int, int, int, list[Segment]]]]
]:
    def top(c: AddressRange) -> int:
        return c.end - 16 * P  # a spot near the top of the area

    crash_t = KEXEC_TYPE_CRASH
    return [
        (
            "16 segments",
            errno.EINVAL,
            lambda c: (crash_t, EM_X86_64, c.end - 2 * P,
                       [Segment(b"s", c.end - (2 * i + 2) * P, P) for i in range(16)]),
        ),
        (
            "type 2",
            errno.EINVAL,
            lambda c: (2, EM_X86_64, top(c), [Segment(b"x", top(c), P)]),
        ),
        (
            "misaligned dest",
            errno.EADDRNOTAVAIL,
            lambda c: (crash_t, EM_X86_64, top(c), [Segment(b"x", top(c) + 0x800, P)]),
        ),
        (
            "misaligned size",
            errno.EADDRNOTAVAIL,
            lambda c: (crash_t, EM_X86_64, top(c), [Segment(b"x", top(c), P + 0x10)]),
        ),
        (
            "overlap",
            errno.EINVAL,
            lambda c: (crash_t, EM_X86_64, top(c),
                       [Segment(b"a", top(c), 2 * P), Segment(b"b", top(c) + P, 2 * P)]),
        ),
        (
            "overlap with a map-only segment",
            errno.EINVAL,
            lambda c: (crash_t, EM_X86_64, top(c),
                       [Segment(b"a", top(c), 2 * P), Segment(None, top(c) - P, 2 * P)]),
        ),
        (
            "buf larger than dest",
            errno.EINVAL,
            lambda c: (crash_t, EM_X86_64, top(c), [Segment(b"x" * (P + 1), top(c), P)]),
        ),
        (
            "buffered segment below the area",
            errno.EADDRNOTAVAIL,
            lambda c: (crash_t, EM_X86_64, top(c), [Segment(b"x", c.start - P, P)]),
        ),
        (
            "buffered segment across the end",
            errno.EADDRNOTAVAIL,
            lambda c: (crash_t, EM_X86_64, top(c), [Segment(b"x", c.end - P, 2 * P)]),
        ),
        (
            "entry above the area",
            errno.EADDRNOTAVAIL,
            lambda c: (crash_t, EM_X86_64, c.end + 1, [Segment(b"x", top(c), P)]),
        ),
        (
            "entry below the area",
            errno.EADDRNOTAVAIL,
            lambda c: (crash_t, EM_X86_64, c.start - 1, [Segment(b"x", top(c), P)]),
        ),
        (
            "arch 999",
            errno.EINVAL,
            lambda c: (crash_t, 999, top(c), [Segment(b"x", top(c), P)]),
        ),
        (
            "arch 0",
            errno.EINVAL,
            lambda c: (crash_t, 0, top(c), [Segment(b"x", top(c), P)]),
        ),
        (
            "whole-area segment leaves no page for Xen",
            errno.ENOMEM,
            lambda c: (crash_t, EM_X86_64, c.start, [Segment(bytes(P), c.start, c.size)]),
        ),
        (
            "default type, misaligned",
            errno.EADDRNOTAVAIL,
            lambda c: (KEXEC_TYPE_DEFAULT, EM_X86_64, 0x1000000,
                       [Segment(b"x", 0x1000000 + 0x10, P)]),
        ),
        (
            "default type, overlap",
            errno.EINVAL,
            lambda c: (KEXEC_TYPE_DEFAULT, EM_X86_64, 0x1000000,
                       [Segment(b"a", 0x1000000, 2 * P), Segment(b"b", 0x1001000, P)]),
        ),
    ]  # fmt: skip


REJECTIONS = _rejections()


@pytest.mark.parametrize(
    ("build", "expected"), [(b, e) for _n, e, b in REJECTIONS], ids=[n for n, _e, _b in REJECTIONS]
)
def test_rejected_load(
    hv: Hypervisor,
    build: Callable[[AddressRange], tuple[int, int, int, list[Segment]]],
    expected: int,
) -> None:
    type_, arch, entry, segments = build(hv.crash_range())
    before = (hv.kexec_status(KEXEC_TYPE_CRASH), hv.kexec_status(KEXEC_TYPE_DEFAULT))
    err = _errno_of(lambda: hv.kexec_load(type_, arch, entry, segments))
    assert err == expected, f"expected {errno.errorcode[expected]}, got {errno.errorcode.get(err)}"
    # A refused load never reaches the slot swap: the parity stays.
    assert (hv.kexec_status(KEXEC_TYPE_CRASH), hv.kexec_status(KEXEC_TYPE_DEFAULT)) == before


def test_rejected_load_leaves_the_armed_slot_in_place(hv: Hypervisor) -> None:
    segments, entry = small_image(hv.crash_range())
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, entry, segments)
    s1 = hv.kexec_status(KEXEC_TYPE_CRASH)
    assert _errno_of(lambda: hv.kexec_load(KEXEC_TYPE_CRASH, 999, entry, segments)) == errno.EINVAL
    assert hv.kexec_status(KEXEC_TYPE_CRASH) == s1


@pytest.mark.parametrize("bad_type", [2, 7, 255])
def test_unload_and_status_of_an_unknown_type_are_einval(hv: Hypervisor, bad_type: int) -> None:
    assert _errno_of(lambda: hv.kexec_unload(bad_type)) == errno.EINVAL
    assert _errno_of(lambda: hv.kexec_status(bad_type)) == errno.EINVAL
