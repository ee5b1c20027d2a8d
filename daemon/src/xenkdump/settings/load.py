"""Load ``xenkdump.yaml`` into ``Settings``: validated by its JSON Schema, every problem reported.

The keys, their types and defaults are ``schema/xenkdump-config-v1.json``; the one
YAML-and-schema mechanism (``xenkdump.schema``) reports every problem as
``file:line: key: expected ..., found ...``.  This module only turns the valid value
into the typed ``Settings``.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from xenkdump.errors import ConfigError
from xenkdump.safefile import Limit, read_file
from xenkdump.schema import CONFIG_SCHEMA, ConfigProblem, ConfigProblems, load
from xenkdump.settings.model import CmdlineSettings, InitrdPolicy, KernelPolicy, Settings

__all__ = ["ConfigProblem", "ConfigProblems", "load_settings", "parse_settings", "settings_from"]


def settings_from(value: dict[str, Any], base: Settings) -> Settings:
    """``base`` with the keys of a schema-valid configuration value applied."""
    fields: dict[str, Any] = {}
    if "kernel" in value:
        kernel = value["kernel"]
        if kernel in (KernelPolicy.RUNNING, KernelPolicy.LATEST):
            fields.update(kernel=KernelPolicy(kernel), kernel_path=None)
        else:
            fields.update(kernel=KernelPolicy.PATH, kernel_path=Path(kernel))
    if "initrd" in value:
        initrd = value["initrd"]
        if initrd is None or initrd == InitrdPolicy.NONE:
            fields.update(initrd=InitrdPolicy.NONE, initrd_path=None)
        elif initrd == InitrdPolicy.AUTO:
            fields.update(initrd=InitrdPolicy.AUTO, initrd_path=None)
        else:
            fields.update(initrd=InitrdPolicy.PATH, initrd_path=Path(initrd))
    if "cmdline" in value:
        cmdline = value["cmdline"] or {}
        fields["cmdline"] = CmdlineSettings(
            base=cmdline.get("base"),
            append=tuple(cmdline.get("append") or ()),
            remove=tuple(cmdline.get("remove") or ()),
        )
    for name in ("state_dir", "boot_dir"):
        if name in value:
            fields[name] = Path(value[name])
    for name in ("topology_check_interval", "reload_debounce"):
        if name in value:
            fields[name] = float(value[name])
    return replace(base, **fields)


def parse_settings(text: str | bytes, source: Path | str = "<config>") -> Settings:
    """Parse configuration text; raise ConfigProblems naming source:line for each problem."""
    raw = text.encode() if isinstance(text, str) else text
    value = load([(str(source), raw)], CONFIG_SCHEMA)
    base = Settings(source=Path(source), digest=hashlib.sha256(raw).hexdigest())
    return settings_from(value, base)


def load_settings(path: Path) -> Settings:
    """Read and parse the configuration file at ``path`` (ConfigError if unreadable)."""
    raw = read_file(path, "configuration file", Limit.CONFIG, error=ConfigError)
    return parse_settings(raw, path)
