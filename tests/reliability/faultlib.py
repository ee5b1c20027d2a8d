"""Fault injection around one load on the simulator: numbered points, one fault at a time.

A *point* is a place where a real host can fail: just before and just after each
record write (``atomic_write``: the disk fills, turns read-only or errs; the process
dies) and just before and just after each hypercall (Xen refuses; the process dies).
``Injector`` counts the points a scenario passes; run once to list them, then once per
point and fault.  ``run_scenario`` is also what the kill -9 child process runs
(``python -m`` this file), so both suites share one scenario.

Every scenario starts with image A armed in a known place, then loads image B the way
the daemon would (``recall`` then ``load``), either a two-halves reload ("reload") or a
first load with no trustworthy record ("unknown": the record was lost while A is armed).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from imagefixtures import MIB, make_initrd, make_inputs, prng_bytes, synth_bzimage

from xenkdump import safefile
from xenkdump.errors import FileWriteError, HypervisorError
from xenkdump.hv.port import KEXEC_TYPE_CRASH
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.image import loader
from xenkdump.image.planner import ImageInputs
from xenkdump.state import record as record_mod
from xenkdump.state.record import RecordStore

# reload: a two-halves reload; unknown: a load after the record was lost; old-xen: a
# reload on Xen 4.8, whose status call answers 0 whatever happened (no parity).
SCENARIOS = ("reload", "unknown", "old-xen")
WRITE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EIO)


def image(tag: bytes, initrd_mib: int) -> ImageInputs:
    """A small crash image; the initrd size makes each image's layout its own."""
    kernel = synth_bzimage()
    initrd = make_initrd(initrd_mib * MIB)[:-64] + prng_bytes(tag, 64)
    return make_inputs(kernel, initrd, f"console=ttyS0 tag={tag.decode()}")


IMAGES = {"A": (b"A", 1), "B": (b"B", 2), "C": (b"C", 3)}


def image_of(name: str) -> ImageInputs:
    return image(*IMAGES[name])


@dataclass
class Fault:
    point: int  # which point (0-based) fails
    kind: str  # "kill" | "errno" (write points) | "refuse" (before a hypercall)
    errno: int = 0


class Injector:
    def __init__(self, fault: Fault | None = None) -> None:
        self.fault = fault
        self.points: list[str] = []

    def at(self, name: str) -> None:
        n = len(self.points)
        self.points.append(name)
        f = self.fault
        if f is None or f.point != n:
            return
        if f.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if f.kind == "errno" and name.startswith("before write"):
            raise FileWriteError(name, OSError(f.errno, os.strerror(f.errno)))
        if f.kind == "refuse" and name.startswith("before kexec"):
            raise HypervisorError("xc_kexec", errno.EINVAL, "injected refusal")


@contextmanager
def injected(hv: SimulatedHypervisor, inj: Injector) -> Iterator[None]:
    """Route the record's writes and the hypercalls of ``hv`` through ``inj``."""
    real_write = safefile.atomic_write

    def write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        inj.at(f"before write {path.name}")
        real_write(path, data, mode=mode)
        inj.at(f"after write {path.name}")

    def wrap(name: str, call: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            inj.at(f"before {name}")
            call(*args)
            inj.at(f"after {name}")

        return run

    setattr(record_mod, "atomic_write", write)  # noqa: B010 (not re-exported)
    hv.kexec_load = wrap("kexec_load", hv.kexec_load)  # type: ignore[method-assign]
    hv.kexec_unload = wrap("kexec_unload", hv.kexec_unload)  # type: ignore[method-assign]
    try:
        yield
    finally:
        setattr(record_mod, "atomic_write", real_write)  # noqa: B010
        del hv.kexec_load, hv.kexec_unload


def prepare(work: Path, scenario: str) -> None:
    """A simulated host with image A armed; its record known ("reload") or lost ("unknown")."""
    if scenario == "old-xen":
        (work / "host.yaml").write_text('xen:\n  version: "4.8"\n')
    hv = SimulatedHypervisor.open(work / "host.yaml")
    store = RecordStore(work / "state")
    store.write_state(record_mod.StateFile(parity=hv.kexec_status(KEXEC_TYPE_CRASH)))
    loader.load(hv, image_of("A"), loader.gather_host(hv), loader.recall(hv, store))
    if scenario == "unknown":
        store.path.unlink()


def run_scenario(work: Path, fault: Fault | None) -> list[str]:
    """Load image B (the daemon's way) with ``fault`` injected; the points passed."""
    hv = SimulatedHypervisor.open(work / "host.yaml")
    store = RecordStore(work / "state")
    inj = Injector(fault)
    host = loader.gather_host(hv)
    with injected(hv, inj):
        ledger = loader.recall(hv, store, crash=host.crash)
        with suppress(FileWriteError, HypervisorError, record_mod.RecordWriteError):
            loader.load(hv, image_of("B"), host, ledger)
    return inj.points


if __name__ == "__main__":
    # The kill -9 child: python faultlib.py WORK POINT
    run_scenario(Path(sys.argv[1]), Fault(int(sys.argv[2]), "kill"))
    sys.exit(3)  # the point was never reached
