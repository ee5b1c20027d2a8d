"""xenkdump's configuration: the YAML loader (``load``) and the typed settings (``model``).

Only the model is imported here: the loader brings the YAML and JSON Schema stack, which
commands that only need a default path must not pay for (bench/cli.py).
"""

from __future__ import annotations

from xenkdump.settings.model import (
    DEFAULT_CONFIG_PATH,
    CmdlineSettings,
    InitrdPolicy,
    KernelPolicy,
    Settings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "CmdlineSettings",
    "InitrdPolicy",
    "KernelPolicy",
    "Settings",
]
