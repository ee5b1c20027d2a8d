"""Shared fixtures.  Tiers: unit, contract (hypervisor port), cli, daemon, e2e (real Xen).

The real Debian kernel (``debian_kernel``) is whatever Debian's archive serves today, so
tests that use it assert only invariants and what its own header says; byte-exact goldens
run on the synthetic bzImage of tests/unit/imagefixtures.py.  The kernel used is printed
at the end of the run.
"""

from __future__ import annotations

import functools
import os
import struct
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XENKDUMP_CACHE", "/var/cache/xenkdump-tests"))


def kernel_version_string(data: bytes) -> str:
    """The bzImage's kernel_version string (boot.rst: pointer at 0x20E, relative to 0x200)."""
    ptr = struct.unpack_from("<H", data, 0x20E)[0] + 0x200
    return data[ptr : ptr + 256].split(b"\0", 1)[0].decode("ascii", "replace")


@functools.cache
def _fetch_debian_kernel() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "fetch-test-kernel.sh")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out)


@pytest.fixture(scope="session")
def debian_kernel() -> Path:
    """Debian's amd64 vmlinuz, fetched (never installed) by scripts/fetch-test-kernel.sh."""
    return _fetch_debian_kernel()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _fetch_debian_kernel.cache_info().currsize == 0:
        return  # no test used it
    path = _fetch_debian_kernel()
    version = kernel_version_string(path.read_bytes())
    terminalreporter.write_line(f"Debian test kernel: {path.name}: {version}")
