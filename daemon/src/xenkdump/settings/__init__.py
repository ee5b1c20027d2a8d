"""xenkdump's configuration: the YAML loader (``load``) and the typed settings (``model``).

The loader's names are imported on first use: it brings the YAML and JSON Schema stack,
which commands that only need a default path must not pay for (bench/cli.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenkdump.settings.model import (
    DEFAULT_CONFIG_PATH,
    CmdlineSettings,
    InitrdPolicy,
    KernelPolicy,
    Settings,
)

if TYPE_CHECKING:
    from xenkdump.settings.load import (
        ConfigProblem,
        ConfigProblems,
        load_settings,
        parse_settings,
    )

_FROM_LOAD = frozenset({"ConfigProblem", "ConfigProblems", "load_settings", "parse_settings"})

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


def __getattr__(name: str) -> Any:
    if name in _FROM_LOAD:
        from xenkdump.settings import load  # noqa: PLC0415

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
