"""The segment planner: placement invariants (hypothesis), the golden plan of a synthetic
Debian-shaped kernel, today's Debian kernel checked against its own header, and the
numbers in its errors.

Regenerate the golden file (only when the plan is meant to change) with:
    .venv/bin/python tests/unit/test_planner.py --regen
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenkdump.errors import PlanError
from xenkdump.hv.port import MAX_SEGMENTS, PAGE_SIZE, AddressRange
from xenkdump.hv.simhost import default_host
from xenkdump.image import purgatory
from xenkdump.image.planner import (
    LOWMEM_END,
    HostFacts,
    ImageInputs,
    Plan,
    choose_half,
    control_budget,
    half_window,
    plan_crash_image,
    required_bytes,
)

sys.path.insert(0, str(Path(__file__).parent))
from imagefixtures import (
    MIB,
    host_facts,
    make_initrd,
    make_inputs,
    synth_bzimage,
)

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "plan-synthetic-kernel.json"
DEBIAN_CMDLINE = "console=ttyS0,115200 irqpoll nr_cpus=1 reset_devices"
DEFAULT_CRASH = AddressRange(0x3_0000_0000, 256 * MIB)  # where the checks below place it


def check_invariants(plan: Plan, inputs: ImageInputs) -> None:
    """Every rule of the planner's docstring, asserted on one plan."""
    crash = plan.crash_range
    window, guard = half_window(crash, plan.half)
    segs = plan.segments
    assert len(segs) <= MAX_SEGMENTS
    assert [s.dest for s in segs] == sorted(s.dest for s in segs)
    for a, b in itertools.pairwise(segs):
        assert a.end <= b.dest, f"{a.kind} overlaps {b.kind}"
    for s in segs:
        assert s.dest % PAGE_SIZE == 0 and s.memsz % PAGE_SIZE == 0, s
        assert s.bufsz <= s.memsz, s
        if s.data is not None:
            assert window.contains(s.dest, s.memsz), f"{s.kind} outside the {plan.half} window"
    kinds = [s.kind for s in segs]
    assert kinds.count("lowmem") == 1 and plan.segment("lowmem").dest == 0
    assert plan.segment("lowmem").memsz == LOWMEM_END
    if guard is None:
        assert "guard" not in kinds
    else:
        g = plan.segment("guard")
        assert (g.dest, g.memsz, g.data) == (guard.start, guard.size, None)
    purg = plan.segment("purgatory")
    assert purg.dest <= plan.entry < purg.dest + purg.bufsz
    kernel = plan.segment("kernel")
    hdr = inputs.kernel.header
    assert kernel.dest % hdr.kernel_alignment == 0
    assert kernel.dest >= hdr.pref_address
    assert kernel.memsz >= hdr.init_size
    assert kernel.data == inputs.kernel.kernel
    # Xen's control pages come from the lowest free pages of the crash area; the guard
    # covers the other half, so the free pages at the bottom of *our* window must hold
    # the whole docs/xen-kexec-contract.md §3.3 budget.
    lowest = min(s.dest for s in segs if s.data is not None)
    free = AddressRange(window.start, lowest - window.start)
    mapped = [(s.dest, s.end) for s in segs]
    assert free.size >= max(1 * MIB, control_budget(mapped, free))
    below = [s for s in segs if s.dest < window.start and s.end > crash.start]
    assert all(s.kind == "guard" for s in below)
    # boot_params: hardware_subarch 0 (PC), cmdline, initrd (docs/crash-image.md §1.2, §1.3).
    bp = plan.segment("boot_params").data
    assert bp is not None
    assert struct.unpack_from("<I", bp, 0x23C)[0] == 0
    cmd = plan.segment("cmdline")
    ptr = struct.unpack_from("<I", bp, 0x228)[0] | struct.unpack_from("<I", bp, 0x0C8)[0] << 32
    assert ptr == cmd.dest
    assert cmd.data is not None and cmd.data.rstrip(b"\0").decode() == plan.cmdline
    ehdr = plan.segment("elfcorehdr")
    assert f"elfcorehdr={ehdr.dest // 1024}K" in plan.cmdline
    # The purgatory verifies every buffered segment but itself and the backup (§2.6).
    params = purgatory.parse_params(purg.data or b"")
    verified = {(r.start, r.size, r.sha256.hex()) for r in params.regions}
    expected = {
        (s.dest, s.bufsz, s.sha256)
        for s in segs
        if s.data is not None and s.kind not in ("purgatory", "backup")
    }
    assert verified == expected
    assert params.kernel_entry == kernel.dest + 0x200
    assert params.boot_params == plan.segment("boot_params").dest


kernel_headers = st.fixed_dictionaries(
    {
        "kernel_alignment": st.sampled_from([PAGE_SIZE, 1 * MIB, 2 * MIB, 16 * MIB]),
        "pref_address": st.sampled_from([1 * MIB, 16 * MIB, 64 * MIB]),
        "init_size": st.integers(1, 80).map(lambda n: n * MIB + 0x1234),
        "payload": st.integers(1, 64).map(lambda n: n * 4096 + 17),
        "cmdline_size": st.sampled_from([255, 2047, 4095]),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hdr=kernel_headers,
    crash_start=st.integers(64, 8 * 1024).map(lambda n: n * MIB + 0x3000),
    crash_pages=st.integers(48 * 256, 1024 * 256),  # 48 MiB .. 1 GiB, in pages
    initrd_pages=st.integers(0, 64 * 256),
    armed=st.sampled_from([None, "lower", "upper", "whole"]),
)
def test_placement_invariants(
    hdr: dict[str, int],
    crash_start: int,
    crash_pages: int,
    initrd_pages: int,
    armed: str | None,
) -> None:
    kernel = synth_bzimage(**hdr)
    initrd = bytes(initrd_pages * PAGE_SIZE - (7 if initrd_pages else 0))
    inputs = make_inputs(kernel, initrd)
    host = host_facts(AddressRange(crash_start, crash_pages * PAGE_SIZE))
    try:
        half = choose_half(armed, inputs, host)
        plan = plan_crash_image(inputs, host, half=half)
    except PlanError as exc:
        # Only when even the whole area is too small, and then the numbers are given.
        assert "needs" in str(exc) and "crashkernel=" in str(exc)
        assert required_bytes(inputs, host) > host.crash.size // 2
        with pytest.raises(PlanError):
            plan_crash_image(inputs, host, half="whole")
        return
    check_invariants(plan, inputs)
    if half != "whole":
        assert half != armed, "the new image must avoid the armed half"
        # and the other half was possible too
        plan_crash_image(inputs, host, half="upper" if half == "lower" else "lower")
    # whenever it fits in half, it must have been placed in half
    if required_bytes(inputs, host) <= host.crash.size // 2 - PAGE_SIZE:
        assert half != "whole"


def test_too_small_gives_the_numbers() -> None:
    inputs = make_inputs(synth_bzimage(init_size=64 * MIB), bytes(100 * MIB))
    host = host_facts(AddressRange(0x4000_0000, 128 * MIB))
    need = required_bytes(inputs, host)
    with pytest.raises(PlanError) as err:
        plan_crash_image(inputs, host, half=choose_half(None, inputs, host))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"needs {-(-need // MIB)} MiB" in msg
    assert "Xen reserved 128 MiB" in msg
    assert "raise crashkernel= on the Xen command line" in msg


def test_fits_only_whole() -> None:
    # 64 MiB init_size + 40 MiB initrd does not fit in 80 MiB but fits in 160 MiB.
    inputs = make_inputs(synth_bzimage(init_size=64 * MIB), bytes(40 * MIB))
    host = host_facts(AddressRange(0x4000_0000, 160 * MIB))
    assert choose_half("lower", inputs, host) == "whole"
    plan = plan_crash_image(inputs, host, half="whole")
    check_invariants(plan, inputs)
    assert "guard" not in [s.kind for s in plan.segments]


def test_halves_alternate() -> None:
    inputs = make_inputs(synth_bzimage(), make_initrd(64 * 1024))
    host = host_facts(DEFAULT_CRASH)
    assert choose_half(None, inputs, host) == "lower"
    assert choose_half("lower", inputs, host) == "upper"
    assert choose_half("upper", inputs, host) == "lower"
    lower = plan_crash_image(inputs, host, half="lower")
    upper = plan_crash_image(inputs, host, half="upper")
    for plan in (lower, upper):
        check_invariants(plan, inputs)
    lo_window, _ = half_window(host.crash, "lower")
    # No buffered byte of the upper plan lands in the lower half and vice versa.
    assert all(s.data is None or s.dest >= lo_window.end for s in upper.segments)
    assert all(s.data is None or s.end <= lo_window.end for s in lower.segments)


def test_no_crash_area() -> None:
    inputs = make_inputs(synth_bzimage(), b"")
    with pytest.raises(PlanError, match="crashkernel="):
        plan_crash_image(inputs, host_facts(AddressRange(0, 0)), half="whole")


def test_not_relocatable() -> None:
    # parse_bzimage refuses such a file already; the planner checks again for inputs
    # built some other way.
    inputs = make_inputs(synth_bzimage(), b"")
    header = dataclasses.replace(inputs.kernel.header, relocatable_kernel=0)
    inputs = dataclasses.replace(inputs, kernel=dataclasses.replace(inputs.kernel, header=header))
    with pytest.raises(PlanError, match="relocatable_kernel: expected non-zero"):
        plan_crash_image(inputs, host_facts(DEFAULT_CRASH), half="lower")


def test_deterministic_and_json_schema() -> None:
    inputs = make_inputs(synth_bzimage(), make_initrd(64 * 1024))
    host = host_facts(DEFAULT_CRASH)
    a = plan_crash_image(inputs, host, half="upper")
    b = plan_crash_image(inputs, host, half="upper")
    assert a.image_sha256 == b.image_sha256
    assert a.to_json() == b.to_json()
    validate_plan_json(json.loads(json.dumps(a.to_json())))
    c = plan_crash_image(
        make_inputs(synth_bzimage(), make_initrd(64 * 1024 + 1)), host, half="upper"
    )
    assert c.image_sha256 != a.image_sha256


def test_acpi_rsdp_reaches_boot_params_and_cmdline() -> None:
    inputs = make_inputs(synth_bzimage(), b"")
    host = dataclasses.replace(host_facts(DEFAULT_CRASH), acpi_rsdp=0x7FB7E000)
    plan = plan_crash_image(inputs, host, half="lower")
    check_invariants(plan, inputs)
    bp = plan.segment("boot_params").data or b""
    assert struct.unpack_from("<Q", bp, 0x070)[0] == 0x7FB7E000
    assert "acpi_rsdp=0x7fb7e000" in plan.cmdline
    assert host.fingerprint() != host_facts(DEFAULT_CRASH).fingerprint()


PLAN_KINDS = {
    "kernel", "initrd", "boot_params", "cmdline", "elfcorehdr", "purgatory", "backup", "lowmem",
    "guard",
}  # fmt: skip


def validate_plan_json(doc: object) -> None:
    """The documented JSON form of a plan (cli/cmd_image.py)."""
    assert isinstance(doc, dict)
    assert isinstance(doc["entry"], int)
    assert set(doc["crash_range"]) == {"start", "size"}
    assert all(isinstance(v, int) for v in doc["crash_range"].values())
    assert doc["half"] in ("lower", "upper", "whole")
    assert isinstance(doc["cmdline"], str) and isinstance(doc["required_bytes"], int)
    assert isinstance(doc["segments"], list) and 1 <= len(doc["segments"]) <= 15
    for seg in doc["segments"]:
        assert set(seg) == {"kind", "dest", "memsz", "bufsz", "sha256"}
        assert seg["kind"] in PLAN_KINDS
        assert all(isinstance(seg[k], int) for k in ("dest", "memsz", "bufsz"))
        assert isinstance(seg["sha256"], str)
        assert len(seg["sha256"]) == (64 if seg["bufsz"] else 0)


# --- the golden plan (synthetic kernel) and the real Debian kernel --------------------------

# A bzImage shaped like Debian's x86_64 kernel (the same alignment, preferred address and
# init_size; a short deterministic payload), so the golden plan never changes with the archive.
GOLDEN_KERNEL = {
    "payload": 512 * 1024,
    "kernel_alignment": 2 * MIB,
    "pref_address": 16 * MIB,
    "init_size": 0x3F98000,
}


def golden_inputs(kernel: bytes) -> ImageInputs:
    return make_inputs(kernel, make_initrd(), DEBIAN_CMDLINE)


def sim_default_facts() -> HostFacts:
    """The simulator's default host (16 GiB, 4 CPUs, crashkernel=256M), as gather_host sees it."""
    sim = default_host()
    return HostFacts(
        crash=sim.crash_range,
        machine_map=sim.memory_map,
        cpu_notes=sim.cpu_notes,
        vmcoreinfo=sim.vmcoreinfo_range,
        xen_version=sim.xen_version,
        xen_cmdline=sim.xen_command_line,
        dom0_vmcoreinfo=sim.dom0_vmcoreinfo,
    )


def golden_plan(inputs: ImageInputs) -> Plan:
    return plan_crash_image(inputs, sim_default_facts(), half="upper")


def golden_doc(plan: Plan) -> dict[str, object]:
    doc = plan.to_json()
    doc.pop("image_sha256")
    segments = doc["segments"]
    assert isinstance(segments, list)
    for seg in segments:
        if seg["kind"] == "purgatory":  # its bytes are purgatory.bin's, rebuilt on its own
            seg["sha256"] = "(purgatory.bin)"
    return doc


def test_golden_plan() -> None:
    inputs = golden_inputs(synth_bzimage(**GOLDEN_KERNEL))
    plan = golden_plan(inputs)
    check_invariants(plan, inputs)
    assert golden_doc(plan) == json.loads(GOLDEN.read_text())


@pytest.mark.kernel
def test_debian_kernel_plan(debian_kernel: Path) -> None:
    """Today's Debian kernel: the invariants, and what its own header says it needs."""
    data = debian_kernel.read_bytes()
    inputs = golden_inputs(data)
    plan = golden_plan(inputs)
    check_invariants(plan, inputs)
    hdr = inputs.kernel.header
    kernel = plan.segment("kernel")
    assert kernel.bufsz == len(data) - hdr.setup_size
    assert kernel.sha256 == hashlib.sha256(data[hdr.setup_size :]).hexdigest()
    assert kernel.memsz == inputs.kernel.load_memsz >= struct.unpack_from("<I", data, 0x260)[0]
    assert kernel.dest % struct.unpack_from("<I", data, 0x230)[0] == 0
    # The same segment kinds in the same order as the synthetic golden plan.
    expected = json.loads(GOLDEN.read_text())
    assert [s.kind for s in plan.segments] == [s["kind"] for s in expected["segments"]]
    assert plan.cmdline.startswith(DEBIAN_CMDLINE + " elfcorehdr=")
    assert plan.required_bytes >= kernel.memsz + len(inputs.initrd)


if __name__ == "__main__" and "--regen" in sys.argv:
    DATA.mkdir(exist_ok=True)
    GOLDEN.write_text(
        json.dumps(golden_doc(golden_plan(golden_inputs(synth_bzimage(**GOLDEN_KERNEL)))), indent=1)
        + "\n"
    )
    print(f"wrote {GOLDEN}")
