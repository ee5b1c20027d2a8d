"""Xen's embedded symbol table read out of a Xen binary (capture/xensyms.py).

The tables here are written the way Xen's tools/symbols lays them out (offsets, count,
token-compressed names, markers every 256 symbols, token table and index), inside a
32-bit ELF gzip'd like Debian's /boot/xen-*.gz, with zero runs and noise around them.
The real binary is read in the lab (tests/e2e/test_capture.py), where the located ring
must end with Xen's own line about the crash.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from xenkdump.capture import xensyms

# Token k expands to the one character k (Xen's tokens are longer; the decoder does not care).
TOKENS = [b"\x7f"] + [bytes([k]) for k in range(1, 256)]


def table(symbols: list[tuple[str, int]]) -> bytes:
    """The symbol arrays as Xen's tools/symbols writes them (names carry a type letter)."""
    names, markers = b"", []
    for i, (name, _off) in enumerate(symbols):
        if i % 256 == 0:
            markers.append(len(names))
        raw = name.encode()
        names += bytes([len(raw)]) + raw
    names += bytes(-len(names) % 4)
    index, tok = [], b""
    for t in TOKENS:
        index.append(len(tok))
        tok += t + b"\0"
    return (
        struct.pack(f"<{len(symbols)}I", *(off for _n, off in symbols))
        + struct.pack("<I", len(symbols))
        + names
        + struct.pack(f"<{len(markers)}I", *markers)
        + tok
        + struct.pack("<256H", *index)
    )


def xen_gz(path: Path, blob: bytes) -> Path:
    """A gzip'd 32-bit ELF with one PT_LOAD holding ``blob`` (Debian's xen-*.gz shape)."""
    ehdr = bytearray(52)
    ehdr[:5] = b"\x7fELF\x01"
    xensyms.ELF32_EHDR.pack_into(ehdr, {"e_phoff": 52, "e_phnum": 1})
    phdr = xensyms.ELF32_PHDR.pack({"p_type": 1, "p_offset": 128, "p_filesz": len(blob)})
    raw = bytes(ehdr) + phdr + bytes(128 - 52 - len(phdr)) + blob
    path.write_bytes(gzip.compress(raw))
    return path


def symbols(n: int = 600) -> list[tuple[str, int]]:
    out = [(f"tfunc_{i:04d}", 0x200000 + 16 * i) for i in range(n)]
    out[100] = ("ddrivers/char/console.c#conring", 0x45ED68)
    out[101] = ("ddrivers/char/console.c#conring_size", 0x45ED60)
    out[350] = ("bdrivers/char/console.c#conringp", 0x5899D0)
    out[351] = ("Bdomain_list", 0x57B380)
    out[599] = ("Bmax_page", 0x5932F0)
    return out


def test_the_table_is_found_by_its_shape_and_decoded(tmp_path: Path) -> None:
    noise = bytes(4096) + b"\x01\x00\x02\x00" * 300 + bytes(332)  # the arrays are aligned
    path = xen_gz(tmp_path / "xen-4.17-amd64.gz", noise + table(symbols()) + bytes(4096))
    found = xensyms.console_symbols(path)
    assert found.offsets == {
        "conring": 0x45ED68,
        "conring_size": 0x45ED60,
        "conringp": 0x5899D0,
        "domain_list": 0x57B380,
        "max_page": 0x5932F0,
    }
    values = found.agent_values()
    assert values["XK_XEN_SYMS"] == (
        f"conring={0x45ED68} conring_size={0x45ED60} conringp={0x5899D0}"
    )
    assert values["XK_XEN_SYMS_CHECK"] == (
        "SYMBOL(domain_list)=ffff82d04057b380 SYMBOL(max_page)=ffff82d0405932f0"
    )
    assert values["XK_XEN_SYMS_FROM"] == str(path)
    symtab = xensyms.decode(xensyms.image_bytes(path))
    assert len(symtab) == 600 and symtab["func_0007"] == 0x200070


def test_find_in_boot_picks_the_running_release_and_says_why_not(tmp_path: Path) -> None:
    xen_gz(tmp_path / "xen-4.17-amd64.gz", table(symbols()))
    found, why = xensyms.find_console_symbols(tmp_path, "4.17.7")
    assert found is not None and why == ""
    none, why = xensyms.find_console_symbols(tmp_path, "4.20.1")
    assert none is None and why == f"no xen-4.20*.gz in {tmp_path}"
    (tmp_path / "xen-4.20-amd64.gz").write_bytes(gzip.compress(b"\x7fELF\x01" + bytes(100)))
    none, why = xensyms.find_console_symbols(tmp_path, "4.20.1")
    assert none is None and why.startswith(f"{tmp_path}/xen-4.20-amd64.gz: ")


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (bytes(8192), "no symbol table in the image"),
        (table(symbols())[: -256 * 2 - 20] + bytes(4), "no symbol table in the image"),
        (table([(n, o) for n, o in symbols() if "conring_size" not in n]), "conring_size: absent"),
    ],
    ids=["no-table", "cut-table", "symbol-missing"],
)
def test_an_unreadable_table_is_a_reason_never_a_guess(
    tmp_path: Path, blob: bytes, reason: str
) -> None:
    path = xen_gz(tmp_path / "xen-4.17-amd64.gz", blob)
    with pytest.raises(xensyms.SymbolTableError) as err:
        xensyms.console_symbols(path)
    assert reason in str(err.value) and str(err.value).startswith(f"{path}: ")
