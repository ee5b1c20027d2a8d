"""The dumps saved at a target: what ``xenkdumpctl dumps`` lists (docs/capture.md §5).

A dump is a directory ``<host>-<YYYYMMDDTHHMMSSZ>`` with a ``metadata.json`` written
by the capture agent; ``.incoming-<host>-<time>`` is one the agent did not finish (the
crash kernel died or the target filled up).  Reading is tolerant: a directory whose
metadata is missing or unreadable is listed with result ``unknown``.
"""

from __future__ import annotations

import calendar
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from xenkdump.capture.target import DumpTargetError
from xenkdump.errors import XenkdumpError
from xenkdump.safefile import Limit, read_file
from xenkdump.settings.model import DumpSettings, DumpTarget

NAME = re.compile(r"^(?P<incoming>\.incoming-)?(?P<host>.+)-(?P<time>\d{8}T\d{6}Z)$")


@dataclass(frozen=True)
class Dump:
    path: Path
    host: str
    crash_time: int  # seconds since the epoch (UTC), from the directory name
    result: str  # complete | failed | incomplete | unknown
    bytes: int  # all files of the directory
    vmcore_bytes: int
    how: str  # how the vmcore was saved ("makedumpfile -X -d 31 -c", ...)

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "host": self.host,
            "time": self.crash_time,
            "time_text": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.crash_time)),
            "result": self.result,
            "bytes": self.bytes,
            "vmcore_bytes": self.vmcore_bytes,
            "how": self.how,
        }


def _size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def read_dump(d: Path) -> Dump | None:
    """The dump in directory ``d``, or None when ``d`` is not named like one."""
    m = NAME.match(d.name)
    if m is None or not d.is_dir():
        return None
    stamp = calendar.timegm(time.strptime(m["time"], "%Y%m%dT%H%M%SZ"))
    result, how, vmcore = ("incomplete" if m["incoming"] else "unknown"), "", 0
    try:
        meta = json.loads(read_file(d / "metadata.json", "dump metadata", Limit.CONFIG))
        if not m["incoming"]:
            result = str(meta.get("result", "unknown"))
        how = str(meta.get("vmcore", {}).get("how", ""))
        files = meta.get("files", {})
        vmcore = int(files.get("vmcore", files.get("vmcore.flat", {})).get("bytes", 0))
    except (XenkdumpError, ValueError, AttributeError, TypeError):
        pass  # no or bad metadata: listed as it is
    return Dump(d, m["host"], stamp, result, _size(d), vmcore, how)


def list_dumps(target: Path) -> list[Dump]:
    """Every dump directory under ``target``, oldest first."""
    if not target.is_dir():
        return []
    found = [read_dump(d) for d in target.iterdir()]
    return sorted((x for x in found if x is not None), key=lambda x: (x.crash_time, x.host))


def dump_directory(dump: DumpSettings) -> Path:
    """Where the target's dumps are on dom0 now; DumpTargetError when they are not here."""
    if dump.target is DumpTarget.SSH:
        raise DumpTargetError(
            f"dump target {dump.describe_target()}: the dumps are on the SSH server "
            "(list them there)"
        )
    if dump.target is DumpTarget.LOCAL and not dump.device:
        return dump.path
    source = dump.device if dump.target is DumpTarget.LOCAL else dump.nfs
    out = subprocess.run(
        ["findmnt", "-n", "-o", "TARGET", "--source", source or ""],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if not out:
        raise DumpTargetError(
            f"dump target {dump.describe_target()}: not mounted on dom0 (mount {source} "
            "to list its dumps)"
        )
    return Path(out[0]) / str(dump.path).lstrip("/")
