"""The Debian package from a clean clone: lintian-clean, built in and installed into a
fresh root of each release (Debian 12 bookworm, 13 trixie) with apt resolving the
dependencies, and purged without a trace.  Prints the lintian summary and timings."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from package_lab import (
    RELEASES,
    WORK_PARENT,
    Built,
    Installed,
    build_in_root,
    build_on_host,
    install_root,
)

pytestmark = pytest.mark.e2e

# Lintian lines that fail the build: errors and warnings (I:, P:, N: and X: are shown).
_FAILING = re.compile(r"^[EW]: ", re.M)


def summary(built: Built) -> str:
    """lintian's summary line and its tags (errors and warnings fail the tests)."""
    tags = [line for line in built.lintian.splitlines() if re.match(r"^[EWIPX]: ", line)]
    counts = {k: sum(t.startswith(f"{k}: ") for t in tags) for k in "EWIPX"}
    head = (
        f"lintian ({built.release}): {counts['E']} errors, {counts['W']} warnings, "
        f"{counts['I']} info, {counts['P']} pedantic, {counts['X']} experimental"
    )
    return "\n  ".join([head, *tags])


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = WORK_PARENT / f"xenkdump-package.{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    yield d
    if os.environ.get("XENKDUMP_E2E_KEEP") == "1":
        print(f"\n[package] kept {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def built(workdir: Path) -> dict[str, Built]:
    """The package built in a fresh root of each release (cached for the session)."""
    return {r: build_in_root(r, workdir / f"deb-{r}") for r in RELEASES}


@pytest.fixture(scope="session")
def installed(built: dict[str, Built], workdir: Path, debian_kernel: Path) -> dict[str, Installed]:
    """A fresh root of each release with the package installed by apt, checked and purged."""
    return {
        r: install_root(r, b.deb, debian_kernel, workdir / f"root-{r}", workdir / f"root-{r}.log")
        for r, b in built.items()
    }


def test_host_build_from_a_clean_clone_is_lintian_clean(workdir: Path) -> None:
    b = build_on_host(workdir / "deb-host")
    print(f"\n[package] host build {b.deb.name} in {b.seconds:.0f} s")
    print(summary(b))
    assert not _FAILING.search(b.lintian), b.lintian


@pytest.mark.parametrize("release", RELEASES)
def test_build_in_release_root_is_lintian_clean(built: dict[str, Built], release: str) -> None:
    b = built[release]
    print(f"\n[package] {release}: built {b.deb.name} in {b.seconds:.0f} s")
    print(summary(b))
    assert b.deb.stat().st_size > 50_000
    assert not _FAILING.search(b.lintian), b.lintian


@pytest.mark.parametrize("release", RELEASES)
def test_apt_install_then_purge_leaves_nothing(
    installed: dict[str, Installed], release: str
) -> None:
    inst = installed[release]
    print(f"\n[package] {release}: fresh root, install, 2 purge cycles in {inst.seconds:.0f} s")
    print("\n".join(f"  {line}" for line in inst.report))
    report = "\n".join(inst.report)
    assert f"release {release}" in report
    assert "enabled enabled" in report
    assert re.search(r"installed \S+ with libxenmisc4\.(17|20)", report)
    want_lib = {"bookworm": "libxenmisc4.17", "trixie": "libxenmisc4.20"}[release]
    assert want_lib in report
    assert "plan ok" in report
    assert re.search(r"purge clean \(\d+ paths compared\)", report)
    assert "done" in inst.report
    assert (inst.root / "usr/sbin/xenkdumpd").exists()  # installed again at the end
