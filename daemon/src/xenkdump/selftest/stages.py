"""Self-test stages, read from the staging VM's serial console (sans-I/O).

A ``Tracker`` is fed the console text as it arrives and the time; it answers with
the stages reached, or one failure naming the stage that was not reached and why.
It never reads a file or a clock itself: ``job.py`` does that.

Two sources of evidence, both plain console lines:

* the kernels' and Xen's own messages (``Run /init as init process``, a panic,
  the OOM killer), which need no co-operation from the crash initrd;
* the crash-side hook's markers, ``xenkdump-selftest: <id> <stage> [key=value...]``
  and ``xenkdump-selftest: <id> failed <stage> <reason>`` (``crashcheck.sh``),
  printed only when ``xenkdump.selftest=<id>`` is on the crash command line.
  Markers with another id (an earlier run's output) are ignored.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

MARKER: Final = "xenkdump-selftest:"
ID_RE: Final = re.compile(r"[a-z0-9]{6,32}")


class Stage(enum.StrEnum):
    VM_START = "vm-start"
    XEN_UP = "xen-up"
    DOM0_UP = "dom0-up"
    IMAGE_LOADED = "image-loaded"
    PANIC = "panic"
    PURGATORY = "purgatory"
    CRASH_KERNEL_UP = "crash-kernel-up"
    CAPTURE_STARTED = "capture-started"
    TOKEN_FOUND = "token-found"
    DUMP_WRITTEN = "dump-written"
    DONE = "done"


class Level(enum.StrEnum):
    HANDOFF = "handoff"
    BOOT = "boot"


# The stages each level goes through, in order.
LEVEL_STAGES: Final[Mapping[Level, tuple[Stage, ...]]] = {
    Level.HANDOFF: tuple(Stage),
    Level.BOOT: (
        Stage.VM_START,
        Stage.CRASH_KERNEL_UP,
        Stage.CAPTURE_STARTED,
        Stage.TOKEN_FOUND,
        Stage.DUMP_WRITTEN,
        Stage.DONE,
    ),
}

# Seconds each stage may take after the previous one, under TCG (no KVM).
# KVM_FACTOR shortens them when the VM is accelerated.
STAGE_TIMEOUTS: Final[Mapping[Stage, float]] = {
    Stage.VM_START: 10.0,
    Stage.XEN_UP: 60.0,
    Stage.DOM0_UP: 120.0,
    Stage.IMAGE_LOADED: 120.0,
    Stage.PANIC: 30.0,
    Stage.PURGATORY: 30.0,
    Stage.CRASH_KERNEL_UP: 120.0,
    Stage.CAPTURE_STARTED: 60.0,
    Stage.TOKEN_FOUND: 240.0,
    Stage.DUMP_WRITTEN: 300.0,
    Stage.DONE: 30.0,
}
KVM_FACTOR: Final = 0.5

# Console lines that show a stage was reached, for stages the crash-side hook (or,
# at the handoff level, the staging dom0's /init) does not report itself.  Each is
# only looked for while its stage is the next one: dom0 and the crash kernel print
# the same kernel lines.
_EVIDENCE: Final[Sequence[tuple[Stage, re.Pattern[str]]]] = (
    (Stage.XEN_UP, re.compile(r"\(XEN\) Xen version \d+\.\d+")),
    (Stage.DOM0_UP, re.compile(r"Run /init as init process")),
    # dom0's own panic line (sysrq), then Xen's, printed as it jumps to the image's
    # entry, the purgatory (silent itself: docs/selftest.md §6).
    (Stage.PANIC, re.compile(r"Kernel panic - not syncing")),
    (Stage.PURGATORY, re.compile(r"\(XEN\) (.*: )?Executing kexec image on cpu")),
    (Stage.CRASH_KERNEL_UP, re.compile(r"Run /init as init process")),
)

# Before the crash image runs (handoff level), the kernel lines are dom0's and Xen's.
_XEN_PANIC: Final = re.compile(r"\(XEN\) Panic on CPU")
_XEN_NO_CRASH_AREA: Final = re.compile(r"\(XEN\) Kdump: DISABLED")
_DOM0_FATAL: Final[Sequence[tuple[re.Pattern[str], str]]] = (
    (re.compile(r"invoked oom-killer|Out of memory"), "dom0 ran out of memory ({line})"),
    (re.compile(r"Kernel panic - not syncing: .*"), "dom0 panicked before {stage} ({line})"),
)

# Console lines that end the run: (pattern, reason template; {line} is the match's line).
_FATAL: Final[Sequence[tuple[re.Pattern[str], str]]] = (
    (
        re.compile(r"Initramfs unpacking failed|invoked oom-killer|Out of memory"),
        "out of memory: the crash kernel and its initrd do not fit the crash area ({line})",
    ),
    (
        re.compile(r"Kernel panic - not syncing: System is deadlocked on memory"),
        "out of memory: the crash kernel and its initrd do not fit the crash area ({line})",
    ),
    (
        re.compile(r"Kernel panic - not syncing: Attempted to kill init"),
        "the crash initrd's init exited before the capture finished ({line})",
    ),
    (
        re.compile(r"Kernel panic - not syncing: VFS: Unable to mount root fs"),
        "the crash kernel found no root file system: the initrd was not usable ({line})",
    ),
    (re.compile(r"Kernel panic - not syncing: .*"), "the crash kernel panicked ({line})"),
)

_ANSI: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class Reached:
    stage: Stage
    at: float  # the tracker's clock (seconds)
    values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    stage: Stage  # the stage that was not reached
    reason: str  # one line
    at: float


Event = Reached | Failed


def clean_line(line: str) -> str:
    return _ANSI.sub("", line.replace("\r", "")).strip()


def marker_line(test_id: str, stage: Stage | str, **values: object) -> str:
    """A marker as the crash-side hook prints it (tests, and the dom0 side)."""
    extra = "".join(f" {k}={v}" for k, v in values.items())
    return f"{MARKER} {test_id} {stage}{extra}"


class Tracker:
    """The stages of one run, from console text and times given to it.

    ``hint`` is appended to the reason of a timeout at ``hint_stage`` (the planner's
    diagnosis, e.g. a command line without a serial console).
    """

    def __init__(
        self,
        test_id: str,
        level: Level,
        *,
        start: float,
        total_timeout: float,
        kvm: bool = False,
        hints: Mapping[Stage, str] | None = None,
        timeouts: Mapping[Stage, float] | None = None,
    ) -> None:
        self.test_id = test_id
        self.level = level
        self.stages = LEVEL_STAGES[level]
        self.reached: dict[Stage, Reached] = {}
        self.failed: Failed | None = None
        self.start = start
        self.deadline_total = start + total_timeout
        self.total_timeout = total_timeout
        self.factor = KVM_FACTOR if kvm else 1.0
        self.hints = dict(hints or {})
        # STAGE_TIMEOUTS with the planner's overrides (a bigger dump takes longer).
        self.timeouts = {**STAGE_TIMEOUTS, **(timeouts or {})}
        self._last_progress = start
        self._partial = ""
        self._xen_panic = False
        self.last_lines: list[str] = []
        self.values: dict[str, str] = {}

    # ---- queries ----

    @property
    def next_stage(self) -> Stage | None:
        for s in self.stages:
            if s not in self.reached:
                return s
        return None

    @property
    def finished(self) -> bool:
        return self.failed is not None or self.next_stage is None

    @property
    def passed(self) -> bool:
        return self.failed is None and self.next_stage is None

    def fraction(self) -> float:
        return len(self.reached) / len(self.stages)

    def stage_deadline(self) -> float:
        nxt = self.next_stage
        limit = self.timeouts[nxt] * self.factor if nxt is not None else 0.0
        return min(self._last_progress + limit, self.deadline_total)

    # ---- inputs ----

    def reach(self, stage: Stage, now: float, values: Mapping[str, str] | None = None) -> Event:
        """A stage the caller observed itself (vm-start: QEMU is running)."""
        return self._reach(stage, now, dict(values or {}))[0]

    def feed(self, text: str, now: float) -> list[Event]:
        """Console text (any chunking); returns the events it caused, in order."""
        if self.finished:
            return []
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        events: list[Event] = []
        for raw in lines:
            line = clean_line(raw)
            if not line:
                continue
            self.last_lines = [*self.last_lines[-7:], line]
            events.extend(self._line(line, now))
            if self.finished:
                break
        return events

    def tick(self, now: float) -> Failed | None:
        """A timeout failure once the next stage is overdue, else None."""
        if self.finished:
            return None
        nxt = self.next_stage
        assert nxt is not None
        if now < self.stage_deadline():
            return None
        if now >= self.deadline_total:
            why = f"the self-test's time limit of {self.total_timeout:.0f} s ran out"
        else:
            why = f"not reached within {self.timeouts[nxt] * self.factor:.0f} s"
        last = self.last_lines[-1] if self.last_lines else "nothing on the serial console"
        return self.fail(nxt, f"{why} (last output: {last})", now, hinted=True)

    def awaiting(self, stage: Stage) -> bool:
        """No failure, and ``stage`` is the next one (the host's own checks)."""
        return self.failed is None and self.next_stage is stage

    def fail(self, stage: Stage | None, reason: str, now: float, *, hinted: bool = False) -> Failed:
        """Record a failure (cancel, QEMU gone, a check after the run); first one wins.

        ``hinted``: the failure is a silence (timeout, VM gone), which the planner's
        hint for that stage may explain.
        """
        if self.failed is None:
            where = stage or self.next_stage or Stage.DONE
            if hinted and where in self.hints:
                reason = f"{self.hints[where]}; {reason}"
            self.failed = Failed(where, reason, now)
        return self.failed

    # ---- internals ----

    def _reach(self, stage: Stage, now: float, values: dict[str, str]) -> list[Event]:
        if stage in self.reached:
            self.values.update(values)  # e.g. the hook's figures after the kernel's line
            return []
        if stage not in self.stages or self.failed is not None:
            return []
        events: list[Event] = []
        # Evidence of a later stage implies the earlier ones (e.g. a hook marker when
        # the kernel's own messages were quiet).
        for s in self.stages[: self.stages.index(stage)]:
            if s not in self.reached:
                self.reached[s] = Reached(s, now)
                events.append(self.reached[s])
        self.reached[stage] = Reached(stage, now, values)
        self.values.update(values)
        self._last_progress = now
        events.append(self.reached[stage])
        return events

    def _crash_side(self) -> bool:
        """Whether the console now is the crash kernel's (always, at the boot level)."""
        return Stage.PURGATORY not in self.stages or Stage.PURGATORY in self.reached

    def _line(self, line: str, now: float) -> list[Event]:
        i = line.find(MARKER)
        if i >= 0:
            return self._marker(line[i + len(MARKER) :].split(), now)
        nxt = self.next_stage
        if not self._crash_side():
            if self._xen_panic:  # Xen's reason is the line after "Panic on CPU n:"
                why = line.removeprefix("(XEN)").strip() or "no reason given"
                return [self.fail(None, f"Xen panicked before {nxt}: {why}", now)]
            if _XEN_PANIC.search(line):
                self._xen_panic = True
                return []
            if _XEN_NO_CRASH_AREA.search(line):
                return [self.fail(None, f"Xen reserved no crash area ({line})", now)]
            events = self._evidence(line, now)  # dom0's panic line, when it is due
            if events:
                return events
            for pattern, template in _DOM0_FATAL:
                if pattern.search(line):
                    return [self.fail(None, template.format(line=line, stage=nxt), now)]
            return []
        for pattern, template in _FATAL:
            if pattern.search(line):
                return [self.fail(None, template.format(line=line), now)]
        return self._evidence(line, now)

    def _evidence(self, line: str, now: float) -> list[Event]:
        nxt = self.next_stage
        for stage, pattern in _EVIDENCE:
            if stage == nxt and pattern.search(line):
                return self._reach(stage, now, {})
        return []

    def _marker(self, words: list[str], now: float) -> list[Event]:
        if len(words) < 2 or words[0] != self.test_id:
            return []
        if words[1] == "failed" and len(words) >= 3:
            try:
                stage = Stage(words[2])
            except ValueError:
                stage = None
            reason = " ".join(words[3:]) or "the crash-side check failed"
            return [self.fail(stage, reason, now)]
        try:
            stage = Stage(words[1])
        except ValueError:
            return []
        values = dict(w.partition("=")[::2] for w in words[2:] if "=" in w)
        return self._reach(stage, now, values)
