"""selftest.schedule (selftest/schedule.py): systemd-analyze's calendar read back, the
decision at each moment, and the configuration check with file:line errors."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from xenkdump.cli.cmd_status import render
from xenkdump.errors import ConfigError, InputError, OperationError
from xenkdump.selftest import schedule as sch
from xenkdump.settings.load import parse_settings
from xenkdump.status import Status

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze (package systemd) missing"
)


def at(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


UTC_OUTPUT = """\
  Original form: daily
Normalized form: *-*-* 00:00:00
    Next elapse: Fri 2026-12-04 00:00:00 UTC
       From now: 1 day 7h left
"""
LOCAL_OUTPUT = """\
  Original form: Mon 03:00
Normalized form: Mon *-*-* 03:00:00
    Next elapse: Mon 2026-12-07 03:00:00 CET
       (in UTC): Mon 2026-12-07 02:00:00 UTC
       From now: 4 days left
"""
NEVER_OUTPUT = """\
  Original form: 2020-01-01
Normalized form: 2020-01-01 00:00:00
    Next elapse: never
"""


def test_parse_calendar_reads_the_next_elapse_in_utc() -> None:
    assert sch.parse_calendar(UTC_OUTPUT) == sch.Calendar(
        "*-*-* 00:00:00", at("2026-12-04 00:00:00")
    )
    # Local time: the (in UTC) line gives the moment, not the local wall clock.
    assert sch.parse_calendar(LOCAL_OUTPUT) == sch.Calendar(
        "Mon *-*-* 03:00:00", at("2026-12-07 02:00:00")
    )
    assert sch.parse_calendar(NEVER_OUTPUT) == sch.Calendar("2020-01-01 00:00:00", None)
    with pytest.raises(OperationError, match="unexpected output"):
        sch.parse_calendar("Failed to parse calendar specification\n")


@needs_systemd_analyze
def test_calendar_asks_systemd_for_the_next_elapse_strictly_after_the_base(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    midnight = at("2026-12-03 00:00:00")
    assert sch.calendar("daily", midnight) == sch.Calendar(
        "*-*-* 00:00:00", at("2026-12-04 00:00:00")
    )
    assert sch.calendar("daily", midnight - 1).next_at == midnight
    assert sch.calendar("*:0/15", at("2026-12-03 10:07:00")).next_at == at("2026-12-03 10:15:00")
    # Local time unless the expression names a zone: 03:00 in Berlin is 02:00 UTC.
    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert sch.calendar("03:00", midnight).next_at == at("2026-12-03 02:00:00")
    assert sch.calendar("03:00 UTC", midnight).next_at == at("2026-12-03 03:00:00")
    assert sch.calendar("2020-01-01", midnight).next_at is None
    with pytest.raises(InputError, match="bogus 99"):
        sch.calendar("bogus 99", midnight)


@pytest.mark.parametrize(
    ("now", "next_at", "running", "armed", "decision"),
    [
        (100.0, None, "", True, sch.Wait(sch.RECHECK)),  # off, or never again
        (100.0, 130.0, "", True, sch.Wait(30.0)),
        (100.0, 100_000.0, "", True, sch.Wait(sch.RECHECK)),  # the clock is re-read
        (130.0, 130.0, "", True, sch.Run()),
        (500.0, 130.0, "", True, sch.Run()),  # late (a busy loop, a clock step): once
        (130.0, 130.0, "abc123", True, sch.Skip("self-test abc123 is still running")),
        (130.0, 130.0, "", False, sch.Skip("no crash image is armed")),
    ],
)
def test_decide(
    now: float, next_at: float | None, running: str, armed: bool, decision: sch.Decision
) -> None:
    assert sch.decide(now, next_at, running=running, armed=armed) == decision


def test_the_next_elapse_counts_from_the_one_handled_or_from_now() -> None:
    assert sch.base_after(130.0, 130.2) == 130.2  # never the same elapse twice
    assert sch.base_after(130.0, 129.9) == 130.0  # a timer that fired a little early
    assert sch.base_after(130.0, 90_000.0) == 90_000.0  # missed elapses are not made up


@needs_systemd_analyze
def test_config_schedule_is_checked_with_file_and_line() -> None:
    ok = parse_settings("selftest:\n  schedule: Sun 03:00\n", "/etc/x.yaml")
    assert ok.selftest.schedule == "Sun 03:00"
    assert parse_settings("selftest:\n  schedule: off\n").selftest.schedule == "off"  # false
    assert parse_settings("selftest:\n  schedule: 'off'\n").selftest.schedule == "off"
    assert parse_settings("selftest: {}\n").selftest.schedule == "off"
    with pytest.raises(ConfigError) as bad:
        parse_settings("selftest:\n  after_reload: true\n  schedule: bogus 99\n", "/etc/x.yaml")
    assert str(bad.value).startswith("/etc/x.yaml:3: selftest.schedule: expected a systemd ")
    assert "bogus 99" in str(bad.value) and "\n" not in str(bad.value)
    with pytest.raises(ConfigError, match=r"x.yaml:2: selftest.schedule: .*found true"):
        parse_settings("selftest:\n  schedule: on\n", "/etc/x.yaml")


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("utc")
def test_status_shows_the_next_scheduled_run() -> None:
    def status(schedule: str, next_at: float) -> Status:
        return Status(
            daemon_version="0.1.0",
            state="loaded",
            self_test_schedule=schedule,
            next_self_test=int(next_at * 1e6),
        )

    assert "Scheduled" not in render(status("off", 0))
    when = datetime(2030, 1, 6, 3, 0, tzinfo=UTC).timestamp()
    (row,) = [r for r in render(status("Sun 03:00", when)).splitlines() if "Scheduled:" in r]
    assert "Sun 03:00: next run 2030-01-06" in row and ", in " in row
    assert "never elapses again" in render(status("Sun 03:00", 0))
