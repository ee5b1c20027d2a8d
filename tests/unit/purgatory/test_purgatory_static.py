"""Static checks of the shipped purgatory.bin: what it may and may not contain."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from xenkdump.image.purgatory import parse_header
from xenkdump.units import PAGE_SIZE

# Anything that raises an exception or needs SSE/x87/MMX state (CR4 = PAE only,
# IDT limit 0: docs/xen-kexec-contract.md §5.3) or leaves/enters another privilege level.
FORBIDDEN_REGS = re.compile(r"%(?:[xyz]mm\d+|mm\d|st(?:\(\d\))?|k[0-7])\b")
FORBIDDEN_MNEMONICS = {
    "int", "int1", "int3", "into", "iret", "iretq", "iretd", "iretw", "syscall", "sysret",
    "sysretq", "sysenter", "sysexit", "ud0", "ud1", "ud2", "(bad)", "sti", "fxsave",
    "fxsave64", "fxrstor", "fxrstor64", "xsave", "xrstor", "emms", "fninit", "fwait",
    "rdrand", "rdseed", "vmcall", "vmmcall",
}  # fmt: skip
SEGMENT_LOAD = re.compile(
    r"^(?:mov|pop)\w*\s+.*,?%(?:cs|ds|es|ss|fs|gs)$|^l(?:ss|fs|gs|ds|es)\b|^(?:ljmp|lcall|lret)"
)


def disassemble(blob_path: Path, start: int, stop: int) -> list[tuple[int, str, str]]:
    """(offset, mnemonic, operands) of the code range, AT&T syntax."""
    text = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", "-M", "suffix",
         f"--start-address={start:#x}", f"--stop-address={stop:#x}", str(blob_path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    insns = []
    for line in text.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\t(?:[0-9a-f]{2} )+\s*\t(\S+)\s*(.*)$", line)
        if m:
            insns.append((int(m.group(1), 16), m.group(2), m.group(3).split("#")[0].strip()))
    return insns


@pytest.fixture(scope="module")
def code(built: Path, blob: bytes) -> list[tuple[int, str, str]]:
    hdr = parse_header(blob)
    insns = disassemble(built / "purgatory.bin", hdr.code_offset, hdr.code_offset + hdr.code_size)
    assert len(insns) > 100, "disassembly looks empty"
    return insns


def test_shipped_blob_is_the_built_one(built: Path, blob: bytes) -> None:
    assert (built / "purgatory.bin").read_bytes() == blob


def test_no_sse_x87_or_exception_raising_instruction(code: list[tuple[int, str, str]]) -> None:
    bad = [
        f"{off:#x}: {mn} {ops}"
        for off, mn, ops in code
        if mn in FORBIDDEN_MNEMONICS or FORBIDDEN_REGS.search(ops) or mn.startswith("v")
    ]
    assert bad == []


def test_starts_with_cli_cld_and_loads_no_selector_before_lgdt(
    code: list[tuple[int, str, str]], blob: bytes
) -> None:
    hdr = parse_header(blob)
    assert code[0][0] == hdr.entry_offset
    assert [mn for _, mn, _ in code[:2]] == ["cli", "cld"]
    lgdt = next(i for i, (_, mn, _) in enumerate(code) if mn.startswith("lgdt"))
    early = [f"{mn} {ops}" for _, mn, ops in code[:lgdt] if SEGMENT_LOAD.search(f"{mn} {ops}")]
    assert early == []
    # ...and after it the selectors and CS really are reloaded (the regex works).
    later = [f"{mn} {ops}" for _, mn, ops in code[lgdt:] if SEGMENT_LOAD.search(f"{mn} {ops}")]
    assert any("%ss" in s for s in later) and any(s.startswith("lret") for s in later)
    # Never rsp-relative before our own stack is set: Xen's [rsp] is not ours.
    first_rsp_use = next(i for i, (_, mn, ops) in enumerate(code) if "%rsp" in ops)
    assert code[first_rsp_use][1].startswith("lea") and ops_dest(code[first_rsp_use][2]) == "%rsp"


def ops_dest(ops: str) -> str:
    return ops.rsplit(",", 1)[-1]


def test_only_first_entry_jump_at_offset_0(blob: bytes) -> None:
    hdr = parse_header(blob)
    assert blob[0] == 0xE9  # jmp rel32
    assert 5 + int.from_bytes(blob[1:5], "little", signed=True) == hdr.entry_offset


@pytest.mark.parametrize("base", [0x1000, 0x7FFF_F000, 0x1_2345_6000, 0x3F_FFFF_E000_0000])
def test_position_independent_links_identically_at_any_base(
    built: Path, blob: bytes, tmp_path: Path, base: int
) -> None:
    objs = sorted(str(p) for p in built.glob("*.o"))
    assert len(objs) == 3
    elf, flat = tmp_path / "p.elf", tmp_path / "p.bin"
    lds = built.parent / "purgatory.lds"
    subprocess.run(
        ["ld", "-nostdlib", "-static", "--no-dynamic-linker", "--orphan-handling=error",
         "--no-warn-rwx-segments", "-z", "noexecstack", "--build-id=none", "-T", str(lds),
         f"--defsym=LOAD_BASE={base:#x}", "-o", str(elf), *objs],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["objcopy", "-O", "binary", "-j", ".purgatory", str(elf), str(flat)], check=True)
    assert flat.read_bytes() == blob


def test_header_matches_the_linked_symbols(built: Path, blob: bytes) -> None:
    nm = subprocess.run(
        ["nm", str(built / "purgatory.elf")], check=True, capture_output=True, text=True
    ).stdout
    sym = {name: int(v, 16) for v, _, name in (line.split() for line in nm.splitlines())}
    hdr = parse_header(blob)
    assert hdr.entry_offset == sym["purgatory_start"] - sym["_start"]
    assert hdr.params_offset == sym["params"] - sym["_start"] == 0x40
    assert hdr.file_size == len(blob)
    assert hdr.memsz % PAGE_SIZE == 0
    # 4 KiB stack in the bss, inside memsz so Xen maps (and zeroes) it.
    assert sym["stack_top"] - sym["stack_bottom"] == 4096
    assert sym["stack_top"] - sym["_start"] <= hdr.memsz


def test_relocations_are_pc_relative_or_absolute_constants(built: Path) -> None:
    out = subprocess.run(
        ["readelf", "-rW", *sorted(str(p) for p in built.glob("*.o"))],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    kinds = set(re.findall(r"\bR_X86_64_\w+", out))
    assert kinds <= {"R_X86_64_PC32", "R_X86_64_PLT32", "R_X86_64_32"}
    # The only 32-bit absolute ones are the header's linker-computed sizes.
    absolute = re.findall(r"R_X86_64_32\s+[0-9a-f]+\s+(\S+)", out)
    assert sorted(absolute) == sorted(
        ["__entry_offset", "__code_offset", "__code_size", "__file_size", "__mem_size"]
    )
