"""At every step of a load and reload, a fault leaves the armed image intact or the new
one armed, and the record agrees with Xen or says the location is unknown.

Points (faultlib.py): before/after each record write and each hypercall.  Faults: the
record write fails (ENOSPC, EROFS, EIO), Xen refuses the hypercall, or the process is
killed with SIGKILL (a real child process on the simulator).  After each fault a
restarted "daemon" (``loader.recall``) must tell the truth, checked against the
simulator's byte-level view of the armed image, and the next reload must work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from faultlib import (
    SCENARIOS,
    WRITE_ERRORS,
    Fault,
    image_of,
    prepare,
    run_scenario,
)
from figures import FIGURES

from xenkdump.hv.port import KEXEC_TYPE_CRASH
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.image import loader
from xenkdump.image.planner import plan_crash_image
from xenkdump.state.record import RecordStore

FAULTLIB = Path(__file__).with_name("faultlib.py")


def layout(work: Path, name: str, half: str) -> tuple[int, tuple[tuple[int, int], ...]]:
    hv = SimulatedHypervisor.open(work / "host.yaml")
    plan = plan_crash_image(image_of(name), loader.gather_host(hv), half=half)
    return plan.entry, tuple(sorted((s.dest, s.memsz) for s in plan.segments))


def points(tmp_path: Path, scenario: str) -> list[str]:
    work = tmp_path / "discover"
    work.mkdir()
    prepare(work, scenario)
    return run_scenario(work, None)


def check_truth(
    work: Path, scenario: str, *, window_allowed: bool, unknown_allowed: bool = False
) -> str:
    """Xen holds A or B intact (or, inside the unknown scenario's unload window, nothing),
    and a restarted daemon's knowledge agrees -- or says unknown, which is only allowed
    while the record of the lost scenario has not been settled by an unload.  Then the
    next reload works."""
    hv = SimulatedHypervisor.open(work / "host.yaml")
    store = RecordStore(work / "state")
    armed = hv.armed_image(KEXEC_TYPE_CRASH)
    a_half = "lower"
    b_half = "lower" if scenario == "unknown" else "upper"
    known_layouts = {
        "A": layout(work, "A", a_half),
        "B": layout(work, "B", b_half),
    }
    if armed is None:
        assert window_allowed, "nothing armed outside the explicit unload window"
        which = "none"
    else:
        assert hv.armed_image_intact(KEXEC_TYPE_CRASH), hv.armed_image_damage(KEXEC_TYPE_CRASH)
        seen = (armed.entry, tuple(sorted((s.dest, s.memsz) for s in armed.segments)))
        which = next(name for name, lay in known_layouts.items() if lay == seen)
    ledger = loader.recall(hv, store)
    k = ledger.knowledge
    assert k.known or unknown_allowed, f"location unknown ({k.state.unknown}); Xen holds {which}"
    if k.known:
        if armed is None:
            assert k.armed is None
        else:
            assert k.armed is not None, f"record says nothing armed, Xen holds {which}"
            rec = (k.armed.entry, tuple(sorted((s["dest"], s["memsz"]) for s in k.armed.segments)))
            assert rec == known_layouts[which], f"record names the wrong image (Xen: {which})"
    # The next reload (image C) arms C intact and leaves the record in agreement.
    host = loader.gather_host(hv)
    c = loader.load(hv, image_of("C"), host, ledger)
    assert hv.armed_image_intact(KEXEC_TYPE_CRASH)
    again = loader.recall(hv, store).knowledge
    assert again.known and again.armed == c
    return which if k.known else f"{which} (unknown)"


def _window(names: list[str], point: int) -> bool:
    """Is ``point`` after an unload hypercall started (then nothing may be armed)?"""
    return "before kexec_unload" in names[: point + 1]


def _unknown_allowed(scenario: str, names: list[str], point: int) -> bool:
    """The lost-record scenario until its unload has happened; on a Xen without parity,
    while a pending entry may be the last record on disk."""
    if scenario == "old-xen":
        return 1 <= point <= names.index("before write state.json", 2)
    return scenario == "unknown" and point < names.index("after kexec_unload")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_points_are_what_the_protocol_says(tmp_path: Path, scenario: str) -> None:
    names = points(tmp_path, scenario)
    # Pending written before each hypercall, the result after it.
    one = [
        "before write state.json",
        "after write state.json",
        "before kexec_{}",
        "after kexec_{}",
        "before write state.json",
        "after write state.json",
    ]
    expected = [p.format("load") for p in one]
    if scenario == "unknown":
        # recall writes nothing it cannot vouch for -- "unknown" is written down too.
        expected = [
            "before write state.json",
            "after write state.json",
            *(p.format("unload") for p in one),
            *expected,
        ]
    assert names == expected


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_in_process_fault_at_every_point(tmp_path: Path, scenario: str) -> None:
    names = points(tmp_path, scenario)
    outcomes: dict[str, str] = {}
    for n, name in enumerate(names):
        faults: list[Fault] = []
        if name.startswith("before write"):
            faults += [Fault(n, "errno", e) for e in WRITE_ERRORS]
        if name.startswith("before kexec"):
            faults.append(Fault(n, "refuse"))
        for fault in faults:
            work = tmp_path / f"p{n}-{fault.kind}{fault.errno}"
            work.mkdir()
            prepare(work, scenario)
            run_scenario(work, fault)
            outcomes[f"{n} {name} {fault.kind}{fault.errno or ''}"] = check_truth(
                work,
                scenario,
                window_allowed=_window(names, n),
                unknown_allowed=_unknown_allowed(scenario, names, n),
            )
            FIGURES["in-process faults injected"] += 1
    FIGURES["fault points"] += len(names)
    assert outcomes  # every point with a fault kind was exercised
    # A failure before the load hypercall never arms B; nothing ever arms a third image.
    assert all(o.split()[0] in ("A", "B", "none") for o in outcomes.values()), outcomes


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kill9_at_every_point(tmp_path: Path, scenario: str) -> None:
    names = points(tmp_path, scenario)
    for n in range(len(names)):
        work = tmp_path / f"k{n}"
        work.mkdir()
        prepare(work, scenario)
        child = subprocess.run(
            [sys.executable, str(FAULTLIB), str(work), str(n)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert child.returncode == -9, child.stderr
        check_truth(
            work,
            scenario,
            window_allowed=_window(names, n),
            unknown_allowed=_unknown_allowed(scenario, names, n),
        )
        FIGURES["kill -9 runs"] += 1


def test_no_fault_arms_b(tmp_path: Path) -> None:
    prepare(tmp_path, "reload")
    run_scenario(tmp_path, None)
    assert check_truth(tmp_path, "reload", window_allowed=False) == "B"
