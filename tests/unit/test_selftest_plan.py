"""The self-test's pure decisions: the synthetic core, the command line, memory, sizing."""

from __future__ import annotations

import pytest

from xenkdump.errors import InputError, OperationError
from xenkdump.image.cmdline import split_cmdline
from xenkdump.image.elfcore import PT_LOAD, PT_NOTE, parse_elfcorehdr
from xenkdump.selftest import plan
from xenkdump.selftest.job import Result
from xenkdump.selftest.stages import Level, Stage
from xenkdump.status import SELF_TEST_KEYS, Status, self_test_note
from xenkdump.units import MIB

ID = "abc123def456"


def test_synthetic_memory_is_a_core_header_whose_load_covers_the_token() -> None:
    blob = plan.synthetic_memory(ID)
    assert len(blob) == plan.SYNTHETIC_SIZE
    eh, ph = parse_elfcorehdr(blob)
    assert eh["e_type"] == 4
    notes = [p for p in ph if p["p_type"] == PT_NOTE]
    (load,) = [p for p in ph if p["p_type"] == PT_LOAD]
    assert (load["p_paddr"], load["p_filesz"]) == (plan.SYNTHETIC_ADDR, plan.SYNTHETIC_SIZE)
    # The kernel's vmcore refuses a header without a note: one, inside the window.
    (note,) = notes
    off = note["p_paddr"] - plan.SYNTHETIC_ADDR
    assert 0 < off < plan.SYNTHETIC_SIZE and blob[off + 12 : off + 20] == b"XENKDUMP"
    token = plan.token_for(ID)
    assert blob.count(token) == 1
    assert ID.encode() not in token  # the id on the command line never matches the token


def test_token_refuses_ids_a_shell_could_misread() -> None:
    with pytest.raises(InputError, match="self-test id"):
        plan.token_for("a b;c")


def test_boot_cmdline_replaces_the_loaders_words_and_keeps_init_args_last() -> None:
    armed = "console=ttyS0 irqpoll elfcorehdr=3000K acpi_rsdp=0xf0000 memmap=1M$0x100 -- single"
    line = plan.boot_cmdline(armed, ID)
    words = split_cmdline(line)
    assert words[-2:] == ["--", "single"]
    assert "elfcorehdr=3000K" not in words and "acpi_rsdp=0xf0000" not in words
    assert f"elfcorehdr={plan.SYNTHETIC_ADDR // 1024}K" in words
    assert f"memmap=64K${plan.SYNTHETIC_ADDR:#x}" in words
    assert f"xenkdump.selftest={ID}" in words
    assert words.index(f"xenkdump.selftest={ID}") < words.index("--")


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        ("console=ttyS0,115200 irqpoll", True),
        ("console=tty0 console=ttyS0", True),
        ("earlycon=uart8250,io,0x3f8,115200", True),
        ("irqpoll nr_cpus=1", False),
        ("console=tty0", False),
        ("console=ttyS1,115200", False),
        ("console=hvc0", False),
    ],
)
def test_serial_console_is_the_first_serial_port(line: str, ok: bool) -> None:
    assert plan.serial_console(line) is ok
    assert (Stage.CRASH_KERNEL_UP in plan.boot_hints(line)) is not ok


def test_memory_check_refuses_with_the_figures() -> None:
    plan.check_memory(256 * MIB, 4096 * MIB, 256 * MIB)
    with pytest.raises(OperationError) as exc:
        plan.check_memory(256 * MIB, 500 * MIB, 256 * MIB)
    assert str(exc.value) == (
        "not enough free memory for the staging VM: it needs 352 MiB (256 MiB guest + "
        "96 MiB QEMU), dom0 has 500 MiB available and keeps 256 MiB for itself"
    )
    with pytest.raises(OperationError, match=r"more than selftest.memory_limit \(300 MiB\)"):
        plan.check_memory(256 * MIB, 4096 * MIB, 256 * MIB, limit=300 * MIB)


def test_vm_memory_per_level() -> None:
    assert plan.vm_memory(Level.BOOT, 256 * MIB) == 256 * MIB
    # Xen (96 MiB) and the staging dom0 (256 MiB) besides the crash area
    assert plan.vm_memory(Level.HANDOFF, 256 * MIB) == (256 + 256 + 96) * MIB


def test_mem_available_from_meminfo() -> None:
    assert plan.mem_available("MemTotal: 10 kB\nMemAvailable:    2048 kB\n") == 2 * MIB
    with pytest.raises(OperationError, match="MemAvailable"):
        plan.mem_available("MemTotal: 10 kB\n")


def test_sizing_advice_gives_each_half_the_peak_plus_a_quarter() -> None:
    s = plan.sizing({"mem_min_avail_kb": str(182 * 1024)}, 256 * MIB)
    assert s is not None
    assert (s.peak_bytes, s.headroom_bytes) == (74 * MIB, 182 * MIB)
    assert s.crashkernel == "crashkernel=192M"  # 2 x 92.5 MiB, whole 64 MiB
    assert plan.sizing({}, 256 * MIB) is None


def test_result_round_trips_through_the_status_dictionary() -> None:
    r = Result("abc123def456", "boot", 1_764_000_000.25, duration=12.5, passed=True,
               image_sha256="ab" * 32, accel="tcg", crash_kernel_boot_seconds=3.5,
               peak_memory=74 * MIB, headroom=182 * MIB,
               crashkernel="crashkernel=192M")  # fmt: skip
    pairs = r.to_status()
    assert [k for k, _ in pairs] == sorted(set(SELF_TEST_KEYS) - {"Stage", "Fraction"})
    back = Result.from_status(dict(pairs))
    assert back.summary() == r.summary()
    assert "passed in 12 s" in r.summary() and "crashkernel=192M" in r.summary()


def test_status_says_whether_the_armed_image_passed_its_self_test() -> None:
    r = Result("abc123def456", "boot", 1_000.0, passed=True, image_sha256="ab" * 32)
    armed = Status(image_sha256="ab" * 32, last_self_test=r.to_status())
    assert self_test_note(armed, 1_000.0 + 7200) == "passed 2 h ago for this image (boot level)"
    reloaded = Status(image_sha256="cd" * 32, last_self_test=r.to_status())
    assert self_test_note(reloaded, 1_060.0).startswith("not tested since the last reload")
    failed = Result("abc123def456", "boot", 1_000.0, failed_stage="token-found",
                    reason="the token is not in /proc/vmcore", image_sha256="ab" * 32)  # fmt: skip
    note = self_test_note(Status(image_sha256="ab" * 32, last_self_test=failed.to_status()), 1_030)
    assert note == "FAILED 30 s ago for this image at token-found: the token is not in /proc/vmcore"
    assert self_test_note(Status(), 0) == "never run"
    # The status model carries it as the D-Bus dictionary, and back.
    assert Status.from_json(armed.to_json()) == armed
