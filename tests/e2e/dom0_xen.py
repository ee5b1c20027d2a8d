"""Run inside dom0 by the e2e scenarios: ask Xen things through xenkdump's real adapter.

dom0_xen.py status
    prints ``status=N crash=START+SIZE`` (N is Xen's KEXEC_CMD_kexec_status for
    the crash slot: recorded, never trusted, docs/xen-kexec-contract.md §4.1)
dom0_xen.py bogus-load KERNEL INITRD CMDLINE STATE_DIR
    plans the image exactly as ``xenkdumpctl load`` would (same half choice
    from the state record), then hands it to Xen with arch 999 on purpose:
    Xen copies the segments into the crash area and only then rejects the
    arch (§4.4).  Prints ``bogus-load half=H armed=H errno=E``.
dom0_xen.py timed-load KERNEL INITRD CMDLINE STATE_DIR ROUNDS
    loads the crash image ROUNDS times inside this one process, as xenkdumpd
    reloads (read files, ask Xen, plan, hypercall, record), and prints
    ``timed-load round=I ns=N`` for each: the loader's own cost, without the
    interpreter start-up and imports a ``xenkdumpctl load`` pays every time.
dom0_xen.py debug-keys KEYS
    sends KEYS to Xen's debug-key handler as ``xl debug-keys`` does
    (libxenctrl's xc_send_debug_keys; the lab dom0 has no xl).  ``C`` makes Xen
    itself crash: a hypervisor crash, with dom0 still running.  A test helper
    only: the product never offers to crash the host.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from xenkdump.errors import HypervisorError
from xenkdump.hv.port import KEXEC_TYPE_CRASH, Segment
from xenkdump.hv.xen import XenHypervisor

BOGUS_ARCH = 999  # neither EM_X86_64 (62) nor EM_386 (3)


def status() -> int:
    with XenHypervisor.open() as hv:
        crash = hv.crash_range()
        print(f"status={hv.kexec_status(KEXEC_TYPE_CRASH)} crash={crash.start:#x}+{crash.size:#x}")
    return 0


def bogus_load(kernel: str, initrd: str, cmdline: str, state_dir: str) -> int:
    # Imported here: ``status`` must work without the image builder.
    from xenkdump.image.loader import gather_host, plan_for_load, read_inputs  # noqa: PLC0415
    from xenkdump.state.record import RecordStore  # noqa: PLC0415

    with XenHypervisor.open() as hv:
        inputs = read_inputs(Path(kernel), Path(initrd), cmdline=cmdline)
        host = gather_host(hv)
        armed = RecordStore(Path(state_dir)).read()
        plan, must_unload = plan_for_load(inputs, host, armed)
        segments = [Segment(s.data, s.dest, s.memsz) for s in plan.segments]
        armed_half = "none" if armed is None else armed.half
        try:
            hv.kexec_load(KEXEC_TYPE_CRASH, BOGUS_ARCH, plan.entry, segments)
        except HypervisorError as exc:
            result = f"errno={exc.errno}"
        else:
            result = "errno=0"
        print(
            f"bogus-load half={plan.half} armed={armed_half} must_unload={must_unload} "
            f"segments={len(segments)} {result}"
        )
    return 0


def timed_load(kernel: str, initrd: str, cmdline: str, state_dir: str, rounds: str) -> int:
    from xenkdump.image import loader  # noqa: PLC0415
    from xenkdump.state.record import RecordStore  # noqa: PLC0415

    store = RecordStore(Path(state_dir))
    with XenHypervisor.open() as hv:
        ledger = loader.recall(hv, store)
        for i in range(int(rounds)):
            t0 = time.perf_counter_ns()
            inputs = loader.read_inputs(Path(kernel), Path(initrd), cmdline=cmdline)
            loader.load(hv, inputs, loader.gather_host(hv), ledger, reason="e2e timed-load")
            print(f"timed-load round={i} ns={time.perf_counter_ns() - t0}", flush=True)
    return 0


# xc_send_debug_keys is not in the product's binding (xenkdump_xenctrl): nothing in the
# product sends debug keys.  A tiny declaration of its own, same library.
_DEBUG_KEYS_CDEF = """
typedef struct xc_interface_core xc_interface;
xc_interface *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags);
int xc_interface_close(xc_interface *xch);
int xc_send_debug_keys(xc_interface *xch, const char *keys);
"""


def debug_keys(keys: str) -> int:
    import cffi  # noqa: PLC0415

    from xenkdump_xenctrl import open_library  # noqa: PLC0415

    ffi = cffi.FFI()
    ffi.cdef(_DEBUG_KEYS_CDEF)
    lib = ffi.dlopen(open_library().path)
    xch = lib.xc_interface_open(ffi.NULL, ffi.NULL, 0)
    if xch == ffi.NULL:
        print("debug-keys open failed", flush=True)
        return 1
    print(f"debug-keys sending {keys}", flush=True)
    rc = lib.xc_send_debug_keys(xch, keys.encode())
    # Only reached when Xen returns (e.g. 'C' with no crash image armed).
    print(f"debug-keys returned rc={rc} errno={ffi.errno}", flush=True)
    lib.xc_interface_close(xch)
    return 0 if rc == 0 else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["status"] and len(argv) == 1:
        return status()
    if argv[:1] == ["bogus-load"] and len(argv) == 5:
        return bogus_load(*argv[1:])
    if argv[:1] == ["timed-load"] and len(argv) == 6:
        return timed_load(*argv[1:])
    if argv[:1] == ["debug-keys"] and len(argv) == 2:
        return debug_keys(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
