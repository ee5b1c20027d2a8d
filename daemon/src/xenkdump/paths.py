"""Where xenkdump's files live by default, defined once (as text: importing this is free)."""

from __future__ import annotations

CONFIG_FILE = "/etc/xenkdump/xenkdump.yaml"
