"""The self-test's stage tracker: console text and times in, stages or one failure out."""

from __future__ import annotations

from xenkdump.selftest.stages import (
    LEVEL_STAGES,
    STAGE_TIMEOUTS,
    Failed,
    Level,
    Reached,
    Stage,
    Tracker,
    marker_line,
)

ID = "abc123def456"


def boot_tracker(**kw: object) -> Tracker:
    t = Tracker(ID, Level.BOOT, start=0.0, total_timeout=900.0, **kw)  # type: ignore[arg-type]
    t.reach(Stage.VM_START, 0.0)
    return t


def test_good_run_reaches_every_boot_stage_in_order_from_any_chunking() -> None:
    text = "\n".join(
        [
            "[    3.5] Run /init as init process",
            marker_line(ID, Stage.CRASH_KERNEL_UP, uptime="3.68"),
            marker_line(ID, Stage.CAPTURE_STARTED),
            marker_line(ID, Stage.TOKEN_FOUND, vmcore_bytes=73728),
            marker_line(ID, Stage.DUMP_WRITTEN, mem_min_avail_kb=185000),
            "",
        ]
    )
    t = boot_tracker()
    events = []
    for i in range(0, len(text), 7):  # console text arrives in arbitrary pieces
        events += t.feed(text[i : i + 7], 1.0 + i)
    assert [e.stage for e in events if isinstance(e, Reached)] == [
        Stage.CRASH_KERNEL_UP,
        Stage.CAPTURE_STARTED,
        Stage.TOKEN_FOUND,
        Stage.DUMP_WRITTEN,
    ]
    assert t.awaiting(Stage.DONE)
    assert t.values["uptime"] == "3.68"  # the hook's figure, after the kernel's own line
    assert t.values["mem_min_avail_kb"] == "185000"
    t.reach(Stage.DONE, 99.0)
    assert t.passed and t.fraction() == 1.0


def test_markers_of_another_run_are_ignored() -> None:
    t = boot_tracker()
    assert t.feed(marker_line("ffffff000000", Stage.CAPTURE_STARTED) + "\n", 1.0) == []
    assert t.next_stage is Stage.CRASH_KERNEL_UP


def test_a_later_marker_implies_the_stages_before_it() -> None:
    t = boot_tracker()
    events = t.feed(marker_line(ID, Stage.TOKEN_FOUND) + "\n", 5.0)
    assert [e.stage for e in events] == [
        Stage.CRASH_KERNEL_UP,
        Stage.CAPTURE_STARTED,
        Stage.TOKEN_FOUND,
    ]


def test_init_exiting_fails_at_the_next_stage_with_the_kernels_line() -> None:
    t = boot_tracker()
    t.feed("Run /init as init process\n", 3.0)
    (ev,) = t.feed(
        "\x1b[0m[    2.69] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0\r\n",
        4.0,
    )
    assert isinstance(ev, Failed)
    assert ev.stage is Stage.CAPTURE_STARTED
    assert "init exited" in ev.reason and "Attempted to kill init" in ev.reason
    assert "\x1b" not in ev.reason and "\r" not in ev.reason
    assert t.finished and not t.passed
    assert t.feed(marker_line(ID, Stage.CAPTURE_STARTED) + "\n", 5.0) == []  # first failure wins


def test_out_of_memory_while_unpacking_the_initrd() -> None:
    t = boot_tracker()
    (ev,) = t.feed("[    2.35] Initramfs unpacking failed: write error\n", 2.0)
    assert isinstance(ev, Failed)
    assert ev.stage is Stage.CRASH_KERNEL_UP and ev.reason.startswith("out of memory")


def test_the_hooks_own_failure_names_its_stage_and_reason() -> None:
    t = boot_tracker()
    line = f"xenkdump-selftest: {ID} failed token-found the token is not in /proc/vmcore\n"
    (*_, ev) = t.feed(line, 9.0)
    assert isinstance(ev, Failed)
    assert (ev.stage, ev.reason) == (Stage.TOKEN_FOUND, "the token is not in /proc/vmcore")


def test_timeout_per_stage_with_the_last_output_and_the_planners_hint() -> None:
    t = boot_tracker(hints={Stage.CRASH_KERNEL_UP: "no console=ttyS0"})
    t.feed("Booting from ROM..\n", 1.0)
    limit = STAGE_TIMEOUTS[Stage.CRASH_KERNEL_UP]
    assert t.tick(limit - 1) is None
    ev = t.tick(limit + 0.1)
    assert ev is not None and ev.stage is Stage.CRASH_KERNEL_UP
    assert ev.reason.startswith("no console=ttyS0; not reached within")
    assert "last output: Booting from ROM.." in ev.reason


def test_the_whole_runs_limit_wins_over_a_stage_limit_and_kvm_halves_them() -> None:
    t = Tracker(ID, Level.BOOT, start=0.0, total_timeout=30.0)
    t.reach(Stage.VM_START, 0.0)
    ev = t.tick(30.0)
    assert ev is not None and "time limit of 30 s" in ev.reason
    k = Tracker(ID, Level.BOOT, start=0.0, total_timeout=900.0, kvm=True)
    k.reach(Stage.VM_START, 0.0)
    assert k.stage_deadline() == STAGE_TIMEOUTS[Stage.CRASH_KERNEL_UP] / 2


def test_levels_list_stages_in_the_documented_order() -> None:
    assert LEVEL_STAGES[Level.HANDOFF] == tuple(Stage)
    boot = LEVEL_STAGES[Level.BOOT]
    assert boot[0] is Stage.VM_START and boot[-1] is Stage.DONE
    assert list(boot) == sorted(boot, key=list(Stage).index)
    assert set(STAGE_TIMEOUTS) == set(Stage)
