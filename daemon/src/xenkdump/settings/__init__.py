"""xenkdump's configuration: the YAML loader (``load``) and the typed settings (``model``)."""

from __future__ import annotations

from xenkdump.settings.load import ConfigProblem, ConfigProblems, load_settings, parse_settings
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
    "ConfigProblem",
    "ConfigProblems",
    "InitrdPolicy",
    "KernelPolicy",
    "Settings",
    "load_settings",
    "parse_settings",
]
