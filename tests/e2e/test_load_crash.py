"""Load and crash with xenkdump's own loader on real Xen.

``xenkdumpctl load`` (the checkout, run by the host's Python in dom0) loads the
Debian kernel with a crash initramfs built here; dom0 keeps a random token in a
tmpfs and panics; the crash kernel must find the token in /proc/vmcore, which
proves that the ELF core header maps machine memory correctly, then dump with
makedumpfile and power off.
"""

from __future__ import annotations

import os

import pytest
import scenarios as sc
from e2e_harness import Assets, Job, boot, build_crash_initramfs

STATE = "/run/xk-state"


@pytest.mark.e2e
def test_xenkdump_load_and_crash(assets: Assets, job: Job) -> None:
    token = os.urandom(32)
    initrd = build_crash_initramfs(
        assets, job.dir / "crash-ours.cpio.gz", marker="ours", token=token
    )
    job.write_scenario(
        "\n".join(
            [
                sc.prelude(),
                sc.write_token(token),
                sc.xen_query("status", "before"),
                sc.xenkdump_load(assets, initrd, "ours", STATE),
                sc.xen_query("status", "after-load"),
                sc.crash(),
            ]
        )
    )
    run = sc.Run(boot(assets, job, timeout=420), job)
    run.expect_dom0_ready()
    run.expect(run.values("token written"), "dom0 did not write the token", "XK-DOM0: ready")
    load = run.values("load ours")
    run.expect(load and load[0]["rc"] == "0", f"xenkdumpctl load failed: {load}", "XK-SCEN:")
    dump = run.expect_crash_dump("ours")
    statuses = [" ".join(v.values()) for v in run.values("xen")]
    print(f"\n[e2e load-and-crash] load {int(load[0]['ns']) / 1e9:.2f}s; {dump}; status {statuses}")
