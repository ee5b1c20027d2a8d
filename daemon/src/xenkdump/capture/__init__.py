"""The capture side: what turns a crash into a saved dump.

``agent/xenkdump-capture.sh`` runs in the crash kernel (busybox sh); the Python
modules here prepare what it needs on dom0.  See docs/capture.md.
"""

from __future__ import annotations

from pathlib import Path

AGENT_DIR = Path(__file__).parent / "initramfs-tools"
AGENT = AGENT_DIR / "xenkdump-capture.sh"
