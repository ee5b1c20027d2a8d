"""How a staging VM is started: directly, or as a transient systemd service (sans-I/O).

xenkdumpd's own unit is hardened for what xenkdumpd does (no W+X memory, no
``setpriority``, two Xen devices, 512 MiB), and QEMU would inherit all of it: TCG
needs W+X pages, ``nice``/``ionice`` need ``setpriority``/``ioprio_set`` and the VM
alone is bigger than the daemon's memory limit.  So when xenkdumpd runs as a
systemd service, it asks systemd for a unit of the VM's own (``systemd-run``):
``xenkdump-selftest-<id>.service`` with its own limits (``Nice=19``,
``IOSchedulingClass=idle``, ``MemoryMax=`` the VM's figure) and a sandbox of its
own, bound to xenkdumpd's unit (``BindsTo=``): when xenkdumpd stops, restarts or
is killed, systemd stops the VM.  Anywhere else (the CLI, tests, a daemon not
started by systemd) QEMU is a child under ``setpriv --pdeathsig`` (vm.py).

``choose`` decides from facts gathered by ``detect`` (xenkdump/transient.py,
shared with the crash initramfs build); ``transient_argv`` and ``leftovers`` are
the command line and the parser, all unit-tested (docs/selftest.md §4).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from xenkdump import transient
from xenkdump.paths import INITRD_DIR
from xenkdump.selftest import DEFAULT_WORK_DIR

UNIT_PREFIX: Final = "xenkdump-selftest-"
# Forces the choice: "direct" or "systemd" (tests; a daemon in a container).
LAUNCH_ENV: Final = "XENKDUMP_SELFTEST_LAUNCH"
# How long systemd gives QEMU between SIGTERM and SIGKILL when the unit stops.
STOP_TIMEOUT: Final = 10


# The decision and systemd-run's command line are shared with the crash initramfs
# build (xenkdump/transient.py); what is the self-test's own follows.
Direct = transient.Direct
Transient = transient.Transient
Launch = transient.Launch
Facts = transient.Facts
CHILD: Final = transient.CHILD
owner_unit = transient.owner_unit


def choose(facts: Facts) -> Launch:
    """A transient unit when this process is a systemd service of a booted systemd."""
    return transient.choose(facts, LAUNCH_ENV)


def detect() -> Launch:
    """``choose`` for this process."""
    return transient.detect(LAUNCH_ENV)


def work_dir(launch: Launch) -> Path:
    """Where a daemon's runs keep their files: a transient unit does not see the
    daemon's private /var/tmp (PrivateTmp=), so there xenkdumpd's state directory
    (the unit's StateDirectory=xenkdump), seen by both."""
    if isinstance(launch, Transient):
        return Path(INITRD_DIR) / "selftest"
    return DEFAULT_WORK_DIR


def describe(launch: Launch) -> str:
    if isinstance(launch, Transient):
        return f"as transient systemd services bound to {launch.owner}"
    return f"as child processes ({launch.why})" if launch.why else "as child processes"


def unit_name(name: str) -> str:
    """The VM's unit: ``xenkdump-selftest-<name>.service`` (name: the run's id)."""
    if not re.fullmatch(r"[a-z0-9-]{1,64}", name):
        raise ValueError(f"self-test unit name {name!r}: expected [a-z0-9-]")
    return f"{UNIT_PREFIX}{name}.service"


def transient_argv(
    launch: Transient,
    argv: Sequence[str],
    *,
    unit: str,
    memory_max: int,
    writable: Path,
    output: Path,
) -> list[str]:
    """``systemd-run`` that runs ``argv`` as ``unit`` and waits for its end.

    ``--wait`` keeps systemd-run running as long as the unit: the owner follows the
    VM through that process (its exit status is QEMU's).  ``writable`` is the run's
    work directory, the only place QEMU may write; ``output`` gets QEMU's output.
    """
    props = [
        f"Description=xenkdump self-test staging VM ({unit})",
        "Nice=19",
        "IOSchedulingClass=idle",
        f"MemoryMax={memory_max}",
        f"TimeoutStopSec={STOP_TIMEOUT}",
        f"StandardOutput=append:{output}",
        f"StandardError=append:{output}",
        # The VM's own sandbox: it writes only its work directory, has no network,
        # no capabilities and no devices but KVM's.
        "ProtectSystem=strict",
        f"ReadWritePaths={writable}",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "PrivateNetwork=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "DevicePolicy=closed",
        "DeviceAllow=/dev/kvm rw",
    ]
    return transient.run_argv(launch, argv, unit=unit, properties=props)


def stop_argv(launch: Transient, units: Sequence[str]) -> list[str]:
    return [launch.systemctl, "stop", "--no-ask-password", "--", *units]


def list_argv(launch: Transient) -> list[str]:
    return [
        launch.systemctl,
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "--full",
        "--no-pager",
        f"{UNIT_PREFIX}*",
    ]


def leftovers(list_units: str) -> list[str]:
    """The self-test units in ``systemctl list-units --plain --no-legend`` output."""
    found = []
    for line in list_units.splitlines():
        words = [w for w in line.split() if w not in ("●", "*")]  # failed units' mark
        if words and words[0].startswith(UNIT_PREFIX) and words[0].endswith(".service"):
            found.append(words[0])
    return found
