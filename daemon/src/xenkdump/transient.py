"""Work that must not run under xenkdumpd's own sandbox: a transient systemd service.

xenkdumpd's unit is hardened for what xenkdumpd itself does (docs/packaging.md).  A
few jobs it starts need more than that: a self-test's staging VM (QEMU needs W+X
pages, ``setpriority`` and more memory than the daemon) and the crash initramfs
build (mkinitramfs reads /usr/lib/modules and copies with ``cp -p``, i.e.
``fchown``).  When xenkdumpd runs as a service of a booted systemd, such a job runs
in a unit of its own, with its own sandbox and limits, started by ``systemd-run
--wait`` and bound to xenkdumpd's unit (``BindsTo=``: it stops when xenkdumpd
stops).  Anywhere else (the CLI, tests, a daemon not started by systemd) the job is
an ordinary child process.

``choose`` decides from facts gathered by ``detect``; ``run_argv`` is the command
line.  Both are pure and unit-tested (tests/unit/test_transient.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final


@dataclass(frozen=True)
class Direct:
    """The job is the owner's child process; ``why`` says why ("" when nothing to say)."""

    why: str


@dataclass(frozen=True)
class Transient:
    """The job runs in a transient service of the system manager, bound to ``owner``."""

    owner: str  # the owner's unit, e.g. xenkdumpd.service
    systemd_run: str
    systemctl: str


Launch = Direct | Transient
CHILD: Final = Direct("")  # the default: a child process, nothing to say why

# Told of a long job its caller waits for: entered with the job's own timeout (seconds)
# just before the job starts, left once it has ended.  xenkdumpd counts such a job as
# progress while it runs (its watchdog keep-alive, daemon/executor.py).
JobWatch = Callable[[float], AbstractContextManager[object]]


def unwatched(_timeout: float) -> AbstractContextManager[object]:
    """The JobWatch of a caller that nobody watches."""
    return contextlib.nullcontext()


# The sandbox every short job starts from (then ReadWritePaths= and what it needs
# beyond): a read-only system, private /tmp and devices, no new privileges, no
# changes to the kernel, the clock, cgroups or namespaces.
SANDBOX: Final = (
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "NoNewPrivileges=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
)


def unit_name(prefix: str) -> str:
    """A fresh unit name for one job: ``<prefix><8 hex digits>.service``."""
    return f"{prefix}{secrets.token_hex(4)}.service"


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


def choose(facts: Facts, force_env: str) -> Launch:
    """A transient unit when this process is a systemd service of a booted systemd.

    ``force_env`` names the variable that forces the choice ("direct" or "systemd":
    tests, a daemon in a container)."""
    forced = facts.env.get(force_env, "")
    if forced == "direct":
        return Direct(f"{force_env}=direct")
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


def facts() -> Facts:
    """The facts of this process."""
    try:
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        cgroup = ""
    path = os.environ.get("PATH", "") + ":/usr/bin:/bin"
    return Facts(
        env=dict(os.environ),
        cgroup=cgroup,
        booted=os.path.isdir("/run/systemd/system"),
        euid=os.geteuid(),
        systemd_run=shutil.which("systemd-run", path=path),
        systemctl=shutil.which("systemctl", path=path),
    )


def detect(force_env: str) -> Launch:
    """``choose`` for this process."""
    return choose(facts(), force_env)


def run_argv(
    launch: Transient,
    argv: Sequence[str],
    *,
    unit: str,
    properties: Sequence[str],
    pipe: bool = False,
) -> list[str]:
    """``systemd-run`` that runs ``argv`` as ``unit`` with ``properties`` and waits.

    ``--wait`` keeps systemd-run running as long as the unit and gives its exit
    status; ``BindsTo=`` the owner stops the unit with the owner (also on kill -9),
    where ``PartOf=`` would restart it with the owner.  ``pipe``: the unit's standard
    input, output and error are systemd-run's (``--pipe``)."""
    return [
        launch.systemd_run,
        f"--unit={unit}",
        "--service-type=exec",
        "--wait",
        "--collect",
        "--quiet",
        *(["--pipe"] if pipe else []),
        f"--property=BindsTo={launch.owner}",
        *(f"--property={p}" for p in properties),
        "--",
        *argv,
    ]
