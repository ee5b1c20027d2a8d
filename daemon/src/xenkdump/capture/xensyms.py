"""Where Xen keeps its console ring, from Xen's own symbol table (docs/capture.md §3).

Xen exports no address of its console ring in a dump.  The ring lives in Xen's heap,
found through four statics of ``drivers/char/console.c`` (``conring``, ``conring_size``,
``conringp``); their addresses are in the symbol table Xen embeds in its own image for
backtraces -- complete (data and static symbols too) when Xen is built with
``CONFIG_LIVEPATCH``, as Debian's is.  This module reads that table out of the Xen
binary in /boot on dom0, when the crash initramfs is built; the capture agent then
checks, in the dump, that the crashed Xen is that binary (the addresses of
``domain_list`` and ``max_page`` that Xen's own VMCOREINFO gives must be the table's)
before it follows the pointers.

The table's layout (Xen's ``tools/symbols``, with ``common/symbols.c`` reading it):
``symbols_offsets`` (u32 per symbol, from the image's link base), ``symbols_num_syms``
(u32), ``symbols_names`` (per symbol a length byte, then that many token numbers),
``symbols_markers`` (u32 per 256 symbols: where each group starts in the names),
``symbols_token_table`` (256 NUL-terminated strings) and ``symbols_token_index``
(256 u16: each token's offset in the table).  Nothing names where the arrays are, so
they are found by their shape: the index is 256 increasing offsets that match the
lengths of the 256 strings just before it, and the markers, names and count before
those must agree with each other.  A table that does not decode is reported, never
guessed.  Pure functions over bytes (and one file read).
"""

from __future__ import annotations

import gzip
import itertools
import struct
from dataclasses import dataclass
from pathlib import Path

from xenkdump.image.elfcore import PT_LOAD
from xenkdump.image.structs import Layout

# x86-64 Xen since 4.14 (xen/arch/x86/include/asm/config.h): the image is linked at
# XEN_VIRT_START; the symbol offsets count from it; the heap is in the direct map.
XEN_VIRT_START = 0xFFFF82D040000000
DIRECTMAP_VIRT_START = 0xFFFF830000000000
CONSOLE_SYMBOLS = ("conring", "conring_size", "conringp")
CHECK_SYMBOLS = ("domain_list", "max_page")  # also in Xen's VMCOREINFO
_U32 = struct.Struct("<I")
# The multiboot Xen binary is a 32-bit ELF (gABI Elf32_Ehdr, Elf32_Phdr): the fields read.
ELF32_EHDR = Layout("Elf32_Ehdr", size=52, rows=((0x1C, "e_phoff", "I"), (0x2C, "e_phnum", "H")))
ELF32_PHDR = Layout(
    "Elf32_Phdr",
    size=32,
    rows=((0x00, "p_type", "I"), (0x04, "p_offset", "I"), (0x10, "p_filesz", "I")),
)
_MAX_TOKEN = 64


class SymbolTableError(ValueError):
    """The image has no symbol table this module can read (the reason in words)."""


@dataclass(frozen=True)
class ConsoleSymbols:
    """Offsets from XEN_VIRT_START of the console statics and of the check symbols."""

    source: str  # the Xen binary they were read from
    offsets: dict[str, int]

    def agent_values(self) -> dict[str, str]:
        """The capture agent's settings: where each static is (its offset from the link
        base, added to Xen's physical start in the dump), what Xen's VMCOREINFO must say
        for the check symbols, and the direct map's upper 32 bits."""
        return {
            "XK_XEN_SYMS": " ".join(f"{n}={self.offsets[n]}" for n in CONSOLE_SYMBOLS),
            "XK_XEN_SYMS_CHECK": " ".join(
                f"SYMBOL({n})={XEN_VIRT_START + self.offsets[n]:x}" for n in CHECK_SYMBOLS
            ),
            "XK_XEN_SYMS_FROM": self.source,
            "XK_XEN_DIRECTMAP_HI": str(DIRECTMAP_VIRT_START >> 32),
        }


def _token_index(image: bytes) -> tuple[int, tuple[int, ...]]:
    """(offset of symbols_token_table, the 256 token offsets)."""
    found: list[tuple[int, tuple[int, ...]]] = []
    at = image.find(b"\0\0")
    while 0 <= at <= len(image) - 512:
        if at % 2 == 0 and all(
            1 < d <= _MAX_TOKEN for d in _deltas(struct.unpack_from("<4H", image, at))
        ):
            index = struct.unpack_from("<256H", image, at)
            if all(1 < index[k + 1] - index[k] <= _MAX_TOKEN for k in range(255)):
                table = _token_table_start(image, at, index)
                if table is not None:
                    found.append((table, index))
        at = image.find(b"\0\0", at + 1)
    if len(found) != 1:
        raise SymbolTableError(
            "no symbol table in the image" if not found else "more than one symbol table shape"
        )
    return found[0]


def _deltas(values: tuple[int, ...]) -> list[int]:
    return [b - a for a, b in itertools.pairwise(values)]


def _token_table_start(image: bytes, index_at: int, index: tuple[int, ...]) -> int | None:
    for last in range(1, _MAX_TOKEN):
        start = index_at - index[255] - last - 1
        if start < 0:
            return None
        if image[index_at - 1] != 0:
            return None
        if (
            all(
                image[start + index[k + 1] - 1] == 0
                and b"\0" not in image[start + index[k] : start + index[k + 1] - 1]
                for k in range(255)
            )
            and b"\0" not in image[start + index[255] : index_at - 1]
        ):
            return start
    return None


def decode(image: bytes) -> dict[str, int]:
    """Every symbol of the embedded table: name (``file.c#name`` for statics) -> offset."""
    table, index = _token_index(image)
    tokens = [image[table + index[k] : image.index(b"\0", table + index[k])] for k in range(256)]
    # markers end where the token table starts; the first marker is 0
    at = table - 4
    while at >= 4 and _U32.unpack_from(image, at)[0] != 0:
        if _U32.unpack_from(image, at - 4)[0] >= _U32.unpack_from(image, at)[0]:
            raise SymbolTableError("symbol table markers are not increasing")
        at -= 4
    markers_at = at
    groups = (table - markers_at) // 4
    markers = struct.unpack_from(f"<{groups}I", image, markers_at)
    for names_at in range(markers_at - 1, max(4, markers_at - 64 * 256 * groups), -1):
        count = _U32.unpack_from(image, names_at - 4)[0]
        if not 256 * (groups - 1) < count <= 256 * groups:
            continue
        starts, pos = [], names_at
        for _ in range(count):
            starts.append(pos - names_at)
            pos += image[pos] + 1
            if pos > markers_at:
                break
        if (
            markers_at - 4 <= pos <= markers_at
            and len(starts) == count
            and all(starts[256 * g] == markers[g] for g in range(groups))
        ):
            break
    else:
        raise SymbolTableError("symbol names do not match the table's markers")
    offsets = struct.unpack_from(f"<{count}I", image, names_at - 4 - 4 * count)
    symbols: dict[str, int] = {}
    for i, start in enumerate(starts):
        at = names_at + start
        name = b"".join(tokens[b] for b in image[at + 1 : at + 1 + image[at]])
        symbols.setdefault(name[1:].decode("ascii", "replace"), offsets[i])  # [0]: type
    return symbols


def lookup(symbols: dict[str, int], name: str) -> int:
    """The offset of ``name``: a global, or the one static of that name (``file.c#name``)."""
    if name in symbols:
        return symbols[name]
    statics = [off for sym, off in symbols.items() if sym.endswith(f"#{name}")]
    if len(statics) != 1:
        raise SymbolTableError(f"symbol {name}: {'absent' if not statics else 'not unique'}")
    return statics[0]


def image_bytes(path: Path) -> bytes:
    """The loaded image of a Xen binary (``xen-*.gz``: a gzip'd 32-bit multiboot ELF)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:4] != b"\x7fELF" or raw[4] != 1:
        raise SymbolTableError(f"{path}: not a 32-bit ELF Xen image")
    ehdr = ELF32_EHDR.unpack(raw)
    for i in range(ehdr["e_phnum"]):
        ph = ELF32_PHDR.unpack(raw, ehdr["e_phoff"] + i * ELF32_PHDR.size)
        if ph["p_type"] == PT_LOAD:
            return raw[ph["p_offset"] : ph["p_offset"] + ph["p_filesz"]]
    raise SymbolTableError(f"{path}: no loadable segment")


def console_symbols(path: Path) -> ConsoleSymbols:
    """The console statics and check symbols of the Xen binary ``path``."""
    try:
        symbols = decode(image_bytes(path))
    except (OSError, EOFError, struct.error, gzip.BadGzipFile) as exc:
        raise SymbolTableError(f"{path}: {exc}") from None
    except SymbolTableError as exc:
        raise SymbolTableError(f"{path}: {exc}") from None
    names = (*CONSOLE_SYMBOLS, *CHECK_SYMBOLS)
    try:
        return ConsoleSymbols(str(path), {n: lookup(symbols, n) for n in names})
    except SymbolTableError as exc:
        raise SymbolTableError(f"{path}: {exc}") from None


def find_console_symbols(boot_dir: Path, xen_version: str) -> tuple[ConsoleSymbols | None, str]:
    """The console symbols of the Xen in ``boot_dir`` that matches ``xen_version``
    ("4.17.7..."; "" when unknown), or None and why."""
    major_minor = ".".join(xen_version.split(".")[:2])
    candidates = sorted(
        p
        for p in boot_dir.glob("xen-*")
        if p.suffix == ".gz" and (not major_minor or f"-{major_minor}" in p.name)
    )
    reasons = []
    for path in candidates:
        try:
            return console_symbols(path), ""
        except SymbolTableError as exc:
            reasons.append(str(exc))
    if not candidates:
        return None, f"no xen-{major_minor or '*'}*.gz in {boot_dir}"
    return None, "; ".join(reasons)
