"""The handoff level's loader, run inside the staging VM's dom0 (docs/selftest.md §6).

dom0's /init (dom0-init.sh) runs this with the host's own Python in a chroot of
the host's root, so the loader, cffi and libxenctrl are exactly the host's.  It
loads the image under test through the real kexec hypercall with xenkdump's
loader and prints ``xenkdump-selftest: <id> image-loaded ...`` (or ``... failed
image-loaded <reason>``).  The crash command line is the armed one (plan.py's
``handoff_cmdline``): it already carries the console the host's planner chose,
so Xen's console in the staging VM is not added again.  The record goes to the
run's work directory, the only place this writes to.

Arguments: one JSON file, {"id", "kernel", "initrd", "cmdline", "state_dir"}.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from xenkdump.errors import XenkdumpError
from xenkdump.selftest.stages import MARKER, Stage, marker_line


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    test_id = str(spec["id"])
    try:
        from xenkdump.hv.select import open_hypervisor  # noqa: PLC0415
        from xenkdump.image import loader  # noqa: PLC0415
        from xenkdump.state.record import RecordStore  # noqa: PLC0415

        initrd = Path(spec["initrd"]) if spec["initrd"] else None
        inputs = loader.read_inputs(Path(spec["kernel"]), initrd, cmdline=spec["cmdline"])
        with open_hypervisor("xen") as hv:
            host = dataclasses.replace(loader.gather_host(hv), xen_cmdline="")
            ledger = loader.recall(hv, RecordStore(Path(spec["state_dir"])), crash=host.crash)
            rec = loader.load(hv, inputs, host, ledger, reason="self-test")
    except XenkdumpError as exc:
        reason = " ".join(str(exc).split())
        print(f"{MARKER} {test_id} failed {Stage.IMAGE_LOADED} {reason}", flush=True)
        return 1
    print(
        marker_line(
            test_id, Stage.IMAGE_LOADED, half=rec.half, crash_area=f"{host.crash.start:#x}"
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
