"""Fast checks of the e2e harness's own pieces (default tier: no QEMU, no Xen).

The cpio writer is checked against GNU cpio, the token scanner against a real
ELF64 core layout, and the marker parsers against serial-log text.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import scenarios as sc
from e2e_harness import (
    HERE,
    clean_log,
    markers,
    token_needle,
)

from xenkdump.selftest.cpio import Initramfs, _newc_entry


def test_newc_header_is_110_bytes_and_padded() -> None:
    entry = _newc_entry("init", 0o100755, b"abc", 7)
    assert entry[:6] == b"070701"
    assert len(entry) % 4 == 0
    # name "init\0" starts at 110; data starts at the next multiple of 4.
    assert entry[110:115] == b"init\0"
    assert entry[116:119] == b"abc"
    assert int(entry[6:14], 16) == 7  # c_ino
    assert int(entry[54:62], 16) == 3  # c_filesize


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio missing (setup installs it)")
def test_cpio_round_trip_through_gnu_cpio(tmp_path: Path) -> None:
    fs = Initramfs()
    fs.add_file("init", b"#!/bin/sh\necho hi\n", 0o755)
    fs.add_file("etc/deep/conf", b"x=1\n")
    fs.add_symlink("bin/sh", "busybox")
    fs.add_dir("proc")
    archive = tmp_path / "a.cpio"
    archive.write_bytes(fs.cpio())
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "-F", str(archive)], cwd=out, check=True, capture_output=True
    )
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(out / "init", os.X_OK)
    assert (out / "etc" / "deep" / "conf").read_text() == "x=1\n"
    assert os.readlink(out / "bin" / "sh") == "busybox"
    assert (out / "proc").is_dir()


def test_needle_never_contains_the_token() -> None:
    token = bytes(range(32))
    needle = bytes.fromhex(token_needle(token))
    assert needle != token
    assert bytes(b ^ 0xFF for b in needle) == token


def _core(payload_at: int, payload: bytes, paddr: int) -> bytes:
    """An ELF64 core with one PT_LOAD at file offset 0x1000 mapping ``paddr``."""
    size = 0x20000
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + bytes(9),
        4,  # ET_CORE
        62,  # EM_X86_64
        1,
        0,
        64,  # e_phoff
        0,
        0,
        64,
        56,
        1,
        0,
        0,
        0,
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0x1000, 0, paddr, size, size, 0)
    body = bytearray(0x1000 + size)
    body[: len(ehdr)] = ehdr
    body[64 : 64 + len(phdr)] = phdr
    body[payload_at : payload_at + len(payload)] = payload
    return bytes(body)


@pytest.fixture(scope="module")
def scanner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing (scripts/setup-test-env.sh installs it)")
    exe = tmp_path_factory.mktemp("scan") / "vmcore_scan"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(HERE / "vmcore_scan.c")],
        check=True,
        capture_output=True,
    )
    return exe


@pytest.mark.parametrize("at", [0x1000, 0x1234, 0x1000 + (4 << 20) - 5])
def test_scanner_finds_token_and_its_physical_address(
    scanner: Path, tmp_path: Path, at: int
) -> None:
    token = os.urandom(32)
    core = tmp_path / "core"
    # The last position straddles the scanner's 4 MiB read boundary.
    data = bytearray(_core(0x1000, b"", 0x5000_0000))
    data += bytes(max(0, at + 64 - len(data)))
    data[at : at + 32] = token
    core.write_bytes(bytes(data))
    out = subprocess.run(
        [str(scanner), str(core), token_needle(token)], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out
    assert f"offset={at:#x}" in out.stdout
    if at < 0x21000:
        assert f"paddr={0x5000_0000 + at - 0x1000:#x}" in out.stdout


def test_scanner_reports_absence(scanner: Path, tmp_path: Path) -> None:
    core = tmp_path / "core"
    core.write_bytes(_core(0x1000, b"", 0))
    out = subprocess.run(
        [str(scanner), str(core), token_needle(os.urandom(32))],
        check=False,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert out.stdout.startswith("notfound scanned=")


def test_scanner_rejects_bad_needle(scanner: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [str(scanner), str(tmp_path), "zz"], check=False, capture_output=True, text=True
    )
    assert out.returncode == 2


def test_markers_and_values_from_serial_text() -> None:
    serial = (
        "\x1b[0m[    1.0] boot\r\r\n"
        "XK-SCEN: load ours0 rc=0 ns=123\r\n"
        "XK-SCEN: xen before status=1 crash=0x1+0x2\r\n"
        "(XEN) noise\r\nXK-CRASH: token found offset=0x10 paddr=0x20\r\n"
    )
    assert "\r" not in clean_log(serial)
    scen = markers(serial, "XK-SCEN:")
    assert sc.scen_values(scen, "load") == [{"_0": "ours0", "rc": "0", "ns": "123"}]
    assert sc.scen_values(scen, "xen before") == [{"status": "1", "crash": "0x1+0x2"}]
    crash = markers(serial, "XK-CRASH:")
    assert sc.scen_values(crash, "token") == [{"_0": "found", "offset": "0x10", "paddr": "0x20"}]
