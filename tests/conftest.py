"""Shared fixtures.  Tiers: unit, contract (hypervisor port), cli, daemon, e2e (real Xen).

The real Debian kernel (``debian_kernel``) is whatever Debian's archive serves today, so
tests that use it assert only invariants and what its own header says; byte-exact goldens
run on the synthetic bzImage of tests/unit/imagefixtures.py.  The kernel used is printed
at the end of the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import testkernel


@pytest.fixture(scope="session")
def debian_kernel() -> Path:
    """Debian's amd64 vmlinuz, fetched (never installed) by scripts/fetch-test-kernel.sh."""
    return testkernel.debian_kernel()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if testkernel.debian_kernel.cache_info().currsize == 0:
        return  # no test used it
    path = testkernel.debian_kernel()
    version = testkernel.version_string(path.read_bytes())
    terminalreporter.write_line(f"Debian test kernel: {path.name}: {version}")
