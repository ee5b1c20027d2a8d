"""Contract on real Xen: tests/contract runs inside dom0 against xenkdump.hv.xen.

The suite's ``hv`` fixture adds the real adapter when /dev/xen/privcmd exists and
XENKDUMP_CONTRACT_XEN=1, so the same assertions (crash range, memory map,
status, rejections with their errno) run against the simulator and Xen in one
pytest session.  A disagreement is a simulator bug.  The checkout and
venv are the host's, seen read-only over 9p: no bytecode, no pytest cache, and
hypothesis' database under dom0's tmpfs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import scenarios as sc
from e2e_harness import Assets, Job, boot


@pytest.mark.e2e
def test_contract_suite_on_real_xen(assets: Assets, job: Job) -> None:
    steps = [
        sc.prelude(),
        "[ -e /dev/xen/privcmd ] && say 'privcmd present' || say 'privcmd missing'",
        sc.xen_query("status", "before"),
        # libxenctrl is found by soname, as in production (no XENKDUMP_LIBXENCTRL).
        # MAY_UNLOAD: the binding's own real-dom0 load test may replace the (empty) slot.
        "XENKDUMP_CONTRACT_XEN=1 XENKDUMP_TEST_MAY_UNLOAD=1 "
        "HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis "
        f"{sc.VENV_PY} -m pytest -p no:cacheprovider -q -rA --basetemp=/tmp/pytest "
        "--junitxml=$OUT/contract.xml tests/contract tests/unit/test_binding.py "
        "> $OUT/contract.log 2>&1",
        'say "contract rc=$?"',
        "tail -n 40 $OUT/contract.log",
    ]
    job.write_scenario("\n".join(steps))
    run = sc.Run(boot(assets, job, timeout=600), job)
    run.expect_dom0_ready()
    run.expect(run.has("XK-SCEN: privcmd present"), "dom0 has no /dev/xen/privcmd", "XK-SCEN:")
    rc = run.values("contract")
    run.expect(rc, "the inner pytest did not finish", "XK-SCEN:")
    log = job.read_out("contract.log")
    junit = job.read_out("contract.xml")
    run.expect(junit, f"inner pytest wrote no junit report; its output:\n{log[-4000:]}")
    ran: list[str] = []
    skipped: list[str] = []
    total = 0
    for case in ET.fromstring(junit).iter("testcase"):
        total += 1
        name = f"{case.get('classname')}::{case.get('name')}"
        if not (_is_xen_case(case.get("name") or "") or "test_real_" in name):
            continue
        skip = case.find("skipped")
        if skip is None:
            ran.append(name)
        else:
            skipped.append(f"{name}: {skip.get('message')}")
    print(f"\n[e2e contract] {total} tests, {len(ran)} ran against the real adapter")
    if rc[0]["rc"] != "0":
        pytest.fail(f"contract suite failed on real Xen (rc={rc[0]['rc']}):\n{log[-6000:]}")
    run.expect(ran, f"no contract test ran against the real adapter; skipped: {skipped[:5]}")
    not_enabled = [s for s in skipped if "PV dom0" in s]
    run.expect(not not_enabled, f"real-adapter tests skipped in dom0: {not_enabled[:5]}")


def _is_xen_case(test_name: str) -> bool:
    """The ``hv`` fixture's real-adapter parameter has the id ``xen``."""
    params = test_name.partition("[")[2].rstrip("]")
    return "xen" in params.split("-")
