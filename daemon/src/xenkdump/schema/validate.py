"""Check a Document against one of the project's JSON Schemas, reporting every problem.

The schemas are JSON files in this package (``*-v1.json``, JSON Schema draft 2020-12),
validated by Debian's ``python3-jsonschema``.  Each problem becomes one
``file:line: key: expected ..., found ...``: *expected* is the failing subschema's
``x-expected`` phrase (or words made from the failing keyword), *found* is what the file
says at that line.  ``x-expected`` is this project's own annotation keyword, ignored by
other JSON Schema tools.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from xenkdump.schema.document import (
    ConfigProblem,
    ConfigProblems,
    Document,
    KeyPath,
    dotted,
    merge,
    read_yaml,
)

if TYPE_CHECKING:
    from jsonschema import ValidationError

# Cross-field rules a schema cannot state (a memory map sorted, a range inside RAM):
# given the schema-valid value, yield (path, "expected ..., found ...") per problem.
Checks = Callable[[Any], Iterable[tuple[KeyPath, str]]]

TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``name`` (e.g. ``xenkdump-config-v1.json``) shipped in this package."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def keys(schema_name: str) -> list[str]:
    """Every key a schema allows, dotted (``cmdline.append``), parents first."""
    out: list[str] = []

    def walk(sub: dict[str, Any], prefix: str) -> None:
        for name, child in sub.get("properties", {}).items():
            out.append(prefix + name)
            walk(child, f"{prefix}{name}.")

    walk(schema(schema_name), "")
    return out


def load(
    files: Sequence[tuple[str, bytes]], schema_name: str, checks: Checks | None = None
) -> Document:
    """Read each (source, bytes), lay them over each other in order, validate the result.

    Returns the merged Document (its value ``{}`` for empty files).  Raises ConfigProblems
    with every problem of every file (syntax first; schema problems once all files parse).
    """
    docs: list[Document] = []
    problems: list[ConfigProblem] = []
    for source, raw in files:
        try:
            docs.append(read_yaml(raw, source))
        except ConfigProblems as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigProblems(problems)
    doc = functools.reduce(merge, docs[1:], docs[0]) if docs else Document(None)
    return validate(doc, schema_name, checks)


def validate(doc: Document, schema_name: str, checks: Checks | None = None) -> Document:
    """``doc`` if it satisfies the schema (and ``checks``); else ConfigProblems."""
    from jsonschema import Draft202012Validator  # noqa: PLC0415 (58 ms: only when validating)

    if doc.value is None and not doc.marks:
        doc.value = {}  # an empty file
    value = doc.value
    validator = Draft202012Validator(schema(schema_name))
    problems: list[ConfigProblem] = []
    for error in validator.iter_errors(value):
        problems.extend(_problems(doc, error))
    if not problems and checks is not None:
        for path, message in checks(value):
            mark = doc.mark(path)
            problems.append(ConfigProblem(mark.source, mark.line, dotted(path), message))
    if problems:
        raise ConfigProblems(_tidy(doc, problems))
    return doc


def _tidy(doc: Document, problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """One problem per place, in file order then line order."""
    seen: set[tuple[str, int, str]] = set()
    out = []
    for p in problems:
        if (p.source, p.line, p.key) not in seen:
            seen.add((p.source, p.line, p.key))
            out.append(p)
    order = {s: i for i, s in enumerate(doc.sources)}
    return sorted(out, key=lambda p: (order.get(p.source, -1), p.line, p.key))


def _problems(doc: Document, error: ValidationError) -> list[ConfigProblem]:
    path: KeyPath = tuple(error.absolute_path)
    sub: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = sub.get("properties", {})
        patterns = sub.get("patternProperties", {})
        out = []
        for name in instance:
            if name in known or any(re.search(p, name) for p in patterns):
                continue
            mark = doc.key_marks.get((*path, name)) or doc.mark(path)
            names = ", ".join(known) if known else "none"
            message = f"unknown key (expected one of: {names})"
            out.append(ConfigProblem(mark.source, mark.line, dotted((*path, name)), message))
        return out
    if error.validator == "required" and isinstance(instance, dict):
        mark = doc.mark(path)
        out = []
        for name in error.validator_value:
            if name not in instance:
                words = str(sub.get("x-expected", "")) or expected(
                    sub.get("properties", {}).get(name, {})
                )
                message = f"missing (expected {words})" if words else "missing"
                out.append(ConfigProblem(mark.source, mark.line, dotted((*path, name)), message))
        return out
    mark = doc.mark(path)
    found = doc.marks[path].found if path in doc.marks else json.dumps(instance, default=repr)
    words = expected(sub) or _keyword_words(str(error.validator), error.validator_value)
    return [ConfigProblem(mark.source, mark.line, dotted(path), f"expected {words}, found {found}")]


def expected(sub: dict[str, Any]) -> str:
    """A subschema's ``x-expected`` phrase, or its type in words ("" when it has neither)."""
    if "x-expected" in sub:
        return str(sub["x-expected"])
    if "type" in sub:
        return _keyword_words("type", sub["type"])
    return ""


def _keyword_words(keyword: str, value: Any) -> str:
    if keyword == "type":
        types = value if isinstance(value, list) else [value]
        return " or ".join(TYPE_WORDS.get(str(t), str(t)) for t in types)
    if keyword == "enum":
        return "one of " + ", ".join(json.dumps(v) for v in value)
    if keyword == "const":
        return json.dumps(value)
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if keyword in bounds:
        return f"a number {bounds[keyword]} {value}"
    if keyword == "minItems":
        return f"at least {value} item{'s' if value != 1 else ''}"
    if keyword == "maxItems":
        return f"at most {value} item{'s' if value != 1 else ''}"
    if keyword == "minLength":
        return "a non-empty string" if value == 1 else f"a string of at least {value} characters"
    if keyword == "pattern":
        return f"a string matching {value}"
    if keyword == "multipleOf":
        return f"a multiple of {value}"
    return f"a value satisfying {keyword}: {json.dumps(value)}"
