"""The durable load record: what xenkdump itself armed in Xen, because Xen cannot say.

Xen's ``KEXEC_CMD_kexec_status`` answers the parity of load/unload calls, not
whether a crash image is loaded, and nothing tells which kernel, command line
or half of the crash area an armed image uses (docs/xen-kexec-contract.md §4.1).  So
every successful load or unload xenkdump issues is written down here, in one
small JSON file under the state directory (default ``/run/xenkdump``, which
is emptied at boot together with Xen's own state).

File format (``state.json``, written atomically: temp file, fsync, rename)::

    {"format": 1,
     "generation": int,          # number of successful loads ever recorded here
     "loads_issued": int,        # successful KEXEC_CMD_kexec_load calls (crash type)
     "unloads_issued": int,      # successful KEXEC_CMD_kexec_unload calls (crash type)
     "armed": null | {LoadRecord fields, see below}}

``loads_issued + unloads_issued`` has the parity Xen's status call returns,
which lets the daemon notice a load or unload done behind its back.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from xenkdump.errors import InputError
from xenkdump.safefile import Limit, atomic_write, read_file_if_exists
from xenkdump.status import HALVES

log = logging.getLogger(__name__)

# /run is emptied at boot, so a record there can never describe a previous boot's
# Xen (whose load/unload parity restarts at 0; docs/xen-kexec-contract.md §4.1).
DEFAULT_STATE_DIR = Path("/run/xenkdump")
STATE_DIR_ENV = "XENKDUMP_STATE_DIR"
STATE_FILE = "state.json"
FORMAT = 1


def default_state_dir() -> Path:
    """``$XENKDUMP_STATE_DIR`` if set, else /run/xenkdump."""
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env) if env else DEFAULT_STATE_DIR


@dataclass(frozen=True)
class LoadRecord:
    """One armed crash image as xenkdump loaded it."""

    generation: int
    kernel: str
    kernel_sha256: str
    initrd: str | None
    initrd_sha256: str
    cmdline: str  # the crash kernel's full command line, elfcorehdr= included
    # The command line as the inputs asked for it, before the builder added what follows
    # from placement and host (elfcorehdr=, acpi_rsdp=, the serial console): what a
    # "did anything change?" check compares.
    user_cmdline: str
    half: str  # "lower" | "upper" | "whole": the part of the crash area the image uses
    image_sha256: str
    segments: tuple[dict[str, Any], ...]  # kind, dest, memsz, sha256 of each segment
    entry: int
    crash_range: tuple[int, int]  # (start, size)
    host_fingerprint: str
    loaded_at: float  # seconds since the epoch
    reason: str
    # True when this load unloaded the armed image before loading (a window without a crash
    # kernel): one of the two did not fit in half of the crash area.  Whether the next
    # reload will have to do the same is ``half == "whole"``.
    unloaded_first: bool
    loads_issued: int
    unloads_issued: int
    required_bytes: int

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["segments"] = [dict(s) for s in self.segments]
        out["crash_range"] = list(self.crash_range)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LoadRecord:
        """Build from the JSON form; ValueError naming the field when it is wrong."""
        if "unloaded_first" not in raw and "fallback_unload" in raw:
            # Written before the field was renamed: it did not say whether an unload happened.
            raw = {**raw, "unloaded_first": False}
        names = {f.name for f in fields(cls)}
        missing = sorted(names - raw.keys())
        if missing:
            raise ValueError(f"field {missing[0]!r} missing")
        values: dict[str, Any] = {name: raw[name] for name in names}
        segments = values["segments"]
        if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
            raise ValueError(f"field 'segments': expected a list of objects, got {segments!r}")
        values["segments"] = tuple(segments)
        crash = values["crash_range"]
        if not (
            isinstance(crash, list) and len(crash) == 2 and all(isinstance(v, int) for v in crash)
        ):
            raise ValueError(f"field 'crash_range': expected [start, size], got {crash!r}")
        values["crash_range"] = (crash[0], crash[1])
        if values["half"] not in HALVES:
            raise ValueError(f"field 'half': expected one of {HALVES}, got {values['half']!r}")
        for name in ("generation", "entry", "loads_issued", "unloads_issued", "required_bytes"):
            if not isinstance(values[name], int) or isinstance(values[name], bool):
                raise ValueError(f"field {name!r}: expected an integer, got {values[name]!r}")
        if not isinstance(values["loaded_at"], int | float):
            raise ValueError(f"field 'loaded_at': expected a number, got {values['loaded_at']!r}")
        for name in ("kernel", "kernel_sha256", "initrd_sha256", "cmdline", "user_cmdline",
                     "image_sha256", "host_fingerprint", "reason"):  # fmt: skip
            if not isinstance(values[name], str):
                raise ValueError(f"field {name!r}: expected a string, got {values[name]!r}")
        if values["initrd"] is not None and not isinstance(values["initrd"], str):
            raise ValueError(f"field 'initrd': expected a string or null, got {values['initrd']!r}")
        if not isinstance(values["unloaded_first"], bool):
            raise ValueError(
                f"field 'unloaded_first': expected a boolean, got {values['unloaded_first']!r}"
            )
        return cls(**values)


@dataclass(frozen=True)
class StateFile:
    """The whole state file: the counters and the armed image (None: nothing armed)."""

    generation: int = 0
    loads_issued: int = 0
    unloads_issued: int = 0
    armed: LoadRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "generation": self.generation,
            "loads_issued": self.loads_issued,
            "unloads_issued": self.unloads_issued,
            "armed": None if self.armed is None else self.armed.to_json(),
        }

    @classmethod
    def from_json(cls, raw: object) -> StateFile:
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        if raw.get("format") != FORMAT:
            raise ValueError(f"field 'format': expected {FORMAT}, got {raw.get('format')!r}")
        counters: dict[str, int] = {}
        for name in ("generation", "loads_issued", "unloads_issued"):
            value = raw.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"field {name!r}: expected a count >= 0, got {value!r}")
            counters[name] = value
        armed_raw = raw.get("armed")
        armed = None
        if armed_raw is not None:
            if not isinstance(armed_raw, dict):
                raise ValueError(f"field 'armed': expected an object or null, got {armed_raw!r}")
            try:
                armed = LoadRecord.from_json(armed_raw)
            except ValueError as exc:
                raise ValueError(f"armed: {exc}") from None
        return cls(armed=armed, **counters)


class RecordStore:
    """Reads and writes ``<state_dir>/state.json``.

    A missing file means "nothing recorded".  A corrupt one is reported as a
    warning and treated the same way: the caller then assumes the state is
    unknown (and reloads), which is safe; refusing to start would not be.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE

    def read_state(self) -> StateFile:
        try:
            raw = read_file_if_exists(self.path, "state record", Limit.STATE)
            if raw is None:
                return StateFile()
            return StateFile.from_json(json.loads(raw))
        except (InputError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            log.warning("%s: ignoring a corrupt state file: %s", self.path, exc)
            return StateFile()

    def read(self) -> LoadRecord | None:
        """The armed image as recorded, or None (nothing armed, no file, corrupt file)."""
        return self.read_state().armed

    def write(self, rec: LoadRecord) -> None:
        """Record ``rec`` as the armed image; its counters become the file's counters."""
        self._write_state(
            StateFile(
                generation=rec.generation,
                loads_issued=rec.loads_issued,
                unloads_issued=rec.unloads_issued,
                armed=rec,
            )
        )

    def clear_armed(self, *, unloads: int = 1) -> StateFile:
        """Record that nothing is armed after ``unloads`` successful unload calls."""
        state = self.read_state()
        new = replace(state, armed=None, unloads_issued=state.unloads_issued + unloads)
        self._write_state(new)
        return new

    def _write_state(self, state: StateFile) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        atomic_write(self.path, data)
