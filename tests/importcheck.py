"""What a fresh interpreter loads to run some code: the CLI's import budget.

Start-up time is bench/cli.py's business; tests pin *which* modules a command loads
(behaviour, not timing), counted beyond those the interpreter loads to start at all.
The code runs as Debian runs xenkdump (and as bench/cli.py does): the venv's base
interpreter, the system's packages, the checkout's sources at the end of the module
path.  Not the venv itself: its editable-install finder loads pathlib, re and enum
at start-up, which would hide them from these tests.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

MARK = "XK-MODULES:"
REPO = Path(__file__).resolve().parents[1]
# /usr/bin/python3.N for a venv made from Debian's python3.
PYTHON = str(Path(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}"))
SOURCES = [str(REPO / "daemon" / "src"), str(REPO / "bindings")]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [PYTHON, "-c", f"import sys; sys.path += {SOURCES!r}\n{code}"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def run_and_list(code: str) -> tuple[str, set[str]]:
    """(stdout, modules loaded beyond start-up) of ``code`` in a fresh interpreter."""
    listing = f"\nimport sys as _s\nprint({MARK!r}, *_s.modules, file=_s.stderr)"
    proc = _run(code + listing)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith(MARK))
    return proc.stdout, set(line.split()[1:]) - startup_modules()


@functools.cache
def startup_modules() -> frozenset[str]:
    proc = _run("print(*sys.modules)")
    assert proc.returncode == 0, proc.stderr
    return frozenset(proc.stdout.split())


def under(modules: Iterable[str], roots: Iterable[str]) -> list[str]:
    """The modules that are one of ``roots`` or inside one (a package's submodules)."""
    roots = tuple(roots)
    return sorted(m for m in modules if any(m == r or m.startswith(r + ".") for r in roots))
