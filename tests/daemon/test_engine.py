"""The daemon's decision table, driven by event sequences (pure: no files, no hypervisor)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenkdump.daemon.engine import (
    Action,
    Armed,
    Change,
    Changed,
    ConfigRejected,
    Engine,
    Event,
    Load,
    LoadDone,
    LoadFailed,
    Log,
    LogKind,
    Outcome,
    Overrides,
    RecordCheck,
    ReloadRequested,
    Scope,
    Start,
    TargetChecked,
    Unload,
    UnloadDone,
    UnloadFailed,
    UnloadRequested,
)
from xenkdump.status import State

GEN1 = Armed(1)
GEN2 = Armed(2)


def work(actions: Sequence[Action]) -> list[Load | Unload]:
    return [a for a in actions if isinstance(a, Load | Unload)]


def logs(actions: Sequence[Action]) -> list[Log]:
    return [a for a in actions if isinstance(a, Log)]


def state_of(e: Engine) -> State:
    # A function, so that mypy does not narrow ``e.state`` across events.
    return e.state


def started(record: RecordCheck = RecordCheck.ARMED, armed: Armed | None = GEN1) -> Engine:
    """An engine past start-up with generation 1 adopted."""
    e = Engine()
    e.handle(Start(record, armed if record is RecordCheck.ARMED else None))
    e.handle(LoadDone(Outcome.SKIPPED, GEN1))
    return e


def test_start_with_agreeing_record_adopts_without_loading() -> None:
    e = Engine()
    assert state_of(e) is State.STARTING
    [load] = work(e.handle(Start(RecordCheck.ARMED, GEN1)))
    assert isinstance(load, Load) and load.scope is Scope.IF_CHANGED
    assert state_of(e) is State.STARTING  # until the first reconcile has a result
    out = e.handle(LoadDone(Outcome.SKIPPED, GEN1))
    assert work(out) == []
    assert [log.kind for log in logs(out)] == [LogKind.LOADED]
    assert "adopted generation 1" in logs(out)[0].message
    assert state_of(e) is State.LOADED


@pytest.mark.parametrize("record", [RecordCheck.UNKNOWN, RecordCheck.UNLOADED])
def test_start_without_trustworthy_record_forces_a_load(record: RecordCheck) -> None:
    e = Engine()
    [load] = work(e.handle(Start(record, detail="parity 1, record 0")))
    assert isinstance(load, Load) and load.scope is Scope.FORCE
    assert e.armed is None
    e.handle(LoadDone(Outcome.LOADED, GEN2))
    assert state_of(e) is State.LOADED and e.armed == GEN2


def test_unknown_location_is_degraded_until_a_load_settles_it() -> None:
    e = Engine()
    out = e.handle(Start(RecordCheck.UNKNOWN, detail="no record"))
    assert "unknown (no record)" in logs(out)[0].message
    # The executor could not even unload (e.g. the record could not be written): still unknown.
    e.handle(LoadFailed("state.json: cannot write: EROFS", False, unknown_after="no record"))
    assert state_of(e) is State.DEGRADED
    assert "unknown place in the crash area (no record)" in e.state_reason
    assert "EROFS" in e.state_reason
    assert work(e.handle(ReloadRequested("retry")))
    # The unload happened, the load failed: nothing is armed, and that is known.
    e.handle(LoadFailed("EINVAL", armed_after=False))
    assert state_of(e) is State.FAILED and not e.unknown
    e.handle(ReloadRequested("retry"))
    e.handle(LoadDone(Outcome.LOADED, GEN2))
    assert state_of(e) is State.LOADED


def test_start_load_failure_without_record_is_failed() -> None:
    e = Engine()
    e.handle(Start(RecordCheck.UNLOADED))
    out = e.handle(LoadFailed("kernel /boot/vmlinuz-x: not found", armed_after=False))
    assert state_of(e) is State.FAILED
    assert "not found" in e.state_reason
    assert [log.kind for log in logs(out)] == [LogKind.LOAD_FAILED]


def test_start_update_failure_keeps_adopted_image_degraded() -> None:
    e = Engine()
    e.handle(Start(RecordCheck.ARMED, GEN1))
    e.handle(LoadFailed("ENOMEM"))
    assert state_of(e) is State.DEGRADED
    assert e.armed == GEN1
    assert "generation 1 stays armed" in e.state_reason


def test_file_change_reloads_and_failure_keeps_previous_image() -> None:
    e = started()
    [load] = work(e.handle(Changed(Change.FILES, "kernel file changed")))
    assert isinstance(load, Load) and load.reason == "kernel file changed"
    out = e.handle(LoadFailed("kexec_load failed: EINVAL"))
    assert work(out) == []  # I1: never an unload in answer to a failure
    assert state_of(e) is State.DEGRADED and e.armed == GEN1
    assert "EINVAL" in e.state_reason and e.last_error.endswith("EINVAL")
    # The next change that succeeds clears the degradation.
    e.handle(Changed(Change.FILES, "kernel file changed"))
    e.handle(LoadDone(Outcome.LOADED, GEN2))
    assert state_of(e) is State.LOADED and e.armed == GEN2 and e.last_error == ""


def test_failed_load_that_lost_the_image_is_failed() -> None:
    e = started()
    e.handle(Changed(Change.FILES, "x"))
    e.handle(LoadFailed("EBUSY", armed_after=False))
    assert state_of(e) is State.FAILED


def test_events_while_busy_are_coalesced_into_one_load() -> None:
    e = started()
    assert len(work(e.handle(Changed(Change.FILES, "kernel changed")))) == 1
    assert work(e.handle(Changed(Change.FILES, "initrd changed"))) == []
    assert work(e.handle(Changed(Change.HOST, "memory map changed"))) == []
    assert work(e.handle(Changed(Change.FILES, "initrd changed"))) == []
    [follow] = work(e.handle(LoadDone(Outcome.LOADED, GEN2)))
    assert isinstance(follow, Load)
    assert follow.reason == "initrd changed; memory map changed"
    assert follow.scope is Scope.IF_CHANGED  # the larger of HOST and IF_CHANGED
    assert work(e.handle(LoadDone(Outcome.LOADED, Armed(3)))) == []


def test_host_change_alone_rebuilds_only_the_core_header() -> None:
    e = started()
    [load] = work(e.handle(Changed(Change.HOST, "physical CPUs 4 -> 5")))
    assert isinstance(load, Load) and load.scope is Scope.HOST
    assert state_of(e) is State.DEGRADED  # the armed header no longer matches the host
    e.handle(LoadDone(Outcome.LOADED, GEN2))
    assert state_of(e) is State.LOADED


def test_host_change_failure_stays_degraded_with_both_reasons() -> None:
    e = started()
    e.handle(Changed(Change.HOST, "memory map changed"))
    e.handle(LoadFailed("ENOMEM"))
    assert state_of(e) is State.DEGRADED
    assert "ENOMEM" in e.state_reason
    assert "host CPUs or memory map changed since generation 1" in e.state_reason


def test_rejected_config_degrades_without_touching_the_image() -> None:
    e = started()
    out = e.handle(ConfigRejected("/etc/x.yaml:3: kernel: expected a string"))
    assert work(out) == []
    assert state_of(e) is State.DEGRADED and e.armed == GEN1
    assert "/etc/x.yaml:3" in e.state_reason
    # A good config afterwards clears it.
    [load] = work(e.handle(Changed(Change.CONFIG, "configuration changed")))
    assert isinstance(load, Load)
    e.handle(LoadDone(Outcome.SKIPPED, GEN1))
    assert state_of(e) is State.LOADED


def test_reload_request_tickets_and_force() -> None:
    e = started()
    [load] = work(e.handle(ReloadRequested("D-Bus Reload", force=True, ticket=7)))
    assert isinstance(load, Load) and load.scope is Scope.FORCE and load.tickets == {7}
    # Two more callers while busy share one follow-up load (I5: every ticket carried).
    e.handle(ReloadRequested("SIGHUP", ticket=8))
    e.handle(ReloadRequested("D-Bus Reload", overrides=Overrides(kernel="/k"), ticket=9))
    [follow] = work(e.handle(LoadDone(Outcome.LOADED, GEN2)))
    assert isinstance(follow, Load)
    assert follow.tickets == {8, 9}
    assert follow.overrides == Overrides(kernel="/k")


def test_unload_request_holds_until_reload() -> None:
    e = started()
    [unload] = work(e.handle(UnloadRequested("D-Bus Unload", ticket=1)))
    assert isinstance(unload, Unload) and unload.tickets == {1}
    out = e.handle(UnloadDone())
    assert [log.kind for log in logs(out)] == [LogKind.UNLOADED]
    assert state_of(e) is State.NOT_LOADED
    assert work(e.handle(Changed(Change.FILES, "kernel changed"))) == []
    assert work(e.handle(Changed(Change.HOST, "cpus"))) == []
    assert state_of(e) is State.NOT_LOADED
    [load] = work(e.handle(ReloadRequested("D-Bus Reload")))
    assert isinstance(load, Load)


def test_unload_while_busy_supersedes_pending_loads_and_answers_them() -> None:
    e = started()
    e.handle(Changed(Change.FILES, "kernel changed"))
    e.handle(ReloadRequested("D-Bus Reload", ticket=3))
    e.handle(UnloadRequested("D-Bus Unload", ticket=4))
    [follow] = work(e.handle(LoadDone(Outcome.LOADED, GEN2)))
    assert isinstance(follow, Unload) and follow.tickets == {3, 4}


def test_failed_unload_claims_nothing_is_armed() -> None:
    e = started()
    e.handle(UnloadRequested("x"))
    out = e.handle(UnloadFailed("EPERM"))
    assert state_of(e) is State.FAILED and "EPERM" in e.state_reason
    assert [log.kind for log in logs(out)] == [LogKind.UNLOAD_FAILED]


def test_whole_area_image_is_degraded() -> None:
    e = started()
    e.handle(Changed(Change.FILES, "kernel changed"))
    e.handle(LoadDone(Outcome.LOADED, Armed(2, whole_area=True)))
    assert state_of(e) is State.DEGRADED
    assert "too small for two halves" in e.state_reason


def test_failing_dump_target_degrades_names_it_and_loads_nothing() -> None:
    e = started()
    problem = "dump target /var/crash: 12.0 MiB free, a dump needs about 320.0 MiB"
    actions = e.handle(TargetChecked(problem))
    assert work(actions) == []  # the armed image stays; nothing is reloaded
    assert [(x.kind, x.message) for x in logs(actions)] == [
        (LogKind.WARNING, f"a crash would save no dump: {problem}")
    ]
    assert state_of(e) is State.DEGRADED and problem in e.state_reason
    assert logs(e.handle(TargetChecked(problem))) == []  # said once, not every check
    healed = logs(e.handle(TargetChecked(None)))
    assert healed[0].kind is LogKind.INFO and "usable again" in healed[0].message
    assert state_of(e) is State.LOADED


def test_result_without_outstanding_work_is_a_bug() -> None:
    e = started()
    with pytest.raises(RuntimeError):
        e.handle(LoadDone(Outcome.LOADED, GEN2))


# ---- invariants over random event sequences -------------------------------------------

_inputs = st.sampled_from(["files", "host", "config", "reject", "reload", "force", "unload"])
_results = st.sampled_from(["loaded", "skipped", "failed", "lost"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(RecordCheck)), st.lists(st.tuples(_inputs, _results), max_size=40))
def test_invariants_hold_for_any_sequence(
    record: RecordCheck, steps: list[tuple[str, str]]
) -> None:
    e = Engine()
    outstanding: list[Load | Unload] = []
    tickets_in: set[int] = set()
    tickets_out: set[int] = set()

    def feed(event: Event) -> None:
        out = e.handle(event)
        new = work(out)
        assert len(outstanding) + len(new) <= 1  # I2
        for a in new:
            if isinstance(a, Unload):
                assert isinstance(event, UnloadRequested) or e.held  # I1
            else:
                assert a.reason  # I4
            tickets_out.update(a.tickets)
        outstanding.extend(new)

    def finish(result: str) -> None:
        done = outstanding.pop()
        before = e.armed
        if isinstance(done, Unload):
            out = e.handle(UnloadDone() if result != "failed" else UnloadFailed("EPERM"))
        elif result == "loaded":
            out = e.handle(
                LoadDone(Outcome.LOADED, Armed((before.generation if before else 0) + 1))
            )
        elif result == "skipped" and before is not None:
            out = e.handle(LoadDone(Outcome.SKIPPED, before))
        else:
            out = e.handle(LoadFailed("ENOMEM", armed_after=result != "lost"))
            if result != "lost":
                assert e.armed == before  # I3
        assert len(logs(out)) == 1  # I4
        new = work(out)
        assert len(new) <= 1
        for a in new:
            tickets_out.update(a.tickets)
        outstanding.extend(new)

    feed(Start(record, GEN1 if record is RecordCheck.ARMED else None))
    for n, (what, result) in enumerate(steps):
        match what:
            case "files":
                feed(Changed(Change.FILES, "files"))
            case "host":
                feed(Changed(Change.HOST, "host"))
            case "config":
                feed(Changed(Change.CONFIG, "config"))
            case "reject":
                feed(ConfigRejected("bad"))
            case "reload" | "force":
                tickets_in.add(n)
                feed(ReloadRequested("req", force=what == "force", ticket=n))
            case "unload":
                tickets_in.add(n)
                feed(UnloadRequested("req", ticket=n))
        if outstanding and result != "skipped":
            finish(result)
        assert e.state in set(State)
        if e.armed is None and not e.starting:
            assert e.state in (State.NOT_LOADED, State.FAILED) or (
                e.state is State.DEGRADED and e.unknown
            )
    while outstanding:
        finish("loaded")
    assert tickets_in == tickets_out  # I5
    assert not e.pending
