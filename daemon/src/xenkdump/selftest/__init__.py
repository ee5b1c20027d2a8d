"""The self-test: the armed crash path proven in a staging VM, without crashing the host.

``stages`` parses the serial console into stages (sans-I/O), ``plan`` decides what
a level boots and whether the host can afford it (pure), ``vm`` runs QEMU so that
it can never outlive its owner, ``job`` ties them into one run with progress and
cancellation.  docs/selftest.md explains the levels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

# The standalone crash-side hook (docs/selftest.md §3), shipped as package data, for
# crash initrds of one's own; xenkdump's capture agent has a self-test mode instead.
HOOK = Path(__file__).parent / "crashcheck.sh"

# Defaults of a run (job.Options), here so that xenkdumpctl's help needs no more.
DEFAULT_WORK_DIR: Final = Path("/var/tmp")
DEFAULT_TIMEOUT: Final = 900.0
