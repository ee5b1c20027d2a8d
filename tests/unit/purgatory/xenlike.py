"""A Xen-like x86-64 machine in unicorn: the CPU as Xen leaves it at a crash.

docs/xen-kexec-contract.md §5.2/§5.3: 64-bit long mode with 4-level identity page tables
that map only the image's segments (the page-table pages themselves are not
mapped), CR4 = PAE only, IDTR limit 0, a GDTR pointing at unmapped Xen memory,
Xen's selectors still cached, IF = 0 and every general register undefined.

Unicorn's mapped memory plays the machine's RAM; the page tables decide what
the CPU can reach.  Any exception (``UC_HOOK_INTR``), unmapped or invalid access,
invalid instruction (SSE under CR4 = PAE only), read of Xen's stack or write
outside the allowed areas is recorded as a fault and stops the run.
"""

from __future__ import annotations

import itertools
import random
import struct
from dataclasses import dataclass, field

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_INVALID,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn.x86_const import (
    UC_X86_INS_IN,
    UC_X86_INS_OUT,
    UC_X86_REG_CR0,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_CS,
    UC_X86_REG_DS,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_ES,
    UC_X86_REG_FS,
    UC_X86_REG_GDTR,
    UC_X86_REG_GS,
    UC_X86_REG_IDTR,
    UC_X86_REG_R8,
    UC_X86_REG_R9,
    UC_X86_REG_R10,
    UC_X86_REG_R11,
    UC_X86_REG_R12,
    UC_X86_REG_R13,
    UC_X86_REG_R14,
    UC_X86_REG_R15,
    UC_X86_REG_RAX,
    UC_X86_REG_RBP,
    UC_X86_REG_RBX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDI,
    UC_X86_REG_RDX,
    UC_X86_REG_RIP,
    UC_X86_REG_RSI,
    UC_X86_REG_RSP,
    UC_X86_REG_SS,
)

PAGE = 4096
MSR_EFER = 0xC0000080
EFER_LME_LMA_NXE = 0x0D00
CR0_PE_ET_NE_PG = 0x80000031
CR4_PAE = 0x20
RFLAGS_IF = 1 << 9
# Arithmetic flags, DF, NT and AC are random at entry; TF/VM/RF would change
# how the emulator runs and Xen never leaves them set.
RFLAGS_RANDOM_MASK = 0x08D5 | 0x0400 | 0x4000 | 0x40000
XEN_CS, XEN_DS = 0xE008, 0xE010  # Xen's hypervisor selectors (§5.3)
XEN_GDT_VA = 0xFFFF82D080000000  # Xen per-CPU GDT: not mapped in the kexec tables

GPRS = {
    "rax": UC_X86_REG_RAX,
    "rbx": UC_X86_REG_RBX,
    "rcx": UC_X86_REG_RCX,
    "rdx": UC_X86_REG_RDX,
    "rsi": UC_X86_REG_RSI,
    "rdi": UC_X86_REG_RDI,
    "rbp": UC_X86_REG_RBP,
    "r8": UC_X86_REG_R8,
    "r9": UC_X86_REG_R9,
    "r10": UC_X86_REG_R10,
    "r11": UC_X86_REG_R11,
    "r12": UC_X86_REG_R12,
    "r13": UC_X86_REG_R13,
    "r14": UC_X86_REG_R14,
    "r15": UC_X86_REG_R15,
}
SEGS = {
    "cs": UC_X86_REG_CS,
    "ds": UC_X86_REG_DS,
    "es": UC_X86_REG_ES,
    "ss": UC_X86_REG_SS,
    "fs": UC_X86_REG_FS,
    "gs": UC_X86_REG_GS,
}


def page_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


@dataclass
class Segment:
    """One kexec segment as Xen leaves it: buf, then zeros up to dest_size."""

    name: str
    start: int
    data: bytes
    dest_size: int
    writable: bool = False  # the purgatory may write here

    def __post_init__(self) -> None:
        assert self.start % PAGE == 0 and self.dest_size % PAGE == 0
        assert len(self.data) <= self.dest_size

    @property
    def end(self) -> int:
        return self.start + self.dest_size

    def image(self) -> bytes:
        return self.data + bytes(self.dest_size - len(self.data))


@dataclass
class Outcome:
    """How a run ended."""

    reached_entry: bool = False
    entry_regs: dict[str, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    serial: bytearray = field(default_factory=bytearray)
    port_writes: int = 0
    stop_rip: int = 0


class XenLikeMachine:
    """Segments placed in RAM, Xen's kexec page tables over them, the CPU at entry."""

    def __init__(self, segments: list[Segment], pt_pool: int, entry_stack: int) -> None:
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.segments = segments
        self.entry_stack = entry_stack
        self.outcome = Outcome()
        ranges = sorted(
            [(s.start, s.end, s.name) for s in segments]
            + [
                (pt_pool, pt_pool + 0x20000, "page tables"),
                (entry_stack, entry_stack + PAGE, "stack"),
            ]
        )
        for (_a0, a1, n0), (b0, _b1, n1) in itertools.pairwise(ranges):
            assert a1 <= b0, f"{n0} overlaps {n1}"
        for s in segments:
            self.uc.mem_map(s.start, s.dest_size)
            self.uc.mem_write(s.start, s.image())
        # Page-table pages and the stack page are RAM too, but only the stack
        # page (Xen's control code page) is in the page tables (§3.2 step 1).
        self.uc.mem_map(pt_pool, 0x20000)
        self.uc.mem_map(entry_stack, PAGE)
        self._l4 = pt_pool
        self._next_pt = pt_pool + PAGE
        self._pt_end = pt_pool + 0x10000
        self._tmp_gdt = pt_pool + 0x10000  # 64 KiB: reaches Xen's 0xe008 selector
        for s in segments:
            self._identity_map(s.start, s.dest_size)
        self._identity_map(entry_stack, PAGE)

    # Page tables ------------------------------------------------------------

    def _pt_alloc(self) -> int:
        page = self._next_pt
        self._next_pt += PAGE
        assert self._next_pt <= self._pt_end, "page-table pool exhausted"
        return page

    def _identity_map(self, start: int, size: int) -> None:
        for va in range(start, start + size, PAGE):
            table = self._l4
            for shift in (39, 30, 21):
                slot = table + ((va >> shift) & 511) * 8
                (entry,) = struct.unpack("<Q", self.uc.mem_read(slot, 8))
                if not entry & 1:
                    entry = self._pt_alloc() | 0x3  # present, writable
                    self.uc.mem_write(slot, struct.pack("<Q", entry))
                table = entry & ~0xFFF & ((1 << 52) - 1)
            self.uc.mem_write(table + ((va >> 12) & 511) * 8, struct.pack("<Q", va | 0x3))

    # CPU state --------------------------------------------------------------

    def enter_like_xen(self, rng: random.Random, stack_top_qword: int | None = None) -> None:
        """Put the CPU in the state of §5.3 with random undefined parts."""
        uc = self.uc
        # Xen's hypervisor selectors, loaded while a readable GDT exists, so
        # their cached descriptors stay behind when the GDTR goes away.
        uc.mem_write(self._tmp_gdt + XEN_CS, struct.pack("<Q", 0x00AF9A000000FFFF))
        uc.mem_write(self._tmp_gdt + XEN_DS, struct.pack("<Q", 0x00CF92000000FFFF))
        uc.reg_write(UC_X86_REG_GDTR, (0, self._tmp_gdt, 0xFFFF, 0))
        uc.reg_write(UC_X86_REG_CS, XEN_CS)
        for reg in (UC_X86_REG_DS, UC_X86_REG_ES, UC_X86_REG_SS):
            uc.reg_write(reg, XEN_DS)
        uc.reg_write(UC_X86_REG_CR3, self._l4)
        uc.reg_write(UC_X86_REG_CR4, CR4_PAE)
        uc.msr_write(MSR_EFER, EFER_LME_LMA_NXE)
        uc.reg_write(UC_X86_REG_CR0, CR0_PE_ET_NE_PG)
        uc.reg_write(UC_X86_REG_GDTR, (0, XEN_GDT_VA + rng.randrange(0, 0x10000, 8), 0xFFFF, 0))
        uc.reg_write(UC_X86_REG_IDTR, (0, 0, 0, 0))
        for reg in GPRS.values():
            uc.reg_write(reg, rng.getrandbits(64))
        flags = (rng.getrandbits(32) & RFLAGS_RANDOM_MASK | 0x2) & ~RFLAGS_IF
        uc.reg_write(UC_X86_REG_EFLAGS, flags)
        # rsp somewhere in Xen's tiny stack, [rsp] anything (§5.3).
        rsp = self.entry_stack + rng.randrange(0x200, PAGE - 8, 8)
        top = rng.getrandbits(64) if stack_top_qword is None else stack_top_qword
        uc.mem_write(self.entry_stack, rng.randbytes(PAGE))
        uc.mem_write(rsp, struct.pack("<Q", top))
        uc.reg_write(UC_X86_REG_RSP, rsp)
        assert uc.reg_read(UC_X86_REG_CR4) == CR4_PAE

    # Running ----------------------------------------------------------------

    def run(self, entry: int, kernel_entry: int, max_insns: int = 20_000_000) -> Outcome:
        uc, out = self.uc, self.outcome

        def fault(msg: str) -> None:
            out.faults.append(msg)
            uc.emu_stop()

        def on_intr(_uc: Uc, intno: int, _ud: object) -> None:
            fault(f"exception/interrupt {intno} at {uc.reg_read(UC_X86_REG_RIP):#x}")

        def on_bad_mem(_uc: Uc, access: int, addr: int, size: int, _v: int, _ud: object) -> bool:
            fault(f"bad memory access type {access} at {addr:#x} size {size}")
            return False

        def on_stack(_uc: Uc, access: int, addr: int, size: int, _v: int, _ud: object) -> None:
            fault(f"touched Xen's entry stack at {addr:#x} (access {access})")

        def on_ro_write(_uc: Uc, _a: int, addr: int, size: int, _v: int, name: object) -> None:
            fault(f"write to read-only {name} at {addr:#x} size {size}")

        def on_kernel(_uc: Uc, addr: int, _size: int, _ud: object) -> None:
            out.reached_entry = True
            out.entry_regs = {n: uc.reg_read(r) for n, r in {**GPRS, **SEGS}.items()}
            out.entry_regs["rflags"] = uc.reg_read(UC_X86_REG_EFLAGS)
            out.entry_regs["rsp"] = uc.reg_read(UC_X86_REG_RSP)
            uc.emu_stop()

        def on_out(_uc: Uc, port: int, size: int, value: int, _ud: object) -> None:
            out.port_writes += 1
            out.serial.append(value & 0xFF)

        def on_in(_uc: Uc, port: int, size: int, _ud: object) -> int:
            return 0x60  # 16550 LSR: THR and transmitter empty

        uc.hook_add(UC_HOOK_INTR, on_intr)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED | UC_HOOK_MEM_INVALID, on_bad_mem)
        uc.hook_add(
            UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE,
            on_stack,
            begin=self.entry_stack,
            end=self.entry_stack + PAGE - 1,
        )
        for s in self.segments:
            if not s.writable:
                uc.hook_add(UC_HOOK_MEM_WRITE, on_ro_write, s.name, s.start, s.end - 1)
        uc.hook_add(UC_HOOK_CODE, on_kernel, begin=kernel_entry, end=kernel_entry)
        uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, UC_X86_INS_IN)
        try:
            uc.emu_start(entry, 0, count=max_insns)
        except UcError as e:
            out.faults.append(f"{e} at {uc.reg_read(UC_X86_REG_RIP):#x}")
        out.stop_rip = uc.reg_read(UC_X86_REG_RIP)
        return out

    def resume(self, max_insns: int) -> Outcome:
        """Carry on from where the last run stopped (to see a halt loop spin)."""
        try:
            self.uc.emu_start(self.uc.reg_read(UC_X86_REG_RIP), 0, count=max_insns)
        except UcError as e:
            self.outcome.faults.append(f"{e} at {self.uc.reg_read(UC_X86_REG_RIP):#x}")
        self.outcome.stop_rip = self.uc.reg_read(UC_X86_REG_RIP)
        return self.outcome

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))


# A crash image as the planner would lay it out ---------------------------------

LOW_1M = 0x100000
KERNEL_ENTRY_OFFSET = 0x200  # Linux 64-bit entry (docs/crash-image.md §1.1)
KERNEL_STUB = bytes.fromhex("f4ebfd")  # 1: hlt; jmp 1b -- "the kernel" for the tests


@dataclass
class CrashImage:
    """The segments of one crash image, the purgatory's parameters and where it enters."""

    segments: dict[str, Segment]
    verified: list[str]  # names of the hashed segments, in region order
    entry_stack: int
    pt_pool: int
    kernel_entry: int
    boot_params: int
    backup_src: int
    backup_dst: int
    backup_size: int

    def machine(self) -> XenLikeMachine:
        return XenLikeMachine(list(self.segments.values()), self.pt_pool, self.entry_stack)


def make_crash_image(
    rng: random.Random,
    purgatory_memsz: int,
    *,
    backup_size: int | None = None,
    kernel_tail_pages: int | None = None,
) -> CrashImage:
    """Random placement inside a random crash area, possibly above 4 GiB.

    Xen's control pages and page tables come from the bottom of the crash
    area (xen-kexec-contract.md §3.2, §3.3), so the page-table pool goes there and is not mapped.
    """
    crash_start = rng.randrange(0x0100_0000, 0x2_0000_0000, 0x20_0000)
    pt_pool = crash_start
    cursor = crash_start + 0x20000

    def place(size: int) -> int:
        nonlocal cursor
        cursor += rng.randrange(0, 4) * PAGE  # random gaps
        at = cursor
        cursor += size
        return at

    segs: dict[str, Segment] = {}
    entry_stack = place(PAGE)  # Xen's control code page holds its stack
    if backup_size is None:
        backup_size = rng.choice(
            [0, 0x1000, rng.randrange(1, 0x10) * 0x1000 + rng.randrange(0, 0x1000, 0x400)]
        )
    if backup_size:
        dst = place(page_up(backup_size))
        segs["backup"] = Segment("backup", dst, b"", page_up(backup_size), writable=True)
    else:
        dst = 0
    kdata = rng.randbytes(rng.randrange(0x400, 3 * PAGE))
    kdata = kdata[:KERNEL_ENTRY_OFFSET] + KERNEL_STUB + kdata[KERNEL_ENTRY_OFFSET + 3 :]
    tail = rng.randrange(0, 3) if kernel_tail_pages is None else kernel_tail_pages
    ksize = page_up(len(kdata)) + tail * PAGE  # dest_size >= init_size: zero tail
    segs["kernel"] = Segment("kernel", place(ksize), kdata, ksize)
    cmdline = b"console=ttyS0,115200 irqpoll nr_cpus=1 reset_devices elfcorehdr=1234K\0"
    bp = rng.randbytes(PAGE)[:0x1F1] + bytes(PAGE - 0x1F1) + cmdline
    segs["setup"] = Segment("setup", place(page_up(len(bp))), bp, page_up(len(bp)))
    initrd = rng.randbytes(rng.randrange(1, 2 * PAGE))
    segs["initrd"] = Segment("initrd", place(page_up(len(initrd))), initrd, page_up(len(initrd)))
    segs["purgatory"] = Segment(
        "purgatory", place(purgatory_memsz), b"", purgatory_memsz, writable=True
    )
    # Xen's NULL-buf low segment: low RAM as it was at the crash (crash-image.md §2.1).
    segs["low"] = Segment("low", 0, rng.randbytes(LOW_1M), LOW_1M)
    verified: list[str] = [n for n in ("kernel", "setup", "initrd", "backup") if n in segs]
    rng.shuffle(verified)
    return CrashImage(
        segments=segs,
        verified=verified,
        entry_stack=entry_stack,
        pt_pool=pt_pool,
        kernel_entry=segs["kernel"].start + KERNEL_ENTRY_OFFSET,
        boot_params=segs["setup"].start,
        backup_src=0,
        backup_dst=dst,
        backup_size=backup_size,
    )
