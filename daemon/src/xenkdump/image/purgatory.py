"""xenkdump's own purgatory: the shipped flat binary and its parameter block.

The purgatory is the first code Xen runs at a crash (docs/xen-kexec-contract.md §5.3).  It
sets up its own GDT, selectors and stack, verifies the SHA-256 of every region
listed here, copies low memory to the backup area and only then enters the
Linux 64-bit entry with %rsi = boot_params (docs/crash-image.md §1.4).  Its sources are in
purgatory/ (see purgatory/README.md); ``make purgatory`` installs the binary as
package data next to this module.

Binary layout (little endian), all offsets relative to the segment start:

* ``xk_header`` at 0: a ``jmp`` to the entry, magic ``XKPURG01``, version and
  the offsets and sizes below.
* ``xk_params`` at ``params_offset`` (0x40): filled in by :func:`build_purgatory`.
* Code from ``code_offset`` for ``code_size`` bytes, then data; the file ends at
  ``file_size``; the segment needs ``memsz`` bytes (bss and a 4 KiB stack).

Pure: values in, bytes out.  The only I/O is reading the package data blob.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

from xenkdump.errors import ImageError, PlanError
from xenkdump.image.structs import Layout
from xenkdump.units import PAGE_SIZE

MAX_REGIONS: Final = 16
MAGIC: Final = b"XKPURG01"
VERSION: Final = 1
_U64_MAX: Final = (1 << 64) - 1
_RESOURCE: Final = ("image", "data", "purgatory.bin")


# struct xk_header (purgatory/entry.S); field names as in the source.
XK_HEADER: Final = Layout(
    "xk_header",
    0x40,
    (
        (0x00, "jmp", "8s"),  # jmp purgatory_start, zero padded
        (0x08, "magic", "8s"),  # "XKPURG01"
        (0x10, "version", "I"),
        (0x14, "header_size", "I"),
        (0x18, "params_offset", "I"),
        (0x1C, "params_size", "I"),
        (0x20, "entry_offset", "I"),
        (0x24, "code_offset", "I"),
        (0x28, "code_size", "I"),
        (0x2C, "file_size", "I"),  # bytes in purgatory.bin
        (0x30, "memsz", "I"),  # page-rounded segment size incl. bss and stack
        (0x34, "max_regions", "I"),
        (0x38, "reserved", "Q"),
    ),
)

# struct xk_region (purgatory/purgatory.h)
XK_REGION: Final = Layout(
    "xk_region", 48, ((0x00, "start", "Q"), (0x08, "size", "Q"), (0x10, "sha256", "32s"))
)

# struct xk_params (purgatory/purgatory.h), followed by regions[MAX_REGIONS].
XK_PARAMS: Final = Layout(
    "xk_params",
    0x30,
    (
        (0x00, "kernel_entry", "Q"),
        (0x08, "boot_params", "Q"),  # -> %rsi
        (0x10, "backup_src", "Q"),
        (0x18, "backup_dst", "Q"),
        (0x20, "backup_size", "Q"),  # 0 = no backup
        (0x28, "serial_port", "I"),  # UART I/O base, 0 = silent
        (0x2C, "nr_regions", "I"),
    ),
)
XK_PARAMS_SIZE: Final = XK_PARAMS.size + MAX_REGIONS * XK_REGION.size


def _region_base(i: int) -> int:
    return XK_PARAMS.size + i * XK_REGION.size


class PurgatoryMissing(ImageError):
    """The purgatory binary was not built or not installed."""


@dataclass(frozen=True)
class PurgatoryHeader:
    """The decoded ``xk_header`` of a purgatory binary."""

    version: int
    header_size: int
    params_offset: int
    params_size: int
    entry_offset: int
    code_offset: int
    code_size: int
    file_size: int
    memsz: int
    max_regions: int


@dataclass(frozen=True)
class VerifiedRegion:
    """A region the purgatory hashes before it jumps.

    ``sha256`` is the digest of the ``size`` bytes at ``start`` as Xen leaves them.
    The planner verifies each segment's buffer (size = buf_size), not the zero tail
    Xen adds up to dest_size: the tail is the kernel's decompression scratch space
    (init_size), which carries nothing the crash kernel reads, and hashing its tens
    of MiB would slow every plan and every crash for no protection (kexec-tools
    hashes it, §2.6).  A region may still cover a tail where that matters.
    """

    start: int
    size: int
    sha256: bytes


@dataclass(frozen=True)
class PurgatoryParams:
    """What the purgatory needs to know; see ``struct xk_params``."""

    kernel_entry: int
    boot_params: int
    regions: Sequence[VerifiedRegion]
    backup_src: int = 0
    backup_dst: int = 0
    backup_size: int = 0
    serial_port: int = 0  # 0 = silent; 0x3F8 = COM1

    def __post_init__(self) -> None:
        # A tuple, so that equal parameters compare equal whatever sequence was given.
        object.__setattr__(self, "regions", tuple(self.regions))


def parse_header(blob: bytes, name: str = "purgatory.bin") -> PurgatoryHeader:
    """Decode and check the header of a purgatory binary or segment."""
    if len(blob) < XK_HEADER.end:
        raise ImageError(f"{name}: expected at least {XK_HEADER.end} bytes, found {len(blob)}")
    magic = XK_HEADER.unpack_bytes(blob)["magic"]
    if magic != MAGIC:
        raise ImageError(f"{name}: magic: expected {MAGIC!r}, found {magic!r}")
    values = XK_HEADER.unpack(blob)
    if values["version"] != VERSION:
        raise ImageError(f"{name}: version: expected {VERSION}, found {values['version']}")
    hdr = PurgatoryHeader(**{k: v for k, v in values.items() if k != "reserved"})
    checks = (
        ("header_size", hdr.header_size, XK_HEADER.end),
        ("params_size", hdr.params_size, XK_PARAMS_SIZE),
        ("max_regions", hdr.max_regions, MAX_REGIONS),
    )
    for field, found, expected in checks:
        if found != expected:
            raise ImageError(f"{name}: {field}: expected {expected:#x}, found {found:#x}")
    if hdr.params_offset < hdr.header_size or hdr.params_offset + hdr.params_size > hdr.file_size:
        raise ImageError(f"{name}: params_offset {hdr.params_offset:#x} outside the file")
    if not hdr.code_offset <= hdr.entry_offset < hdr.code_offset + hdr.code_size:
        raise ImageError(f"{name}: entry_offset {hdr.entry_offset:#x} outside the code")
    if hdr.file_size > len(blob):
        raise ImageError(f"{name}: file_size: expected at most {len(blob)}, found {hdr.file_size}")
    if hdr.memsz % PAGE_SIZE or hdr.memsz < hdr.file_size:
        raise ImageError(f"{name}: memsz: expected a page multiple >= file_size, found {hdr.memsz}")
    return hdr


@cache
def purgatory_blob() -> bytes:
    """The shipped purgatory binary (package data), header checked."""
    ref = resources.files("xenkdump").joinpath(*_RESOURCE)
    try:
        blob = ref.read_bytes()
    except FileNotFoundError:
        raise PurgatoryMissing(
            f"{'/'.join(_RESOURCE)}: purgatory binary not found in the xenkdump package; "
            "run `make purgatory`"
        ) from None
    hdr = parse_header(blob, "/".join(_RESOURCE))
    if hdr.file_size != len(blob):
        raise ImageError(
            f"{'/'.join(_RESOURCE)}: size: expected {hdr.file_size} bytes, found {len(blob)}"
        )
    return blob


def purgatory_header() -> PurgatoryHeader:
    """The header of the shipped binary."""
    return parse_header(purgatory_blob())


def purgatory_memsz() -> int:
    """Page-rounded segment size the purgatory needs (code, data, bss, stack)."""
    return purgatory_header().memsz


def _check_u64(field: str, value: int) -> None:
    if not 0 <= value <= _U64_MAX:
        raise PlanError(f"purgatory {field}: expected 0..2^64-1, found {value:#x}")


def _encode_params(params: PurgatoryParams) -> bytes:
    regions = list(params.regions)
    if len(regions) > MAX_REGIONS:
        raise PlanError(f"purgatory regions: expected at most {MAX_REGIONS}, found {len(regions)}")
    if params.kernel_entry == 0:
        raise PlanError("purgatory kernel_entry: expected a non-zero address, found 0")
    for field in ("kernel_entry", "boot_params", "backup_src", "backup_dst", "backup_size"):
        _check_u64(field, getattr(params, field))
    if not 0 <= params.serial_port <= 0xFFFF:
        raise PlanError(
            f"purgatory serial_port: expected an I/O port 0..0xffff, found {params.serial_port:#x}"
        )
    out = bytearray(XK_PARAMS_SIZE)
    XK_PARAMS.pack_into(
        out,
        {
            "kernel_entry": params.kernel_entry,
            "boot_params": params.boot_params,
            "backup_src": params.backup_src,
            "backup_dst": params.backup_dst,
            "backup_size": params.backup_size,
            "serial_port": params.serial_port,
            "nr_regions": len(regions),
        },
    )
    for i, r in enumerate(regions):
        _check_u64(f"regions[{i}].start", r.start)
        _check_u64(f"regions[{i}].size", r.size)
        _check_u64(f"regions[{i}] end", r.start + r.size)
        if len(r.sha256) != 32:
            raise PlanError(
                f"purgatory regions[{i}].sha256: expected 32 bytes, found {len(r.sha256)}"
            )
        XK_REGION.pack_into(
            out, {"start": r.start, "size": r.size, "sha256": bytes(r.sha256)}, _region_base(i)
        )
    return bytes(out)


def build_purgatory(
    params: PurgatoryParams, load_addr: int, blob: bytes | None = None
) -> tuple[bytes, int]:
    """Fill the parameter block; return (segment bytes, entry address).

    The code is position independent, so only ``params`` changes the bytes;
    ``load_addr`` (page aligned, as Xen requires of dest_maddr,
    xen-kexec-contract.md §3.1) gives the entry address.  The segment's dest_size
    must be :func:`purgatory_memsz`.
    """
    if blob is None:
        blob = purgatory_blob()
    hdr = parse_header(blob)
    if load_addr % PAGE_SIZE or not 0 <= load_addr <= _U64_MAX - hdr.memsz:
        raise PlanError(
            f"purgatory load_addr: expected a page-aligned address, found {load_addr:#x}"
        )
    seg = bytearray(blob[: hdr.file_size])
    seg[hdr.params_offset : hdr.params_offset + XK_PARAMS_SIZE] = _encode_params(params)
    return bytes(seg), load_addr + hdr.entry_offset


def parse_params(segment: bytes) -> PurgatoryParams:
    """Read the parameter block back from a built segment."""
    hdr = parse_header(segment, "purgatory segment")
    off = hdr.params_offset
    p = XK_PARAMS.unpack(segment, off)
    nr = p.pop("nr_regions")
    if nr > MAX_REGIONS:
        raise ImageError(
            f"purgatory segment: nr_regions: expected at most {MAX_REGIONS}, found {nr}"
        )
    regions = []
    for i in range(nr):
        base = off + _region_base(i)
        r = XK_REGION.unpack(segment, base)
        digest = XK_REGION.unpack_bytes(segment, base)["sha256"]
        regions.append(VerifiedRegion(r["start"], r["size"], digest))
    return PurgatoryParams(regions=regions, **p)
