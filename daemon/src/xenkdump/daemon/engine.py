"""The sans-I/O decision core of xenkdumpd: ``Engine.handle(event) -> list[Action]``.

No files, no hypercalls, no clock, no threads: the executor (executor.py) carries out
the actions and feeds their results back as events.  The same event sequence always
gives the same actions, which is what tests/daemon/test_engine.py drives.

What the engine keeps
    phase       STARTING until the first reconcile's load has a result, then RUNNING.
    armed       the image this daemon knows is armed in Xen (generation, whole area?),
                or None.  It comes from our durable record only when the record agrees
                with Xen's load/unload parity (docs/xen-kexec-contract.md §4.1: status is only
                the parity, so it can disprove a record but never prove an image).
    failure     why the newest load failed, while that failure stands.
    host_stale  the host's CPUs or memory map changed after the armed image was built.
    config_error  the last configuration re-read was rejected (the old settings stay).
    held        an unload was requested: change events do not re-arm until a Reload.
    unknown     why Xen may hold an image at a place nobody recorded ("" when known): the
                record was lost, unreadable or disagrees with Xen (another tool loaded).
                The executor's next load then unloads first (docs/record-safety.md).
    busy        one Load or Unload is outstanding; pending holds what arrived meanwhile.

The state is derived from those, never stored:

    phase STARTING                                  -> starting
    armed None,  unknown set                        -> degraded
    armed None,  failure None                       -> not-loaded
    armed None,  failure set                        -> failed
    armed set,   failure/host_stale/config_error/
                 armed.whole_area set               -> degraded
    armed set,   none of those                      -> loaded

Transitions (event -> effect; "Load(x)" is emitted only when not busy, else coalesced):

    Start(record ARMED)          armed := record; Load(IF_CHANGED) (adopt when identical)
    Start(record UNLOADED)       armed := None;   Load(FORCE) into the free half
    Start(record UNKNOWN)        unknown := why;  Load(FORCE): unload first, then load
    Changed(FILES|CONFIG)        Load(IF_CHANGED)                 (ignored while held)
    Changed(HOST)                host_stale := armed; Load(HOST)  (ignored while held)
    ConfigRejected(error)        config_error := error; no action
    ConfigAccepted               config_error := None; no action
    ReloadRequested(force, ...)  held := False; Load(FORCE or IF_CHANGED, overrides)
    UnloadRequested              held := True; Unload
    LoadDone(SKIPPED)            armed unchanged; failure, host_stale := None
    LoadDone(LOADED, info)       armed := info; failure, host_stale := None
    LoadFailed(error, armed?)    failure := error; armed kept unless the result says it is gone;
                                 unknown := the result's
    UnloadDone                   armed := None; failure := None
    UnloadFailed(error)          failure := error; armed unknown -> None

Invariants (asserted in the tests):
    I1  Unload is emitted only for UnloadRequested.  A reload is always one Load that the
        image builder places in the half the armed image does not use; never unload+load.
    I2  At most one Load/Unload is outstanding.  Events that arrive while busy are merged
        into one pending request (reasons joined, strongest scope kept) that is emitted
        when the result arrives.
    I3  A failed Load never forgets the armed image unless the result says it is gone.
    I4  Every Load carries its reason; every result emits exactly one Log.
    I5  No event is lost: every ticket (a caller waiting on a request) is carried by
        exactly one Load or Unload, or answered at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from xenkdump.status import State


class RecordCheck(enum.Enum):
    """What start-up found in our durable record, cross-checked with Xen's parity."""

    ARMED = "armed"  # record present, says armed, parity agrees, from this boot
    UNLOADED = "unloaded"  # record says nothing is armed, parity agrees
    # No trustworthy record: missing, unreadable, older than this boot, or disagreeing
    # with Xen's parity (another tool loaded or unloaded): where an image is, is unknown.
    UNKNOWN = "unknown"


class Change(enum.Enum):
    FILES = "files"  # kernel/initrd files (or what running/latest resolves to)
    CONFIG = "config"  # a configuration file that was accepted
    HOST = "host"  # Xen's physical CPUs or machine memory map


class Scope(enum.IntEnum):
    """How much a Load rebuilds; merging keeps the larger."""

    HOST = 1  # only the ELF core header is new; other segments reused from memory
    IF_CHANGED = 2  # re-read the inputs; skip when identical to the armed image
    FORCE = 3  # re-read and load even when identical


class LogKind(enum.Enum):
    LOADED = "loaded"
    LOAD_FAILED = "load-failed"
    UNLOAD_FAILED = "unload-failed"
    UNLOADED = "unloaded"
    INFO = "info"
    WARNING = "warning"


@dataclass(frozen=True)
class Overrides:
    """One-shot replacements for the configured inputs (D-Bus Reload options)."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class Armed:
    generation: int
    whole_area: bool = False  # no free half: the next reload must unload it first


# ---- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    record: RecordCheck
    armed: Armed | None = None  # set iff record is ARMED
    detail: str = ""


@dataclass(frozen=True)
class Changed:
    change: Change
    reason: str


@dataclass(frozen=True)
class ConfigRejected:
    error: str


@dataclass(frozen=True)
class ConfigAccepted:
    """A re-read configuration was accepted (the request that follows does the loading)."""


@dataclass(frozen=True)
class TargetChecked:
    """The dump target was checked (preflight): ``problem`` None when it is usable."""

    problem: str | None


@dataclass(frozen=True)
class ReloadRequested:
    reason: str
    force: bool = False
    overrides: Overrides | None = None
    ticket: int | None = None


@dataclass(frozen=True)
class UnloadRequested:
    reason: str
    ticket: int | None = None


class Outcome(enum.Enum):
    LOADED = "loaded"
    SKIPPED = "skipped"  # the armed image already is what would be built


@dataclass(frozen=True)
class LoadDone:
    outcome: Outcome
    armed: Armed
    summary: str = ""  # e.g. "vmlinuz-6.1.0 into the upper half"


@dataclass(frozen=True)
class LoadFailed:
    error: str
    armed_after: bool = True  # False: the record says the previous image is gone too
    unknown_after: str = ""  # why the location of an armed image is now unknown, if it is


@dataclass(frozen=True)
class UnloadDone:
    pass


@dataclass(frozen=True)
class UnloadFailed:
    error: str
    armed_after: bool = False  # True: the executor knows the image is still armed
    unknown_after: str = ""


Event = (
    Start
    | Changed
    | ConfigRejected
    | ConfigAccepted
    | TargetChecked
    | ReloadRequested
    | UnloadRequested
    | LoadDone
    | LoadFailed
    | UnloadDone
    | UnloadFailed
)

# ---- actions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    reason: str
    scope: Scope
    overrides: Overrides | None = None
    tickets: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Unload:
    reason: str
    tickets: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Log:
    kind: LogKind
    message: str


Action = Load | Unload | Log


@dataclass
class _Pending:
    """What arrived while busy; becomes one Load or one Unload (I2)."""

    reasons: list[str] = field(default_factory=list)
    scope: Scope | None = None
    overrides: Overrides | None = None
    tickets: set[int] = field(default_factory=set)
    unload: bool = False
    unload_tickets: set[int] = field(default_factory=set)

    def add_load(
        self, reason: str, scope: Scope, overrides: Overrides | None, ticket: int | None
    ) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)
        self.scope = scope if self.scope is None else max(self.scope, scope)
        # The latest request's inputs win: a later event without overrides means
        # "the configured inputs" again.
        self.overrides = overrides
        if ticket is not None:
            self.tickets.add(ticket)
        if self.unload:
            # A later load request supersedes a pending unload; its callers get the
            # load's result instead (I5).
            self.unload = False
            self.tickets |= self.unload_tickets
            self.unload_tickets = set()

    def take(self) -> Load | Unload | None:
        if self.unload:
            return Unload("; ".join(self.reasons) or "requested", frozenset(self.unload_tickets))
        if self.scope is None:
            return None
        return Load("; ".join(self.reasons), self.scope, self.overrides, frozenset(self.tickets))


class Engine:
    """The decision table.  Feed it events; carry out the actions it returns, in order."""

    def __init__(self) -> None:
        self.starting = True
        self.armed: Armed | None = None
        self.failure: str | None = None
        self.host_stale = False
        self.config_error: str | None = None
        self.target_problem: str | None = None  # the dump target's, from the last check
        self.held = False
        self.unknown = ""
        self.busy: Load | Unload | None = None
        self.last_error = ""
        self.last_reason = ""  # why the newest Load was issued
        self._pending = _Pending()

    # ---- derived state ----

    @property
    def state(self) -> State:
        if self.starting:
            return State.STARTING
        if self.armed is None:
            if self.unknown:
                return State.DEGRADED
            return State.FAILED if self.failure else State.NOT_LOADED
        if (
            self.failure
            or self.host_stale
            or self.config_error
            or self.armed.whole_area
            or self.target_problem
        ):
            return State.DEGRADED
        return State.LOADED

    @property
    def state_reason(self) -> str:
        state = self.state
        gen = f"generation {self.armed.generation}" if self.armed else ""
        if state is State.STARTING:
            return "starting: checking the armed image against our record"
        if state is State.FAILED:
            return f"no crash kernel armed: {self.failure}"
        if state is State.NOT_LOADED:
            return (
                "no crash kernel armed (unloaded on request)"
                if self.held
                else "no crash kernel armed"
            )
        if state is State.LOADED:
            return f"crash kernel armed ({gen})"
        why = []
        if self.unknown:
            why.append(
                f"a crash image may be armed at an unknown place in the crash area "
                f"({self.unknown}); the next load unloads it first"
            )
        if self.failure and self.armed is None:
            why.append(f"the newest load failed ({self.failure})")
        elif self.failure:
            why.append(f"the newest load failed ({self.failure}); {gen} stays armed")
        if self.host_stale:
            why.append(f"host CPUs or memory map changed since {gen} was built")
        if self.config_error:
            why.append(f"configuration rejected ({self.config_error}); previous settings stay")
        if self.target_problem:
            why.append(f"a crash would save no dump: {self.target_problem}")
        if self.armed is not None and self.armed.whole_area:
            why.append(
                f"{gen} uses the whole crash area (too small for two halves): "
                "the next reload must unload it first"
            )
        return "; ".join(why)

    @property
    def pending(self) -> bool:
        return self._pending.take() is not None

    # ---- the table ----

    def handle(self, event: Event) -> list[Action]:
        match event:
            case Start():
                return self._start(event)
            case Changed():
                return self._changed(event)
            case ConfigRejected(error=error):
                self.config_error = error
                self.last_error = f"configuration rejected: {error}"
                return [
                    Log(
                        LogKind.WARNING,
                        self.last_error + "; the loaded image and old settings stay",
                    )
                ]
            case ConfigAccepted():
                self.config_error = None
                return []
            case TargetChecked(problem=problem):
                old, self.target_problem = self.target_problem, problem
                if problem == old:
                    return []
                if problem is None:
                    return [Log(LogKind.INFO, f"dump target usable again (was: {old})")]
                return [Log(LogKind.WARNING, f"a crash would save no dump: {problem}")]
            case ReloadRequested():
                self.held = False
                scope = Scope.FORCE if event.force else Scope.IF_CHANGED
                return self._request_load(event.reason, scope, event.overrides, event.ticket)
            case UnloadRequested():
                return self._request_unload(event)
            case LoadDone():
                return self._load_done(event)
            case LoadFailed():
                return self._load_failed(event)
            case UnloadDone():
                return self._unload_done()
            case UnloadFailed():
                return self._unload_failed(event)
        raise TypeError(f"unknown event {event!r}")

    def _start(self, event: Start) -> list[Action]:
        if not self.starting or self.busy is not None:
            raise RuntimeError("Start is only valid once, before anything else")
        if event.record is RecordCheck.ARMED:
            assert event.armed is not None
            self.armed = event.armed
            return self._issue(Load("start: adopt the armed image or update it", Scope.IF_CHANGED))
        if event.record is RecordCheck.UNKNOWN:
            self.unknown = event.detail or "no trustworthy record"
            why = f"start: location of any armed image unknown ({self.unknown})"
            return [
                Log(LogKind.WARNING, why + "; unloading it, then loading"),
                *self._issue(Load(why, Scope.FORCE)),
            ]
        why = "start: record says nothing is armed"
        if event.detail:
            why += f" ({event.detail})"
        return [
            Log(LogKind.INFO, why + "; loading into the free half"),
            *self._issue(Load(why, Scope.FORCE)),
        ]

    def _changed(self, event: Changed) -> list[Action]:
        if event.change is Change.CONFIG:
            self.config_error = None
        if self.held:
            return [Log(LogKind.INFO, f"{event.reason}: ignored, unloaded on request")]
        if event.change is Change.HOST:
            self.host_stale = self.armed is not None
            return self._request_load(event.reason, Scope.HOST, None, None)
        return self._request_load(event.reason, Scope.IF_CHANGED, None, None)

    def _request_load(
        self, reason: str, scope: Scope, overrides: Overrides | None, ticket: int | None
    ) -> list[Action]:
        self._pending.add_load(reason, scope, overrides, ticket)
        return self._next() if self.busy is None else []

    def _request_unload(self, event: UnloadRequested) -> list[Action]:
        self.held = True
        p = self._pending
        # Waiting loads are dropped: the caller asked for nothing to be armed.  Their
        # callers still get an answer (I5) with the unload's result.
        p.unload_tickets |= p.tickets
        p.reasons, p.scope, p.overrides, p.tickets = [event.reason], None, None, set()
        p.unload = True
        if event.ticket is not None:
            p.unload_tickets.add(event.ticket)
        return self._next() if self.busy is None else []

    def _next(self) -> list[Action]:
        action = self._pending.take()
        self._pending = _Pending()
        return self._issue(action) if action is not None else []

    def _issue(self, action: Load | Unload) -> list[Action]:
        self.busy = action
        if isinstance(action, Load):
            self.last_reason = action.reason
        return [action]

    def _finish(self) -> Load | Unload:
        if self.busy is None:
            raise RuntimeError("a result arrived with nothing outstanding")
        done, self.busy = self.busy, None
        self.starting = False
        return done

    def _load_done(self, event: LoadDone) -> list[Action]:
        done = self._finish()
        self.failure = None
        self.host_stale = False
        self.armed = event.armed
        self.unknown = ""
        self.last_error = ""
        gen = event.armed.generation
        if event.outcome is Outcome.SKIPPED:
            text = f"generation {gen} already matches ({done.reason}); nothing to load"
            log = Log(LogKind.INFO, text)
            if isinstance(done, Load) and done.reason.startswith("start:"):
                log = Log(LogKind.LOADED, f"adopted generation {gen}, armed by an earlier run")
        else:
            text = f"loaded generation {gen}"
            if event.summary:
                text += f": {event.summary}"
            log = Log(LogKind.LOADED, f"{text} (reason: {done.reason})")
        return [log, *self._next()]

    def _load_failed(self, event: LoadFailed) -> list[Action]:
        done = self._finish()
        self.failure = event.error
        self.last_error = event.error
        if not event.armed_after:
            self.armed = None
        self.unknown = event.unknown_after
        self.host_stale = self.host_stale and self.armed is not None
        keeps = (
            f"generation {self.armed.generation} stays armed"
            if self.armed is not None
            else "where a crash kernel may be armed is unknown"
            if self.unknown
            else "no crash kernel is armed"
        )
        return [
            Log(LogKind.LOAD_FAILED, f"load failed ({done.reason}): {event.error}; {keeps}"),
            *self._next(),
        ]

    def _unload_done(self) -> list[Action]:
        self._finish()
        self.armed = None
        self.unknown = ""
        self.failure = None
        self.host_stale = False
        return [Log(LogKind.UNLOADED, "crash kernel unloaded on request"), *self._next()]

    def _unload_failed(self, event: UnloadFailed) -> list[Action]:
        self._finish()
        self.failure = event.error
        self.last_error = event.error
        # Xen refuses before its swap, so the image stays -- but claim nothing the
        # executor does not vouch for.
        if not event.armed_after:
            self.armed = None
        self.unknown = event.unknown_after
        return [Log(LogKind.UNLOAD_FAILED, f"unload failed: {event.error}"), *self._next()]
