"""A reload keeps the armed image safe, on real Xen.

Boot 1: load A; then hand Xen image B planned exactly as ``xenkdumpctl load``
would place it, but with a wrong ``arch``: Xen copies B into the crash area and
only then rejects it (docs/xen-kexec-contract.md §4.3, §4.4).  The crash must still boot
A and find the token -- with naive placement B's copy overwrites A and nothing
boots (§4.3, measured with kexec-tools).  Boot 2: load A, then B properly; the
crash must boot B.  Xen's status answer is recorded after every step (it is
the parity of load/unload calls, §4.1, so it is printed, not asserted).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import scenarios as sc
from e2e_harness import Assets, Job, boot, build_crash_initramfs

STATE = "/run/xk-state"

pytestmark = pytest.mark.e2e


def _statuses(run: sc.Run) -> list[str]:
    return [" ".join(v.values()) for v in run.values("xen")]


def _initrds(assets: Assets, job: Job, token: bytes) -> tuple[Path, Path]:
    a = build_crash_initramfs(assets, job.dir / "crash-A.cpio.gz", marker="A", token=token)
    b = build_crash_initramfs(assets, job.dir / "crash-B.cpio.gz", marker="B", token=token)
    return a, b


def test_rejected_reload_keeps_armed_image(assets: Assets, job: Job) -> None:
    token = os.urandom(32)
    a, b = _initrds(assets, job, token)
    job.write_scenario(
        "\n".join(
            [
                sc.prelude(),
                sc.write_token(token),
                sc.xen_query("status", "before"),
                sc.xenkdump_load(assets, a, "A", STATE),
                sc.xen_query("status", "after-A"),
                sc.bogus_load(assets, b, STATE, "B-bad-arch"),
                sc.xen_query("status", "after-B-bad-arch"),
                sc.crash(),
            ]
        )
    )
    run = sc.Run(boot(assets, job, timeout=420), job)
    run.expect_dom0_ready()
    load = run.values("load A")
    run.expect(load and load[0]["rc"] == "0", f"xenkdumpctl load A failed: {load}", "XK-SCEN:")
    bogus = run.values("xen B-bad-arch bogus-load")
    run.expect(bogus, "the wrong-arch load of B did not run", "XK-SCEN:")
    # Xen must reject it (EINVAL from machine_kexec_load, §4.4), not accept it.
    run.expect(bogus[0].get("errno") == "22", f"expected EINVAL for arch 999: {bogus}", "XK-SCEN:")
    run.expect(
        bogus[0].get("armed") not in (None, "none"),
        f"the planner saw no armed image after loading A: {bogus}",
        "XK-SCEN:",
    )
    run.expect(
        bogus[0].get("half") != bogus[0].get("armed"),
        f"B was planned into A's half: {bogus}",
        "XK-SCEN:",
    )
    dump = run.expect_crash_dump("A")
    print(f"\n[e2e reload 1] {bogus[0]}; status {_statuses(run)}; {dump}")


def test_reload_replaces_armed_image(assets: Assets, job: Job) -> None:
    token = os.urandom(32)
    a, b = _initrds(assets, job, token)
    job.write_scenario(
        "\n".join(
            [
                sc.prelude(),
                sc.write_token(token),
                sc.xen_query("status", "before"),
                sc.xenkdump_load(assets, a, "A", STATE),
                sc.xen_query("status", "after-A"),
                sc.xenkdump_load(assets, b, "B", STATE),
                sc.xen_query("status", "after-B"),
                f"cat {STATE}/state.json | tr -d '\\n' | head -c 600; echo",
                sc.crash(),
            ]
        )
    )
    run = sc.Run(boot(assets, job, timeout=420), job)
    run.expect_dom0_ready()
    for label in ("A", "B"):
        load = run.values(f"load {label}")
        run.expect(
            load and load[0]["rc"] == "0", f"xenkdumpctl load {label} failed: {load}", "XK-SCEN:"
        )
    dump = run.expect_crash_dump("B")
    print(f"\n[e2e reload 2] status {_statuses(run)}; {dump}")
