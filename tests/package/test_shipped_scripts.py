"""Every script the package ships inside the Python tree is executable in git: dh
keeps the mode, and lintian warns (script-not-executable) about a file that starts
with ``#!`` but is not executable, which fails the package tests much later."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tracked_modes(under: str) -> dict[str, str]:
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-s", "--", under],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    modes = {}
    for line in out.splitlines():
        meta, _, path = line.partition("\t")
        modes[path] = meta.split()[0]
    return modes


def test_shipped_scripts_with_a_shebang_are_executable() -> None:
    modes = tracked_modes("daemon/src/xenkdump")
    scripts = [p for p in modes if not p.endswith(".py") and (REPO / p).read_bytes()[:2] == b"#!"]
    assert scripts, "no script found: the test looks in the wrong place"
    assert [p for p in scripts if modes[p] != "100755"] == []
