"""What a caller may ask of xenkdumpd: the options of Reload, Unload and SelfTest, typed.

The D-Bus edge (dbus/service.py) checks an a{sv} against these tables once, names and
types, and hands the daemon's core a typed value; the core does not check again.  The
D-Bus types come from the field types, so each option is declared once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Field type (as written in the dataclasses below) -> D-Bus signature.
_SIGNATURES = {"bool": "b", "str | None": "s", "int | None": "u"}


@dataclass(frozen=True)
class ReloadOptions:
    force: bool = False  # load even if nothing changed
    wait: bool = True  # False: fail with Busy instead of waiting for running work
    kernel: str | None = None  # this crash kernel for this load only
    initrd: str | None = None  # this initrd for this load only
    cmdline: str | None = None  # this command line for this load only
    reason: str | None = None  # why, for the log and LastReloadReason


@dataclass(frozen=True)
class UnloadOptions:
    wait: bool = True


@dataclass(frozen=True)
class SelfTestOptions:
    # handoff or boot; None: selftest.level, else handoff where a Xen binary matches
    level: str | None = None
    timeout: int | None = None  # seconds for the whole run; None: selftest.timeout
    xen: str | None = None  # the handoff level's Xen binary; None: selftest.xen or matched
    dom0_kernel: str | None = None  # the staging dom0's kernel; None: selftest.dom0_kernel

    def __post_init__(self) -> None:
        from xenkdump.errors import InputError  # noqa: PLC0415

        if self.level is not None and self.level not in ("boot", "handoff"):
            raise InputError(
                f"SelfTest option 'level': expected 'boot' or 'handoff', got {self.level!r}"
            )
        if self.timeout is not None and not 10 <= self.timeout <= 86400:
            raise InputError(
                f"SelfTest option 'timeout': expected 10 to 86400 seconds, got {self.timeout}"
            )
        for name in ("xen", "dom0_kernel"):
            value = getattr(self, name)
            if value is not None and not value.startswith("/"):
                raise InputError(
                    f"SelfTest option {name!r}: expected an absolute path, got {value!r}"
                )
        if self.xen is not None and self.level == "boot":
            raise InputError("SelfTest option 'xen': only with level 'handoff' (boot boots no Xen)")


def signatures(
    options: type[ReloadOptions] | type[UnloadOptions] | type[SelfTestOptions],
) -> dict[str, str]:
    """Option name -> D-Bus signature."""
    return {f.name: _SIGNATURES[str(f.type)] for f in dataclasses.fields(options)}


# The options Reload, Unload and SelfTest accept, with their D-Bus types (see the XML docs).
RELOAD_OPTIONS = signatures(ReloadOptions)
UNLOAD_OPTIONS = signatures(UnloadOptions)
SELFTEST_OPTIONS = signatures(SelfTestOptions)
