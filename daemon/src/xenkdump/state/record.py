"""The durable load record: what xenkdump armed in Xen and where, because Xen cannot say.

Xen's ``KEXEC_CMD_kexec_status`` answers the parity of load/unload calls, not
whether a crash image is loaded, and nothing tells which kernel, command line
or half of the crash area an armed image uses (docs/xen-kexec-contract.md §4.1).  A
reload into "the other half" is only safe while this record is right, so it
is kept crash-safe (docs/record-safety.md):

* **before** each load or unload hypercall, the record is rewritten (atomically,
  fsync'd, ``safefile.atomic_write``) with a ``pending`` entry: the operation,
  the image and half about to be loaded, and Xen's parity just before;
* **after** the hypercall it is rewritten with the result and no ``pending``;
* if the first write fails, the hypercall is not issued (``RecordWriteError``);
* after a crash in between, Xen's parity tells whether the pending operation
  happened (every load and every unload flips it): ``resolve``.

Whenever the record cannot be trusted -- missing, unreadable, written by another
boot, disagreeing with Xen's parity (another tool such as kexec-tools loaded or
unloaded), or a pending operation on a Xen that cannot report parity -- the
location of whatever Xen holds is **unknown** (``Knowledge.known`` False): the
next load unloads first (an explicit window) instead of guessing a free half.

File format (``state.json``)::

    {"format": 2,
     "generation": int,          # number of successful loads recorded here
     "loads_issued": int,        # successful KEXEC_CMD_kexec_load calls (crash type)
     "unloads_issued": int,      # successful KEXEC_CMD_kexec_unload calls (crash type)
     "parity": 0 | 1 | null,     # Xen's status answer once this was true (null: cannot say)
     "written_at": float,        # seconds since the epoch
     "armed": null | {LoadRecord fields},
     "pending": null | {"op": "load" | "unload", "parity_before": 0 | 1 | null,
                        "image": null | {LoadRecord fields}, "started_at": float}}

Format 1 files (no parity, no pending) are read with parity = (loads + unloads) % 2.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from xenkdump.errors import InputError, OperationError
from xenkdump.safefile import Limit, atomic_write, is_text, read_file_if_exists, shown
from xenkdump.status import HALVES

log = logging.getLogger(__name__)

# /run is emptied at boot, so a record there can never describe a previous boot's
# Xen (whose load/unload parity restarts at 0; docs/xen-kexec-contract.md §4.1).
DEFAULT_STATE_DIR = Path("/run/xenkdump")
STATE_DIR_ENV = "XENKDUMP_STATE_DIR"
STATE_FILE = "state.json"
FORMAT = 2
FORMATS = (1, 2)

OPS = ("load", "unload")


class RecordError(OperationError):
    """The state record cannot be read (corrupt, not a regular file, too large...)."""


class RecordWriteError(OperationError):
    """The state record cannot be written: the hypercall it would guard is not issued."""


def default_state_dir() -> Path:
    """``$XENKDUMP_STATE_DIR`` if set, else /run/xenkdump."""
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env) if env else DEFAULT_STATE_DIR


def _count(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"field {name!r}: expected a count >= 0, got {value!r}")
    return value


def _parity(raw: Mapping[str, Any], name: str) -> int | None:
    value = raw.get(name)
    if value is not None and (isinstance(value, bool) or value not in (0, 1)):
        raise ValueError(f"field {name!r}: expected 0, 1 or null, got {value!r}")
    return value


def _time(raw: Mapping[str, Any], name: str) -> float:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"field {name!r}: expected a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LoadRecord:
    """One crash image as xenkdump loaded it (or is about to load it)."""

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
            isinstance(crash, list)
            and len(crash) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in crash)
        ):
            raise ValueError(f"field 'crash_range': expected [start, size], got {crash!r}")
        values["crash_range"] = (crash[0], crash[1])
        if values["half"] not in HALVES:
            raise ValueError(f"field 'half': expected one of {HALVES}, got {values['half']!r}")
        for name in ("generation", "entry", "loads_issued", "unloads_issued", "required_bytes"):
            _count(values, name)
        values["loaded_at"] = _time(values, "loaded_at")
        for name in ("kernel", "kernel_sha256", "initrd_sha256", "cmdline", "user_cmdline",
                     "image_sha256", "host_fingerprint", "reason"):  # fmt: skip
            if not isinstance(values[name], str) or not is_text(values[name]):
                raise ValueError(f"field {name!r}: expected a string, got {values[name]!r}")
        if values["initrd"] is not None and (
            not isinstance(values["initrd"], str) or not is_text(values["initrd"])
        ):
            raise ValueError(f"field 'initrd': expected a string or null, got {values['initrd']!r}")
        if not isinstance(values["unloaded_first"], bool):
            raise ValueError(
                f"field 'unloaded_first': expected a boolean, got {values['unloaded_first']!r}"
            )
        return cls(**values)


@dataclass(frozen=True)
class Pending:
    """A hypercall about to be issued: written before it, cleared after it."""

    op: str  # "load" | "unload"
    parity_before: int | None  # Xen's status answer just before (None: Xen cannot say)
    image: LoadRecord | None  # for "load": what is being loaded, and where
    started_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "parity_before": self.parity_before,
            "image": None if self.image is None else self.image.to_json(),
            "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, raw: object) -> Pending:
        if not isinstance(raw, dict):
            raise ValueError(f"expected an object or null, got {raw!r}")
        op = raw.get("op")
        if op not in OPS:
            raise ValueError(f"field 'op': expected one of {OPS}, got {op!r}")
        image_raw = raw.get("image")
        if op == "load" and not isinstance(image_raw, dict):
            raise ValueError(f"field 'image': expected an object for a load, got {image_raw!r}")
        if op == "unload" and image_raw is not None:
            raise ValueError(f"field 'image': expected null for an unload, got {image_raw!r}")
        try:
            image = None if image_raw is None else LoadRecord.from_json(image_raw)
        except ValueError as exc:
            raise ValueError(f"image: {exc}") from None
        return cls(op, _parity(raw, "parity_before"), image, _time(raw, "started_at"))


@dataclass(frozen=True)
class StateFile:
    """The whole record: counters, Xen's parity, the armed image, an operation in flight."""

    generation: int = 0
    loads_issued: int = 0
    unloads_issued: int = 0
    armed: LoadRecord | None = None
    parity: int | None = None
    pending: Pending | None = None
    written_at: float = 0.0
    # Non-empty: Xen may hold an image at a place nobody recorded (why); armed is None.
    unknown: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "generation": self.generation,
            "loads_issued": self.loads_issued,
            "unloads_issued": self.unloads_issued,
            "parity": self.parity,
            "written_at": self.written_at,
            "armed": None if self.armed is None else self.armed.to_json(),
            "pending": None if self.pending is None else self.pending.to_json(),
            "unknown": self.unknown,
        }

    @classmethod
    def from_json(cls, raw: object) -> StateFile:
        """ValueError naming the field when ``raw`` is not a record."""
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        fmt = raw.get("format")
        if fmt not in FORMATS or isinstance(fmt, bool):
            raise ValueError(f"field 'format': expected one of {FORMATS}, got {fmt!r}")
        gen, loads, unloads = (
            _count(raw, n) for n in ("generation", "loads_issued", "unloads_issued")
        )
        armed_raw = raw.get("armed")
        armed = None
        if armed_raw is not None:
            if not isinstance(armed_raw, dict):
                raise ValueError(f"field 'armed': expected an object or null, got {armed_raw!r}")
            try:
                armed = LoadRecord.from_json(armed_raw)
            except ValueError as exc:
                raise ValueError(f"armed: {exc}") from None
        if fmt == 1:
            return cls(gen, loads, unloads, armed, parity=(loads + unloads) % 2)
        pending = None
        if raw.get("pending") is not None:
            try:
                pending = Pending.from_json(raw["pending"])
            except ValueError as exc:
                raise ValueError(f"pending: {exc}") from None
        unknown = raw.get("unknown", "")
        if not isinstance(unknown, str):
            raise ValueError(f"field 'unknown': expected a string, got {unknown!r}")
        if unknown and armed is not None:
            raise ValueError("field 'unknown': set while 'armed' names an image")
        return cls(
            armed=armed,
            unknown=unknown,
            parity=_parity(raw, "parity"),
            pending=pending,
            written_at=_time(raw, "written_at"),
            generation=gen,
            loads_issued=loads,
            unloads_issued=unloads,
        )

    def begin(self, op: str, parity: int | None, image: LoadRecord | None) -> StateFile:
        """This state with ``op`` pending (Xen's status answer now is ``parity``)."""
        return replace(self, pending=Pending(op, parity, image, time.time()))

    def after(self, op: str, image: LoadRecord | None, parity_before: int | None) -> StateFile:
        """The state once ``op`` succeeded (every load and unload flips Xen's parity)."""
        parity = None if parity_before is None else parity_before ^ 1
        if op == "load":
            assert image is not None
            return replace(
                self,
                generation=max(self.generation, image.generation),
                loads_issued=self.loads_issued + 1,
                armed=image,
                parity=parity,
                pending=None,
                unknown="",
            )
        return replace(
            self,
            unloads_issued=self.unloads_issued + 1,
            armed=None,
            parity=parity,
            pending=None,
            unknown="",
        )


@dataclass(frozen=True)
class Knowledge:
    """What xenkdump knows Xen holds now, and how that was established (``detail``).

    ``known`` False (``state.unknown`` says why): Xen may hold an image at a place
    nobody recorded; the next load must unload first.
    """

    state: StateFile
    detail: str = ""

    @property
    def known(self) -> bool:
        return not self.state.unknown

    @property
    def armed(self) -> LoadRecord | None:
        return self.state.armed


def unknown(detail: str, parity: int | None, base: StateFile | None = None) -> Knowledge:
    """Location unknown; counters continue from ``base`` when there is one."""
    state = base if base is not None else StateFile()
    return Knowledge(
        replace(state, armed=None, pending=None, parity=parity, unknown=detail), detail
    )


def resolve(
    state: StateFile | None,
    xen_parity: int | None,
    *,
    problem: str = "",
    boot_time: float = 0.0,
    crash_range: tuple[int, int] | None = None,
) -> Knowledge:
    """What is armed, from the record (None: missing or unreadable, ``problem`` says why)
    and Xen's status answer now (None: this Xen cannot say, before 4.9).  Pure."""
    if crash_range is not None and crash_range[1] == 0:
        # No crash area: Xen cannot hold a crash image anywhere (docs/xen-kexec-contract.md §2.5).
        base = state if state is not None and not state.pending else StateFile()
        return Knowledge(replace(base, armed=None, unknown="", parity=xen_parity))
    if state is None:
        return unknown(problem or "no record", xen_parity)
    if state.written_at and state.written_at < boot_time:
        return unknown("the record predates this boot", xen_parity)
    p = state.pending
    if p is not None:
        if xen_parity is None or p.parity_before is None:
            return unknown(
                f"an interrupted {p.op} may or may not have happened "
                "(this Xen does not report its load/unload parity)",
                xen_parity,
                state,
            )
        done = xen_parity != p.parity_before
        settled = replace(state, pending=None, parity=p.parity_before)
        if done:
            settled = settled.after(p.op, p.image, p.parity_before)
        what = (
            f"the interrupted {p.op}"
            + (f" of generation {p.image.generation}" if p.image is not None else "")
            + (" happened" if done else " did not happen")
            + " (Xen's load/unload parity says so)"
        )
        state, detail = settled, what
    else:
        detail = ""
        if xen_parity is not None and state.parity is not None and xen_parity != state.parity:
            return unknown(
                f"Xen's load/unload parity is {xen_parity}, the record expects {state.parity}: "
                "another tool loaded or unloaded a crash image",
                xen_parity,
                state,
            )
    if (
        state.armed is not None
        and crash_range is not None
        and state.armed.crash_range != crash_range
    ):
        start, size = state.armed.crash_range
        return unknown(
            f"the recorded crash area {start:#x}+{size:#x} differs from Xen's "
            f"{crash_range[0]:#x}+{crash_range[1]:#x}",
            xen_parity,
            state,
        )
    return Knowledge(replace(state, parity=xen_parity), detail or state.unknown)


def check_state_dir(state_dir: Path, *, create: bool = False) -> None:
    """InputError unless ``state_dir`` is a directory owned by the user xenkdump runs as
    (root) and writable by nobody else: whoever can write there can rewrite the record
    and so choose the half the next load overwrites.  ``create`` makes it (mode 0755,
    its parent must exist: nothing outside the state directory is ever created)."""
    name = shown(state_dir)
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:
        if not create:
            return  # nothing to read yet; the first write creates it
        try:
            os.mkdir(state_dir, 0o755)
            st = os.stat(state_dir)
        except OSError as exc:
            raise InputError(
                f"{name}: state_dir: cannot create the state directory: {exc.strerror or exc}"
            ) from None
    except OSError as exc:
        raise InputError(f"{name}: state_dir: cannot inspect: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{name}: state_dir: expected a directory, found another kind of file")
    uid = os.geteuid()
    if st.st_uid != uid or st.st_mode & 0o022:
        raise InputError(
            f"{name}: state_dir: expected a directory owned by uid {uid} and not writable by "
            f"group or others, found owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"
        )


class RecordStore:
    """Reads and writes ``<state_dir>/state.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE

    def read_state(self) -> StateFile | None:
        """The record, or None when there is none; RecordError naming the file when it is bad."""
        try:
            check_state_dir(self.state_dir)
        except InputError as exc:
            raise RecordError(f"{exc}; not trusting {shown(self.path)}") from None
        try:
            raw = read_file_if_exists(self.path, "state record", Limit.STATE, error=InputError)
        except InputError as exc:
            raise RecordError(str(exc)) from None
        if raw is None:
            return None
        try:
            return StateFile.from_json(json.loads(raw))
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
            raise RecordError(f"{shown(self.path)}: corrupt state record: {exc}") from None

    def read(self) -> LoadRecord | None:
        """The armed image as recorded (None: nothing armed, no record, or a bad one)."""
        try:
            state = self.read_state()
        except RecordError as exc:
            log.warning("%s", exc)
            return None
        return None if state is None else state.armed

    def write_state(self, state: StateFile) -> StateFile:
        """Write ``state`` (stamped with the time); RecordWriteError naming the file."""
        state = replace(state, written_at=time.time())
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        try:
            check_state_dir(self.state_dir, create=True)
        except InputError as exc:
            raise RecordWriteError(str(exc)) from None
        try:
            atomic_write(self.path, data)
        except OperationError as exc:
            raise RecordWriteError(str(exc)) from None
        return state


class Ledger:
    """The record store together with what we know Xen holds now (``knowledge``).

    The loader calls ``begin`` before each hypercall (the pending entry must be on disk,
    or the hypercall is not issued) and ``settle`` after it.  ``knowledge`` is always
    what is true in Xen, also when the last write after a hypercall failed: the record
    on disk then still shows the operation pending, which Xen's parity resolves at the
    next start (``resolve``).
    """

    def __init__(self, store: RecordStore, knowledge: Knowledge) -> None:
        self.store = store
        self.knowledge = knowledge
        self.unsaved = ""  # why the disk lags behind ``knowledge`` ("" when it does not)

    def begin(self, op: str, parity: int | None, image: LoadRecord | None) -> None:
        """Write ``op`` as pending; RecordWriteError (nothing may be issued) if that fails."""
        verb = "loading" if op == "load" else "unloading"
        try:
            self.store.write_state(self.knowledge.state.begin(op, parity, image))
        except RecordWriteError as exc:
            raise RecordWriteError(
                f"{exc}; not {verb}: without a record of what goes where, a later reload "
                "could overwrite the armed image"
            ) from None

    def settle(self, knowledge: Knowledge) -> None:
        """``knowledge`` is now true; write it (a failure is logged, not raised)."""
        self.knowledge = knowledge
        try:
            self.store.write_state(knowledge.state)
        except RecordWriteError as exc:
            self.unsaved = str(exc)
            log.error(
                "%s: the record still shows the last operation as pending; Xen's "
                "load/unload parity settles it at the next start",
                exc,
            )
        else:
            self.unsaved = ""
