"""Check a configuration offline, as ``xenkdumpctl check-config`` does: no daemon, no Xen.

The files are read, laid over each other and validated exactly as xenkdumpd reads them
(``settings.load``); then, unless asked not to, the files the configuration names are
checked: the kernel it resolves to now (``kernel: running|latest|PATH``) and an explicit
initrd must be readable files.  Every problem is a ``ConfigProblem`` with file:line.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xenkdump.daemon import kernels
from xenkdump.errors import ImageError
from xenkdump.safefile import Limit, check_readable, shown
from xenkdump.schema import ConfigProblem, ConfigProblems, Document, KeyPath
from xenkdump.settings.load import config_files, read_config, settings_of
from xenkdump.settings.model import InitrdPolicy, Settings


@dataclass
class ConfigReport:
    files: list[Path]
    problems: list[ConfigProblem] = field(default_factory=list)
    settings: Settings | None = None

    @property
    def valid(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, object]:
        return {
            "valid": self.valid,
            "files": [str(f) for f in self.files],
            "digest": self.settings.digest if self.settings is not None else "",
            "problems": [
                {"file": p.source, "line": p.line, "key": p.key, "message": p.message}
                for p in self.problems
            ],
        }


def expand(arguments: Sequence[Path]) -> list[Path]:
    """FILE arguments -> files in reading order: a file is followed by its own drop-ins
    (``FILE.d/*.yaml``); a directory stands for its ``*.yaml`` files in lexical order."""
    out: list[Path] = []
    for arg in arguments:
        if not arg.is_dir():
            out.extend(config_files(arg))
            continue
        try:
            names = sorted(n for n in os.listdir(arg) if n.endswith(".yaml"))
        except OSError as exc:
            message = f"cannot list the directory: {exc.strerror or exc}"
            raise ConfigProblems([ConfigProblem(str(arg), 0, "", message)]) from None
        out.extend(arg / n for n in names if not n.startswith("."))
    return out


def check_config(
    arguments: Sequence[Path], *, check_files: bool = True, release: str | None = None
) -> ConfigReport:
    """Every problem of the configuration made of ``arguments`` (see ``expand``)."""
    try:
        files = expand(arguments)
    except ConfigProblems as exc:
        return ConfigReport(list(arguments), exc.problems)
    report = ConfigReport(files)
    try:
        doc = read_config(files)
    except ConfigProblems as exc:
        report.problems = exc.problems
        return report
    report.settings = settings_of(doc)
    if check_files:
        report.problems = _named_files(doc, report.settings, release)
    return report


def _problem(doc: Document, path: KeyPath, message: str) -> ConfigProblem:
    mark = doc.mark(path)
    return ConfigProblem(mark.source, mark.line, ".".join(str(p) for p in path), message)


def _readable(path: Path, what: str, limit: Limit) -> str:
    """ "" if ``path`` is a readable regular file within ``limit``, else why not (never
    blocks on a FIFO: safefile opens without blocking)."""
    if not os.path.lexists(path):
        return os.strerror(errno.ENOENT)
    why = check_readable(path, what, limit)
    return why.split(": ", 1)[1] if why.startswith(f"{shown(path)}: ") else why


def _named_files(doc: Document, settings: Settings, release: str | None) -> list[ConfigProblem]:
    problems = []
    try:
        files = kernels.resolve(settings, release=release)
    except ImageError as exc:
        return [_problem(doc, ("kernel",), f"expected a kernel file to load, found none ({exc})")]
    why = _readable(files.kernel, "kernel", Limit.KERNEL)
    if why:
        problems.append(
            _problem(doc, ("kernel",), f"expected a readable kernel, found {files.kernel}: {why}")
        )
    if settings.initrd is InitrdPolicy.PATH and files.initrd is not None:
        why = _readable(files.initrd, "initrd", Limit.INITRD)
        if why:
            message = f"expected a readable initrd, found {files.initrd}: {why}"
            problems.append(_problem(doc, ("initrd",), message))
    return problems
