"""The purgatory run from the CPU state Xen leaves (docs/xen-kexec-contract.md §5.3), in unicorn.

The 2013 xen-devel thread on the kexec hypercall settled that register state at
entry is undefined; these tests give the purgatory random GPRs, flags and
[rsp], Xen's unusable GDTR/IDTR and page tables that map only the segments, and
require that it reaches the Linux entry exactly as docs/crash-image.md §1.4 wants it -- or, with
any byte of a verified region changed, that it never does.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from xenlike import (
    KERNEL_STUB,
    CrashImage,
    Outcome,
    Segment,
    XenLikeMachine,
    make_crash_image,
    page_up,
)

from xenkdump.image.purgatory import (
    PurgatoryParams,
    VerifiedRegion,
    build_purgatory,
    parse_header,
)

SEEDS = range(50)


def arm(image: CrashImage, blob: bytes, serial_port: int = 0) -> tuple[PurgatoryParams, int]:
    """Plan the purgatory for this image and put its bytes in the segment."""
    regions = [
        VerifiedRegion(s.start, s.dest_size, hashlib.sha256(s.image()).digest())
        for s in (image.segments[n] for n in image.verified)
    ]
    params = PurgatoryParams(
        kernel_entry=image.kernel_entry,
        boot_params=image.boot_params,
        regions=regions,
        backup_src=image.backup_src,
        backup_dst=image.backup_dst,
        backup_size=image.backup_size,
        serial_port=serial_port,
    )
    seg = image.segments["purgatory"]
    seg.data, entry = build_purgatory(params, seg.start, blob)
    return params, entry


def assert_linux_entry(out: Outcome, image: CrashImage) -> None:
    assert out.faults == []
    assert out.reached_entry
    r = out.entry_regs
    assert r["cs"] == 0x10
    assert (r["ds"], r["es"], r["ss"], r["fs"], r["gs"]) == (0x18,) * 5
    assert r["rflags"] & (1 << 9) == 0, "IF must be clear"
    assert r["rflags"] & (1 << 10) == 0, "DF must be clear"
    assert r["rsi"] == image.boot_params
    others = {k: v for k, v in r.items() if k.startswith("r") and k not in ("rsi", "rsp", "rflags")}
    assert others == dict.fromkeys(others, 0), "every GPR but rsi must be zero"
    pseg = image.segments["purgatory"]
    assert pseg.start < r["rsp"] <= pseg.end, "rsp must be the purgatory's own stack"


def assert_spins_in_purgatory(
    m: XenLikeMachine, out: Outcome, blob: bytes, image: CrashImage
) -> None:
    assert out.faults == []
    assert not out.reached_entry
    pseg = image.segments["purgatory"]
    hdr = parse_header(blob)
    code = range(pseg.start + hdr.code_offset, pseg.start + hdr.code_offset + hdr.code_size + 1)
    assert out.stop_rip in code, f"stopped at {out.stop_rip:#x}, outside the purgatory code"
    assert m.read(out.stop_rip - 1, 1) == b"\xf4", "expected to stop right after a hlt"
    # NMIs may wake hlt: carry on and it must come back to the same hlt.
    stopped = out.stop_rip
    out = m.resume(1000)
    assert out.faults == [] and not out.reached_entry
    assert out.stop_rip == stopped


@pytest.mark.parametrize("seed", SEEDS)
def test_reaches_linux_entry_from_xen_state(blob: bytes, seed: int) -> None:
    rng = random.Random(seed)
    image = make_crash_image(rng, parse_header(blob).memsz)
    _, entry = arm(image, blob)
    m = image.machine()
    m.enter_like_xen(rng)
    out = m.run(entry, image.kernel_entry)
    assert_linux_entry(out, image)
    if image.backup_size:
        low = image.segments["low"].data
        assert m.read(image.backup_dst, image.backup_size) == low[: image.backup_size]
    # Nothing was written to the memory the crash kernel will be handed.
    for name in image.verified:
        seg = image.segments[name]
        if name != "backup":
            assert m.read(seg.start, seg.dest_size) == seg.image()
    assert out.port_writes == 0, "serial output is off by default"


@pytest.mark.parametrize("top", [0, 0xFFFF82D08012345A])
def test_ignores_what_xen_left_at_rsp(blob: bytes, top: int) -> None:
    # ≥4.22 leaves 0 at [rsp], ≤4.21 a return address (xen-kexec-contract.md §5.3); the
    # machine faults on any touch of that stack page, so both must pass.
    rng = random.Random(top)
    image = make_crash_image(rng, parse_header(blob).memsz)
    _, entry = arm(image, blob)
    m = image.machine()
    m.enter_like_xen(rng, stack_top_qword=top)
    assert_linux_entry(m.run(entry, image.kernel_entry), image)


def test_entering_at_segment_start_also_works(blob: bytes) -> None:
    rng = random.Random(7)
    image = make_crash_image(rng, parse_header(blob).memsz)
    arm(image, blob)
    m = image.machine()
    m.enter_like_xen(rng)
    out = m.run(image.segments["purgatory"].start, image.kernel_entry)
    assert_linux_entry(out, image)


def test_full_640k_backup(blob: bytes) -> None:
    rng = random.Random(640)
    image = make_crash_image(rng, parse_header(blob).memsz, backup_size=0xA0000)
    _, entry = arm(image, blob)
    m = image.machine()
    m.enter_like_xen(rng)
    out = m.run(entry, image.kernel_entry, max_insns=400_000_000)
    assert_linux_entry(out, image)
    assert m.read(image.backup_dst, 0xA0000) == image.segments["low"].data[:0xA0000]


def _tamper_cases() -> list[tuple[int, str, str]]:
    cases = []
    for seed in range(4):
        for region in ("kernel", "setup", "initrd", "backup"):
            cases.append((seed, region, "data"))
        cases.append((seed, "kernel", "tail"))
    return cases


@pytest.mark.parametrize(("seed", "region", "where"), _tamper_cases())
def test_tampered_region_never_reaches_kernel(
    blob: bytes, seed: int, region: str, where: str
) -> None:
    rng = random.Random(1000 + seed)
    image = make_crash_image(rng, parse_header(blob).memsz, backup_size=0x2000, kernel_tail_pages=2)
    _, entry = arm(image, blob)
    seg = image.segments[region]
    if where == "tail":  # in the zero fill Xen adds after buf (§3.2 step 2)
        off = rng.randrange(len(seg.data), seg.dest_size)
    else:
        off = rng.randrange(0, max(1, len(seg.data)) if seg.data else seg.dest_size)
    m = image.machine()
    m.enter_like_xen(rng)
    byte = m.read(seg.start + off, 1)[0]
    m.uc.mem_write(seg.start + off, bytes([byte ^ (1 << rng.randrange(8))]))
    backup_before = m.read(image.backup_dst, image.backup_size)
    out = m.run(entry, image.kernel_entry)
    assert_spins_in_purgatory(m, out, blob, image)
    # No backup copy after a failed check.
    assert m.read(image.backup_dst, image.backup_size) == backup_before


def test_unfilled_parameter_block_never_jumps(blob: bytes) -> None:
    rng = random.Random(3)
    image = make_crash_image(rng, parse_header(blob).memsz)
    arm(image, blob)
    image.segments["purgatory"].data = blob  # as shipped: all-zero params
    m = image.machine()
    m.enter_like_xen(rng)
    out = m.run(
        image.segments["purgatory"].start + parse_header(blob).entry_offset, image.kernel_entry
    )
    assert_spins_in_purgatory(m, out, blob, image)


def test_serial_messages_when_enabled(blob: bytes) -> None:
    rng = random.Random(11)
    image = make_crash_image(rng, parse_header(blob).memsz, backup_size=0x1000)
    _, entry = arm(image, blob, serial_port=0x3F8)
    m = image.machine()
    m.enter_like_xen(rng)
    out = m.run(entry, image.kernel_entry)
    assert_linux_entry(out, image)
    assert out.serial.decode() == (
        "xenkdump purgatory: verifying\r\nxenkdump purgatory: ok, starting the crash kernel\r\n"
    )


def test_serial_names_the_bad_region(blob: bytes) -> None:
    rng = random.Random(12)
    image = make_crash_image(rng, parse_header(blob).memsz, backup_size=0x1000)
    _, entry = arm(image, blob, serial_port=0x2F8)
    bad = image.verified.index("initrd")
    m = image.machine()
    m.enter_like_xen(rng)
    start = image.segments["initrd"].start
    m.uc.mem_write(start, bytes([m.read(start, 1)[0] ^ 0x80]))
    out = m.run(entry, image.kernel_entry)
    assert not out.reached_entry and out.faults == []
    text = out.serial.decode()
    assert f"sha256 mismatch in region {bad:02x} at 0x{start:016x}\r\n" in text
    assert text.endswith("not starting the crash kernel\r\n")


@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 119, 120, 4096 + 7])
def test_sha256_matches_hashlib(blob: bytes, size: int) -> None:
    """The purgatory's SHA-256 against hashlib: right digest runs, wrong one halts."""
    rng = random.Random(size)
    data = rng.randbytes(size)
    for digest, should_run in (
        (hashlib.sha256(data).digest(), True),
        (hashlib.sha256(data + b"\0").digest(), False),
    ):
        image = make_crash_image(rng, parse_header(blob).memsz, backup_size=0)
        region = Segment("data", image.pt_pool - 0x10000, data, page_up(max(size, 1)))
        image.segments["data"] = region
        image.verified = []
        _, entry = arm(image, blob)
        # One region covering exactly `size` bytes (not the page-rounded segment).
        seg = image.segments["purgatory"]
        params = PurgatoryParams(
            kernel_entry=image.kernel_entry,
            boot_params=image.boot_params,
            regions=[VerifiedRegion(region.start, size, digest)],
        )
        seg.data, entry = build_purgatory(params, seg.start, blob)
        m = image.machine()
        m.enter_like_xen(rng)
        out = m.run(entry, image.kernel_entry)
        assert out.faults == []
        assert out.reached_entry is should_run


def test_harness_catches_sse(blob: bytes) -> None:
    """Self-check: under CR4 = PAE only the machine must fault on an SSE instruction."""
    rng = random.Random(5)
    image = make_crash_image(rng, parse_header(blob).memsz)
    seg = image.segments["purgatory"]
    seg.data = bytes.fromhex("0f28c1") + KERNEL_STUB  # movaps %xmm1, %xmm0
    m = image.machine()
    m.enter_like_xen(rng)
    out = m.run(seg.start, image.kernel_entry)
    assert out.faults, "an SSE instruction must not run with CR4 = PAE only"


@pytest.mark.parametrize(
    "code",
    [
        "8ed8",  # mov %eax, %ds: Xen's GDT is not mapped
        "48a10000003000000000",  # movabs 0x30000000, %eax: RAM outside the page tables
        "cd03",  # int $3: IDT limit 0
    ],
)
def test_harness_catches_what_xen_state_forbids(blob: bytes, code: str) -> None:
    rng = random.Random(6)
    image = make_crash_image(rng, parse_header(blob).memsz)
    seg = image.segments["purgatory"]
    seg.data = bytes.fromhex(code) + KERNEL_STUB
    m = image.machine()
    m.enter_like_xen(rng)
    out = m.run(seg.start, image.kernel_entry)
    assert out.faults and not out.reached_entry
