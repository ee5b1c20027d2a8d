"""The ``hv`` fixture: the hypervisor port, once per adapter.

"sim" always runs (a fresh simulated host in tmp_path).  "xen" runs only on a
PV dom0 with /dev/xen/privcmd and XENKDUMP_CONTRACT_XEN=1 (the real-Xen lab
sets both); elsewhere it is skipped with the reason.  Every test ends with an
unload of the crash slot, so a real host is left with nothing armed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenkdump.hv.port import KEXEC_TYPE_CRASH, Hypervisor
from xenkdump.hv.sim import SimulatedHypervisor

XEN_REASON = "needs a PV dom0; runs in the real-Xen lab (tests/e2e)"


def real_xen_enabled() -> bool:
    return Path("/dev/xen/privcmd").exists() and os.environ.get("XENKDUMP_CONTRACT_XEN") == "1"


@pytest.fixture(params=["sim", pytest.param("xen", marks=pytest.mark.realxen)])
def hv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hypervisor]:
    adapter: Hypervisor
    if request.param == "sim":
        adapter = SimulatedHypervisor.open(tmp_path / "host.yaml")
    else:
        if not real_xen_enabled():
            pytest.skip(XEN_REASON)
        # Lazily: libxenctrl is only there on a dom0.
        from xenkdump.hv.xen import XenHypervisor  # noqa: PLC0415

        adapter = XenHypervisor.open()
    try:
        yield adapter
    finally:
        try:
            adapter.kexec_unload(KEXEC_TYPE_CRASH)
        finally:
            adapter.close()
