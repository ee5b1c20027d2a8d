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

``choose`` decides from facts gathered by ``detect``; ``transient_argv`` and
``leftovers`` are the command line and the parser, all unit-tested
(docs/selftest.md §4).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from xenkdump.paths import INITRD_DIR
from xenkdump.selftest import DEFAULT_WORK_DIR

UNIT_PREFIX: Final = "xenkdump-selftest-"
# Forces the choice: "direct" or "systemd" (tests; a daemon in a container).
LAUNCH_ENV: Final = "XENKDUMP_SELFTEST_LAUNCH"
# How long systemd gives QEMU between SIGTERM and SIGKILL when the unit stops.
STOP_TIMEOUT: Final = 10


@dataclass(frozen=True)
class Direct:
    """QEMU is the owner's child (vm.py: death signal, own process group)."""

    why: str


@dataclass(frozen=True)
class Transient:
    """QEMU runs in a transient service of the system manager, bound to ``owner``."""

    owner: str  # the owner's unit, e.g. xenkdumpd.service
    systemd_run: str
    systemctl: str


Launch = Direct | Transient
CHILD: Final = Direct("")  # the default: a child process, nothing to say why


@dataclass(frozen=True)
class Facts:
    """What ``choose`` decides from (``detect`` reads them from this process)."""

    env: Mapping[str, str]
    cgroup: str  # /proc/self/cgroup
    booted: bool  # /run/systemd/system exists: systemd is the init system
    euid: int
    systemd_run: str | None
    systemctl: str | None


_SERVICE = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.service$")


def owner_unit(cgroup: str) -> str | None:
    """The service whose cgroup this process is in (cgroup v2 or v1's name=systemd)."""
    for line in cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not (hierarchy == "0" and controllers == "") and controllers != "name=systemd":
            continue
        for part in reversed(path.strip().split("/")):
            if _SERVICE.match(part):
                return part
    return None


def choose(facts: Facts) -> Launch:
    """A transient unit when this process is a systemd service of a booted systemd."""
    forced = facts.env.get(LAUNCH_ENV, "")
    if forced == "direct":
        return Direct(f"{LAUNCH_ENV}=direct")
    owner = owner_unit(facts.cgroup)
    why = ""
    if not facts.booted:
        why = "systemd is not the init system"
    elif not facts.env.get("INVOCATION_ID") and forced != "systemd":
        why = "not started by systemd as a service (no INVOCATION_ID)"
    elif owner is None:
        why = "no systemd service in /proc/self/cgroup"
    elif facts.euid != 0:
        why = "not root: only root may start system units"
    elif not facts.systemd_run or not facts.systemctl:
        why = "systemd-run or systemctl not found"
    if why or owner is None or not facts.systemd_run or not facts.systemctl:
        return Direct(why)
    return Transient(owner, facts.systemd_run, facts.systemctl)


def detect() -> Launch:
    """``choose`` for this process."""
    try:
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        cgroup = ""
    path = os.environ.get("PATH", "") + ":/usr/bin:/bin"
    return choose(
        Facts(
            env=dict(os.environ),
            cgroup=cgroup,
            booted=os.path.isdir("/run/systemd/system"),
            euid=os.geteuid(),
            systemd_run=shutil.which("systemd-run", path=path),
            systemctl=shutil.which("systemctl", path=path),
        )
    )


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
        # Stopped with its owner (also on kill -9 of the owner: its unit goes down).
        # Not PartOf=: that would restart the VM with the owner.
        f"BindsTo={launch.owner}",
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
    return [
        launch.systemd_run,
        f"--unit={unit}",
        "--service-type=exec",
        "--wait",
        "--collect",
        "--quiet",
        *(f"--property={p}" for p in props),
        "--",
        *argv,
    ]


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
