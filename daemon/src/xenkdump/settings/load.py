"""Load ``xenkdump.yaml`` and its drop-ins into ``Settings``, every problem reported.

``/etc/xenkdump/xenkdump.yaml`` first, then ``/etc/xenkdump/xenkdump.yaml.d/*.yaml`` in
lexical order, each laid over the result so far: mappings are merged key by key, lists
and other values are replaced (a drop-in's ``cmdline: {append: [...]}`` replaces the
append list and keeps ``remove``).  ``Settings.digest`` is the SHA-256 of the merged
result; ``Settings.sources`` names every file that contributed.

The keys, their types and defaults are ``schema/xenkdump-config-v1.json``; the one
YAML-and-schema mechanism (``xenkdump.schema``) reports every problem as
``file:line: key: expected ..., found ...``.  This module only turns the valid value
into the typed ``Settings``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from xenkdump.errors import InputError
from xenkdump.safefile import Limit, read_file, shown
from xenkdump.schema import (
    CONFIG_SCHEMA,
    ConfigProblem,
    ConfigProblems,
    Document,
    KeyPath,
    load,
)
from xenkdump.settings.model import (
    CmdlineSettings,
    CrashAction,
    DumpSettings,
    DumpTarget,
    InitrdPolicy,
    KernelPolicy,
    SelfTestSettings,
    Settings,
)

__all__ = [
    "ConfigProblem",
    "ConfigProblems",
    "config_files",
    "dropin_dir",
    "load_settings",
    "parse_settings",
    "read_config",
    "settings_from",
]


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
        elif initrd in (InitrdPolicy.AUTO, InitrdPolicy.XENKDUMP):
            fields.update(initrd=InitrdPolicy(initrd), initrd_path=None)
        else:
            fields.update(initrd=InitrdPolicy.PATH, initrd_path=Path(initrd))
    if "cmdline" in value:
        cmdline = value["cmdline"] or {}
        fields["cmdline"] = CmdlineSettings(
            base=cmdline.get("base"),
            append=tuple(cmdline.get("append") or ()),
            remove=tuple(cmdline.get("remove") or ()),
        )
    if "dump" in value:
        fields["dump"] = dump_settings(value["dump"] or {})
    if "selftest" in value:
        st = value["selftest"] or {}
        fields["selftest"] = SelfTestSettings(
            after_reload=bool(st.get("after_reload", False)),
            schedule=_schedule(st.get("schedule", "off")),
            level=str(st.get("level") or ""),
            xen=Path(st["xen"]) if st.get("xen") else None,
            dom0_kernel=Path(st["dom0_kernel"]) if st.get("dom0_kernel") else None,
            timeout=int(st.get("timeout", 900)),
            memory_limit_mib=int(st.get("memory_limit", 0)),
        )
    for name in ("state_dir", "boot_dir"):
        if name in value:
            fields[name] = Path(value[name])
    for name in ("topology_check_interval", "reload_debounce"):
        if name in value:
            fields[name] = float(value[name])
    if "metrics" in value:
        textfile = (value["metrics"] or {}).get("textfile")
        fields["metrics_textfile"] = Path(textfile) if textfile else None
    return replace(base, **fields)


def _schedule(value: object) -> str:
    """selftest.schedule: YAML reads an unquoted ``off`` as false."""
    return "off" if value is False else str(value)


def dump_settings(value: dict[str, Any]) -> DumpSettings:
    """The ``dump:`` section of a schema-valid configuration value."""
    fields: dict[str, Any] = {}
    for name in ("device", "fstype", "nfs", "nfs_options", "ssh", "format", "compress"):
        if name in value:
            fields[name] = value[name]
    for name in ("ssh_port", "level", "keep", "max_total"):
        if name in value:
            fields[name] = int(value[name])
    for name in ("path", "ssh_key", "ssh_known_hosts"):
        if name in value:
            fields[name] = Path(value[name])
    if "modules" in value:
        fields["modules"] = tuple(value["modules"] or ())
    if "target" in value:
        fields["target"] = DumpTarget(value["target"])
    for name in ("failure_action", "final_action"):
        if name in value:
            fields[name] = CrashAction(value[name])
    return DumpSettings(**fields)


def check_settings(value: Any) -> Iterator[tuple[KeyPath, str]]:
    """Rules the schema does not state: a target's own keys, a calendar systemd knows."""
    selftest = value.get("selftest") if isinstance(value, dict) else None
    schedule = selftest.get("schedule") if isinstance(selftest, dict) else None
    if schedule is True:
        yield ("selftest", "schedule"), "expected a calendar expression or off, found true"
    elif isinstance(schedule, str) and schedule != "off":
        # Imported here: only a configuration with a schedule needs systemd-analyze.
        from xenkdump.selftest.schedule import problem  # noqa: PLC0415

        why = problem(schedule, time.time())
        if why:
            yield ("selftest", "schedule"), why
    dump = value.get("dump") if isinstance(value, dict) else None
    if not isinstance(dump, dict):
        return
    target = dump.get("target", "local")
    for key, kind, what in (("nfs", "nfs", "server:/export"), ("ssh", "ssh", "user@host")):
        if target == kind and not dump.get(key):
            yield ("dump", "target"), f"expected dump.{key} ({what}) with target {kind}, found none"
    if dump.get("device") and target != "local":
        yield ("dump", "device"), f"expected no device with target {target} (local only)"


def dropin_dir(path: Path) -> Path:
    """``/etc/xenkdump/xenkdump.yaml`` -> ``/etc/xenkdump/xenkdump.yaml.d``."""
    return path.with_name(path.name + ".d")


def config_files(path: Path) -> list[Path]:
    """``path``, then its drop-ins: ``<path>.d/*.yaml`` in lexical order.

    Names starting with a dot (editors' temporary files) and names not ending in
    ``.yaml`` (``.dpkg-old``, ``~`` backups) are skipped.  A missing directory means no
    drop-ins; one that cannot be listed is a ConfigProblems.
    """
    directory = dropin_dir(path)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [path]
    except OSError as exc:
        message = f"cannot list the drop-in directory: {exc.strerror or exc}"
        raise ConfigProblems([ConfigProblem(str(directory), 0, "", message)]) from None
    return [path, *(directory / n for n in names if n.endswith(".yaml") and not n.startswith("."))]


def read_config(paths: Sequence[Path]) -> Document:
    """Read ``paths`` (the main file, then drop-ins), lay them over each other, validate.

    ConfigProblems names every problem of every file: a missing or unreadable file, bad
    YAML, a value the schema refuses (at the file and line that set it).
    """
    files: list[tuple[str, bytes]] = []
    problems: list[ConfigProblem] = []
    for path in paths:
        name = shown(path)
        try:
            files.append((name, read_file(path, "configuration file", Limit.CONFIG)))
        except InputError as exc:
            problems.append(ConfigProblem(name, 0, "", str(exc).removeprefix(f"{name}: ")))
    if problems:
        raise ConfigProblems(problems)
    return load(files, CONFIG_SCHEMA, check_settings)


def digest(value: object) -> str:
    """SHA-256 of the merged configuration in canonical JSON: comments and the way it is
    split over files do not change it, any value that matters does."""
    canonical = json.dumps(
        _plain_numbers(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _plain_numbers(value: object) -> object:
    """2.0 -> 2, so that ``2`` and ``2.0`` digest alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_numbers(v) for v in value]
    return value


def settings_of(doc: Document) -> Settings:
    """The Settings a validated Document describes, naming its files and digest."""
    sources = tuple(Path(s) for s in doc.sources)
    base = Settings(
        source=sources[0] if sources else None, sources=sources, digest=digest(doc.value or {})
    )
    value: dict[str, Any] = doc.value or {}  # type: ignore[assignment]
    return settings_from(value, base)


def parse_settings(text: str | bytes, source: Path | str = "<config>") -> Settings:
    """Parse one file's text; raise ConfigProblems naming source:line for each problem."""
    raw = text.encode() if isinstance(text, str) else text
    return settings_of(load([(str(source), raw)], CONFIG_SCHEMA, check_settings))


def load_settings(path: Path) -> Settings:
    """The configuration file ``path`` with its drop-ins (ConfigError on any problem)."""
    return settings_of(read_config(config_files(path)))
