"""YAML text -> JSON values, with the file and line that set each one.

``read_yaml`` composes the YAML into nodes (which carry line marks) and converts them to
the JSON data model that a JSON Schema describes: mappings with string keys, lists,
strings, finite numbers, booleans and null.  Anything else (a duplicate key, a non-string
key, ``.inf``, a timestamp, an explicit tag, an alias that expands without bound) is a
problem at its line, and every problem found is collected.

``merge`` lays one document over another (drop-in files): mappings are merged key by
key, anything else (lists included) is replaced, and the marks follow the values, so an
error names the file and line that set the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import yaml

from xenkdump.errors import ConfigError

# A value's place in the document: mapping keys and list indexes from the root.
KeyPath = tuple[str | int, ...]

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"

# A configuration has tens of values; a host description a few hundred.  Far more
# means aliases expanding into each other (a "billion laughs" document).
MAX_VALUES = 10_000
MAX_DEPTH = 32


@dataclass(frozen=True)
class ConfigProblem:
    source: str  # the file (or "<config>")
    line: int  # 1-based; 0 when the problem has no position
    key: str  # dotted path ("cpus.notes[0].size"), "" for the document itself
    message: str  # "expected ..., found ..."

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigProblems(ConfigError):
    """An invalid configuration: one line naming each problem with file:line."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(_printable(str(p)) for p in problems))


def _printable(text: str) -> str:
    """``text`` on one line: a control character a file put in a key or value is escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def dotted(path: KeyPath) -> str:
    """``("cpus", "notes", 0, "size")`` -> ``cpus.notes[0].size``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass(frozen=True)
class Mark:
    """Where a value (or the key naming it) was written, and what was written there."""

    source: str
    line: int
    found: str  # in a user's words: "integer '5'", "a list", "null"


@dataclass
class Document:
    """JSON values plus, for every path, the mark of the value and of its key."""

    value: object
    marks: dict[KeyPath, Mark] = field(default_factory=dict)
    key_marks: dict[KeyPath, Mark] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def mark(self, path: KeyPath) -> Mark:
        """The mark of ``path``, or of its nearest ancestor written in a file."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.marks:
                return self.marks[path[:n]]
        return Mark(self.sources[-1] if self.sources else "<config>", 0, "nothing")


class Foreign:
    """A YAML value JSON has no type for (a timestamp, a tagged node): fails every type."""

    def __init__(self, found: str) -> None:
        self.found = found

    def __repr__(self) -> str:
        return self.found


def describe(node: yaml.Node) -> str:
    """What was found at ``node``, in the words a user would use."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping" if node.value else "an empty mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list" if node.value else "an empty list"
    tag = str(node.tag)
    if tag == NULL:
        return "null"
    kind = {STR: "string", INT: "integer", FLOAT: "number", BOOL: "boolean"}.get(
        tag, tag.rsplit(":", 1)[-1]
    )
    return f"{kind} {node.value!r}"


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.doc = Document(None, sources=(source,))
        self.problems: list[ConfigProblem] = []
        self.count = 0
        self._constructor = yaml.SafeLoader("")

    def problem(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        self.problems.append(ConfigProblem(self.source, _line(node), dotted(path), message))

    def convert(self, node: yaml.Node, path: KeyPath, depth: int = 0) -> object:
        self.count += 1
        if self.count > MAX_VALUES or depth > MAX_DEPTH:
            raise _TooBigError(node)
        self.doc.marks[path] = Mark(self.source, _line(node), describe(node))
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(n, (*path, i), depth + 1) for i, n in enumerate(node.value)]
        return self.scalar(node, path)

    def mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict[str, object]:
        out: dict[str, object] = {}
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != STR:
                self.problem(key_node, path, f"expected a key name, found {describe(key_node)}")
                continue
            name = str(key_node.value)
            if name in first:
                self.problem(
                    key_node, (*path, name), f"duplicate key (first on line {first[name]})"
                )
                continue
            first[name] = _line(key_node)
            self.doc.key_marks[(*path, name)] = Mark(self.source, _line(key_node), repr(name))
            out[name] = self.convert(value_node, (*path, name), depth + 1)
        return out

    def scalar(self, node: yaml.Node, path: KeyPath) -> object:
        tag = str(node.tag)
        if tag == STR:
            return str(node.value)
        if tag not in (INT, FLOAT, BOOL, NULL):
            return Foreign(describe(node))
        try:
            value = self._constructor.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError):
            self.problem(node, path, f"invalid YAML: cannot read {describe(node)}")
            return Foreign(describe(node))
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(node, path, f"expected a finite number, found {node.value}")
            return Foreign(describe(node))
        return value


class _TooBigError(Exception):
    def __init__(self, node: yaml.Node) -> None:
        super().__init__()
        self.node = node


def read_yaml(raw: bytes, source: str) -> Document:
    """Parse YAML bytes into a Document; ConfigProblems with every problem found."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = ConfigProblem(source, 0, "", f"expected UTF-8 text: {exc.reason}")
        raise ConfigProblems([problem]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 0
        what = exc.problem or exc.context or "syntax error"
        raise ConfigProblems([ConfigProblem(source, line, "", f"invalid YAML: {what}")]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, C0)
        what = f"invalid YAML: character {exc.character!r} at offset {exc.position}: {exc.reason}"
        raise ConfigProblems([ConfigProblem(source, 0, "", what)]) from None
    except yaml.YAMLError as exc:
        what = " ".join(str(exc).split())  # one line, whatever the exception printed
        raise ConfigProblems([ConfigProblem(source, 0, "", f"invalid YAML: {what}")]) from None
    except RecursionError:
        message = f"invalid YAML: nested more than {MAX_DEPTH} levels deep"
        raise ConfigProblems([ConfigProblem(source, 0, "", message)]) from None
    reader = _Reader(source)
    if root is None:
        return reader.doc  # an empty file
    try:
        reader.doc.value = reader.convert(root, ())
    except _TooBigError as exc:
        message = (
            f"expected at most {MAX_VALUES} values nested at most {MAX_DEPTH} deep, found "
            "more (aliases that expand into each other?)"
        )
        reader.problems = [ConfigProblem(source, _line(exc.node), "", message)]
    if reader.problems:
        raise ConfigProblems(reader.problems)
    return reader.doc


def merge(base: Document, over: Document) -> Document:
    """``over`` laid on ``base``: mappings merged key by key, anything else replaced."""
    out = Document(
        base.value,
        dict(base.marks),
        dict(base.key_marks),
        (*base.sources, *(s for s in over.sources if s not in base.sources)),
    )
    if over.value is None and not over.marks:
        return out  # an empty drop-in changes nothing
    out.value = _merge_at(out, over, (), base.value, over.value)
    return out


def _merge_at(out: Document, over: Document, path: KeyPath, old: object, new: object) -> object:
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(old)
        if path in over.marks:
            out.marks[path] = over.marks[path]
        for name, value in new.items():
            child = (*path, name)
            merged[name] = _merge_at(out, over, child, old.get(name), value)
            out.key_marks[child] = over.key_marks[child]
        return merged
    for stale in [p for p in (*out.marks, *out.key_marks) if p[: len(path)] == path]:
        if len(stale) > len(path):
            out.marks.pop(stale, None)
            out.key_marks.pop(stale, None)
    for p, m in over.marks.items():
        if p[: len(path)] == path:
            out.marks[p] = m
    for p, m in over.key_marks.items():
        if p[: len(path)] == path and len(p) > len(path):
            out.key_marks[p] = m
    return new


def walk(value: object, path: KeyPath = ()) -> Iterator[tuple[KeyPath, object]]:
    """Every (path, value) in a JSON value, parents first."""
    yield path, value
    if isinstance(value, dict):
        for name, child in value.items():
            yield from walk(child, (*path, name))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from walk(child, (*path, i))
