"""Load ``xenkdump.yaml`` into ``Settings``, reporting every problem as ``file:line: key: message``.

The YAML is composed into nodes (which carry line marks) and checked against one table
of keys, ``TOP_LEVEL`` (and ``CMDLINE`` for the ``cmdline:`` mapping).  Adding a key is
adding a row: its name, the expected type in words, and a converter from the node.
Unknown keys, wrong types and duplicate keys are all rejected; every problem found is
reported in one ``ConfigError`` (``.problems`` keeps them apart).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from xenkdump.errors import ConfigError
from xenkdump.safefile import Limit, read_file
from xenkdump.settings.model import CmdlineSettings, InitrdPolicy, KernelPolicy, Settings

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
NULL = "tag:yaml.org,2002:null"


@dataclass(frozen=True)
class ConfigProblem:
    line: int  # 1-based; 0 when the problem has no position
    key: str  # dotted path, "" for the document itself
    message: str


class ConfigProblems(ConfigError):
    """An invalid configuration file: one line naming each problem with file:line."""

    def __init__(self, path: Path | str, problems: list[ConfigProblem]) -> None:
        self.path = str(path)
        self.problems = problems
        parts = []
        for p in problems:
            where = f"{self.path}:{p.line}" if p.line else self.path
            parts.append(f"{where}: {p.key}: {p.message}" if p.key else f"{where}: {p.message}")
        super().__init__("; ".join(parts))


class _BadNodeError(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _describe(node: yaml.Node) -> str:
    """What was found, in the words a user would use."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = str(node.tag)
    kind = {
        STR: "string",
        INT: "integer",
        FLOAT: "number",
        NULL: "null",
        "tag:yaml.org,2002:bool": "boolean",
    }.get(tag, tag.rsplit(":", 1)[-1])
    return f"{kind} {node.value!r}" if kind != "null" else "null"


def _string(node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag != STR:
        raise _BadNodeError(node, f"expected a string, found {_describe(node)}")
    return str(node.value)


def _nonempty_string(node: yaml.Node) -> str:
    value = _string(node)
    if not value.strip():
        raise _BadNodeError(node, "expected a non-empty string, found an empty one")
    return value


def _path(node: yaml.Node) -> Path:
    value = _nonempty_string(node)
    if not value.startswith("/"):
        raise _BadNodeError(node, f"expected an absolute path, found {value!r}")
    return Path(value)


def _seconds(minimum: float, *, inclusive: bool) -> Callable[[yaml.Node], float]:
    def convert(node: yaml.Node) -> float:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (INT, FLOAT):
            raise _BadNodeError(node, f"expected a number of seconds, found {_describe(node)}")
        value = float(yaml.safe_load(node.value))
        ok = value >= minimum if inclusive else value > minimum
        if not ok or not math.isfinite(value):
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise _BadNodeError(node, f"expected a number of seconds {bound}, found {node.value}")
        return value

    return convert


def _string_list(node: yaml.Node) -> tuple[str, ...]:
    if isinstance(node, yaml.ScalarNode) and node.tag == NULL:
        return ()
    if not isinstance(node, yaml.SequenceNode):
        raise _BadNodeError(node, f"expected a list of strings, found {_describe(node)}")
    return tuple(_nonempty_string(item) for item in node.value)


# One row per key: (expected type in words, converter).  The converter returns the
# value for Settings' field of the same name, or raises _BadNodeError on the offending node.
Row = tuple[str, Callable[[yaml.Node], object]]

CMDLINE: Mapping[str, Row] = {
    "base": ("a string or null (null: dom0's own command line)", lambda n: _optional(n, _string)),
    "append": ("a list of strings", _string_list),
    "remove": ("a list of strings", _string_list),
}


def _optional(node: yaml.Node, convert: Callable[[yaml.Node], object]) -> object:
    if isinstance(node, yaml.ScalarNode) and node.tag == NULL:
        return None
    return convert(node)


def _kernel(node: yaml.Node) -> object:
    value = _nonempty_string(node)
    if value in (KernelPolicy.RUNNING, KernelPolicy.LATEST):
        return (KernelPolicy(value), None)
    if not value.startswith("/"):
        raise _BadNodeError(
            node, f"expected 'running', 'latest' or an absolute path, found {value!r}"
        )
    return (KernelPolicy.PATH, Path(value))


def _initrd(node: yaml.Node) -> object:
    if isinstance(node, yaml.ScalarNode) and node.tag == NULL:
        return (InitrdPolicy.NONE, None)
    value = _nonempty_string(node)
    if value in (InitrdPolicy.AUTO, InitrdPolicy.NONE):
        return (InitrdPolicy(value), None)
    if not value.startswith("/"):
        raise _BadNodeError(
            node, f"expected 'auto', 'none', null or an absolute path, found {value!r}"
        )
    return (InitrdPolicy.PATH, Path(value))


def _mapping(node: yaml.Node, rows: Mapping[str, Row], prefix: str) -> dict[str, object]:
    """Convert a mapping node by ``rows``; raise _ProblemsError with every problem in it."""
    if not isinstance(node, yaml.MappingNode):
        raise _ProblemsError(
            [ConfigProblem(_line(node), prefix, f"expected a mapping, found {_describe(node)}")]
        )
    problems: list[ConfigProblem] = []
    values: dict[str, object] = {}
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != STR:
            problems.append(
                ConfigProblem(
                    _line(key_node), prefix, f"expected a key name, found {_describe(key_node)}"
                )
            )
            continue
        name = str(key_node.value)
        dotted = f"{prefix}.{name}" if prefix else name
        if name in seen:
            problems.append(
                ConfigProblem(
                    _line(key_node), dotted, f"duplicate key (first on line {seen[name]})"
                )
            )
            continue
        seen[name] = _line(key_node)
        if name not in rows:
            known = ", ".join(sorted(rows))
            problems.append(
                ConfigProblem(_line(key_node), dotted, f"unknown key (expected one of: {known})")
            )
            continue
        _expected, convert = rows[name]
        try:
            values[name] = convert(value_node)
        except _BadNodeError as bad:
            problems.append(ConfigProblem(_line(bad.node), dotted, bad.message))
        except _ProblemsError as nested:
            problems.extend(nested.problems)
    if problems:
        raise _ProblemsError(problems)
    return values


class _ProblemsError(Exception):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__(problems)
        self.problems = problems


def _cmdline(node: yaml.Node) -> object:
    if isinstance(node, yaml.ScalarNode) and node.tag == NULL:
        return CmdlineSettings()
    values = _mapping(node, CMDLINE, "cmdline")
    return CmdlineSettings(**values)  # type: ignore[arg-type]


TOP_LEVEL: Mapping[str, Row] = {
    "kernel": ("'running', 'latest' or an absolute path", _kernel),
    "initrd": ("'auto', 'none', null or an absolute path", _initrd),
    "cmdline": ("a mapping with base, append, remove", _cmdline),
    "state_dir": ("an absolute path", _path),
    "boot_dir": ("an absolute path", _path),
    "topology_check_interval": ("a number of seconds > 0", _seconds(0.0, inclusive=False)),
    "reload_debounce": ("a number of seconds >= 0", _seconds(0.0, inclusive=True)),
}


def parse_settings(text: str | bytes, source: Path | str = "<config>") -> Settings:
    """Parse configuration text; raise ConfigProblems naming source:line for each problem."""
    raw = text.encode() if isinstance(text, str) else text
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigProblems(
            source, [ConfigProblem(0, "", f"expected UTF-8 text: {exc.reason}")]
        ) from None
    try:
        root = yaml.compose(decoded, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 0
        what = exc.problem or exc.context or "syntax error"
        raise ConfigProblems(source, [ConfigProblem(line, "", f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigProblems(source, [ConfigProblem(0, "", f"invalid YAML: {exc}")]) from None
    settings = Settings(source=Path(source), digest=hashlib.sha256(raw).hexdigest())
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == NULL):
        return settings  # an empty file: every default
    try:
        values = _mapping(root, TOP_LEVEL, "")
    except _ProblemsError as exc:
        raise ConfigProblems(source, exc.problems) from None
    fields: dict[str, object] = {}
    for name, value in values.items():
        if name == "kernel":
            fields["kernel"], fields["kernel_path"] = value  # type: ignore[misc]
        elif name == "initrd":
            fields["initrd"], fields["initrd_path"] = value  # type: ignore[misc]
        else:
            fields[name] = value
    return replace(settings, **fields)  # type: ignore[arg-type]


def load_settings(path: Path) -> Settings:
    """Read and parse the configuration file at ``path`` (ConfigError if unreadable)."""
    raw = read_file(path, "configuration file", Limit.CONFIG, error=ConfigError)
    return parse_settings(raw, path)
