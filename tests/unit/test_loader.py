"""The loader and the load record, on the simulator's byte-level crash area.

The central proof (docs/xen-kexec-contract.md §4.3, §4.4): with two-halves placement a
reload never touches the armed image -- not its segments, not the control
pages Xen took for it -- even when Xen rejects the new image *after* copying
it; the naive placement (the whole area, as every other loader does) does.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from xenkdump.advice.crashkernel import recommended_size
from xenkdump.errors import HypervisorError, ImageError, PlanError
from xenkdump.hv.port import EM_X86_64, KEXEC_TYPE_CRASH, AddressRange
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.hv.xen import read_dom0_vmcoreinfo
from xenkdump.image import loader
from xenkdump.image.elfcore import PT_NOTE, parse_elfcorehdr
from xenkdump.image.planner import (
    ImageInputs,
    choose_half,
    fits_in_half,
    half_window,
    plan_crash_image,
    required_bytes,
)
from xenkdump.state.record import Ledger, LoadRecord, RecordError, RecordStore, StateFile

sys.path.insert(0, str(Path(__file__).parent))
from imagefixtures import MIB, make_initrd, synth_bzimage

CMDLINE = "console=ttyS0,115200 nr_cpus=1"


def sim_host(tmp_path: Path, crash_size: int | None = 256 * MIB) -> SimulatedHypervisor:
    """The default simulated host, with the crash area resized (None: no crash area)."""
    path = tmp_path / "host.yaml"
    if crash_size is None:
        path.write_text("crash_range: null\n")
    elif crash_size != 256 * MIB:
        path.write_text(f"crash_range: {{start: 0x80000000, size: {crash_size:#x}}}\n")
    return SimulatedHypervisor.open(path)


@pytest.fixture
def files(tmp_path: Path, debian_kernel: Path) -> tuple[Path, Path]:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(make_initrd(2 * MIB))
    return debian_kernel, initrd


def known_empty(hv: SimulatedHypervisor, store: RecordStore) -> Ledger:
    """The ledger of a daemon that knows nothing is armed (its record says so, parity agrees)."""
    store.write_state(StateFile(parity=hv.kexec_status(KEXEC_TYPE_CRASH)))
    ledger = loader.recall(hv, store)
    assert ledger.knowledge.known
    return ledger


def inputs_of(files: tuple[Path, Path], initrd: Path | None = None) -> ImageInputs:
    kernel, default_initrd = files
    return loader.read_inputs(kernel, initrd or default_initrd, cmdline=CMDLINE)


# --- the record --------------------------------------------------------------------------


def a_record(**changes: object) -> LoadRecord:
    values: dict[str, object] = {
        "generation": 3,
        "kernel": "/boot/vmlinuz",
        "kernel_sha256": "ab" * 32,
        "initrd": None,
        "initrd_sha256": "",
        "cmdline": "console=ttyS0 elfcorehdr=123K",
        "user_cmdline": "console=ttyS0",
        "half": "upper",
        "image_sha256": "cd" * 32,
        "segments": ({"kind": "kernel", "dest": 1 << 30, "memsz": 4096, "sha256": "ef" * 32},),
        "entry": (1 << 30) + 0x200,
        "crash_range": (1 << 30, 256 * MIB),
        "host_fingerprint": "01" * 32,
        "loaded_at": 1700000000.5,
        "reason": "test",
        "unloaded_first": False,
        "loads_issued": 3,
        "unloads_issued": 1,
        "required_bytes": 70 * MIB,
    }
    values.update(changes)
    return LoadRecord(**values)  # type: ignore[arg-type]


def test_record_roundtrip_and_atomic_write(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "state")
    assert store.read() is None and store.read_state() is None
    rec = a_record()
    written = store.write_state(StateFile(3, 3, 1, armed=rec, parity=0))
    assert store.read() == rec
    assert store.read_state() == written and written.written_at > 0
    assert sorted(p.name for p in store.state_dir.iterdir()) == ["state.json"]  # no temp left
    state = written.after("unload", None, 0)
    assert (state.generation, state.loads_issued, state.unloads_issued) == (3, 3, 2)
    assert state.armed is None and state.parity == 1
    pending = store.write_state(state.begin("load", 1, rec))
    assert store.read_state() == pending and pending.pending is not None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "Expecting"),
        ('{"format": 3}', "field 'format': expected one of (1, 2)"),
        ('{"format": 1, "generation": -1, "loads_issued": 0, "unloads_issued": 0}', "generation"),
    ],
)
def test_corrupt_record_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, problem: str
) -> None:
    store = RecordStore(tmp_path)
    store.path.write_text(text)
    with caplog.at_level(logging.WARNING):
        assert store.read() is None
    assert "corrupt state record" in caplog.text and problem in caplog.text
    with pytest.raises(RecordError, match=f"{tmp_path}/state.json: corrupt state record"):
        store.read_state()


def test_corrupt_armed_field_names_the_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(tmp_path)
    store.write_state(StateFile(armed=a_record()))
    raw = json.loads(store.path.read_text())
    raw["armed"]["half"] = "middle"
    store.path.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING):
        assert store.read() is None
    assert "armed: field 'half'" in caplog.text


# --- reading inputs ------------------------------------------------------------------------


def test_read_inputs_errors_name_the_file(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(synth_bzimage())
    with pytest.raises(ImageError, match=f"{tmp_path}/missing: initrd not found"):
        loader.read_inputs(kernel, tmp_path / "missing", cmdline="x")
    with pytest.raises(ImageError, match=f"{tmp_path}/nokernel: kernel not found"):
        loader.read_inputs(tmp_path / "nokernel", None, cmdline="x")
    with pytest.raises(ImageError, match="expected a regular file, found a directory"):
        loader.read_inputs(kernel, tmp_path, cmdline="x")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ImageError, match="initrd: expected a non-empty file"):
        loader.read_inputs(kernel, tmp_path / "empty", cmdline="x")
    truncated = tmp_path / "truncated"
    truncated.write_bytes(synth_bzimage()[:3000])
    with pytest.raises(ImageError, match=f"{truncated}: size"):
        loader.read_inputs(truncated, None, cmdline="x")
    if os.geteuid() != 0:  # root reads anything
        secret = tmp_path / "secret"
        secret.write_bytes(b"x")
        secret.chmod(0)
        with pytest.raises(ImageError, match="initrd unreadable"):
            loader.read_inputs(kernel, secret, cmdline="x")


def test_read_inputs_hashes_and_cmdline(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(synth_bzimage())
    inputs = loader.read_inputs(
        kernel, None, dom0_cmdline="root=/dev/sda1 quiet console=hvc0", append=["nr_cpus=1"]
    )
    assert inputs.kernel_sha256 == hashlib.sha256(kernel.read_bytes()).hexdigest()
    assert inputs.initrd == b"" and inputs.initrd_path is None
    assert "nr_cpus=1" in inputs.cmdline.split()
    assert "elfcorehdr" not in inputs.cmdline


# --- the host --------------------------------------------------------------------------------


def test_gather_host_default_sim(tmp_path: Path) -> None:
    hv = sim_host(tmp_path)
    host = loader.gather_host(hv)
    assert host.crash == hv.host.crash_range and host.crash.size == 256 * MIB
    assert host.cpu_notes == hv.host.cpu_notes
    assert host.vmcoreinfo == hv.host.vmcoreinfo_range
    assert host.xen_version == (4, 17)
    assert host.dom0_vmcoreinfo == hv.host.dom0_vmcoreinfo
    assert len(host.fingerprint()) == 64


def test_read_dom0_vmcoreinfo(tmp_path: Path) -> None:
    path = tmp_path / "vmcoreinfo"
    assert read_dom0_vmcoreinfo(path) == AddressRange(0, 0)  # kernel without crash support
    path.write_text("1f3dc000 1024\n")  # Linux's "%pa %x"
    assert read_dom0_vmcoreinfo(path) == AddressRange(0x1F3DC000, 0x1024)
    path.write_text("garbage\n")
    with pytest.raises(PlanError, match=f"{path}: expected 'ADDRESS SIZE' in hex, found 'garbage'"):
        read_dom0_vmcoreinfo(path)


def test_dom0_vmcoreinfo_changes_the_fingerprint_and_absence_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hv = sim_host(tmp_path)
    with_note = loader.gather_host(hv)
    hv.host = hv.host._replace(dom0_vmcoreinfo=AddressRange(0, 0))
    without = loader.gather_host(hv)
    assert without.dom0_vmcoreinfo is None
    assert without.fingerprint() != with_note.fingerprint()
    assert "dom0 exports no VMCOREINFO note" in caplog.text


@pytest.mark.kernel
def test_elfcorehdr_carries_dom0_vmcoreinfo(tmp_path: Path, files: tuple[Path, Path]) -> None:
    hv = sim_host(tmp_path)
    host = loader.gather_host(hv)
    plan = plan_crash_image(inputs_of(files), host, half="lower")
    hdr = plan.segment("elfcorehdr").data
    assert hdr is not None
    notes = [p for p in parse_elfcorehdr(hdr)[1] if p["p_type"] == PT_NOTE]
    note = hv.host.dom0_vmcoreinfo
    assert (notes[-1]["p_offset"], notes[-1]["p_filesz"]) == (note.start, note.size)


@pytest.mark.kernel
@pytest.mark.parametrize("where", ["crash", "hole"])
def test_bad_dom0_vmcoreinfo_is_refused_and_the_armed_image_stays(
    tmp_path: Path, files: tuple[Path, Path], where: str
) -> None:
    hv = sim_host(tmp_path)
    store = RecordStore(tmp_path / "state")
    a = loader.load(hv, inputs_of(files), loader.gather_host(hv), known_empty(hv, store))
    record_bytes = store.path.read_bytes()
    crash = hv.host.crash_range
    bad = AddressRange(crash.start + 0x10000 if where == "crash" else 0xA0000, 0x1024)
    hv.host = hv.host._replace(dom0_vmcoreinfo=bad)
    with pytest.raises(PlanError, match="dom0 vmcoreinfo: expected a range") as err:
        loader.gather_host(hv)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    good = loader.gather_host(replace_note(hv, AddressRange(0x1F3DC000, 0x1024)))
    with pytest.raises(PlanError, match="dom0 vmcoreinfo"):
        plan_crash_image(inputs_of(files), replace(good, dom0_vmcoreinfo=bad), half="upper")
    assert hv.armed_image_intact(KEXEC_TYPE_CRASH)
    assert hv.armed_image(KEXEC_TYPE_CRASH).entry == a.entry  # type: ignore[union-attr]
    assert hv.call_counts(KEXEC_TYPE_CRASH) == (1, 0)
    assert store.path.read_bytes() == record_bytes


def replace_note(hv: SimulatedHypervisor, note: AddressRange) -> SimulatedHypervisor:
    hv.host = hv.host._replace(dom0_vmcoreinfo=note)
    return hv


def test_acpi_rsdp_from_efi_systab(tmp_path: Path) -> None:
    systab = tmp_path / "systab"
    assert loader.read_acpi_rsdp(systab) == 0
    systab.write_text("SMBIOS=0x7f8e1000\nACPI=0x7fb7e014\nACPI20=0x7fb7e000\n")
    assert loader.read_acpi_rsdp(systab) == 0x7FB7E000
    systab.write_text("ACPI=0xf0490\n")
    assert loader.read_acpi_rsdp(systab) == 0xF0490


def test_no_crash_area_is_a_clear_error(tmp_path: Path) -> None:
    hv = sim_host(tmp_path, None)
    with pytest.raises(PlanError) as err:
        loader.gather_host(hv)
    assert "booted without crashkernel=" in str(err.value)
    assert err.value.exit_code == 2


# --- loading ----------------------------------------------------------------------------------


@pytest.mark.kernel
def test_reload_goes_to_the_other_half_and_never_touches_the_armed_image(
    tmp_path: Path, files: tuple[Path, Path]
) -> None:
    hv = sim_host(tmp_path)
    store = RecordStore(tmp_path / "state")
    ledger = known_empty(hv, store)
    inputs = inputs_of(files)
    host = loader.gather_host(hv)
    a = loader.load(hv, inputs, host, ledger, reason="first")
    assert a.half == "lower" and a.generation == 1 and not a.unloaded_first
    assert hv.armed_image_intact(KEXEC_TYPE_CRASH)
    armed = hv.armed_image(KEXEC_TYPE_CRASH)
    assert armed is not None and armed.entry == a.entry
    lower, _ = half_window(host.crash, "lower")
    before = hv.read_crash_area(lower.start, lower.size)

    other = tmp_path / "initrd2.img"
    other.write_bytes(make_initrd(3 * MIB))
    b = loader.load(hv, inputs_of(files, other), host, ledger, reason="second")
    assert b.half == "upper" and b.generation == 2 and (b.loads_issued, b.unloads_issued) == (2, 0)
    assert hv.armed_image_intact(KEXEC_TYPE_CRASH)
    assert hv.armed_image(KEXEC_TYPE_CRASH).entry == b.entry  # type: ignore[union-attr]
    # Not one byte of the lower half changed: A's segments and A's control pages.
    assert hv.read_crash_area(lower.start, lower.size) == before
    assert hv.call_counts(KEXEC_TYPE_CRASH) == (2, 0)
    assert store.read() == b

    # ... and back into the lower half: now B's (upper) half must stay as it was.
    _, upper = half_window(host.crash, "lower")
    assert upper is not None
    before = hv.read_crash_area(upper.start, upper.size)
    c = loader.load(hv, inputs, host, ledger, reason="third")
    assert c.half == "lower" and hv.armed_image_intact(KEXEC_TYPE_CRASH)
    assert hv.read_crash_area(upper.start, upper.size) == before


@pytest.mark.kernel
@pytest.mark.parametrize(("half", "survives"), [("two-halves", True), ("whole", False)])
def test_rejected_load_after_copy(
    tmp_path: Path, files: tuple[Path, Path], half: str, survives: bool
) -> None:
    """Xen checks arch only after copying (§4.4): the armed image survives only two-halves."""
    hv = sim_host(tmp_path)
    store = RecordStore(tmp_path / "state")
    ledger = known_empty(hv, store)
    host = loader.gather_host(hv)
    a = loader.load(hv, inputs_of(files), host, ledger)
    other = tmp_path / "initrd2.img"
    other.write_bytes(make_initrd(3 * MIB))
    b_inputs = inputs_of(files, other)
    chosen = choose_half(a.half, b_inputs, host) if half == "two-halves" else "whole"
    plan = plan_crash_image(b_inputs, host, half=chosen)
    with pytest.raises(HypervisorError) as err:
        hv.kexec_load(KEXEC_TYPE_CRASH, 999, plan.entry, plan.kexec_segments())
    assert err.value.errno == errno.EINVAL
    assert hv.armed_image(KEXEC_TYPE_CRASH).entry == a.entry  # type: ignore[union-attr]
    assert hv.armed_image_intact(KEXEC_TYPE_CRASH) is survives
    if not survives:
        assert any("control" in d or "page" in d for d in hv.armed_image_damage(KEXEC_TYPE_CRASH))
    # and with the right arch the same plan loads
    hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, plan.entry, plan.kexec_segments())
    assert hv.armed_image_intact(KEXEC_TYPE_CRASH)


@pytest.mark.kernel
def test_unload_then_load_when_halves_do_not_fit(
    tmp_path: Path, files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    inputs = inputs_of(files)
    # A crash area of 1.5 times what this kernel needs: it fits whole, not in half.
    probe = tmp_path / "probe"
    probe.mkdir()
    need = required_bytes(inputs, loader.gather_host(sim_host(probe)))
    hv = sim_host(tmp_path, -(-need * 3 // 2 // MIB) * MIB)
    store = RecordStore(tmp_path / "state")
    ledger = known_empty(hv, store)
    host = loader.gather_host(hv)
    assert need <= host.crash.size and not fits_in_half(inputs, host)
    with caplog.at_level(logging.WARNING):
        a = loader.load(hv, inputs, host, ledger)
    assert a.half == "whole" and not a.unloaded_first
    assert hv.call_counts(KEXEC_TYPE_CRASH) == (1, 0)  # nothing was armed: no unload
    assert "does not fit in half" in caplog.text and "crashkernel=" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        b = loader.load(hv, inputs, host, ledger)
    assert b.half == "whole" and b.unloaded_first
    assert (b.generation, b.loads_issued, b.unloads_issued) == (2, 2, 1)
    assert hv.call_counts(KEXEC_TYPE_CRASH) == (2, 1)
    assert "unloading the armed crash image" in caplog.text
    assert f"crashkernel={recommended_size(b.required_bytes) // MIB}M" in caplog.text
    assert hv.armed_image_intact(KEXEC_TYPE_CRASH)


@pytest.mark.kernel
def test_too_small_keeps_the_armed_image_and_record(
    tmp_path: Path, files: tuple[Path, Path]
) -> None:
    hv = sim_host(tmp_path)
    store = RecordStore(tmp_path / "state")
    ledger = known_empty(hv, store)
    host = loader.gather_host(hv)
    a = loader.load(hv, inputs_of(files), host, ledger)
    record_bytes = store.path.read_bytes()
    big = tmp_path / "big.img"
    # The kernel's own need (its header's init_size) plus this initrd exceed 256 MiB.
    kernel_memsz = inputs_of(files).kernel.load_memsz
    big.write_bytes(os.urandom(256 * MIB - kernel_memsz + MIB))
    with pytest.raises(PlanError) as err:
        loader.load(hv, inputs_of(files, big), host, ledger)
    msg = str(err.value)
    need = int(re.search(r"needs (\d+) MiB", msg).group(1))  # type: ignore[union-attr]
    assert need > 256 and "Xen reserved 256 MiB" in msg and "crashkernel=" in msg
    assert hv.armed_image_intact(KEXEC_TYPE_CRASH)
    assert hv.armed_image(KEXEC_TYPE_CRASH).entry == a.entry  # type: ignore[union-attr]
    assert hv.call_counts(KEXEC_TYPE_CRASH) == (1, 0)
    assert store.path.read_bytes() == record_bytes


@pytest.mark.kernel
def test_unload_records_it(tmp_path: Path, files: tuple[Path, Path]) -> None:
    hv = sim_host(tmp_path)
    store = RecordStore(tmp_path / "state")
    ledger = known_empty(hv, store)
    host = loader.gather_host(hv)
    loader.load(hv, inputs_of(files), host, ledger)
    loader.unload(hv, ledger)
    assert hv.armed_image(KEXEC_TYPE_CRASH) is None
    assert store.read() is None
    state = store.read_state()
    assert state is not None and state.pending is None
    assert (state.generation, state.loads_issued, state.unloads_issued) == (1, 1, 1)
    # Xen's parity agrees with the record (docs/xen-kexec-contract.md §4.1).
    assert hv.kexec_status(KEXEC_TYPE_CRASH) == state.parity
