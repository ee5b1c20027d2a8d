"""Shared fixtures.  Tiers: unit, contract (hypervisor port), cli, daemon, e2e (real Xen)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XENKDUMP_CACHE", "/var/cache/xenkdump-tests"))


@pytest.fixture(scope="session")
def debian_kernel() -> Path:
    """Debian's amd64 vmlinuz, fetched (never installed) by scripts/fetch-test-kernel.sh."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "fetch-test-kernel.sh")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out)
