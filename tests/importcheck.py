"""What a fresh interpreter loads to run some code: the CLI's import budget.

Start-up time is bench/cli.py's business; tests pin *which* modules a command loads
(behaviour, not timing), counted beyond those the interpreter loads to start at all
(a venv's editable-install finder, for one, loads pathlib).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Iterable

MARK = "XK-MODULES:"


def run_and_list(code: str) -> tuple[str, set[str]]:
    """(stdout, modules loaded beyond start-up) of ``code`` in a fresh interpreter."""
    listing = f"\nimport sys as _s\nprint({MARK!r}, *_s.modules, file=_s.stderr)"
    proc = subprocess.run(
        [sys.executable, "-c", code + listing], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith(MARK))
    return proc.stdout, set(line.split()[1:]) - startup_modules()


@functools.cache
def startup_modules() -> frozenset[str]:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; print(*sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return frozenset(proc.stdout.split())


def under(modules: Iterable[str], roots: Iterable[str]) -> list[str]:
    """The modules that are one of ``roots`` or inside one (a package's submodules)."""
    roots = tuple(roots)
    return sorted(m for m in modules if any(m == r or m.startswith(r + ".") for r in roots))
