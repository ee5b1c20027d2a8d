"""Fixtures for the purgatory tests: a freshly built purgatory from purgatory/."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xenkdump.image import purgatory

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "purgatory" / "build"


@pytest.fixture(scope="session")
def built() -> Path:
    """Runs the project's own build (`make purgatory`), so the tests check the sources."""
    proc = subprocess.run(
        ["make", "-s", "-C", str(REPO), "purgatory"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"make purgatory failed:\n{proc.stdout}\n{proc.stderr}"
    purgatory.purgatory_blob.cache_clear()
    return BUILD


@pytest.fixture(scope="session")
def blob(built: Path) -> bytes:
    return purgatory.purgatory_blob()
