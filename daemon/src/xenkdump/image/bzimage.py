"""bzImage parser: the setup header, the protected-mode kernel and its 64-bit entry.

Field names and offsets are boot.rst's (docs/crash-image.md §1.1, §1.2).  The
offsets are the same in the file and in boot_params, so one table serves both.
Pure: bytes in, a frozen value out; every malformed input raises ImageError
with one line naming the file and field, expected versus found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from xenkdump.errors import ImageError
from xenkdump.image.structs import Layout
from xenkdump.units import PAGE_SIZE

SECTOR: Final = 512

SETUP_HEADER_START: Final = 0x1F1
SETUP_HEADER_END_MAX: Final = 0x202 + 0x7F  # byte 0x201 is a short jmp displacement (§1.1)

BOOT_FLAG: Final = 0xAA55
HDRS_MAGIC: Final = 0x53726448  # "HdrS"
MIN_VERSION: Final = 0x020C  # 2.12: xloadflags and the 64-bit entry (§1.1)
LOADED_HIGH: Final = 1 << 0
XLF_KERNEL_64: Final = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G: Final = 1 << 1
ENTRY_64: Final = 0x200  # startup_64 is at load address + 0x200 (§1.1)

# boot.rst "The real-mode kernel header", offsets as in the file (§1.2).
SETUP_HEADER: Final = Layout(
    "setup_header",
    start=0x1F1,
    size=0x26C - 0x1F1,
    rows=(
        (0x1F1, "setup_sects", "B"),
        (0x1F2, "root_flags", "H"),
        (0x1F4, "syssize", "I"),
        (0x1F8, "ram_size", "H"),
        (0x1FA, "vid_mode", "H"),
        (0x1FC, "root_dev", "H"),
        (0x1FE, "boot_flag", "H"),
        (0x200, "jump", "H"),
        (0x202, "header", "I"),
        (0x206, "version", "H"),
        (0x208, "realmode_swtch", "I"),
        (0x20C, "start_sys_seg", "H"),
        (0x20E, "kernel_version", "H"),
        (0x210, "type_of_loader", "B"),
        (0x211, "loadflags", "B"),
        (0x212, "setup_move_size", "H"),
        (0x214, "code32_start", "I"),
        (0x218, "ramdisk_image", "I"),
        (0x21C, "ramdisk_size", "I"),
        (0x220, "bootsect_kludge", "I"),
        (0x224, "heap_end_ptr", "H"),
        (0x226, "ext_loader_ver", "B"),
        (0x227, "ext_loader_type", "B"),
        (0x228, "cmd_line_ptr", "I"),
        (0x22C, "initrd_addr_max", "I"),
        (0x230, "kernel_alignment", "I"),
        (0x234, "relocatable_kernel", "B"),
        (0x235, "min_alignment", "B"),
        (0x236, "xloadflags", "H"),
        (0x238, "cmdline_size", "I"),
        (0x23C, "hardware_subarch", "I"),
        (0x240, "hardware_subarch_data", "Q"),
        (0x248, "payload_offset", "I"),
        (0x24C, "payload_length", "I"),
        (0x250, "setup_data", "Q"),
        (0x258, "pref_address", "Q"),
        (0x260, "init_size", "I"),
        (0x264, "handover_offset", "I"),
        (0x268, "kernel_info_offset", "I"),
    ),
)
assert SETUP_HEADER.size == 0x7B
# A 2.12 header must reach init_size (0x260..0x264), the last field we read.
_MIN_HEADER_END: Final = SETUP_HEADER.field("init_size").end


@dataclass(frozen=True)
class SetupHeader:
    """The setup-header fields a loader reads (boot.rst names).

    ``setup_sects`` is the file's value (0 means 4, see ``setup_size``);
    ``raw`` is the header as found, 0x1F1 up to 0x202 + byte[0x201], which
    build_boot_params copies into the zero page (§1.3).
    """

    setup_sects: int
    syssize: int
    vid_mode: int
    boot_flag: int
    header: int
    version: int
    loadflags: int
    kernel_alignment: int
    relocatable_kernel: int
    min_alignment: int
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int
    raw: bytes

    @property
    def setup_size(self) -> int:
        """Bytes before the protected-mode kernel: boot sector plus setup sectors (§1.1)."""
        return ((self.setup_sects or 4) + 1) * SECTOR

    @property
    def version_text(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"


@dataclass(frozen=True)
class BzImage:
    """A parsed bzImage: its header and the protected-mode kernel to load."""

    header: SetupHeader
    kernel: bytes

    @property
    def entry_offset(self) -> int:
        """Offset of the 64-bit entry (startup_64) from the load address."""
        return ENTRY_64

    @property
    def load_memsz(self) -> int:
        """Bytes the kernel needs at its load address: init_size covers decompression (§1.4)."""
        need = max(len(self.kernel), self.header.init_size)
        return (need + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _need(name: str, what: str, ok: bool, expected: str, found: str) -> None:
    if not ok:
        raise ImageError(f"{name}: {what}: expected {expected}, found {found}")


def parse_bzimage(data: bytes, name: str = "kernel") -> BzImage:
    """Parse and check a 64-bit relocatable bzImage (boot protocol >= 2.12).

    ``name`` (normally the file path) starts every error message.
    """
    _need(name, "size", len(data) > 0, "a bzImage", "an empty file")
    _need(
        name,
        "size",
        len(data) >= SETUP_HEADER.end,
        f"at least {SETUP_HEADER.end} bytes for the setup header (truncated?)",
        f"{len(data)} bytes",
    )
    f = SETUP_HEADER.unpack(data)
    _need(
        name,
        "boot_flag at 0x1fe",
        f["boot_flag"] == BOOT_FLAG,
        f"{BOOT_FLAG:#06x} (a bzImage)",
        f"{f['boot_flag']:#06x}",
    )
    _need(
        name,
        "header at 0x202",
        f["header"] == HDRS_MAGIC,
        "'HdrS' (a bzImage)",
        repr(data[0x202:0x206]),
    )
    _need(
        name,
        "version",
        f["version"] >= MIN_VERSION,
        "boot protocol 2.12 (0x020c) or newer",
        f"{f['version']:#06x}",
    )
    # byte 0x201 is the jmp displacement, so the header ends right after it (§1.1).
    hdr_end = 0x202 + data[0x201]
    _need(
        name,
        "setup header length (byte 0x201)",
        _MIN_HEADER_END <= hdr_end <= SETUP_HEADER_END_MAX,
        f"{_MIN_HEADER_END - 0x202:#x}..{SETUP_HEADER_END_MAX - 0x202:#x}",
        f"{data[0x201]:#x}",
    )
    _need(
        name,
        "loadflags",
        bool(f["loadflags"] & LOADED_HIGH),
        "LOADED_HIGH set (a bzImage, not a zImage)",
        f"{f['loadflags']:#04x}",
    )
    xlf = f["xloadflags"]
    _need(
        name,
        "xloadflags",
        bool(xlf & XLF_KERNEL_64),
        "XLF_KERNEL_64 set (a 64-bit entry at +0x200)",
        f"{xlf:#06x}",
    )
    _need(
        name,
        "xloadflags",
        bool(xlf & XLF_CAN_BE_LOADED_ABOVE_4G),
        "XLF_CAN_BE_LOADED_ABOVE_4G set",
        f"{xlf:#06x}",
    )
    _need(
        name,
        "relocatable_kernel",
        f["relocatable_kernel"] != 0,
        "non-zero (a crash kernel must be relocatable)",
        "0",
    )
    align = f["kernel_alignment"]
    _need(
        name,
        "kernel_alignment",
        PAGE_SIZE <= align <= 1 << 30 and align & (align - 1) == 0,
        "a power of two from 4 KiB to 1 GiB",
        f"{align:#x}",
    )
    _need(name, "cmdline_size", f["cmdline_size"] > 0, "non-zero", "0")
    setup_size = ((f["setup_sects"] or 4) + 1) * SECTOR
    _need(
        name,
        "size",
        len(data) > setup_size + ENTRY_64,
        f"more than {setup_size + ENTRY_64} bytes (setup_sects={f['setup_sects']} "
        "plus the 64-bit entry)",
        f"{len(data)} bytes",
    )
    kernel = data[setup_size:]
    # syssize counts 16-byte paragraphs of protected-mode code (rounded up), so a
    # file ending before the last paragraph is truncated.
    min_size = setup_size + max(f["syssize"] * 16 - 15, 0)
    _need(
        name,
        "size",
        len(data) >= min_size,
        f"at least {min_size} bytes (syssize={f['syssize']:#x}, truncated?)",
        f"{len(data)} bytes",
    )
    header = SetupHeader(
        setup_sects=f["setup_sects"],
        syssize=f["syssize"],
        vid_mode=f["vid_mode"],
        boot_flag=f["boot_flag"],
        header=f["header"],
        version=f["version"],
        loadflags=f["loadflags"],
        kernel_alignment=align,
        relocatable_kernel=f["relocatable_kernel"],
        min_alignment=f["min_alignment"],
        xloadflags=xlf,
        cmdline_size=f["cmdline_size"],
        pref_address=f["pref_address"],
        init_size=f["init_size"],
        raw=bytes(data[SETUP_HEADER_START:hdr_end]),
    )
    return BzImage(header=header, kernel=bytes(kernel))
