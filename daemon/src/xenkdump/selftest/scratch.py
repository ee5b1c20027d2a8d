"""The staging VM's scratch disk: made an empty ext4 file system, read back after the run.

xenkdump's capture agent in self-test mode (docs/selftest.md §3) mounts it as its
target and leaves a dump directory there (``<host>-<UTC time>/`` with
``metadata.json``, ``vmcore``, ``dmesg.txt``); a crash initrd that carries only the
standalone hook (crashcheck.sh) writes ``/proc/vmcore`` over the raw disk instead.
The host reads either back without mounting anything: e2fsprogs' ``mke2fs`` makes
the file system (no journal: whatever the VM synced is in place) and ``debugfs``
lists and copies files out of the image.  ``verdict`` decides from what was read
(pure, unit-tested).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from xenkdump.errors import OperationError

ELF_MAGIC: Final = b"\x7fELF"
_DUMP_DIR: Final = re.compile(r"[^.].*-\d{8}T\d{6}Z")
_SBIN: Final = ":/usr/sbin:/sbin"
# What the host copies back out of the dump directory (the vmcore of a boot level
# run is the 64 KiB synthetic window; of a handoff run, makedumpfile's output).
WANTED: Final = ("metadata.json", "vmcore", "dmesg.txt")


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + _SBIN)
    if found is None:
        raise OperationError(f"{name} not found (install the Debian package e2fsprogs)")
    return found


def check_tools() -> None:
    """Refuse before a VM starts when the disk could be neither made nor read."""
    _tool("mke2fs")
    _tool("debugfs")


def make(path: Path, size: int) -> Path:
    """An empty ext4 file system without a journal in a sparse file of ``size`` bytes."""
    with path.open("wb") as f:
        f.truncate(size)
    proc = subprocess.run(
        [_tool("mke2fs"), "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "xk-scratch",
         "-m", "0", str(path)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if proc.returncode != 0:
        raise OperationError(f"mke2fs {path}: {proc.stderr.strip() or proc.returncode}")
    return path


def _debugfs(image: Path, request: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [_tool("debugfs"), "-R", request, str(image)],
        capture_output=True,
        check=False,
        timeout=300,
    )


def dump_dirs(listing: str) -> list[str]:
    """Dump directories in ``debugfs -R 'ls -p /'`` output (/ino/mode/uid/gid/name/size/)."""
    found = []
    for line in listing.splitlines():
        parts = line.split("/")
        if len(parts) >= 6 and parts[2].startswith("04") and _DUMP_DIR.fullmatch(parts[5]):
            found.append(parts[5])
    return sorted(found)


@dataclass(frozen=True)
class FileFacts:
    sha256: str
    has_token: bool


@dataclass
class ReadBack:
    """What the scratch disk held after the run."""

    raw: FileFacts | None = None  # the whole disk, when the standalone hook wrote a vmcore
    dump_dirs: list[str] = field(default_factory=list)
    files: dict[str, FileFacts] = field(default_factory=dict)  # of WANTED, those present
    metadata: dict[str, Any] | None = None
    metadata_error: str = ""


def _facts(path: Path, token: bytes) -> FileFacts:
    """sha256 and whether ``token`` occurs, read in chunks (a dump may be large)."""
    h = hashlib.sha256()
    found = False
    tail = b""
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            found = found or token in tail + chunk
            tail = chunk[-len(token) :]
    return FileFacts(h.hexdigest(), found)


def read_back(image: Path, dest: Path, token: bytes) -> ReadBack:
    """Read the scratch disk: a raw vmcore (an ELF core from its first byte, as the
    standalone hook writes it), or the agent's dump directory's files (copied to
    ``dest``)."""
    with image.open("rb") as f:
        head = f.read(len(ELF_MAGIC))
    if head == ELF_MAGIC:
        return ReadBack(raw=_facts(image, token))
    found = ReadBack()
    listing = _debugfs(image, "ls -p /")
    found.dump_dirs = dump_dirs(listing.stdout.decode(errors="replace"))
    if len(found.dump_dirs) != 1:
        return found
    top = found.dump_dirs[0]
    dest.mkdir(parents=True, exist_ok=True)
    for name in WANTED:
        out = dest / name
        _debugfs(image, f'dump "/{top}/{name}" "{out}"')
        if out.exists():
            found.files[name] = _facts(out, token)
    meta = dest / "metadata.json"
    if meta.exists():
        try:
            value = json.loads(meta.read_text())
            found.metadata = value if isinstance(value, dict) else None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            found.metadata_error = f"metadata.json is not JSON: {exc}"
    return found


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # why not, or what was found
    result: str = ""  # metadata.json's result (complete, failed), "" for a raw vmcore
    steps: tuple[Mapping[str, Any], ...] = ()  # metadata.json's steps


def _steps(meta: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    rows = meta.get("steps")
    return tuple(r for r in rows if isinstance(r, Mapping)) if isinstance(rows, list) else ()


def verdict(found: ReadBack, token: bytes) -> Verdict:
    """Whether the disk holds a dump with the token, whole as metadata.json describes it."""
    if found.raw is not None:
        if found.raw.has_token:
            return Verdict(True, "a raw vmcore with the token")
        return Verdict(False, "the scratch disk holds a raw vmcore without the token")
    if not found.dump_dirs:
        return Verdict(False, "the scratch disk holds neither a dump directory nor a raw vmcore")
    if len(found.dump_dirs) > 1:
        return Verdict(False, f"the scratch disk holds {len(found.dump_dirs)} dump directories")
    top = found.dump_dirs[0]
    meta = found.metadata
    if meta is None:
        return Verdict(False, found.metadata_error or f"{top} has no metadata.json")
    steps = _steps(meta)
    result = str(meta.get("result", ""))
    if result != "complete":
        return Verdict(False, f"{top}/metadata.json says result {result!r}", result, steps)
    if "vmcore" not in found.files:
        return Verdict(False, f"{top} has no vmcore", result, steps)
    listed = meta.get("files")
    for name, facts in found.files.items():
        want = listed.get(name) if isinstance(listed, Mapping) else None
        if name != "metadata.json" and (
            not isinstance(want, Mapping) or want.get("sha256") != facts.sha256
        ):
            return Verdict(
                False, f"{top}/{name} does not match its sha256 in metadata.json", result, steps
            )
    if not any(f.has_token for n, f in found.files.items() if n != "metadata.json"):
        return Verdict(False, f"{top} holds no dump with the token", result, steps)
    return Verdict(True, f"{top}: metadata.json result complete", result, steps)
