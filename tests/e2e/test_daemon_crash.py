"""xenkdumpd itself arms the crash kernel on real Xen, and reloads it through D-Bus.

In dom0 a private dbus-daemon (the host's, with an allow-all policy) stands in
for the system bus; xenkdumpd from the checkout starts with a configuration
naming the Debian kernel and a crash initramfs built here, and loads it on its
own (first reconcile).  ``xenkdumpctl reload --force`` then asks it, over the
bus, for a second load, which must land in the other half of the crash area
(the two-halves reload, docs/xen-kexec-contract.md §4.3).  dom0 keeps a token and
panics; the crash kernel of the reload must boot and find the token in
/proc/vmcore.

Before the crash, with the daemon armed and idle, the same boot times xenkdumpctl's
start-up on real Xen (``--help``, ``status`` through the daemon, ``hv info`` through
libxenctrl) against ``/usr/bin/python3 -c pass``, as bench/cli.py does natively; the
figures go to bench/out/e2e_cli.json (untracked), which bench/cli.py prints.
"""

from __future__ import annotations

import compileall
import json
import os
import statistics

import pytest
import scenarios as sc
from e2e_harness import REPO, Assets, Job, boot, build_crash_initramfs

STATE = f"{sc.DAEMON_DIR}/state"
LOADED = '"State": "loaded"'
CLI_ROUNDS = int(os.environ.get("XENKDUMP_E2E_CLI_ROUNDS", "5"))
CLI_OUT = REPO / "bench" / "out" / "e2e_cli.json"


def _pair(value: str) -> tuple[int, int]:
    start, _, size = value.partition(",")
    return int(start), int(size)


@pytest.mark.e2e
def test_daemon_arms_reloads_and_crash_boots(assets: Assets, job: Job) -> None:
    token = os.urandom(32)
    initrd = build_crash_initramfs(
        assets, job.dir / "crash-daemon.cpio.gz", marker="daemon", token=token
    )
    config = sc.daemon_config(assets.kernel, initrd, STATE)
    for tree in ("daemon/src", "bindings"):  # byte-compiled, as the package is
        compileall.compile_dir(REPO / tree, quiet=1)
    job.write_scenario(
        "\n".join(
            [
                sc.prelude(),
                "xk_ok=1",
                sc.start_bus_and_daemon(config),
                # Python start-up under TCG takes seconds: the poll is bounded by tries.
                sc.daemon_wait("first", (LOADED,), tries=60),
                sc.daemon_reload(),
                sc.daemon_wait("second", (LOADED, '"Generation": 2,?$'), tries=30),
                sc.cli_startup(CLI_ROUNDS),
                sc.daemon_log_tail(),
                sc.write_token(token),
                'if [ "$xk_ok" = 1 ]; then',
                sc.crash(),
                "else",
                'say "not crashing: the daemon did not arm and reload"',
                "fi",
            ]
        )
    )
    run = sc.Run(boot(assets, job, timeout=420), job)
    run.expect_dom0_ready()
    bus = run.values("bus")
    run.expect(bus and bus[0].get("rc") == "0", f"dbus-daemon did not start: {bus}", "XK-SCEN:")

    # The daemon armed the crash kernel by itself.
    first = run.values("waited first")
    run.expect(
        first and first[0].get("_0") == "ok",
        f"xenkdumpd never reported loaded: {first}",
        "XK-SCEN:",
    )
    s1 = run.values("status first")
    run.expect(s1 and s1[0].get("State") == "loaded", f"status after start: {s1}", "XK-SCEN:")
    run.expect(s1[0].get("Generation") == "1", f"first load is not generation 1: {s1}", "XK-SCEN:")
    run.expect(len(s1[0].get("ImageSha256", "")) == 64, f"no image digest: {s1}", "XK-SCEN:")

    # The reload through D-Bus reached generation 2, in the other half.
    reload = run.values("reload")
    run.expect(reload and reload[0].get("rc") == "0", f"reload failed: {reload}", "XK-SCEN:")
    second = run.values("waited second")
    run.expect(
        second and second[0].get("_0") == "ok",
        f"no generation 2 after reload: {second}",
        "XK-SCEN:",
    )
    s2 = run.values("status second")
    run.expect(s2 and s2[0].get("Generation") == "2", f"status after reload: {s2}", "XK-SCEN:")
    region = _pair(s2[0]["CrashRegion"])
    used1, used2 = _pair(s1[0]["CrashRegionUsed"]), _pair(s2[0]["CrashRegionUsed"])
    run.expect(region == _pair(s1[0]["CrashRegion"]), f"crash region moved: {s1} {s2}", "XK-SCEN:")
    for used in (used1, used2):
        run.expect(
            region[0] <= used[0] and used[0] + used[1] <= region[0] + region[1],
            f"used range {used} outside the crash region {region}",
            "XK-SCEN:",
        )
    run.expect(
        used1[0] + used1[1] <= used2[0] or used2[0] + used2[1] <= used1[0],
        f"generation 2 {used2} overlaps generation 1 {used1}: not the other half",
        "XK-SCEN:",
    )

    # xenkdumpctl's start-up on real Xen: every run worked; the times are figures.
    cli = cli_figures(run)

    # Xen ran the image of the reload; it found dom0's token in /proc/vmcore.
    dump = run.expect_crash_dump("daemon")
    print(
        f"\n[e2e daemon] first load seen after {int(first[0]['ns']) / 1e9:.1f}s of polling "
        f"({first[0]['tries']} status calls); reload {int(reload[0]['ns']) / 1e9:.2f}s; "
        f"used {used1} -> {used2} in {region}; {dump}; CLI start-up {cli}"
    )


def cli_figures(run: sc.Run) -> str:
    """Check the CLI start-up runs, write bench/out/e2e_cli.json; a one-line summary.

    Under emulation on a shared machine single runs vary by tens of percent, so
    both the ratio of the best times and the median of each round's ratio (command
    and floor of the same round) are kept.
    """
    rounds: dict[str, dict[str, int]] = {}  # round -> name -> ns
    for v in run.values("cli"):
        name = v["_0"]
        run.expect(v.get("rc") == "0", f"xenkdumpctl {name} failed in dom0: {v}", "XK-SCEN: cli")
        rounds.setdefault(v["round"], {})[name] = int(v["ns"])
    complete = [r for r in rounds.values() if set(r) == set(sc.CLI_STARTUP)]
    run.expect(len(complete) == CLI_ROUNDS, f"CLI start-up rounds missing: {rounds}", "XK-SCEN:")
    floor = min(r["floor"] for r in complete)
    best, median = {}, {}
    for name, (label, _) in sc.CLI_STARTUP.items():
        if name != "floor":
            best[label] = min(r[name] for r in complete)
            median[label] = round(statistics.median(r[name] / r["floor"] for r in complete), 2)
    ratios = {label: round(ns / floor, 2) for label, ns in best.items()}
    figures = {
        "what": "wall time of /usr/bin/python3 -c pass and of xenkdumpctl commands "
        "(the checkout byte-compiled, at the end of the module path as dist-packages is) "
        "in dom0 on Xen under QEMU TCG",
        "rounds": CLI_ROUNDS,
        "floor_ns": floor,
        "commands_ns": best,
        "ratios": ratios,
        "median_round_ratios": median,
    }
    CLI_OUT.parent.mkdir(parents=True, exist_ok=True)
    CLI_OUT.write_text(json.dumps(figures, indent=2) + "\n")
    return ", ".join(f"{label} {ratios[label]}x (median {median[label]}x)" for label in ratios)
