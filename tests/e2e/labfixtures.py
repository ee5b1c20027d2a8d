"""Fixtures for the real-Xen tier: cached assets and one scratch job per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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


# CI order: the contract and peer scenarios first (they need no image
# builder), then xenkdump's own load-and-crash, then the reload proof.
_ORDER = ("test_harness_unit", "test_contract", "test_peer", "test_load_crash", "test_reload")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Reorder this directory's items among themselves; other items keep their places."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if item.path.parent == here]

    def rank(item: pytest.Item) -> int:
        stem = item.path.stem
        return _ORDER.index(stem) if stem in _ORDER else len(_ORDER)

    ordered = sorted((items[i] for i in slots), key=rank)  # stable inside each file
    for i, item in zip(slots, ordered, strict=True):
        items[i] = item
