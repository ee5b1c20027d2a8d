"""selftest.schedule: when xenkdumpd self-tests the armed image by itself.

The schedule is systemd's calendar syntax (systemd.time(7), as in a timer's
``OnCalendar=``: ``daily``, ``Sun 03:00``, ``*-*-01 04:30``), in the host's local
time unless it names a time zone, or ``off`` (the default).  systemd computes it:
``systemd-analyze calendar`` (package systemd, in Debian 12 and 13) validates an
expression and gives its next elapse after a base time (``--base-time=@SECONDS``),
so xenkdump never re-implements the syntax.  ``parse_calendar`` reads that output;
``decide`` says what to do at a moment (pure, unit-tested); xenkdumpd's loop
(daemon/core.py) does the waiting and the I/O.

At each elapse xenkdumpd starts a self-test of the armed image, unless one is
running or nothing is armed: then it logs why and waits for the next elapse.  An
elapse missed while xenkdumpd was not running or the clock jumped is not made up
(like a timer without ``Persistent=``): the next one counts from now.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from xenkdump.errors import InputError, OperationError

OFF: Final = "off"
# The wall clock is read again at least this often while waiting (it may be set).
RECHECK: Final = 60.0
_STAMP: Final = "%a %Y-%m-%d %H:%M:%S UTC"


@dataclass(frozen=True)
class Calendar:
    """systemd-analyze's answer for one expression."""

    normalized: str  # systemd's normalized form, e.g. "*-*-* 03:00:00"
    next_at: float | None  # seconds since the epoch; None: it never elapses again


def parse_calendar(output: str) -> Calendar:
    """``systemd-analyze calendar`` output (LC_ALL=C) -> Calendar.

    The next elapse is read from the ``(in UTC):`` line, or from ``Next elapse:``
    when that is already UTC (the line is left out then).
    """
    normalized = ""
    local = utc = ""
    for raw in output.splitlines():
        key, sep, value = raw.strip().partition(": ")
        if not sep:
            continue
        if key == "Normalized form":
            normalized = value.strip()
        elif key == "Next elapse" and not local:
            local = value.strip()
        elif key == "(in UTC)" and not utc:
            utc = value.strip()
    if not normalized or not local:
        raise OperationError(f"systemd-analyze calendar: unexpected output: {output.strip()!r}")
    if local == "never":
        return Calendar(normalized, None)
    stamp = utc or local
    try:
        when = datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC)
    except ValueError:
        raise OperationError(f"systemd-analyze calendar: unexpected time {stamp!r}") from None
    return Calendar(normalized, when.timestamp())


def _tool() -> str:
    found = shutil.which("systemd-analyze", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
    if found is None:
        raise OperationError("systemd-analyze not found (the Debian package systemd)")
    return found


def calendar(expression: str, after: float) -> Calendar:
    """The expression's normal form and next elapse strictly after ``after``.

    InputError (systemd's own reason) for an expression systemd refuses.
    """
    proc = subprocess.run(
        [_tool(), "calendar", f"--base-time=@{int(after)}", "--", expression],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""},
    )
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise InputError(why)
    return parse_calendar(proc.stdout)


def problem(expression: str, now: float) -> str | None:
    """Why ``expression`` is not a usable schedule (for the configuration check)."""
    if expression == OFF:
        return None
    try:
        calendar(expression, now)
    except InputError as exc:
        return f"expected a systemd calendar expression (systemd.time(7)) or 'off': {exc}"
    except OperationError as exc:
        return f"cannot check the calendar expression: {exc}"
    return None


@dataclass(frozen=True)
class Wait:
    seconds: float  # until the next look at the clock


@dataclass(frozen=True)
class Run:
    pass


@dataclass(frozen=True)
class Skip:
    reason: str


Decision = Wait | Run | Skip


def decide(now: float, next_at: float | None, *, running: str, armed: bool) -> Decision:
    """What to do at ``now`` with the next elapse at ``next_at`` (None: none)."""
    if next_at is None:
        return Wait(RECHECK)
    if now < next_at:
        return Wait(min(next_at - now, RECHECK))
    if running:
        return Skip(f"self-test {running} is still running")
    if not armed:
        return Skip("no crash image is armed")
    return Run()


def base_after(elapsed: float, now: float) -> float:
    """The base of the next elapse once ``elapsed`` was handled at ``now``: never the
    same elapse twice, and none made up for time the clock skipped."""
    return max(elapsed, now)
