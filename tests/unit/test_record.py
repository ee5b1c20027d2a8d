"""record.resolve: what is armed, from the record and Xen's load/unload parity (pure)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_loader import a_record

from xenkdump.state.record import RecordError, RecordStore, RecordWriteError, StateFile, resolve

A = a_record(generation=1, half="lower")
B = a_record(generation=2, half="upper")
ARMED_A = StateFile(1, 1, 0, armed=A, parity=1, written_at=100.0)


def test_agreeing_record_is_known() -> None:
    k = resolve(ARMED_A, 1)
    assert k.known and k.armed == A


@pytest.mark.parametrize(("parity", "armed"), [(0, B), (1, A)])
def test_interrupted_load_is_settled_by_parity(parity: int, armed: object) -> None:
    k = resolve(ARMED_A.begin("load", 1, B), parity)
    assert k.known and k.armed == armed and k.state.pending is None
    assert ("happened" if armed is B else "did not happen") in k.detail
    assert k.state.parity == parity


@pytest.mark.parametrize(("parity", "armed"), [(0, None), (1, A)])
def test_interrupted_unload_is_settled_by_parity(parity: int, armed: object) -> None:
    k = resolve(ARMED_A.begin("unload", 1, None), parity)
    assert k.known and k.armed == armed


def test_interrupted_unload_of_an_unknown_image_stays_unknown_unless_it_happened() -> None:
    lost = StateFile(parity=1, unknown="no record")
    assert not resolve(lost.begin("unload", 1, None), 1).known
    done = resolve(lost.begin("unload", 1, None), 0)
    assert done.known and done.armed is None


@pytest.mark.parametrize(
    ("state", "parity", "why"),
    [
        (None, 0, "no record"),
        (ARMED_A, 0, "another tool loaded or unloaded"),
        (ARMED_A.begin("load", None, B), None, "does not report its load/unload parity"),
        (ARMED_A.begin("load", 1, B), None, "does not report its load/unload parity"),
    ],
)
def test_untrustworthy_records_leave_the_location_unknown(
    state: StateFile | None, parity: int | None, why: str
) -> None:
    k = resolve(state, parity)
    assert not k.known and k.armed is None and why in k.state.unknown
    if state is not None:  # counters continue: a restarted daemon can adopt again later
        assert k.state.loads_issued >= state.loads_issued


def test_stale_record_and_other_crash_area_are_unknown() -> None:
    assert "predates this boot" in resolve(ARMED_A, 1, boot_time=200.0).state.unknown
    k = resolve(ARMED_A, 1, crash_range=(0, 128 << 20))
    assert not k.known and "differs from Xen's" in k.state.unknown
    # No crash area at all: Xen can hold no crash image.
    assert resolve(None, 0, crash_range=(0, 0)).known


def test_format_1_records_are_read_with_their_parity(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    old = {"format": 1, "generation": 1, "loads_issued": 1, "unloads_issued": 0}
    store.path.write_text(json.dumps({**old, "armed": A.to_json()}))
    state = store.read_state()
    assert state is not None and state.parity == 1 and state.armed == A
    assert resolve(state, 1).known


def test_bad_records_are_named_errors(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.write_state(replace(ARMED_A, unknown=""))
    raw = json.loads(store.path.read_text())
    raw["unknown"] = "lost"
    store.path.write_text(json.dumps(raw))
    with pytest.raises(RecordError, match="field 'unknown': set while 'armed' names an image"):
        store.read_state()
    store.path.unlink()
    store.path.mkdir()
    with pytest.raises(RecordError, match="expected a regular file, found a directory"):
        store.read_state()


def test_a_state_dir_others_can_write_is_neither_trusted_nor_written(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "state")
    store.write_state(ARMED_A)
    store.state_dir.chmod(0o777)
    with pytest.raises(RecordError, match=r"mode 0777; not trusting .*state.json$"):
        store.read_state()
    with pytest.raises(RecordWriteError, match="not writable by group or others"):
        store.write_state(ARMED_A)
    # Never created outside the state directory: its parent must exist.
    with pytest.raises(RecordWriteError, match="cannot create the state directory"):
        RecordStore(tmp_path / "no" / "state").write_state(ARMED_A)
    assert not (tmp_path / "no").exists()
