"""What a self-test boots and whether this host can afford it: pure functions.

The boot level (docs/selftest.md §2) boots the crash kernel, its initrd and its
command line directly in QEMU with the crash area's memory.  A kernel only
becomes a *crash* kernel (``/proc/vmcore``) when ``elfcorehdr=`` points at an ELF
core header in memory it does not own; QEMU's generic loader device places a
small synthetic one (``synthetic_memory``) before the guest starts, in a window
that ``memmap=<size>$<addr>`` marks reserved, so the crash kernel neither uses
it nor refuses to read it.  Its one PT_LOAD covers the same window, which holds
the self-test's token: the crash side finds the token in /proc/vmcore exactly as
it would find dom0's memory after a real crash.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from xenkdump.advice.crashkernel import two_halves
from xenkdump.errors import InputError, OperationError
from xenkdump.hv.port import AddressRange
from xenkdump.image.cmdline import arg_key, split_cmdline
from xenkdump.image.elfcore import build_elfcorehdr
from xenkdump.selftest.stages import ID_RE, STAGE_TIMEOUTS, Level, Stage
from xenkdump.units import MIB

# The synthetic old memory: header, one note, the token.  At 128 MiB: above the
# kernel's decompression area, below QEMU's initrd (top of RAM), never in the
# first MiB (firmware, real-mode trampoline).
SYNTHETIC_ADDR: Final = 128 * MIB
SYNTHETIC_SIZE: Final = 64 * 1024
_NOTE_OFFSET: Final = 0x1000
TOKEN_OFFSET: Final = 0x8000
# The words the self-test owns on the crash command line; the armed line's
# loader-made words (for Xen's crash area) are replaced in the boot level.
SELFTEST_KEY: Final = "xenkdump.selftest"
_BOOT_LEVEL_DROPPED: Final = frozenset({"elfcorehdr", "memmap", "acpi_rsdp", SELFTEST_KEY})
# QEMU's own memory beyond the guest's (measured: ~60 MiB for a TCG guest).
QEMU_OVERHEAD: Final = 96 * MIB
# What dom0 keeps for itself while a staging VM runs, unless configured.
DEFAULT_DOM0_FLOOR: Final = 256 * MIB
# The handoff level's VM: the crash area plus dom0 and Xen (docs/selftest.md §6).
HANDOFF_DOM0: Final = 256 * MIB
HANDOFF_XEN: Final = 96 * MIB
# The staging dom0's console is Xen's (hvc0), which Xen copies to the serial port.
HANDOFF_DOM0_CMDLINE: Final = "console=hvc0 earlyprintk=xen"
# Below this a crash area would sit among the multiboot image and modules QEMU
# places for Xen; the host's address is only reused above it.
_LOW_LIMIT: Final = 64 * MIB
# The loader's words on the armed line: dom0's loader in the staging VM adds its own.
_HANDOFF_DROPPED: Final = frozenset(
    {"elfcorehdr", "acpi_rsdp", "kexec_jump_back_entry", SELFTEST_KEY}
)


@dataclass(frozen=True)
class Image:
    """The crash image under test: what is armed (or what the configuration names)."""

    kernel: str
    initrd: str
    cmdline: str  # the crash kernel's command line as armed (loader words included)
    crash_size: int  # bytes of Xen's crash area on the host
    image_sha256: str = ""
    crash_addr: int = 0  # where the host's crash area starts (0: not known)


def check_test_id(test_id: str) -> str:
    if not ID_RE.fullmatch(test_id):
        raise InputError(f"self-test id {test_id!r}: expected 6-32 characters [a-z0-9]")
    return test_id


def token_for(test_id: str) -> bytes:
    """The token the crash side looks for: derived from the id, never the id itself.

    The crash side reads the id from its command line and computes this with
    ``rev``; the command line itself is not in the dump (docs/selftest.md §3).
    """
    return b"xenkdump-selftest-token-" + check_test_id(test_id)[::-1].encode()


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    n = name + b"\0"
    return (
        struct.pack("<III", len(n), len(desc), kind)
        + n
        + bytes(-len(n) % 4)
        + desc
        + bytes(-len(desc) % 4)
    )


def synthetic_memory(test_id: str, addr: int = SYNTHETIC_ADDR) -> bytes:
    """The window QEMU loads at ``addr``: ELF core header, one note, the token."""
    note = _note(b"XENKDUMP", 1, b"selftest " + test_id.encode())
    header = build_elfcorehdr(
        cpu_notes=[AddressRange(addr + _NOTE_OFFSET, len(note))],
        vmcoreinfo=None,
        ram=[AddressRange(addr, SYNTHETIC_SIZE)],
    )
    blob = bytearray(SYNTHETIC_SIZE)
    blob[: len(header)] = header
    blob[_NOTE_OFFSET : _NOTE_OFFSET + len(note)] = note
    token = token_for(test_id)
    blob[TOKEN_OFFSET : TOKEN_OFFSET + len(token)] = token
    return bytes(blob)


def serial_console(cmdline: str) -> bool:
    """Whether the line sends the kernel's console to the first serial port.

    The staging VM's only output is its first serial port (ttyS0 / COM1); a crash
    kernel without a console there prints nothing anyone could read.
    """
    for tok in split_cmdline(cmdline):
        key, _, value = tok.partition("=")
        if key == "console" and re.match(r"(ttyS0|uart8250,io,0x3f8|uart,io,0x3f8)\b", value):
            return True
        if key == "earlycon" and re.match(r"(uart8250|uart),io,0x3f8\b", value):
            return True
    return False


def _edited(armed: str, dropped: frozenset[str], extra: list[str]) -> str:
    """``armed`` without the ``dropped`` keys, ``extra`` added before init's ``--`` part."""
    tokens = [t for t in split_cmdline(armed) if arg_key(t) not in dropped]
    if "--" in tokens:
        i = tokens.index("--")
        tokens[i:i] = extra
    else:
        tokens += extra
    return " ".join(tokens)


def boot_cmdline(armed: str, test_id: str, addr: int = SYNTHETIC_ADDR) -> str:
    """The armed command line with our elfcorehdr= and reservation, and the id."""
    extra = [
        f"elfcorehdr={addr // 1024}K",
        f"memmap={SYNTHETIC_SIZE // 1024}K${addr:#x}",
        f"{SELFTEST_KEY}={check_test_id(test_id)}",
    ]
    return _edited(armed, _BOOT_LEVEL_DROPPED, extra)


def handoff_cmdline(armed: str, test_id: str) -> str:
    """What dom0's loader gets in the staging VM: the armed line less the loader's own
    words (it adds them again for the VM's crash area and memory), plus the id."""
    return _edited(armed, _HANDOFF_DROPPED, [f"{SELFTEST_KEY}={check_test_id(test_id)}"])


@dataclass(frozen=True)
class CrashArea:
    """Xen's ``crashkernel=`` value in the staging VM and whether it is the host's place."""

    value: str  # "256M@262144K" (at 256 MiB) or "256M"
    at_host_address: bool

    def describe(self, image: Image) -> str:
        size = f"{image.crash_size // MIB} MiB"
        if self.at_host_address:
            return f"crash area {size} at {image.crash_addr:#x}, as on the host"
        if image.crash_addr:
            return (
                f"crash area {size}, placed by Xen: the host's address {image.crash_addr:#x} "
                "is beyond the staging VM's memory"
            )
        return f"crash area {size}, placed by Xen (the host's address is not known)"


def crash_area(image: Image, vm_bytes: int) -> CrashArea:
    """The host's size always; the host's address when the VM's memory holds it."""
    size = image.crash_size
    if size % MIB:
        raise InputError(f"crash area: expected whole MiB, found {size} bytes")
    addr = image.crash_addr
    fits = addr >= _LOW_LIMIT and addr % 4096 == 0 and addr + size <= vm_bytes
    if fits:  # Xen reads a number without a suffix as KiB: the address in K
        return CrashArea(f"{size // MIB}M@{addr // 1024}K", True)
    return CrashArea(f"{size // MIB}M", False)


def boot_hints(cmdline: str) -> dict[Stage, str]:
    """What to say when a stage times out, decided from the inputs alone."""
    if not serial_console(cmdline):
        return {
            Stage.CRASH_KERNEL_UP: "the crash command line has no usable console: "
            "no console=ttyS0 (the first serial port), so the crash kernel prints nothing"
        }
    return {}


def handoff_hints(cmdline: str) -> dict[Stage, str]:
    """What to say when a handoff stage times out (the crash side as boot_hints)."""
    hints = boot_hints(cmdline)
    hints.setdefault(
        Stage.CRASH_KERNEL_UP,
        "Xen entered the crash image but its kernel never reached user space: the "
        "purgatory halts on an image whose SHA-256 check fails, or the kernel stopped early",
    )
    return hints


# The crash side reads the whole dump for the token and copies it: STAGE_TIMEOUTS
# hold for this much dumped memory (the boot level's is 64 KiB), more for more.
_SCANNED_PER_TIMEOUT: Final = 128 * MIB


def handoff_timeouts(vm_bytes: int, crash_size: int) -> dict[Stage, float]:
    """Stage timeouts for a dump of the staging VM's memory outside the crash area."""
    scale = max(1.0, (vm_bytes - crash_size) / _SCANNED_PER_TIMEOUT)
    return {s: STAGE_TIMEOUTS[s] * scale for s in (Stage.TOKEN_FOUND, Stage.DUMP_WRITTEN)}


def vm_memory(level: Level, crash_size: int) -> int:
    """The guest memory a level needs."""
    if level is Level.BOOT:
        return crash_size
    return crash_size + HANDOFF_DOM0 + HANDOFF_XEN


def check_memory(needed_guest: int, available: int, floor: int, limit: int = 0) -> None:
    """Refuse (with the figures) a VM that would push dom0 below ``floor``.

    ``available`` is dom0's MemAvailable; ``limit`` (0: none) is the configured
    most a staging VM may take.
    """
    needed = needed_guest + QEMU_OVERHEAD
    if limit and needed > limit:
        raise OperationError(
            f"the staging VM needs {needed // MIB} MiB ({needed_guest // MIB} MiB guest + "
            f"{QEMU_OVERHEAD // MIB} MiB QEMU), more than selftest.memory_limit "
            f"({limit // MIB} MiB)"
        )
    if available - needed < floor:
        raise OperationError(
            f"not enough free memory for the staging VM: it needs {needed // MIB} MiB "
            f"({needed_guest // MIB} MiB guest + {QEMU_OVERHEAD // MIB} MiB QEMU), dom0 has "
            f"{available // MIB} MiB available and keeps {floor // MIB} MiB for itself"
        )


def mem_available(meminfo: str) -> int:
    """MemAvailable from /proc/meminfo's text, in bytes."""
    m = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
    if not m:
        raise OperationError("/proc/meminfo: no MemAvailable line")
    return int(m.group(1)) * 1024


@dataclass(frozen=True)
class Sizing:
    peak_bytes: int  # the crash side's peak use of the crash area
    headroom_bytes: int  # what was still free at that peak
    crashkernel: str  # Xen's crashkernel= for two halves plus headroom


def sizing(values: Mapping[str, str], vm_bytes: int) -> Sizing | None:
    """From the hook's ``mem_min_avail_kb``: peak use and advice.

    The peak is the VM's memory less the lowest MemAvailable the hook saw (what
    the kernel kept for itself and what user space used); the advice gives
    each half of the area that peak plus a quarter.
    """
    try:
        low = int(values["mem_min_avail_kb"]) * 1024
    except (KeyError, ValueError):
        return None
    peak = max(vm_bytes - low, 0)
    want = two_halves(peak + peak // 4)
    return Sizing(peak, low, f"crashkernel={want // MIB}M")
