"""Every design reference in the tree resolves inside the repository (docs/README.md).

A reference is ``<name>.md §N`` (``docs/`` prefix optional; a Markdown link's
closing parenthesis may sit between), and a list that follows it
(``§3.1, §3.2``, ``§3.5/§3.6``, ``§4.3 and §4.4``) cites the same document.  A
bare ``§N`` cites, inside docs/, the document it is in; elsewhere, the document
most recently cited before it in the same file.  Each must name a file in docs/
that has a heading numbered N.  Also rejected: references to documents outside
the repository (a ``*.md`` name no file in the tree has, the shared reference
folder) and to issue numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
SELF = Path(__file__).resolve()

# Directories that hold no sources of ours (caches, build output, environments).
SKIP_DIRS = frozenset(
    {".git", ".venv", "venv", "build", "dist", "__pycache__", "node_modules", ".hypothesis"}
)
SKIP_SUFFIXES = (".egg-info",)

SECTION = r"§(\d+(?:\.\d+)*)"
CITED = re.compile(
    r"(?:docs/)?([A-Za-z0-9_.-]+\.md)\)?[ \t]*" + SECTION
    + r"((?:[ \t]*(?:,|/|\band\b|\bor\b)[ \t]*" + SECTION + r")*)"
)  # fmt: skip
BARE = re.compile(SECTION)
HEADING = re.compile(r"^#{1,6}\s+" + SECTION + r"\b", re.MULTILINE)
MD_NAME = re.compile(r"(?<![\w./-])(?:[\w.-]+/)*([\w-]+\.md)\b")
ISSUE = re.compile(r"\bissues?\s*#?\s*\d+|(?<![\w/.-])#\d+\b", re.IGNORECASE)
SHARED = re.compile(r"(?:\.\./|/work/)shared\b|\bshared/docs\b")


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def _files() -> Iterator[Path]:
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO)
        if any(p in SKIP_DIRS or p.endswith(SKIP_SUFFIXES) for p in rel.parts[:-1]):
            continue
        if any(p.startswith(".") and p != ".ci" for p in rel.parts[:-1]):
            continue
        if path.is_file() and path.resolve() != SELF:
            yield path


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _sections() -> dict[str, set[str]]:
    return {p.name: set(HEADING.findall(p.read_text("utf-8"))) for p in DOCS.glob("*.md")}


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def scan(path: Path, text: str, sections: dict[str, set[str]], names: set[str]) -> list[Problem]:
    """Every unresolvable reference in one file."""
    rel = str(path.relative_to(REPO))
    in_docs = path.parent == DOCS
    problems: list[Problem] = []
    cites: list[tuple[int, int, str, list[str]]] = []  # (start, end, doc, sections)
    for m in CITED.finditer(text):
        cites.append((m.start(), m.end(), m.group(1), [m.group(2), *BARE.findall(m.group(3))]))

    def check(pos: int, doc: str, number: str) -> None:
        if doc not in sections:
            problems.append(Problem(rel, _line(text, pos), f"{doc} §{number}: no docs/{doc}"))
        elif number not in sections[doc]:
            problems.append(
                Problem(rel, _line(text, pos), f"{doc} §{number}: docs/{doc} has no §{number}")
            )

    for start, _end, doc, numbers in cites:
        for number in numbers:
            check(start, doc, number)
    covered = [(s, e) for s, e, _d, _n in cites]
    for m in BARE.finditer(text):
        if any(s <= m.start() < e for s, e in covered):
            continue
        if in_docs:
            doc = path.name
        else:
            before = [d for s, _e, d, _n in cites if s < m.start()]
            if not before:
                problems.append(
                    Problem(rel, _line(text, m.start()), f"§{m.group(1)} names no document")
                )
                continue
            doc = before[-1]
        check(m.start(), doc, m.group(1))

    for m in MD_NAME.finditer(text):
        if m.group(1) not in names:
            problems.append(
                Problem(rel, _line(text, m.start()), f"{m.group(0)}: no such document here")
            )
    for m in ISSUE.finditer(text):
        problems.append(Problem(rel, _line(text, m.start()), f"issue reference {m.group(0)!r}"))
    for m in SHARED.finditer(text):
        problems.append(
            Problem(rel, _line(text, m.start()), f"reference outside the repository {m.group(0)!r}")
        )
    return problems


def test_docs_have_numbered_sections() -> None:
    sections = _sections()
    assert "README.md" in sections, "docs/README.md (the index) is missing"
    unnumbered = [name for name, found in sections.items() if not found and name != "README.md"]
    assert not unnumbered, f"docs without numbered sections: {unnumbered}"


def test_the_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text("utf-8")
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md"
               and f"]({p.name})" not in index]  # fmt: skip
    assert not missing, f"docs/README.md does not link {missing}"


def test_every_reference_resolves_inside_the_repository() -> None:
    sections = _sections()
    files = list(_files())
    names = {p.name for p in files} | {SELF.name}
    problems: list[Problem] = []
    for path in files:
        text = _text(path)
        if text is not None:
            problems.extend(scan(path, text, sections, names))
    assert not problems, "unresolved references:\n" + "\n".join(map(str, problems))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see docs/a.md §1.2 and §9", ["a.md §9: docs/a.md has no §9"]),
        ("x (a.md §1.2, §1.2) then §3", ["a.md §3: docs/a.md has no §3"]),
        ("[a.md](a.md) §1.2/§2", ["a.md §2: docs/a.md has no §2"]),
        ("just §1.2 here", ["§1.2 names no document"]),
        ("old.md §1.8 D1", ["old.md §1.8: no docs/old.md", "old.md: no such document here"]),
        ("as issue 4 said; see #5", ["issue reference 'issue 4'", "issue reference '#5'"]),
        ("read ../shared/docs/x", ["reference outside the repository '../shared'"]),
        ("in shared/docs/y.md", ["shared/docs/y.md: no such document here",
                                 "reference outside the repository 'shared/docs'"]),
        ("upstream python-dbus-next#153; a.md §1.2, then §1", []),
    ],
)  # fmt: skip
def test_the_scanner_rejects_what_it_should(text: str, expected: list[str]) -> None:
    fake = REPO / "daemon" / "example.py"
    names = {"a.md"}
    got = [p.text for p in scan(fake, text, {"a.md": {"1", "1.2"}}, names)]
    assert got == expected
