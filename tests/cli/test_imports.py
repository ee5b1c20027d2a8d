"""xenkdumpctl imports only what a command needs (its start-up time: bench/cli.py).

Building the parser (all that ``--help`` does) must not import the D-Bus stacks, the
YAML/JSON Schema stack, the image builder or a hypervisor adapter; each command's
handler imports those when it runs.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "asyncio",
    "dbus",
    "dbus_fast",
    "yaml",
    "jsonschema",
    "cffi",
    "xenkdump.image.planner",
    "xenkdump.image.loader",
    "xenkdump.hv.sim",
    "xenkdump.hv.xen",
    "xenkdump.daemon",
    "xenkdump.settings.load",
    "xenkdump.state",
    "xenkdump.capture",
)


def test_building_the_parser_imports_nothing_heavy() -> None:
    code = (
        "import sys; from xenkdump.cli.ctl import build_parser; build_parser(); "
        "print('\\n'.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "xenkdump.cli.cmd_status" in out  # every command registered
    loaded = [m for m in out if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert loaded == []
