"""Fixtures for the real-Xen tier: cached assets and one scratch job per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from e2e_harness import Assets, Job, prepare_assets


@pytest.fixture(scope="session")
def assets() -> Assets:
    """Installs missing packages (never skips) and caches Xen, kexec-tools and the scanner."""
    return prepare_assets()


@pytest.fixture
def job() -> Iterator[Job]:
    """A scratch directory under /var/tmp, removed afterwards (XENKDUMP_E2E_KEEP=1 keeps it)."""
    j = Job.create()
    try:
        yield j
    finally:
        if os.environ.get("XENKDUMP_E2E_KEEP") == "1":
            print(f"\n[e2e] kept {j.dir}")
        else:
            j.cleanup()
