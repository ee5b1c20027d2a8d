"""Where xenkdump's files live by default, defined once (as text: importing this is free)."""

from __future__ import annotations

CONFIG_FILE = "/etc/xenkdump/xenkdump.yaml"
# Where xenkdump's crash initramfs images go ($XENKDUMP_INITRD_DIR overrides).
INITRD_DIR = "/var/lib/xenkdump"
INITRD_DIR_ENV = "XENKDUMP_INITRD_DIR"
