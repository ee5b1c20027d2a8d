"""Peer scenario: kexec-tools' ``kexec -p`` on real Xen, and the load-time ratio ours / theirs.

Both loaders run in the same dom0 boot with the same kernel, initramfs and
command line, so the ratio is not distorted by TCG speed differences between
runs (docs/lab.md §6).  The ratio is written to bench/out/e2e_peer.json (untracked);
it is a figure, not a pass/fail threshold.  The crash afterwards boots kexec-tools'
image and must find dom0's token in /proc/vmcore.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest
import scenarios as sc
from e2e_harness import REPO, Assets, Job, boot, build_crash_initramfs

ROUNDS = int(os.environ.get("XENKDUMP_E2E_PEER_ROUNDS", "3"))
BENCH_OUT = REPO / "bench" / "out" / "e2e_peer.json"


@pytest.mark.e2e
def test_peer_kexec_tools_load_and_crash(assets: Assets, job: Job) -> None:
    token = os.urandom(32)
    initrd = build_crash_initramfs(
        assets, job.dir / "crash-peer.cpio.gz", marker="peer", token=token
    )
    steps = [sc.prelude(), sc.write_token(token)]
    steps += [sc.xenkdump_load(assets, initrd, f"ours{i}", "/run/xk-state") for i in range(ROUNDS)]
    # The same loads inside one running Python, as xenkdumpd reloads: the
    # interpreter and imports (seconds under TCG) are paid once at daemon start.
    steps.append(sc.xen_query(sc.in_process_args(assets, initrd, ROUNDS), "inproc"))
    # kexec-tools last, so the crash runs its image.
    steps += [sc.kexec_tools_load(assets, initrd, f"kexec-tools{i}") for i in range(ROUNDS)]
    steps.append(sc.crash())
    job.write_scenario("\n".join(steps))

    result = boot(assets, job, timeout=420)
    run = sc.Run(result, job)
    run.expect_dom0_ready()
    run.expect(run.values("token written"), "dom0 did not write the token", "XK-DOM0: ready")

    loads = {v["_0"]: v for v in run.values("load")}
    theirs_ns = []
    ours_ns: list[int] = []
    ours_failures = []
    for i in range(ROUNDS):
        rec = loads.get(f"kexec-tools{i}")
        run.expect(rec and rec["rc"] == "0", f"kexec -p round {i} failed: {rec}", "XK-SCEN:")
        assert rec is not None
        theirs_ns.append(int(rec["ns"]))
        # Our loader's correctness is test_load_and_crash's job; here it only gives figures.
        mine = loads.get(f"ours{i}")
        if mine and mine["rc"] == "0":
            ours_ns.append(int(mine["ns"]))
        else:
            tail = job.read_out(f"ours{i}.log")[-300:]
            ours_failures.append(f"ours round {i}: {mine} {tail}")
    inproc_ns = [int(v["ns"]) for v in run.values("xen inproc timed-load")]
    if len(inproc_ns) != ROUNDS:
        said = [line for line in run.scen if line.startswith("xen inproc")]
        ours_failures.append(f"in-process loads: {inproc_ns}: {said[-5:]}")

    # kexec-tools' ELF core header has no dom0 VMCOREINFO: makedumpfile -d 31 fails on it.
    dump = run.expect_crash_dump("peer", dom0_vmcoreinfo=False)

    theirs_med = statistics.median(theirs_ns)
    ours_med = statistics.median(ours_ns) if ours_ns else None
    inproc_med = statistics.median(inproc_ns) if inproc_ns else None
    why = ("xenkdumpctl load failed: " + " | ".join(ours_failures)) if ours_failures else None
    figures = {
        "scenario": "e2e peer: same dom0 boot, Xen 4.17 under QEMU TCG",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": assets.kernel.name,
        "xen": assets.xen_elf.name,
        "rounds": ROUNDS,
        "kexec_tools_ns": theirs_ns,
        "xenkdump_ns": ours_ns,
        "kexec_tools_median_s": theirs_med / 1e9,
        "xenkdump_median_s": None if ours_med is None else ours_med / 1e9,
        "ratio_ours_over_kexec_tools": None if ours_med is None else ours_med / theirs_med,
        "xenkdump_in_process_ns": inproc_ns,
        "xenkdump_in_process_median_s": None if inproc_med is None else inproc_med / 1e9,
        "ratio_in_process_over_kexec_tools": (
            None if inproc_med is None else inproc_med / theirs_med
        ),
        "in_process_note": "read + plan + hypercall inside one Python process, as xenkdumpd "
        "reloads; xenkdump_ns is the whole `xenkdumpctl load` command (interpreter start "
        "and imports included)",
        "ratio_missing_because": why,
        "boot_seconds": round(result.elapsed, 1),
        "crash": dump,
    }
    BENCH_OUT.parent.mkdir(parents=True, exist_ok=True)
    BENCH_OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n[e2e peer] {json.dumps(figures)}")
    if why:
        print(f"[e2e peer] no ratio: {why}")
